/*
 * Shared helpers of the StableVerbs end-to-end test programs.
 *
 * Every program runs BOTH ends of each connection inside one process, in plain verbs C code, so it
 * works through the shim over the software HCA double (which delivers only within a process) and
 * natively on a real device that can loop back to itself (rxe: link layer Ethernet, LID 0, GRH
 * required, GID index 1 = IPv4-mapped).
 *
 * Environment (all optional):
 *   SVTEST_DEVICE       name of the device to use              (default: the first device)
 *   SVTEST_TWO_DEVICES  1: put the second end of every connection on a second device
 *   SVTEST_DEVICE2      name of that second device             (default: the next device in the list)
 *   SVTEST_PORT         port number                            (default 1)
 *   SVTEST_GID_INDEX    GID index                              (default: 0 for IB, 1 for Ethernet)
 *   SVTEST_GRH          1: use a GRH on RC address vectors even on an IB link
 *   SVTEST_TIMEOUT      watchdog in seconds                    (default: per program)
 *
 * Conventions: a program exits 0 only if every check passed and prints a summary line
 * "<name>: ..., 0 errors"; otherwise it prints "<name>: FAIL: <reason>" and exits 1.
 */
#ifndef SVTEST_COMMON_H
#define SVTEST_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <infiniband/verbs.h>

#define TP_UNUSED __attribute__((unused))

static const char *tp_name = "test";

/* ---------------------------------------------------------------- failing, the watchdog */

TP_UNUSED __attribute__((noreturn, format(printf, 1, 2))) static void tp_fail(const char *fmt, ...)
{
	va_list ap;
	fflush(stdout);
	fprintf(stdout, "%s: FAIL: ", tp_name);
	va_start(ap, fmt);
	vfprintf(stdout, fmt, ap);
	va_end(ap);
	fputc('\n', stdout);
	fflush(stdout);
	exit(1);
}

#define TP_CHECK(cond, ...)                                                                          \
	do {                                                                                         \
		if (!(cond))                                                                         \
			tp_fail(__VA_ARGS__);                                                        \
	} while (0)

static void tp_watchdog(int sig)
{
	char line[160];
	(void)sig;
	int n = snprintf(line, sizeof(line), "%s: FAIL: timed out (watchdog)\n", tp_name);
	if (n > 0 && write(STDOUT_FILENO, line, (size_t)n) < 0)
		_exit(1);
	_exit(1);
}

static int tp_env_int(const char *name, int def)
{
	const char *v = getenv(name);
	if (!v || !*v)
		return def;
	char *end;
	long x = strtol(v, &end, 0);
	if (*end)
		tp_fail("environment %s=%s is not a number", name, v);
	return (int)x;
}

/* Names the program, makes stdout line-buffered and arms the watchdog. */
TP_UNUSED static void tp_start(const char *name, unsigned default_seconds)
{
	tp_name = name;
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGALRM, tp_watchdog);
	alarm((unsigned)tp_env_int("SVTEST_TIMEOUT", (int)default_seconds));
}

static double tp_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---------------------------------------------------------------- payload patterns */

static inline uint8_t tp_pattern_byte(uint32_t seed, size_t i)
{
	uint32_t x = seed * 2654435761u + (uint32_t)i * 40503u + (uint32_t)(i >> 8);
	return (uint8_t)(x ^ (x >> 13) ^ (x >> 24));
}

TP_UNUSED static void tp_fill(void *buf, size_t len, uint32_t seed)
{
	uint8_t *p = buf;
	for (size_t i = 0; i < len; i++)
		p[i] = tp_pattern_byte(seed, i);
}

/* Index of the first byte that differs from the pattern, or -1. */
TP_UNUSED static long tp_check(const void *buf, size_t len, uint32_t seed)
{
	const uint8_t *p = buf;
	for (size_t i = 0; i < len; i++)
		if (p[i] != tp_pattern_byte(seed, i))
			return (long)i;
	return -1;
}

/* ---------------------------------------------------------------- names */

