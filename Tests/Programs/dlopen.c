/*
 * dlopen: a program that does not link libibverbs but dlopen()s "libibverbs.so.1" and looks every
 * verb up with dlsym (as NCCL, UCX and libfabric do). Under LD_PRELOAD=libstableverbs.so it must
 * get the shim's functions: each pointer equals the one dlsym(RTLD_DEFAULT) finds (the shim's
 * interposing definition), the objects it makes are the shim's (stableverbs_qp_identity accepts
 * them), and two RC QPs made through those pointers exchange a checked SEND.
 * Without the shim it runs the same traffic natively and says so.
 *
 *   dlopen        (SVTEST_DEVICE, SVTEST_PORT, SVTEST_GID_INDEX as for the other programs)
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <infiniband/verbs.h>

static int errors;

#define FAIL(...)                                                                                    \
	do {                                                                                         \
		printf("dlopen: FAIL: ");                                                            \
		printf(__VA_ARGS__);                                                                 \
		printf("\n");                                                                        \
		exit(1);                                                                             \
	} while (0)

static void *lib;
static int shim_present;

static struct {
	struct ibv_device **(*get_device_list)(int *);
	void (*free_device_list)(struct ibv_device **);
	const char *(*get_device_name)(struct ibv_device *);
	struct ibv_context *(*open_device)(struct ibv_device *);
	int (*close_device)(struct ibv_context *);
	int (*query_port)(struct ibv_context *, uint8_t, struct ibv_port_attr *);
	int (*query_gid)(struct ibv_context *, uint8_t, int, union ibv_gid *);
	struct ibv_pd *(*alloc_pd)(struct ibv_context *);
	int (*dealloc_pd)(struct ibv_pd *);
	struct ibv_mr *(*reg_mr)(struct ibv_pd *, void *, size_t, int);
	int (*dereg_mr)(struct ibv_mr *);
	struct ibv_cq *(*create_cq)(struct ibv_context *, int, void *, struct ibv_comp_channel *, int);
	int (*destroy_cq)(struct ibv_cq *);
	struct ibv_qp *(*create_qp)(struct ibv_pd *, struct ibv_qp_init_attr *);
	int (*modify_qp)(struct ibv_qp *, struct ibv_qp_attr *, int);
	int (*destroy_qp)(struct ibv_qp *);
} v;

static void *sym(const char *name)
{
	void *f = dlsym(lib, name);
	if (!f)
		FAIL("dlsym(libibverbs, %s) failed: %s", name, dlerror());
	if (shim_present) {
		void *def = dlsym(RTLD_DEFAULT, name);
		if (f != def) {
			printf("dlopen: dlsym(libibverbs handle, \"%s\") is not the shim's definition\n", name);
			errors++;
		}
	}
	return f;
}

static void watchdog(int s)
{
	(void)s;
	static const char m[] = "dlopen: FAIL: timed out (watchdog)\n";
	if (write(1, m, sizeof(m) - 1) < 0)
		_exit(1);
	_exit(1);
}

static int env_int(const char *n, int d)
{
	const char *s = getenv(n);
	return s && *s ? atoi(s) : d;
}

struct end {
	struct ibv_cq *cq;
	struct ibv_qp *qp;
};

static void connect_qp(struct ibv_qp *qp, uint32_t dest, struct ibv_port_attr *pa, uint8_t port, int gidx,
		       union ibv_gid *gid, int grh)
{
	struct ibv_qp_attr a = {.qp_state = IBV_QPS_INIT, .port_num = port};
	if (v.modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS))
		FAIL("modify_qp(INIT) failed");
	memset(&a, 0, sizeof(a));
	a.qp_state = IBV_QPS_RTR;
	a.path_mtu = pa->active_mtu;
	a.dest_qp_num = dest;
	a.max_dest_rd_atomic = 1;
	a.min_rnr_timer = 1;
	a.ah_attr.dlid = pa->lid;
	a.ah_attr.port_num = port;
	if (grh) {
		a.ah_attr.is_global = 1;
		a.ah_attr.grh.dgid = *gid;
		a.ah_attr.grh.sgid_index = (uint8_t)gidx;
		a.ah_attr.grh.hop_limit = 64;
	}
	if (v.modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
					IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER))
		FAIL("modify_qp(RTR) failed");
	memset(&a, 0, sizeof(a));
	a.qp_state = IBV_QPS_RTS;
	a.timeout = 14;
	a.retry_cnt = 7;
	a.rnr_retry = 7;
	a.max_rd_atomic = 1;
	if (v.modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN |
					IBV_QP_MAX_QP_RD_ATOMIC))
		FAIL("modify_qp(RTS) failed");
}

static void poll1(struct ibv_cq *cq, struct ibv_wc *wc)
{
	for (;;) {
		int n = ibv_poll_cq(cq, 1, wc);
		if (n < 0)
			FAIL("ibv_poll_cq failed");
		if (n == 1)
			break;
	}
	if (wc->status != IBV_WC_SUCCESS)
		FAIL("completion status %d", wc->status);
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGALRM, watchdog);
	alarm((unsigned)env_int("SVTEST_TIMEOUT", 30));

	int (*is_active)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "stableverbs_is_active");
	const char *(*lower_name)(void) = (const char *(*)(void))dlsym(RTLD_DEFAULT, "stableverbs_lower_name");
	int (*qp_identity)(struct ibv_qp *, uint32_t *, uint32_t *) =
		(int (*)(struct ibv_qp *, uint32_t *, uint32_t *))dlsym(RTLD_DEFAULT, "stableverbs_qp_identity");
	shim_present = is_active != NULL;

	lib = dlopen("libibverbs.so.1", RTLD_NOW | RTLD_LOCAL);
	if (!lib)
		FAIL("dlopen(libibverbs.so.1) failed: %s", dlerror());
	v.get_device_list = sym("ibv_get_device_list");
	v.free_device_list = sym("ibv_free_device_list");
	v.get_device_name = sym("ibv_get_device_name");
	v.open_device = sym("ibv_open_device");
	v.close_device = sym("ibv_close_device");
	v.query_port = sym("ibv_query_port");
	v.query_gid = sym("ibv_query_gid");
	v.alloc_pd = sym("ibv_alloc_pd");
	v.dealloc_pd = sym("ibv_dealloc_pd");
	v.reg_mr = sym("ibv_reg_mr");
	v.dereg_mr = sym("ibv_dereg_mr");
	v.create_cq = sym("ibv_create_cq");
	v.destroy_cq = sym("ibv_destroy_cq");
	v.create_qp = sym("ibv_create_qp");
	v.modify_qp = sym("ibv_modify_qp");
	v.destroy_qp = sym("ibv_destroy_qp");

	int n = 0;
	struct ibv_device **list = v.get_device_list(&n);
	if (!list || n == 0)
		FAIL("no devices through dlsym'd ibv_get_device_list (n=%d, errno %s)", n, strerror(errno));
	const char *want = getenv("SVTEST_DEVICE");
	int pick = 0;
	for (int i = 0; i < n; i++)
		if (want && *want && strcmp(v.get_device_name(list[i]), want) == 0)
			pick = i;
	struct ibv_context *ctx = v.open_device(list[pick]);
	if (!ctx)
		FAIL("open_device failed: %s", strerror(errno));
	v.free_device_list(list);
	uint8_t port = (uint8_t)env_int("SVTEST_PORT", 1);
	struct ibv_port_attr pa;
	memset(&pa, 0, sizeof(pa));
	if (v.query_port(ctx, port, &pa))
		FAIL("query_port failed");
	int eth = pa.link_layer == IBV_LINK_LAYER_ETHERNET;
	int gidx = env_int("SVTEST_GID_INDEX", eth ? 1 : 0);
	union ibv_gid gid;
	if (v.query_gid(ctx, port, gidx, &gid))
		FAIL("query_gid failed");
	struct ibv_pd *pd = v.alloc_pd(ctx);
	if (!pd)
		FAIL("alloc_pd failed");
	static uint8_t buf[8192] __attribute__((aligned(4096)));
	struct ibv_mr *mr = v.reg_mr(pd, buf, sizeof(buf), IBV_ACCESS_LOCAL_WRITE);
	if (!mr)
		FAIL("reg_mr failed: %s", strerror(errno));
	struct end e[2];
	for (int k = 0; k < 2; k++) {
		e[k].cq = v.create_cq(ctx, 16, NULL, NULL, 0);
		if (!e[k].cq)
			FAIL("create_cq failed");
		struct ibv_qp_init_attr qa = {.send_cq = e[k].cq, .recv_cq = e[k].cq, .qp_type = IBV_QPT_RC,
					      .cap = {.max_send_wr = 4, .max_recv_wr = 4, .max_send_sge = 1,
						      .max_recv_sge = 1}};
		e[k].qp = v.create_qp(pd, &qa);
		if (!e[k].qp)
			FAIL("create_qp failed: %s", strerror(errno));
	}
	if (shim_present) {
		uint32_t vq, rq;
		int rc = qp_identity(e[0].qp, &vq, &rq);
		if (rc != 0 || vq != e[0].qp->qp_num) {
			printf("dlopen: the QP made through dlsym'd ibv_create_qp is not the shim's (rc %d)\n", rc);
			errors++;
		}
	}
	connect_qp(e[0].qp, e[1].qp->qp_num, &pa, port, gidx, &gid, eth);
	connect_qp(e[1].qp, e[0].qp->qp_num, &pa, port, gidx, &gid, eth);
	for (int i = 0; i < 64; i++)
		buf[i] = (uint8_t)(i * 5 + 1);
	struct ibv_sge rs = {.addr = (uintptr_t)(buf + 4096), .length = 64, .lkey = mr->lkey};
	struct ibv_recv_wr rw = {.wr_id = 1, .sg_list = &rs, .num_sge = 1}, *rbad;
	if (ibv_post_recv(e[1].qp, &rw, &rbad))
		FAIL("post_recv failed");
	struct ibv_sge ss = {.addr = (uintptr_t)buf, .length = 64, .lkey = mr->lkey};
	struct ibv_send_wr sw = {.wr_id = 2, .sg_list = &ss, .num_sge = 1, .opcode = IBV_WR_SEND,
				 .send_flags = IBV_SEND_SIGNALED}, *sbad;
	if (ibv_post_send(e[0].qp, &sw, &sbad))
		FAIL("post_send failed");
	struct ibv_wc wc;
	poll1(e[0].cq, &wc);
	poll1(e[1].cq, &wc);
	if (wc.byte_len != 64 || memcmp(buf, buf + 4096, 64) != 0 || wc.qp_num != e[1].qp->qp_num) {
		printf("dlopen: the SEND arrived wrong (byte_len %u)\n", wc.byte_len);
		errors++;
	}
	for (int k = 0; k < 2; k++) {
		if (v.destroy_qp(e[k].qp) || v.destroy_cq(e[k].cq))
			FAIL("destroy failed");
	}
	if (v.dereg_mr(mr) || v.dealloc_pd(pd) || v.close_device(ctx))
		FAIL("teardown failed");
	if (shim_present)
		printf("dlopen: shim active=%d lower=%s, 16 verbs resolved to the shim, %d errors\n", is_active(),
		       lower_name ? lower_name() : "?", errors);
	else
		printf("dlopen: no shim (native libibverbs), %d errors\n", errors);
	return errors ? 1 : 0;
}
