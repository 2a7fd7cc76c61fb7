/* sys.c - the test seams of the core: the fault hook (sys.h) and the clock
 * hook (clock.h).  Both stay NULL outside tests. */
#include "clock.h"
#include "sys.h"

sk_fault_fn sk_fault_hook = NULL;
sk_clock_fn sk_clock_hook = NULL;
