/*
 * ud: UD QPs in one process. A sends to two UD QPs B and C (same address handle, a different
 * remote QPN per send, qkey); every receive must start with the 40-byte GRH area, have IBV_WC_GRH,
 * byte_len = payload + 40, src_qp = the sender's QP number; the receiver replies through an address
 * handle made with ibv_create_ah_from_wc (or ibv_init_ah_from_wc + ibv_create_ah). Address handles
 * always carry a GRH (is_global = 1). Legacy ibv_post_send and the wr_* API (ibv_wr_set_ud_addr).
 *
 *   ud [-n iterations] [-l | -x]
 */
#include "common.h"

#define GRH 40
#define QKEY 0x11111111u
#define SLOTS 8
#define SLOT 4096

static int errors;

static void post_slot(struct tp_end *e, int slot, uint64_t id)
{
	memset(e->buf + (size_t)slot * SLOT, 0, SLOT);
	tp_post_recv(e, id, e->buf + (size_t)slot * SLOT, SLOT);
}

/* Receives one datagram at r (slot from wr_id) and checks it; returns the slot. */
static int receive(struct tp_end *r, struct tp_end *s, size_t len, uint32_t seed, int with_imm, uint32_t imm,
		   const char *what, struct ibv_wc *wc)
{
	tp_poll1(r->rcq, wc, what);
	TP_CHECK(wc->status == IBV_WC_SUCCESS, "%s: receive status %s", what, tp_status_name(wc->status));
	TP_CHECK(wc->opcode == IBV_WC_RECV, "%s: receive opcode %d", what, wc->opcode);
	int slot = (int)(wc->wr_id % SLOTS);
	if (!(wc->wc_flags & IBV_WC_GRH)) {
		printf("ud: %s: IBV_WC_GRH not set\n", what);
		errors++;
	}
	if (wc->byte_len != len + GRH) {
		printf("ud: %s: byte_len %u, expected %zu (payload + 40-byte GRH)\n", what, wc->byte_len, len + GRH);
		errors++;
	}
	if (wc->src_qp != s->qp->qp_num) {
		printf("ud: %s: src_qp 0x%x, expected 0x%x\n", what, wc->src_qp, s->qp->qp_num);
		errors++;
	}
	if (wc->qp_num != r->qp->qp_num) {
		printf("ud: %s: qp_num 0x%x, expected 0x%x\n", what, wc->qp_num, r->qp->qp_num);
		errors++;
	}
	if (with_imm != !!(wc->wc_flags & IBV_WC_WITH_IMM) || (with_imm && ntohl(wc->imm_data) != imm)) {
		printf("ud: %s: WITH_IMM %d imm 0x%x, expected %d 0x%x\n", what, !!(wc->wc_flags & IBV_WC_WITH_IMM),
		       ntohl(wc->imm_data), with_imm, imm);
		errors++;
	}
	errors += tp_verify(r->buf + (size_t)slot * SLOT + GRH, len, seed, what);
	return slot;
}

static void send_ud(struct tp_end *s, int ex, struct ibv_ah *ah, uint32_t rqpn, size_t len, uint32_t seed,
		    int with_imm, uint32_t imm, uint64_t id, const char *what)
{
	uint8_t *src = s->buf + SLOTS * SLOT;
	tp_fill(src, len, seed);
	struct ibv_sge sg = {.addr = (uintptr_t)src, .length = (uint32_t)len, .lkey = s->mr->lkey};
	struct tp_wr w = {.op = with_imm ? TP_SEND_IMM : TP_SEND, .wr_id = id, .sg = &sg, .num_sge = len ? 1 : 0,
			  .imm = imm, .ah = ah, .rqpn = rqpn, .rqkey = QKEY};
	int rc = tp_post(s, &w, ex);
	TP_CHECK(rc == 0, "%s: post failed: %s", what, strerror(rc));
	struct ibv_wc wc;
	tp_expect(s->scq, &wc, IBV_WC_SEND, id, what);
}

