/*
 * errtab: a table of bad-input cases and what each returns. One line per case,
 *     case NAME: ret=R errno=E status=S
 * deterministic, so that the output through the shim can be compared byte for byte with the output
 * of the lower interface called directly (STABLEVERBS_PASSTHROUGH=1). R is the return value (for
 * calls returning an object: NULL or obj), E the errno name where the call reports through errno
 * ("-" where it returns the error code itself), S the completion status for cases decided by a
 * completion ("-" otherwise). Each case also has an expectation (what rdma-core over a kernel
 * provider such as rxe does); a case that misses it is followed by a line "  unexpected: ...".
 * Ends with "errtab: N cases, M unexpected"; exit 0 only when M is 0.
 * Never reuses a destroyed object.
 */
#include "common.h"
#include <fcntl.h>

#define X_SUCCESS 0      /* must succeed */
#define X_FAIL -1   /* must fail, any error */
#define X_ANY -2    /* no expectation: printed for the comparison only */

static int ncases, unexpected;
static const char *errname(int e)
{
	if (e == 0)
		return "0";
	const char *n = strerrorname_np(e);
	return n ? n : "E?";
}

static void line(const char *name, const char *ret, const char *err, const char *status, int ok, const char *why)
{
	printf("case %s: ret=%s errno=%s status=%s\n", name, ret, err, status);
	ncases++;
	if (!ok) {
		printf("  unexpected: %s\n", why);
		unexpected++;
	}
}

/* A call that returns 0 or an error code (positive; some providers return it negated). */
static void c_code(const char *name, int ret, int want)
{
	char r[48], why[96];
	int code = ret < 0 ? -ret : ret;
	snprintf(r, sizeof(r), "%d(%s)", ret, errname(code));
	int ok = want == X_ANY || (want == X_SUCCESS ? ret == 0 : want == X_FAIL ? ret != 0 : code == want);
	snprintf(why, sizeof(why), "expected %s", want == X_SUCCESS ? "success" : want == X_FAIL ? "failure" : errname(want));
	line(name, r, "-", "-", ok, why);
}

/* A call that returns -1 (or another negative value) and sets errno. */
static void c_neg(const char *name, int ret, int err, int want)
{
	char r[24], why[96];
	snprintf(r, sizeof(r), "%d", ret);
	int ok = want == X_ANY || (want == X_SUCCESS ? ret >= 0 : want == X_FAIL ? ret < 0 : ret < 0 && err == want);
	snprintf(why, sizeof(why), "expected %s", want == X_SUCCESS ? "success" : want == X_FAIL ? "failure" : errname(want));
	line(name, r, ret < 0 ? errname(err) : "-", "-", ok, why);
}

/* A call that returns an object or NULL with errno. */
static void c_ptr(const char *name, const void *p, int err, int want)
{
	char why[96];
	int ok = want == X_ANY || (want == X_SUCCESS ? p != NULL : want == X_FAIL ? p == NULL : !p && err == want);
	snprintf(why, sizeof(why), "expected %s", want == X_SUCCESS ? "success" : want == X_FAIL ? "failure" : errname(want));
	line(name, p ? "obj" : "NULL", p ? "-" : errname(err), "-", ok, why);
}

/* A case decided by a completion: post_ret from the post, status from the completion (-1: none). */
static void c_wc(const char *name, int post_ret, int status, int want_status)
{
	char r[48], s[48], why[96];
	snprintf(r, sizeof(r), "%d(%s)", post_ret, errname(post_ret < 0 ? -post_ret : post_ret));
	snprintf(s, sizeof(s), "%s", status < 0 ? "-" : tp_status_name(status));
	int ok = post_ret == 0 && (want_status == X_FAIL ? status > 0 : status == want_status);
	snprintf(why, sizeof(why), "expected post 0 and status %s",
		 want_status == X_FAIL ? "an error" : tp_status_name(want_status));
	line(name, r, "-", s, ok, why);
}

static struct tp_dev da, dbs, *db;

/* ------------------------------------------------------------------ helpers for QP cases */

static struct ibv_cq *cq_any;

