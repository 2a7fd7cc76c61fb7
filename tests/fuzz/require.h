/* require.h - the harnesses' check: print the failed condition and abort,
 * which libFuzzer reports as a crash and saves the input for. */
#ifndef SK_FUZZ_REQUIRE_H
#define SK_FUZZ_REQUIRE_H

#include <stdio.h>
#include <stdlib.h>

#define REQUIRE(cond)                                                       \
    do {                                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__,          \
                    __LINE__, #cond);                                       \
            abort();                                                        \
        }                                                                   \
    } while (0)

#endif /* SK_FUZZ_REQUIRE_H */
