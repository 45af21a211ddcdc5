/*
 * fastpath: what the shim adds to each fast-path verb, in one process, one run.
 *
 * Runs under LD_PRELOAD=libstableverbs.so with the software HCA as the lower interface
 * (STABLEVERBS_LOWER=softhca STABLEVERBS_SOFTHCA=devices=1), or over a real device
 * (STABLEVERBS_LOWER=libibverbs, -d NAME, -g GID_INDEX for RoCE). Every op is timed twice on the
 * same queues: through the application's virtual object (the shim's op, which then calls the
 * lower provider's), and "direct" on the real object underneath (the provider's own op, as native
 * libibverbs would call it), found with stableverbs_real_object. The difference is the shim's
 * cost. With -m the context is rebuilt first (stableverbs_rebuild_context), so every real
 * QPN/lkey/rkey differs from the virtual one and the translation tables are in use.
 *
 * The shim's API (include/stableverbs.h) is reached by dlsym, so the driver also runs without the
 * shim: then there is only one side to time ("direct", the provider as the program sees it).
 *
 *   fastpath [-m] [-n BATCHES] [-r REPS] [-j JSON] [-d DEV] [-g GID] [-o OP] [-t shim|direct]
 *
 * Without -o: a table of every op. Each repetition times BATCHES batches of 256 ops per side,
 * the two sides interleaved batch by batch; a repetition's figure is the median batch, the table
 * shows the median of the REPS repetitions (and the spread of the added ns). -j appends the rows
 * as JSON. With -o and -t: only that op and target, for instruction counting under callgrind
 * (Benchmarks/fastpath/callgrind.sh).
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <infiniband/verbs.h>

#include "stableverbs.h" /* types only: its functions are looked up with dlsym */

#define BATCH 256
#define CHECK(c, ...)                                                                              \
	do {                                                                                       \
		if (!(c)) {                                                                        \
			fprintf(stderr, "fastpath: " __VA_ARGS__);                                 \
			fprintf(stderr, "\n");                                                     \
			exit(1);                                                                   \
		}                                                                                  \
	} while (0)

struct side {            /* one view of the queues: virtual (shim) or real (direct) */
	struct ibv_qp *a, *b, *c, *d; /* a->b connected; d->c connected, c receives from the SRQ */
	struct ibv_qp *e, *f;         /* e->f connected, e's send completions on the extended CQ */
	struct ibv_qp_ex *ax;
	struct ibv_cq *cq, *rcq;
	struct ibv_cq_ex *xcq;        /* made by ibv_create_cq_ex, polled with ibv_start_poll */
	struct ibv_srq *srq;
	uint32_t lkey, rkey;
};

static struct ibv_context *ctx;
static struct ibv_pd *pd;
static struct ibv_mr *mr;
static uint8_t *buf;
static struct side virt, real;
static int shimmed;
static const char *device_name;
static int gid_index = -1;
static int (*real_object)(enum stableverbs_object_type, void *, void **);

static double now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e9 + t.tv_nsec;
}

static void drain(struct ibv_cq *cq, int n)
{
	struct ibv_wc wc[32];
	while (n > 0) {
		int k = ibv_poll_cq(cq, n < 32 ? n : 32, wc);
		CHECK(k >= 0, "poll_cq failed");
		for (int i = 0; i < k; i++)
			CHECK(wc[i].status == IBV_WC_SUCCESS, "completion status %s", ibv_wc_status_str(wc[i].status));
		n -= k;
	}
}

static void connect_qps(struct ibv_qp *a, struct ibv_qp *b)
{
	struct ibv_port_attr pa;
	CHECK(ibv_query_port(ctx, 1, &pa) == 0, "query_port");
	struct ibv_qp *q[2] = {a, b};
	for (int i = 0; i < 2; i++) {
		struct ibv_qp_attr at = {.qp_state = IBV_QPS_INIT, .port_num = 1,
					 .qp_access_flags = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ};
		CHECK(ibv_modify_qp(q[i], &at, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS) == 0, "INIT");
	}
	for (int i = 0; i < 2; i++) {
		struct ibv_qp_attr at = {.qp_state = IBV_QPS_RTR, .path_mtu = IBV_MTU_1024, .dest_qp_num = q[1 - i]->qp_num,
					 .max_dest_rd_atomic = 1, .min_rnr_timer = 12,
					 .ah_attr = {.dlid = pa.lid, .port_num = 1}};
		if (pa.link_layer == IBV_LINK_LAYER_ETHERNET || gid_index >= 0) {
			int g = gid_index >= 0 ? gid_index : 0;
			at.ah_attr.is_global = 1;
			at.ah_attr.grh.sgid_index = g;
			at.ah_attr.grh.hop_limit = 1;
			CHECK(ibv_query_gid(ctx, 1, g, &at.ah_attr.grh.dgid) == 0, "query_gid");
		}
		CHECK(ibv_modify_qp(q[i], &at, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
						       IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER) == 0, "RTR");
		struct ibv_qp_attr rt = {.qp_state = IBV_QPS_RTS, .timeout = 14, .retry_cnt = 7, .rnr_retry = 7, .max_rd_atomic = 1};
		CHECK(ibv_modify_qp(q[i], &rt, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
						       IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC) == 0, "RTS");
	}
}

