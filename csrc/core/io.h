/*
 * io.h - framed, blocking-with-deadline send and receive on a socket.
 *
 * A sk_conn couples a non-blocking socket with a decoder (read-ahead
 * buffer) and an output remainder.  Each operation takes one absolute
 * monotonic deadline (clock.h) for the whole operation; waits are poll()
 * calls whose timeout is recomputed from it.  On EINTR, and at least every
 * intr->slice_ms while waiting, intr->check is called; if it returns
 * nonzero the operation stops with SK_INTR.  The binding's check re-acquires
 * the GIL and runs the signal handlers, so Ctrl-C interrupts a wait
 * promptly even with no deadline.
 *
 * Nothing is lost on SK_TIMEOUT or SK_INTR:
 *   - receive: every byte read stays in the decoder; the next call goes on;
 *   - send: frames not begun are not sent (*done says how many were taken);
 *     the unsent tail of a frame already begun is copied to c->out and is
 *     written before anything else by the next send or sk_conn_flush, so the
 *     peer never sees a torn frame followed by another frame.
 *   - write-behind: sk_conn_enqueue appends whole frames to c->out without a
 *     syscall; they go out, in order, with the next flush or send.
 *
 * Thread-safety: the connection carries two mutexes.  Callers hold send_mu
 * around sk_conn_send / sk_conn_flush / sk_conn_enqueue /
 * sk_conn_shutdown_write / sk_conn_send_control, and recv_mu around the
 * receive calls (sk_conn_recv_wake included); the two sides
 * touch disjoint fields (the heartbeat clocks are atomics), so one sender
 * and one receiver may run at once.  The hub thread (hub.h) only ever
 * trylocks them.  None of these functions needs the GIL.
 */
#ifndef SK_IO_H
#define SK_IO_H

#include <stddef.h>
#include <stdint.h>

#include <pthread.h>

#include "buf.h"
#include "frame.h"
#include "heartbeat.h"
#include "sk.h"
#include "wait.h"

/* One payload to send (a borrowed pointer; never copied unless a send is
 * cut short, see above). */
typedef struct sk_iov {
    const void *base;
    size_t len;
    uint64_t id; /* correlated frame id, if has_id (SK_FRAMING_IDS) */
    int has_id;
} sk_iov;

typedef struct sk_conn {
    int fd;
    sk_framing framing;
    /* receive side */
    sk_decoder dec;
    int rd_eof;          /* the peer's FIN was read */
    int rd_wait_first;   /* the last receive had to wait: poll before the
                            next recv instead of trying it (saves the
                            EAGAIN syscall in request/reply traffic) */
    int rd_bulk;         /* the last recv filled SK_READ_SMALL or more:
                            read ahead SK_READ_AHEAD (see sk_conn_fill) */
    int rd_blocking;     /* the fd was made blocking for recv to wait in
                            (sk_conn_recv); all other I/O passes
                            MSG_DONTWAIT */
    int64_t rd_timeo_ns; /* the SO_RCVTIMEO set on it (0: unknown, not
                            set yet; INT64_MAX: none, set) */
    int rd_waited;       /* a receive has waited before (polled) */
    sk_err rd_err;       /* sticky receive failure (reset, too large) */
    uint64_t owed;       /* replies to timed-out requests still to discard */
    uint64_t discarded;  /* frames discarded that way so far */
    /* send side */
    sk_buf out;          /* tail of a frame whose send was cut short, then
                            frames queued by sk_conn_enqueue */
    int wr_shut;         /* shutdown(SHUT_WR) was done */
    /* shared */
    pthread_mutex_t send_mu;
    pthread_mutex_t recv_mu;
    sk_hb hb;            /* heartbeat state (off unless enabled) */
    struct sk_hub *hub;  /* the hub it is registered with, or NULL */
    int hub_slot;        /* index in that hub */
} sk_conn;

/* Set up c for fd (already non-blocking; sk_conn_recv may make it
 * blocking, and every other read and write passes MSG_DONTWAIT).  No
 * allocation; the caller keeps owning fd. */
int sk_conn_init(sk_conn *c, int fd, const sk_framing *f, sk_err *err);

/* Free buffers and destroy the mutexes (nobody may hold them).  Does not
 * close fd. */
void sk_conn_release(sk_conn *c);

/* Turn heartbeats on (the framing must have SK_FRAMING_CONTROL).  Register
 * the connection with a hub (hub.h) for the timers to run. */
int sk_conn_heartbeat(sk_conn *c, int64_t interval_ns, int64_t timeout_ns,
                      int initiator, sk_err *err);

/* Send one control frame without waiting (caller holds send_mu): SK_OK if
 * it was written (a torn tail is kept in c->out like any frame), SK_TIMEOUT
 * if the socket buffer or a pending tail leaves no room (nothing sent). */