TP_UNUSED static const char *tp_status_name(int s)
{
	switch (s) {
	case IBV_WC_SUCCESS: return "SUCCESS";
	case IBV_WC_LOC_LEN_ERR: return "LOC_LEN_ERR";
	case IBV_WC_LOC_QP_OP_ERR: return "LOC_QP_OP_ERR";
	case IBV_WC_LOC_EEC_OP_ERR: return "LOC_EEC_OP_ERR";
	case IBV_WC_LOC_PROT_ERR: return "LOC_PROT_ERR";
	case IBV_WC_WR_FLUSH_ERR: return "WR_FLUSH_ERR";
	case IBV_WC_MW_BIND_ERR: return "MW_BIND_ERR";
	case IBV_WC_BAD_RESP_ERR: return "BAD_RESP_ERR";
	case IBV_WC_LOC_ACCESS_ERR: return "LOC_ACCESS_ERR";
	case IBV_WC_REM_INV_REQ_ERR: return "REM_INV_REQ_ERR";
	case IBV_WC_REM_ACCESS_ERR: return "REM_ACCESS_ERR";
	case IBV_WC_REM_OP_ERR: return "REM_OP_ERR";
	case IBV_WC_RETRY_EXC_ERR: return "RETRY_EXC_ERR";
	case IBV_WC_RNR_RETRY_EXC_ERR: return "RNR_RETRY_EXC_ERR";
	case IBV_WC_LOC_RDD_VIOL_ERR: return "LOC_RDD_VIOL_ERR";
	case IBV_WC_REM_INV_RD_REQ_ERR: return "REM_INV_RD_REQ_ERR";
	case IBV_WC_REM_ABORT_ERR: return "REM_ABORT_ERR";
	case IBV_WC_INV_EECN_ERR: return "INV_EECN_ERR";
	case IBV_WC_INV_EEC_STATE_ERR: return "INV_EEC_STATE_ERR";
	case IBV_WC_FATAL_ERR: return "FATAL_ERR";
	case IBV_WC_RESP_TIMEOUT_ERR: return "RESP_TIMEOUT_ERR";
	case IBV_WC_GENERAL_ERR: return "GENERAL_ERR";
	default: return "UNKNOWN_STATUS";
	}
}

/* ---------------------------------------------------------------- devices */

struct tp_dev {
	struct ibv_context *ctx;
	struct ibv_pd *pd;
	char name[IBV_SYSFS_NAME_MAX];
	uint8_t port;
	int gid_index;
	int eth;  /* link layer Ethernet: GRH required, LID 0 */
	int grh;  /* put a GRH on RC address vectors */
	union ibv_gid gid;
	struct ibv_port_attr pattr;
	struct ibv_device_attr dattr;
};

static void tp_dev_setup(struct tp_dev *d, struct ibv_device *device)
{
	memset(d, 0, sizeof(*d));
	snprintf(d->name, sizeof(d->name), "%s", ibv_get_device_name(device));
	d->ctx = ibv_open_device(device);
	TP_CHECK(d->ctx, "ibv_open_device(%s) failed: %s", d->name, strerror(errno));
	d->port = (uint8_t)tp_env_int("SVTEST_PORT", 1);
	int rc = ibv_query_port(d->ctx, d->port, &d->pattr);
	TP_CHECK(rc == 0, "ibv_query_port(%s, %u) failed: %s", d->name, d->port, strerror(rc));
	TP_CHECK(d->pattr.state == IBV_PORT_ACTIVE, "port %u of %s is not active (state %d)", d->port,
		 d->name, (int)d->pattr.state);
	rc = ibv_query_device(d->ctx, &d->dattr);
	TP_CHECK(rc == 0, "ibv_query_device(%s) failed: %s", d->name, strerror(rc));
	d->eth = d->pattr.link_layer == IBV_LINK_LAYER_ETHERNET;
	d->gid_index = tp_env_int("SVTEST_GID_INDEX", d->eth ? 1 : 0);
	d->grh = d->eth || tp_env_int("SVTEST_GRH", 0);
	rc = ibv_query_gid(d->ctx, d->port, d->gid_index, &d->gid);
	TP_CHECK(rc == 0, "ibv_query_gid(%s, %u, %d) failed", d->name, d->port, d->gid_index);
	d->pd = ibv_alloc_pd(d->ctx);
	TP_CHECK(d->pd, "ibv_alloc_pd(%s) failed: %s", d->name, strerror(errno));
}

