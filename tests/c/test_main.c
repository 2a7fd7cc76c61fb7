/*
 * test_main.c - runs every TEST() registered by the tests/c/test_*.c files.
 *
 * Usage: sk_ctest [-v] [-l] [FILTER...]
 *   -v      print one line per test with its time
 *   -l      list the tests and exit
 *   FILTER  run only tests whose "<area>.<name>" contains one of them
 *
 * Per test it also checks that no file descriptor leaked, and a watchdog
 * (env SK_TEST_TIMEOUT seconds, default 30) ends a hung test.  The last line
 * is always "N passed, M failed"; exit code 1 on any failure.
 */
#include "check.h"

#include "core/sk.h"

#include <dirent.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_PRINTED_FAILURES 40 /* per test; later ones are only counted */

static sk_test *registry;
static unsigned long n_passed, n_failed;
static char current_label[128];
static const char *current_ctx;
static unsigned long printed_in_test;
static double time_scale = 1.0;

/* Keep the registry sorted by (file, line) so the order does not depend on
 * the order in which the linker runs the constructors. */
void sk_test_register(sk_test *t)
{
    sk_test **pp = &registry;

    while (*pp) {
        int c = strcmp((*pp)->file, t->file);
        if (c > 0 || (c == 0 && (*pp)->line > t->line))
            break;
        pp = &(*pp)->next;
    }
    t->next = *pp;
    *pp = t;
}

/* "tests/c/test_frame.c" + "decoder_x" -> "frame.decoder_x" */
static void test_label(const sk_test *t, char *out, size_t n)
{
    const char *base = strrchr(t->file, '/');
    size_t len;

    base = base ? base + 1 : t->file;
    if (strncmp(base, "test_", 5) == 0)
        base += 5;
    len = strcspn(base, ".");
    snprintf(out, n, "%.*s.%s", (int)len, base, t->name);
}

void sk_check_pass(void)
{
    __atomic_fetch_add(&n_passed, 1, __ATOMIC_RELAXED);
}

unsigned long sk_check_failures(void)
{
    return __atomic_load_n(&n_failed, __ATOMIC_RELAXED);
}

void sk_check_fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;

    __atomic_fetch_add(&n_failed, 1, __ATOMIC_RELAXED);
    if (++printed_in_test > MAX_PRINTED_FAILURES) {
        if (printed_in_test == MAX_PRINTED_FAILURES + 1)
            fprintf(stdout, "%s:%d: %s: (further failures not printed)\n",
                    file, line, current_label);
        return;
    }
    fprintf(stdout, "%s:%d: %s%s%s%s: ", file, line, current_label,
            current_ctx ? " [" : "", current_ctx ? current_ctx : "",
            current_ctx ? "]" : "");
    va_start(ap, fmt);
    vfprintf(stdout, fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    fflush(stdout);
}

void sk_check_int(int ok, long long a, long long b, const char *what,
                  const char *file, int line)
{
    if (ok)
        sk_check_pass();
    else if (strncmp(what, "CHECK(", 6) == 0)
        sk_check_fail(file, line, "%s failed", what);
    else
        sk_check_fail(file, line, "%s failed: %lld vs %lld", what, a, b);
}

void sk_check_u64(int ok, unsigned long long a, unsigned long long b,
                  const char *what, const char *file, int line)
{
    if (ok)
        sk_check_pass();
    else
        sk_check_fail(file, line,
                      "%s failed: %llu (0x%llx) vs %llu (0x%llx)", what, a, a,
                      b, b);
}

static const char *rc_name(int rc)
{
    switch (rc) {
    case SK_OK: return "SK_OK";
    case SK_ERR: return "SK_ERR";
    case SK_NEED_DATA: return "SK_NEED_DATA";
    case SK_TIMEOUT: return "SK_TIMEOUT";
    case SK_INTR: return "SK_INTR";
    default: return "?";
    }
}

void sk_check_rc(int rc, int want, const sk_err *err, const char *what,
                 const char *file, int line)
{
    if (rc == want) {
        sk_check_pass();
        return;
    }
    /* err is only meaningful after SK_ERR; the message is bounded anyway */
    sk_check_fail(file, line,
                  "%s failed: got %d (%s), want %d (%s); err code %d "
                  "errno %d syscall %s msg \"%.*s\"",
                  what, rc, rc_name(rc), want, rc_name(want),
                  err ? (int)err->code : -1, err ? err->sys_errno : 0,
                  err && rc == SK_ERR && err->syscall ? err->syscall : "-",
                  err ? (int)sizeof(err->msg) : 0, err ? err->msg : "");
}

