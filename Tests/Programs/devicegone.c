/*
 * devicegone: the device is lost and does not come back within STABLEVERBS_LOSS_WAIT_MS. The
 * application must then get what native verbs give a program whose device died — and not wait for
 * ever:
 *   - IBV_EVENT_DEVICE_FATAL from ibv_get_async_event (which blocks until then);
 *   - a thread blocked in ibv_get_cq_event on an armed CQ wakes up;
 *   - every work request outstanding (receives posted before the loss, a SEND posted while the
 *     shim waited for the device) completes with IBV_WC_WR_FLUSH_ERR, each once, with its wr_id;
 *   - posts, control verbs and queries fail with EIO (post_send/post_recv also set bad_wr);
 *   - every destroy, ibv_dealloc_pd and ibv_close_device succeed;
 *   - when the device does come back, the dead context stays dead (EIO) and a fresh
 *     ibv_open_device on it works.
 *
 * Both ends of an RC connection on one device (loopback). Run through the shim on the software HCA
 * (STABLEVERBS_LOWER=softhca, one device, STABLEVERBS_LOSS_WAIT_MS small). Prints
 * "devicegone: <n> flushed, 0 errors" and exits 0 when every check passed.
 */
#include <dlfcn.h>
#include <pthread.h>

#include "common.h"

#define RECVS 6
#define SENDS 2

static struct ibv_comp_channel *channel;
static volatile int cq_event_seen;

static void *wait_cq_event(void *arg)
{
	(void)arg;
	struct ibv_cq *cq;
	void *ctx;
	if (ibv_get_cq_event(channel, &cq, &ctx) == 0) {
		ibv_ack_cq_events(cq, 1);
		cq_event_seen = 1;
	}
	return NULL;
}

static int poll_all(struct ibv_cq *cq, struct ibv_wc *wc, int max, double seconds)
{
	int got = 0;
	double end = tp_now() + seconds;
	while (got < max && tp_now() < end) {
		int n = ibv_poll_cq(cq, max - got, wc + got);
		TP_CHECK(n >= 0, "ibv_poll_cq failed (%d)", n);
		got += n;
		if (n == 0)
			usleep(1000);
	}
	return got;
}

