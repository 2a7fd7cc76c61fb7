/* test_heartbeat.c - the heartbeat rule's pure parts (heartbeat.h): the
 * state a connection starts with, the PING/PONG wire bytes against a
 * reference encoder written from docs/PROTOCOL.md, what a received control
 * frame changes, and the rule itself (sk_hb_tick: when to PING, when the
 * peer is dead, when to look again).  The hub's use of the rule on real
 * sockets is tested in test_hub.c with a fake clock. */
#include "check.h"

#include <string.h>

#include "core/frame.h"
#include "core/heartbeat.h"

#define SEC 1000000000LL

static sk_framing ctl_framing(unsigned hs, int le)
{
    sk_framing f;

    memset(&f, 0, sizeof(f));
    f.header_size = hs;
    f.little_endian = le;
    f.max_frame = 100;
    f.flags = SK_FRAMING_CONTROL;
    return f;
}

/* Reference PING/PONG: [len | top bit][type][ts: 8 BE][rtt us: 4 BE]. */
static size_t ref_control(unsigned hs, int le, int type, uint64_t ts,
                          uint32_t rtt_us, unsigned char *out)
{
    size_t len = type == SK_CTL_PING ? 13 : 9, i;

    ref_put_len(out, hs, le, (1ULL << (8 * hs - 1)) | len);
    out[hs] = (unsigned char)type;
    for (i = 0; i < 8; i++)
        out[hs + 1 + i] = (unsigned char)(ts >> (56 - 8 * i));
    if (type == SK_CTL_PING)
        for (i = 0; i < 4; i++)
            out[hs + 9 + i] = (unsigned char)(rtt_us >> (24 - 8 * i));
    return hs + len;
}

/* A control frame view over body[0..n). */
static sk_frame ctl_frame(const unsigned char *body, size_t n)
{
    sk_frame fr;

    memset(&fr, 0, sizeof(fr));
    fr.data = body;
    fr.len = n;
    fr.control = 1;
    return fr;
}

/* The peer's PING (reporting rtt_ns) or PONG (echoing ts) arrives at
 * `now`: encoded by heartbeat.c, handed to the receive rule. */
static void hb_receive(sk_hb *hb, int type, int64_t ts, int64_t rtt_ns,
                       int64_t now)
{
    unsigned char w[8 + SK_CTL_PING_LEN];
    sk_framing f = ctl_framing(4, 0);
    sk_frame fr;

    sk_hb_encode(&f, type, ts, rtt_ns, w);
    fr = ctl_frame(w + 4, type == SK_CTL_PING ? SK_CTL_PING_LEN
                                              : SK_CTL_PONG_LEN);
    sk_hb_on_control(hb, &fr, now);
}

TEST(init_sets_the_documented_clocks)
{
    sk_hb hb;
    int64_t now = 1000 * SEC;

    sk_hb_init(&hb, 2 * SEC, 7 * SEC, 1, now);
    CHECK_INT(hb.interval_ns, ==, 2 * SEC);
    CHECK_INT(hb.timeout_ns, ==, 7 * SEC);
    CHECK_INT(hb.ping_after_ns, ==, 2 * SEC); /* the side that connected */
    CHECK_INT(hb.last_rx_ns, ==, now);
    CHECK_INT(hb.last_tx_ns, ==, now);
    CHECK_INT(hb.rtt_ns, ==, -1);
    /* the first round-trip sample is due one interval from now */
    CHECK_INT(hb.rtt_at_ns + SK_HB_RTT_EVERY * hb.interval_ns, ==,
              now + 2 * SEC);
    CHECK_INT(hb.pong_ts, ==, 0);
    CHECK_INT(hb.dead, ==, 0);
    CHECK_U64(hb.pings_sent + hb.pongs_sent + hb.pings_recv + hb.pongs_recv +
                  hb.unknown_ctl,
              ==, 0);

    sk_hb_init(&hb, 2 * SEC, 7 * SEC, 0, now);
    CHECK_INT(hb.ping_after_ns, ==, 3 * SEC); /* 1.5 x: the side that accepted */

    sk_hb_init(&hb, 0, 0, 1, now); /* heartbeats off */
    CHECK_INT(hb.interval_ns, ==, 0);
    CHECK_INT(hb.rtt_at_ns, ==, now);
}