/*
 * Opens the device(s): *a always; *b is a second device when SVTEST_TWO_DEVICES=1 (or
 * SVTEST_DEVICE2 is set), else b == a (loopback on one device). Returns the number opened.
 */
TP_UNUSED static int tp_open(struct tp_dev *a, struct tp_dev *b_storage, struct tp_dev **b)
{
	int n = 0;
	struct ibv_device **list = ibv_get_device_list(&n);
	TP_CHECK(list, "ibv_get_device_list failed: %s", strerror(errno));
	TP_CHECK(n > 0, "no RDMA devices found");
	const char *want = getenv("SVTEST_DEVICE");
	const char *want2 = getenv("SVTEST_DEVICE2");
	int two = tp_env_int("SVTEST_TWO_DEVICES", 0) || (want2 && *want2);
	int ia = -1, ib = -1;
	for (int i = 0; i < n; i++) {
		const char *nm = ibv_get_device_name(list[i]);
		if (ia < 0 && (!want || !*want || strcmp(nm, want) == 0))
			ia = i;
	}
	TP_CHECK(ia >= 0, "device %s not found", want);
	if (two) {
		for (int i = 0; i < n; i++) {
			if (i == ia)
				continue;
			const char *nm = ibv_get_device_name(list[i]);
			if (want2 && *want2 ? strcmp(nm, want2) == 0 : 1) {
				ib = i;
				break;
			}
		}
		TP_CHECK(ib >= 0, "a second device was asked for but %s", want2 && *want2 ? "it was not found"
									  : "there is none");
	}
	tp_dev_setup(a, list[ia]);
	if (two) {
		tp_dev_setup(b_storage, list[ib]);
		*b = b_storage;
	} else {
		*b = a;
	}
	ibv_free_device_list(list);
	return two ? 2 : 1;
}

TP_UNUSED static void tp_close_dev(struct tp_dev *d)
{
	int rc = ibv_dealloc_pd(d->pd);
	TP_CHECK(rc == 0, "ibv_dealloc_pd(%s) failed: %s", d->name, strerror(rc));
	rc = ibv_close_device(d->ctx);
	TP_CHECK(rc == 0, "ibv_close_device(%s) failed: %s", d->name, strerror(rc));
}

/* ---------------------------------------------------------------- endpoints */

#define TP_SEND_OPS                                                                                  \
	(IBV_QP_EX_WITH_SEND | IBV_QP_EX_WITH_SEND_WITH_IMM | IBV_QP_EX_WITH_RDMA_WRITE |           \
	 IBV_QP_EX_WITH_RDMA_WRITE_WITH_IMM | IBV_QP_EX_WITH_RDMA_READ |                            \
	 IBV_QP_EX_WITH_ATOMIC_CMP_AND_SWP | IBV_QP_EX_WITH_ATOMIC_FETCH_AND_ADD)
#define TP_SEND_OPS_UD (IBV_QP_EX_WITH_SEND | IBV_QP_EX_WITH_SEND_WITH_IMM)

/* One end of a connection: a QP with its own send and receive CQs and a registered buffer. */
struct tp_end {
	struct tp_dev *dev;
	struct ibv_cq *scq, *rcq;
	struct ibv_qp *qp;
	struct ibv_qp_ex *qpx; /* set when created with ibv_create_qp_ex */
	uint8_t *buf;
	size_t size;
	struct ibv_mr *mr;
	uint32_t psn;
};

