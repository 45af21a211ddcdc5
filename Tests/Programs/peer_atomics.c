/*
 * peer_atomics: a verifying workload of atomics across two processes (two lab guests), for the
 * peer protocol: the client's FETCH_AND_ADDs on a counter in the server's memory must each run
 * exactly once and each return its own old value, also when a device goes away with atomics in
 * flight (an atomic the server executed whose response died with the client's device must not run
 * again, and its result must still reach the client).
 *
 *   peer_atomics -d DEV [-g GIDX] [-p PORT] [-n ITERS] [-w WINDOW]            server
 *   peer_atomics -d DEV [-g GIDX] [-p PORT] [-n ITERS] [-w WINDOW] HOST       client
 *
 * The client posts ITERS FETCH_AND_ADD(+1), at most WINDOW (default 8) in flight, each into its
 * own 8-byte result slot (filled with a marker first), and a SEND carrying a sequence number after
 * every 4th. Atomic i must return i (only this client adds, RC executes in order); the server must
 * receive the SENDs once each, in order. At the end the client reads the counter back (RDMA READ:
 * it must be ITERS) and sends `done`; the server checks its counter too. Both print
 * "ITERS iters in S seconds" and a summary line; exit status 0 only when nothing was lost,
 * duplicated or wrong:
 *   peer_atomics: client: N atomics, L results lost, W wrong results, counter C, E errors
 *   peer_atomics: server: M messages in order, counter C, E errors
 * Connection details go over TCP (PORT, default 18760) as in the rdma-core examples.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <infiniband/verbs.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MARKER 0xA5A5A5A5A5A5A5A5ull
#define MSG 64
#define RECVS 32
#define COUNTER_OFF 0
#define RECV_OFF 4096

enum { KIND_SEQ = 1, KIND_DONE = 2 };
struct msg { uint64_t kind, value; };

struct wire { uint32_t qpn, psn; uint16_t lid; uint8_t gid[16]; uint64_t addr; uint32_t rkey; };

static int errors;

#define FAIL(...) do { fprintf(stderr, "peer_atomics: " __VA_ARGS__); fputc('\n', stderr); exit(1); } while (0)

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int tcp_exchange(const char *host, int port, const struct wire *mine, struct wire *theirs)
{
	int fd = -1;
	char service[16];
	snprintf(service, sizeof(service), "%d", port);
	struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM, .ai_flags = host ? 0 : AI_PASSIVE}, *res;
	if (getaddrinfo(host, service, &hints, &res) != 0)
		FAIL("cannot resolve %s", host ? host : "the listening address");
	if (host) {
		for (int tries = 0; tries < 600; tries++) { /* the server may not listen yet */
			fd = socket(res->ai_family, res->ai_socktype, 0);
			if (connect(fd, res->ai_addr, res->ai_addrlen) == 0)
				break;
			close(fd);
			fd = -1;
			usleep(100000);
		}
		if (fd < 0)
			FAIL("Couldn't connect to %s:%d", host, port);
	} else {
		int l = socket(res->ai_family, res->ai_socktype, 0), one = 1;
		setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(l, res->ai_addr, res->ai_addrlen) != 0 || listen(l, 1) != 0)
			FAIL("cannot listen on port %d: %s", port, strerror(errno));
		fd = accept(l, NULL, NULL);
		close(l);
	}
	freeaddrinfo(res);
	if (write(fd, mine, sizeof(*mine)) != (ssize_t)sizeof(*mine) ||
	    read(fd, theirs, sizeof(*theirs)) != (ssize_t)sizeof(*theirs))
		FAIL("connection details exchange failed");
	return fd;
}

static void poll_one(struct ibv_cq *cq, struct ibv_wc *wc)
{
	int n;
	while ((n = ibv_poll_cq(cq, 1, wc)) == 0)
		;
	if (n < 0)
		FAIL("ibv_poll_cq failed");
	if (wc->status != IBV_WC_SUCCESS)
		FAIL("completion of wr_id %" PRIu64 " failed: %s (%d)", wc->wr_id, ibv_wc_status_str(wc->status), wc->status);
}