void sk_check_mem(const void *a, const void *b, size_t n, const char *what,
                  const char *file, int line)
{
    const unsigned char *pa = a, *pb = b;
    size_t i;

    for (i = 0; i < n; i++)
        if (pa[i] != pb[i])
            break;
    if (i == n)
        sk_check_pass();
    else
        sk_check_fail(file, line,
                      "%s failed at offset %zu of %zu: 0x%02x vs 0x%02x",
                      what, i, n, pa[i], pb[i]);
}

void sk_check_str(const char *a, const char *b, const char *what,
                  const char *file, int line)
{
    if (a && b && strcmp(a, b) == 0)
        sk_check_pass();
    else
        sk_check_fail(file, line, "%s failed: \"%s\" vs \"%s\"", what,
                      a ? a : "(null)", b ? b : "(null)");
}

void sk_test_note(const char *fmt, ...)
{
    va_list ap;

    fprintf(stdout, "note: %s: ", current_label);
    va_start(ap, fmt);
    vfprintf(stdout, fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    fflush(stdout);
}

void sk_test_context(const char *ctx)
{
    current_ctx = ctx;
}

double sk_test_time_scale(void)
{
    return time_scale;
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int n = 0;

    if (d == NULL)
        return -1;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* the DIR's own fd */
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Async-signal-safe output of a decimal number. */
static void put_ulong(unsigned long v)
{
    char tmp[24];
    int i = (int)sizeof(tmp);

    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v && i > 0);
    if (write(STDOUT_FILENO, tmp + i, sizeof(tmp) - (size_t)i) < 0)
        return;
}

static void put_str(const char *s)
{
    if (write(STDOUT_FILENO, s, strlen(s)) < 0)
        return;
}

static void on_alarm(int sig)
{
    (void)sig;
    put_str("\nFAIL ");
    put_str(current_label);
    put_str(": watchdog timeout (hung test)\n");
    put_ulong(__atomic_load_n(&n_passed, __ATOMIC_RELAXED));
    put_str(" passed, ");
    put_ulong(__atomic_load_n(&n_failed, __ATOMIC_RELAXED) + 1);
    put_str(" failed\n");
    _exit(1);
}

static int matches(const char *label, int nfilters, char **filters)
{
    int i;

    if (nfilters == 0)
        return 1;
    for (i = 0; i < nfilters; i++)
        if (strstr(label, filters[i]) != NULL)
            return 1;
    return 0;
}

int main(int argc, char **argv)
{
    int verbose = 0, list = 0, nfilters = 0, i;
    char **filters = calloc((size_t)argc + 1, sizeof(*filters));
    unsigned timeout = 30;
    unsigned long tests_run = 0, tests_failed = 0;
    const char *env;
    const sk_test *t;
    double t_all = now_s();

    if (filters == NULL)
        return 1;
    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-v") == 0)
            verbose = 1;
        else if (strcmp(argv[i], "-l") == 0)
            list = 1;
        else
            filters[nfilters++] = argv[i];
    }
    env = getenv("SK_TEST_TIMEOUT");
    if (env && atoi(env) > 0)
        timeout = (unsigned)atoi(env);
    env = getenv("SK_TEST_TIME_SCALE");
    if (env && atof(env) >= 1.0)
        time_scale = atof(env);

    /* The binding runs inside CPython, which ignores SIGPIPE, so a write to
     * a closed peer fails with EPIPE instead of killing the process; do the
     * same here.  (test_io.c checks the SIG_DFL case in a child.) */
    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, on_alarm);
    setvbuf(stdout, NULL, _IOLBF, 0);

    for (t = registry; t; t = t->next) {
        unsigned long failed_before = n_failed;
        int fds_before, fds_after;
        double t0;

        test_label(t, current_label, sizeof(current_label));
        if (!matches(current_label, nfilters, filters))
            continue;
        if (list) {
            printf("%s\n", current_label);
            continue;
        }
        current_ctx = NULL;
        printed_in_test = 0;
        fds_before = count_fds();
        t0 = now_s();
        alarm(timeout);
        t->fn();
        alarm(0);
        fds_after = count_fds();
        if (fds_after > fds_before)
            sk_check_fail(t->file, t->line, "%d file descriptor(s) leaked",
                          fds_after - fds_before);
        tests_run++;
        if (n_failed != failed_before) {
            tests_failed++;
            printf("FAIL %s\n", current_label);
        } else if (verbose) {
            printf("ok   %s (%.0f ms)\n", current_label,
                   (now_s() - t0) * 1e3);
        }
    }
    current_ctx = NULL;
    snprintf(current_label, sizeof(current_label), "main");
    free(filters);
    if (list)
        return 0;
    if (tests_run == 0)
        sk_check_fail(__FILE__, __LINE__, "no test matched");
    printf("%lu tests, %lu failing, %.2f s\n", tests_run, tests_failed,
           now_s() - t_all);
    printf("%lu passed, %lu failed\n", n_passed, n_failed);
    return n_failed ? 1 : 0;
}
