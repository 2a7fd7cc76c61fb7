/* test_err.c - the sk_err record (sk.h, err.c): messages fit, and one that
 * does not is cut at a word boundary with "...", never mid-word. */
#include "check.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "core/frame.h"
#include "core/sk.h"

/* len bytes of words separated by spaces and clause marks, NUL-terminated */
static void words(char *out, size_t len)
{
    static const char *const w[] = {"alpha", "beta,", "gamma", "delta;",
                                    "epsilon", "zeta:", "eta", "theta"};
    size_t n = 0, k = 0;

    while (n + 1 < len) {
        const char *s = w[k++ % 8];
        while (*s && n + 1 < len)
            out[n++] = *s++;
        if (n + 1 < len)
            out[n++] = ' ';
    }
    out[n] = '\0';
}

static int ends_with(const char *s, const char *tail)
{
    size_t a = strlen(s), b = strlen(tail);

    return a >= b && memcmp(s + a - b, tail, b) == 0;
}

TEST(short_message_is_kept_whole)
{
    sk_err err;

    CHECK_INT(sk_err_set(&err, SK_E_ARG, "frame %d of %s", 5, "ten"), ==,
              SK_ERR);
    CHECK_STR(err.msg, "frame 5 of ten");
    CHECK_INT(err.code, ==, SK_E_ARG);
    CHECK_INT(sk_err_set(NULL, SK_E_ARG, "no record"), ==, SK_ERR);
}

TEST(exactly_full_message_is_not_cut)
{
    char text[SK_ERRMSG_MAX];
    sk_err err;

    memset(text, 'x', sizeof(text) - 1);
    text[sizeof(text) - 1] = '\0';
    sk_err_set(&err, SK_E_ARG, "%s", text);
    CHECK_STR(err.msg, text);
}

TEST(long_message_is_cut_at_a_word_boundary)
{
    char full[3 * SK_ERRMSG_MAX];
    size_t total, kept, len;
    sk_err err;

    for (total = SK_ERRMSG_MAX; total < sizeof(full); total += 7) {
        words(full, total);
        sk_err_set(&err, SK_E_PROTOCOL, "%s", full);
        len = strlen(err.msg);
        if (strlen(full) < SK_ERRMSG_MAX) {
            CHECK_STR(err.msg, full);
            continue;
        }
        CHECK_U64(len, <, SK_ERRMSG_MAX);
        CHECK(ends_with(err.msg, "..."));
        kept = len - 3;
        /* the kept text is the start of the message ... */
        CHECK_MEM(err.msg, full, kept);
        /* ... ending with a whole word, not a space or a clause mark */
        CHECK(strchr(" ,;:", err.msg[kept - 1]) == NULL);
        CHECK(strchr(" ,;:", full[kept]) != NULL);
        /* and it keeps most of the message */
        CHECK_U64(kept, >, SK_ERRMSG_MAX / 2);
        if (sk_check_failures())
            break;
    }
}

TEST(one_overlong_word_is_cut_with_an_ellipsis)
{
    char full[2 * SK_ERRMSG_MAX];
    sk_err err;

    memset(full, 'w', sizeof(full) - 1);
    full[sizeof(full) - 1] = '\0';
    sk_err_set(&err, SK_E_ARG, "%s", full);
    CHECK_U64(strlen(err.msg), ==, SK_ERRMSG_MAX - 1);
    CHECK(ends_with(err.msg, "..."));
    CHECK_MEM(err.msg, full, SK_ERRMSG_MAX - 4);
}

TEST(utf8_sequence_is_never_split)
{
    char full[2 * SK_ERRMSG_MAX + 1];
    size_t i, kept;
    sk_err err;

    for (i = 0; i + 2 < sizeof(full); i += 2)
        memcpy(full + i, "\xc3\xa9", 2); /* U+00E9, no spaces */
    full[i] = '\0';
    sk_err_set(&err, SK_E_ARG, "%s", full);
    CHECK(ends_with(err.msg, "..."));
    kept = strlen(err.msg) - 3;
    CHECK_U64(kept % 2, ==, 0);
    CHECK_MEM(err.msg, full, kept);
}