static struct ibv_qp *rc_qp(struct ibv_pd *pd, struct ibv_cq *cq)
{
	struct ibv_qp_init_attr a = {.send_cq = cq, .recv_cq = cq, .qp_type = IBV_QPT_RC,
				     .cap = {.max_send_wr = 16, .max_recv_wr = 16, .max_send_sge = 1,
					     .max_recv_sge = 1, .max_inline_data = 0}};
	struct ibv_qp *qp = ibv_create_qp(pd, &a);
	TP_CHECK(qp, "ibv_create_qp failed: %s", strerror(errno));
	return qp;
}

static int to_init(struct ibv_qp *qp)
{
	struct ibv_qp_attr a = {.qp_state = IBV_QPS_INIT, .pkey_index = 0, .port_num = da.port,
				.qp_access_flags = IBV_ACCESS_REMOTE_WRITE};
	return ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS);
}

static void destroy_qp(struct ibv_qp *qp)
{
	int rc = ibv_destroy_qp(qp);
	TP_CHECK(rc == 0, "ibv_destroy_qp failed: %s", strerror(rc));
}

/* A fresh connected pair for a completion case; qp_access: the responder's QP access flags. */
struct pair {
	struct tp_end a, b;
};

static void pair_new(struct pair *p, int mr_access_b, int qp_access, int retry_fast)
{
	struct tp_qp_opts o = {.type = IBV_QPT_RC, .max_inline = 64, .buf_size = 8192};
	tp_end_create(&p->a, &da, &o);
	o.access = mr_access_b;
	tp_end_create(&p->b, db, &o);
	tp_connect_rc(&p->a, &p->b);
	if (qp_access != TP_ACCESS_ALL) {
		struct ibv_qp_attr x = {.qp_access_flags = (unsigned)qp_access};
		int rc = ibv_modify_qp(p->b.qp, &x, IBV_QP_ACCESS_FLAGS);
		TP_CHECK(rc == 0, "modify_qp(ACCESS_FLAGS) in RTS failed: %s", strerror(rc));
	}
	(void)retry_fast;
}

static void pair_free(struct pair *p)
{
	tp_end_destroy(&p->a, 1);
	tp_end_destroy(&p->b, 1);
}

/* Posts w on a, waits for a's completion and returns its status (or -1 when the post failed). */
static int run_wr(struct tp_end *a, struct tp_wr *w, int *post_ret)
{
	*post_ret = tp_post(a, w, 0);
	if (*post_ret)
		return -1;
	struct ibv_wc wc;
	tp_poll1(a->scq, &wc, "the case's completion");
	return (int)wc.status;
}

/* ------------------------------------------------------------------ the cases */

static void device_cases(void)
{
	struct ibv_port_attr pa;
	union ibv_gid gid;
	__be16 pkey;
	int rc, e;

	c_code("query_port_0", ibv_query_port(da.ctx, 0, &pa), EINVAL);
	c_code("query_port_99", ibv_query_port(da.ctx, 99, &pa), EINVAL);
	errno = 0, rc = ibv_query_gid(da.ctx, da.port, 9999, &gid), e = errno;
	c_neg("query_gid_index_9999", rc, e, X_FAIL);
	errno = 0, rc = ibv_query_gid(da.ctx, 0, 0, &gid), e = errno;
	c_neg("query_gid_port_0", rc, e, X_FAIL);
	errno = 0, rc = ibv_query_pkey(da.ctx, da.port, 9999, &pkey), e = errno;
	c_neg("query_pkey_index_9999", rc, e, X_FAIL);
	errno = 0, rc = ibv_get_pkey_index(da.ctx, da.port, htons(0x1234)), e = errno;
	c_neg("get_pkey_index_missing_pkey", rc, e, X_FAIL);
}

static void cq_cases(void)
{
	struct ibv_cq *cq;
	int e;
#define CQ_CASE(name, cqe, vec, want)                                                                \
	do {                                                                                         \
		errno = 0;                                                                           \
		cq = ibv_create_cq(da.ctx, (cqe), NULL, NULL, (vec));                                \
		e = errno;                                                                           \
		c_ptr(name, cq, e, want);                                                            \
		if (cq)                                                                              \
			ibv_destroy_cq(cq);                                                          \
	} while (0)
	CQ_CASE("create_cq_cqe_0", 0, 0, EINVAL);
	CQ_CASE("create_cq_cqe_negative", -1, 0, EINVAL);
	CQ_CASE("create_cq_cqe_too_large", da.dattr.max_cqe + 1, 0, EINVAL);
	CQ_CASE("create_cq_bad_comp_vector", 16, 100000, EINVAL);
	cq = ibv_create_cq(da.ctx, 16, NULL, NULL, 0);
	TP_CHECK(cq, "ibv_create_cq failed");
	c_code("resize_cq_0", ibv_resize_cq(cq, 0), EINVAL);
	c_code("resize_cq_too_large", ibv_resize_cq(cq, da.dattr.max_cqe + 1), EINVAL);
	ibv_destroy_cq(cq);
}