struct tp_qp_opts {
	enum ibv_qp_type type;   /* IBV_QPT_RC or IBV_QPT_UD */
	int ex;                  /* create with ibv_create_qp_ex + send_ops_flags */
	uint32_t max_send_wr, max_recv_wr, max_sge, max_inline;
	int cqe;
	struct ibv_srq *srq;     /* receive side shares this SRQ */
	struct ibv_cq *rcq;      /* use this receive CQ instead of making one */
	struct ibv_cq *scq;      /* use this send CQ instead of making one */
	struct ibv_comp_channel *channel; /* for the receive CQ made here */
	struct ibv_comp_channel *schannel; /* for the send CQ */
	size_t buf_size;
	int access;              /* MR access flags (default: local write + remote r/w/atomic) */
};

#define TP_ACCESS_ALL                                                                                \
	(IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ |                \
	 IBV_ACCESS_REMOTE_ATOMIC)

TP_UNUSED static void tp_end_create(struct tp_end *e, struct tp_dev *d, const struct tp_qp_opts *o)
{
	memset(e, 0, sizeof(*e));
	e->dev = d;
	int cqe = o->cqe ? o->cqe : 256;
	e->scq = o->scq ? o->scq : ibv_create_cq(d->ctx, cqe, e, o->schannel, 0);
	TP_CHECK(e->scq, "ibv_create_cq failed: %s", strerror(errno));
	if (o->rcq) {
		e->rcq = o->rcq;
	} else {
		e->rcq = ibv_create_cq(d->ctx, cqe, e, o->channel, 0);
		TP_CHECK(e->rcq, "ibv_create_cq failed: %s", strerror(errno));
	}
	e->size = o->buf_size ? o->buf_size : 65536;
	int rc = posix_memalign((void **)&e->buf, 4096, e->size);
	TP_CHECK(rc == 0, "posix_memalign failed");
	memset(e->buf, 0, e->size);
	e->mr = ibv_reg_mr(d->pd, e->buf, e->size, o->access ? o->access : TP_ACCESS_ALL);
	TP_CHECK(e->mr, "ibv_reg_mr failed: %s", strerror(errno));

	struct ibv_qp_cap cap = {
		.max_send_wr = o->max_send_wr ? o->max_send_wr : 64,
		.max_recv_wr = o->srq ? 0 : (o->max_recv_wr ? o->max_recv_wr : 64),
		.max_send_sge = o->max_sge ? o->max_sge : 2,
		.max_recv_sge = o->srq ? 0 : (o->max_sge ? o->max_sge : 2),
		.max_inline_data = o->max_inline,
	};
	enum ibv_qp_type type = o->type ? o->type : IBV_QPT_RC;
	if (o->ex) {
		struct ibv_qp_init_attr_ex ax = {
			.send_cq = e->scq,
			.recv_cq = e->rcq,
			.srq = o->srq,
			.cap = cap,
			.qp_type = type,
			.comp_mask = IBV_QP_INIT_ATTR_PD | IBV_QP_INIT_ATTR_SEND_OPS_FLAGS,
			.pd = d->pd,
			.send_ops_flags = type == IBV_QPT_UD ? TP_SEND_OPS_UD : TP_SEND_OPS,
		};
		e->qp = ibv_create_qp_ex(d->ctx, &ax);
		TP_CHECK(e->qp, "ibv_create_qp_ex failed: %s", strerror(errno));
		e->qpx = ibv_qp_to_qp_ex(e->qp);
		TP_CHECK(e->qpx, "ibv_qp_to_qp_ex returned NULL");
		TP_CHECK(ax.cap.max_inline_data >= o->max_inline, "max_inline_data %u < %u asked for",
			 ax.cap.max_inline_data, o->max_inline);
	} else {
		struct ibv_qp_init_attr a = {
			.send_cq = e->scq,
			.recv_cq = e->rcq,
			.srq = o->srq,
			.cap = cap,
			.qp_type = type,
		};
		e->qp = ibv_create_qp(d->pd, &a);
		TP_CHECK(e->qp, "ibv_create_qp failed: %s", strerror(errno));
		TP_CHECK(a.cap.max_inline_data >= o->max_inline, "max_inline_data %u < %u asked for",
			 a.cap.max_inline_data, o->max_inline);
	}
	/* Distinct, deterministic starting PSNs. */
	e->psn = (e->qp->qp_num * 7919u + 0x1234u) & 0xffffffu;
}

