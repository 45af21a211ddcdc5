/*
 * events: completion channels. Part 1: a second thread blocks in ibv_get_cq_event on a channel that
 * carries two CQs (the receiver's receive CQ and the sender's send CQ) while the main thread posts;
 * the thread checks the cq pointer and cq_context of every event, acks (singly and in batches),
 * re-arms with ibv_req_notify_cq and drains the CQ. Part 2: the channel fd made non-blocking and
 * waited on with poll(): EAGAIN when empty, POLLIN once a completion arrives on an armed CQ.
 *
 *   events [-n messages] [-p poll-messages]
 */
#include "common.h"
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>

#define RECV_OFF 32768
#define LEN 512

static int errors;
static struct tp_end a, b;
static struct ibv_comp_channel *channel;
static int nmsg = 100;
static sem_t done, armed;
static volatile int t_received, t_sent, t_events, t_failed;
static unsigned unacked_b;
static int one_device;

static void t_fail(const char *why)
{
	printf("events: FAIL (thread): %s\n", why);
	fflush(stdout);
	_exit(1);
}

static void *waiter(void *arg)
{
	(void)arg;
	if (ibv_req_notify_cq(b.rcq, 0) || (one_device && ibv_req_notify_cq(a.scq, 0)))
		t_fail("ibv_req_notify_cq failed");
	sem_post(&armed); /* the first send may go: its completion will raise an event */
	while (t_received < nmsg || t_sent < nmsg) {
		struct ibv_cq *cq = NULL;
		void *ctx = NULL;
		if (ibv_get_cq_event(channel, &cq, &ctx))
			t_fail("ibv_get_cq_event failed");
		t_events++;
		if (cq == b.rcq) {
			if (ctx != &b)
				t_fail("event for the receive CQ carries the wrong cq_context");
			/* Ack every other event in a batch of two, the rest singly. */
			if (++unacked_b == 2 || t_events % 3 == 0) {
				ibv_ack_cq_events(cq, unacked_b);
				unacked_b = 0;
			}
		} else if (cq == a.scq) {
			if (ctx != &a)
				t_fail("event for the send CQ carries the wrong cq_context");
			ibv_ack_cq_events(cq, 1);
		} else {
			t_fail("ibv_get_cq_event returned a CQ that is not one of ours");
		}
		if (ibv_req_notify_cq(cq, 0))
			t_fail("ibv_req_notify_cq (re-arm) failed");
		struct ibv_wc wc;
		int n;
		while ((n = ibv_poll_cq(cq, 1, &wc)) == 1) {
			if (wc.status != IBV_WC_SUCCESS)
				t_fail("a completion with an error status");
			if (cq == a.scq) {
				if (wc.opcode != IBV_WC_SEND || wc.wr_id != (uint64_t)t_sent)
					t_fail("unexpected send completion");
				t_sent++;
				sem_post(&done);
				continue;
			}
			if (wc.opcode != IBV_WC_RECV || wc.wr_id != (uint64_t)t_received || wc.byte_len != LEN ||
			    wc.qp_num != b.qp->qp_num)
				t_fail("unexpected receive completion");
			char what[48];
			snprintf(what, sizeof(what), "message %d", t_received);
			if (tp_verify(b.buf + RECV_OFF, LEN, (uint32_t)t_received, what))
				t_failed++;
			t_received++;
			if (t_received < nmsg) /* the next receive */
				tp_post_recv(&b, (uint64_t)t_received, b.buf + RECV_OFF, LEN);
			sem_post(&done);
		}
		if (n < 0)
			t_fail("ibv_poll_cq failed");
	}
	if (unacked_b)
		ibv_ack_cq_events(b.rcq, unacked_b);
	unacked_b = 0;
	return NULL;
}

static void wait_done(int count, const char *what)
{
	for (int k = 0; k < count; k++) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += 10;
		while (sem_timedwait(&done, &ts) != 0) {
			TP_CHECK(errno == EINTR, "%s: the event thread did not see the completion within 10 s "
						 "(received %d, sends %d, events %d)",
				 what, t_received, t_sent, t_events);
		}
	}
}

static void send_msg(int i)
{
	tp_fill(a.buf, LEN, (uint32_t)i);
	struct ibv_sge sg = {.addr = (uintptr_t)a.buf, .length = LEN, .lkey = a.mr->lkey};
	struct tp_wr w = {.op = TP_SEND, .wr_id = (uint64_t)i, .sg = &sg, .num_sge = 1};
	int rc = tp_post(&a, &w, 0);
	TP_CHECK(rc == 0, "post SEND %d failed: %s", i, strerror(rc));
}

