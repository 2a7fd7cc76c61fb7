/* io.c - framed send/receive with one deadline per operation (see io.h). */
#include "io.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <unistd.h>

#include "clock.h"

/* Payloads up to this size are copied next to their header so that a batch
 * of small frames goes out as one contiguous block; larger payloads are sent
 * from the caller's memory by iovec. */
#define SK_SMALL 1024
/* Bytes of coalescing space per write batch. */
#define SK_COAL_CAP (64 * 1024)
/* Frames per write batch (bounds the stack arrays below). */
#define SK_BATCH_FRAMES 1024
/* iovecs per sendmsg (the kernel's UIO_MAXIOV is 1024). */
#define SK_IOV_MAX 1024
/* Room the hub reads into per recv: heartbeats are 13..17 bytes. */
#define SK_PUMP_STEP 512
/* A receive with at least this long to wait lets recv() itself wait
 * (sk_conn_wait_fill); a shorter one polls, to the millisecond. */
#define SK_BLOCK_MIN_NS (20 * 1000000LL)
/* SO_RCVTIMEO is rounded up to a jiffy (4 ms at HZ=250): keep it this
 * far inside the wait it bounds. */
#define SK_BLOCK_SLACK_NS (5 * 1000000LL)
/* sk_conn.rd_timeo_ns once SO_RCVTIMEO was set to none (wait forever). */
#define SK_TIMEO_NONE INT64_MAX

/* Scratch space for a batch, one per thread rather than per connection so
 * that an idle connection holds no send memory.  glibc allocates a dlopen'ed
 * module's TLS block lazily per thread and frees it at thread exit. */
static __thread unsigned char sk_coal[SK_COAL_CAP];

/* Contract: no allocation, fd stays owned by the caller. */
int sk_conn_init(sk_conn *c, int fd, const sk_framing *f, sk_err *err)
{
    int rc = sk_framing_check(f, err);

    if (rc != SK_OK)
        goto done;
    memset(c, 0, sizeof(*c));
    c->fd = fd;
    c->framing = *f;
    sk_decoder_init(&c->dec, f);
    sk_err_clear(&c->rd_err);
    sk_buf_init(&c->out);
    pthread_mutex_init(&c->send_mu, NULL);
    pthread_mutex_init(&c->recv_mu, NULL);
    sk_hb_init(&c->hb, 0, 0, 1, sk_now_ns());
    c->hub_slot = -1;
done:
    return rc;
}

/* Contract: frees the buffers; the fd is the caller's to close. */
void sk_conn_release(sk_conn *c)
{
    sk_decoder_free(&c->dec);
    sk_buf_free(&c->out);
    pthread_mutex_destroy(&c->send_mu);
    pthread_mutex_destroy(&c->recv_mu);
}

/* Contract: no allocation; call before the connection is shared. */
int sk_conn_heartbeat(sk_conn *c, int64_t interval_ns, int64_t timeout_ns,
                      int initiator, sk_err *err)
{
    int rc = SK_OK;

    if (!(c->framing.flags & SK_FRAMING_CONTROL))
        rc = sk_err_set(err, SK_E_ARG,
                        "heartbeats need the control-frame extension "
                        "(SK_FRAMING_CONTROL) on both peers");
    else if (interval_ns <= 0 || timeout_ns <= 0)
        rc = sk_err_set(err, SK_E_ARG,
                        "heartbeat interval and timeout must be > 0");
    else
        sk_hb_init(&c->hb, interval_ns, timeout_ns, initiator, sk_now_ns());
    return rc;
}

/* Replace err by the dead-peer error if the hub declared the peer dead
 * (the shutdown that woke us is only the messenger). */
static int sk_conn_dead_err(sk_conn *c, sk_err *err)
{
    sk_err_set(err, SK_E_PEER_DEAD,
               "the peer sent nothing for %.3g s (heartbeat timeout) and "
               "was declared dead; the connection is shut down: reconnect",
               (double)c->hb.timeout_ns / 1e9);
    return SK_ERR;
}

/* Contract: any thread; idempotent. */
void sk_conn_declare_dead(sk_conn *c)
{
    if (SK_XCHG(&c->hb.dead, 1))
        return;
    shutdown(c->fd, SHUT_RDWR);
}

/* Write iov[0..niov) fully, advancing the entries in place.  *written
 * accumulates the bytes written.  SK_OK, SK_TIMEOUT, SK_INTR or SK_ERR. */