TP_UNUSED static void tp_end_destroy(struct tp_end *e, int own_rcq)
{
	int rc = ibv_destroy_qp(e->qp);
	TP_CHECK(rc == 0, "ibv_destroy_qp failed: %s", strerror(rc));
	rc = ibv_dereg_mr(e->mr);
	TP_CHECK(rc == 0, "ibv_dereg_mr failed: %s", strerror(rc));
	free(e->buf);
	rc = ibv_destroy_cq(e->scq);
	TP_CHECK(rc == 0, "ibv_destroy_cq failed: %s", strerror(rc));
	if (own_rcq) {
		rc = ibv_destroy_cq(e->rcq);
		TP_CHECK(rc == 0, "ibv_destroy_cq failed: %s", strerror(rc));
	}
}

/* An address vector from d (local port) to the remote port/GID of r. */
TP_UNUSED static void tp_ah_attr(struct ibv_ah_attr *ah, const struct tp_dev *d, const struct tp_dev *r,
				 int force_grh)
{
	memset(ah, 0, sizeof(*ah));
	ah->dlid = r->pattr.lid;
	ah->sl = 0;
	ah->src_path_bits = 0;
	ah->port_num = d->port;
	if (d->grh || force_grh) {
		ah->is_global = 1;
		ah->grh.dgid = r->gid;
		ah->grh.sgid_index = (uint8_t)d->gid_index;
		ah->grh.hop_limit = 64;
		ah->grh.flow_label = 0;
		ah->grh.traffic_class = 0;
	}
}

static void tp_to_init(struct tp_end *e, enum ibv_qp_type type)
{
	struct ibv_qp_attr a = {
		.qp_state = IBV_QPS_INIT,
		.pkey_index = 0,
		.port_num = e->dev->port,
	};
	int mask = IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT;
	if (type == IBV_QPT_UD) {
		a.qkey = 0x11111111;
		mask |= IBV_QP_QKEY;
	} else {
		a.qp_access_flags = IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC;
		mask |= IBV_QP_ACCESS_FLAGS;
	}
	int rc = ibv_modify_qp(e->qp, &a, mask);
	TP_CHECK(rc == 0, "modify_qp(INIT) of QP 0x%x failed: %s", e->qp->qp_num, strerror(rc));
}

static enum ibv_mtu tp_min_mtu(enum ibv_mtu a, enum ibv_mtu b)
{
	return a < b ? a : b;
}

static void tp_rc_rtr_rts(struct tp_end *e, const struct tp_end *r)
{
	struct ibv_qp_attr a = {
		.qp_state = IBV_QPS_RTR,
		.path_mtu = tp_min_mtu(e->dev->pattr.active_mtu, r->dev->pattr.active_mtu),
		.dest_qp_num = r->qp->qp_num,
		.rq_psn = r->psn,
		.max_dest_rd_atomic = 4,
		.min_rnr_timer = 1,
	};
	tp_ah_attr(&a.ah_attr, e->dev, r->dev, 0);
	int rc = ibv_modify_qp(e->qp, &a,
			       IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
				       IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER);
	TP_CHECK(rc == 0, "modify_qp(RTR) of QP 0x%x failed: %s", e->qp->qp_num, strerror(rc));
	struct ibv_qp_attr s = {
		.qp_state = IBV_QPS_RTS,
		.timeout = 14,
		.retry_cnt = 7,
		.rnr_retry = 7,
		.sq_psn = e->psn,
		.max_rd_atomic = 4,
	};
	rc = ibv_modify_qp(e->qp, &s,
			   IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN |
				   IBV_QP_MAX_QP_RD_ATOMIC);
	TP_CHECK(rc == 0, "modify_qp(RTS) of QP 0x%x failed: %s", e->qp->qp_num, strerror(rc));
}

/* Connects two RC ends to each other (RESET -> INIT -> RTR -> RTS on both). */
TP_UNUSED static void tp_connect_rc(struct tp_end *a, struct tp_end *b)
{
	tp_to_init(a, IBV_QPT_RC);
	tp_to_init(b, IBV_QPT_RC);
	tp_rc_rtr_rts(a, b);
	tp_rc_rtr_rts(b, a);
}

