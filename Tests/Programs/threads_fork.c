/*
 * threads_fork: several threads, each creating its own connected RC QP pair and then posting and
 * polling on it concurrently (SEND ping-pong and RDMA WRITE, every payload checked), while the main
 * thread fork()s children that do not use verbs: one only inspects memory (including a registered
 * buffer) and exits, one exec()s /bin/true. Every child must exit 0 and the parent keeps working
 * (its own QP pair, before and after each fork).
 *
 *   threads_fork [-t threads] [-n iterations] [-f forks]
 */
#include "common.h"
#include <pthread.h>
#include <sys/wait.h>

#define RECV_OFF 32768
#define WRITE_OFF 16384
#define LEN 256

static struct tp_dev da, dbs, *db;
static int iters = 500;
static volatile int thread_errors;
static volatile int progress[64];
static pthread_mutex_t create_lock = PTHREAD_MUTEX_INITIALIZER;
static int serialize_create;

static void pingpong(struct tp_end *a, struct tp_end *b, int i, uint32_t base, int *errs, int *done)
{
	struct ibv_wc wc;
	/* SEND a -> b */
	tp_fill(a->buf, LEN, base + (uint32_t)i);
	struct ibv_sge sg = {.addr = (uintptr_t)a->buf, .length = LEN, .lkey = a->mr->lkey};
	struct tp_wr w = {.op = TP_SEND, .wr_id = (uint64_t)i, .sg = &sg, .num_sge = 1};
	int rc = tp_post(a, &w, 0);
	TP_CHECK(rc == 0, "post SEND failed: %s", strerror(rc));
	tp_expect(a->scq, &wc, IBV_WC_SEND, (uint64_t)i, "SEND");
	tp_expect(b->rcq, &wc, IBV_WC_RECV, (uint64_t)i, "RECV");
	if (wc.qp_num != b->qp->qp_num || wc.byte_len != LEN)
		(*errs)++;
	*errs += tp_verify(b->buf + RECV_OFF, LEN, base + (uint32_t)i, "SEND payload");
	tp_post_recv(b, (uint64_t)i + 1, b->buf + RECV_OFF, LEN);
	/* RDMA WRITE b -> a */
	tp_fill(b->buf, LEN, base + 7u * (uint32_t)i);
	sg = (struct ibv_sge){.addr = (uintptr_t)b->buf, .length = LEN, .lkey = b->mr->lkey};
	w = (struct tp_wr){.op = TP_WRITE, .wr_id = (uint64_t)i, .sg = &sg, .num_sge = 1,
			   .raddr = (uintptr_t)(a->buf + WRITE_OFF), .rkey = a->mr->rkey};
	rc = tp_post(b, &w, 0);
	TP_CHECK(rc == 0, "post RDMA WRITE failed: %s", strerror(rc));
	tp_expect(b->scq, &wc, IBV_WC_RDMA_WRITE, (uint64_t)i, "RDMA WRITE");
	*errs += tp_verify(a->buf + WRITE_OFF, LEN, base + 7u * (uint32_t)i, "RDMA WRITE payload");
	(*done)++;
}

static void make_pair(struct tp_end *a, struct tp_end *b)
{
	struct tp_qp_opts o = {.type = IBV_QPT_RC};
	if (serialize_create)
		pthread_mutex_lock(&create_lock);
	tp_end_create(a, &da, &o);
	tp_end_create(b, db, &o);
	tp_connect_rc(a, b);
	if (serialize_create)
		pthread_mutex_unlock(&create_lock);
	tp_post_recv(b, 0, b->buf + RECV_OFF, LEN);
}

static void *worker(void *arg)
{
	int id = (int)(intptr_t)arg, errs = 0, done = 0;
	struct tp_end a, b;
	make_pair(&a, &b);
	for (int i = 0; i < iters; i++) {
		pingpong(&a, &b, i, (uint32_t)id * 1000003u, &errs, &done);
		progress[id] = done;
	}
	tp_end_destroy(&a, 1);
	tp_end_destroy(&b, 1);
	__atomic_add_fetch(&thread_errors, errs, __ATOMIC_SEQ_CST);
	return NULL;
}

static uint8_t pattern_copy[4096];