static void qp_create_cases(void)
{
	struct ibv_device_attr *d = &da.dattr;
	struct ibv_qp *qp;
	int e;
#define QP_CASE(name, field, value, type, want)                                                      \
	do {                                                                                         \
		struct ibv_qp_init_attr a = {.send_cq = cq_any, .recv_cq = cq_any, .qp_type = (type),    \
					     .cap = {.max_send_wr = 4, .max_recv_wr = 4, .max_send_sge = 1, \
						     .max_recv_sge = 1}};                            \
		a.field = (value);                                                                   \
		errno = 0;                                                                           \
		qp = ibv_create_qp(da.pd, &a);                                                       \
		e = errno;                                                                           \
		c_ptr(name, qp, e, want);                                                            \
		if (qp)                                                                              \
			destroy_qp(qp);                                                              \
	} while (0)
	QP_CASE("create_qp_too_many_send_wr", cap.max_send_wr, (uint32_t)d->max_qp_wr + 1, IBV_QPT_RC, EINVAL);
	QP_CASE("create_qp_too_many_recv_wr", cap.max_recv_wr, (uint32_t)d->max_qp_wr + 1, IBV_QPT_RC, EINVAL);
	QP_CASE("create_qp_too_many_send_sge", cap.max_send_sge, (uint32_t)d->max_sge + 1, IBV_QPT_RC, EINVAL);
	QP_CASE("create_qp_too_many_recv_sge", cap.max_recv_sge, (uint32_t)d->max_sge + 1, IBV_QPT_RC, EINVAL);
	QP_CASE("create_qp_too_much_inline", cap.max_inline_data, 1u << 20, IBV_QPT_RC, EINVAL);
	QP_CASE("create_qp_bad_type", qp_type, (enum ibv_qp_type)0x55, (enum ibv_qp_type)0x55, X_FAIL);

	struct ibv_srq *srq;
#define SRQ_CASE(name, wr, sge, want)                                                                \
	do {                                                                                         \
		struct ibv_srq_init_attr sa = {.attr = {.max_wr = (wr), .max_sge = (sge)}};          \
		errno = 0;                                                                           \
		srq = ibv_create_srq(da.pd, &sa);                                                    \
		e = errno;                                                                           \
		c_ptr(name, srq, e, want);                                                           \
		if (srq)                                                                             \
			ibv_destroy_srq(srq);                                                        \
	} while (0)
	SRQ_CASE("create_srq_too_many_wr", (uint32_t)d->max_srq_wr + 1, 1, EINVAL);
	SRQ_CASE("create_srq_too_many_sge", 16, (uint32_t)d->max_srq_sge + 1, EINVAL);
	struct ibv_srq_init_attr sa = {.attr = {.max_wr = 16, .max_sge = 1}};
	srq = ibv_create_srq(da.pd, &sa);
	TP_CHECK(srq, "ibv_create_srq failed: %s", strerror(errno));
	struct ibv_srq_attr x = {.srq_limit = 100000};
	c_code("modify_srq_limit_above_max_wr", ibv_modify_srq(srq, &x, IBV_SRQ_LIMIT), EINVAL);
	x = (struct ibv_srq_attr){.max_wr = (uint32_t)d->max_srq_wr + 1};
	c_code("modify_srq_max_wr_too_large", ibv_modify_srq(srq, &x, IBV_SRQ_MAX_WR), EINVAL);
	struct ibv_sge sg[64];
	memset(sg, 0, sizeof(sg));
	struct ibv_recv_wr rw = {.wr_id = 1, .sg_list = sg, .num_sge = d->max_srq_sge + 1 < 64 ? d->max_srq_sge + 1 : 64},
			   *bad = NULL;
	c_code("post_srq_recv_too_many_sge", ibv_post_srq_recv(srq, &rw, &bad), X_FAIL);

	/* destroy_srq with a QP attached */
	struct ibv_qp_init_attr qa = {.send_cq = cq_any, .recv_cq = cq_any, .srq = srq, .qp_type = IBV_QPT_RC,
				      .cap = {.max_send_wr = 4, .max_send_sge = 1}};
	qp = ibv_create_qp(da.pd, &qa);
	TP_CHECK(qp, "ibv_create_qp with SRQ failed: %s", strerror(errno));
	c_code("destroy_srq_with_qp", ibv_destroy_srq(srq), EBUSY);
	destroy_qp(qp);
	int rc = ibv_destroy_srq(srq);
	TP_CHECK(rc == 0, "ibv_destroy_srq failed: %s", strerror(rc));
}