int main(void)
{
	tp_start("devicegone", 60);
	int (*sh_remove)(const char *, int) = (int (*)(const char *, int))dlsym(RTLD_DEFAULT, "stableverbs_softhca_remove_device");
	int (*sh_restore)(const char *, const char *, int) =
		(int (*)(const char *, const char *, int))dlsym(RTLD_DEFAULT, "stableverbs_softhca_restore_device");
	TP_CHECK(sh_remove && sh_restore, "run through the shim on the software HCA (no stableverbs_softhca_* symbols)");

	struct tp_dev d, *b_dev;
	tp_open(&d, &d, &b_dev);
	channel = ibv_create_comp_channel(d.ctx);
	TP_CHECK(channel, "ibv_create_comp_channel failed: %s", strerror(errno));
	struct tp_qp_opts oa = {.type = IBV_QPT_RC}, ob = {.type = IBV_QPT_RC, .channel = channel};
	struct tp_end a, b;
	tp_end_create(&a, &d, &oa);
	tp_end_create(&b, &d, &ob);
	tp_connect_rc(&a, &b);

	/* RECVS receives on B, SENDS of them used: the rest stay outstanding. */
	for (int i = 0; i < RECVS; i++) {
		struct ibv_sge sge = {.addr = (uintptr_t)b.buf + 64 * i, .length = 64, .lkey = b.mr->lkey};
		struct ibv_recv_wr wr = {.wr_id = 100 + i, .sg_list = &sge, .num_sge = 1}, *bad;
		TP_CHECK(ibv_post_recv(b.qp, &wr, &bad) == 0, "ibv_post_recv failed");
	}
	for (int i = 0; i < SENDS; i++) {
		struct ibv_sge sge = {.addr = (uintptr_t)a.buf, .length = 32, .lkey = a.mr->lkey};
		struct ibv_send_wr wr = {.wr_id = 1 + i, .sg_list = &sge, .num_sge = 1, .opcode = IBV_WR_SEND,
					 .send_flags = IBV_SEND_SIGNALED}, *bad;
		TP_CHECK(ibv_post_send(a.qp, &wr, &bad) == 0, "ibv_post_send failed");
	}
	struct ibv_wc wc[32];
	TP_CHECK(poll_all(a.scq, wc, SENDS, 10) == SENDS, "the sends did not complete");
	TP_CHECK(poll_all(b.rcq, wc, SENDS, 10) == SENDS, "the receives did not complete");
	for (int i = 0; i < SENDS; i++)
		TP_CHECK(wc[i].status == IBV_WC_SUCCESS && wc[i].wr_id == (uint64_t)(100 + i), "receive %d: status %d wr_id %llu",
			 i, wc[i].status, (unsigned long long)wc[i].wr_id);

	/* Armed, and a thread waits for its completion event. */
	TP_CHECK(ibv_req_notify_cq(b.rcq, 0) == 0, "ibv_req_notify_cq failed");
	pthread_t waiter;
	TP_CHECK(pthread_create(&waiter, NULL, wait_cq_event, NULL) == 0, "pthread_create failed");

	TP_CHECK(sh_remove(d.name, 0) == 0, "stableverbs_softhca_remove_device(%s) failed", d.name);
	/* Posted while the shim waits for the device: accepted, then flushed. */
	{
		struct ibv_sge sge = {.addr = (uintptr_t)a.buf, .length = 32, .lkey = a.mr->lkey};
		struct ibv_send_wr wr = {.wr_id = 77, .sg_list = &sge, .num_sge = 1, .opcode = IBV_WR_SEND,
					 .send_flags = IBV_SEND_SIGNALED}, *bad = NULL;
		int rc = ibv_post_send(a.qp, &wr, &bad);
		TP_CHECK(rc == 0, "ibv_post_send while the device is away: %s (the shim buffers it)", strerror(rc));
	}

	double t0 = tp_now();
	struct ibv_async_event ev;
	TP_CHECK(ibv_get_async_event(d.ctx, &ev) == 0, "ibv_get_async_event failed");
	TP_CHECK(ev.event_type == IBV_EVENT_DEVICE_FATAL, "async event %d, expected IBV_EVENT_DEVICE_FATAL", ev.event_type);
	ibv_ack_async_event(&ev);
	printf("devicegone: IBV_EVENT_DEVICE_FATAL after %.1f s\n", tp_now() - t0);

	/* Every outstanding work request, flushed once. */
	int n = poll_all(b.rcq, wc, 32, 2);
	TP_CHECK(n == RECVS - SENDS, "%d receive completions after the loss, expected %d", n, RECVS - SENDS);
	for (int i = 0; i < n; i++)
		TP_CHECK(wc[i].status == IBV_WC_WR_FLUSH_ERR && wc[i].wr_id == (uint64_t)(100 + SENDS + i) &&
				 wc[i].qp_num == b.qp->qp_num,
			 "receive completion %d: status %s wr_id %llu qp 0x%x", i, tp_status_name(wc[i].status),
			 (unsigned long long)wc[i].wr_id, wc[i].qp_num);
	int m = poll_all(a.scq, wc, 32, 2);
	TP_CHECK(m == 1 && wc[0].status == IBV_WC_WR_FLUSH_ERR && wc[0].wr_id == 77 && wc[0].qp_num == a.qp->qp_num,
		 "send completions after the loss: %d (first: status %s wr_id %llu)", m, m ? tp_status_name(wc[0].status) : "-",
		 m ? (unsigned long long)wc[0].wr_id : 0ull);
	TP_CHECK(ibv_poll_cq(b.rcq, 32, wc) == 0 && ibv_poll_cq(a.scq, 32, wc) == 0, "a completion came twice");
	pthread_join(waiter, NULL);
	TP_CHECK(cq_event_seen, "the thread in ibv_get_cq_event got no event");

	/* Posts and control verbs: EIO, as on a removed device. */
	{
		struct ibv_sge sge = {.addr = (uintptr_t)a.buf, .length = 32, .lkey = a.mr->lkey};
		struct ibv_send_wr wr = {.wr_id = 78, .sg_list = &sge, .num_sge = 1, .opcode = IBV_WR_SEND}, *bad = NULL;
		int rc = ibv_post_send(a.qp, &wr, &bad);
		TP_CHECK(rc == EIO && bad == &wr, "ibv_post_send on a dead device: %s (bad_wr %s)", strerror(rc), bad == &wr ? "set" : "not set");
		struct ibv_recv_wr rw = {.wr_id = 79, .sg_list = &sge, .num_sge = 1}, *rbad = NULL;
		rc = ibv_post_recv(b.qp, &rw, &rbad);
		TP_CHECK(rc == EIO && rbad == &rw, "ibv_post_recv on a dead device: %s", strerror(rc));
	}
	struct ibv_port_attr pattr;
	int rc = ibv_query_port(d.ctx, d.port, &pattr);
	TP_CHECK(rc == EIO, "ibv_query_port on a dead device: %s", strerror(rc));
	errno = 0;
	TP_CHECK(ibv_create_cq(d.ctx, 16, NULL, NULL, 0) == NULL && errno == EIO, "ibv_create_cq on a dead device: errno %s",
		 strerror(errno));
	struct ibv_qp_attr qa = {.qp_state = IBV_QPS_RESET};
	rc = ibv_modify_qp(a.qp, &qa, IBV_QP_STATE);
	TP_CHECK(rc == EIO, "ibv_modify_qp on a dead device: %s", strerror(rc));

	/* The device returns: the dead context stays dead; a new one works. */
	TP_CHECK(sh_restore(d.name, NULL, 0) == 0, "stableverbs_softhca_restore_device failed");
	usleep(1500 * 1000);
	rc = ibv_query_port(d.ctx, d.port, &pattr);
	TP_CHECK(rc == EIO, "the dead context came back to life after the device returned: ibv_query_port %s", strerror(rc));
	int count = 0;
	struct ibv_device **list = ibv_get_device_list(&count);
	TP_CHECK(list && count > 0, "no device after the restore");
	struct ibv_context *fresh = NULL;
	for (int i = 0; i < count; i++)
		if (strcmp(ibv_get_device_name(list[i]), d.name) == 0)
			fresh = ibv_open_device(list[i]);
	ibv_free_device_list(list);
	TP_CHECK(fresh, "ibv_open_device(%s) after the device returned failed", d.name);
	rc = ibv_query_port(fresh, d.port, &pattr);
	TP_CHECK(rc == 0 && pattr.state == IBV_PORT_ACTIVE, "the reopened device: ibv_query_port %s, state %d", strerror(rc), pattr.state);
	TP_CHECK(ibv_close_device(fresh) == 0, "ibv_close_device of the reopened device failed");

	/* Teardown of the dead context: every destroy succeeds. */
	tp_end_destroy(&a, 1);
	tp_end_destroy(&b, 1);
	rc = ibv_destroy_comp_channel(channel);
	TP_CHECK(rc == 0, "ibv_destroy_comp_channel failed: %s", strerror(rc));
	tp_close_dev(&d);
	printf("devicegone: %d flushed, 0 errors\n", n + m);
	return 0;
}