/* Brings a UD QP to RTS. */
TP_UNUSED static void tp_ud_ready(struct tp_end *e)
{
	tp_to_init(e, IBV_QPT_UD);
	struct ibv_qp_attr a = {.qp_state = IBV_QPS_RTR};
	int rc = ibv_modify_qp(e->qp, &a, IBV_QP_STATE);
	TP_CHECK(rc == 0, "modify_qp(RTR) of UD QP 0x%x failed: %s", e->qp->qp_num, strerror(rc));
	struct ibv_qp_attr s = {.qp_state = IBV_QPS_RTS, .sq_psn = e->psn};
	rc = ibv_modify_qp(e->qp, &s, IBV_QP_STATE | IBV_QP_SQ_PSN);
	TP_CHECK(rc == 0, "modify_qp(RTS) of UD QP 0x%x failed: %s", e->qp->qp_num, strerror(rc));
}

/* ---------------------------------------------------------------- posting */

enum tp_op { TP_SEND, TP_SEND_IMM, TP_WRITE, TP_WRITE_IMM, TP_READ, TP_CAS, TP_FAA };

TP_UNUSED static const char *tp_op_name(enum tp_op op)
{
	static const char *const names[] = {"SEND", "SEND_WITH_IMM", "RDMA_WRITE", "RDMA_WRITE_WITH_IMM",
					    "RDMA_READ", "ATOMIC_CMP_AND_SWP", "ATOMIC_FETCH_AND_ADD"};
	return names[op];
}

struct tp_wr {
	enum tp_op op;
	uint64_t wr_id;
	int unsignaled;
	int inline_data;
	struct ibv_sge *sg;
	int num_sge;
	uint32_t imm; /* host order */
	uint64_t raddr;
	uint32_t rkey;
	uint64_t compare_add, swap;
	struct ibv_ah *ah; /* UD */
	uint32_t rqpn, rqkey;
};

