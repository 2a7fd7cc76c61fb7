/*
 * fuzz_send.c - libFuzzer harness for the encoder and the send path
 * (csrc/core/io.h: sk_conn_send, sk_conn_enqueue, sk_conn_flush,
 * sk_conn_send_control and the owed PONG) over a socket that takes random
 * short writes.
 *
 * FUZZ_LDFLAGS: -Wl,--wrap=sendmsg -Wl,--wrap=send -Wl,--wrap=poll
 * FUZZ_MAXLEN: 1024
 *
 * The connection's fd is a fake: the link wraps sendmsg, send (io.c sends
 * one buffer with send, several with sendmsg) and poll (only in this
 * harness), and for that fd the input decides what the "kernel" does
 * with each write - take k bytes (1 .. all), EAGAIN, EINTR, or a reset -
 * and whether a poll says writable or times out; the interrupt check asks
 * to stop when the input says so.  Everything written is appended to
 * `wire`.
 *
 * Input: byte 0 configures the framing (bits 0-1 header size 1/2/4/8, bit
 * 2 little endian, bit 3 control frames, bit 4 correlation ids, bit 5
 * heartbeats on, bits 6-7 max_frame 1 MiB / 100 / 5000 / 70000).  The rest
 * is read in execution order by the operations (send a batch of 1-6
 * frames of 0 B .. 70 KB with or without a deadline and an interrupt
 * check, enqueue one, flush, send a PING or PONG, owe a PONG, make the
 * next allocation fail) and by the fake kernel's decisions.  When the
 * input runs out, the kernel takes everything.
 *
 * Checked after every operation (until a reset or an allocation failure
 * tears a frame, after which only the error's type is checked):
 *   - a frame longer than max_frame fails the whole call with
 *     SK_E_TOO_LARGE (detail = its index) and nothing is written;
 *   - bytes on the wire + bytes queued in the connection == the encoding
 *     of exactly the frames taken so far (a send's *done, every enqueue,
 *     every control frame reported sent, every owed PONG that went out),
 *     and the wire is a prefix of that encoding: nothing lost, repeated,
 *     reordered or torn;
 *   - errors are typed: SK_E_RESET naming send or sendmsg for a reset, SK_E_NOMEM
 *     for a failed allocation.
 * At the end the kernel takes everything, a flush must empty the queue,
 * and the wire, decoded by the reference decoder (ref_frame.h), gives
 * exactly the frames taken, in order, ids and control frames included.
 */
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <fcntl.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/frame.h"
#include "core/heartbeat.h"
#include "core/io.h"
#include "ref_frame.h"
#include "core/sys.h"
#include "require.h"

#define MAX_BYTES (256u << 10) /* expected bytes per input */

/* ---- growable byte arrays ---------------------------------------------- */

typedef struct bytes {
    unsigned char *p;
    size_t len, cap;
} bytes;

static void bytes_add(bytes *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        REQUIRE(b->p != NULL);
        b->cap = cap;
    }
    if (n && p != NULL)
        memcpy(b->p + b->len, p, n);
    b->len += n;
}

/* ---- the input, read in execution order -------------------------------- */

static const uint8_t *in_p;
static size_t in_n, in_pos;

static int in_more(void)
{
    return in_pos < in_n;
}

static unsigned in_byte(void)
{
    return in_pos < in_n ? in_p[in_pos++] : 0;
}

/* ---- the fake kernel --------------------------------------------------- */

static struct {
    int fd;         /* the fake socket's number (a /dev/null fd) */
    int reset;      /* errno of a reset, sticky once given */
    bytes wire;
} k;

ssize_t __real_sendmsg(int fd, const struct msghdr *mh, int flags);
int __real_poll(struct pollfd *fds, nfds_t n, int timeout);

ssize_t __real_send(int fd, const void *buf, size_t len, int flags);
ssize_t __wrap_sendmsg(int fd, const struct msghdr *mh, int flags);
ssize_t __wrap_send(int fd, const void *buf, size_t len, int flags);
int __wrap_poll(struct pollfd *fds, nfds_t n, int timeout);