static void qp_modify_cases(void)
{
	struct ibv_qp *qp = rc_qp(da.pd, cq_any);
	struct ibv_qp_attr a;
	int full_init = IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS;

	memset(&a, 0, sizeof(a));
	a.qp_state = IBV_QPS_RTS;
	a.timeout = 14, a.retry_cnt = 7, a.rnr_retry = 7, a.sq_psn = 0, a.max_rd_atomic = 1;
	c_code("modify_qp_reset_to_rts",
	       ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
					     IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC),
	       EINVAL);
	memset(&a, 0, sizeof(a));
	a.qp_state = IBV_QPS_INIT;
	c_code("modify_qp_reset_to_init_missing_attrs", ibv_modify_qp(qp, &a, IBV_QP_STATE), EINVAL);
	a.port_num = da.port;
	c_code("modify_qp_reset_to_init_extra_attr", ibv_modify_qp(qp, &a, full_init | IBV_QP_SQ_PSN), EINVAL);
	a.port_num = 99;
	c_code("modify_qp_bad_port", ibv_modify_qp(qp, &a, full_init), EINVAL);
	a.port_num = da.port;
	a.qp_state = (enum ibv_qp_state)42;
	c_code("modify_qp_bad_state", ibv_modify_qp(qp, &a, full_init), EINVAL);
	a.qp_state = IBV_QPS_INIT;
	a.pkey_index = 9999;
	c_code("modify_qp_bad_pkey_index", ibv_modify_qp(qp, &a, full_init), X_ANY);
	c_code("qp_state_field_reset", (int)qp->state, IBV_QPS_RESET);

	/* posting on a RESET QP */
	struct ibv_sge sg = {.addr = 0, .length = 0, .lkey = 0};
	struct ibv_send_wr sw = {.wr_id = 1, .sg_list = &sg, .num_sge = 0, .opcode = IBV_WR_SEND,
				 .send_flags = IBV_SEND_SIGNALED}, *sbad = NULL;
	struct ibv_recv_wr rw = {.wr_id = 2, .sg_list = &sg, .num_sge = 0}, *rbad = NULL;
	c_code("post_send_reset_qp", ibv_post_send(qp, &sw, &sbad), X_FAIL);
	c_code("post_recv_reset_qp", ibv_post_recv(qp, &rw, &rbad), X_FAIL);

	/* INIT */
	c_code("modify_qp_reset_to_init", to_init(qp), X_SUCCESS);
	c_code("qp_state_field_init", (int)qp->state, IBV_QPS_INIT);
	struct ibv_qp_attr qa;
	struct ibv_qp_init_attr qi;
	int rc = ibv_query_qp(qp, &qa, IBV_QP_STATE | IBV_QP_PORT, &qi);
	c_code("query_qp_state_is_init", rc ? rc : (int)qa.qp_state, IBV_QPS_INIT);
	memset(&a, 0, sizeof(a));
	a.qp_state = IBV_QPS_RTS;
	a.sq_psn = 0;
	c_code("modify_qp_init_to_rts", ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_SQ_PSN), EINVAL);
	memset(&a, 0, sizeof(a));
	a.qp_state = IBV_QPS_RTR;
	tp_ah_attr(&a.ah_attr, &da, &da, 0);
	c_code("modify_qp_init_to_rtr_missing_attrs", ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_AV), EINVAL);
	sw.sg_list = NULL;
	c_code("post_send_init_qp", ibv_post_send(qp, &sw, &sbad), X_FAIL);

	/* RTR (to a QP number nobody has): receiving is allowed, sending is not */
	memset(&a, 0, sizeof(a));
	a.qp_state = IBV_QPS_RTR;
	a.path_mtu = da.pattr.active_mtu;
	a.dest_qp_num = 0xFFFFF0;
	a.rq_psn = 0;
	a.max_dest_rd_atomic = 1;
	a.min_rnr_timer = 1;
	tp_ah_attr(&a.ah_attr, &da, &da, 0);
	rc = ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
					   IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER);
	c_code("modify_qp_init_to_rtr_unknown_dest_qpn", rc, X_SUCCESS);
	if (rc == 0)
		c_code("post_send_rtr_qp", ibv_post_send(qp, &sw, &sbad), X_FAIL);
	c_code("attach_mcast_rc_qp", ibv_attach_mcast(qp, &(union ibv_gid){.raw = {0xff, 0x12}}, 0), EINVAL);
	struct ibv_ece ece;
	memset(&ece, 0, sizeof(ece));
	c_code("query_ece", ibv_query_ece(qp, &ece), X_ANY);
	destroy_qp(qp);
}