/* Child: async-signal-safe work only. */
static void child(int kind, const uint8_t *registered)
{
	alarm(10); /* alarms are not inherited: the child's own watchdog */
	if (kind == 1) {
		char *argv[] = {"true", NULL};
		char *envp[] = {NULL};
		execve("/bin/true", argv, envp);
		execve("/usr/bin/true", argv, envp);
		_exit(3);
	}
	/* The registered buffer and a plain one are readable and hold what the parent wrote. */
	if (memcmp(registered, pattern_copy, sizeof(pattern_copy)) != 0)
		_exit(4);
	static uint8_t scratch[1 << 16];
	for (size_t i = 0; i < sizeof(scratch); i++)
		scratch[i] = (uint8_t)i;
	unsigned sum = 0;
	for (size_t i = 0; i < sizeof(scratch); i++)
		sum += scratch[i];
	_exit(sum == 255u * 128u * 256u ? 0 : 5);
}

int main(int argc, char **argv)
{
	int nthreads = 4, nforks = 6, opt;
	while ((opt = getopt(argc, argv, "t:n:f:")) != -1) {
		switch (opt) {
		case 't': nthreads = atoi(optarg); break;
		case 'n': iters = atoi(optarg); break;
		case 'f': nforks = atoi(optarg); break;
		default: fprintf(stderr, "usage: threads_fork [-t threads] [-n iterations] [-f forks]\n"); return 2;
		}
	}
	tp_start("threads_fork", 90);
	TP_CHECK(nthreads >= 1 && nthreads <= 64, "-t must be 1..64");
	serialize_create = tp_env_int("SVTEST_SERIALIZE_CREATE", 0);
	int rc = ibv_fork_init();
	TP_CHECK(rc == 0, "ibv_fork_init failed: %s", strerror(rc));
	tp_open(&da, &dbs, &db);

	/* The main thread's own pair, with a known pattern in a registered buffer for the children. */
	struct tp_end ma, mb;
	make_pair(&ma, &mb);
	tp_fill(ma.buf + RECV_OFF + 4096, sizeof(pattern_copy), 99);
	memcpy(pattern_copy, ma.buf + RECV_OFF + 4096, sizeof(pattern_copy));

	pthread_t th[64];
	for (int t = 0; t < nthreads; t++)
		TP_CHECK(pthread_create(&th[t], NULL, worker, (void *)(intptr_t)t) == 0, "pthread_create failed");

	int merrs = 0, mdone = 0, mi = 0, children_ok = 0;
	for (int f = 0; f < nforks; f++) {
		for (int k = 0; k < 20; k++, mi++)
			pingpong(&ma, &mb, mi, 0xABCDu, &merrs, &mdone);
		fflush(stdout);
		pid_t pid = fork();
		TP_CHECK(pid >= 0, "fork failed: %s", strerror(errno));
		if (pid == 0)
			child(f % 2, ma.buf + RECV_OFF + 4096);
		/* The parent keeps working while the child runs. */
		for (int k = 0; k < 20; k++, mi++)
			pingpong(&ma, &mb, mi, 0xABCDu, &merrs, &mdone);
		int status = 0;
		pid_t w;
		while ((w = waitpid(pid, &status, 0)) < 0 && errno == EINTR)
			;
		TP_CHECK(w == pid, "waitpid failed: %s", strerror(errno));
		if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
			children_ok++;
		} else {
			printf("threads_fork: child %d (%s) ended with %s %d\n", f, f % 2 ? "exec" : "memory",
			       WIFEXITED(status) ? "exit status" : "signal",
			       WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
			merrs++;
		}
	}
	for (int t = 0; t < nthreads; t++)
		pthread_join(th[t], NULL);
	for (int t = 0; t < nthreads; t++)
		if (progress[t] != iters) {
			printf("threads_fork: thread %d did %d of %d iterations\n", t, progress[t], iters);
			merrs++;
		}
	/* And after all that, the main pair still works. */
	for (int k = 0; k < 20; k++, mi++)
		pingpong(&ma, &mb, mi, 0xABCDu, &merrs, &mdone);
	tp_end_destroy(&ma, 1);
	tp_end_destroy(&mb, 1);
	if (db != &da)
		tp_close_dev(db);
	tp_close_dev(&da);
	int errors = merrs + thread_errors;
	printf("threads_fork: %d threads x %d iterations, %d forks (%d children exited 0), %d errors\n", nthreads,
	       iters, nforks, children_ok, errors);
	return errors ? 1 : 0;
}
