/*
 * recovery: the verifying workload of the recovery engine (issue 4, phase A: both ends in this
 * process). N QP pairs A→B (-q N, default 1; the pairs share one send and one receive CQ per
 * side); in every burst each pair carries 4 messages; per message an RDMA WRITE into B's slot, a
 * FETCH_AND_ADD on B's counter and a sequence-numbered (per pair), checksummed SEND; B has only 2
 * receives posted when a burst starts, so 2 SENDs (and what follows them on A's queue) are still
 * in flight when a recovery hits; B then posts 2 more receives, checks every message (sequence
 * exactly the next one of its pair: nothing lost or duplicated; checksum; the WRITE's bytes) and
 * answers with a pong SEND. Every FETCH_AND_ADD must return exactly its sequence number (executed
 * once, in order); each B's counter ends at its pair's number of messages. No completion may
 * carry an error; the virtual QPNs, keys and fd numbers must not change.
 *
 *   recovery -m MODE [-n bursts] [-k recoveries] [-q pairs] [-M mrs] [-x extra-bursts] [-t] [-w] [-i] [-r] [-e]
 *
 *   planned     stableverbs_detach(NULL) with work in flight; B posts and polls while released
 *               (buffered posts, completions kept from the released CQs) while another thread's
 *               control verbs (query port/device/QP, reg/dereg MR, create/destroy CQ) wait for the
 *               stableverbs_attach() that follows and then succeed
 *   fatal       the device vanishes like mlx5 (DEVICE_FATAL, QPs flushed) and comes back
 *   rxe         the device vanishes like rxe (leaves the list, PORT_ERR, removal waits for the
 *               process to close it — the shim's release lets it complete) and comes back
 *   rename      fatal, and it comes back under another name with new GUID/LIDs/GIDs
 *               (run with STABLEVERBS_MATCH=any)
 *   failrebuild fatal, and the first create_qp of the rebuild fails with EIO (retried); with
 *               SVTEST_FAIL_IN=ENTRY:ERRNO that entry, with that errno number
 *   regone      fatal, and the device vanishes again in the middle of the rebuild (fatal, in the
 *               call SVTEST_GONE_IN=ENTRY[:SKIP] names; default create_qp after half of them) and
 *               comes back once more
 *   lostacks    fatal, and the device dies before writing A's send completions not polled yet:
 *               B has the messages, A never saw them acknowledged (the shim must not send a SEND
 *               B completed again; on one device atomics are executed again: run with -t; with
 *               B on a second device, which lives, B's QPs tell which of A's atomics ran)
 *   lostrecvs   fatal, and the device dies before writing B's receive completions not polled
 *               yet: the data landed, A saw it acknowledged (the shim must make them again)
 *   external    the losses come from outside (a real device deleted, a NIC unplugged): the
 *               workload runs until stableverbs_recovery_stats counts -k recoveries, then -x more
 *               bursts (default 3). Needs no test entry point of the software HCA. SIGUSR1 asks the
 *               program for a planned stableverbs_detach(NULL) (done between bursts, with work in
 *               flight; it prints "recovery: detached"), SIGUSR2 for the stableverbs_attach() that
 *               ends it (done from the polling loop).
 *
 * The first five modes make -k recoveries spread over -n bursts (default 12 and 3) and need the
 * software HCA (STABLEVERBS_LOWER=softhca) except planned.
 *
 * -M N registers N more memory regions (4 KiB each) on A's protection domain, so a recovery
 * rebuilds N + 2 × pairs of them; the first N RDMA WRITEs of every burst gather their bytes from
 * them, in an order that turns with every burst (their lkeys must still work after every rebuild).
 *
 * -i posts A's SENDs (ibv_post_send) as inline data. With -i or -w a SEND's buffer is scribbled on
 * as soon as it is posted (inline data is the application's again at once): a SEND replayed after
 * a recovery must carry the bytes the shim kept. B's pongs are always inline and scribbled on.
 *
 * -r first posts, per pair, lists the provider refuses part of (post_refused_lists): the queues
 * must stay replayable.
 *
 * -w posts A's work with the ibv_wr_* API (QPs from ibv_create_qp_ex; the SENDs as inline data),
 * as perftest does, instead of ibv_post_send.
 *
 * -e creates every CQ with ibv_create_cq_ex and polls it with ibv_start_poll / ibv_next_poll /
 * ibv_end_poll (reading opcode, byte length, QP number, vendor error and flags), as programs that
 * want completion timestamps do, instead of ibv_poll_cq. With SVTEST_EX_SINGLE=1 a poll session
 * takes one completion (start_poll, end_poll; never next_poll): rxe before rdma-core 55 (Debian 12
 * has 44) consumes one entry too many when end_poll follows a next_poll that returned ENOENT, as
 * the API asks, and its CQ then hands out garbage — with or without the shim.
 *
 * -u adds UD: a UD QP UA next to the A sides sends BURST sequence-numbered, checksummed datagrams
 * per burst through an address handle (with a GRH) to a UD QP UB next to the B sides, which keeps
 * 2 × BURST receives posted. UB must receive every datagram once, in order, with IBV_WC_GRH,
 * byte_len = 40 + the datagram and src_qp = UA's virtual QPN; ibv_init_ah_from_wc on its GRH must
 * work and address UA's virtual GID (and ibv_create_ah_from_wc once a burst, for a reply's address
 * handle); UA must see every send complete once.
 *
 * -s puts B's QPs on one shared receive queue: B posts its receives there (from a pool of buffers
 * of its own; a message may land in a buffer any pair posted) and finds the pair by wc.qp_num. With
 * lostrecvs the shim can remake the lost completions only when one QP on the SRQ lost any (-q 1):
 * which receive took which pair's message is known to the device alone.
 *
 * -t tolerates duplicates of work in flight at a loss (at least once instead of exactly once): a
 * SEND received again, a FETCH_AND_ADD executed again (the later ones then return one more) are
 * counted and reported, not errors; anything lost, corrupted or out of order still is. For
 * devices that die with work in flight (a NIC pulled: an atomic executed whose response died with
 * the link is executed again; a SEND is not — the shim counts what B completed — and the count
 * of SENDs received twice shows it).
 *
 * After every recovery it prints one line (the stats of that recovery, from
 * stableverbs_recovery_stats, and the blackout: from the moment the shim found the device again
 * (device_found_ns) to the first completion the application polled after the recovery ended
 * (live_ns; completions polled earlier may be ones the shim kept from before the loss); the
 * outage: from the moment the recovery started (started_ns) to that completion):
 *   recovery: #K planned=P contexts=C quiesce_ms=… release_ms=… device_wait_ms=… rebuild_ms=…
 *             reconnect_ms=… replay_ms=… replayed=R blackout_ms=… outage_ms=…
 * "recovery: ready ..." once connected, and at the end the summary line
 *   recovery: MODE, M messages, K recoveries, D devices, E errors
 *
 * The stableverbs_* functions are found with dlsym(RTLD_DEFAULT): run under LD_PRELOAD.
 */
#include "common.h"
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include "stableverbs.h"

#define BURST 4
#define SLOT 128
#define A_SEND_OFF 0          /* A: message slots (BURST) */
#define A_FAA_OFF 4096        /* A: FETCH_AND_ADD results (8 bytes per message in a burst) */
#define A_PONG_OFF 8192       /* A: pong receive */
#define A_WSRC_OFF 12288      /* A: the RDMA WRITEs' source (a copy of the message's bytes) */
#define B_RECV_OFF 0          /* B: receive slots (2 * BURST) */
#define B_WRITE_OFF 8192      /* B: RDMA WRITE slots (BURST) */
#define B_COUNTER_OFF 16384   /* B: the FETCH_AND_ADD counter */
#define B_PONG_OFF 20480      /* B: pong send */
#define BUF_SIZE 24576
#define MAX_PAIRS 4090 /* the software HCA's largest CQ: 8 completions a pair + 16 <= 32 767 */
#define POLL_BATCH 64