TEST(encode_matches_the_reference_for_every_header)
{
    static const unsigned sizes[] = {1, 2, 4, 8};
    static const struct {
        int64_t rtt_ns;
        uint32_t want_us;
    } rtts[] = {
        {-1, SK_CTL_RTT_UNKNOWN},
        {0, 0},
        {999, 0},
        {5 * 1000 * 1000, 5000},
        {(int64_t)0xfffffffeLL * 1000, 0xfffffffeu},
        {(int64_t)0xffffffffLL * 1000, SK_CTL_RTT_UNKNOWN}, /* does not fit */
        {INT64_MAX, SK_CTL_RTT_UNKNOWN},
    };
    unsigned char got[8 + SK_CTL_PING_LEN], want[8 + SK_CTL_PING_LEN];
    uint64_t ts = 0x0102030405060708ULL;
    size_t i, r, n, wn;
    int le;

    for (i = 0; i < 4; i++) {
        for (le = 0; le < 2; le++) {
            sk_framing f = ctl_framing(sizes[i], le);

            for (r = 0; r < sizeof(rtts) / sizeof(rtts[0]); r++) {
                memset(got, 0xAA, sizeof(got));
                n = sk_hb_encode(&f, SK_CTL_PING, (int64_t)ts, rtts[r].rtt_ns,
                                 got);
                wn = ref_control(sizes[i], le, SK_CTL_PING, ts,
                                 rtts[r].want_us, want);
                CHECK_U64(n, ==, wn);
                CHECK_MEM(got, want, wn);
            }
            n = sk_hb_encode(&f, SK_CTL_PONG, (int64_t)ts, 12345, got);
            wn = ref_control(sizes[i], le, SK_CTL_PONG, ts, 0, want);
            CHECK_U64(n, ==, sizes[i] + SK_CTL_PONG_LEN);
            CHECK_U64(n, ==, wn);
            CHECK_MEM(got, want, wn);
        }
    }
}

TEST(encoded_frames_decode_as_control_frames)
{
    sk_framing f = ctl_framing(2, 1);
    unsigned char buf[2 * (8 + SK_CTL_PING_LEN)];
    size_t n;
    sk_decoder d;
    sk_frame fr;

    n = sk_hb_encode(&f, SK_CTL_PING, 77, -1, buf);
    n += sk_hb_encode(&f, SK_CTL_PONG, 78, -1, buf + n);
    sk_decoder_init(&d, &f);
    CHECK_RC(sk_decoder_feed(&d, buf, n), SK_OK, &d.err);
    CHECK_RC(sk_decoder_next(&d, &fr), SK_OK, &d.err);
    CHECK_INT(fr.control, ==, 1);
    CHECK_U64(fr.len, ==, SK_CTL_PING_LEN);
    CHECK_INT(fr.data[0], ==, SK_CTL_PING);
    CHECK_RC(sk_decoder_next(&d, &fr), SK_OK, &d.err);
    CHECK_INT(fr.control, ==, 1);
    CHECK_U64(fr.len, ==, SK_CTL_PONG_LEN);
    CHECK_INT(fr.data[0], ==, SK_CTL_PONG);
    CHECK_RC(sk_decoder_next(&d, &fr), SK_NEED_DATA, &d.err);
    sk_decoder_free(&d);
}

TEST(ping_owes_a_pong_and_reports_the_peers_rtt)
{
    int64_t now = 500 * SEC;
    sk_hb hb;

    sk_hb_init(&hb, SEC, 3 * SEC, 1, now);
    /* rtt unknown to the peer: ours stays unknown */
    hb_receive(&hb, SK_CTL_PING, 4242, -1, now + 1);
    CHECK_U64(hb.pings_recv, ==, 1);
    CHECK_INT(hb.pong_ts, ==, 4242);
    CHECK_INT(hb.rtt_ns, ==, -1);

    /* the peer measured 5 ms: we learn it, and when */
    hb_receive(&hb, SK_CTL_PING, 4343, 5 * 1000 * 1000, now + 2);
    CHECK_U64(hb.pings_recv, ==, 2);
    CHECK_INT(hb.pong_ts, ==, 4343); /* the newest ping is the one echoed */
    CHECK_INT(hb.rtt_ns, ==, 5 * 1000 * 1000);
    CHECK_INT(hb.rtt_at_ns, ==, now + 2);

    /* a peer whose clock reads 0 still gets a pong (0 means "none owed") */
    hb_receive(&hb, SK_CTL_PING, 0, -1, now + 3);
    CHECK_INT(hb.pong_ts, ==, 1);
    CHECK_U64(hb.unknown_ctl, ==, 0);
}