static int sk_write_all(int fd, struct iovec *iov, int niov, int64_t deadline,
                        const sk_intr *intr, size_t *written, int *idx,
                        sk_hb *hb, sk_err *err)
{
    struct msghdr mh;
    const char *call = "send";
    ssize_t r;
    int rc = SK_OK;

    while (*idx < niov) {
        /* send/sendmsg rather than write/writev: MSG_NOSIGNAL turns SIGPIPE
         * into EPIPE for programs that did not ignore SIGPIPE (Python does);
         * MSG_DONTWAIT because the fd may be blocking (a receiver made it
         * so, see sk_conn_block).  One buffer (a small frame is copied
         * behind its header) goes out with send(): the kernel then copies
         * no msghdr and imports no iovec array. */
        if (niov - *idx == 1) {
            call = "send";
            r = send(fd, iov[*idx].iov_base, iov[*idx].iov_len,
                     MSG_NOSIGNAL | MSG_DONTWAIT);
        } else {
            call = "sendmsg";
            memset(&mh, 0, sizeof(mh));
            mh.msg_iov = iov + *idx;
            mh.msg_iovlen = (size_t)(niov - *idx);
            r = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        }
        if (r > 0) {
            size_t left = (size_t)r;
            *written += left;
            if (hb->interval_ns)
                SK_STORE(&hb->last_tx_ns, sk_now_ns());
            while (left > 0 && *idx < niov) {
                if (left >= iov[*idx].iov_len) {
                    left -= iov[*idx].iov_len;
                    (*idx)++;
                } else {
                    iov[*idx].iov_base = (char *)iov[*idx].iov_base + left;
                    iov[*idx].iov_len -= left;
                    left = 0;
                }
            }
            while (*idx < niov && iov[*idx].iov_len == 0)
                (*idx)++;
            continue;
        }
        if (r < 0 && errno == EINTR) {
            if (sk_intr_fire(intr)) {
                rc = SK_INTR;
                goto done;
            }
            continue;
        }
        if (r == 0 || errno == EAGAIN || errno == EWOULDBLOCK) {
            rc = sk_wait(fd, POLLOUT, deadline, intr, err);
            if (rc != SK_OK)
                goto done;
            continue;
        }
        rc = sk_err_sys(err, call, errno);
        goto done;
    }
done:
    return rc;
}

/* Keep the unsent rest of the frame in progress: iov[idx..] holds exactly
 * the unsent bytes of the batch, and `keep` of them belong to that frame. */
static int sk_keep_tail(sk_conn *c, const struct iovec *iov, int idx, int niov,
                        size_t keep, sk_err *err)
{
    int i, rc = SK_OK;

    for (i = idx; i < niov && keep > 0; i++) {
        size_t n = iov[i].iov_len < keep ? iov[i].iov_len : keep;
        if (sk_buf_append(&c->out, iov[i].iov_base, n) != 0) {
            rc = sk_err_set(err, SK_E_NOMEM,
                            "out of memory keeping %zu unsent bytes", keep);
            break;
        }
        keep -= n;
    }
    return rc;
}

/* Contract: no GIL needed; caller holds the send lock.  Payload memory is
 * borrowed for the duration of the call. */
int sk_conn_flush(sk_conn *c, int64_t deadline, const sk_intr *intr,
                  sk_err *err)
{
    struct iovec iov;
    size_t written = 0;
    int idx = 0, rc = SK_OK;

    if (sk_buf_len(&c->out) == 0)
        goto done;
    iov.iov_base = sk_buf_rptr(&c->out);
    iov.iov_len = sk_buf_len(&c->out);
    rc = sk_write_all(c->fd, &iov, 1, deadline, intr, &written, &idx, &c->hb,
                      err);
    sk_buf_consume(&c->out, written);
    if (sk_buf_len(&c->out) == 0)
        sk_buf_shrink(&c->out);
done:
    return rc;
}

