/*
 * recovery: the verifying workload of the recovery engine (issue 4, phase A: both ends in this
 * process). A→B in bursts of 4 messages; per message an RDMA WRITE into B's slot, a FETCH_AND_ADD
 * on B's counter and a sequence-numbered, checksummed SEND; B has only 2 receives posted when a
 * burst starts, so 2 SENDs (and what follows them on A's queue) are still in flight when a
 * recovery hits; B then posts 2 more receives, checks every message (sequence exactly the next
 * one: nothing lost or duplicated; checksum; the WRITE's bytes) and answers with a pong SEND.
 * Every FETCH_AND_ADD must return exactly its sequence number (executed once, in order); B's
 * counter ends at the number of messages. No completion may carry an error; the virtual QPN, keys
 * and fd numbers must not change.
 *
 *   recovery -m planned|fatal|rxe|rename|failrebuild|external [-n bursts] [-k recoveries]
 *
 *   planned     stableverbs_detach(NULL) with work in flight; B posts and polls while released
 *               (buffered posts, completions kept from the released CQs); stableverbs_attach()
 *   fatal       the device vanishes like mlx5 (DEVICE_FATAL, QPs flushed) and comes back
 *   rxe         the device vanishes like rxe (leaves the list, PORT_ERR, removal waits for the
 *               process to close it — the shim's release lets it complete) and comes back
 *   rename      fatal, and it comes back under another name with new GUID/LIDs/GIDs
 *               (run with STABLEVERBS_MATCH=any)
 *   failrebuild fatal, and the first create_qp of the rebuild fails with EIO (retried)
 *   external    the program only works; something outside (the `stableverbs` command, through the
 *               control socket) detaches and attaches. Each burst pauses 2 ms with its work in
 *               flight (where planned detaches). Prints "recovery: external, pid P, control PATH"
 *               once its contexts are open; ends two bursts after stableverbs_recovery_stats
 *               counts k recoveries (-n is ignored)
 *
 * The stableverbs_* functions are found with dlsym(RTLD_DEFAULT): run under LD_PRELOAD.
 */
#include "common.h"
#include <dlfcn.h>
#include "stableverbs.h"

#define BURST 4
#define SLOT 128
#define A_SEND_OFF 0          /* A: message slots (BURST) */
#define A_FAA_OFF 4096        /* A: FETCH_AND_ADD results (8 bytes per message in a burst) */
#define A_PONG_OFF 8192       /* A: pong receive */
#define B_RECV_OFF 0          /* B: receive slots (2 * BURST) */
#define B_WRITE_OFF 8192      /* B: RDMA WRITE slots (BURST) */
#define B_COUNTER_OFF 16384   /* B: the FETCH_AND_ADD counter */
#define B_PONG_OFF 20480      /* B: pong send */