static void setup(void)
{
	int n = 0;
	struct ibv_device **list = ibv_get_device_list(&n);
	CHECK(list && n > 0, "no device (run under the shim with STABLEVERBS_LOWER=softhca)");
	int k = 0;
	if (device_name)
		while (k < n && strcmp(ibv_get_device_name(list[k]), device_name))
			k++;
	CHECK(k < n, "no device %s", device_name);
	ctx = ibv_open_device(list[k]);
	CHECK(ctx, "open_device");
	pd = ibv_alloc_pd(ctx);
	buf = aligned_alloc(4096, 1 << 20);
	memset(buf, 1, 1 << 20);
	mr = ibv_reg_mr(pd, buf, 1 << 20, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ);
	CHECK(mr, "reg_mr");
	virt.cq = ibv_create_cq(ctx, 4 * BATCH, NULL, NULL, 0);
	virt.rcq = ibv_create_cq(ctx, 4 * BATCH, NULL, NULL, 0);
	struct ibv_srq_init_attr sa = {.attr = {.max_wr = 2 * BATCH, .max_sge = 1}};
	virt.srq = ibv_create_srq(pd, &sa);
	CHECK(virt.cq && virt.rcq && virt.srq, "cq/srq");
	struct ibv_qp_init_attr_ex qa = {
		.send_cq = virt.cq, .recv_cq = virt.rcq, .qp_type = IBV_QPT_RC, .sq_sig_all = 1,
		.cap = {.max_send_wr = 2 * BATCH, .max_recv_wr = 2 * BATCH, .max_send_sge = 1, .max_recv_sge = 1, .max_inline_data = 64},
		.comp_mask = IBV_QP_INIT_ATTR_PD | IBV_QP_INIT_ATTR_SEND_OPS_FLAGS, .pd = pd,
		.send_ops_flags = IBV_QP_EX_WITH_RDMA_WRITE | IBV_QP_EX_WITH_SEND};
	virt.a = ibv_create_qp_ex(ctx, &qa);
	virt.b = ibv_create_qp_ex(ctx, &qa);
	CHECK(virt.a && virt.b, "create_qp_ex: %s", strerror(errno));
	virt.ax = ibv_qp_to_qp_ex(virt.a);
	connect_qps(virt.a, virt.b);
	virt.d = ibv_create_qp_ex(ctx, &qa);
	qa.srq = virt.srq;
	virt.c = ibv_create_qp_ex(ctx, &qa);
	CHECK(virt.c && virt.d, "create_qp_ex (SRQ): %s", strerror(errno));
	connect_qps(virt.d, virt.c);
	struct ibv_cq_init_attr_ex xa = {.cqe = 4 * BATCH, .wc_flags = IBV_WC_EX_WITH_QP_NUM | IBV_WC_EX_WITH_BYTE_LEN};
	virt.xcq = ibv_create_cq_ex(ctx, &xa);
	CHECK(virt.xcq, "create_cq_ex: %s", strerror(errno));
	qa.srq = NULL;
	qa.send_cq = ibv_cq_ex_to_cq(virt.xcq);
	virt.e = ibv_create_qp_ex(ctx, &qa);
	virt.f = ibv_create_qp_ex(ctx, &qa);
	CHECK(virt.e && virt.f, "create_qp_ex (extended CQ): %s", strerror(errno));
	connect_qps(virt.e, virt.f);
	ibv_free_device_list(list);
}

static void *real_of(enum stableverbs_object_type type, void *virtual_object)
{
	void *r = NULL;
	int e = real_object(type, virtual_object, &r);
	CHECK(e == 0 && r, "stableverbs_real_object(%d): %s", type, strerror(e));
	return r;
}