/* Contract: see io.h.  No GIL needed; caller holds the send lock. */
int sk_conn_send(sk_conn *c, const sk_iov *frames, size_t n, int64_t deadline,
                 const sk_intr *intr, size_t *done, sk_err *err)
{
    struct iovec iov[SK_IOV_MAX];
    size_t ends[SK_BATCH_FRAMES];
    const unsigned h = c->framing.header_size;
    const uint64_t maxf = c->framing.max_frame;
    size_t i = 0, j, k, total, written, coff, seg;
    unsigned char *coal;
    int niov, idx, rc = SK_OK;

    *done = 0;
    for (j = 0; j < n; j++) {
        if (frames[j].has_id && !(c->framing.flags & SK_FRAMING_IDS)) {
            rc = sk_err_set(err, SK_E_ARG,
                            "this connection was made without correlation "
                            "ids; frames cannot carry one");
            goto done;
        }
        if ((uint64_t)frames[j].len > maxf) {
            sk_err_set(err, SK_E_TOO_LARGE,
                       "frame %zu is %zu bytes, over max_frame %llu; split "
                       "it or raise Framing.max_frame on both peers",
                       j, frames[j].len, (unsigned long long)maxf);
            if (err != NULL)
                err->detail = j;
            rc = SK_ERR;
            goto done;
        }
    }
    if (SK_UNLIKELY(SK_LOAD(&c->hb.dead))) {
        rc = sk_conn_dead_err(c, err);
        goto done;
    }
    if (c->wr_shut) {
        rc = sk_err_set(err, SK_E_CLOSED,
                        "cannot send after shutdown(\"write\"): this side "
                        "already sent its FIN");
        goto done;
    }
    rc = sk_conn_flush(c, deadline, intr, err);
    if (rc != SK_OK)
        goto done;
    coal = sk_coal;
    while (i < n) {
        /* assemble one batch of frames i..j */
        niov = 0;
        coff = seg = total = 0;
        for (j = i; j < n && j - i < SK_BATCH_FRAMES; j++) {
            size_t len = frames[j].len;
            int small = len <= SK_SMALL;
            size_t hl = h + (frames[j].has_id ? SK_ID_LEN : 0);
            if (coff + hl + (small ? len : 0) > SK_COAL_CAP)
                break;
            if (niov + 3 > SK_IOV_MAX)
                break;
            if (frames[j].has_id)
                sk_encode_header_id(&c->framing, len, frames[j].id,
                                    coal + coff);
            else
                sk_encode_header(&c->framing, len, coal + coff);
            coff += hl;
            if (small) {
                if (len)
                    memcpy(coal + coff, frames[j].base, len);
                coff += len;
            } else {
                iov[niov].iov_base = coal + seg;
                iov[niov].iov_len = coff - seg;
                niov++;
                iov[niov].iov_base = (void *)frames[j].base;
                iov[niov].iov_len = len;
                niov++;
                seg = coff;
            }
            total += hl + len;
            ends[j - i] = total;
        }
        if (coff > seg) {
            iov[niov].iov_base = coal + seg;
            iov[niov].iov_len = coff - seg;
            niov++;
        }
        written = 0;
        idx = 0;
        rc = sk_write_all(c->fd, iov, niov, deadline, intr, &written, &idx,
                          &c->hb, err);
        /* frames i..k-1 are fully written */
        for (k = i; k < j && ends[k - i] <= written; k++)
            ;
        *done += k - i;
        if (rc != SK_OK) {
            if (rc != SK_ERR && k < j && written > (k > i ? ends[k - 1 - i] : 0)) {
                /* frame k is torn: keep its tail, it counts as taken */
                int r2 = sk_keep_tail(c, iov, idx, niov,
                                      ends[k - i] - written, err);
                if (r2 != SK_OK) {
                    rc = r2;
                    goto done;
                }
                *done += 1;
            }
            goto done;
        }
        i = j;
    }
    sk_conn_send_pending(c);
done:
    if (rc == SK_ERR && SK_LOAD(&c->hb.dead))
        rc = sk_conn_dead_err(c, err);
    return rc;
}

/* Contract: see io.h.  Caller holds send_mu; no syscall; may grow c->out
 * (the bound on it is the caller's: see the binding's request_async). */