ssize_t __wrap_sendmsg(int fd, const struct msghdr *mh, int flags)
{
    size_t total = 0, take, i, left;
    unsigned b;

    if (fd != k.fd)
        return __real_sendmsg(fd, mh, flags);
    if (k.reset) {
        errno = k.reset;
        return -1;
    }
    for (i = 0; i < mh->msg_iovlen; i++)
        total += mh->msg_iov[i].iov_len;
    REQUIRE(total > 0);
    take = total;
    if (in_more()) {
        b = in_byte();
        switch (b & 7) {
        case 0:
        case 1:
            errno = EAGAIN;
            return -1;
        case 2:
            errno = EINTR;
            return -1;
        case 3:
            if ((b >> 3) == 31) { /* rare: the peer reset */
                k.reset = (b & 8) ? EPIPE : ECONNRESET;
                errno = k.reset;
                return -1;
            }
            take = 1;
            break;
        default:
            take = 1 + (size_t)(b >> 3) * total / 32;
            break;
        }
        if (take > total)
            take = total;
    }
    for (i = 0, left = take; left > 0; i++) {
        size_t n = mh->msg_iov[i].iov_len < left ? mh->msg_iov[i].iov_len
                                                 : left;
        bytes_add(&k.wire, mh->msg_iov[i].iov_base, n);
        left -= n;
    }
    return (ssize_t)take;
}

/* send(): the same fake kernel, on a one-entry iovec */
ssize_t __wrap_send(int fd, const void *buf, size_t len, int flags)
{
    struct iovec iov;
    struct msghdr mh;

    if (fd != k.fd)
        return __real_send(fd, buf, len, flags);
    iov.iov_base = (void *)buf;
    iov.iov_len = len;
    memset(&mh, 0, sizeof(mh));
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    return __wrap_sendmsg(fd, &mh, flags);
}

int __wrap_poll(struct pollfd *fds, nfds_t n, int timeout)
{
    if (n != 1 || fds[0].fd != k.fd)
        return __real_poll(fds, n, timeout);
    if (in_more() && (in_byte() & 3) == 0)
        return 0; /* not writable before the timeout */
    fds[0].revents = fds[0].events & POLLOUT;
    return 1;
}

static int intr_check(void *ctx)
{
    (void)ctx;
    return in_more() && (in_byte() & 7) == 0;
}

/* ---- allocation failures (sys.h's hook) -------------------------------- */

static int fail_armed;

static int fault_hook(sk_sys_call call, const char *site)
{
    (void)call;
    (void)site;
    if (!fail_armed)
        return 0;
    fail_armed = 0;
    return 1;
}

/* ---- the model ------------------------------------------------------------ */

typedef struct mframe {
    int control;
    int has_id;
    uint64_t id;
    size_t len;
    uint64_t seed; /* payload bytes: pay_byte(seed, i); control: the body */
    unsigned char body[SK_CTL_PING_LEN];
} mframe;

static struct {
    sk_framing f;
    mframe *v;
    size_t n, cap;
    bytes enc; /* the reference encoding of v[0..n) */
    uint64_t seq;
} m;

/* Payload bytes: frame `seed` is pattern[off(seed) ..], so payloads are
 * made and compared with memcpy/memcmp. */
#define PAT_SPAN 4096
#define MAX_LEN 72000 /* longest frame drawn: 70,150 */
static unsigned char pattern[PAT_SPAN + MAX_LEN];

static const unsigned char *pay_of(uint64_t seed)
{
    size_t i;

    if (pattern[1] == 0)
        for (i = 0; i < sizeof(pattern); i++)
            pattern[i] = (unsigned char)(i * 7 + (i >> 9) + 1);
    return pattern + (seed * 37) % PAT_SPAN;
}

/* Reference header: the length field (with the control or correlation
 * bit) in the configured size and byte order. */
static void ref_header(uint64_t v, unsigned char *out)
{
    unsigned hs = m.f.header_size, i;

    for (i = 0; i < hs; i++) {
        unsigned shift = 8 * (m.f.little_endian ? i : hs - 1 - i);
        out[i] = (unsigned char)(shift < 64 ? v >> shift : 0);
    }
}

static void model_take(const mframe *fr)
{
    unsigned char h[16];
    unsigned hs = m.f.header_size, i;
    uint64_t field = fr->len;

    if (m.n == m.cap) {
        m.cap = m.cap ? 2 * m.cap : 64;
        m.v = realloc(m.v, m.cap * sizeof(*m.v));
        REQUIRE(m.v != NULL);
    }
    m.v[m.n++] = *fr;
    if (fr->control)
        field |= 1ULL << (8 * hs - 1);
    else if (fr->has_id)
        field = (fr->len + SK_ID_LEN) | (1ULL << (8 * hs - 2));
    ref_header(field, h);
    bytes_add(&m.enc, h, hs);
    if (fr->has_id) {
        for (i = 0; i < 8; i++)
            h[i] = (unsigned char)(fr->id >> (56 - 8 * i));
        bytes_add(&m.enc, h, 8);
    }
    if (fr->control) {
        bytes_add(&m.enc, fr->body, fr->len);
    } else {
        bytes_add(&m.enc, pay_of(fr->seed), fr->len);
    }
}

