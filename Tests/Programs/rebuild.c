/*
 * rebuild: stableverbs_rebuild_context (include/stableverbs.h) rebuilds every real object behind a
 * context in place. Establish RC QPs (legacy and wr_* ones) and MRs, exchange traffic, record the
 * virtual and real QPN/lkey/rkey, rebuild, check that the real values changed and the virtual ones
 * did not, then keep working with the OLD virtual values: new receives, SEND, RDMA WRITE with the
 * old rkey, RDMA READ, atomics, WRITE WITH IMM, a completion channel (same fd) — every data check
 * must pass and every completion must carry the virtual QP number.
 *
 * The stableverbs_* functions are found with dlsym(RTLD_DEFAULT), so the program is built like the
 * others and runs under LD_PRELOAD=libstableverbs.so; without the shim it fails with a clear reason.
 *
 *   rebuild [-r rounds]
 */
#include "common.h"
#include <dlfcn.h>
#include <fcntl.h>
#include "stableverbs.h"

#define RECV_OFF 16384
#define RW_OFF 32768
#define AT_OFF 49152
#define LEN 1000

static int errors;
static __typeof__(&stableverbs_is_active) sv_is_active;
static __typeof__(&stableverbs_qp_identity) sv_qp_identity;
static __typeof__(&stableverbs_mr_identity) sv_mr_identity;
static __typeof__(&stableverbs_rebuild_context) sv_rebuild;
static __typeof__(&stableverbs_generation) sv_generation;

struct ids {
	uint32_t vqpn, rqpn, vlkey, rlkey, vrkey, rrkey;
};

static void *need(const char *name)
{
	void *f = dlsym(RTLD_DEFAULT, name);
	TP_CHECK(f, "%s not found: is libstableverbs.so preloaded or linked?", name);
	return f;
}

static struct ids identity(struct tp_end *e, const char *who)
{
	struct ids x;
	int rc = sv_qp_identity(e->qp, &x.vqpn, &x.rqpn);
	TP_CHECK(rc == 0, "stableverbs_qp_identity(%s) failed: %s", who, strerror(rc));
	rc = sv_mr_identity(e->mr, &x.vlkey, &x.rlkey, &x.vrkey, &x.rrkey);
	TP_CHECK(rc == 0, "stableverbs_mr_identity(%s) failed: %s", who, strerror(rc));
	return x;
}