int sk_conn_enqueue(sk_conn *c, const sk_iov *f, sk_err *err)
{
    const size_t hl = c->framing.header_size + (f->has_id ? SK_ID_LEN : 0);
    unsigned char *w;
    int rc = SK_ERR;

    if (f->has_id && !(c->framing.flags & SK_FRAMING_IDS)) {
        sk_err_set(err, SK_E_ARG,
                   "this connection was made without correlation ids; "
                   "frames cannot carry one");
        goto done;
    }
    if ((uint64_t)f->len > c->framing.max_frame) {
        sk_err_set(err, SK_E_TOO_LARGE,
                   "frame is %zu bytes, over max_frame %llu; split it or "
                   "raise Framing.max_frame on both peers",
                   f->len, (unsigned long long)c->framing.max_frame);
        if (err != NULL)
            err->detail = 0;
        goto done;
    }
    if (SK_UNLIKELY(SK_LOAD(&c->hb.dead))) {
        rc = sk_conn_dead_err(c, err);
        goto done;
    }
    if (c->wr_shut) {
        sk_err_set(err, SK_E_CLOSED,
                   "cannot send after shutdown(\"write\"): this side "
                   "already sent its FIN");
        goto done;
    }
    if (sk_buf_reserve(&c->out, hl + f->len) != 0) {
        sk_err_set(err, SK_E_NOMEM, "out of memory queueing %zu bytes",
                   hl + f->len);
        goto done;
    }
    w = sk_buf_wptr(&c->out);
    if (f->has_id)
        sk_encode_header_id(&c->framing, f->len, f->id, w);
    else
        sk_encode_header(&c->framing, f->len, w);
    if (f->len)
        memcpy(w + hl, f->base, f->len);
    sk_buf_commit(&c->out, hl + f->len);
    rc = SK_OK;
done:
    return rc;
}

/* Contract: caller holds send_mu; never waits. */
int sk_conn_send_control(sk_conn *c, int type, int64_t ts, sk_err *err)
{
    unsigned char frame[8 + SK_CTL_PING_LEN];
    struct iovec iov;
    size_t n, written = 0;
    int idx = 0, rc = SK_TIMEOUT, had_room;

    if (SK_LOAD(&c->hb.dead) || c->wr_shut)
        goto done;
    if (sk_conn_flush(c, 0, NULL, err) != SK_OK || sk_buf_len(&c->out) > 0)
        goto done;
    n = sk_hb_encode(&c->framing, type, ts, SK_LOAD(&c->hb.rtt_ns), frame);
    /* room for a torn tail before a byte goes out, so that keeping it
     * cannot fail once the frame is begun (sk_conn_send_pending has no
     * caller to tell; found by tests/fuzz/fuzz_send.c) */
    had_room = c->out.cap > 0;
    if (sk_buf_reserve(&c->out, n) != 0) {
        rc = sk_err_set(err, SK_E_NOMEM, "out of memory");
        goto done;
    }
    iov.iov_base = frame;
    iov.iov_len = n;
    rc = sk_write_all(c->fd, &iov, 1, 0, NULL, &written, &idx, &c->hb, err);
    if (rc == SK_TIMEOUT && written > 0) {
        /* torn: the rest goes out first with the next write */
        sk_buf_append(&c->out, frame + written, n - written);
        rc = SK_OK;
    } else if (!had_room) {
        sk_buf_free(&c->out); /* an idle connection holds no send memory */
    }
done:
    return rc;
}

/* Contract: caller holds send_mu; never waits. */
void sk_conn_send_pending(sk_conn *c)
{
    int64_t ts = SK_LOAD(&c->hb.pong_ts);
    sk_err err;

    if (SK_LIKELY(ts == 0))
        return;
    if (sk_conn_send_control(c, SK_CTL_PONG, ts, &err) == SK_OK) {
        SK_CAS(&c->hb.pong_ts, &ts, 0, SK_ACQUIRE);
        c->hb.pongs_sent++;
    }
}

/* One recv into the decoder, asking for at least `step` bytes of room;
 * flags MSG_DONTWAIT (never waits) or 0 (waits in the kernel, up to the
 * socket's SO_RCVTIMEO, once sk_conn_block made the fd blocking).  SK_OK
 * (bytes or EOF recorded; *full says whether the room was filled),
 * SK_NEED_DATA (would block, or SO_RCVTIMEO passed), SK_INTR, SK_ERR
 * (sticky in c->rd_err). */
static int sk_conn_fill_step(sk_conn *c, size_t step, const sk_intr *intr,
                             int flags, int *full, sk_err *err)
{
    unsigned char *space;
    size_t avail;
    ssize_t r;
    int rc;

    *full = 0;
    if (sk_decoder_reserve(&c->dec, step, &space, &avail) != SK_OK) {
        c->rd_err = c->dec.err;
        rc = SK_ERR;
        goto done;
    }
    for (;;) {
        r = recv(c->fd, space, avail, flags);
        if (r > 0) {
            *full = (size_t)r == avail;
            sk_decoder_commit(&c->dec, (size_t)r);
            if (c->hb.interval_ns)
                SK_STORE(&c->hb.last_rx_ns, sk_now_ns());
            rc = SK_OK;
            goto done;
        }
        if (r == 0) {
            c->rd_eof = 1;
            rc = SK_OK;
            goto done;
        }
        if (errno == EINTR) {
            if (sk_intr_fire(intr)) {
                rc = SK_INTR;
                goto done;
            }
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            rc = SK_NEED_DATA;
            goto done;
        }
        sk_err_sys(&c->rd_err, "recv", errno);
        rc = SK_ERR;
        goto done;
    }
done:
    if (rc == SK_ERR && err != NULL)
        *err = c->rd_err;
    return rc;
}