TEST(pong_measures_the_round_trip_from_our_own_timestamp)
{
    int64_t now = 500 * SEC;
    sk_hb hb;

    sk_hb_init(&hb, SEC, 3 * SEC, 1, now);
    hb_receive(&hb, SK_CTL_PONG, now - 7 * 1000 * 1000, -1, now);
    CHECK_U64(hb.pongs_recv, ==, 1);
    CHECK_INT(hb.rtt_ns, ==, 7 * 1000 * 1000);
    CHECK_INT(hb.rtt_at_ns, ==, now);
    CHECK_INT(hb.pong_ts, ==, 0); /* a pong owes nothing */

    /* a timestamp from the future or 0 is not ours: counted, ignored */
    hb_receive(&hb, SK_CTL_PONG, now + 11, -1, now + 10);
    hb_receive(&hb, SK_CTL_PONG, 0, -1, now + 10);
    CHECK_U64(hb.pongs_recv, ==, 3);
    CHECK_INT(hb.rtt_ns, ==, 7 * 1000 * 1000);
    CHECK_INT(hb.rtt_at_ns, ==, now);
}

TEST(unknown_or_malformed_control_frames_are_counted_and_ignored)
{
    unsigned char body[SK_CONTROL_MAX];
    int64_t now = 9 * SEC;
    sk_frame fr;
    sk_hb hb, before;
    size_t n;

    memset(body, 0x11, sizeof(body));
    sk_hb_init(&hb, SEC, 3 * SEC, 0, now);
    before = hb;
    body[0] = 7; /* a type from the future */
    fr = ctl_frame(body, 5);
    sk_hb_on_control(&hb, &fr, now);
    /* a PING or PONG of the wrong length, every length up to the maximum */
    for (n = 1; n <= SK_CONTROL_MAX; n++) {
        body[0] = SK_CTL_PING;
        fr = ctl_frame(body, n);
        if (n != SK_CTL_PING_LEN)
            sk_hb_on_control(&hb, &fr, now);
        body[0] = SK_CTL_PONG;
        fr = ctl_frame(body, n);
        if (n != SK_CTL_PONG_LEN)
            sk_hb_on_control(&hb, &fr, now);
    }
    CHECK_U64(hb.unknown_ctl, ==, 1 + 2 * (SK_CONTROL_MAX - 1));
    /* nothing else moved */
    CHECK_INT(hb.last_rx_ns, ==, before.last_rx_ns);
    CHECK_INT(hb.last_tx_ns, ==, before.last_tx_ns);
    CHECK_INT(hb.rtt_ns, ==, before.rtt_ns);
    CHECK_INT(hb.rtt_at_ns, ==, before.rtt_at_ns);
    CHECK_INT(hb.pong_ts, ==, 0);
    CHECK_INT(hb.dead, ==, 0);
    CHECK_U64(hb.pings_recv + hb.pongs_recv + hb.pings_sent + hb.pongs_sent,
              ==, 0);
}

/* ---- the rule: sk_hb_tick ---------------------------------------------- */

/* A fresh view as sk_hb_init makes it (interval 1 s, timeout 3 s). */
static sk_hb_view rule_view(int initiator, int64_t now)
{
    sk_hb_view v;

    memset(&v, 0, sizeof(v));
    v.interval_ns = SEC;
    v.timeout_ns = 3 * SEC;
    v.ping_after_ns = sk_hb_ping_after(SEC, initiator);
    v.last_rx_ns = now;
    v.last_tx_ns = now;
    v.rtt_at_ns = sk_hb_first_rtt_at(SEC, now);
    return v;
}

TEST(rule_pings_after_the_interval_and_says_when_to_look_again)
{
    int64_t t0 = 1000 * SEC, due;
    sk_hb_view v = rule_view(1, t0);

    /* just started: nothing to do; look again when the first PING (and the
     * first round-trip sample) is due */
    CHECK_INT(sk_hb_tick(&v, t0, -1, &due), ==, 0);
    CHECK_INT(due, ==, t0 + SEC);
    CHECK_INT(sk_hb_tick(&v, t0 + SEC - 1, -1, &due), ==, 0);
    CHECK_INT(sk_hb_tick(&v, t0 + SEC, -1, &due), ==, SK_HB_PING);
    /* the PING went out (last_tx now) but the sample is still due: the
     * next look is interval / 8 away, not a busy loop */
    v.last_tx_ns = t0 + SEC;
    CHECK_INT(sk_hb_tick(&v, t0 + SEC, -1, &due), ==, SK_HB_PING);
    CHECK_INT(due, ==, t0 + SEC + SEC / 8);
    /* the PONG came back: the next sample is SK_HB_RTT_EVERY intervals on,
     * the next PING one interval after the last byte sent */
    v.rtt_at_ns = t0 + SEC;
    v.last_rx_ns = t0 + SEC;
    CHECK_INT(sk_hb_tick(&v, t0 + SEC, -1, &due), ==, 0);
    CHECK_INT(due, ==, t0 + 2 * SEC);
}