int main(int argc, char **argv)
{
	int npoll = 20, opt;
	while ((opt = getopt(argc, argv, "n:p:")) != -1) {
		switch (opt) {
		case 'n': nmsg = atoi(optarg); break;
		case 'p': npoll = atoi(optarg); break;
		default: fprintf(stderr, "usage: events [-n messages] [-p poll-messages]\n"); return 2;
		}
	}
	tp_start("events", 60);
	struct tp_dev da, dbs, *db;
	tp_open(&da, &dbs, &db);
	channel = ibv_create_comp_channel(db->ctx);
	TP_CHECK(channel, "ibv_create_comp_channel failed: %s", strerror(errno));
	/* A CQ can only use a channel of its own device: with two devices the send CQ has none. */
	one_device = db == &da;
	struct tp_qp_opts oa = {.type = IBV_QPT_RC, .schannel = db == &da ? channel : NULL};
	struct tp_qp_opts ob = {.type = IBV_QPT_RC, .channel = channel};
	tp_end_create(&a, &da, &oa);
	tp_end_create(&b, db, &ob);
	tp_connect_rc(&a, &b);
	sem_init(&done, 0, 0);
	sem_init(&armed, 0, 0);
	if (db != &da) /* two devices: the sender's send CQ is not on the thread's channel; count sends here */
		t_sent = nmsg;

	/* Part 1: a thread blocked in ibv_get_cq_event. */
	tp_post_recv(&b, 0, b.buf + RECV_OFF, LEN);
	pthread_t th;
	TP_CHECK(pthread_create(&th, NULL, waiter, NULL) == 0, "pthread_create failed");
	while (sem_wait(&armed) != 0)
		; /* not before the CQs are armed (a loaded machine may start the thread late) */
	for (int i = 0; i < nmsg; i++) {
		usleep(1000); /* let the thread block in ibv_get_cq_event */
		send_msg(i);
		if (db != &da) {
			struct ibv_wc wc;
			tp_expect(a.scq, &wc, IBV_WC_SEND, (uint64_t)i, "send");
			wait_done(1, "part 1");
		} else {
			wait_done(2, "part 1"); /* the receive and the send completion */
		}
	}
	pthread_join(th, NULL);
	if (t_failed)
		errors += t_failed;
	TP_CHECK(t_received == nmsg, "the thread received %d of %d", t_received, nmsg);
	TP_CHECK(t_events >= 1, "no completion event at all");

	/* Part 2: poll() on the channel fd. Both CQs are armed again (the thread re-armed them). */
	int flags = fcntl(channel->fd, F_GETFL);
	TP_CHECK(flags >= 0 && fcntl(channel->fd, F_SETFL, flags | O_NONBLOCK) == 0, "fcntl(O_NONBLOCK) failed");
	struct pollfd pfd = {.fd = channel->fd, .events = POLLIN};
	int polled = 0;
	for (int i = 0; i < npoll; i++) {
		struct ibv_cq *cq;
		void *ctx;
		/* Drain stale events (the send CQ's), then expect the channel to be empty. */
		while (ibv_get_cq_event(channel, &cq, &ctx) == 0) {
			ibv_ack_cq_events(cq, 1);
			if (cq != a.scq) {
				printf("events: a stale event for a CQ other than the send CQ\n");
				errors++;
			}
		}
		TP_CHECK(errno == EAGAIN, "ibv_get_cq_event on an empty non-blocking channel: errno %d (%s), "
					  "expected EAGAIN", errno, strerror(errno));
		int rc = poll(&pfd, 1, 0);
		TP_CHECK(rc == 0, "poll() on an empty channel returned %d", rc);
		TP_CHECK(ibv_req_notify_cq(b.rcq, 0) == 0, "ibv_req_notify_cq failed");
		tp_post_recv(&b, 5000u + (uint64_t)i, b.buf + RECV_OFF, LEN);
		send_msg(1000 + i);
		rc = poll(&pfd, 1, 10000);
		TP_CHECK(rc == 1 && (pfd.revents & POLLIN), "poll() on the channel: rc %d revents 0x%x", rc,
			 pfd.revents);
		int got_recv = 0;
		double deadline = tp_now() + 10;
		while (!got_recv) {
			TP_CHECK(tp_now() < deadline, "no event for the receive CQ");
			if (ibv_get_cq_event(channel, &cq, &ctx) != 0) {
				TP_CHECK(errno == EAGAIN, "ibv_get_cq_event failed: %s", strerror(errno));
				poll(&pfd, 1, 100);
				continue;
			}
			ibv_ack_cq_events(cq, 1);
			if (cq == b.rcq) {
				TP_CHECK(ctx == &b, "wrong cq_context on the receive CQ's event");
				got_recv = 1;
			} else if (cq != a.scq) {
				tp_fail("an event for a CQ that is not ours");
			}
		}
		struct ibv_wc wc;
		char what[48];
		snprintf(what, sizeof(what), "poll() message %d", i);
		tp_expect(b.rcq, &wc, IBV_WC_RECV, 5000u + (uint64_t)i, what);
		errors += tp_verify(b.buf + RECV_OFF, LEN, 1000u + (uint32_t)i, what);
		tp_expect(a.scq, &wc, IBV_WC_SEND, 1000u + (uint64_t)i, what);
		polled++;
	}
	/* Leave nothing unacked, then tear down (ibv_destroy_cq waits for acks). */
	{
		struct ibv_cq *cq;
		void *ctx;
		while (ibv_get_cq_event(channel, &cq, &ctx) == 0)
			ibv_ack_cq_events(cq, 1);
	}
	tp_end_destroy(&a, 1);
	tp_end_destroy(&b, 1);
	int rc = ibv_destroy_comp_channel(channel);
	TP_CHECK(rc == 0, "ibv_destroy_comp_channel failed: %s", strerror(rc));
	if (db != &da)
		tp_close_dev(db);
	tp_close_dev(&da);
	printf("events: %d messages via a blocked thread, %d via poll(), %d errors\n", nmsg, polled, errors);
	return errors ? 1 : 0;
}
