/*
 * imm: SEND WITH IMMEDIATE between two RC QPs in one process, through the legacy ibv_post_send and
 * the wr_* API: the receiver's completion must have IBV_WC_WITH_IMM and the right imm_data (network
 * byte order in the wc), opcode IBV_WC_RECV, byte_len and payload; plain SENDs in between must not
 * have IBV_WC_WITH_IMM. Includes zero-length and inline sends.
 *
 *   imm [-n iterations] [-l | -x]
 */
#include "common.h"

#define RECV_OFF 32768
#define MAXLEN 4096
#define INLINE_MAX 64

static int errors;

static void run(struct tp_dev *da, struct tp_dev *db, int ex, int iters)
{
	struct tp_qp_opts o = {.type = IBV_QPT_RC, .ex = ex, .max_inline = INLINE_MAX};
	struct tp_end a, b;
	tp_end_create(&a, da, &o);
	tp_end_create(&b, db, &o);
	tp_connect_rc(&a, &b);
	const char *api = ex ? "wr" : "legacy";
	char what[96];
	struct ibv_wc wc;
	for (int i = 0; i < iters; i++) {
		struct tp_end *s = (i & 1) ? &b : &a, *r = (i & 1) ? &a : &b;
		int with_imm = i % 3 != 2;
		size_t len = i % 5 == 0 ? 0 : 1 + ((size_t)i * 577u) % MAXLEN;
		int use_inline = i % 4 == 1 && len <= INLINE_MAX;
		uint32_t seed = (uint32_t)i + (ex ? 7777u : 0u);
		uint32_t imm = (uint32_t)i * 0x01000193u ^ 0x8BADF00Du;

		memset(r->buf + RECV_OFF, 0, MAXLEN);
		tp_post_recv(r, 100u + (uint64_t)i, r->buf + RECV_OFF, MAXLEN);
		tp_fill(s->buf, len, seed);
		struct ibv_sge sg = {.addr = (uintptr_t)s->buf, .length = (uint32_t)len,
				     .lkey = use_inline ? 0 : s->mr->lkey};
		struct tp_wr w = {.op = with_imm ? TP_SEND_IMM : TP_SEND, .wr_id = 200u + (uint64_t)i,
				  .inline_data = use_inline, .sg = &sg, .num_sge = len ? 1 : 0, .imm = imm};
		int rc = tp_post(s, &w, ex);
		TP_CHECK(rc == 0, "%s %s #%d: post failed: %s", api, tp_op_name(w.op), i, strerror(rc));
		snprintf(what, sizeof(what), "%s %s #%d (%zu bytes%s)", api, tp_op_name(w.op), i, len,
			 use_inline ? ", inline" : "");
		tp_expect(s->scq, &wc, IBV_WC_SEND, w.wr_id, what);
		tp_expect(r->rcq, &wc, IBV_WC_RECV, 100u + (uint64_t)i, what);
		if (with_imm) {
			if (!(wc.wc_flags & IBV_WC_WITH_IMM)) {
				printf("imm: %s: IBV_WC_WITH_IMM not set\n", what);
				errors++;
			} else if (ntohl(wc.imm_data) != imm) {
				printf("imm: %s: imm_data 0x%08x, expected 0x%08x\n", what, ntohl(wc.imm_data), imm);
				errors++;
			}
		} else if (wc.wc_flags & IBV_WC_WITH_IMM) {
			printf("imm: %s: IBV_WC_WITH_IMM set on a plain SEND\n", what);
			errors++;
		}
		if (wc.byte_len != len) {
			printf("imm: %s: byte_len %u, expected %zu\n", what, wc.byte_len, len);
			errors++;
		}
		if (wc.qp_num != r->qp->qp_num) {
			printf("imm: %s: wc.qp_num 0x%x, expected 0x%x\n", what, wc.qp_num, r->qp->qp_num);
			errors++;
		}
		errors += tp_verify(r->buf + RECV_OFF, len, seed, what);
	}
	tp_end_destroy(&a, 1);
	tp_end_destroy(&b, 1);
}

int main(int argc, char **argv)
{
	return tp_main_each_api(argc, argv, "imm", 200, "send_with_imm, send", run, NULL, &errors);
}