/* The real side: the objects underneath the virtual ones (without the shim: the same objects). */
static void resolve(void)
{
	virt.lkey = mr->lkey;
	virt.rkey = mr->rkey;
	if (!shimmed) {
		real = virt;
		return;
	}
	real.a = real_of(STABLEVERBS_OBJECT_QP, virt.a);
	real.b = real_of(STABLEVERBS_OBJECT_QP, virt.b);
	real.c = real_of(STABLEVERBS_OBJECT_QP, virt.c);
	real.d = real_of(STABLEVERBS_OBJECT_QP, virt.d);
	real.e = real_of(STABLEVERBS_OBJECT_QP, virt.e);
	real.f = real_of(STABLEVERBS_OBJECT_QP, virt.f);
	real.xcq = real_of(STABLEVERBS_OBJECT_CQ_EX, virt.xcq);
	real.ax = real_of(STABLEVERBS_OBJECT_QP_EX, virt.a);
	real.cq = real_of(STABLEVERBS_OBJECT_CQ, virt.cq);
	real.rcq = real_of(STABLEVERBS_OBJECT_CQ, virt.rcq);
	real.srq = real_of(STABLEVERBS_OBJECT_SRQ, virt.srq);
	struct ibv_mr *rmr = real_of(STABLEVERBS_OBJECT_MR, mr);
	real.lkey = rmr->lkey;
	real.rkey = rmr->rkey;
}

enum op { POLL_EMPTY, POLL_ONE, POST_SEND_INLINE, POST_SEND_SGE, WR_INLINE, WR_SGE, POST_RECV, POST_SRQ_RECV,
	  POLL_EX_EMPTY, POLL_EX_ONE, NOPS };
static const char *names[NOPS] = {"poll_cq (empty)", "poll_cq (1 completion)", "post_send inline", "post_send SGE",
				  "ibv_wr_* inline", "ibv_wr_* SGE", "post_recv", "post_srq_recv",
				  "start_poll (empty)", "start_poll..end (1)"};
static const char *keys[NOPS] = {"poll_empty", "poll_one", "post_send_inline", "post_send_sge", "wr_inline", "wr_sge",
				 "post_recv", "post_srq_recv", "poll_ex_empty", "poll_ex_one"};

static void write_wr(struct side *s, struct ibv_send_wr *wr, struct ibv_sge *sge, int inl)
{
	*sge = (struct ibv_sge){.addr = (uintptr_t)buf, .length = 8, .lkey = s->lkey};
	*wr = (struct ibv_send_wr){.sg_list = sge, .num_sge = 1, .opcode = IBV_WR_RDMA_WRITE,
				   .send_flags = IBV_SEND_SIGNALED | (inl ? IBV_SEND_INLINE : 0)};
	wr->wr.rdma.remote_addr = (uintptr_t)buf + 4096;
	wr->wr.rdma.rkey = s->rkey;
}

/* The timed ops of one batch, on side `s`: apart from the untimed work around them (and never
 * inlined) so that callgrind counts exactly these (callgrind.sh: --toggle-collect=timed_ops). */
__attribute__((noinline)) static void timed_ops(enum op op, struct side *s, struct ibv_send_wr *wr,
						 struct ibv_recv_wr *rwr)
{
	struct ibv_wc wc;
	struct ibv_send_wr *bad;
	struct ibv_recv_wr *rbad;
	switch (op) {
	case POLL_EMPTY:
		for (int i = 0; i < BATCH; i++)
			if (ibv_poll_cq(s->cq, 1, &wc) != 0)
				CHECK(0, "poll_cq: unexpected completion");
		break;
	case POLL_ONE:
		for (int i = 0; i < BATCH; i++)
			if (ibv_poll_cq(s->cq, 1, &wc) != 1 || wc.status != IBV_WC_SUCCESS)
				CHECK(0, "poll_cq: no completion");
		break;
	case POLL_EX_EMPTY:
		for (int i = 0; i < BATCH; i++)
			if (ibv_start_poll(s->xcq, &(struct ibv_poll_cq_attr){0}) != ENOENT)
				CHECK(0, "start_poll: unexpected completion");
		break;
	case POLL_EX_ONE: /* a session of one completion: start_poll, the two reads a poller needs, end_poll */
		for (int i = 0; i < BATCH; i++) {
			if (ibv_start_poll(s->xcq, &(struct ibv_poll_cq_attr){0}) != 0 || s->xcq->status != IBV_WC_SUCCESS ||
			    ibv_wc_read_opcode(s->xcq) != IBV_WC_RDMA_WRITE || ibv_wc_read_qp_num(s->xcq) != s->e->qp_num)
				CHECK(0, "start_poll: not the completion expected");
			ibv_end_poll(s->xcq);
		}
		break;
	case POST_SEND_INLINE:
	case POST_SEND_SGE:
		for (int i = 0; i < BATCH; i++)
			if (ibv_post_send(s->a, wr, &bad))
				CHECK(0, "post_send failed");
		break;
	case WR_INLINE:
	case WR_SGE:
		for (int i = 0; i < BATCH; i++) {
			ibv_wr_start(s->ax);
			s->ax->wr_id = i;
			s->ax->wr_flags = IBV_SEND_SIGNALED;
			ibv_wr_rdma_write(s->ax, s->rkey, (uintptr_t)buf + 4096);
			if (op == WR_INLINE)
				ibv_wr_set_inline_data(s->ax, buf, 8);
			else
				ibv_wr_set_sge(s->ax, s->lkey, (uintptr_t)buf, 8);
			if (ibv_wr_complete(s->ax))
				CHECK(0, "ibv_wr_complete failed");
		}
		break;
	case POST_RECV:
	case POST_SRQ_RECV:
		for (int i = 0; i < BATCH; i++)
			if (op == POST_RECV ? ibv_post_recv(s->b, rwr, &rbad) : ibv_post_srq_recv(s->srq, rwr, &rbad))
				CHECK(0, "post_recv failed");
		break;
	default:
		break;
	}
}