/* The receive path's fill.  Its room follows the traffic: SK_READ_SMALL
 * while messages come one at a time (that buffer stays within SK_BUF_KEEP,
 * so an idle connection keeps it: a request/reply connection no longer
 * allocates 64 KiB before each reply and frees it after, ~1,000
 * instructions per request measured with callgrind); SK_READ_AHEAD once a
 * recv filled its room (a stream, or a big frame's head), until a recv
 * brings less than SK_READ_SMALL again.  A frame whose header is in needs
 * its whole length whatever the room (sk_decoder_reserve). */
static int sk_conn_fill_flags(sk_conn *c, const sk_intr *intr, int flags,
                              sk_err *err)
{
    size_t before = sk_buf_len(&c->dec.buf);
    int full, rc;

    rc = sk_conn_fill_step(c, c->rd_bulk ? SK_READ_AHEAD : SK_READ_SMALL, intr,
                           flags, &full, err);
    if (rc == SK_OK)
        c->rd_bulk = full || sk_buf_len(&c->dec.buf) - before >= SK_READ_SMALL;
    return rc;
}

/* sk_conn_fill_flags that never waits. */
static int sk_conn_fill(sk_conn *c, const sk_intr *intr, sk_err *err)
{
    return sk_conn_fill_flags(c, intr, MSG_DONTWAIT, err);
}

/* The hub's fill: a small step, so that an idle connection's buffer stays
 * within SK_BUF_KEEP and is not allocated and freed at every heartbeat. */
static int sk_conn_fill_some(sk_conn *c, size_t step, int *full)
{
    return sk_conn_fill_step(c, step, NULL, MSG_DONTWAIT, full, NULL);
}

/* Record the end of stream as a sticky receive error. */
static int sk_conn_eof(sk_conn *c, sk_err *err)
{
    if (SK_LOAD(&c->hb.dead))
        sk_conn_dead_err(c, &c->rd_err);
    else if (sk_decoder_finish(&c->dec, &c->rd_err) == SK_OK)
        sk_err_set(&c->rd_err, SK_E_CLOSED,
                   "connection closed by the peer (FIN) after %llu frames; "
                   "no more frames will arrive",
                   (unsigned long long)c->dec.frames);
    if (err != NULL)
        *err = c->rd_err;
    return SK_ERR;
}

/* A control frame arrived (caller holds recv_mu): handle it, and answer a
 * PING at once if the send side is free (else the send side or the hub
 * answers it on its next pass). */
static void sk_conn_on_control(sk_conn *c, const sk_frame *fr)
{
    sk_hb_on_control(&c->hb, fr, sk_now_ns());
    if (SK_LOAD(&c->hb.pong_ts) != 0 &&
        pthread_mutex_trylock(&c->send_mu) == 0) {
        sk_conn_send_pending(c);
        pthread_mutex_unlock(&c->send_mu);
    }
}

/* Contract: the decoder's control callback (ctx: the sk_conn); the
 * caller holds recv_mu. */
static void sk_conn_on_control_cb(void *ctx, const sk_frame *fr)
{
    sk_conn_on_control((sk_conn *)ctx, fr);
}

/* Next frame from the buffer, skipping owed replies.  SK_OK, SK_NEED_DATA or
 * SK_ERR (sticky). */
static int sk_conn_take(sk_conn *c, sk_frame *out, sk_err *err)
{
    int rc;

    for (;;) {
        rc = sk_decoder_next(&c->dec, out);
        if (rc != SK_OK)
            break;
        if (SK_UNLIKELY(out->control)) {
            sk_conn_on_control(c, out);
            continue;
        }
        if (c->owed > 0) {
            c->owed--;
            c->discarded++;
            continue;
        }
        break;
    }
    if (rc == SK_ERR) {
        c->rd_err = c->dec.err;
        if (err != NULL)
            *err = c->rd_err;
    }
    return rc;
}

