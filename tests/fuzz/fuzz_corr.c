/*
 * fuzz_corr.c - libFuzzer harness for the correlation table (csrc/core/corr.h)
 * against a reference model written here from corr.h's contract.
 *
 * FUZZ_MAXLEN: 2048
 *
 * The input is a program, one operation per byte (low 3 bits: the
 * operation; the next byte, where one is needed, its argument):
 *
 *   0 ADD       register a new promise; argument bit 7: no deadline, else
 *               deadline = now + (argument & 63)
 *   1 REPLY     reply to the id issued argument-th from the end (the top
 *               "reply" bit set when the argument's bit 7 is), with a
 *               payload of (argument * 3) bytes - past SK_PROMISE_INLINE
 *               too, so long payloads are stored
 *   2 STRANGER  reply to an id never issued, or to id 0
 *   3 EXPIRE    now += argument & 31, then sk_corr_expire(now)
 *   4 REMOVE    take a promise out (sk_corr_remove, the cancel path)
 *   5 CANCEL    cancel a pending promise without taking it out
 *   6 TAKE_ALL  take every pending promise out
 *   7 FAIL      the next operation's first core allocation fails (sys.h's
 *               fault hook)
 *
 * The model knows every issued id and its fate (pending with a deadline or
 * none, replied, expired, removed, taken).  After each operation:
 *   - a reply returns the id's promise exactly when the model has it
 *     pending, settled DONE with the exact payload, or FAILED/SK_PF_NOMEM
 *     when the payload could not be stored, or with prev == 0 when it had
 *     been cancelled; otherwise NULL, counted `late` for an expired id and
 *     `unknown` for anything else (a stranger, a second reply, a removed
 *     or taken id);
 *   - expire fails exactly the pending promises whose deadline passed, in
 *     (deadline, id) order, each FAILED/SK_PF_TIMEOUT;
 *   - remove returns 1 exactly for a pending promise;
 *   - an ADD that met an injected failure returns SK_E_NOMEM and registers
 *     nothing (the id is used up); a failure elsewhere is absorbed as
 *     documented (a shrink; the expired-id memory, which then forgets
 *     its oldest ids, so a late reply to any expired id may count as
 *     unknown);
 *   - before each reply, sk_corr_lookup names what it is: DELIVER for a
 *     pending id, LATE for an expired one (or DUPLICATE once forgotten),
 *     DUPLICATE for any other issued id, STRAY for a stranger;
 *   - pending, replies, unknown, late, timeouts and the next deadline
 *     equal the model's.
 * A failed check aborts, which libFuzzer reports.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/corr.h"
#include "core/promise.h"
#include "core/sys.h"
#include "require.h"

#define MAXP 1024 /* promises per input */

/* The model's linear scans are not what is being fuzzed: keeping libFuzzer's
 * comparison tracing out of them makes a run several times faster. */
#define NO_COVERAGE __attribute__((no_sanitize("coverage")))

enum { F_PENDING, F_REPLIED, F_EXPIRED, F_REMOVED, F_TAKEN };

typedef struct mreq {
    uint64_t id;
    int64_t deadline; /* SK_NO_DEADLINE: none */
    int fate;
    int cancelled;
    int unsure_late; /* expired while the id memory could not be grown */
    sk_promise *p;
} mreq;

static struct {
    int armed, fired;
    const char *site;
} fault;

static int fault_hook(sk_sys_call call, const char *site)
{
    (void)call;
    if (!fault.armed)
        return 0;
    fault.armed = 0;
    fault.fired = 1;
    fault.site = site;
    return 1;
}

static unsigned char payload_byte(uint64_t id, size_t i)
{
    return (unsigned char)(id * 31 + i * 7 + (i >> 8));
}

/* What sk_corr_lookup must say about a reply with this id: r is the
 * model's request, NULL for a stranger. */
NO_COVERAGE static void check_lookup(const sk_corr *t, uint64_t id,
                                     const mreq *r)
{
    sk_promise *q;
    int got = sk_corr_lookup(t, id, &q);

    REQUIRE((got == SK_CORR_DELIVER) == (q != NULL));
    if (r == NULL)
        REQUIRE(got == SK_CORR_STRAY);
    else if (r->fate == F_PENDING)
        REQUIRE(got == SK_CORR_DELIVER && q == r->p);
    else if (r->fate == F_EXPIRED && r->unsure_late)
        REQUIRE(got == SK_CORR_LATE || got == SK_CORR_DUPLICATE);
    else if (r->fate == F_EXPIRED)
        REQUIRE(got == SK_CORR_LATE);
    else
        REQUIRE(got == SK_CORR_DUPLICATE);
}