/* Posts one work request, through the legacy ibv_post_send (ex == 0) or the wr_* API (ex != 0). */
TP_UNUSED static int tp_post(struct tp_end *e, const struct tp_wr *w, int ex)
{
	if (!ex) {
		struct ibv_send_wr wr, *bad = NULL;
		memset(&wr, 0, sizeof(wr));
		wr.wr_id = w->wr_id;
		wr.sg_list = w->sg;
		wr.num_sge = w->num_sge;
		wr.send_flags = (w->unsignaled ? 0 : IBV_SEND_SIGNALED) | (w->inline_data ? IBV_SEND_INLINE : 0);
		switch (w->op) {
		case TP_SEND: wr.opcode = IBV_WR_SEND; break;
		case TP_SEND_IMM: wr.opcode = IBV_WR_SEND_WITH_IMM; wr.imm_data = htonl(w->imm); break;
		case TP_WRITE: wr.opcode = IBV_WR_RDMA_WRITE; break;
		case TP_WRITE_IMM: wr.opcode = IBV_WR_RDMA_WRITE_WITH_IMM; wr.imm_data = htonl(w->imm); break;
		case TP_READ: wr.opcode = IBV_WR_RDMA_READ; break;
		case TP_CAS: wr.opcode = IBV_WR_ATOMIC_CMP_AND_SWP; break;
		case TP_FAA: wr.opcode = IBV_WR_ATOMIC_FETCH_AND_ADD; break;
		}
		if (w->op == TP_WRITE || w->op == TP_WRITE_IMM || w->op == TP_READ) {
			wr.wr.rdma.remote_addr = w->raddr;
			wr.wr.rdma.rkey = w->rkey;
		} else if (w->op == TP_CAS || w->op == TP_FAA) {
			wr.wr.atomic.remote_addr = w->raddr;
			wr.wr.atomic.rkey = w->rkey;
			wr.wr.atomic.compare_add = w->compare_add;
			wr.wr.atomic.swap = w->swap;
		}
		if (w->ah) {
			wr.wr.ud.ah = w->ah;
			wr.wr.ud.remote_qpn = w->rqpn;
			wr.wr.ud.remote_qkey = w->rqkey;
		}
		int rc = ibv_post_send(e->qp, &wr, &bad);
		if (rc == 0 && bad)
			tp_fail("ibv_post_send returned 0 but set bad_wr");
		if (rc && bad != &wr)
			tp_fail("ibv_post_send failed (%s) without pointing bad_wr at the request", strerror(rc));
		return rc;
	}
	struct ibv_qp_ex *q = e->qpx;
	TP_CHECK(q, "QP 0x%x was not created with ibv_create_qp_ex", e->qp->qp_num);
	ibv_wr_start(q);
	q->wr_id = w->wr_id;
	q->wr_flags = (w->unsignaled ? 0 : IBV_SEND_SIGNALED) | (w->inline_data ? IBV_SEND_INLINE : 0);
	switch (w->op) {
	case TP_SEND: ibv_wr_send(q); break;
	case TP_SEND_IMM: ibv_wr_send_imm(q, htonl(w->imm)); break;
	case TP_WRITE: ibv_wr_rdma_write(q, w->rkey, w->raddr); break;
	case TP_WRITE_IMM: ibv_wr_rdma_write_imm(q, w->rkey, w->raddr, htonl(w->imm)); break;
	case TP_READ: ibv_wr_rdma_read(q, w->rkey, w->raddr); break;
	case TP_CAS: ibv_wr_atomic_cmp_swp(q, w->rkey, w->raddr, w->compare_add, w->swap); break;
	case TP_FAA: ibv_wr_atomic_fetch_add(q, w->rkey, w->raddr, w->compare_add); break;
	}
	if (w->ah)
		ibv_wr_set_ud_addr(q, w->ah, w->rqpn, w->rqkey);
	if (w->inline_data) {
		struct ibv_data_buf bufs[8];
		TP_CHECK(w->num_sge <= 8, "too many inline pieces");
		for (int i = 0; i < w->num_sge; i++) {
			bufs[i].addr = (void *)(uintptr_t)w->sg[i].addr;
			bufs[i].length = w->sg[i].length;
		}
		if (w->num_sge == 1)
			ibv_wr_set_inline_data(q, bufs[0].addr, bufs[0].length);
		else
			ibv_wr_set_inline_data_list(q, (size_t)w->num_sge, bufs);
	} else if (w->num_sge == 1) {
		ibv_wr_set_sge(q, w->sg[0].lkey, w->sg[0].addr, w->sg[0].length);
	} else if (w->num_sge > 1) {
		ibv_wr_set_sge_list(q, (size_t)w->num_sge, w->sg);
	} else if (w->op == TP_SEND || w->op == TP_SEND_IMM || w->op == TP_WRITE || w->op == TP_WRITE_IMM) {
		ibv_wr_set_sge_list(q, 0, NULL);
	}
	return ibv_wr_complete(q);
}

/* Posts one receive of [addr, addr+len) (len 0: no SGE). */
TP_UNUSED static void tp_post_recv(struct tp_end *e, uint64_t wr_id, void *addr, uint32_t len)
{
	struct ibv_sge sge = {.addr = (uintptr_t)addr, .length = len, .lkey = e->mr->lkey};
	struct ibv_recv_wr wr = {.wr_id = wr_id, .sg_list = &sge, .num_sge = len ? 1 : 0}, *bad = NULL;
	int rc = ibv_post_recv(e->qp, &wr, &bad);
	TP_CHECK(rc == 0, "ibv_post_recv on QP 0x%x failed: %s", e->qp->qp_num, strerror(rc));
}