/* Contract: caller holds the receive lock.  SK_OK while the connection
 * may still deliver; SK_ERR with *err = the read error already recorded
 * (a dead peer that the heartbeat found is recorded first). */
static int sk_conn_rd_check(sk_conn *c, sk_err *err)
{
    int rc = SK_OK;

    if (SK_UNLIKELY(SK_LOAD(&c->hb.dead)) && c->rd_err.code == SK_E_NONE)
        sk_conn_dead_err(c, &c->rd_err);
    if (SK_UNLIKELY(c->rd_err.code != SK_E_NONE)) {
        if (err != NULL)
            *err = c->rd_err;
        rc = SK_ERR;
    }
    return rc;
}

/* Contract: caller holds the receive lock; no GIL needed.  Everything a
 * receive can do before it waits: a buffered frame (SK_OK), the stream's
 * end or an error, or reads while they bring bytes.  Once a read found
 * nothing (rd_wait_first), the next receive skips that empty read and
 * waits first.  SK_NEED_DATA: wait for POLLIN, then sk_conn_fill_woken. */
static int sk_conn_recv_now(sk_conn *c, const sk_intr *intr, sk_frame *out,
                            sk_err *err)
{
    int rc;

    for (;;) {
        rc = sk_conn_take(c, out, err);
        if (rc != SK_NEED_DATA)
            break;
        if (c->rd_eof) {
            rc = sk_conn_eof(c, err);
            break;
        }
        if (c->rd_wait_first)
            break;
        rc = sk_conn_fill(c, intr, err);
        if (rc != SK_OK) {
            if (rc == SK_NEED_DATA)
                c->rd_wait_first = 1;
            break;
        }
    }
    if (rc == SK_NEED_DATA)
        sk_decoder_idle(&c->dec);
    return rc;
}

/* Contract: caller holds the receive lock; no GIL needed.  The read after
 * a wait said readable: SK_OK (bytes came: take again), SK_NEED_DATA (a
 * spurious wake-up: the stream is busy after all, so the next receive
 * reads before it waits) or an error. */
static int sk_conn_fill_woken(sk_conn *c, const sk_intr *intr, sk_err *err)
{
    int rc = sk_conn_fill(c, intr, err);

    if (rc == SK_NEED_DATA)
        c->rd_wait_first = 0;
    return rc;
}

/* Contract: caller holds the receive lock.  Ready the fd for a read that
 * waits in the kernel and may not outlast `left` ns (< 0: no limit): the
 * fd made blocking (once; every other read and write of the core passes
 * MSG_DONTWAIT) and SO_RCVTIMEO at most left - SK_BLOCK_SLACK_NS.  The
 * timeout is changed only when it is too long for this wait, to 7/8 of
 * what is allowed, so request/reply traffic with one timeout sets it once;
 * a wait with no limit sets none (SK_TIMEO_NONE) once.  Until it is set,
 * the fd's own is unknown: an accepted socket inherits its listener's
 * (accept.h).  SK_OK, or SK_NEED_DATA: a syscall failed, poll instead. */
static int sk_conn_block(sk_conn *c, int64_t left)
{
    struct timeval tv;
    int64_t t = 0;
    int fl, rc = SK_NEED_DATA;

    if (!c->rd_blocking) {
        fl = fcntl(c->fd, F_GETFL);
        if (fl < 0 || fcntl(c->fd, F_SETFL, fl & ~O_NONBLOCK) != 0)
            goto done;
        c->rd_blocking = 1;
    }
    if (left < 0 ? c->rd_timeo_ns != SK_TIMEO_NONE
                 : c->rd_timeo_ns == 0 ||
                       c->rd_timeo_ns > left - SK_BLOCK_SLACK_NS) {
        if (left >= 0)
            t = (left - SK_BLOCK_SLACK_NS) / 8 * 7;
        tv.tv_sec = (time_t)(t / 1000000000LL);
        tv.tv_usec = (suseconds_t)(t % 1000000000LL / 1000);
        if (setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0)
            goto done;
        c->rd_timeo_ns = left < 0 ? SK_TIMEO_NONE : t;
    }
    rc = SK_OK;
done:
    return rc;
}