int sk_conn_send_control(sk_conn *c, int type, int64_t ts, sk_err *err);

/* Send an owed PONG, if any, without waiting (caller holds send_mu). */
void sk_conn_send_pending(sk_conn *c);

/* For the hub (caller holds recv_mu): read what the socket holds without
 * waiting, up to `limit` buffered bytes, and take out control frames.
 * Returns 0 (read all there was), 1 (stopped at the limit: the application
 * is not reading), -1 (end of stream or a receive error, now sticky). */
int sk_conn_pump(sk_conn *c, size_t limit);

/* Read and discard what the socket holds, without waiting (caller holds
 * recv_mu), so that a following close() sends FIN rather than RST. */
void sk_conn_drain(sk_conn *c);

/* The orderly end of c's socket, never waiting: the tail of a torn frame
 * goes out if the socket takes it now, unread bytes are read away
 * (sk_conn_drain), then close(fd).  The caller holds both locks or owns c
 * alone; c->fd is -1 afterwards, the buffers stay (sk_conn_release).
 * SK_OK, or SK_ERR naming "close" (the fd is closed all the same). */
int sk_conn_close_orderly(sk_conn *c, sk_err *err);

/* The peer missed its heartbeats: mark the connection dead and shut the
 * socket down so that threads blocked in it wake up.  Any thread. */
void sk_conn_declare_dead(sk_conn *c);

/* Send n frames.  Small payloads are coalesced into one buffer, large ones
 * go by iovec without copying; writev batches up to IOV_MAX entries.
 * *done = number of frames taken (fully written, or begun and completed
 * later from c->out).  SK_OK, SK_TIMEOUT, SK_INTR, SK_ERR (too large: no
 * byte of the batch is sent). */
int sk_conn_send(sk_conn *c, const sk_iov *frames, size_t n, int64_t deadline,
                 const sk_intr *intr, size_t *done, sk_err *err);

/* Write what c->out holds.  SK_OK when empty. */
int sk_conn_flush(sk_conn *c, int64_t deadline, const sk_intr *intr,
                  sk_err *err);

/* Write-behind: encode one frame (header, id, payload) at the end of c->out
 * without any syscall; the next flush or send writes it, after everything
 * queued before it.  The caller holds send_mu.  SK_OK, or SK_ERR (too
 * large, no id extension, after shutdown("write"), peer dead, out of
 * memory): nothing queued. */
int sk_conn_enqueue(sk_conn *c, const sk_iov *frame, sk_err *err);

/* Bytes queued in c->out (caller holds send_mu). */
static inline size_t sk_conn_queued(const sk_conn *c)
{
    return sk_buf_len(&c->out);
}

/* Receive one frame, waiting until deadline (deadline = now: do not wait).
 * Frames owed to timed-out requests are discarded first.
 * SK_OK: *out views the decoder buffer until the next receive call.
 * SK_TIMEOUT / SK_INTR: nothing lost.  SK_ERR: err->code is
 *   SK_E_CLOSED (orderly EOF at a frame boundary), SK_E_INCOMPLETE (EOF
 *   inside a frame, detail = bytes missing), SK_E_TOO_LARGE, SK_E_RESET,
 *   SK_E_SYS.  A failure is sticky for the receive side. */
int sk_conn_recv(sk_conn *c, int64_t deadline, const sk_intr *intr,
                 sk_frame *out, sk_err *err);

/* Take a frame only from what is already buffered, plus at most one
 * non-blocking recv() if nothing complete is buffered.  SK_OK,
 * SK_NEED_DATA, or SK_ERR as sk_conn_recv (the error is returned only if no
 * frame could be produced). */
int sk_conn_recv_nowait(sk_conn *c, sk_frame *out, sk_err *err);

/* For a receive worker that also writes (caller holds recv_mu): like
 * sk_conn_recv without an interrupt check, but the wait also ends, with
 * SK_NEED_DATA and nothing taken, when wake_fd (an eventfd, or -1) is
 * readable, which is then drained, or when out_events (POLLOUT, or 0) is
 * ready on the socket. */
int sk_conn_recv_wake(sk_conn *c, int64_t deadline, int wake_fd,
                      short out_events, sk_frame *out, sk_err *err);

/* Take a frame only from what is already buffered: no syscall.  SK_OK,
 * SK_NEED_DATA or SK_ERR (a sticky receive failure or a bad header). */
int sk_conn_recv_buffered(sk_conn *c, sk_frame *out, sk_err *err);

/* shutdown(fd, SHUT_WR) after flushing c->out (until deadline). */
int sk_conn_shutdown_write(sk_conn *c, int64_t deadline, const sk_intr *intr,
                           sk_err *err);

#endif /* SK_IO_H */