static const mreq *sort_base;

NO_COVERAGE static int by_deadline(const void *a, const void *b)
{
    const mreq *x = &sort_base[*(const size_t *)a];
    const mreq *y = &sort_base[*(const size_t *)b];

    if (x->deadline != y->deadline)
        return x->deadline < y->deadline ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* The pending promises with a deadline <= now, in (deadline, id) order. */
NO_COVERAGE static size_t model_due(const mreq *m, size_t n, int64_t now,
                                    size_t *out)
{
    size_t i, k = 0;

    for (i = 0; i < n; i++)
        if (m[i].fate == F_PENDING && m[i].deadline != SK_NO_DEADLINE &&
            m[i].deadline <= now)
            out[k++] = i;
    sort_base = m;
    qsort(out, k, sizeof(*out), by_deadline);
    return k;
}

/* The earliest deadline of a pending request, or SK_NO_DEADLINE. */
NO_COVERAGE static int64_t model_next_deadline(const mreq *m, size_t n)
{
    int64_t want = SK_NO_DEADLINE;
    size_t i;

    for (i = 0; i < n; i++)
        if (m[i].fate == F_PENDING && m[i].deadline != SK_NO_DEADLINE &&
            (want == SK_NO_DEADLINE || m[i].deadline < want))
            want = m[i].deadline;
    return want;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static mreq m[MAXP];
    static size_t due[MAXP];
    static unsigned char pay[3 * 255];
    uint64_t next_id = 1, replies = 0, unknown = 0, late = 0, timeouts = 0;
    uint64_t late_or_unknown = 0; /* replies to unsure ids */
    size_t n = 0, pending = 0, pos = 0, i, k;
    int64_t now = 1000;
    sk_plist out;
    sk_corr t;
    sk_err err;

    REQUIRE(sk_corr_init(&t, &err) == SK_OK);
    __atomic_store_n(&sk_fault_hook, fault_hook, __ATOMIC_RELEASE);
    fault.armed = fault.fired = 0;
    while (pos < size) {
        unsigned op = data[pos] & 7, arg = pos + 1 < size ? data[pos + 1] : 0;
        int fail_next = 0;

        pos += op == 2 || op == 6 || op == 7 ? 1 : 2;
        if (op == 7) {
            fail_next = 1;
            if (pos >= size)
                break;
            op = data[pos] & 7;
            arg = pos + 1 < size ? data[pos + 1] : 0;
            pos += op == 2 || op == 6 || op == 7 ? 1 : 2;
            if (op == 7)
                continue;
        }
        fault.armed = fail_next;
        fault.fired = 0;
        switch (op) {
        case 0: { /* ADD */
            mreq *r;
            int rc;

            if (n == MAXP)
                break;
            r = &m[n];
            memset(r, 0, sizeof(*r));
            r->p = malloc(sizeof(*r->p));
            REQUIRE(r->p != NULL);
            sk_promise_init(r->p);
            r->deadline = (arg & 128) ? SK_NO_DEADLINE : now + (arg & 63);
            rc = sk_corr_add(&t, r->p, r->deadline, &err);
            r->id = next_id++ & SK_CORR_ID_MASK;
            if (fault.fired) {
                REQUIRE(rc == SK_ERR && err.code == SK_E_NOMEM);
                free(r->p);
                break;
            }
            REQUIRE(rc == SK_OK);
            REQUIRE(r->p->id == r->id);
            r->fate = F_PENDING;
            pending++;
            n++;
            break;
        }
        case 1:   /* REPLY to an issued id */
        case 2: { /* STRANGER */
            uint64_t id;
            size_t len = op == 1 ? (size_t)(arg & 127) * 3 : 5, j = SIZE_MAX;
            sk_promise *p;

            if (op == 1 && n > 0) {
                j = n - 1 - (arg % n);
                id = m[j].id | ((arg & 128) ? SK_ID_REPLY : 0);
            } else {
                id = (arg & 1) ? 0 : next_id + 1000 + arg;
            }
            for (i = 0; i < len; i++)
                pay[i] = payload_byte(id & SK_CORR_ID_MASK, i);
            check_lookup(&t, id, j == SIZE_MAX ? NULL : &m[j]);
            p = sk_corr_reply(&t, id, pay, len);
            if (j != SIZE_MAX && m[j].fate == F_PENDING) {
                REQUIRE(p == m[j].p);
                m[j].fate = F_REPLIED;
                pending--;
                replies++;
                if (m[j].cancelled) {
                    REQUIRE(p->prev == 0);
                    REQUIRE(sk_promise_state(p) == SK_P_CANCELLED);
                } else if (fault.fired && strstr(fault.site, "promise.c")) {
                    REQUIRE(sk_promise_state(p) == SK_P_FAILED);
                    REQUIRE(p->fail == SK_PF_NOMEM);
                } else {
                    REQUIRE(sk_promise_state(p) == SK_P_DONE);
                    REQUIRE(p->len == len);
                    REQUIRE(len == 0 || memcmp(p->data, pay, len) == 0);
                }
                break;
            }
            REQUIRE(p == NULL);
            if (j != SIZE_MAX && m[j].fate == F_EXPIRED && m[j].unsure_late)
                late_or_unknown++;
            else if (j != SIZE_MAX && m[j].fate == F_EXPIRED)
                late++;
            else
                unknown++;
            break;
        }
        case 3: { /* EXPIRE */
            sk_promise *p;
            size_t got;

            now += arg & 31;
            k = model_due(m, n, now, due);
            sk_plist_init(&out);
            got = sk_corr_expire(&t, now, &out);
            REQUIRE(got == k);
            REQUIRE(out.n == k);
            for (i = 0, p = out.head; i < k; i++, p = p->next) {
                mreq *r = &m[due[i]];
                REQUIRE(p == r->p);
                r->fate = F_EXPIRED;
                if (r->cancelled) {
                    REQUIRE(p->prev == 0);
                } else {
                    REQUIRE(sk_promise_state(p) == SK_P_FAILED);
                    REQUIRE(p->fail == SK_PF_TIMEOUT);
                }
            }
            REQUIRE(p == NULL);
            pending -= k;
            timeouts += k;
            /* the expired-id memory could not grow: it then forgets its
             * oldest ids to remember the new ones, so any expired id's
             * late reply may now count as unknown */
            if (fault.fired)
                for (i = 0; i < n; i++)
                    if (m[i].fate == F_EXPIRED)
                        m[i].unsure_late = 1;
            break;
        }
        case 4: { /* REMOVE */
            size_t j;
            int was;

            if (n == 0)
                break;
            j = n - 1 - (arg % n);
            was = sk_corr_remove(&t, m[j].p);
            REQUIRE(was == (m[j].fate == F_PENDING));
            if (was) {
                m[j].fate = F_REMOVED;
                pending--;
            }
            break;
        }
        case 5: { /* CANCEL */
            size_t j;

            if (n == 0)
                break;
            j = n - 1 - (arg % n);
            if (m[j].fate == F_PENDING && !m[j].cancelled) {
                REQUIRE(sk_promise_cancel(m[j].p) == 1);
                m[j].cancelled = 1;
            }
            break;
        }
        case 6: /* TAKE_ALL */
            sk_plist_init(&out);
            sk_corr_take_all(&t, &out);
            REQUIRE(out.n == pending);
            for (i = 0; i < n; i++)
                if (m[i].fate == F_PENDING)
                    m[i].fate = F_TAKEN;
            pending = 0;
            break;
        }
        fault.armed = 0;
        /* the table agrees with the model */
        REQUIRE(t.pending == pending);
        REQUIRE(t.replies == replies);
        REQUIRE(t.timeouts == timeouts);
        REQUIRE(t.late + t.unknown == late + unknown + late_or_unknown);
        REQUIRE(t.late >= late && t.unknown >= unknown);
        /* the earliest deadline: after every expiry, and now and then
         * (the scan is linear in the requests) */
        if (op == 3 || (pos & 63) < 2)
            REQUIRE(sk_corr_next_deadline(&t) == model_next_deadline(m, n));
    }
    __atomic_store_n(&sk_fault_hook, (sk_fault_fn)NULL, __ATOMIC_RELEASE);
    sk_plist_init(&out);
    sk_corr_take_all(&t, &out);
    REQUIRE(out.n == pending);
    for (i = 0; i < n; i++) {
        sk_promise_release(m[i].p);
        free(m[i].p);
    }
    sk_corr_free(&t);
    return 0;
}
