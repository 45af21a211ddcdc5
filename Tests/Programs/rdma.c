/*
 * rdma: RDMA WRITE, RDMA WRITE WITH IMM and RDMA READ between two RC QPs in one process, through the
 * legacy ibv_post_send and the wr_* API, checking the bytes that land and the receiver's completion
 * (opcode, IBV_WC_WITH_IMM, imm_data, byte_len) for WRITE WITH IMM.
 *
 *   rdma [-n iterations] [-l | -x]      -l legacy API only, -x wr_* API only (default: both)
 */
#include "common.h"

#define MAXLEN 8192
#define W_OFF 0          /* B: target of RDMA WRITE */
#define WI_OFF 16384     /* B: target of RDMA WRITE WITH IMM */
#define R_OFF 32768      /* B: source of RDMA READ; A: destination of the READ */
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
	struct ibv_wc wc;
	char what[96];

	for (int i = 0; i < iters; i++) {
		size_t len = 1 + ((size_t)i * 1237u) % MAXLEN;
		uint32_t seed = (uint32_t)i * 3u + (ex ? 100000u : 0u);
		int use_inline = (i % 4 == 3) && len <= INLINE_MAX;
		if (i % 4 == 3 && !use_inline)
			len = 1 + (size_t)i % INLINE_MAX, use_inline = 1;

		/* RDMA WRITE A -> B */
		tp_fill(a.buf, len, seed);
		memset(b.buf + W_OFF, 0, MAXLEN + 16);
		struct ibv_sge sg = {.addr = (uintptr_t)a.buf, .length = (uint32_t)len,
				     .lkey = use_inline ? 0 : a.mr->lkey};
		struct tp_wr w = {.op = TP_WRITE, .wr_id = 1000u + (uint64_t)i, .inline_data = use_inline,
				  .sg = &sg, .num_sge = 1,
				  .raddr = (uintptr_t)(b.buf + W_OFF), .rkey = b.mr->rkey};
		int rc = tp_post(&a, &w, ex);
		TP_CHECK(rc == 0, "%s RDMA WRITE #%d: post failed: %s", api, i, strerror(rc));
		if (use_inline)
			memset(a.buf, 0xEE, len);
		snprintf(what, sizeof(what), "%s RDMA WRITE #%d (%zu bytes%s)", api, i, len,
			 use_inline ? ", inline" : "");
		tp_expect(a.scq, &wc, IBV_WC_RDMA_WRITE, w.wr_id, what);
		errors += tp_verify(b.buf + W_OFF, len, seed, what);
		for (size_t k = len; k < len + 16; k++)
			if (b.buf[W_OFF + k] != 0) {
				printf("rdma: %s wrote past its end (byte %zu)\n", what, k);
				errors++;
				break;
			}
		tp_expect_empty(b.rcq, what);

		/* RDMA WRITE WITH IMM A -> B: consumes a receive (no SGE needed) */
		tp_post_recv(&b, 2000u + (uint64_t)i, NULL, 0);
		tp_fill(a.buf, len, seed + 1);
		uint32_t imm = 0xA5000000u ^ ((uint32_t)i * 2654435761u);
		w.op = TP_WRITE_IMM;
		w.wr_id = 3000u + (uint64_t)i;
		w.imm = imm;
		w.raddr = (uintptr_t)(b.buf + WI_OFF);
		rc = tp_post(&a, &w, ex);
		TP_CHECK(rc == 0, "%s RDMA WRITE WITH IMM #%d: post failed: %s", api, i, strerror(rc));
		if (use_inline)
			memset(a.buf, 0xEE, len);
		snprintf(what, sizeof(what), "%s RDMA WRITE WITH IMM #%d (%zu bytes)", api, i, len);
		tp_expect(a.scq, &wc, IBV_WC_RDMA_WRITE, w.wr_id, what);
		tp_expect(b.rcq, &wc, IBV_WC_RECV_RDMA_WITH_IMM, 2000u + (uint64_t)i, what);
		if (!(wc.wc_flags & IBV_WC_WITH_IMM)) {
			printf("rdma: %s: IBV_WC_WITH_IMM not set\n", what);
			errors++;
		} else if (ntohl(wc.imm_data) != imm) {
			printf("rdma: %s: imm_data 0x%x, expected 0x%x\n", what, ntohl(wc.imm_data), imm);
			errors++;
		}
		if (wc.byte_len != len) {
			printf("rdma: %s: receiver byte_len %u, expected %zu\n", what, wc.byte_len, len);
			errors++;
		}
		if (wc.qp_num != b.qp->qp_num) {
			printf("rdma: %s: wc.qp_num 0x%x, expected 0x%x\n", what, wc.qp_num, b.qp->qp_num);
			errors++;
		}
		errors += tp_verify(b.buf + WI_OFF, len, seed + 1, what);

		/* RDMA READ A <- B (never inline) */
		tp_fill(b.buf + R_OFF, len, seed + 2);
		memset(a.buf + R_OFF, 0, MAXLEN + 16);
		struct ibv_sge rs = {.addr = (uintptr_t)(a.buf + R_OFF), .length = (uint32_t)len,
				     .lkey = a.mr->lkey};
		struct tp_wr r = {.op = TP_READ, .wr_id = 4000u + (uint64_t)i, .sg = &rs, .num_sge = 1,
				  .raddr = (uintptr_t)(b.buf + R_OFF), .rkey = b.mr->rkey};
		rc = tp_post(&a, &r, ex);
		TP_CHECK(rc == 0, "%s RDMA READ #%d: post failed: %s", api, i, strerror(rc));
		snprintf(what, sizeof(what), "%s RDMA READ #%d (%zu bytes)", api, i, len);
		tp_expect(a.scq, &wc, IBV_WC_RDMA_READ, r.wr_id, what);
		if (wc.byte_len != len) {
			printf("rdma: %s: byte_len %u, expected %zu\n", what, wc.byte_len, len);
			errors++;
		}
		errors += tp_verify(a.buf + R_OFF, len, seed + 2, what);
		for (size_t k = len; k < len + 16; k++)
			if (a.buf[R_OFF + k] != 0) {
				printf("rdma: %s wrote past its end (byte %zu)\n", what, k);
				errors++;
				break;
			}

		/* The same READ in the other direction, B <- A, from an offset inside the MR. */
		tp_fill(a.buf + 100, len, seed + 3);
		struct ibv_sge rs2 = {.addr = (uintptr_t)(b.buf + R_OFF + 8), .length = (uint32_t)len,
				      .lkey = b.mr->lkey};
		struct tp_wr r2 = {.op = TP_READ, .wr_id = 5000u + (uint64_t)i, .sg = &rs2, .num_sge = 1,
				   .raddr = (uintptr_t)(a.buf + 100), .rkey = a.mr->rkey};
		rc = tp_post(&b, &r2, ex);
		TP_CHECK(rc == 0, "%s RDMA READ B<-A #%d: post failed: %s", api, i, strerror(rc));
		snprintf(what, sizeof(what), "%s RDMA READ B<-A #%d (%zu bytes)", api, i, len);
		tp_expect(b.scq, &wc, IBV_WC_RDMA_READ, r2.wr_id, what);
		errors += tp_verify(b.buf + R_OFF + 8, len, seed + 3, what);
	}
	tp_expect_empty(a.rcq, "A recv CQ at the end");
	tp_expect_empty(b.rcq, "B recv CQ at the end");
	tp_end_destroy(&a, 1);
	tp_end_destroy(&b, 1);
}

int main(int argc, char **argv)
{
	return tp_main_each_api(argc, argv, "rdma", 200, "write, write_imm, read", run, NULL, &errors);
}
