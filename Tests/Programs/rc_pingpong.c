/*
 * rc_pingpong: two RC QPs in one process bounce SEND messages back and forth, checking every payload.
 *
 *   rc_pingpong [-n iterations] [-s size] [-i] [-g pieces] [-x]
 *     -i   inline sends (IBV_SEND_INLINE); the source buffer is scribbled over right after the post
 *     -g   gather the payload from 1..4 SGEs (or inline pieces) in different places of the MR
 *     -x   the new post API: QPs from ibv_create_qp_ex with send_ops_flags, ibv_qp_to_qp_ex,
 *          ibv_wr_start / wr_id / wr_flags / ibv_wr_send / ibv_wr_set_sge(_list) /
 *          ibv_wr_set_inline_data(_list) / ibv_wr_complete. Receives and completions are legacy.
 */
#include "common.h"

#define RECV_OFF 32768
#define PIECE_STRIDE 4096

struct side {
	struct tp_end e;
	const char *label;
};

static int errors;

/* Sends `size` bytes of pattern `seed` from s to r, then checks what r received. */
static void one_way(struct side *s, struct side *r, uint32_t seed, size_t size, int inline_data, int pieces,
		    int ex, uint64_t id)
{
	uint8_t tmp[RECV_OFF];
	struct ibv_sge sg[4];
	size_t done = 0;
	tp_fill(tmp, size, seed);
	/* Split the payload into `pieces` chunks placed PIECE_STRIDE apart in the send half of the MR. */
	for (int p = 0; p < pieces; p++) {
		size_t len = p == pieces - 1 ? size - done : size / (size_t)pieces;
		uint8_t *at = s->e.buf + (size_t)p * PIECE_STRIDE;
		memcpy(at, tmp + done, len);
		sg[p].addr = (uintptr_t)at;
		sg[p].length = (uint32_t)len;
		sg[p].lkey = inline_data ? 0 : s->e.mr->lkey; /* lkey is not used for inline data */
		done += len;
	}
	struct tp_wr w = {
		.op = TP_SEND, .wr_id = id, .inline_data = inline_data, .sg = sg, .num_sge = pieces,
	};
	int rc = tp_post(&s->e, &w, ex);
	TP_CHECK(rc == 0, "post SEND %s->%s failed: %s", s->label, r->label, strerror(rc));
	if (inline_data) /* inline data is copied at post time: the buffer is free again */
		for (int p = 0; p < pieces; p++)
			memset((void *)(uintptr_t)sg[p].addr, 0xEE, sg[p].length);

	struct ibv_wc wc;
	char what[64];
	snprintf(what, sizeof(what), "SEND %s->%s #%" PRIu64, s->label, r->label, id);
	tp_expect(s->e.scq, &wc, IBV_WC_SEND, id, what);
	snprintf(what, sizeof(what), "RECV at %s #%" PRIu64, r->label, id);
	tp_expect(r->e.rcq, &wc, IBV_WC_RECV, id, what);
	if (wc.byte_len != size) {
		printf("rc_pingpong: %s: byte_len %u, expected %zu\n", what, wc.byte_len, size);
		errors++;
	}
	if (wc.qp_num != r->e.qp->qp_num) {
		printf("rc_pingpong: %s: wc.qp_num 0x%x, expected 0x%x\n", what, wc.qp_num, r->e.qp->qp_num);
		errors++;
	}
	if (wc.wc_flags & IBV_WC_WITH_IMM) {
		printf("rc_pingpong: %s: IBV_WC_WITH_IMM set on a plain SEND\n", what);
		errors++;
	}
	errors += tp_verify(r->e.buf + RECV_OFF, size, seed, what);
	memset(r->e.buf + RECV_OFF, 0, size);
	/* The next receive, ready before the peer's next send. */
	tp_post_recv(&r->e, id + 1, r->e.buf + RECV_OFF, (uint32_t)size);
}

int main(int argc, char **argv)
{
	int iters = 1000, inline_data = 0, pieces = 1, ex = 0;
	size_t size = 64;
	int opt;
	while ((opt = getopt(argc, argv, "n:s:ig:x")) != -1) {
		switch (opt) {
		case 'n': iters = atoi(optarg); break;
		case 's': size = (size_t)atol(optarg); break;
		case 'i': inline_data = 1; break;
		case 'g': pieces = atoi(optarg); break;
		case 'x': ex = 1; break;
		default:
			fprintf(stderr, "usage: rc_pingpong [-n iterations] [-s size] [-i] [-g pieces] [-x]\n");
			return 2;
		}
	}
	tp_start("rc_pingpong", 60);
	TP_CHECK(pieces >= 1 && pieces <= 4, "-g must be 1..4");
	TP_CHECK(size >= (size_t)pieces && size <= RECV_OFF && size / (size_t)pieces <= PIECE_STRIDE,
		 "size %zu does not fit the layout", size);

	struct tp_dev da, db_storage, *db;
	tp_open(&da, &db_storage, &db);
	struct tp_qp_opts o = {.type = IBV_QPT_RC, .ex = ex, .max_sge = 4,
			       .max_inline = inline_data ? (uint32_t)size : 0};
	struct side a = {.label = "A"}, b = {.label = "B"};
	tp_end_create(&a.e, &da, &o);
	tp_end_create(&b.e, db, &o);
	tp_connect_rc(&a.e, &b.e);
	printf("rc_pingpong: api=%s %s size=%zu pieces=%d devices=%s\n", ex ? "wr" : "legacy",
	       inline_data ? "inline" : "sge", size, pieces, db == &da ? "1" : "2");

	tp_post_recv(&a.e, 0, a.e.buf + RECV_OFF, (uint32_t)size);
	tp_post_recv(&b.e, 0, b.e.buf + RECV_OFF, (uint32_t)size);
	for (int i = 0; i < iters; i++) {
		one_way(&a, &b, 2u * (uint32_t)i + 1u, size, inline_data, pieces, ex, (uint64_t)i);
		one_way(&b, &a, 2u * (uint32_t)i + 2u, size, inline_data, pieces, ex, (uint64_t)i);
	}
	/* Exactly one receive left posted on each side; nothing else pending. */
	tp_expect_empty(a.e.scq, "A send CQ at the end");
	tp_expect_empty(b.e.scq, "B send CQ at the end");
	tp_expect_empty(a.e.rcq, "A recv CQ at the end");
	tp_expect_empty(b.e.rcq, "B recv CQ at the end");

	tp_end_destroy(&a.e, 1);
	tp_end_destroy(&b.e, 1);
	if (db != &da)
		tp_close_dev(db);
	tp_close_dev(&da);
	printf("rc_pingpong: %d iterations, %d errors\n", iters, errors);
	return errors ? 1 : 0;
}