struct msg {
	uint32_t seq;
	uint32_t len;
	uint32_t sum;
	uint8_t data[SLOT - 12];
};

struct pair {
	struct tp_end a, b;
	uint32_t next_seq, expect_seq;
	unsigned b_slot;
	int got, faa, sends;
	uint32_t vqpn_a, vqpn_b, lkey_a, rkey_b;
	uint64_t faa_offset;   /* -t: FETCH_AND_ADDs executed twice so far */
	unsigned dup_msgs;     /* -t: SENDs received twice */
};

static int errors;
static __typeof__(&stableverbs_detach) sv_detach;
static __typeof__(&stableverbs_attach) sv_attach;
static __typeof__(&stableverbs_recovery_stats) sv_stats;
static __typeof__(&stableverbs_qp_identity) sv_qp_identity;
static __typeof__(&stableverbs_real_device_name) sv_real_name;
static __typeof__(&stableverbs_generation) sv_generation;
static int (*sh_remove)(const char *, int);
static int (*sh_restore)(const char *, const char *, int);
static int (*sh_pending)(const char *);
static int (*sh_fail)(const char *, int, int, int);
static int (*sh_gone_in)(const char *, int);
static int (*sh_present)(const char *);

static struct pair *pairs;
static int npairs = 1;
static int poll_seconds;
static volatile sig_atomic_t want_detach, want_attach;
static int detached, tolerate, wr_api, inline_sends, refused_lists, ext_cqs, ex_single;
static int nmrs;            /* -M: extra memory regions on A's PD */
static int with_srq;        /* -s */
static int with_ud;         /* -u */
static struct ibv_srq *b_srq; /* -s: B's QPs share it */
static uint8_t *srq_buf;      /* -s: its receive buffers, SRQ_SLOTS_PER_PAIR per pair */
static struct ibv_mr *srq_mr;
static unsigned srq_slots, srq_next;
static struct ibv_mr **xmrs;
static uint8_t *xbuf;
#define XMR_SIZE 4096

static void *need(const char *name)
{
	void *f = dlsym(RTLD_DEFAULT, name);
	TP_CHECK(f, "%s not found: is libstableverbs.so preloaded?", name);
	return f;
}