/* A control frame's body as the protocol defines it (independently of
 * heartbeat.c): type, 8-byte timestamp, and for a PING the rtt report. */
static void control_body(mframe *fr, int type, uint64_t ts, int64_t rtt_ns)
{
    uint32_t us = 0xffffffffu;
    int i;

    memset(fr, 0, sizeof(*fr));
    fr->control = 1;
    fr->len = type == SK_CTL_PING ? SK_CTL_PING_LEN : SK_CTL_PONG_LEN;
    fr->body[0] = (unsigned char)type;
    for (i = 0; i < 8; i++)
        fr->body[1 + i] = (unsigned char)(ts >> (56 - 8 * i));
    if (type == SK_CTL_PING) {
        if (rtt_ns >= 0 && rtt_ns / 1000 < 0xffffffffLL)
            us = (uint32_t)(rtt_ns / 1000);
        for (i = 0; i < 4; i++)
            fr->body[9 + i] = (unsigned char)(us >> (24 - 8 * i));
    }
}

/* A data frame drawn from the input. */
static void draw_frame(mframe *fr, unsigned a)
{
    unsigned l = in_byte();

    memset(fr, 0, sizeof(*fr));
    switch (l & 3) {
    case 0: fr->len = l >> 2; break;                /* 0 .. 63 */
    case 1: fr->len = 1000 + (l >> 2); break;       /* around SK_SMALL */
    case 2: fr->len = (size_t)(l >> 2) * 81; break; /* .. 5,103 */
    default: /* past 16,375 and 65,535 (2-byte headers), 70,000 */
        fr->len = (l & 4) ? 16000 + (size_t)(l >> 3) * 25
                          : 65500 + (size_t)(l >> 3) * 150;
        break;
    }
    fr->seed = ++m.seq;
    if ((m.f.flags & SK_FRAMING_IDS) && (a & 1)) {
        fr->has_id = 1;
        fr->id = m.seq * 0x9E3779B97F4A7C15ULL;
    }
}

/* The payload in its own block (ASan then sees any access past it). */
static unsigned char *payload_of(const mframe *fr)
{
    unsigned char *p = malloc(fr->len ? fr->len : 1);

    REQUIRE(p != NULL);
    if (fr->len)
        memcpy(p, pay_of(fr->seed), fr->len);
    return p;
}

/* Bytes on the wire + bytes queued == the encoding of the frames taken,
 * and the wire is its prefix (compared from where the last check
 * stopped: the wire only grows). */
static size_t checked;

static void check_stream(sk_conn *c)
{
    REQUIRE(k.wire.len + sk_conn_queued(c) == m.enc.len);
    REQUIRE(k.wire.len >= checked);
    REQUIRE(k.wire.len == checked ||
            memcmp(k.wire.p + checked, m.enc.p + checked,
                   k.wire.len - checked) == 0);
    checked = k.wire.len;
}

/* Empties the model and the wire for the next input.  Their storage is
 * kept (up to 1 MiB each): allocating and faulting in a fresh 256 KiB
 * twice per input was a tenth of the harness's time.  Only the harness
 * writes them (the core's payloads stay in blocks of their own, see
 * payload_of), so keeping them hides nothing from ASan. */
static void reset_model(void)
{
    bytes enc = m.enc, wire = k.wire;
    mframe *v = m.v;
    size_t vcap = m.cap;

    if (enc.cap > (1u << 20)) {
        free(enc.p);
        memset(&enc, 0, sizeof(enc));
    }
    if (wire.cap > (1u << 20)) {
        free(wire.p);
        memset(&wire, 0, sizeof(wire));
    }
    memset(&m, 0, sizeof(m));
    m.enc = enc;
    m.enc.len = 0;
    m.v = v;
    m.cap = vcap;
    k.wire = wire;
    k.wire.len = 0;
}

