/*
 * portevents: a port's own events reach the application; those that come with a loss or a move
 * do not (native verbs would not have sent them: the application's port never went down).
 *   1. the port goes down and comes back (the device stays): IBV_EVENT_PORT_ERR, then
 *      IBV_EVENT_PORT_ACTIVE, each once, in order (the shim holds them STABLEVERBS_EVENT_GRACE_MS);
 *   2. the port goes down and the device is lost right after (fatal), then comes back: the
 *      recovery, and no event at all;
 *   3. after that move, the port goes down and comes back again: both shown again.
 * Run through the shim on the software HCA (one device). Prints "portevents: 4 events shown,
 * 0 errors" and exits 0 when every check passed.
 */
#include <dlfcn.h>
#include <poll.h>

#include "common.h"
#include "stableverbs.h"

static int errors;
#define check(cond, ...)                                                                                                 \
	do {                                                                                                             \
		if (!(cond)) {                                                                                           \
			fprintf(stderr, "portevents: " __VA_ARGS__);                                                     \
			fputc('\n', stderr);                                                                             \
			errors++;                                                                                        \
		}                                                                                                        \
	} while (0)

/* The next async event within `seconds` (-1: none came). */
static int next_event(struct ibv_context *ctx, double seconds)
{
	struct pollfd p = {.fd = ctx->async_fd, .events = POLLIN};
	if (poll(&p, 1, (int)(seconds * 1000)) <= 0)
		return -1;
	struct ibv_async_event e;
	TP_CHECK(ibv_get_async_event(ctx, &e) == 0, "ibv_get_async_event failed after poll said readable");
	int type = e.event_type;
	ibv_ack_async_event(&e);
	return type;
}

static __typeof__(&stableverbs_recovery_stats) sv_stats;
static __typeof__(&stableverbs_real_device_name) sv_real_name;

static uint64_t recoveries(void)
{
	struct stableverbs_recovery_stats st;
	memset(&st, 0, sizeof(st));
	TP_CHECK(sv_stats(&st, sizeof(st)) == 0, "stableverbs_recovery_stats failed");
	return st.count;
}

static int (*set_port)(const char *, int, int);

/* The port goes down and comes back: PORT_ERR then PORT_ACTIVE, nothing more. Returns the events seen. */
static int down_and_up(struct tp_dev *d, int step)
{
	TP_CHECK(set_port(d->name, 1, 0) == 0, "taking port 1 down failed");
	int down = next_event(d->ctx, 5);
	check(down == IBV_EVENT_PORT_ERR, "%d: event %d, expected IBV_EVENT_PORT_ERR", step, down);
	TP_CHECK(set_port(d->name, 1, 1) == 0, "bringing port 1 up failed");
	int up = next_event(d->ctx, 5);
	check(up == IBV_EVENT_PORT_ACTIVE, "%d: event %d, expected IBV_EVENT_PORT_ACTIVE", step, up);
	int more = next_event(d->ctx, 1);
	check(more < 0, "%d: one more event %d", step, more);
	return (down >= 0) + (up >= 0);
}

int main(void)
{
	tp_start("portevents", 60);
	set_port = (int (*)(const char *, int, int))dlsym(RTLD_DEFAULT, "stableverbs_softhca_set_port");
	int (*sh_remove)(const char *, int) = (int (*)(const char *, int))dlsym(RTLD_DEFAULT, "stableverbs_softhca_remove_device");
	int (*sh_restore)(const char *, const char *, int) =
		(int (*)(const char *, const char *, int))dlsym(RTLD_DEFAULT, "stableverbs_softhca_restore_device");
	sv_stats = (__typeof__(sv_stats))dlsym(RTLD_DEFAULT, "stableverbs_recovery_stats");
	sv_real_name = (__typeof__(sv_real_name))dlsym(RTLD_DEFAULT, "stableverbs_real_device_name");
	TP_CHECK(set_port && sh_remove && sh_restore && sv_stats && sv_real_name, "run through the shim on the software HCA (no stableverbs_softhca_* symbols)");

	struct tp_dev d, *b_dev;
	tp_open(&d, &d, &b_dev);
	int ev;

	/* 1. The port's own down and up. */
	int shown = down_and_up(&d, 1);

	/* 2. The port goes down with the device: nothing shown. */
	uint64_t before = recoveries();
	TP_CHECK(set_port(d.name, 1, 0) == 0, "taking port 1 down failed");
	usleep(50000); /* the shim reads the PORT_ERR while the device is still listed */
	TP_CHECK(sh_remove(d.name, 0) == 0, "removing %s failed", d.name);
	char nm[64];
	double deadline = tp_now() + 10;
	while (sv_real_name(d.ctx, nm, sizeof(nm)) != ENOENT && tp_now() < deadline)
		usleep(1000);
	TP_CHECK(sh_restore(d.name, NULL, 0) == 0, "restoring %s failed", d.name);
	deadline = tp_now() + 20;
	while (recoveries() == before && tp_now() < deadline)
		usleep(1000);
	check(recoveries() == before + 1, "2: %llu recoveries, expected %llu", (unsigned long long)recoveries(),
	      (unsigned long long)before + 1);
	ev = next_event(d.ctx, 1.5);
	check(ev < 0, "2: the application was shown event %d of the loss", ev);
	struct ibv_port_attr pa;
	TP_CHECK(ibv_query_port(d.ctx, 1, &pa) == 0, "ibv_query_port failed");
	check(pa.state == IBV_PORT_ACTIVE, "2: port state %d after the move", pa.state);

	/* 3. After the move, the port's own down and up again. */
	shown += down_and_up(&d, 3);

	printf("portevents: %d events shown, %d errors\n", shown, errors);
	return errors ? 1 : 0;
}