static void run(struct tp_dev *da, struct tp_dev *db, int ex, int iters)
{
	struct tp_qp_opts o = {.type = IBV_QPT_UD, .ex = ex, .max_sge = 1, .buf_size = (SLOTS + 1) * SLOT};
	struct tp_end a, b, c;
	tp_end_create(&a, da, &o);
	tp_end_create(&b, db, &o);
	tp_end_create(&c, db, &o);
	tp_ud_ready(&a);
	tp_ud_ready(&b);
	tp_ud_ready(&c);
	for (int k = 0; k < SLOTS; k++) {
		post_slot(&a, k, (uint64_t)k);
		post_slot(&b, k, (uint64_t)k);
		post_slot(&c, k, (uint64_t)k);
	}
	struct ibv_ah_attr aa;
	tp_ah_attr(&aa, da, db, 1);
	struct ibv_ah *to_bc = ibv_create_ah(da->pd, &aa);
	TP_CHECK(to_bc, "ibv_create_ah failed: %s", strerror(errno));
	size_t mtu = (size_t)128 << da->pattr.active_mtu;
	if (((size_t)128 << db->pattr.active_mtu) < mtu)
		mtu = (size_t)128 << db->pattr.active_mtu;
	if (mtu > SLOT - GRH)
		mtu = SLOT - GRH;
	const char *api = ex ? "wr" : "legacy";
	char what[96];
	struct ibv_wc wc;
	uint64_t id = 1000;

	for (int i = 0; i < iters; i++) {
		struct tp_end *r = (i & 1) ? &c : &b; /* one AH, a different remote QPN per send */
		size_t len = i % 7 == 0 ? 0 : 1 + ((size_t)i * 131u) % mtu;
		int with_imm = i % 3 == 1;
		uint32_t imm = 0xC0DE0000u + (uint32_t)i;
		uint32_t seed = (uint32_t)i * 5u + (ex ? 50000u : 0u);

		snprintf(what, sizeof(what), "%s UD A->%s #%d (%zu bytes)", api, (i & 1) ? "C" : "B", i, len);
		send_ud(&a, ex, to_bc, r->qp->qp_num, len, seed, with_imm, imm, id++, what);
		int slot = receive(r, &a, len, seed, with_imm, imm, what, &wc);

		/* Reply to whoever sent it, through an AH built from the completion and the GRH. */
		struct ibv_grh *grh = (struct ibv_grh *)(r->buf + (size_t)slot * SLOT);
		struct ibv_ah *back;
		if (i % 2 == 0) {
			back = ibv_create_ah_from_wc(r->dev->pd, &wc, grh, r->dev->port);
			TP_CHECK(back, "%s: ibv_create_ah_from_wc failed: %s", what, strerror(errno));
		} else {
			struct ibv_ah_attr fa;
			memset(&fa, 0, sizeof(fa));
			int rc = ibv_init_ah_from_wc(r->dev->ctx, r->dev->port, &wc, grh, &fa);
			TP_CHECK(rc == 0, "%s: ibv_init_ah_from_wc failed: %s", what, strerror(errno));
			if (!fa.is_global) {
				printf("ud: %s: ibv_init_ah_from_wc gave no GRH\n", what);
				errors++;
			}
			back = ibv_create_ah(r->dev->pd, &fa);
			TP_CHECK(back, "%s: ibv_create_ah from ibv_init_ah_from_wc failed: %s", what, strerror(errno));
		}
		uint32_t to_qpn = wc.src_qp;
		post_slot(r, slot, wc.wr_id + SLOTS);

		snprintf(what, sizeof(what), "%s UD reply %s->A #%d (%zu bytes)", api, (i & 1) ? "C" : "B", i, len);
		send_ud(r, ex, back, to_qpn, len, seed + 1, !with_imm, imm ^ 0xFFFF, id++, what);
		slot = receive(&a, r, len, seed + 1, !with_imm, imm ^ 0xFFFF, what, &wc);
		post_slot(&a, slot, wc.wr_id + SLOTS);
		int rc = ibv_destroy_ah(back);
		TP_CHECK(rc == 0, "ibv_destroy_ah failed: %s", strerror(rc));
	}
	/* A datagram with a wrong qkey is dropped silently. */
	{
		uint8_t *src = a.buf + SLOTS * SLOT;
		struct ibv_sge sg = {.addr = (uintptr_t)src, .length = 16, .lkey = a.mr->lkey};
		struct tp_wr w = {.op = TP_SEND, .wr_id = 7, .sg = &sg, .num_sge = 1, .ah = to_bc,
				  .rqpn = b.qp->qp_num, .rqkey = QKEY ^ 1};
		int rc = tp_post(&a, &w, ex);
		TP_CHECK(rc == 0, "wrong-qkey send: post failed: %s", strerror(rc));
		tp_expect(a.scq, &wc, IBV_WC_SEND, 7, "wrong-qkey send");
		usleep(100000);
		tp_expect_empty(b.rcq, "B after a datagram with the wrong qkey");
	}
	int rc = ibv_destroy_ah(to_bc);
	TP_CHECK(rc == 0, "ibv_destroy_ah failed: %s", strerror(rc));
	tp_end_destroy(&a, 1);
	tp_end_destroy(&b, 1);
	tp_end_destroy(&c, 1);
}

int main(int argc, char **argv)
{
	return tp_main_each_api(argc, argv, "ud", 200, "send, send_with_imm, ah_from_wc", run, NULL, &errors);
}
