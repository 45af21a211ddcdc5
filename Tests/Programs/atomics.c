/*
 * atomics: ATOMIC_CMP_AND_SWP and ATOMIC_FETCH_AND_ADD between two RC QPs in one process, through the
 * legacy ibv_post_send and the wr_* API, checking the returned old values and the remote memory.
 *
 *   atomics [-n iterations] [-l | -x]
 */
#include "common.h"

static int errors;

static uint64_t ld(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return v;
}

static void st(uint8_t *p, uint64_t v)
{
	memcpy(p, &v, 8);
}

/* Posts one atomic from a to b's offset `roff`, result into a's offset `loff`; returns the result. */
static uint64_t atomic(struct tp_end *a, struct tp_end *b, int ex, enum tp_op op, size_t roff, size_t loff,
		       uint64_t compare_add, uint64_t swap, uint64_t id, const char *what)
{
	st(a->buf + loff, 0x5A5A5A5A5A5A5A5Aull);
	struct ibv_sge sg = {.addr = (uintptr_t)(a->buf + loff), .length = 8, .lkey = a->mr->lkey};
	struct tp_wr w = {.op = op, .wr_id = id, .sg = &sg, .num_sge = 1,
			  .raddr = (uintptr_t)(b->buf + roff), .rkey = b->mr->rkey,
			  .compare_add = compare_add, .swap = swap};
	int rc = tp_post(a, &w, ex);
	TP_CHECK(rc == 0, "%s: post failed: %s", what, strerror(rc));
	struct ibv_wc wc;
	tp_expect(a->scq, &wc, op == TP_CAS ? IBV_WC_COMP_SWAP : IBV_WC_FETCH_ADD, id, what);
	if (wc.byte_len != 8 && wc.byte_len != 0) {
		/* byte_len is only defined for receives; accept 0 or 8 */
	}
	return ld(a->buf + loff);
}

static void expect_eq(const char *what, const char *field, uint64_t got, uint64_t want)
{
	if (got == want)
		return;
	printf("atomics: %s: %s is 0x%016" PRIx64 ", expected 0x%016" PRIx64 "\n", what, field, got, want);
	errors++;
}

static void run(struct tp_dev *da, struct tp_dev *db, int ex, int iters)
{
	struct tp_qp_opts o = {.type = IBV_QPT_RC, .ex = ex};
	struct tp_end a, b;
	tp_end_create(&a, da, &o);
	tp_end_create(&b, db, &o);
	tp_connect_rc(&a, &b);
	const char *api = ex ? "wr" : "legacy";
	char what[96];
	uint64_t id = 1;
	for (int i = 0; i < iters; i++) {
		size_t roff = 8u * (size_t)(i % 64);       /* 8-byte aligned slots */
		size_t loff = 4096u + 8u * (size_t)(i % 32);
		uint64_t v = 0x0123456789ABCDEFull ^ ((uint64_t)i * 0x9E3779B97F4A7C15ull);
		uint64_t v2 = ~v + (uint64_t)i;
		st(b.buf + roff, v);

		snprintf(what, sizeof(what), "%s CMP_AND_SWP #%d (match)", api, i);
		uint64_t old = atomic(&a, &b, ex, TP_CAS, roff, loff, v, v2, id++, what);
		expect_eq(what, "returned old value", old, v);
		expect_eq(what, "remote value", ld(b.buf + roff), v2);

		snprintf(what, sizeof(what), "%s CMP_AND_SWP #%d (mismatch)", api, i);
		old = atomic(&a, &b, ex, TP_CAS, roff, loff, v, 0xDEADDEADDEADDEADull, id++, what);
		expect_eq(what, "returned old value", old, v2);
		expect_eq(what, "remote value", ld(b.buf + roff), v2);

		uint64_t add = (uint64_t)i * 3u + 1u;
		snprintf(what, sizeof(what), "%s FETCH_AND_ADD #%d", api, i);
		old = atomic(&a, &b, ex, TP_FAA, roff, loff, add, 0, id++, what);
		expect_eq(what, "returned old value", old, v2);
		expect_eq(what, "remote value", ld(b.buf + roff), v2 + add);

		/* Wrap-around, and the other direction. */
		st(a.buf + 2048, 0xFFFFFFFFFFFFFFFFull);
		snprintf(what, sizeof(what), "%s FETCH_AND_ADD B->A #%d (wrap)", api, i);
		old = atomic(&b, &a, ex, TP_FAA, 2048, 4096, 2, 0, id++, what);
		expect_eq(what, "returned old value", old, 0xFFFFFFFFFFFFFFFFull);
		expect_eq(what, "remote value", ld(a.buf + 2048), 1);
	}
	/* A counter driven by many FETCH_AND_ADDs in flight at once. */
	st(b.buf + 1024, 0);
	int burst = 16;
	for (int k = 0; k < burst; k++) {
		struct ibv_sge sg = {.addr = (uintptr_t)(a.buf + 8192 + 8 * k), .length = 8, .lkey = a.mr->lkey};
		struct tp_wr w = {.op = TP_FAA, .wr_id = 90000u + (uint64_t)k, .sg = &sg, .num_sge = 1,
				  .raddr = (uintptr_t)(b.buf + 1024), .rkey = b.mr->rkey, .compare_add = 1};
		int rc = tp_post(&a, &w, ex);
		TP_CHECK(rc == 0, "%s burst FETCH_AND_ADD %d: post failed: %s", api, k, strerror(rc));
	}
	uint64_t seen = 0;
	for (int k = 0; k < burst; k++) {
		struct ibv_wc wc;
		snprintf(what, sizeof(what), "%s burst FETCH_AND_ADD %d", api, k);
		tp_expect(a.scq, &wc, IBV_WC_FETCH_ADD, 90000u + (uint64_t)k, what);
		uint64_t old = ld(a.buf + 8192 + 8 * k);
		if (old >= (uint64_t)burst || (seen & (1ull << old))) {
			printf("atomics: %s: returned %" PRIu64 " (duplicate or out of range)\n", what, old);
			errors++;
		} else {
			seen |= 1ull << old;
		}
	}
	expect_eq("burst", "counter", ld(b.buf + 1024), (uint64_t)burst);
	tp_end_destroy(&a, 1);
	tp_end_destroy(&b, 1);
}

/* Both devices must do atomics. */
static void vet(struct tp_dev *a, struct tp_dev *b)
{
	TP_CHECK(a->dattr.atomic_cap != IBV_ATOMIC_NONE && b->dattr.atomic_cap != IBV_ATOMIC_NONE,
		 "the device does not support atomics (atomic_cap NONE)");
}

int main(int argc, char **argv)
{
	return tp_main_each_api(argc, argv, "atomics", 100, "cmp_and_swp, fetch_and_add", run, vet, &errors);
}
