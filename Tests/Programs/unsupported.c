/*
 * unsupported: what the shim does not virtualise fails cleanly — memory windows, XRC, device
 * memory, ODP advice, work queues, and the mlx5 direct verbs (DC lives there) on virtual objects —
 * with EOPNOTSUPP, never a crash, and the context stays usable. One line per case:
 *     case NAME: ok
 * or  case NAME: UNEXPECTED ...
 * then "unsupported: N cases, M unexpected"; exit 0 only when M is 0. The mlx5dv_* entry points
 * are looked up with dlsym(RTLD_DEFAULT), so the program needs no libmlx5 at link time; under the
 * shim they are the shim's.
 */
#include "common.h"
#include <dlfcn.h>
#include <fcntl.h>
#include <stdbool.h>

static int ncases, unexpected;

static void expect_null_eopnotsupp(const char *name, const void *obj, int err)
{
	ncases++;
	if (obj == NULL && err == EOPNOTSUPP) {
		printf("case %s: ok\n", name);
	} else {
		printf("case %s: UNEXPECTED ret=%s errno=%d (%s)\n", name, obj ? "obj" : "NULL", err, strerror(err));
		unexpected++;
	}
}

static void expect_code(const char *name, int ret, int want)
{
	ncases++;
	if (ret == want) {
		printf("case %s: ok\n", name);
	} else {
		printf("case %s: UNEXPECTED ret=%d, expected %d\n", name, ret, want);
		unexpected++;
	}
}

int main(void)
{
	tp_start("unsupported", 30);
	struct tp_dev d, d2, *pd2;
	tp_open(&d, &d2, &pd2);
	struct tp_end e;
	struct tp_qp_opts o = {.type = IBV_QPT_RC};
	tp_end_create(&e, &d, &o);

	errno = 0;
	struct ibv_mw *mw = ibv_alloc_mw(d.pd, IBV_MW_TYPE_1);
	expect_null_eopnotsupp("ibv_alloc_mw", mw, errno);

	struct ibv_xrcd_init_attr xa = {.comp_mask = IBV_XRCD_INIT_ATTR_FD | IBV_XRCD_INIT_ATTR_OFLAGS,
					 .fd = -1, .oflags = O_CREAT};
	errno = 0;
	struct ibv_xrcd *xrcd = ibv_open_xrcd(d.ctx, &xa);
	expect_null_eopnotsupp("ibv_open_xrcd", xrcd, errno);

	struct ibv_alloc_dm_attr dma = {.length = 4096};
	errno = 0;
	struct ibv_dm *dm = ibv_alloc_dm(d.ctx, &dma);
	expect_null_eopnotsupp("ibv_alloc_dm", dm, errno);

	struct ibv_sge sge = {.addr = (uintptr_t)e.buf, .length = 4096, .lkey = e.mr->lkey};
	expect_code("ibv_advise_mr", ibv_advise_mr(d.pd, IBV_ADVISE_MR_ADVICE_PREFETCH, 0, &sge, 1), EOPNOTSUPP);

	struct ibv_wq_init_attr wa = {.wq_type = IBV_WQT_RQ, .max_wr = 16, .max_sge = 1, .pd = d.pd, .cq = e.rcq};
	errno = 0;
	struct ibv_wq *wq = ibv_create_wq(d.ctx, &wa);
	expect_null_eopnotsupp("ibv_create_wq", wq, errno);

	struct ibv_srq_init_attr_ex sa = {
		.attr = {.max_wr = 16, .max_sge = 1},
		.comp_mask = IBV_SRQ_INIT_ATTR_TYPE | IBV_SRQ_INIT_ATTR_PD | IBV_SRQ_INIT_ATTR_CQ,
		.srq_type = IBV_SRQT_XRC, .pd = d.pd, .cq = e.rcq};
	errno = 0;
	struct ibv_srq *srq = ibv_create_srq_ex(d.ctx, &sa);
	expect_null_eopnotsupp("ibv_create_srq_ex(XRC)", srq, errno);

	struct ibv_qp_init_attr_ex qa = {
		.qp_type = IBV_QPT_XRC_SEND, .send_cq = e.scq, .recv_cq = e.rcq,
		.cap = {.max_send_wr = 16, .max_send_sge = 1},
		.comp_mask = IBV_QP_INIT_ATTR_PD, .pd = d.pd};
	errno = 0;
	struct ibv_qp *xqp = ibv_create_qp_ex(d.ctx, &qa);
	expect_null_eopnotsupp("ibv_create_qp_ex(XRC_SEND)", xqp, errno);

	bool (*is_supported)(struct ibv_device *) = dlsym(RTLD_DEFAULT, "mlx5dv_is_supported");
	void *(*dv_open)(struct ibv_device *, void *) = dlsym(RTLD_DEFAULT, "mlx5dv_open_device");
	int (*dv_query)(struct ibv_context *, void *) = dlsym(RTLD_DEFAULT, "mlx5dv_query_device");
	int (*dv_init_obj)(void *, uint64_t) = dlsym(RTLD_DEFAULT, "mlx5dv_init_obj");
	void *(*dv_create_qp)(struct ibv_context *, struct ibv_qp_init_attr_ex *, void *) =
		dlsym(RTLD_DEFAULT, "mlx5dv_create_qp");
	void *(*dv_create_cq)(struct ibv_context *, void *, void *) = dlsym(RTLD_DEFAULT, "mlx5dv_create_cq");
	if (!is_supported || !dv_open || !dv_query || !dv_init_obj || !dv_create_qp || !dv_create_cq) {
		printf("case mlx5dv: UNEXPECTED the mlx5dv_* entry points are not defined in this process\n");
		ncases++;
		unexpected++;
	} else {
		ncases++;
		if (!is_supported(d.ctx->device)) {
			printf("case mlx5dv_is_supported: ok\n");
		} else {
			printf("case mlx5dv_is_supported: UNEXPECTED true on a virtual device\n");
			unexpected++;
		}
		errno = 0;
		void *c = dv_open(d.ctx->device, NULL);
		expect_null_eopnotsupp("mlx5dv_open_device", c, errno);
		char attrs[512] = {0};
		expect_code("mlx5dv_query_device", dv_query(d.ctx, attrs), EOPNOTSUPP);
		void *obj[14] = {e.qp, attrs}; /* struct mlx5dv_obj: {in, out} pairs, qp first */
		expect_code("mlx5dv_init_obj(qp)", dv_init_obj(obj, 1), EOPNOTSUPP);
		struct ibv_qp_init_attr_ex dqa = {.qp_type = IBV_QPT_DRIVER, .send_cq = e.scq, .recv_cq = e.rcq,
						  .comp_mask = IBV_QP_INIT_ATTR_PD, .pd = d.pd};
		errno = 0;
		void *dq = dv_create_qp(d.ctx, &dqa, NULL);
		expect_null_eopnotsupp("mlx5dv_create_qp(DC)", dq, errno);
		struct ibv_cq_init_attr_ex ca = {.cqe = 16};
		errno = 0;
		void *dc = dv_create_cq(d.ctx, &ca, NULL);
		expect_null_eopnotsupp("mlx5dv_create_cq", dc, errno);
	}

	/* The context is still usable afterwards. */
	struct ibv_device_attr da;
	expect_code("ibv_query_device afterwards", ibv_query_device(d.ctx, &da), 0);
	tp_end_destroy(&e, 1);
	tp_close_dev(&d);
	printf("unsupported: %d cases, %d unexpected\n", ncases, unexpected);
	return unexpected ? 1 : 0;
}