/* An owed PONG went out with the call just made: the model takes it. */
static void pong_check(sk_conn *c, int64_t owed)
{
    mframe fr;

    if (owed != 0 && SK_LOAD(&c->hb.pong_ts) == 0) {
        control_body(&fr, SK_CTL_PONG, (uint64_t)owed, -1);
        model_take(&fr);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const unsigned hsizes[4] = {1, 2, 4, 8};
    static const uint64_t maxes[4] = {1u << 20, 100, 5000, 70000};
    sk_intr intr = {intr_check, NULL, 0};
    sk_conn c;
    sk_err err;
    int broken = 0, rc;
    ref_result ref;
    size_t i;

    if (size < 1)
        return 0;
    reset_model();
    checked = 0;
    k.reset = 0;
    if (k.fd <= 0)
        k.fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    REQUIRE(k.fd > 0);
    m.f.header_size = hsizes[data[0] & 3];
    m.f.little_endian = (data[0] >> 2) & 1;
    m.f.flags = ((data[0] & 8) ? SK_FRAMING_CONTROL : 0) |
                ((data[0] & 16) ? SK_FRAMING_IDS : 0);
    if (m.f.header_size == 1)
        m.f.flags &= ~SK_FRAMING_IDS; /* no room for the id bit */
    m.f.max_frame = maxes[data[0] >> 6];
    if (m.f.max_frame > sk_framing_limit(&m.f))
        m.f.max_frame = sk_framing_limit(&m.f);
    REQUIRE(sk_conn_init(&c, k.fd, &m.f, &err) == SK_OK);
    if ((data[0] & 32) && (m.f.flags & SK_FRAMING_CONTROL))
        REQUIRE(sk_conn_heartbeat(&c, 1000000000, 3000000000LL, 1, &err) ==
                SK_OK);
    in_p = data + 1;
    in_n = size - 1;
    in_pos = 0;
    __atomic_store_n(&sk_fault_hook, fault_hook, __ATOMIC_RELEASE);
    fail_armed = 0;

    while (in_more() && m.enc.len < MAX_BYTES) {
        unsigned op = in_byte();
        int64_t owed = SK_LOAD(&c.hb.pong_ts);

        switch (op & 7) {
        case 0:
        case 1: { /* send a batch */
            mframe fr[6];
            sk_iov iov[6];
            size_t n = 1 + (op >> 3) % 6, done = 99, too_large = SIZE_MAX;
            size_t before_wire = k.wire.len, before_q = sk_conn_queued(&c);
            int64_t deadline = (op & 1) ? SK_NO_DEADLINE : sk_now_ns();

            for (i = 0; i < n; i++) {
                draw_frame(&fr[i], op >> 6 >> (i & 1));
                iov[i].base = payload_of(&fr[i]);
                iov[i].len = fr[i].len;
                iov[i].id = fr[i].id;
                iov[i].has_id = fr[i].has_id;
                if (fr[i].len > m.f.max_frame && too_large == SIZE_MAX)
                    too_large = i;
            }
            rc = sk_conn_send(&c, iov, n, deadline, (op & 64) ? &intr : NULL,
                              &done, &err);
            for (i = 0; i < n; i++)
                free((void *)iov[i].base);
            if (too_large != SIZE_MAX && !broken) {
                REQUIRE(rc == SK_ERR && err.code == SK_E_TOO_LARGE);
                REQUIRE(err.detail == too_large);
                REQUIRE(done == 0);
                REQUIRE(k.wire.len == before_wire);
                REQUIRE(sk_conn_queued(&c) == before_q);
                break;
            }
            REQUIRE(done <= n);
            if (rc == SK_OK)
                REQUIRE(done == n);
            for (i = 0; i < done; i++)
                model_take(&fr[i]);
            if (rc == SK_ERR) {
                REQUIRE(err.code == SK_E_RESET || err.code == SK_E_NOMEM ||
                        err.code == SK_E_TOO_LARGE);
                if (err.code == SK_E_RESET) {
                    REQUIRE(err.syscall != NULL &&
                            (strcmp(err.syscall, "sendmsg") == 0 ||
                             strcmp(err.syscall, "send") == 0));
                    REQUIRE(err.sys_errno == k.reset);
                }
                broken = 1; /* a frame may be torn for good */
            } else {
                REQUIRE(rc == SK_OK || rc == SK_TIMEOUT || rc == SK_INTR);
                pong_check(&c, owed);
            }
            break;
        }
        case 2: { /* enqueue one frame (write-behind) */
            mframe fr;
            sk_iov iov;

            draw_frame(&fr, op >> 3);
            iov.base = payload_of(&fr);
            iov.len = fr.len;
            iov.id = fr.id;
            iov.has_id = fr.has_id;
            rc = sk_conn_enqueue(&c, &iov, &err);
            free((void *)iov.base);
            if (fr.len > m.f.max_frame)
                REQUIRE(rc == SK_ERR && err.code == SK_E_TOO_LARGE);
            else if (rc == SK_OK)
                model_take(&fr);
            else
                REQUIRE(err.code == SK_E_NOMEM); /* nothing queued */
            break;
        }
        case 3: /* flush */
            rc = sk_conn_flush(&c, (op & 8) ? SK_NO_DEADLINE : sk_now_ns(),
                               (op & 16) ? &intr : NULL, &err);
            if (rc == SK_OK)
                REQUIRE(sk_conn_queued(&c) == 0);
            else if (rc == SK_ERR)
                REQUIRE(err.code == SK_E_RESET);
            break;
        case 4: { /* a PING or a PONG, never waiting */
            int type = (op & 8) ? SK_CTL_PING : SK_CTL_PONG;
            uint64_t ts = 1 + (uint64_t)(op >> 4) * 1000003;
            mframe fr;

            if (!(m.f.flags & SK_FRAMING_CONTROL))
                break;
            rc = sk_conn_send_control(&c, type, (int64_t)ts, &err);
            if (rc == SK_OK) {
                control_body(&fr, type, ts, SK_LOAD(&c.hb.rtt_ns));
                model_take(&fr);
            } else if (rc == SK_ERR) {
                REQUIRE(err.code == SK_E_RESET || err.code == SK_E_NOMEM);
                broken = 1;
            }
            break;
        }
        case 5: { /* the peer pinged: a PONG is owed (rtt report too) */
            unsigned char body[SK_CTL_PING_LEN];
            sk_frame fr;

            if (!(m.f.flags & SK_FRAMING_CONTROL))
                break; /* control frames exist only with the extension */
            memset(body, 0, sizeof(body));
            body[0] = SK_CTL_PING;
            body[8] = (unsigned char)(op | 1); /* ts, never 0 */
            body[12] = (unsigned char)op;      /* rtt report */
            memset(&fr, 0, sizeof(fr));
            fr.data = body;
            fr.len = sizeof(body);
            fr.control = 1;
            sk_hb_on_control(&c.hb, &fr, 1000);
            break;
        }
        case 6: /* the next allocation fails */
            fail_armed = 1;
            break;
        default:
            break;
        }
        /* a reset met by a write whose result the core drops (the owed
         * PONG sent after a batch) ends the stream too: the peer is gone,
         * and the next write reports it */
        if (k.reset)
            broken = 1;
        if (!broken)
            check_stream(&c);
    }
    __atomic_store_n(&sk_fault_hook, (sk_fault_fn)NULL, __ATOMIC_RELEASE);
    fail_armed = 0;

    if (!broken && !k.reset) {
        /* the kernel takes everything now: the queue empties, and the wire
         * decodes to exactly the frames taken */
        in_pos = in_n;
        REQUIRE(sk_conn_flush(&c, SK_NO_DEADLINE, NULL, &err) == SK_OK);
        REQUIRE(sk_conn_queued(&c) == 0);
        check_stream(&c);
        ref_decode(k.wire.p, k.wire.len, m.f.header_size, m.f.little_endian,
                   (m.f.flags & SK_FRAMING_CONTROL) != 0,
                   (m.f.flags & SK_FRAMING_IDS) != 0, m.f.max_frame, &ref);
        REQUIRE(ref.outcome == 0);
        REQUIRE(ref.n == m.n);
        for (i = 0; i < m.n; i++) {
            const ref_frame *rf = &ref.frames[i];
            const mframe *fr = &m.v[i];

            REQUIRE(rf->control == fr->control);
            REQUIRE(rf->len == fr->len);
            REQUIRE(rf->has_id == fr->has_id);
            REQUIRE(!fr->has_id || rf->id == fr->id);
            REQUIRE(fr->len == 0 ||
                    memcmp(k.wire.p + rf->off,
                           fr->control ? fr->body : pay_of(fr->seed),
                           fr->len) == 0);
        }
        free(ref.frames);
    }
    sk_conn_release(&c);
    return 0;
}