struct msg {
	uint32_t seq;
	uint32_t len;
	uint32_t sum;
	uint8_t data[SLOT - 12];
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

/* Waits for one completion (any error status is a failure: the application must never see one). */
static void poll_one(struct ibv_cq *cq, struct ibv_wc *wc, const char *what)
{
	tp_poll1(cq, wc, what);
	TP_CHECK(wc->status == IBV_WC_SUCCESS, "%s: completion status %s (%d) reached the application", what,
		 tp_status_name(wc->status), wc->status);
}

static void post_send(struct tp_end *e, enum ibv_wr_opcode op, uint64_t wr_id, void *addr, uint32_t len,
		      int signaled, uint64_t raddr, uint32_t rkey)
{
	struct ibv_sge sge = {.addr = (uintptr_t)addr, .length = len, .lkey = e->mr->lkey};
	struct ibv_send_wr wr, *bad = NULL;
	memset(&wr, 0, sizeof(wr));
	wr.wr_id = wr_id;
	wr.sg_list = &sge;
	wr.num_sge = 1;
	wr.opcode = op;
	wr.send_flags = signaled ? IBV_SEND_SIGNALED : 0;
	if (op == IBV_WR_RDMA_WRITE) {
		wr.wr.rdma.remote_addr = raddr;
		wr.wr.rdma.rkey = rkey;
	} else if (op == IBV_WR_ATOMIC_FETCH_AND_ADD) {
		wr.wr.atomic.remote_addr = raddr;
		wr.wr.atomic.rkey = rkey;
		wr.wr.atomic.compare_add = 1;
	}
	int rc = ibv_post_send(e->qp, &wr, &bad);
	TP_CHECK(rc == 0, "ibv_post_send(op %d) failed: %s", op, strerror(rc));
}

enum mode { PLANNED, FATAL, RXE, RENAME, FAILREBUILD, EXTERNAL };

static void print_stats(int k)
{
	struct stableverbs_recovery_stats st;
	memset(&st, 0, sizeof(st));
	TP_CHECK(sv_stats(&st, sizeof(st)) == 0, "stableverbs_recovery_stats failed");
	check(st.count == (uint64_t)k, "stableverbs_recovery_stats: count %" PRIu64 ", expected %d", st.count, k);
	printf("recovery: phases quiesce=%" PRIu64 " release=%" PRIu64 " device_wait=%" PRIu64 " rebuild=%" PRIu64
	       " reconnect=%" PRIu64 " replay=%" PRIu64 " ns, %" PRIu64 " replayed, planned=%u contexts=%u\n",
	       st.quiesce_ns, st.release_ns, st.device_wait_ns, st.rebuild_ns, st.reconnect_ns, st.replay_ns,
	       st.replayed_wrs, st.planned, st.contexts);
}

int main(int argc, char **argv)
{
	int bursts = 12, recoveries = 3, opt;
	enum mode mode = PLANNED;
	while ((opt = getopt(argc, argv, "m:n:k:")) != -1) {
		switch (opt) {
		case 'm':
			mode = !strcmp(optarg, "planned") ? PLANNED
			       : !strcmp(optarg, "fatal") ? FATAL
			       : !strcmp(optarg, "rxe")   ? RXE
			       : !strcmp(optarg, "rename") ? RENAME
			       : !strcmp(optarg, "failrebuild") ? FAILREBUILD
			       : !strcmp(optarg, "external") ? EXTERNAL
							      : (enum mode)-1;
			TP_CHECK((int)mode >= 0, "unknown mode %s", optarg);
			break;
		case 'n': bursts = atoi(optarg); break;
		case 'k': recoveries = atoi(optarg); break;
		default: fprintf(stderr, "usage: recovery -m MODE [-n bursts] [-k recoveries]\n"); return 2;
		}
	}
	tp_start("recovery", 90);
	sv_detach = need("stableverbs_detach");
	sv_attach = need("stableverbs_attach");
	sv_stats = need("stableverbs_recovery_stats");
	sv_qp_identity = need("stableverbs_qp_identity");
	sv_real_name = need("stableverbs_real_device_name");
	sv_generation = need("stableverbs_generation");
	sh_remove = need("stableverbs_softhca_remove_device");
	sh_restore = need("stableverbs_softhca_restore_device");
	sh_pending = need("stableverbs_softhca_removal_pending");
	sh_fail = need("stableverbs_softhca_fail");

	struct tp_dev da, dbs, *db;
	int ndev = tp_open(&da, &dbs, &db);
	struct tp_qp_opts o = {.type = IBV_QPT_RC, .max_send_wr = 64, .max_recv_wr = 64};
	struct tp_end a, b;
	tp_end_create(&a, &da, &o);
	tp_end_create(&b, db, &o);
	tp_connect_rc(&a, &b);

	uint32_t vqpn_a = a.qp->qp_num, vqpn_b = b.qp->qp_num, lkey_a = a.mr->lkey, rkey_b = b.mr->rkey;
	int async_fd = da.ctx->async_fd;
	uint32_t v, real_a0 = 0, real_a;
	TP_CHECK(sv_qp_identity(a.qp, &v, &real_a0) == 0, "stableverbs_qp_identity failed");
	char name0[64];
	TP_CHECK(sv_real_name(da.ctx, name0, sizeof(name0)) == 0, "stableverbs_real_device_name failed");

	uint64_t *counter = (uint64_t *)(b.buf + B_COUNTER_OFF);
	*counter = 0;
	uint32_t next_seq = 0, expect_seq = 0;
	int done = 0, at_every = bursts / (recoveries + 1);
	if (at_every < 1)
		at_every = 1;
	unsigned b_slot = 0;
	/* B: 2 receives outstanding when a burst starts. */
	for (int i = 0; i < 2; i++, b_slot++)
		tp_post_recv(&b, b_slot % (2 * BURST), b.buf + B_RECV_OFF + (b_slot % (2 * BURST)) * SLOT, SLOT);
	tp_post_recv(&a, 999, a.buf + A_PONG_OFF, SLOT);

	int extra_bursts = 2;
	if (mode == EXTERNAL) {
		static __typeof__(&stableverbs_control_path) sv_control_path;
		sv_control_path = need("stableverbs_control_path");
		char path[256];
		int rc = sv_control_path(path, sizeof(path));
		TP_CHECK(rc == 0, "stableverbs_control_path: %s", strerror(rc));
		printf("recovery: external, pid %d, control %s\n", (int)getpid(), path);
	}
	for (int it = 0; mode == EXTERNAL ? extra_bursts > 0 : it < bursts; it++) {
		/* A: a burst of WRITE (unsignaled), FETCH_AND_ADD, SEND per message. */
		for (int j = 0; j < BURST; j++) {
			uint32_t seq = next_seq++;
			struct msg *m = (struct msg *)(a.buf + A_SEND_OFF + j * SLOT);
			m->seq = seq;
			m->len = sizeof(m->data);
			tp_fill(m->data, sizeof(m->data), seq);
			m->sum = checksum(m->data, sizeof(m->data));
			/* The WRITE carries the same bytes into B's slot j. */
			post_send(&a, IBV_WR_RDMA_WRITE, (uint64_t)seq << 8 | 1, m->data, sizeof(m->data), 0,
				  (uintptr_t)(b.buf + B_WRITE_OFF + j * SLOT), b.mr->rkey);
			post_send(&a, IBV_WR_ATOMIC_FETCH_AND_ADD, (uint64_t)seq << 8 | 2, a.buf + A_FAA_OFF + j * 8, 8, 1,
				  (uintptr_t)counter, b.mr->rkey);
			post_send(&a, IBV_WR_SEND, (uint64_t)seq << 8 | 3, m, SLOT, 1, 0, 0);
		}

		int recover = mode != EXTERNAL && done < recoveries && it > 0 && it % at_every == 0;
		if (mode == EXTERNAL) {
			/* Work in flight (2 SENDs wait for receives) while a detach may come from outside. */
			usleep(2000);
			struct stableverbs_recovery_stats st;
			memset(&st, 0, sizeof(st));
			TP_CHECK(sv_stats(&st, sizeof(st)) == 0, "stableverbs_recovery_stats failed");
			done = (int)st.count;
			if (done >= recoveries)
				extra_bursts--;
			for (int i = 0; i < 2; i++, b_slot++)
				tp_post_recv(&b, b_slot % (2 * BURST), b.buf + B_RECV_OFF + (b_slot % (2 * BURST)) * SLOT, SLOT);
		} else if (recover && mode == PLANNED) {
			/* Work in flight (2 SENDs wait for receives); detach, keep working while released. */
			int rc = sv_detach(NULL);
			check(rc == 0, "stableverbs_detach: %s", strerror(rc));
			char nm[64];
			check(sv_real_name(da.ctx, nm, sizeof(nm)) == ENOENT, "released, yet a real device is reported");
			/* Buffered while released. */
			for (int i = 0; i < 2; i++, b_slot++)
				tp_post_recv(&b, b_slot % (2 * BURST), b.buf + B_RECV_OFF + (b_slot % (2 * BURST)) * SLOT, SLOT);
			rc = sv_attach();
			check(rc == 0, "stableverbs_attach: %s", strerror(rc));
			done++;
		} else if (recover) {
			const char *dev = da.name;
			int rc = sh_remove(dev, mode == RXE ? 1 : 0);
			TP_CHECK(rc == 0, "removing %s failed: %s", dev, strerror(rc));
			if (mode == FAILREBUILD)
				TP_CHECK(sh_fail("create_qp", EIO, 1, 0) == 0, "fault injection failed");
			if (mode == RXE) {
				/* The removal waits for the process to let go: the shim's release does. */
				double deadline = tp_now() + 10;
				while (sh_pending(dev) && tp_now() < deadline)
					usleep(1000);
				check(!sh_pending(dev), "the rxe-like removal of %s did not complete: the shim did not release it", dev);
			} else {
				usleep(20000);
			}
			char newname[64];
			snprintf(newname, sizeof(newname), "moved%d", done);
			rc = sh_restore(dev, mode == RENAME ? newname : NULL, mode == RENAME);
			TP_CHECK(rc == 0, "restoring %s failed: %s", dev, strerror(rc));
			if (mode == RENAME)
				snprintf(da.name, sizeof(da.name), "%s", newname);
			/* B's receives go in whatever the state (buffered or live). */
			for (int i = 0; i < 2; i++, b_slot++)
				tp_post_recv(&b, b_slot % (2 * BURST), b.buf + B_RECV_OFF + (b_slot % (2 * BURST)) * SLOT, SLOT);
			done++;
		} else {
			for (int i = 0; i < 2; i++, b_slot++)
				tp_post_recv(&b, b_slot % (2 * BURST), b.buf + B_RECV_OFF + (b_slot % (2 * BURST)) * SLOT, SLOT);
		}

		/* B: every message, in order, once. */
		for (int j = 0; j < BURST; j++) {
			struct ibv_wc wc;
			poll_one(b.rcq, &wc, "B's receive");
			check(wc.opcode == IBV_WC_RECV, "B: opcode %d", wc.opcode);
			check(wc.qp_num == vqpn_b, "B: wc.qp_num 0x%x, virtual QPN 0x%x", wc.qp_num, vqpn_b);
			struct msg *m = (struct msg *)(b.buf + B_RECV_OFF + wc.wr_id * SLOT);
			check(m->seq == expect_seq, "B: message %u, expected %u (lost or duplicated)", m->seq, expect_seq);
			check(m->sum == checksum(m->data, sizeof(m->data)), "B: message %u: bad checksum", m->seq);
			check(tp_check(m->data, sizeof(m->data), m->seq) < 0, "B: message %u: bad payload", m->seq);
			check(tp_check(b.buf + B_WRITE_OFF + (m->seq % BURST) * SLOT, sizeof(m->data), m->seq) < 0,
			      "B: RDMA WRITE bytes of message %u missing", m->seq);
			expect_seq++;
		}
		/* The 2 receives outstanding when the next burst starts. */
		for (int i = 0; i < 2; i++, b_slot++)
			tp_post_recv(&b, b_slot % (2 * BURST), b.buf + B_RECV_OFF + (b_slot % (2 * BURST)) * SLOT, SLOT);

		/* A: 4 FETCH_AND_ADD + 4 SEND completions, each once, atomics exactly in order. */
		int faa = 0, sends = 0;
		for (int k = 0; k < 2 * BURST; k++) {
			struct ibv_wc wc;
			poll_one(a.scq, &wc, "A's send queue");
			check(wc.qp_num == vqpn_a, "A: wc.qp_num 0x%x, virtual QPN 0x%x", wc.qp_num, vqpn_a);
			uint32_t seq = (uint32_t)(wc.wr_id >> 8);
			int kind = (int)(wc.wr_id & 0xff);
			if (kind == 2) {
				uint64_t old = *(uint64_t *)(a.buf + A_FAA_OFF + (seq % BURST) * 8);
				check(old == seq, "FETCH_AND_ADD of message %u returned %" PRIu64 " (executed twice or lost?)", seq, old);
				faa++;
			} else {
				check(kind == 3 && wc.opcode == IBV_WC_SEND, "A: unexpected completion wr_id 0x%" PRIx64, wc.wr_id);
				sends++;
			}
		}
		check(faa == BURST && sends == BURST, "A: %d atomics, %d sends completed in burst %d", faa, sends, it);

		/* Pong B→A. */
		struct msg *p = (struct msg *)(b.buf + B_PONG_OFF);
		p->seq = expect_seq - 1;
		post_send(&b, IBV_WR_SEND, 777, p, SLOT, 1, 0, 0);
		struct ibv_wc wc;
		poll_one(b.scq, &wc, "B's pong");
		poll_one(a.rcq, &wc, "A's pong receive");
		check(((struct msg *)(a.buf + A_PONG_OFF))->seq == expect_seq - 1, "A: pong %u",
		      ((struct msg *)(a.buf + A_PONG_OFF))->seq);
		tp_post_recv(&a, 999, a.buf + A_PONG_OFF, SLOT);
	}

	check(*counter == next_seq, "B's counter is %" PRIu64 " after %u FETCH_AND_ADDs", *counter, next_seq);
	if (mode == EXTERNAL) {
		struct stableverbs_recovery_stats st;
		memset(&st, 0, sizeof(st));
		TP_CHECK(sv_stats(&st, sizeof(st)) == 0, "stableverbs_recovery_stats failed");
		done = (int)st.count;
		check(done >= recoveries, "%d recoveries done, %d asked for", done, recoveries);
	} else {
		check(done == recoveries, "%d recoveries done, %d asked for", done, recoveries);
	}
	check(a.qp->qp_num == vqpn_a && b.qp->qp_num == vqpn_b, "virtual QPNs changed");
	check(a.mr->lkey == lkey_a && b.mr->rkey == rkey_b, "virtual keys changed");
	check(da.ctx->async_fd == async_fd, "async fd number changed");
	TP_CHECK(sv_qp_identity(a.qp, &v, &real_a) == 0, "stableverbs_qp_identity failed");
	check(v == vqpn_a, "stableverbs_qp_identity: virtual 0x%x", v);
	if (mode == EXTERNAL) {
		/* A device made anew (an rxe device on a replaced NIC) may hand out the same QPN again. */
		uint32_t generation = 0;
		TP_CHECK(sv_generation(da.ctx, &generation) == 0, "stableverbs_generation failed");
		check(generation == (uint32_t)done, "generation %u after %d recoveries", generation, done);
	} else {
		check(done == 0 || real_a != real_a0, "the real QPN did not change (0x%x): nothing was rebuilt", real_a);
	}
	char name1[64];
	TP_CHECK(sv_real_name(da.ctx, name1, sizeof(name1)) == 0, "stableverbs_real_device_name failed");
	if (mode == RENAME)
		check(strcmp(name1, da.name) == 0, "the context lives on %s, expected %s", name1, da.name);
	printf("recovery: device %s -> %s\n", name0, name1);
	print_stats(done);
	static const char *names[] = {"planned", "fatal", "rxe", "rename", "failrebuild", "external"};
	printf("recovery: %s, %u messages, %d recoveries, %d devices, %d errors\n", names[mode], next_seq, done, ndev,
	       errors);
	return errors ? 1 : 0;
}