static void post_cases(void)
{
	/* Posting malformed requests on a connected RTS QP */
	struct pair p;
	pair_new(&p, TP_ACCESS_ALL, TP_ACCESS_ALL, 0);
	struct ibv_sge sg[64];
	for (int i = 0; i < 64; i++)
		sg[i] = (struct ibv_sge){.addr = (uintptr_t)p.a.buf, .length = 8, .lkey = p.a.mr->lkey};
	struct ibv_qp_attr qa;
	struct ibv_qp_init_attr qi;
	int rc = ibv_query_qp(p.a.qp, &qa, IBV_QP_CAP, &qi);
	TP_CHECK(rc == 0, "ibv_query_qp failed: %s", strerror(rc));
	int nsge = (int)qi.cap.max_send_sge + 1 < 64 ? (int)qi.cap.max_send_sge + 1 : 64;
	struct ibv_send_wr sw = {.wr_id = 1, .sg_list = sg, .num_sge = nsge, .opcode = IBV_WR_SEND,
				 .send_flags = IBV_SEND_SIGNALED}, *sbad = NULL;
	c_code("post_send_too_many_sge", ibv_post_send(p.a.qp, &sw, &sbad), X_FAIL);
	nsge = (int)qi.cap.max_recv_sge + 1 < 64 ? (int)qi.cap.max_recv_sge + 1 : 64;
	struct ibv_recv_wr rw = {.wr_id = 2, .sg_list = sg, .num_sge = nsge}, *rbad = NULL;
	c_code("post_recv_too_many_sge", ibv_post_recv(p.a.qp, &rw, &rbad), X_FAIL);
	struct ibv_sge big = {.addr = (uintptr_t)p.a.buf, .length = qi.cap.max_inline_data + 1, .lkey = 0};
	sw = (struct ibv_send_wr){.wr_id = 3, .sg_list = &big, .num_sge = 1, .opcode = IBV_WR_SEND,
				  .send_flags = IBV_SEND_SIGNALED | IBV_SEND_INLINE};
	c_code("post_send_inline_too_big", ibv_post_send(p.a.qp, &sw, &sbad), X_FAIL);
	/* Nothing may have been queued by the failed posts. */
	usleep(10000);
	struct ibv_wc wc;
	c_code("no_completion_after_failed_posts", ibv_poll_cq(p.a.scq, 1, &wc), X_SUCCESS);
	pair_free(&p);
}