/* Contract: caller holds the receive lock; no GIL needed.  Wait for bytes
 * and read them: SK_OK (bytes, EOF, or a wake-up with nothing: take
 * again), SK_TIMEOUT, SK_INTR or SK_ERR.  With SK_BLOCK_MIN_NS or more to
 * wait, and the real clock, the read itself waits (recv on the blocking fd,
 * bounded by SO_RCVTIMEO: sk_conn_block): one syscall where poll then recv
 * are two, ~0.28 us of each side's 4.3 us round trip on one CPU (bench
 * cref with and without a poll before each recv).  A signal interrupts it
 * like poll (EINTR: Python's handlers are installed without SA_RESTART,
 * and SO_RCVTIMEO reads are never restarted), close() wakes it with
 * shutdown like poll.  Shorter waits poll: SO_RCVTIMEO rounds up to a
 * jiffy, poll to a millisecond.  A connection's first wait polls too:
 * a short connection (sk.call: one request, one reply) would pay two
 * fcntl calls to make its fd blocking for one wait. */
static int sk_conn_wait_fill(sk_conn *c, int64_t deadline, const sk_intr *intr,
                             sk_err *err)
{
    int64_t now = sk_now_ns(), until = sk_intr_until(intr, now, deadline);
    int rc;

    if (!c->rd_waited ||
        (until != SK_NO_DEADLINE && until - now < SK_BLOCK_MIN_NS) ||
        SK_LOAD_RELAXED(&sk_clock_hook) != NULL ||
        sk_conn_block(c, until == SK_NO_DEADLINE ? -1 : until - now) != SK_OK) {
        c->rd_waited = 1;
        rc = sk_wait(c->fd, POLLIN, deadline, intr, err);
        if (rc == SK_OK)
            rc = sk_conn_fill_woken(c, intr, err);
    } else {
        rc = sk_conn_fill_flags(c, intr, 0, err);
        if (rc == SK_NEED_DATA) {
            /* SO_RCVTIMEO passed: the deadline, or a periodic check.  The
             * next wait sets the fd up again: if something made it
             * non-blocking behind our back, EAGAIN came at once, and this
             * keeps that from turning into a busy loop */
            c->rd_blocking = 0;
            c->rd_timeo_ns = 0;
            if (deadline != SK_NO_DEADLINE && sk_now_ns() >= deadline)
                rc = SK_TIMEOUT;
            else if (sk_intr_fire(intr))
                rc = SK_INTR;
        }
    }
    if (rc == SK_NEED_DATA)
        rc = SK_OK;
    return rc;
}

/* Contract: see io.h.  No GIL needed; caller holds the receive lock. */
int sk_conn_recv(sk_conn *c, int64_t deadline, const sk_intr *intr,
                 sk_frame *out, sk_err *err)
{
    int rc = sk_conn_rd_check(c, err);

    while (rc == SK_OK) {
        rc = sk_conn_recv_now(c, intr, out, err);
        if (rc != SK_NEED_DATA)
            goto done;
        rc = sk_conn_wait_fill(c, deadline, intr, err);
    }
done:
    return rc;
}

/* Contract: see io.h.  No GIL needed; caller holds the receive lock.
 * wake_fd must be non-blocking (it is read to drain it). */
int sk_conn_recv_wake(sk_conn *c, int64_t deadline, int wake_fd,
                      short out_events, sk_frame *out, sk_err *err)
{
    struct pollfd p[2];
    uint64_t junk;
    int rc, n, np, woke;

    rc = sk_conn_rd_check(c, err);
    if (rc != SK_OK)
        goto done;
    for (;;) {
        rc = sk_conn_recv_now(c, NULL, out, err);
        if (rc != SK_NEED_DATA)
            goto done;
        p[0].fd = c->fd;
        p[0].events = (short)(POLLIN | out_events);
        p[0].revents = 0;
        np = 1;
        if (wake_fd >= 0) {
            p[1].fd = wake_fd;
            p[1].events = POLLIN;
            p[1].revents = 0;
            np = 2;
        }
        n = poll(p, (nfds_t)np, sk_poll_ms(deadline, -1));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rc = sk_err_sys(err, "poll", errno);
            goto done;
        }
        if (n == 0) {
            if (deadline != SK_NO_DEADLINE && sk_now_ns() >= deadline) {
                rc = SK_TIMEOUT;
                goto done;
            }
            continue;
        }
        if ((p[0].revents | (np == 2 ? p[1].revents : 0)) & POLLNVAL) {
            rc = sk_err_sys(err, "poll", EBADF);
            goto done;
        }
        woke = (p[0].revents & out_events) != 0;
        if (np == 2 && p[1].revents) {
            /* drain the eventfd; EAGAIN: another reader got there first */
            while (read(wake_fd, &junk, sizeof(junk)) < 0 && errno == EINTR)
                ;
            woke = 1;
        }
        if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            rc = sk_conn_fill_woken(c, NULL, err);
            if (rc == SK_NEED_DATA && woke)
                goto done;
            if (rc != SK_OK && rc != SK_NEED_DATA)
                goto done;
            continue;
        }
        if (woke) {
            rc = SK_NEED_DATA;
            goto done;
        }
    }