TEST(rule_the_acceptor_waits_one_and_a_half_intervals)
{
    int64_t t0 = 5 * SEC, due;
    sk_hb_view v = rule_view(0, t0);

    CHECK_INT(v.ping_after_ns, ==, SEC + SEC / 2);
    v.rtt_at_ns = t0; /* a sample was just taken */
    CHECK_INT(sk_hb_tick(&v, t0 + SEC, -1, &due), ==, 0);
    CHECK_INT(due, ==, t0 + SEC + SEC / 2);
    CHECK_INT(sk_hb_tick(&v, t0 + SEC + SEC / 2, -1, &due), ==, SK_HB_PING);
    /* an owed PONG is asked for on its own */
    v.pong_owed = 1;
    CHECK_INT(sk_hb_tick(&v, t0 + SEC, -1, &due), ==, SK_HB_PONG);
    /* a side whose PINGs are not needed still samples the round trip */
    v.pong_owed = 0;
    v.last_tx_ns = t0 + SK_HB_RTT_EVERY * SEC;
    v.last_rx_ns = t0 + SK_HB_RTT_EVERY * SEC;
    CHECK_INT(sk_hb_tick(&v, t0 + SK_HB_RTT_EVERY * SEC, -1, &due), ==,
              SK_HB_PING);
}

TEST(rule_overdue_peer_check_then_alive_or_dead)
{
    int64_t t0 = 100 * SEC, now = t0 + 3 * SEC, due;
    sk_hb_view v = rule_view(1, t0);

    v.last_tx_ns = now; /* we kept sending: only the receive side matters */
    v.rtt_at_ns = now;
    CHECK_INT(sk_hb_tick(&v, now - SEC / 2, -1, &due), ==, 0);
    CHECK_INT(due, ==, now); /* the timeout is the next thing due */
    /* overdue, unread bytes not looked at: look first, nothing else */
    CHECK_INT(sk_hb_tick(&v, now, -1, &due), ==, SK_HB_CHECK);
    /* the kernel holds unread bytes: the peer is alive, we are slow */
    CHECK_INT(sk_hb_tick(&v, now, 17, &due), ==, SK_HB_ALIVE);
    CHECK_INT(due, ==, now + SEC); /* as if just received: PING due next */
    /* nothing unread: dead, and never looked at again */
    CHECK_INT(sk_hb_tick(&v, now, 0, &due), ==, SK_HB_DEAD);
    CHECK_INT(due, ==, SK_HB_NEVER);
    v.dead = 1;
    CHECK_INT(sk_hb_tick(&v, now + 100 * SEC, 0, &due), ==, 0);
    CHECK_INT(due, ==, SK_HB_NEVER);
}

TEST(rule_after_end_of_stream_silence_proves_nothing)
{
    int64_t t0 = SEC, now = t0 + 10 * SEC, due;
    sk_hb_view v = rule_view(1, t0);

    v.rx_done = 1;
    v.last_tx_ns = now;
    v.rtt_at_ns = now;
    CHECK_INT(sk_hb_tick(&v, now, 0, &due), ==, 0);
    CHECK_INT(due, ==, now + SEC); /* the PING, not the timeout */
}

TEST(rule_view_of_reads_the_shared_clocks)
{
    int64_t now = 42 * SEC, due;
    sk_hb_view v;
    sk_hb hb;

    sk_hb_init(&hb, SEC, 3 * SEC, 0, now);
    sk_hb_view_of(&hb, &v);
    CHECK_INT(v.interval_ns, ==, SEC);
    CHECK_INT(v.timeout_ns, ==, 3 * SEC);
    CHECK_INT(v.ping_after_ns, ==, hb.ping_after_ns);
    CHECK_INT(v.last_rx_ns, ==, now);
    CHECK_INT(v.rtt_at_ns, ==, hb.rtt_at_ns);
    CHECK_INT(v.pong_owed, ==, 0);
    CHECK_INT(v.rx_done, ==, 0);
    CHECK_INT(v.dead, ==, 0);
    hb.pong_ts = 7;
    hb.dead = 1;
    sk_hb_view_of(&hb, &v);
    CHECK_INT(v.pong_owed, ==, 1);
    CHECK_INT(sk_hb_tick(&v, now, -1, &due), ==, 0);
    CHECK_INT(due, ==, SK_HB_NEVER);
}