static void completion_cases(void)
{
	struct pair p;
	struct ibv_wc wc;
	int post, st;

	/* zero-length SEND: succeeds, receiver sees byte_len 0 */
	pair_new(&p, TP_ACCESS_ALL, TP_ACCESS_ALL, 0);
	tp_post_recv(&p.b, 1, p.b.buf, 64);
	struct tp_wr w = {.op = TP_SEND, .wr_id = 10, .num_sge = 0};
	st = run_wr(&p.a, &w, &post);
	c_wc("send_zero_length", post, st, IBV_WC_SUCCESS);
	tp_poll1(p.b.rcq, &wc, "zero-length receive");
	c_wc("send_zero_length_receiver", 0, (int)wc.status, IBV_WC_SUCCESS);
	c_code("send_zero_length_receiver_byte_len", (int)wc.byte_len, X_SUCCESS);
	pair_free(&p);

	/* SEND larger than the posted receive */
	pair_new(&p, TP_ACCESS_ALL, TP_ACCESS_ALL, 0);
	tp_post_recv(&p.b, 1, p.b.buf, 16);
	struct ibv_sge sg = {.addr = (uintptr_t)p.a.buf, .length = 1024, .lkey = p.a.mr->lkey};
	w = (struct tp_wr){.op = TP_SEND, .wr_id = 11, .sg = &sg, .num_sge = 1};
	st = run_wr(&p.a, &w, &post);
	c_wc("send_larger_than_recv", post, st, IBV_WC_REM_INV_REQ_ERR);
	tp_poll1(p.b.rcq, &wc, "oversized receive");
	c_wc("send_larger_than_recv_receiver", 0, (int)wc.status, IBV_WC_LOC_LEN_ERR);
	pair_free(&p);

	/* a wrong lkey */
	pair_new(&p, TP_ACCESS_ALL, TP_ACCESS_ALL, 0);
	tp_post_recv(&p.b, 1, p.b.buf, 64);
	sg = (struct ibv_sge){.addr = (uintptr_t)p.a.buf, .length = 32, .lkey = p.a.mr->lkey ^ 0x5A5A00u};
	w = (struct tp_wr){.op = TP_SEND, .wr_id = 12, .sg = &sg, .num_sge = 1};
	st = run_wr(&p.a, &w, &post);
	c_wc("send_wrong_lkey", post, st, IBV_WC_LOC_PROT_ERR);
	pair_free(&p);

	/* an lkey that is right, but the address is outside the MR */
	pair_new(&p, TP_ACCESS_ALL, TP_ACCESS_ALL, 0);
	tp_post_recv(&p.b, 1, p.b.buf, 64);
	sg = (struct ibv_sge){.addr = (uintptr_t)p.a.buf + p.a.size - 16, .length = 32, .lkey = p.a.mr->lkey};
	w = (struct tp_wr){.op = TP_SEND, .wr_id = 13, .sg = &sg, .num_sge = 1};
	st = run_wr(&p.a, &w, &post);
	c_wc("send_sge_past_mr_end", post, st, IBV_WC_LOC_PROT_ERR);
	pair_free(&p);

	/* RDMA with a wrong rkey, out of bounds, without access */
	struct {
		const char *name;
		enum tp_op op;
		int mr_access, qp_access;
		uint32_t rkey_xor;
		size_t off, len;
		int want;
	} rc_cases[] = {
		{"write_wrong_rkey", TP_WRITE, TP_ACCESS_ALL, TP_ACCESS_ALL, 0x5A5A00u, 0, 32, IBV_WC_REM_ACCESS_ERR},
		{"read_wrong_rkey", TP_READ, TP_ACCESS_ALL, TP_ACCESS_ALL, 0x5A5A00u, 0, 32, IBV_WC_REM_ACCESS_ERR},
		{"atomic_wrong_rkey", TP_FAA, TP_ACCESS_ALL, TP_ACCESS_ALL, 0x5A5A00u, 0, 8, IBV_WC_REM_ACCESS_ERR},
		{"write_past_mr_end", TP_WRITE, TP_ACCESS_ALL, TP_ACCESS_ALL, 0, 8192 - 16, 32, IBV_WC_REM_ACCESS_ERR},
		{"read_mr_without_remote_read", TP_READ, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE,
		 TP_ACCESS_ALL, 0, 0, 32, IBV_WC_REM_ACCESS_ERR},
		{"write_mr_without_remote_write", TP_WRITE, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ,
		 TP_ACCESS_ALL, 0, 0, 32, IBV_WC_REM_ACCESS_ERR},
		{"atomic_mr_without_remote_atomic", TP_FAA, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE,
		 TP_ACCESS_ALL, 0, 0, 8, IBV_WC_REM_ACCESS_ERR},
		{"write_qp_without_remote_write", TP_WRITE, TP_ACCESS_ALL, IBV_ACCESS_REMOTE_READ, 0, 0, 32, X_FAIL},
	};
	for (size_t k = 0; k < sizeof(rc_cases) / sizeof(rc_cases[0]); k++) {
		pair_new(&p, rc_cases[k].mr_access, rc_cases[k].qp_access, 0);
		sg = (struct ibv_sge){.addr = (uintptr_t)p.a.buf, .length = (uint32_t)rc_cases[k].len,
				      .lkey = p.a.mr->lkey};
		w = (struct tp_wr){.op = rc_cases[k].op, .wr_id = 20 + k, .sg = &sg, .num_sge = 1,
				   .raddr = (uintptr_t)p.b.buf + rc_cases[k].off,
				   .rkey = p.b.mr->rkey ^ rc_cases[k].rkey_xor, .compare_add = 1};
		st = run_wr(&p.a, &w, &post);
		c_wc(rc_cases[k].name, post, st, rc_cases[k].want);
		pair_free(&p);
	}

	/* A UD datagram to a QP number nobody has is dropped: the send still succeeds. */
	struct tp_qp_opts o = {.type = IBV_QPT_UD, .buf_size = 4096};
	struct tp_end u;
	tp_end_create(&u, &da, &o);
	tp_ud_ready(&u);
	struct ibv_ah_attr aa;
	tp_ah_attr(&aa, &da, db, 1);
	struct ibv_ah *ah = ibv_create_ah(da.pd, &aa);
	TP_CHECK(ah, "ibv_create_ah failed: %s", strerror(errno));
	sg = (struct ibv_sge){.addr = (uintptr_t)u.buf, .length = 16, .lkey = u.mr->lkey};
	w = (struct tp_wr){.op = TP_SEND, .wr_id = 40, .sg = &sg, .num_sge = 1, .ah = ah, .rqpn = 0xFFFFF1,
			   .rqkey = 0x11111111};
	st = run_wr(&u, &w, &post);
	c_wc("ud_send_to_unknown_qpn", post, st, IBV_WC_SUCCESS);
	ibv_destroy_ah(ah);
	tp_end_destroy(&u, 1);
}