/* Waits (busy-polling, at most `seconds`) for exactly one completion on cq. */
TP_UNUSED static void tp_poll1(struct ibv_cq *cq, struct ibv_wc *wc, const char *what)
{
	double deadline = tp_now() + tp_env_int("SVTEST_POLL_SECONDS", 10);
	unsigned spins = 0;
	for (;;) {
		int n = ibv_poll_cq(cq, 1, wc);
		TP_CHECK(n >= 0, "ibv_poll_cq failed (%d) waiting for %s", n, what);
		if (n == 1)
			return;
		if ((++spins & 1023) == 0) {
			TP_CHECK(tp_now() < deadline, "no completion for %s within %d s", what,
				 tp_env_int("SVTEST_POLL_SECONDS", 10));
			sched_yield();
		}
	}
}

/* Waits for one completion and checks it succeeded with the given opcode and wr_id. */
TP_UNUSED static void tp_expect(struct ibv_cq *cq, struct ibv_wc *wc, enum ibv_wc_opcode opcode, uint64_t wr_id,
				const char *what)
{
	tp_poll1(cq, wc, what);
	TP_CHECK(wc->status == IBV_WC_SUCCESS, "%s: completion status %s (%d), vendor_err 0x%x", what,
		 tp_status_name(wc->status), wc->status, wc->vendor_err);
	TP_CHECK(wc->opcode == opcode, "%s: completion opcode %d, expected %d", what, wc->opcode, opcode);
	TP_CHECK(wc->wr_id == wr_id, "%s: completion wr_id %" PRIu64 ", expected %" PRIu64, what, wc->wr_id,
		 wr_id);
}

/* Checks that cq has no completion right now. */
TP_UNUSED static void tp_expect_empty(struct ibv_cq *cq, const char *what)
{
	struct ibv_wc wc;
	int n = ibv_poll_cq(cq, 1, &wc);
	TP_CHECK(n == 0, "%s: unexpected completion (n=%d, status %s, opcode %d, wr_id %" PRIu64 ")", what, n,
		 n > 0 ? tp_status_name(wc.status) : "-", n > 0 ? (int)wc.opcode : -1,
		 n > 0 ? wc.wr_id : 0);
}

/* Reports data mismatches; returns 1 if there was one (counts as an error, printed once per call). */
TP_UNUSED static int tp_verify(const void *buf, size_t len, uint32_t seed, const char *what)
{
	long at = tp_check(buf, len, seed);
	if (at < 0)
		return 0;
	printf("%s: data error in %s: byte %ld of %zu is 0x%02x, expected 0x%02x\n", tp_name, what, at, len,
	       ((const uint8_t *)buf)[at], tp_pattern_byte(seed, (size_t)at));
	return 1;
}

/* The main of a program that exercises its ops through each API in turn — the legacy verbs
 * (ex 0), then the ibv_wr_* builders (ex 1) — between the devices tp_open gives:
 *   NAME [-n iterations] [-l | -x]      -l: the legacy API only, -x: ibv_wr_* only
 * `vet` (may be NULL) checks the devices first; the summary line is
 * "NAME: N iterations x K APIs (OPS), E errors", and the exit status 1 when *errors > 0. */
typedef void (*tp_api_run)(struct tp_dev *a, struct tp_dev *b, int ex, int iters);
TP_UNUSED static int tp_main_each_api(int argc, char **argv, const char *name, int iters, const char *ops,
				      tp_api_run run, void (*vet)(struct tp_dev *a, struct tp_dev *b), const int *errors)
{
	int from = 0, to = 1, opt;
	while ((opt = getopt(argc, argv, "n:lx")) != -1) {
		switch (opt) {
		case 'n': iters = atoi(optarg); break;
		case 'l': from = to = 0; break;
		case 'x': from = to = 1; break;
		default: fprintf(stderr, "usage: %s [-n iterations] [-l | -x]\n", name); return 2;
		}
	}
	tp_start(name, 60);
	struct tp_dev da, dbs, *db;
	tp_open(&da, &dbs, &db);
	if (vet)
		vet(&da, db);
	for (int ex = from; ex <= to; ex++)
		run(&da, db, ex, iters);
	if (db != &da)
		tp_close_dev(db);
	tp_close_dev(&da);
	printf("%s: %d iterations x %d APIs (%s), %d errors\n", name, iters, to - from + 1, ops, *errors);
	return *errors ? 1 : 0;
}

#endif /* SVTEST_COMMON_H */