done:
    return rc;
}

/* Contract: see io.h.  No GIL needed (one non-blocking syscall at most, so
 * callers may also hold it); caller holds the receive lock. */
int sk_conn_recv_nowait(sk_conn *c, sk_frame *out, sk_err *err)
{
    int rc;

    if (c->rd_err.code != SK_E_NONE) {
        if (err != NULL)
            *err = c->rd_err;
        rc = SK_ERR;
        goto done;
    }
    rc = sk_conn_take(c, out, err);
    if (rc != SK_NEED_DATA)
        goto done;
    if (!c->rd_eof) {
        rc = sk_conn_fill(c, NULL, err);
        if (rc != SK_OK)
            goto done;
        rc = sk_conn_take(c, out, err);
        if (rc != SK_NEED_DATA)
            goto done;
    }
    if (c->rd_eof)
        rc = sk_conn_eof(c, err);
done:
    return rc;
}

/* Contract: pure (no syscall); caller holds the receive lock. */
int sk_conn_recv_buffered(sk_conn *c, sk_frame *out, sk_err *err)
{
    int rc = SK_ERR;

    if (c->rd_err.code != SK_E_NONE) {
        if (err != NULL)
            *err = c->rd_err;
    } else {
        rc = sk_conn_take(c, out, err);
    }
    return rc;
}

/* Contract: caller holds recv_mu; never waits.  Frees the read-ahead
 * buffer when nothing is left in it, so an idle connection holds none. */
int sk_conn_pump(sk_conn *c, size_t limit)
{
    int rc = 0, r, full;

    if (c->rd_err.code != SK_E_NONE || c->rd_eof) {
        rc = -1;
        goto done;
    }
    for (;;) {
        if (sk_decoder_buffered(&c->dec) >= limit) {
            rc = 1;
            break;
        }
        r = sk_conn_fill_some(c, SK_PUMP_STEP, &full);
        if (r == SK_NEED_DATA)
            break;
        if (r != SK_OK || c->rd_eof) {
            rc = -1;
            break;
        }
        if (sk_decoder_scan(&c->dec, sk_conn_on_control_cb, c) != SK_OK) {
            c->rd_err = c->dec.err;
            rc = -1;
            break;
        }
        /* a short read emptied the socket: no second recv for EAGAIN (the
         * hub's one-shot epoll registration reports anything newer) */
        if (!full)
            break;
    }
    if (sk_decoder_buffered(&c->dec) == 0)
        sk_decoder_idle(&c->dec);
done:
    return rc;
}

/* Contract: caller holds recv_mu; never waits; bounded by what the kernel
 * holds (each recv empties part of a finite queue). */
void sk_conn_drain(sk_conn *c)
{
    unsigned char sink[16384];
    ssize_t r;

    do {
        r = recv(c->fd, sink, sizeof(sink), MSG_DONTWAIT);
    } while (r > 0 || (r < 0 && errno == EINTR));
}

/* Contract: see io.h.  No GIL needed. */
int sk_conn_close_orderly(sk_conn *c, sk_err *err)
{
    sk_err scratch;
    int rc = SK_OK;

    sk_conn_flush(c, 0, NULL, &scratch); /* what does not fit now is lost */
    sk_conn_drain(c);
    if (close(c->fd) != 0 && errno != EINTR)
        rc = sk_err_sys(err, "close", errno);
    c->fd = -1;
    return rc;
}

/* Contract: no GIL needed; caller holds the send lock. */
int sk_conn_shutdown_write(sk_conn *c, int64_t deadline, const sk_intr *intr,
                           sk_err *err)
{
    int rc = SK_OK;

    if (c->wr_shut)
        goto done;
    rc = sk_conn_flush(c, deadline, intr, err);
    if (rc != SK_OK)
        goto done;
    if (shutdown(c->fd, SHUT_WR) != 0) {
        rc = sk_err_sys(err, "shutdown", errno);
        goto done;
    }
    c->wr_shut = 1;
done:
    return rc;
}