static void resource_cases(void)
{
	int e;
	/* reg_mr access combinations */
	static char area[8192] __attribute__((aligned(4096)));
	struct ibv_mr *mr;
#define MR_CASE(name, access, want)                                                                  \
	do {                                                                                         \
		int acc = (access);                                                                  \
		errno = 0;                                                                           \
		mr = ibv_reg_mr(da.pd, area, sizeof(area), acc);                                     \
		e = errno;                                                                           \
		c_ptr(name, mr, e, want);                                                            \
		if (mr)                                                                              \
			ibv_dereg_mr(mr);                                                            \
	} while (0)
	MR_CASE("reg_mr_remote_write_without_local_write", IBV_ACCESS_REMOTE_WRITE, EINVAL);
	MR_CASE("reg_mr_remote_atomic_without_local_write", IBV_ACCESS_REMOTE_ATOMIC | IBV_ACCESS_REMOTE_READ, EINVAL);
	MR_CASE("reg_mr_unknown_access_bit", IBV_ACCESS_LOCAL_WRITE | (1 << 12), EINVAL);
	MR_CASE("reg_mr_remote_read_only", IBV_ACCESS_REMOTE_READ, X_SUCCESS);

	/* busy objects */
	struct ibv_pd *pd = ibv_alloc_pd(da.ctx);
	TP_CHECK(pd, "ibv_alloc_pd failed");
	mr = ibv_reg_mr(pd, area, sizeof(area), IBV_ACCESS_LOCAL_WRITE);
	TP_CHECK(mr, "ibv_reg_mr failed: %s", strerror(errno));
	c_code("dealloc_pd_with_mr", ibv_dealloc_pd(pd), EBUSY);
	ibv_dereg_mr(mr);
	struct ibv_cq *cq = ibv_create_cq(da.ctx, 16, NULL, NULL, 0);
	TP_CHECK(cq, "ibv_create_cq failed");
	struct ibv_qp *qp = rc_qp(pd, cq);
	c_code("dealloc_pd_with_qp", ibv_dealloc_pd(pd), EBUSY);
	c_code("destroy_cq_with_qp", ibv_destroy_cq(cq), EBUSY);
	destroy_qp(qp);
	struct ibv_ah_attr aa;
	tp_ah_attr(&aa, &da, &da, 1);
	struct ibv_ah *ah = ibv_create_ah(pd, &aa);
	TP_CHECK(ah, "ibv_create_ah failed: %s", strerror(errno));
	c_code("dealloc_pd_with_ah", ibv_dealloc_pd(pd), EBUSY);
	ibv_destroy_ah(ah);
	c_code("destroy_cq_unused", ibv_destroy_cq(cq), X_SUCCESS);
	c_code("dealloc_pd_unused", ibv_dealloc_pd(pd), X_SUCCESS);

	struct ibv_comp_channel *ch = ibv_create_comp_channel(da.ctx);
	TP_CHECK(ch, "ibv_create_comp_channel failed");
	cq = ibv_create_cq(da.ctx, 16, NULL, ch, 0);
	TP_CHECK(cq, "ibv_create_cq failed");
	c_code("destroy_comp_channel_with_cq", ibv_destroy_comp_channel(ch), EBUSY);
	/* an empty non-blocking channel */
	int fl = fcntl(ch->fd, F_GETFL);
	TP_CHECK(fl >= 0 && fcntl(ch->fd, F_SETFL, fl | O_NONBLOCK) == 0, "fcntl failed on the channel fd");
	c_code("req_notify_cq", ibv_req_notify_cq(cq, 0), X_SUCCESS);
	struct ibv_cq *ecq;
	void *ectx;
	errno = 0;
	int rc = ibv_get_cq_event(ch, &ecq, &ectx);
	e = errno;
	c_neg("get_cq_event_empty_nonblocking", rc, e, EAGAIN);
	ibv_destroy_cq(cq);
	ibv_destroy_comp_channel(ch);

	/* the async event fd, non-blocking and empty */
	fl = fcntl(da.ctx->async_fd, F_GETFL);
	TP_CHECK(fl >= 0 && fcntl(da.ctx->async_fd, F_SETFL, fl | O_NONBLOCK) == 0, "fcntl failed on async_fd");
	struct ibv_async_event ev;
	errno = 0;
	rc = ibv_get_async_event(da.ctx, &ev);
	e = errno;
	c_neg("get_async_event_empty_nonblocking", rc, e, EAGAIN);
	if (rc == 0)
		ibv_ack_async_event(&ev);
	TP_CHECK(fcntl(da.ctx->async_fd, F_SETFL, fl) == 0, "fcntl failed on async_fd");

	/* address handles */
	tp_ah_attr(&aa, &da, &da, 1);
	aa.port_num = 99;
	errno = 0;
	ah = ibv_create_ah(da.pd, &aa);
	e = errno;
	c_ptr("create_ah_bad_port", ah, e, X_FAIL);
	if (ah)
		ibv_destroy_ah(ah);
	tp_ah_attr(&aa, &da, &da, 1);
	aa.grh.sgid_index = 200;
	errno = 0;
	ah = ibv_create_ah(da.pd, &aa);
	e = errno;
	c_ptr("create_ah_bad_sgid_index", ah, e, X_FAIL);
	if (ah)
		ibv_destroy_ah(ah);
	tp_ah_attr(&aa, &da, &da, 0);
	aa.is_global = 0;
	errno = 0;
	ah = ibv_create_ah(da.pd, &aa);
	e = errno;
	c_ptr(da.eth ? "create_ah_without_grh_on_ethernet" : "create_ah_without_grh_on_ib", ah, e,
	      da.eth ? X_FAIL : X_SUCCESS);
	if (ah)
		ibv_destroy_ah(ah);
}

int main(void)
{
	tp_start("errtab", 60);
	tp_open(&da, &dbs, &db);
	cq_any = ibv_create_cq(da.ctx, 64, NULL, NULL, 0);
	TP_CHECK(cq_any, "ibv_create_cq failed: %s", strerror(errno));
	device_cases();
	cq_cases();
	qp_create_cases();
	qp_modify_cases();
	post_cases();
	completion_cases();
	resource_cases();
	int rc = ibv_destroy_cq(cq_any);
	TP_CHECK(rc == 0, "ibv_destroy_cq failed: %s", strerror(rc));
	if (db != &da)
		tp_close_dev(db);
	tp_close_dev(&da);
	printf("errtab: %d cases, %d unexpected\n", ncases, unexpected);
	return unexpected ? 1 : 0;
}