/* One batch of BATCH ops of kind `op` on side `s`; returns ns for the timed part. The untimed
 * work around it (completions to make and to poll, receives to consume) goes through the same
 * side, as an application's would: through the shim, every posted WR is recorded in its queue's
 * work ring and retired when the shim polls its completion, so the rings stay in their steady
 * state (polled through the real CQ instead, a ring fills after 2 * depth posts and every later
 * post takes the path of a full ring). */
static double batch(enum op op, struct side *s)
{
	struct ibv_send_wr wr, *bad;
	struct ibv_recv_wr rwr = {0};
	struct ibv_sge sge;
	double t0, t1;
	switch (op) { /* before: the completions the polls find */
	case POLL_ONE:
	case POLL_EX_ONE:
		write_wr(s, &wr, &sge, 1);
		for (int i = 0; i < BATCH; i++)
			CHECK(ibv_post_send(op == POLL_ONE ? s->a : s->e, &wr, &bad) == 0, "post_send");
		break;
	case POST_SEND_INLINE:
	case POST_SEND_SGE:
		write_wr(s, &wr, &sge, op == POST_SEND_INLINE);
		break;
	case POST_RECV:
	case POST_SRQ_RECV:
		sge = (struct ibv_sge){.addr = (uintptr_t)buf + 8192, .length = 64, .lkey = s->lkey};
		rwr = (struct ibv_recv_wr){.sg_list = &sge, .num_sge = 1};
		break;
	default:
		break;
	}
	t0 = now_ns();
	timed_ops(op, s, &wr, &rwr);
	t1 = now_ns();
	switch (op) { /* after: the completions of what was posted */
	case POST_SEND_INLINE:
	case POST_SEND_SGE:
	case WR_INLINE:
	case WR_SGE:
		drain(s->cq, BATCH);
		break;
	case POST_RECV:
	case POST_SRQ_RECV: /* consume the receives: BATCH sends a->b (or d->c, whose receives come from the SRQ) */
		sge = (struct ibv_sge){.addr = (uintptr_t)buf, .length = 8, .lkey = s->lkey};
		wr = (struct ibv_send_wr){.sg_list = &sge, .num_sge = 1, .opcode = IBV_WR_SEND, .send_flags = IBV_SEND_SIGNALED};
		for (int i = 0; i < BATCH; i++)
			CHECK(ibv_post_send(op == POST_RECV ? s->a : s->d, &wr, &bad) == 0, "post_send");
		drain(s->cq, BATCH);
		drain(s->rcq, BATCH);
		break;
	default:
		break;
	}
	return t1 - t0;
}

static int cmp(const void *x, const void *y)
{
	double a = *(const double *)x, b = *(const double *)y;
	return a < b ? -1 : a > b;
}