static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int ok, const char *fmt, ...)
{
	if (ok)
		return;
	va_list ap;
	printf("rebuild: ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	errors++;
}

static void check_recv(struct ibv_wc *wc, uint32_t vqpn, uint32_t rqpn, size_t len, const char *what)
{
	check(wc->qp_num == vqpn, "%s: wc.qp_num 0x%x, expected the virtual QPN 0x%x (real 0x%x)", what,
	      wc->qp_num, vqpn, rqpn);
	check(wc->byte_len == len, "%s: byte_len %u, expected %zu", what, wc->byte_len, len);
}

/* One round of every operation between a and b, using only the identities recorded in ia/ib. */
static void traffic(struct tp_end *a, struct tp_end *b, const struct ids *ia, const struct ids *ib, int ex,
		    int round, const char *tag)
{
	struct ibv_wc wc;
	char what[96];
	uint32_t seed = (uint32_t)round * 16u + (ex ? 8u : 0u);
	for (int dir = 0; dir < 2; dir++) {
		struct tp_end *s = dir ? b : a, *r = dir ? a : b;
		const struct ids *is = dir ? ib : ia, *ir = dir ? ia : ib;
		/* SEND with the recorded lkeys, into a fresh receive */
		memset(r->buf + RECV_OFF, 0, LEN);
		struct ibv_sge rsg = {.addr = (uintptr_t)(r->buf + RECV_OFF), .length = LEN, .lkey = ir->vlkey};
		struct ibv_recv_wr rwr = {.wr_id = 77, .sg_list = &rsg, .num_sge = 1}, *bad = NULL;
		int rc = ibv_post_recv(r->qp, &rwr, &bad);
		TP_CHECK(rc == 0, "%s: ibv_post_recv failed: %s", tag, strerror(rc));
		tp_fill(s->buf, LEN, seed + (uint32_t)dir);
		struct ibv_sge sg = {.addr = (uintptr_t)s->buf, .length = LEN, .lkey = is->vlkey};
		struct tp_wr w = {.op = TP_SEND, .wr_id = 1, .sg = &sg, .num_sge = 1};
		rc = tp_post(s, &w, ex);
		TP_CHECK(rc == 0, "%s: post SEND failed: %s", tag, strerror(rc));
		snprintf(what, sizeof(what), "%s SEND %s", tag, dir ? "B->A" : "A->B");
		tp_expect(s->scq, &wc, IBV_WC_SEND, 1, what);
		check(wc.qp_num == is->vqpn, "%s: send completion wc.qp_num 0x%x, expected virtual 0x%x", what,
		      wc.qp_num, is->vqpn);
		tp_expect(r->rcq, &wc, IBV_WC_RECV, 77, what);
		check_recv(&wc, ir->vqpn, ir->rqpn, LEN, what);
		errors += tp_verify(r->buf + RECV_OFF, LEN, seed + (uint32_t)dir, what);

		/* RDMA WRITE with the recorded rkey */
		tp_fill(s->buf, LEN, seed + 2u + (uint32_t)dir);
		memset(r->buf + RW_OFF, 0, LEN);
		w = (struct tp_wr){.op = TP_WRITE, .wr_id = 2, .sg = &sg, .num_sge = 1,
				   .raddr = (uintptr_t)(r->buf + RW_OFF), .rkey = ir->vrkey};
		rc = tp_post(s, &w, ex);
		TP_CHECK(rc == 0, "%s: post RDMA WRITE failed: %s", tag, strerror(rc));
		snprintf(what, sizeof(what), "%s RDMA WRITE %s", tag, dir ? "B->A" : "A->B");
		tp_expect(s->scq, &wc, IBV_WC_RDMA_WRITE, 2, what);
		errors += tp_verify(r->buf + RW_OFF, LEN, seed + 2u + (uint32_t)dir, what);

		/* RDMA READ back from the same place */
		memset(s->buf + RW_OFF, 0, LEN);
		struct ibv_sge dsg = {.addr = (uintptr_t)(s->buf + RW_OFF), .length = LEN, .lkey = is->vlkey};
		w = (struct tp_wr){.op = TP_READ, .wr_id = 3, .sg = &dsg, .num_sge = 1,
				   .raddr = (uintptr_t)(r->buf + RW_OFF), .rkey = ir->vrkey};
		rc = tp_post(s, &w, ex);
		TP_CHECK(rc == 0, "%s: post RDMA READ failed: %s", tag, strerror(rc));
		snprintf(what, sizeof(what), "%s RDMA READ %s", tag, dir ? "B->A" : "A->B");
		tp_expect(s->scq, &wc, IBV_WC_RDMA_READ, 3, what);
		errors += tp_verify(s->buf + RW_OFF, LEN, seed + 2u + (uint32_t)dir, what);

		/* Atomics */
		uint64_t v = 0x1111222233334444ull * (uint64_t)(round + 1) + (uint64_t)dir, got;
		memcpy(r->buf + AT_OFF, &v, 8);
		struct ibv_sge asg = {.addr = (uintptr_t)(s->buf + AT_OFF), .length = 8, .lkey = is->vlkey};
		w = (struct tp_wr){.op = TP_CAS, .wr_id = 4, .sg = &asg, .num_sge = 1,
				   .raddr = (uintptr_t)(r->buf + AT_OFF), .rkey = ir->vrkey, .compare_add = v,
				   .swap = v + 100};
		rc = tp_post(s, &w, ex);
		TP_CHECK(rc == 0, "%s: post CMP_AND_SWP failed: %s", tag, strerror(rc));
		snprintf(what, sizeof(what), "%s CMP_AND_SWP %s", tag, dir ? "B->A" : "A->B");
		tp_expect(s->scq, &wc, IBV_WC_COMP_SWAP, 4, what);
		memcpy(&got, s->buf + AT_OFF, 8);
		check(got == v, "%s: returned 0x%" PRIx64 ", expected 0x%" PRIx64, what, got, v);
		w.op = TP_FAA;
		w.wr_id = 5;
		w.compare_add = 5;
		rc = tp_post(s, &w, ex);
		TP_CHECK(rc == 0, "%s: post FETCH_AND_ADD failed: %s", tag, strerror(rc));
		snprintf(what, sizeof(what), "%s FETCH_AND_ADD %s", tag, dir ? "B->A" : "A->B");
		tp_expect(s->scq, &wc, IBV_WC_FETCH_ADD, 5, what);
		memcpy(&got, s->buf + AT_OFF, 8);
		check(got == v + 100, "%s: returned 0x%" PRIx64 ", expected 0x%" PRIx64, what, got, v + 100);
		memcpy(&got, r->buf + AT_OFF, 8);
		check(got == v + 105, "%s: remote 0x%" PRIx64 ", expected 0x%" PRIx64, what, got, v + 105);

		/* RDMA WRITE WITH IMM: the receiver's completion carries the virtual QPN */
		rc = ibv_post_recv(r->qp, &(struct ibv_recv_wr){.wr_id = 78}, &bad);
		TP_CHECK(rc == 0, "%s: ibv_post_recv (no SGE) failed: %s", tag, strerror(rc));
		w = (struct tp_wr){.op = TP_WRITE_IMM, .wr_id = 6, .sg = &sg, .num_sge = 1, .imm = 0xFEED0000u + (uint32_t)round,
				   .raddr = (uintptr_t)(r->buf + RW_OFF), .rkey = ir->vrkey};
		tp_fill(s->buf, LEN, seed + 4u);
		rc = tp_post(s, &w, ex);
		TP_CHECK(rc == 0, "%s: post RDMA WRITE WITH IMM failed: %s", tag, strerror(rc));
		snprintf(what, sizeof(what), "%s RDMA WRITE WITH IMM %s", tag, dir ? "B->A" : "A->B");
		tp_expect(s->scq, &wc, IBV_WC_RDMA_WRITE, 6, what);
		tp_expect(r->rcq, &wc, IBV_WC_RECV_RDMA_WITH_IMM, 78, what);
		check_recv(&wc, ir->vqpn, ir->rqpn, LEN, what);
		check((wc.wc_flags & IBV_WC_WITH_IMM) && ntohl(wc.imm_data) == 0xFEED0000u + (uint32_t)round,
		      "%s: imm missing or wrong", what);
		errors += tp_verify(r->buf + RW_OFF, LEN, seed + 4u, what);
	}
}

/* Lists the provider refuses part of, on a fresh connected pair: the error and bad_wr are those of
 * a native post and the WRs before the refused one are posted (after a rebuild the shim copies
 * lists in chunks of 8 send / 16 receive WRs: the refused WR is in the second or a later chunk). */
static void refused_lists(struct tp_dev *da, struct tp_dev *db, const char *tag)
{
	enum { NSEND = 12, BAD_SEND = 9, NRECV = 40, BAD_RECV = 37 };
	struct tp_qp_opts o = {.type = IBV_QPT_RC};
	struct tp_end s, r;
	tp_end_create(&s, da, &o);
	tp_end_create(&r, db, &o);
	tp_connect_rc(&s, &r);
	struct ibv_qp_attr qa;
	struct ibv_qp_init_attr qi;
	int rc = ibv_query_qp(s.qp, &qa, IBV_QP_CAP, &qi);
	TP_CHECK(rc == 0, "%s: ibv_query_qp failed: %s", tag, strerror(rc));
	int send_over = (int)qa.cap.max_send_sge + 1, recv_over = (int)qa.cap.max_recv_sge + 1;
	TP_CHECK(send_over <= 64 && recv_over <= 64, "%s: max_sge %u/%u: too many for this test", tag,
		 qa.cap.max_send_sge, qa.cap.max_recv_sge);
	struct ibv_sge sg[64];
	for (int k = 0; k < 64; k++)
		sg[k] = (struct ibv_sge){.addr = (uintptr_t)(s.buf + 8 * k), .length = 8, .lkey = s.mr->lkey};

	struct ibv_send_wr w[NSEND], *bad = NULL;
	for (int k = 0; k < NSEND; k++)
		w[k] = (struct ibv_send_wr){.wr_id = 100u + (uint64_t)k, .next = k + 1 < NSEND ? &w[k + 1] : NULL,
					    .sg_list = sg, .num_sge = k == BAD_SEND ? send_over : 1,
					    .opcode = IBV_WR_RDMA_WRITE, .send_flags = IBV_SEND_SIGNALED,
					    .wr.rdma = {.remote_addr = (uintptr_t)(r.buf + RW_OFF) + 8u * (uint64_t)k,
							.rkey = r.mr->rkey}};
	rc = ibv_post_send(s.qp, w, &bad);
	check(rc == EINVAL && bad == &w[BAD_SEND], "%s: a send list with %d SGEs in WR %d: rc %d, bad_wr at WR %ld", tag,
	      send_over, BAD_SEND, rc, bad ? (long)(bad - w) : -1L);
	struct ibv_wc wc;
	for (int k = 0; k < BAD_SEND; k++)
		tp_expect(s.scq, &wc, IBV_WC_RDMA_WRITE, 100u + (uint64_t)k, tag);

	struct ibv_recv_wr rw[NRECV], *rbad = NULL;
	for (int k = 0; k < NRECV; k++)
		rw[k] = (struct ibv_recv_wr){.wr_id = 200u + (uint64_t)k, .next = k + 1 < NRECV ? &rw[k + 1] : NULL,
					     .sg_list = sg, .num_sge = k == BAD_RECV ? recv_over : 1};
	rc = ibv_post_recv(r.qp, rw, &rbad);
	check(rc == EINVAL && rbad == &rw[BAD_RECV], "%s: a receive list with %d SGEs in WR %d: rc %d, bad_wr at WR %ld",
	      tag, recv_over, BAD_RECV, rc, rbad ? (long)(rbad - rw) : -1L);

	/* One WR alone (after a rebuild the shim copies it without the chunk loop), refused: an
	 * inline write longer than the QP's inline limit; then one (not inline) the provider takes. */
	struct ibv_sge big = {.addr = (uintptr_t)s.buf, .length = qa.cap.max_inline_data + 1, .lkey = s.mr->lkey};
	struct ibv_send_wr one = {.wr_id = 150, .sg_list = &big, .num_sge = 1, .opcode = IBV_WR_RDMA_WRITE,
				  .send_flags = IBV_SEND_SIGNALED | IBV_SEND_INLINE,
				  .wr.rdma = {.remote_addr = (uintptr_t)(r.buf + RW_OFF), .rkey = r.mr->rkey}};
	bad = NULL;
	rc = ibv_post_send(s.qp, &one, &bad);
	check(rc == EINVAL && bad == &one, "%s: one inline write of %u bytes (limit %u): rc %d, bad_wr %s", tag, big.length,
	      qa.cap.max_inline_data, rc, bad == &one ? "is it" : bad ? "elsewhere" : "NULL");
	big.length = 8;
	one.wr_id = 151;
	one.send_flags = IBV_SEND_SIGNALED;
	rc = ibv_post_send(s.qp, &one, &bad);
	check(rc == 0, "%s: one write of 8 bytes after it: rc %d", tag, rc);
	if (rc == 0)
		tp_expect(s.scq, &wc, IBV_WC_RDMA_WRITE, 151, tag);
	tp_end_destroy(&s, 1);
	tp_end_destroy(&r, 1);
}

/* A completion event through the channel, whose fd number must survive rebuilds. */
static void event_round(struct ibv_comp_channel *ch, struct tp_end *a, struct tp_end *b, const struct ids *ib,
			const char *tag)
{
	int rc = ibv_req_notify_cq(b->rcq, 0);
	TP_CHECK(rc == 0, "%s: ibv_req_notify_cq failed: %s", tag, strerror(rc));
	tp_post_recv(b, 90, b->buf + RECV_OFF, LEN);
	tp_fill(a->buf, 64, 4242);
	struct ibv_sge sg = {.addr = (uintptr_t)a->buf, .length = 64, .lkey = a->mr->lkey};
	struct tp_wr w = {.op = TP_SEND, .wr_id = 91, .sg = &sg, .num_sge = 1};
	rc = tp_post(a, &w, 0);
	TP_CHECK(rc == 0, "%s: post SEND failed: %s", tag, strerror(rc));
	struct ibv_cq *cq;
	void *ctx;
	rc = ibv_get_cq_event(ch, &cq, &ctx); /* blocking; the watchdog bounds it */
	TP_CHECK(rc == 0, "%s: ibv_get_cq_event failed: %s", tag, strerror(errno));
	check(cq == b->rcq && ctx == b, "%s: the event names the wrong CQ or context", tag);
	ibv_ack_cq_events(cq, 1);
	struct ibv_wc wc;
	tp_expect(b->rcq, &wc, IBV_WC_RECV, 90, tag);
	check_recv(&wc, ib->vqpn, ib->rqpn, 64, tag);
	errors += tp_verify(b->buf + RECV_OFF, 64, 4242, tag);
	tp_expect(a->scq, &wc, IBV_WC_SEND, 91, tag);
}

static void compare(const char *who, const struct ids *before, const struct ids *after, int rebuilt,
		    struct tp_end *e)
{
	check(after->vqpn == before->vqpn && after->vlkey == before->vlkey && after->vrkey == before->vrkey,
	      "%s: a virtual identity changed (qpn 0x%x->0x%x lkey 0x%x->0x%x rkey 0x%x->0x%x)", who, before->vqpn,
	      after->vqpn, before->vlkey, after->vlkey, before->vrkey, after->vrkey);
	check(e->qp->qp_num == before->vqpn && e->mr->lkey == before->vlkey && e->mr->rkey == before->vrkey,
	      "%s: the application's qp_num/lkey/rkey fields changed", who);
	if (rebuilt)
		check(after->rqpn != before->rqpn && after->rlkey != before->rlkey && after->rrkey != before->rrkey,
		      "%s: real identities did not all change (qpn 0x%x->0x%x lkey 0x%x->0x%x rkey 0x%x->0x%x)",
		      who, before->rqpn, after->rqpn, before->rlkey, after->rlkey, before->rrkey, after->rrkey);
	else
		check(after->rqpn == before->rqpn && after->rlkey == before->rlkey && after->rrkey == before->rrkey,
		      "%s: real identities changed although its context was not rebuilt", who);
}

int main(int argc, char **argv)
{
	int rounds = 3, opt;
	while ((opt = getopt(argc, argv, "r:")) != -1) {
		switch (opt) {
		case 'r': rounds = atoi(optarg); break;
		default: fprintf(stderr, "usage: rebuild [-r rounds]\n"); return 2;
		}
	}
	tp_start("rebuild", 60);
	sv_is_active = need("stableverbs_is_active");
	sv_qp_identity = need("stableverbs_qp_identity");
	sv_mr_identity = need("stableverbs_mr_identity");
	sv_rebuild = need("stableverbs_rebuild_context");
	sv_generation = need("stableverbs_generation");
	TP_CHECK(sv_is_active() == 1, "the shim is loaded but not active (pass-through?)");

	struct tp_dev da, dbs, *db;
	int ndev = tp_open(&da, &dbs, &db);
	struct ibv_comp_channel *ch = ibv_create_comp_channel(db->ctx);
	TP_CHECK(ch, "ibv_create_comp_channel failed: %s", strerror(errno));
	int ch_fd = ch->fd;
	/* The channel belongs to B's context: only B's receive CQ may use it (a channel of another
	 * context is EINVAL, natively too). */
	struct tp_qp_opts ol = {.type = IBV_QPT_RC};
	struct tp_qp_opts ox = {.type = IBV_QPT_RC, .ex = 1};
	struct tp_end a, b, c, d; /* a-b legacy QPs (b's receive CQ on the channel), c-d wr_* QPs */
	tp_end_create(&a, &da, &ol);
	tp_end_create(&c, &da, &ox);
	ol.channel = ch;
	tp_end_create(&b, db, &ol);
	tp_end_create(&d, db, &ox);
	tp_connect_rc(&a, &b);
	tp_connect_rc(&c, &d);

	struct ids ia = identity(&a, "A"), ib = identity(&b, "B"), ic = identity(&c, "C"), id = identity(&d, "D");
	check(ia.vqpn == a.qp->qp_num && ia.vlkey == a.mr->lkey && ia.vrkey == a.mr->rkey,
	      "stableverbs_qp/mr_identity: virtual values differ from the object's fields");
	uint32_t gen0 = 99;
	TP_CHECK(sv_generation(da.ctx, &gen0) == 0, "stableverbs_generation failed");
	check(gen0 == 0, "generation %u before any rebuild, expected 0", gen0);

	traffic(&a, &b, &ia, &ib, 0, 0, "before rebuild, legacy");
	traffic(&c, &d, &ic, &id, 1, 0, "before rebuild, wr");
	event_round(ch, &a, &b, &ib, "before rebuild, event");
	refused_lists(&da, db, "before rebuild, refused lists");

	int qpn_checked = 0;
	for (int round = 1; round <= rounds; round++) {
		/* Round 1 with two devices rebuilds only A's context; later rounds rebuild both. */
		int only_a = ndev == 2 && round == 1;
		struct ibv_context *rebuilt[2] = {da.ctx, only_a || ndev == 1 ? NULL : db->ctx};
		for (int k = 0; k < 2; k++) {
			if (!rebuilt[k])
				continue;
			int rc = sv_rebuild(rebuilt[k]);
			TP_CHECK(rc == 0, "round %d: stableverbs_rebuild_context failed: %s", round, strerror(rc));
		}
		uint32_t gen = 0;
		TP_CHECK(sv_generation(da.ctx, &gen) == 0, "stableverbs_generation failed");
		check(gen == (uint32_t)round, "round %d: generation %u, expected %d", round, gen, round);
		struct ids na = identity(&a, "A"), nb = identity(&b, "B"), nc = identity(&c, "C"), nd = identity(&d, "D");
		int b_rebuilt = ndev == 1 || !only_a;
		compare("A", &ia, &na, 1, &a);
		compare("C", &ic, &nc, 1, &c);
		compare("B", &ib, &nb, b_rebuilt, &b);
		compare("D", &id, &nd, b_rebuilt, &d);
		check(ch->fd == ch_fd, "the completion channel's fd changed from %d to %d", ch_fd, ch->fd);
		if (fcntl(ch_fd, F_GETFD) < 0)
			check(0, "the completion channel's fd %d is no longer open", ch_fd);
		if (nb.rqpn != nb.vqpn || na.rqpn != na.vqpn)
			qpn_checked++;
		/* Keep working with the identities recorded BEFORE the first rebuild. */
		char tag[64];
		snprintf(tag, sizeof(tag), "after rebuild %d, legacy", round);
		traffic(&a, &b, &ia, &ib, 0, round, tag);
		snprintf(tag, sizeof(tag), "after rebuild %d, wr", round);
		traffic(&c, &d, &ic, &id, 1, round, tag);
		snprintf(tag, sizeof(tag), "after rebuild %d, event", round);
		event_round(ch, &a, &b, &ib, tag);
		snprintf(tag, sizeof(tag), "after rebuild %d, refused lists", round);
		refused_lists(&da, db, tag);
		ia.rqpn = na.rqpn, ia.rlkey = na.rlkey, ia.rrkey = na.rrkey;
		ib.rqpn = nb.rqpn, ib.rlkey = nb.rlkey, ib.rrkey = nb.rrkey;
		ic.rqpn = nc.rqpn, ic.rlkey = nc.rlkey, ic.rrkey = nc.rrkey;
		id.rqpn = nd.rqpn, id.rlkey = nd.rlkey, id.rrkey = nd.rrkey;
	}
	check(qpn_checked > 0, "the real QPN never differed from the virtual one: nothing was shown");
	if (errors == 0)
		printf("rebuild: after rebuild, wc.qp_num is the virtual QPN (real QPN differs)\n");

	tp_end_destroy(&a, 1);
	tp_end_destroy(&b, 1);
	tp_end_destroy(&c, 1);
	tp_end_destroy(&d, 1);
	int rc = ibv_destroy_comp_channel(ch);
	TP_CHECK(rc == 0, "ibv_destroy_comp_channel failed: %s", strerror(rc));
	if (db != &da)
		tp_close_dev(db);
	tp_close_dev(&da);
	printf("rebuild: %d rebuilds, %d devices, %d errors\n", rounds, ndev, errors);
	return errors ? 1 : 0;
}