TEST(syscall_message_names_the_syscall)
{
    sk_err err;

    CHECK_INT(sk_err_sys(&err, "connect", ECONNREFUSED), ==, SK_ERR);
    CHECK_STR(err.msg, "connect: Connection refused");
    CHECK_INT(err.sys_errno, ==, ECONNREFUSED);
    CHECK_STR(err.syscall, "connect");
    CHECK_INT(sk_err_sys(&err, "send", EPIPE), ==, SK_ERR);
    CHECK_INT(err.code, ==, SK_E_RESET);
}

static sk_framing framing8(uint64_t max, unsigned flags)
{
    sk_framing f;

    memset(&f, 0, sizeof(f));
    f.header_size = 8;
    f.max_frame = max;
    f.flags = flags;
    return f;
}

/* The core's longest messages, with 20-digit numbers, fit whole. */
TEST(longest_core_messages_fit_whole)
{
    sk_framing f;
    sk_decoder d;
    sk_frame fr;
    sk_err err;
    unsigned char hdr[8 + 4];
    size_t lens[2];
    unsigned char out[16];

    /* a peer announcing a frame over max_frame */
    f = framing8(UINT64_MAX - 1, 0);
    CHECK_RC(sk_framing_check(&f, &err), SK_OK, &err);
    sk_decoder_init(&d, &f);
    ref_put_len(hdr, 8, 0, UINT64_MAX);
    sk_decoder_feed(&d, hdr, 8); /* fails here or at the next call */
    if (d.err.code == SK_E_NONE)
        CHECK_RC(sk_decoder_next(&d, &fr), SK_ERR, &d.err);
    CHECK_INT(d.err.code, ==, SK_E_TOO_LARGE);
    CHECK(strstr(d.err.msg, "18446744073709551615") != NULL);
    CHECK(ends_with(d.err.msg, "if the peer is right)"));
    sk_decoder_free(&d);

    /* the stream ending inside a huge frame */
    f = framing8(UINT64_MAX - 1, 0);
    sk_decoder_init(&d, &f);
    ref_put_len(hdr, 8, 0, 10000000000000000000ull);
    memcpy(hdr + 8, "abcd", 4);
    CHECK_RC(sk_decoder_feed(&d, hdr, 12), SK_OK, &d.err);
    CHECK_RC(sk_decoder_next(&d, &fr), SK_NEED_DATA, &d.err);
    CHECK_RC(sk_decoder_finish(&d, &err), SK_ERR, &err);
    CHECK_INT(err.code, ==, SK_E_INCOMPLETE);
    CHECK(ends_with(err.msg, "the peer sent a truncated frame"));
    sk_decoder_free(&d);

    /* a control frame of a huge length */
    f = framing8(1000, SK_FRAMING_CONTROL);
    CHECK_RC(sk_framing_check(&f, &err), SK_OK, &err);
    sk_decoder_init(&d, &f);
    ref_put_len(hdr, 8, 0, sk_control_header(&f, (size_t)1 << 62));
    sk_decoder_feed(&d, hdr, 8);
    if (d.err.code == SK_E_NONE)
        CHECK_RC(sk_decoder_next(&d, &fr), SK_ERR, &d.err);
    CHECK_INT(d.err.code, ==, SK_E_PROTOCOL);
    CHECK(ends_with(d.err.msg, "close the connection"));
    sk_decoder_free(&d);

    /* sending a frame over max_frame */
    f = framing8(UINT64_MAX - 1, 0);
    lens[0] = 1;
    lens[1] = SIZE_MAX;
    f.max_frame = SIZE_MAX - 1;
    CHECK_RC(sk_encode_headers(&f, lens, 2, out, &err), SK_ERR, &err);
    CHECK_INT(err.code, ==, SK_E_TOO_LARGE);
    CHECK(ends_with(err.msg, "on both peers"));

    /* a max_frame the header cannot carry */
    f = framing8(UINT64_MAX, SK_FRAMING_CONTROL | SK_FRAMING_IDS);
    CHECK_RC(sk_framing_check(&f, &err), SK_ERR, &err);
    CHECK(ends_with(err.msg, "kept for extensions)"));
}