static double median(double *v, int n)
{
	qsort(v, n, sizeof(double), cmp);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv)
{
	int moved = 0, batches = 2000, reps = 3, only = -1;
	const char *target = "shim", *json = NULL;
	for (int o; (o = getopt(argc, argv, "mn:r:j:d:g:o:t:")) != -1;) {
		switch (o) {
		case 'm': moved = 1; break;
		case 'n': batches = atoi(optarg); break;
		case 'r': reps = atoi(optarg); break;
		case 'j': json = optarg; break;
		case 'd': device_name = optarg; break;
		case 'g': gid_index = atoi(optarg); break;
		case 'o':
			for (int i = 0; i < NOPS; i++)
				if (!strcmp(optarg, keys[i]))
					only = i;
			CHECK(only >= 0, "unknown op %s", optarg);
			break;
		case 't': target = optarg; break;
		default: return 2;
		}
	}
	CHECK(batches > 0 && reps > 0, "bad -n/-r");
	int (*is_active)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "stableverbs_is_active");
	int (*rebuild)(struct ibv_context *) = (int (*)(struct ibv_context *))dlsym(RTLD_DEFAULT, "stableverbs_rebuild_context");
	real_object = (int (*)(enum stableverbs_object_type, void *, void **))dlsym(RTLD_DEFAULT, "stableverbs_real_object");
	shimmed = is_active && is_active() && real_object && rebuild;
	if (!shimmed)
		fprintf(stderr, "fastpath: the shim is %s: timing the provider only (\"direct\")\n",
			is_active ? "inert (pass-through) or too old" : "not loaded");
	CHECK(!moved || shimmed, "-m needs the shim (LD_PRELOAD=libstableverbs.so)");
	setup();
	if (moved)
		CHECK(rebuild(ctx) == 0, "stableverbs_rebuild_context failed");
	resolve();
	CHECK(!moved || (real.lkey != virt.lkey && real.a->qp_num != virt.a->qp_num), "the rebuild changed no identity");

	if (only >= 0) {
		struct side *s = strcmp(target, "direct") == 0 ? &real : &virt;
		for (int b = 0; b < batches; b++)
			batch(only, s);
		printf("fastpath: %s %s x %d\n", keys[only], target, batches * BATCH);
		return 0;
	}

	const char *mode = moved ? "after a rebuild" : "nothing moved";
	FILE *js = NULL;
	if (json) {
		js = fopen(json, "a");
		CHECK(js, "cannot open %s", json);
	}
	double *ts = malloc(sizeof(double) * batches), *td = malloc(sizeof(double) * batches);
	double *rs = malloc(sizeof(double) * reps), *rd = malloc(sizeof(double) * reps), *ra = malloc(sizeof(double) * reps);
	printf("%-24s %10s %10s %10s %8s %16s   (%s; median of %d reps x %d batches x %d ops per side)\n", "op", "direct ns",
	       shimmed ? "shim ns" : "-", "added ns", "ratio", "added min..max", mode, reps, batches, BATCH);
	for (int op = 0; op < NOPS; op++) {
		for (int b = 0; b < 50; b++) { /* warm up */
			batch(op, &real);
			batch(op, &virt);
		}
		for (int r = 0; r < reps; r++) {
			for (int b = 0; b < batches; b++) { /* interleaved: both sides see the same machine */
				td[b] = batch(op, &real) / BATCH;
				ts[b] = shimmed ? batch(op, &virt) / BATCH : td[b];
			}
			rd[r] = median(td, batches);
			rs[r] = median(ts, batches);
			ra[r] = rs[r] - rd[r];
		}
		double d = median(rd, reps), sh = median(rs, reps);
		double amin = ra[0], amax = ra[0];
		for (int r = 1; r < reps; r++) {
			amin = ra[r] < amin ? ra[r] : amin;
			amax = ra[r] > amax ? ra[r] : amax;
		}
		double added = median(ra, reps);
		char spread[40];
		snprintf(spread, sizeof spread, "%.2f..%.2f", amin, amax);
		printf("%-24s %10.2f %10.2f %10.2f %8.3f %16s\n", names[op], d, sh, added, sh / d, spread);
		fflush(stdout);
		if (js)
			fprintf(js,
				"{\"suite\":\"fastpath\",\"mode\":\"%s\",\"op\":\"%s\",\"direct_ns\":%.3f,\"shim_ns\":%.3f,"
				"\"added_ns\":%.3f,\"added_ns_min\":%.3f,\"added_ns_max\":%.3f,\"ratio\":%.4f,\"reps\":%d,"
				"\"batches\":%d,\"batch\":%d,\"shimmed\":%s}\n",
				moved ? "moved" : "static", keys[op], d, sh, added, amin, amax, sh / d, reps, batches, BATCH,
				shimmed ? "true" : "false");
	}
	if (js)
		fclose(js);
	return 0;
}