int main(int argc, char **argv)
{
	const char *dev_name = NULL;
	int gidx = -1, port = 18760, window = 8, c;
	long iters = 1000;
	while ((c = getopt(argc, argv, "d:g:p:n:w:")) != -1) {
		switch (c) {
		case 'd': dev_name = optarg; break;
		case 'g': gidx = atoi(optarg); break;
		case 'p': port = atoi(optarg); break;
		case 'n': iters = atol(optarg); break;
		case 'w': window = atoi(optarg); break;
		default: FAIL("usage: peer_atomics -d DEV [-g GIDX] [-p PORT] [-n ITERS] [-w WINDOW] [HOST]");
		}
	}
	const char *host = optind < argc ? argv[optind] : NULL;
	if (window < 1 || window > 64 || iters < 1)
		FAIL("bad -w or -n");

	struct ibv_device **list = ibv_get_device_list(NULL);
	struct ibv_device *dev = NULL;
	for (int i = 0; list && list[i]; i++)
		if (!dev_name || strcmp(ibv_get_device_name(list[i]), dev_name) == 0)
			dev = list[i];
	if (!dev)
		FAIL("no device %s", dev_name ? dev_name : "");
	struct ibv_context *ctx = ibv_open_device(dev);
	struct ibv_pd *pd = ctx ? ibv_alloc_pd(ctx) : NULL;
	size_t size = RECV_OFF + RECVS * MSG + (size_t)iters * 8;
	uint8_t *buf = aligned_alloc(4096, (size + 4095) & ~(size_t)4095);
	memset(buf, 0, size);
	struct ibv_mr *mr = pd ? ibv_reg_mr(pd, buf, size, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE |
					   IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC) : NULL;
	struct ibv_cq *scq = mr ? ibv_create_cq(ctx, 128, NULL, NULL, 0) : NULL;
	struct ibv_cq *rcq = scq ? ibv_create_cq(ctx, 128, NULL, NULL, 0) : NULL;
	struct ibv_qp_init_attr ia = {.send_cq = scq, .recv_cq = rcq, .qp_type = IBV_QPT_RC,
				      .cap = {.max_send_wr = 128, .max_recv_wr = RECVS, .max_send_sge = 1, .max_recv_sge = 1}};
	struct ibv_qp *qp = rcq ? ibv_create_qp(pd, &ia) : NULL;
	if (!qp)
		FAIL("cannot make the verbs objects: %s", strerror(errno));
	struct ibv_port_attr pa;
	if (ibv_query_port(ctx, 1, &pa) != 0)
		FAIL("ibv_query_port failed");
	struct wire mine = {.qpn = qp->qp_num, .psn = (uint32_t)(lrand48() & 0xffffff), .lid = pa.lid,
			    .addr = (uintptr_t)buf, .rkey = mr->rkey}, theirs;
	if (gidx >= 0) {
		union ibv_gid g;
		if (ibv_query_gid(ctx, 1, gidx, &g) != 0)
			FAIL("ibv_query_gid failed");
		memcpy(mine.gid, g.raw, 16);
	}
	int fd = tcp_exchange(host, port, &mine, &theirs);

	struct ibv_qp_attr a = {.qp_state = IBV_QPS_INIT, .port_num = 1,
				.qp_access_flags = IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC};
	if (ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS))
		FAIL("QP to INIT failed");
	for (int i = 0; i < RECVS; i++) {
		struct ibv_sge sg = {.addr = (uintptr_t)(buf + RECV_OFF + i * MSG), .length = MSG, .lkey = mr->lkey};
		struct ibv_recv_wr rw = {.wr_id = (uint64_t)i, .sg_list = &sg, .num_sge = 1}, *bad;
		if (ibv_post_recv(qp, &rw, &bad))
			FAIL("ibv_post_recv failed");
	}
	memset(&a, 0, sizeof(a));
	a.qp_state = IBV_QPS_RTR;
	a.path_mtu = IBV_MTU_1024;
	a.dest_qp_num = theirs.qpn;
	a.rq_psn = theirs.psn;
	a.max_dest_rd_atomic = 16;
	a.min_rnr_timer = 12;
	a.ah_attr.dlid = theirs.lid;
	a.ah_attr.port_num = 1;
	if (gidx >= 0) {
		a.ah_attr.is_global = 1;
		a.ah_attr.grh.hop_limit = 1;
		a.ah_attr.grh.sgid_index = (uint8_t)gidx;
		memcpy(a.ah_attr.grh.dgid.raw, theirs.gid, 16);
	}
	if (ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
				      IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER))
		FAIL("QP to RTR failed");
	memset(&a, 0, sizeof(a));
	a.qp_state = IBV_QPS_RTS;
	a.timeout = 14;
	a.retry_cnt = 7;
	a.rnr_retry = 7;
	a.sq_psn = mine.psn;
	a.max_rd_atomic = 16;
	if (ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN |
				      IBV_QP_MAX_QP_RD_ATOMIC))
		FAIL("QP to RTS failed");
	/* Both sides are ready before the client posts anything (its SENDs need our receives). */
	char go = 1;
	if (write(fd, &go, 1) != 1 || read(fd, &go, 1) != 1)
		FAIL("ready exchange failed");
	close(fd);
	volatile uint64_t *counter = (volatile uint64_t *)(buf + COUNTER_OFF);
	double start = now_s();
	struct ibv_wc wc;

	if (!host) { /* server: check the SENDs' order; stop at `done` */
		uint64_t expect = 0, done = UINT64_MAX;
		while (done == UINT64_MAX) {
			poll_one(rcq, &wc);
			struct msg m;
			memcpy(&m, buf + RECV_OFF + wc.wr_id * MSG, sizeof(m));
			if (m.kind == KIND_SEQ) {
				if (m.value != expect) {
					printf("peer_atomics: server: message %" PRIu64 " arrived where %" PRIu64 " was expected\n", m.value, expect);
					errors++;
					expect = m.value;
				}
				expect++;
			} else if (m.kind == KIND_DONE) {
				done = m.value;
			} else {
				printf("peer_atomics: server: a message of kind %" PRIu64 "\n", m.kind);
				errors++;
			}
			struct ibv_sge sg = {.addr = (uintptr_t)(buf + RECV_OFF + wc.wr_id * MSG), .length = MSG, .lkey = mr->lkey};
			struct ibv_recv_wr rw = {.wr_id = wc.wr_id, .sg_list = &sg, .num_sge = 1}, *bad;
			if (ibv_post_recv(qp, &rw, &bad))
				FAIL("ibv_post_recv failed");
		}
		if (*counter != done) {
			printf("peer_atomics: server: the counter is %" PRIu64 " after %" PRIu64 " atomics\n", (uint64_t)*counter, done);
			errors++;
		}
		printf("%" PRIu64 " iters in %.2f seconds\n", done, now_s() - start);
		printf("peer_atomics: server: %" PRIu64 " messages in order, counter %" PRIu64 ", %d errors\n", expect,
		       (uint64_t)*counter, errors);
		return errors ? 1 : 0;
	}

	/* client */
	uint64_t *results = (uint64_t *)(buf + RECV_OFF + RECVS * MSG);
	for (long i = 0; i < iters; i++)
		results[i] = MARKER;
	long posted = 0, completed = 0, lost = 0, wrong = 0;
	uint64_t seq = 0, sends_out = 0;
	struct msg *out = (struct msg *)(buf + 64);
	while (completed < iters) {
		while (posted < iters && posted - completed < window) {
			struct ibv_sge sg = {.addr = (uintptr_t)&results[posted], .length = 8, .lkey = mr->lkey};
			struct ibv_send_wr w = {.wr_id = (uint64_t)posted, .sg_list = &sg, .num_sge = 1,
						.opcode = IBV_WR_ATOMIC_FETCH_AND_ADD, .send_flags = IBV_SEND_SIGNALED}, *bad;
			w.wr.atomic.remote_addr = theirs.addr + COUNTER_OFF;
			w.wr.atomic.rkey = theirs.rkey;
			w.wr.atomic.compare_add = 1;
			if (ibv_post_send(qp, &w, &bad))
				FAIL("ibv_post_send (atomic %ld) failed", posted);
			posted++;
			if (posted % 4 == 0 && sends_out == 0) { /* one SEND at a time: its buffer is reused */
				struct msg m = {KIND_SEQ, seq++};
				struct ibv_sge s2 = {.addr = (uintptr_t)out, .length = sizeof(m), .lkey = mr->lkey};
				memcpy(out, &m, sizeof(m));
				struct ibv_send_wr sw = {.wr_id = UINT64_MAX, .sg_list = &s2, .num_sge = 1,
							 .opcode = IBV_WR_SEND, .send_flags = IBV_SEND_SIGNALED}, *bad2;
				if (ibv_post_send(qp, &sw, &bad2))
					FAIL("ibv_post_send (SEND) failed");
				sends_out = 1;
			}
		}
		poll_one(scq, &wc);
		if (wc.wr_id == UINT64_MAX) {
			sends_out = 0;
			continue;
		}
		if (wc.opcode != IBV_WC_FETCH_ADD)
			FAIL("completion of opcode %d for atomic %" PRIu64, wc.opcode, wc.wr_id);
		if ((long)wc.wr_id != completed)
			FAIL("atomic %" PRIu64 " completed where %ld was expected", wc.wr_id, completed);
		uint64_t r = results[completed];
		if (r == MARKER) {
			lost++;
			printf("peer_atomics: client: atomic %ld completed without its result\n", completed);
		} else if (r != (uint64_t)completed) {
			wrong++;
			if (wrong <= 10)
				printf("peer_atomics: client: atomic %ld returned %" PRIu64 "\n", completed, r);
		}
		completed++;
	}
	while (sends_out) {
		poll_one(scq, &wc);
		if (wc.wr_id == UINT64_MAX)
			sends_out = 0;
	}
	/* The counter, read back. */
	uint64_t *readback = (uint64_t *)(buf + 128);
	*readback = MARKER;
	struct ibv_sge rs = {.addr = (uintptr_t)readback, .length = 8, .lkey = mr->lkey};
	struct ibv_send_wr rd = {.wr_id = 1ull << 62, .sg_list = &rs, .num_sge = 1, .opcode = IBV_WR_RDMA_READ,
				 .send_flags = IBV_SEND_SIGNALED}, *bad;
	rd.wr.rdma.remote_addr = theirs.addr + COUNTER_OFF;
	rd.wr.rdma.rkey = theirs.rkey;
	if (ibv_post_send(qp, &rd, &bad))
		FAIL("ibv_post_send (READ) failed");
	poll_one(scq, &wc);
	uint64_t total = *readback;
	struct msg m = {KIND_DONE, (uint64_t)iters};
	memcpy(out, &m, sizeof(m));
	struct ibv_sge s2 = {.addr = (uintptr_t)out, .length = sizeof(m), .lkey = mr->lkey};
	struct ibv_send_wr sw = {.wr_id = 7, .sg_list = &s2, .num_sge = 1, .opcode = IBV_WR_SEND,
				 .send_flags = IBV_SEND_SIGNALED};
	if (ibv_post_send(qp, &sw, &bad))
		FAIL("ibv_post_send (done) failed");
	poll_one(scq, &wc);
	if (total != (uint64_t)iters)
		errors++;
	printf("%ld iters in %.2f seconds\n", iters, now_s() - start);
	printf("peer_atomics: client: %ld atomics, %ld results lost, %ld wrong results, counter %" PRIu64 ", %d errors\n",
	       iters, lost, wrong, total, errors);
	return (errors || lost || wrong) ? 1 : 0;
}
