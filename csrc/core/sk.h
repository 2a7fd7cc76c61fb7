/*
 * sk.h - result codes and the error record shared by every layer of the C core.
 *
 * The core never includes Python.h.  Every function that can fail returns one
 * of the SK_* result codes and, on SK_ERR, fills an sk_err that the caller
 * owns (usually embedded in a longer-lived object).  An sk_err is a plain
 * value: no allocation, a fixed-size message, the syscall that failed and
 * its errno, so a binding can turn it into a typed exception at a safe point.
 */
#ifndef SK_SK_H
#define SK_SK_H

#include <stddef.h>
#include <stdint.h>

/* Result codes.  SK_OK is 0 so `if (rc)` tests for "anything but success". */
enum {
    SK_OK = 0,
    SK_ERR = -1,       /* see the sk_err the caller passed */
    SK_NEED_DATA = 1,  /* codec: feed more bytes */
    SK_TIMEOUT = 2,    /* deadline passed; nothing lost, retry later */
    SK_INTR = 3,       /* the interrupt callback asked to stop (a signal) */
};

/* What went wrong, for mapping onto the exception hierarchy. */
typedef enum {
    SK_E_NONE = 0,
    SK_E_SYS,         /* a syscall failed: see syscall and sys_errno */
    SK_E_TOO_LARGE,   /* a frame's declared or given length exceeds max_frame */
    SK_E_INCOMPLETE,  /* end of stream inside a frame */
    SK_E_CLOSED,      /* the peer closed its side (orderly EOF) */
    SK_E_RESET,       /* the peer reset the connection (ECONNRESET/EPIPE) */
    SK_E_TIMEOUT,     /* deadline passed */
    SK_E_INTR,        /* interrupted by the interrupt callback */
    SK_E_ARG,         /* bad argument from the caller */
    SK_E_NOMEM,       /* allocation failed */
    SK_E_PROTOCOL,    /* malformed control data from the peer */
    SK_E_PEER_DEAD,   /* heartbeat timeout */
} sk_errcode;

/* Room for every message the core writes with its longest numbers (the
 * longest, a too-large header with two 20-digit lengths, needs ~190 bytes;
 * tests/test_messages.py checks every format string against this).  A
 * message that still does not fit is cut at a word boundary and ends in
 * "..." (sk_err_set), never mid-word. */
#define SK_ERRMSG_MAX 256

typedef struct sk_err {
    sk_errcode code;
    int sys_errno;          /* errno of the failed syscall, else 0 */
    const char *syscall;    /* static string naming the syscall, else NULL */
    uint64_t detail;        /* code-specific number (e.g. bytes missing) */
    char msg[SK_ERRMSG_MAX];
} sk_err;

/* Fill err with a code and a printf-style message.  Returns SK_ERR so a
 * failure is one line: `return sk_err_set(err, SK_E_ARG, "...")`.  err may be
 * NULL (the error is then only signalled by the return value).  A message
 * longer than SK_ERRMSG_MAX - 1 bytes is cut at the last word boundary that
 * leaves room for "...", which then ends it. */
int sk_err_set(sk_err *err, sk_errcode code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Fill err for a failed syscall named `syscall` with errno `e`; the message
 * is "<syscall>: <strerror(e)>".  ECONNRESET and EPIPE map to SK_E_RESET,
 * everything else to SK_E_SYS.  Returns SK_ERR. */
int sk_err_sys(sk_err *err, const char *syscall, int e);

/* Make the first `len` bytes of the message in buf (capacity cap, len >= cap
 * when vsnprintf truncated it) end cleanly: when it did not fit, cut at the
 * last space (or, in a single overlong word, at a UTF-8 character boundary)
 * and end with "...".  buf is always NUL-terminated afterwards. */
void sk_err_fit(char *buf, size_t cap, size_t len);

/* Reset err to SK_E_NONE. */
void sk_err_clear(sk_err *err);

#define SK_LIKELY(x) __builtin_expect(!!(x), 1)
#define SK_UNLIKELY(x) __builtin_expect(!!(x), 0)

#endif /* SK_SK_H */