static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int ok, const char *fmt, ...)
{
	if (ok)
		return;
	va_list ap;
	printf("recovery: ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	errors++;
}

static uint32_t checksum(const uint8_t *p, size_t n)
{
	uint32_t h = 2166136261u;
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 16777619u;
	return h;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---------------------------------------------------------------- completion times, blackout */

/* When the application last polled completions: one timestamp per poll that returned some. */
#define TIMES 16384
static uint64_t ctimes[TIMES];
static uint64_t ntimes;

/* The first completion polled at or after `t`, or 0. */
static uint64_t first_completion_after(uint64_t t)
{
	uint64_t from = ntimes > TIMES ? ntimes - TIMES : 0;
	for (uint64_t i = from; i < ntimes; i++)
		if (ctimes[i % TIMES] >= t)
			return ctimes[i % TIMES];
	return 0;
}

/* Recoveries seen in the stats and not yet reported (waiting for their first completion). */
struct seen {
	struct stableverbs_recovery_stats st;
	uint64_t number;
};
static struct seen waiting[64];
static int nwaiting;
static uint64_t seen_count, reported;
static double *blackouts;
static int nblackouts;

static double ms(uint64_t ns) { return (double)ns / 1e6; }

static void report_ready(void)
{
	int kept = 0;
	for (int i = 0; i < nwaiting; i++) {
		struct stableverbs_recovery_stats *s = &waiting[i].st;
		/* Completions the shim kept from before the loss may be polled late: only one polled once
		 * the recovery was over can be work the returned device did. */
		uint64_t first = first_completion_after(s->live_ns > s->device_found_ns ? s->live_ns : s->device_found_ns);
		if (!first) {
			waiting[kept++] = waiting[i];
			continue;
		}
		double blackout = ms(first - s->device_found_ns);
		double outage = s->started_ns && first > s->started_ns ? ms(first - s->started_ns) : 0;
		printf("recovery: #%" PRIu64 " planned=%u contexts=%u quiesce_ms=%.3f release_ms=%.3f device_wait_ms=%.3f"
		       " rebuild_ms=%.3f reconnect_ms=%.3f replay_ms=%.3f replayed=%" PRIu64 " blackout_ms=%.3f outage_ms=%.3f\n",
		       waiting[i].number, s->planned, s->contexts, ms(s->quiesce_ns), ms(s->release_ns), ms(s->device_wait_ns),
		       ms(s->rebuild_ns), ms(s->reconnect_ns), ms(s->replay_ns), s->replayed_wrs, blackout, outage);
		if (blackouts)
			blackouts[nblackouts++] = blackout;
		reported++;
	}
	nwaiting = kept;
}

/* Reads the stats; a new recovery waits in `waiting` until a completion after its return is seen. */
static void note_recoveries(void)
{
	struct stableverbs_recovery_stats st;
	memset(&st, 0, sizeof(st));
	TP_CHECK(sv_stats(&st, sizeof(st)) == 0, "stableverbs_recovery_stats failed");
	if (st.count != seen_count) {
		if (st.count > seen_count + 1)
			printf("recovery: %" PRIu64 " recoveries happened between two looks; only the last one is measured\n",
			       st.count - seen_count);
		check(st.device_found_ns != 0, "recovery %" PRIu64 ": no device_found_ns in the stats", st.count);
		if (nwaiting < (int)(sizeof(waiting) / sizeof(waiting[0])))
			waiting[nwaiting++] = (struct seen){.st = st, .number = st.count};
		seen_count = st.count;
	}
	report_ready();
}

/* ---------------------------------------------------------------- the workload */

static void on_signal(int sig)
{
	if (sig == SIGUSR1)
		want_detach = 1;
	else
		want_attach = 1;
}

/* Control verbs from another thread while the device is released (planned mode): the hardware
 * they reach is not there, so they wait for the rebuild, then do what they do natively. */
struct control_probe {
	struct tp_end *e;
	double first_done; /* when the first verb (ibv_query_port) returned */
	char failure[128];
};

static void *control_probe(void *arg)
{
	struct control_probe *c = arg;
	struct tp_end *e = c->e;
	struct ibv_port_attr pa;
	int rc = ibv_query_port(e->dev->ctx, e->dev->port, &pa);
	c->first_done = tp_now();
	if (rc) {
		snprintf(c->failure, sizeof(c->failure), "ibv_query_port: %s", strerror(rc));
		return NULL;
	}
	if (pa.state != IBV_PORT_ACTIVE) {
		snprintf(c->failure, sizeof(c->failure), "ibv_query_port: port state %d, not ACTIVE", (int)pa.state);
		return NULL;
	}
	struct ibv_device_attr da;
	if ((rc = ibv_query_device(e->dev->ctx, &da))) {
		snprintf(c->failure, sizeof(c->failure), "ibv_query_device: %s", strerror(rc));
		return NULL;
	}
	struct ibv_mr *mr = ibv_reg_mr(e->dev->pd, e->buf, 4096, IBV_ACCESS_LOCAL_WRITE);
	if (!mr || (rc = ibv_dereg_mr(mr))) {
		snprintf(c->failure, sizeof(c->failure), "ibv_reg_mr/ibv_dereg_mr: %s", strerror(mr ? rc : errno));
		return NULL;
	}
	struct ibv_cq *cq = ibv_create_cq(e->dev->ctx, 16, NULL, NULL, 0);
	if (!cq || (rc = ibv_destroy_cq(cq))) {
		snprintf(c->failure, sizeof(c->failure), "ibv_create_cq/ibv_destroy_cq: %s", strerror(cq ? rc : errno));
		return NULL;
	}
	struct ibv_qp_attr qa;
	struct ibv_qp_init_attr qi;
	if ((rc = ibv_query_qp(e->qp, &qa, IBV_QP_STATE, &qi)) || qa.qp_state != IBV_QPS_RTS)
		snprintf(c->failure, sizeof(c->failure), "ibv_query_qp: %s, state %d", strerror(rc), rc ? -1 : (int)qa.qp_state);
	return NULL;
}

static void maybe_attach(void)
{
	if (!(want_attach && detached))
		return;
	want_attach = 0;
	int rc = sv_attach();
	check(rc == 0, "stableverbs_attach: %s", strerror(rc));
	detached = 0;
	printf("recovery: attached\n");
}

/* Polls up to POLL_BATCH completions (at least one; waits at most poll_seconds). Any error
 * status fails: the application must never see one. */
/* -e: the UD receive CQ also reports src_qp, slid and sl (read by poll_ex for it). */
static struct ibv_cq *ud_cqs[2];

/* Up to `max` completions through an extended CQ's poll session, as ibv_poll_cq would give them. */
static int poll_ex(struct ibv_cq *cq, int max, struct ibv_wc *wc)
{
	struct ibv_cq_ex *cqx = (struct ibv_cq_ex *)cq; /* made by ibv_create_cq_ex (-e) */
	struct ibv_poll_cq_attr attr = {0};
	int rc = ibv_start_poll(cqx, &attr);
	if (rc == ENOENT)
		return 0;
	if (rc)
		return -rc;
	int n = 0;
	do {
		wc[n] = (struct ibv_wc){.wr_id = cqx->wr_id, .status = cqx->status, .opcode = ibv_wc_read_opcode(cqx),
					.vendor_err = ibv_wc_read_vendor_err(cqx), .byte_len = ibv_wc_read_byte_len(cqx),
					.qp_num = ibv_wc_read_qp_num(cqx), .wc_flags = ibv_wc_read_wc_flags(cqx)};
		if (cq == ud_cqs[0] || cq == ud_cqs[1]) {
			wc[n].src_qp = ibv_wc_read_src_qp(cqx);
			wc[n].slid = (uint16_t)ibv_wc_read_slid(cqx);
			wc[n].sl = ibv_wc_read_sl(cqx);
		}
		n++;
	} while (n < max && !ex_single && (rc = ibv_next_poll(cqx)) == 0);
	ibv_end_poll(cqx);
	return rc && rc != ENOENT ? -rc : n;
}

static struct ibv_cq *create_cq_reading(struct ibv_context *ctx, int cqe, uint64_t more_fields)
{
	if (!ext_cqs)
		return ibv_create_cq(ctx, cqe, NULL, NULL, 0);
	struct ibv_cq_init_attr_ex a = {.cqe = (uint32_t)cqe,
					.wc_flags = IBV_WC_EX_WITH_BYTE_LEN | IBV_WC_EX_WITH_QP_NUM | more_fields};
	struct ibv_cq_ex *cqx = ibv_create_cq_ex(ctx, &a);
	return cqx ? ibv_cq_ex_to_cq(cqx) : NULL;
}

static struct ibv_cq *create_cq(struct ibv_context *ctx, int cqe) { return create_cq_reading(ctx, cqe, 0); }

static int poll_cq_some(struct ibv_cq *cq, struct ibv_wc *wc, const char *what, int ex);

static int poll_some(struct ibv_cq *cq, struct ibv_wc *wc, const char *what)
{
	return poll_cq_some(cq, wc, what, ext_cqs);
}

static int poll_cq_some(struct ibv_cq *cq, struct ibv_wc *wc, const char *what, int ex)
{
	double deadline = tp_now() + poll_seconds;
	unsigned spins = 0;
	for (;;) {
		int n = ex ? poll_ex(cq, POLL_BATCH, wc) : ibv_poll_cq(cq, POLL_BATCH, wc);
		TP_CHECK(n >= 0, "ibv_poll_cq failed (%d) waiting for %s", n, what);
		if (n > 0) {
			ctimes[ntimes++ % TIMES] = now_ns();
			for (int i = 0; i < n; i++)
				TP_CHECK(wc[i].status == IBV_WC_SUCCESS, "%s: completion status %s (%d) reached the application",
					 what, tp_status_name(wc[i].status), wc[i].status);
			return n;
		}
		if ((++spins & 1023) == 0) {
			TP_CHECK(tp_now() < deadline, "no completion for %s within %d s", what, poll_seconds);
			maybe_attach();
			sched_yield();
		}
	}
}

static struct pair *find_pair(uint32_t qpn, int side_b)
{
	for (int i = 0; i < npairs; i++)
		if ((side_b ? pairs[i].vqpn_b : pairs[i].vqpn_a) == qpn)
			return &pairs[i];
	return NULL;
}

/* A's posts: ibv_post_send, or the ibv_wr_* API (-w; SENDs then carry their bytes inline). */
static void post_send_lkey(struct tp_end *e, enum tp_op op, uint64_t wr_id, void *addr, uint32_t lkey, uint32_t len,
			   int signaled, uint64_t raddr, uint32_t rkey)
{
	int ex = wr_api && e->qpx; /* B's QPs stay legacy */
	struct ibv_sge sge = {.addr = (uintptr_t)addr, .length = len, .lkey = lkey};
	struct tp_wr w = {.op = op, .wr_id = wr_id, .unsignaled = !signaled, .sg = &sge, .num_sge = 1,
			  .raddr = raddr, .rkey = rkey, .compare_add = op == TP_FAA ? 1 : 0,
			  .inline_data = op == TP_SEND && (ex || inline_sends)};
	int rc = tp_post(e, &w, ex);
	TP_CHECK(rc == 0, "posting %s failed: %s", tp_op_name(op), strerror(rc));
}

static void post_send(struct tp_end *e, enum tp_op op, uint64_t wr_id, void *addr, uint32_t len, int signaled,
		      uint64_t raddr, uint32_t rkey)
{
	post_send_lkey(e, op, wr_id, addr, e->mr->lkey, len, signaled, raddr, rkey);
}

/* -r: before any traffic, lists the provider refuses part of (EINVAL at the bad WR, as natively):
 * A: an unsignaled RDMA WRITE it takes, then a SEND with more SGEs than the QP holds; B: a receive
 * with too many SGEs. The queues must stay replayable (the shim records what the provider took). */
static void post_refused_lists(struct pair *p)
{
	struct ibv_qp_attr qa;
	struct ibv_qp_init_attr qi;
	int rc = ibv_query_qp(p->a.qp, &qa, IBV_QP_CAP, &qi);
	TP_CHECK(rc == 0, "ibv_query_qp: %s", strerror(rc));
	int send_over = (int)qa.cap.max_send_sge + 1;
	rc = ibv_query_qp(p->b.qp, &qa, IBV_QP_CAP, &qi);
	TP_CHECK(rc == 0, "ibv_query_qp: %s", strerror(rc));
	int recv_over = (int)qa.cap.max_recv_sge + 1;
	TP_CHECK(send_over <= 64 && recv_over <= 64, "max_sge %d/%d: too many for -r", send_over - 1, recv_over - 1);
	struct ibv_sge sa[64], sb[64];
	for (int k = 0; k < 64; k++) {
		sa[k] = (struct ibv_sge){.addr = (uintptr_t)(p->a.buf + A_WSRC_OFF), .length = 8, .lkey = p->a.mr->lkey};
		sb[k] = (struct ibv_sge){.addr = (uintptr_t)(p->b.buf + B_RECV_OFF), .length = 8, .lkey = p->b.mr->lkey};
	}
	struct ibv_send_wr w[2] = {
		{.wr_id = 0xBAD0, .next = &w[1], .sg_list = sa, .num_sge = 1, .opcode = IBV_WR_RDMA_WRITE,
		 .wr.rdma = {.remote_addr = (uintptr_t)(p->b.buf + B_COUNTER_OFF + 64), .rkey = p->b.mr->rkey}},
		{.wr_id = 0xBAD1, .sg_list = sa, .num_sge = send_over, .opcode = IBV_WR_SEND, .send_flags = IBV_SEND_SIGNALED},
	};
	struct ibv_send_wr *bad = NULL;
	rc = ibv_post_send(p->a.qp, w, &bad);
	check(rc == EINVAL && bad == &w[1], "A%d: a send list refused at its second WR: rc %d, bad_wr at %ld", (int)(p - pairs),
	      rc, bad ? (long)(bad - w) : -1L);
	struct ibv_recv_wr rw = {.wr_id = 0xBAD2, .sg_list = sb, .num_sge = recv_over}, *rbad = NULL;
	rc = ibv_post_recv(p->b.qp, &rw, &rbad);
	check(rc == EINVAL && rbad == &rw, "B%d: a refused receive: rc %d", (int)(p - pairs), rc);
}

static void b_post_recv(struct pair *p, int count)
{
	if (b_srq) {
		/* A pool of buffers in posting order: the SRQ hands its receives out in that order, and B
		 * has at most 2 bursts' worth outstanding. */
		for (int i = 0; i < count; i++, srq_next++) {
			unsigned slot = srq_next % srq_slots;
			struct ibv_sge sge = {.addr = (uintptr_t)(srq_buf + (size_t)slot * SLOT), .length = SLOT, .lkey = srq_mr->lkey};
			struct ibv_recv_wr wr = {.wr_id = slot, .sg_list = &sge, .num_sge = 1}, *bad = NULL;
			int rc = ibv_post_srq_recv(b_srq, &wr, &bad);
			TP_CHECK(rc == 0, "ibv_post_srq_recv failed: %s", strerror(rc));
		}
		return;
	}
	for (int i = 0; i < count; i++, p->b_slot++)
		tp_post_recv(&p->b, p->b_slot % (2 * BURST), p->b.buf + B_RECV_OFF + (p->b_slot % (2 * BURST)) * SLOT, SLOT);
}

/* -u: the UD pair. UB's receive slots hold the 40-byte GRH area, then the datagram. */
#define UD_GRH 40
#define UD_QKEY 0x11111111u
#define UD_SLOTS (2 * BURST)
#define UD_SLOT (UD_GRH + SLOT)
struct ud_pair {
	struct tp_end a, b;
	struct ibv_ah *ah;     /* UA → UB */
	uint32_t vqpn_a, vqpn_b;
	uint32_t next_seq, expect_seq;
	unsigned dup_msgs;     /* -t: datagrams received twice */
};
static struct ud_pair ud;

static void ud_post_recv(unsigned slot)
{
	memset(ud.b.buf + slot * UD_SLOT, 0, UD_SLOT);
	tp_post_recv(&ud.b, slot, ud.b.buf + slot * UD_SLOT, UD_SLOT);
}

static void ud_setup(struct tp_dev *da, struct tp_dev *db)
{
	/* With -e the UD CQs are extended ones too (reading src_qp and the flags). */
	uint64_t fields = IBV_WC_EX_WITH_SRC_QP | IBV_WC_EX_WITH_SLID | IBV_WC_EX_WITH_SL;
	struct tp_qp_opts o = {.type = IBV_QPT_UD, .max_send_wr = 2 * BURST, .max_recv_wr = UD_SLOTS + 4, .cqe = 64,
			       .buf_size = UD_SLOTS * UD_SLOT + 4096};
	o.scq = create_cq_reading(da->ctx, 64, fields);
	o.rcq = create_cq_reading(da->ctx, 64, fields);
	TP_CHECK(o.scq && o.rcq, "creating UA's CQs failed: %s", strerror(errno));
	tp_end_create(&ud.a, da, &o);
	o.scq = create_cq_reading(db->ctx, 64, fields);
	o.rcq = create_cq_reading(db->ctx, 64, fields);
	TP_CHECK(o.scq && o.rcq, "creating UB's CQs failed: %s", strerror(errno));
	ud_cqs[0] = o.rcq;
	tp_end_create(&ud.b, db, &o);
	tp_ud_ready(&ud.a);
	tp_ud_ready(&ud.b);
	struct ibv_ah_attr aa;
	tp_ah_attr(&aa, da, db, 1);
	ud.ah = ibv_create_ah(da->pd, &aa);
	TP_CHECK(ud.ah, "ibv_create_ah (UA → UB) failed: %s", strerror(errno));
	ud.vqpn_a = ud.a.qp->qp_num;
	ud.vqpn_b = ud.b.qp->qp_num;
	for (unsigned i = 0; i < UD_SLOTS; i++)
		ud_post_recv(i);
}

/* UA: a burst of datagrams, each signaled. */
static void ud_send_burst(void)
{
	for (int j = 0; j < BURST; j++) {
		uint32_t seq = ud.next_seq++;
		struct msg *m = (struct msg *)(ud.a.buf + j * SLOT);
		m->seq = seq;
		m->len = sizeof(m->data);
		tp_fill(m->data, sizeof(m->data), seq ^ 0xD00000u);
		m->sum = checksum(m->data, sizeof(m->data));
		struct ibv_sge sge = {.addr = (uintptr_t)m, .length = SLOT, .lkey = ud.a.mr->lkey};
		struct tp_wr w = {.op = TP_SEND, .wr_id = (uint64_t)seq << 8 | 5, .sg = &sge, .num_sge = 1, .ah = ud.ah,
				  .rqpn = ud.vqpn_b, .rqkey = UD_QKEY};
		int rc = tp_post(&ud.a, &w, 0);
		TP_CHECK(rc == 0, "posting UA's datagram %u failed: %s", seq, strerror(rc));
	}
}

static int poll_cq_some(struct ibv_cq *cq, struct ibv_wc *wc, const char *what, int ex);

/* UB: the burst's datagrams, in order, once each; UA: their send completions. */
static void ud_check_burst(struct ibv_wc *wc)
{
	for (int left = BURST; left > 0;) {
		int n = poll_cq_some(ud.b.rcq, wc, "UB's datagrams", ext_cqs);
		for (int k = 0; k < n; k++, left--) {
			unsigned slot = (unsigned)wc[k].wr_id;
			TP_CHECK(slot < UD_SLOTS && wc[k].opcode == IBV_WC_RECV, "UB: wr_id %" PRIu64 ", opcode %d",
				 wc[k].wr_id, wc[k].opcode);
			check(wc[k].qp_num == ud.vqpn_b, "UB: wc.qp_num 0x%x, UB's virtual QPN is 0x%x", wc[k].qp_num, ud.vqpn_b);
			check(wc[k].src_qp == ud.vqpn_a, "UB: wc.src_qp 0x%x, UA's virtual QPN is 0x%x", wc[k].src_qp, ud.vqpn_a);
			check(wc[k].wc_flags & IBV_WC_GRH, "UB: no IBV_WC_GRH");
			check(wc[k].byte_len == UD_GRH + SLOT, "UB: byte_len %u, expected %u", wc[k].byte_len, UD_GRH + SLOT);
			struct msg *m = (struct msg *)(ud.b.buf + slot * UD_SLOT + UD_GRH);
			int good = m->sum == checksum(m->data, sizeof(m->data)) && tp_check(m->data, sizeof(m->data), m->seq ^ 0xD00000u) < 0;
			if (tolerate && m->seq < ud.expect_seq && ud.expect_seq - m->seq <= BURST) {
				check(good, "UB: duplicate of datagram %u: bad payload", m->seq);
				ud.dup_msgs++;
				left++;
			} else {
				check(m->seq == ud.expect_seq, "UB: datagram %u, expected %u (lost or duplicated)", m->seq, ud.expect_seq);
				check(good, "UB: datagram %u: bad checksum or payload", m->seq);
				ud.expect_seq = m->seq + 1;
			}
			/* The reply's address from the GRH: the sender's GID, found again among UB's port's. */
			struct ibv_ah_attr at;
			int rc = ibv_init_ah_from_wc(ud.b.dev->ctx, ud.b.dev->port, &wc[k], (struct ibv_grh *)(ud.b.buf + slot * UD_SLOT), &at);
			check(rc == 0, "UB: ibv_init_ah_from_wc: %s", strerror(errno));
			check(rc != 0 || (at.is_global && !memcmp(&at.grh.dgid, &ud.a.dev->gid, 16)),
			      "UB: ibv_init_ah_from_wc addresses another GID than UA's (%s)", at.is_global ? "global" : "not global");
			if (k == 0) {
				struct ibv_ah *back = ibv_create_ah_from_wc(ud.b.dev->pd, &wc[k], (struct ibv_grh *)(ud.b.buf + slot * UD_SLOT),
									    ud.b.dev->port);
				check(back != NULL, "UB: ibv_create_ah_from_wc: %s", strerror(errno));
				if (back)
					ibv_destroy_ah(back);
			}
			ud_post_recv(slot);
		}
	}
	for (int left = BURST; left > 0;) {
		int n = poll_cq_some(ud.a.scq, wc, "UA's datagram sends", ext_cqs);
		for (int k = 0; k < n; k++, left--)
			check((wc[k].wr_id & 0xff) == 5 && wc[k].opcode == IBV_WC_SEND && wc[k].qp_num == ud.vqpn_a,
			      "UA: unexpected completion wr_id 0x%" PRIx64 " opcode %d qp_num 0x%x", wc[k].wr_id, wc[k].opcode,
			      wc[k].qp_num);
	}
}

/* ENTRY[:N] from the environment variable `var`, if set: entry and *n replaced (N only if given). */
static void fault_spec(const char *var, char *entry, size_t len, int *n)
{
	const char *spec = getenv(var);
	if (!spec || !*spec)
		return;
	snprintf(entry, len, "%s", spec);
	char *colon = strchr(entry, ':');
	if (colon) {
		*colon = 0;
		*n = atoi(colon + 1);
	}
}

/* Fails for every async event queued on ctx (read non-blocking). */
static void no_async_events(struct ibv_context *ctx, const char *side)
{
	int flags = fcntl(ctx->async_fd, F_GETFL);
	TP_CHECK(flags >= 0 && fcntl(ctx->async_fd, F_SETFL, flags | O_NONBLOCK) == 0, "fcntl on the async fd failed");
	struct ibv_async_event e;
	while (ibv_get_async_event(ctx, &e) == 0) {
		check(0, "%s: the application was shown async event %s", side, ibv_event_type_str(e.event_type));
		ibv_ack_async_event(&e);
	}
	fcntl(ctx->async_fd, F_SETFL, flags);
}

enum mode { PLANNED, FATAL, RXE, RENAME, FAILREBUILD, EXTERNAL, LOSTACKS, LOSTRECVS, REGONE };
static const char *mode_names[] = {"planned", "fatal", "rxe", "rename", "failrebuild", "external", "lostacks", "lostrecvs",
				   "regone"};

int main(int argc, char **argv)
{
	int bursts = 12, recoveries = 3, extra = 3, opt;
	enum mode mode = PLANNED;
	while ((opt = getopt(argc, argv, "m:n:k:q:M:x:twireus")) != -1) {
		switch (opt) {
		case 'm':
			mode = (enum mode)-1;
			for (int i = 0; i < (int)(sizeof(mode_names) / sizeof(mode_names[0])); i++)
				if (!strcmp(optarg, mode_names[i]))
					mode = (enum mode)i;
			TP_CHECK((int)mode >= 0, "unknown mode %s", optarg);
			break;
		case 'n': bursts = atoi(optarg); break;
		case 'k': recoveries = atoi(optarg); break;
		case 'q': npairs = atoi(optarg); break;
		case 'M': nmrs = atoi(optarg); break;
		case 'x': extra = atoi(optarg); break;
		case 't': tolerate = 1; break;
		case 'w': wr_api = 1; break;
		case 'e': ext_cqs = 1; break;
		case 'i': inline_sends = 1; break;
		case 'r': refused_lists = 1; break;
		case 'u': with_ud = 1; break;
		case 's': with_srq = 1; break;
		default:
			fprintf(stderr, "usage: recovery -m planned|fatal|rxe|rename|failrebuild|regone|lostacks|lostrecvs|external [-n bursts] "
					"[-k recoveries] [-q pairs] [-M mrs] [-x extra-bursts] [-t] [-w] [-i] [-e] [-u] [-s]\n");
			return 2;
		}
	}
	TP_CHECK(npairs >= 1 && npairs <= MAX_PAIRS, "-q %d: 1 to %d QP pairs", npairs, MAX_PAIRS);
	TP_CHECK(!with_srq || (npairs <= 1024 && !refused_lists), "-s: at most 1024 pairs, and not with -r");
	/* A datagram is not acknowledged: one whose receive completion died with the device is gone,
	 * with or without the shim (its sender saw it complete when it left). */
	TP_CHECK(!(with_ud && mode == LOSTRECVS), "-u with -m lostrecvs: UD datagrams whose completions died are lost natively");
	TP_CHECK(nmrs >= 0 && nmrs <= 100000, "-M %d: 0 to 100000 memory regions", nmrs);
	tp_start("recovery", mode == EXTERNAL ? 900 : 90);
	poll_seconds = tp_env_int("SVTEST_POLL_SECONDS", mode == EXTERNAL ? 120 : 10);
	ex_single = tp_env_int("SVTEST_EX_SINGLE", 0);
	sv_detach = need("stableverbs_detach");
	sv_attach = need("stableverbs_attach");
	sv_stats = need("stableverbs_recovery_stats");
	sv_qp_identity = need("stableverbs_qp_identity");
	sv_real_name = need("stableverbs_real_device_name");
	sv_generation = need("stableverbs_generation");
	if (mode != PLANNED && mode != EXTERNAL) {
		sh_remove = need("stableverbs_softhca_remove_device");
		sh_restore = need("stableverbs_softhca_restore_device");
		sh_pending = need("stableverbs_softhca_removal_pending");
		sh_fail = need("stableverbs_softhca_fail");
		sh_gone_in = need("stableverbs_softhca_gone_in");
		sh_present = need("stableverbs_softhca_present");
	}
	blackouts = calloc(4096, sizeof(double));
	if (mode == EXTERNAL) {
		signal(SIGUSR1, on_signal);
		signal(SIGUSR2, on_signal);
	}

	struct tp_dev da, dbs, *db;
	int ndev = tp_open(&da, &dbs, &db);
	int cqe = npairs * 2 * BURST + 16;
	struct ibv_cq *a_scq = create_cq(da.ctx, cqe);
	struct ibv_cq *a_rcq = create_cq(da.ctx, npairs + 16);
	struct ibv_cq *b_scq = create_cq(db->ctx, npairs + 16);
	struct ibv_cq *b_rcq = create_cq(db->ctx, npairs * BURST + 16);
	TP_CHECK(a_scq && a_rcq && b_scq && b_rcq, "ibv_create_cq failed: %s", strerror(errno));
	pairs = calloc((size_t)npairs, sizeof(*pairs));
	TP_CHECK(pairs, "out of memory");
	if (nmrs > 0) {
		xmrs = calloc((size_t)nmrs, sizeof(*xmrs));
		xbuf = aligned_alloc(XMR_SIZE, (size_t)nmrs * XMR_SIZE);
		TP_CHECK(xmrs && xbuf, "out of memory");
		for (int i = 0; i < nmrs; i++) {
			xmrs[i] = ibv_reg_mr(da.pd, xbuf + (size_t)i * XMR_SIZE, XMR_SIZE, IBV_ACCESS_LOCAL_WRITE);
			TP_CHECK(xmrs[i], "ibv_reg_mr (%d of -M %d) failed: %s", i + 1, nmrs, strerror(errno));
		}
	}
	struct tp_qp_opts oa = {.type = IBV_QPT_RC, .max_send_wr = 64, .max_recv_wr = 16, .scq = a_scq, .rcq = a_rcq,
				.buf_size = BUF_SIZE, .ex = wr_api, .max_inline = wr_api || inline_sends ? SLOT : 0};
	struct tp_qp_opts ob = {.type = IBV_QPT_RC, .max_send_wr = 16, .max_recv_wr = 16, .scq = b_scq, .rcq = b_rcq,
				.buf_size = BUF_SIZE, .max_inline = SLOT};
	if (with_srq) {
		srq_slots = (unsigned)npairs * 2 * BURST;
		struct ibv_srq_init_attr sa = {.attr = {.max_wr = srq_slots + 16, .max_sge = 1}};
		b_srq = ibv_create_srq(db->pd, &sa);
		TP_CHECK(b_srq, "ibv_create_srq failed: %s", strerror(errno));
		srq_buf = aligned_alloc(4096, (size_t)srq_slots * SLOT);
		TP_CHECK(srq_buf, "out of memory");
		srq_mr = ibv_reg_mr(db->pd, srq_buf, (size_t)srq_slots * SLOT, IBV_ACCESS_LOCAL_WRITE);
		TP_CHECK(srq_mr, "ibv_reg_mr failed: %s", strerror(errno));
		ob.srq = b_srq;
	}
	for (int i = 0; i < npairs; i++) {
		struct pair *p = &pairs[i];
		tp_end_create(&p->a, &da, &oa);
		tp_end_create(&p->b, db, &ob);
		tp_connect_rc(&p->a, &p->b);
		p->vqpn_a = p->a.qp->qp_num;
		p->vqpn_b = p->b.qp->qp_num;
		p->lkey_a = p->a.mr->lkey;
		p->rkey_b = p->b.mr->rkey;
		*(uint64_t *)(p->b.buf + B_COUNTER_OFF) = 0;
		/* B: 2 receives outstanding when a burst starts; A: the pong's. */
		b_post_recv(p, 2);
		tp_post_recv(&p->a, 999, p->a.buf + A_PONG_OFF, SLOT);
		if (refused_lists)
			post_refused_lists(p);
	}

	if (with_ud)
		ud_setup(&da, db);

	int async_fd = da.ctx->async_fd;
	uint32_t v, real_a0 = 0, real_a;
	TP_CHECK(sv_qp_identity(pairs[0].a.qp, &v, &real_a0) == 0, "stableverbs_qp_identity failed");
	char name0[64];
	TP_CHECK(sv_real_name(da.ctx, name0, sizeof(name0)) == 0, "stableverbs_real_device_name failed");
	printf("recovery: ready, %s%s%s%s%s%s, %d QP pair(s), %d more MR(s) on %s%s%s, pid %d\n", mode_names[mode],
	       wr_api ? " (ibv_wr_*)" : "", inline_sends ? " (inline)" : "", ext_cqs ? " (extended CQs)" : "", with_ud ? " (UD)" : "", with_srq ? " (SRQ)" : "", npairs, nmrs, da.name, db != &da ? " and " : "", db != &da ? db->name : "",
	       (int)getpid());
	if (mode == EXTERNAL) {
		/* Where the `stableverbs` command reaches this process (include/stableverbs.h). */
		__typeof__(&stableverbs_control_path) control_path = need("stableverbs_control_path");
		char path[256];
		int rc = control_path(path, sizeof(path));
		if (rc == 0)
			printf("recovery: control %s\n", path);
		else
			printf("recovery: no control socket (%s)\n", strerror(rc));
	}

	int done = 0, at_every = bursts / (recoveries + 1);
	if (at_every < 1)
		at_every = 1;
	struct ibv_wc wc[POLL_BATCH];
	int it = 0, after = 0;
	uint64_t messages = 0;
	for (;; it++) {
		if (mode == EXTERNAL) {
			if ((int)seen_count >= recoveries && !detached && after++ >= extra)
				break;
		} else if (it >= bursts) {
			break;
		}
		/* A: a burst of WRITE (unsignaled), FETCH_AND_ADD, SEND per message, on every pair. */
		for (int i = 0; i < npairs; i++) {
			struct pair *p = &pairs[i];
			for (int j = 0; j < BURST; j++) {
				uint32_t seq = p->next_seq++;
				struct msg *m = (struct msg *)(p->a.buf + A_SEND_OFF + j * SLOT);
				m->seq = seq;
				m->len = sizeof(m->data);
				tp_fill(m->data, sizeof(m->data), seq ^ (uint32_t)i << 20);
				m->sum = checksum(m->data, sizeof(m->data));
				/* The WRITE carries the same bytes into B's slot j, from a copy (the SEND's buffer may be
				 * scribbled on once posted; -M: gathered from the extra MRs in turn). */
				void *src = p->a.buf + A_WSRC_OFF + j * SLOT;
				uint32_t lkey = p->a.mr->lkey;
				memcpy(src, m->data, sizeof(m->data));
				if (i * BURST + j < nmrs) { /* a slot per WRITE of the burst: replays re-read it */
					int x = (i * BURST + j + it) % nmrs;
					src = xbuf + (size_t)x * XMR_SIZE;
					memcpy(src, m->data, sizeof(m->data));
					lkey = xmrs[x]->lkey;
				}
				post_send_lkey(&p->a, TP_WRITE, (uint64_t)seq << 8 | 1, src, lkey, sizeof(m->data), 0,
					       (uintptr_t)(p->b.buf + B_WRITE_OFF + j * SLOT), p->b.mr->rkey);
				post_send(&p->a, TP_FAA, (uint64_t)seq << 8 | 2,
					  p->a.buf + A_FAA_OFF + j * 8, 8, 1, (uintptr_t)(p->b.buf + B_COUNTER_OFF),
					  p->b.mr->rkey);
				post_send(&p->a, TP_SEND, (uint64_t)seq << 8 | 3, m, SLOT, 1, 0, 0);
				if (wr_api || inline_sends)
					memset(m, 0xEE, SLOT);  /* inline: the buffer is ours again */
			}
			p->got = p->faa = p->sends = 0;
		}
		messages += (uint64_t)npairs * BURST;
		if (with_ud) {
			ud_send_burst();
			messages += BURST;
		}

		int recover = mode != EXTERNAL && done < recoveries && it > 0 && it % at_every == 0;
		if ((recover && mode == PLANNED) || (mode == EXTERNAL && want_detach && !detached)) {
			/* Work in flight (2 SENDs per pair wait for receives); detach, keep working while released. */
			want_detach = 0;
			int rc = sv_detach(NULL);
			check(rc == 0, "stableverbs_detach: %s", strerror(rc));
			char nm[64];
			check(sv_real_name(da.ctx, nm, sizeof(nm)) == ENOENT, "released, yet a real device is reported");
			/* Buffered while released. */
			for (int i = 0; i < npairs; i++)
				b_post_recv(&pairs[i], 2);
			if (mode == EXTERNAL) {
				detached = 1;
				printf("recovery: detached\n");
			} else {
				struct control_probe probe = {.e = &pairs[0].a};
				pthread_t th;
				TP_CHECK(pthread_create(&th, NULL, control_probe, &probe) == 0, "pthread_create failed");
				usleep(50000);
				double attach_at = tp_now();
				rc = sv_attach();
				check(rc == 0, "stableverbs_attach: %s", strerror(rc));
				pthread_join(th, NULL);
				check(probe.failure[0] == 0, "control verbs while released: %s", probe.failure);
				check(probe.first_done >= attach_at,
				      "ibv_query_port while released returned %.1f ms before stableverbs_attach was called",
				      (attach_at - probe.first_done) * 1e3);
				done++;
			}
		} else if (recover) {
			const char *dev = da.name;
			int rc = sh_remove(dev, mode == RXE ? 1 : mode == LOSTACKS ? 3 : mode == LOSTRECVS ? 4 : 0);
			TP_CHECK(rc == 0, "removing %s failed: %s", dev, strerror(rc));
			if (mode == FAILREBUILD) {
				char entry[64] = "create_qp";
				int err = EIO;
				fault_spec("SVTEST_FAIL_IN", entry, sizeof(entry), &err);
				TP_CHECK(sh_fail(entry, err, 1, 0) == 0, "fault injection failed");
			}
			if (mode == RXE) {
				/* The removal waits for the process to let go: the shim's release does. */
				double deadline = tp_now() + 10;
				while (sh_pending(dev) && tp_now() < deadline)
					usleep(1000);
				check(!sh_pending(dev), "the rxe-like removal of %s did not complete: the shim did not release it", dev);
			} else {
				/* The double fails posts on a dead device (EIO) until the shim noticed (it then
				 * buffers them): the device returns once the shim let it go. */
				char nm[64];
				double deadline = tp_now() + 10;
				while (sv_real_name(da.ctx, nm, sizeof(nm)) != ENOENT && tp_now() < deadline)
					usleep(1000);
				check(sv_real_name(da.ctx, nm, sizeof(nm)) == ENOENT, "the shim did not release %s after its loss", dev);
			}
			if (mode == REGONE) {
				/* Armed once the shim let the device go (its release makes calls too): ENTRY[:SKIP];
				 * default the create_qp after half of the rebuild's QPs. Only this device's calls
				 * count: with two devices the other one's rebuild may come first. */
				char entry[64] = "create_qp", on[160];
				int skip = ndev == 1 ? npairs : npairs / 2;
				fault_spec("SVTEST_GONE_IN", entry, sizeof(entry), &skip);
				snprintf(on, sizeof(on), "%s@%s", entry, dev);
				TP_CHECK(sh_gone_in(on, skip) == 0, "fault injection failed");
			}
			char newname[64];
			snprintf(newname, sizeof(newname), "moved%d", done);
			rc = sh_restore(dev, mode == RENAME ? newname : NULL, mode == RENAME);
			TP_CHECK(rc == 0, "restoring %s failed: %s", dev, strerror(rc));
			if (mode == REGONE) {
				/* The rebuild makes it vanish again: bring it back once more. */
				double deadline = tp_now() + 10;
				while (sh_present(dev) && tp_now() < deadline)
					usleep(1000);
				check(!sh_present(dev), "%s did not vanish again during the rebuild (the fault was not reached)", dev);
				rc = sh_restore(dev, NULL, 0);
				TP_CHECK(rc == 0, "restoring %s again failed: %s", dev, strerror(rc));
			}
			if (mode == RENAME)
				snprintf(da.name, sizeof(da.name), "%s", newname);
			/* B's receives go in whatever the state (buffered or live). */
			for (int i = 0; i < npairs; i++)
				b_post_recv(&pairs[i], 2);
			done++;
		} else {
			for (int i = 0; i < npairs; i++)
				b_post_recv(&pairs[i], 2);
		}

		/* B: every message, in order, once; then the 2 receives outstanding when the next burst starts. */
		for (int left = npairs * BURST; left > 0;) {
			int n = poll_some(b_rcq, wc, "B's receives");
			for (int k = 0; k < n; k++, left--) {
				struct pair *p = find_pair(wc[k].qp_num, 1);
				TP_CHECK(p, "B: wc.qp_num 0x%x is no virtual QPN of a B side (opcode %d, wr_id %llu, byte_len %u, %d of %d)",
					 wc[k].qp_num, wc[k].opcode, (unsigned long long)wc[k].wr_id, wc[k].byte_len, k, n);
				check(wc[k].opcode == IBV_WC_RECV, "B: opcode %d", wc[k].opcode);
				struct msg *m = (struct msg *)(with_srq ? srq_buf + wc[k].wr_id * SLOT
								: p->b.buf + B_RECV_OFF + wc[k].wr_id * SLOT);
				uint32_t seed = m->seq ^ (uint32_t)(p - pairs) << 20;
				if (tolerate && m->seq < p->expect_seq && p->expect_seq - m->seq <= BURST) {
					/* A duplicate of a message in flight at a loss: it took a receive of its own. */
					check(m->sum == checksum(m->data, sizeof(m->data)) && tp_check(m->data, sizeof(m->data), seed) < 0,
					      "B%d: duplicate of message %u: bad payload", (int)(p - pairs), m->seq);
					p->dup_msgs++;
					left++;
					b_post_recv(p, 1);
					continue;
				}
				check(m->seq == p->expect_seq, "B%d: message %u, expected %u (lost or duplicated)", (int)(p - pairs),
				      m->seq, p->expect_seq);
				check(m->sum == checksum(m->data, sizeof(m->data)), "B%d: message %u: bad checksum", (int)(p - pairs),
				      m->seq);
				check(tp_check(m->data, sizeof(m->data), seed) < 0, "B%d: message %u: bad payload", (int)(p - pairs),
				      m->seq);
				check(tp_check(p->b.buf + B_WRITE_OFF + (m->seq % BURST) * SLOT, sizeof(m->data), seed) < 0,
				      "B%d: RDMA WRITE bytes of message %u missing", (int)(p - pairs), m->seq);
				p->expect_seq++;
				if (++p->got == BURST)
					b_post_recv(p, 2);
				check(p->got <= BURST, "B%d: more than %d messages in a burst", (int)(p - pairs), BURST);
			}
		}

		/* A: per pair 4 FETCH_AND_ADD + 4 SEND completions, each once, atomics exactly in order. */
		for (int left = npairs * 2 * BURST; left > 0;) {
			int n = poll_some(a_scq, wc, "A's send queue");
			for (int k = 0; k < n; k++, left--) {
				struct pair *p = find_pair(wc[k].qp_num, 0);
				TP_CHECK(p, "A: wc.qp_num 0x%x is no virtual QPN of an A side", wc[k].qp_num);
				uint32_t seq = (uint32_t)(wc[k].wr_id >> 8);
				int kind = (int)(wc[k].wr_id & 0xff);
				if (kind == 2) {
					uint64_t old = *(uint64_t *)(p->a.buf + A_FAA_OFF + (seq % BURST) * 8);
					if (tolerate && old > seq + p->faa_offset && old - seq - p->faa_offset <= BURST)
						p->faa_offset = old - seq; /* executed again (a duplicate of an atomic in flight at a loss) */
					check(old == seq + p->faa_offset, "A%d: FETCH_AND_ADD of message %u returned %" PRIu64 " (executed twice or lost?)",
					      (int)(p - pairs), seq, old);
					p->faa++;
				} else {
					check(kind == 3 && wc[k].opcode == IBV_WC_SEND, "A%d: unexpected completion wr_id 0x%" PRIx64,
					      (int)(p - pairs), wc[k].wr_id);
					p->sends++;
				}
			}
		}
		if (with_ud)
			ud_check_burst(wc);
		for (int i = 0; i < npairs; i++)
			check(pairs[i].faa == BURST && pairs[i].sends == BURST, "A%d: %d atomics, %d sends completed in burst %d", i,
			      pairs[i].faa, pairs[i].sends, it);

		/* Pongs B→A. */
		for (int i = 0; i < npairs; i++) {
			struct msg *m = (struct msg *)(pairs[i].b.buf + B_PONG_OFF);
			m->seq = pairs[i].expect_seq - 1;
			/* Inline: the buffer is B's again at once (a pong buffered by a recovery must be
			 * replayed from the bytes the shim kept, not from this buffer, scribbled on below). */
			struct ibv_sge sge = {.addr = (uintptr_t)m, .length = SLOT, .lkey = pairs[i].b.mr->lkey};
			struct tp_wr w = {.op = TP_SEND, .wr_id = 777, .sg = &sge, .num_sge = 1, .inline_data = 1};
			int rc = tp_post(&pairs[i].b, &w, 0);
			TP_CHECK(rc == 0, "posting B's pong failed: %s", strerror(rc));
			m->seq = 0xdeadbeef;
		}
		for (int left = npairs; left > 0;)
			left -= poll_some(b_scq, wc, "B's pongs");
		for (int left = npairs; left > 0;) {
			int n = poll_some(a_rcq, wc, "A's pong receives");
			for (int k = 0; k < n; k++, left--) {
				struct pair *p = find_pair(wc[k].qp_num, 0);
				TP_CHECK(p, "A: pong on QPN 0x%x", wc[k].qp_num);
				uint32_t got = ((struct msg *)(p->a.buf + A_PONG_OFF))->seq;
				check(got == p->expect_seq - 1, "A%d: pong %u, expected %u", (int)(p - pairs), got, p->expect_seq - 1);
				tp_post_recv(&p->a, 999, p->a.buf + A_PONG_OFF, SLOT);
			}
		}
		note_recoveries();
	}
	if (mode == EXTERNAL)
		done = (int)seen_count;

	uint64_t dups_msgs = 0, dups_faa = 0;
	for (int i = 0; i < npairs; i++) {
		struct pair *p = &pairs[i];
		uint64_t counter = *(uint64_t *)(p->b.buf + B_COUNTER_OFF);
		check(counter == p->next_seq + p->faa_offset, "B%d's counter is %" PRIu64 " after %u FETCH_AND_ADDs (%" PRIu64 " executed twice)",
		      i, counter, p->next_seq, p->faa_offset);
		dups_msgs += p->dup_msgs;
		dups_faa += p->faa_offset;
		check(p->a.qp->qp_num == p->vqpn_a && p->b.qp->qp_num == p->vqpn_b, "pair %d: virtual QPNs changed", i);
		check(p->a.mr->lkey == p->lkey_a && p->b.mr->rkey == p->rkey_b, "pair %d: virtual keys changed", i);
	}
	if (with_ud) {
		check(ud.expect_seq == ud.next_seq, "UB received up to datagram %u of %u", ud.expect_seq, ud.next_seq);
		check(ud.a.qp->qp_num == ud.vqpn_a && ud.b.qp->qp_num == ud.vqpn_b, "UD: virtual QPNs changed");
		dups_msgs += ud.dup_msgs;
	}
	check(done == recoveries, "%d recoveries done, %d asked for", done, recoveries);
	check(da.ctx->async_fd == async_fd, "async fd number changed");
	/* Natively this workload raises no async event; a recovery must not show one either. */
	no_async_events(da.ctx, "A");
	if (ndev == 2)
		no_async_events(db->ctx, "B");
	TP_CHECK(sv_qp_identity(pairs[0].a.qp, &v, &real_a) == 0, "stableverbs_qp_identity failed");
	check(v == pairs[0].vqpn_a, "stableverbs_qp_identity: virtual 0x%x", v);
	uint32_t gen = 0;
	TP_CHECK(sv_generation(da.ctx, &gen) == 0, "stableverbs_generation failed");
	/* A real device made again may hand out the same QPNs: the generation says it was rebuilt. */
	check(done == 0 || gen >= (uint32_t)done, "generation %u after %d recoveries: nothing was rebuilt", gen, done);
	if (mode != EXTERNAL)
		check(done == 0 || real_a != real_a0, "the real QPN did not change (0x%x): nothing was rebuilt", real_a);
	char name1[64];
	TP_CHECK(sv_real_name(da.ctx, name1, sizeof(name1)) == 0, "stableverbs_real_device_name failed");
	if (mode == RENAME)
		check(strcmp(name1, da.name) == 0, "the context lives on %s, expected %s", name1, da.name);
	printf("recovery: device %s -> %s, generation %u\n", name0, name1, gen);

	struct stableverbs_recovery_stats st;
	memset(&st, 0, sizeof(st));
	TP_CHECK(sv_stats(&st, sizeof(st)) == 0, "stableverbs_recovery_stats failed");
	if (mode == REGONE)
		/* The second vanishing joins the recovery under way if it comes before the rebuild's
		 * commit, else the next recovery takes it. */
		check(st.count >= (uint64_t)done && st.count <= 2 * (uint64_t)done,
		      "stableverbs_recovery_stats: count %" PRIu64 ", expected %d to %d", st.count, done, 2 * done);
	else
		check(st.count == (uint64_t)done, "stableverbs_recovery_stats: count %" PRIu64 ", expected %d", st.count, done);
	note_recoveries();
	if (nwaiting > 0)
		printf("recovery: %d recovery(ies) with no completion after them: no blackout measured\n", nwaiting);
	printf("recovery: phases quiesce=%" PRIu64 " release=%" PRIu64 " device_wait=%" PRIu64 " rebuild=%" PRIu64
	       " reconnect=%" PRIu64 " replay=%" PRIu64 " ns, %" PRIu64 " replayed, planned=%u contexts=%u\n",
	       st.quiesce_ns, st.release_ns, st.device_wait_ns, st.rebuild_ns, st.reconnect_ns, st.replay_ns,
	       st.replayed_wrs, st.planned, st.contexts);
	if (nblackouts > 0) {
		/* median (insertion sort: a few hundred at most) */
		for (int i = 1; i < nblackouts; i++)
			for (int j = i; j > 0 && blackouts[j - 1] > blackouts[j]; j--) {
				double t = blackouts[j];
				blackouts[j] = blackouts[j - 1];
				blackouts[j - 1] = t;
			}
		printf("recovery: blackout median %.3f ms, min %.3f ms, max %.3f ms over %d recoveries, %d QP pair(s)\n",
		       blackouts[nblackouts / 2], blackouts[0], blackouts[nblackouts - 1], nblackouts, npairs);
	}
	if (tolerate)
		printf("recovery: duplicates of work in flight at a loss (-t): %" PRIu64 " SEND(s) received twice, %" PRIu64
		       " FETCH_AND_ADD(s) executed twice\n", dups_msgs, dups_faa);
	printf("recovery: %s, %" PRIu64 " messages, %d recoveries, %d devices, %d errors\n", mode_names[mode], messages, done,
	       ndev, errors);
	return errors ? 1 : 0;
}
