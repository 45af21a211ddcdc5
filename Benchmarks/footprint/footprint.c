/*
 * footprint: memory per virtual object. Creates N objects of one kind (qp, mr, cq, pd) on the
 * first device and prints what the process's heap (mallinfo2: bytes in use, in arenas and mmap'd
 * chunks) and resident set (VmRSS) grew by, per object. Run it under the shim and with the shim
 * inert (STABLEVERBS_PASSTHROUGH=1) over the same lower provider: the difference is the shim's
 * memory per object (virtual object, journal record, handle-table entries).
 *
 *   footprint KIND N [JSON-LABEL]     KIND: qp | mr | cq | pd
 *
 * Prints one line of JSON.
 */
#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <infiniband/verbs.h>

static long rss_kib(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long v = -1;
	while (f && fgets(line, sizeof line, f))
		if (sscanf(line, "VmRSS: %ld kB", &v) == 1)
			break;
	if (f)
		fclose(f);
	return v;
}

static size_t heap_bytes(void)
{
	struct mallinfo2 m = mallinfo2();
	return m.uordblks + m.hblkhd;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: footprint qp|mr|cq|pd N [LABEL]\n");
		return 2;
	}
	const char *kind = argv[1], *label = argc > 3 ? argv[3] : "";
	int n = atoi(argv[2]);
	int nd = 0;
	struct ibv_device **list = ibv_get_device_list(&nd);
	if (!list || nd == 0) {
		fprintf(stderr, "footprint: no device\n");
		return 1;
	}
	struct ibv_context *ctx = ibv_open_device(list[0]);
	struct ibv_pd *pd = ctx ? ibv_alloc_pd(ctx) : NULL;
	struct ibv_cq *cq = ctx ? ibv_create_cq(ctx, 16, NULL, NULL, 0) : NULL;
	char *buf = aligned_alloc(4096, 4096);
	if (!pd || !cq || !buf) {
		fprintf(stderr, "footprint: setup failed: %s\n", strerror(errno));
		return 1;
	}
	void **objs = calloc(n, sizeof(void *));
	/* one object first (lazy tables, first-use allocations), then measure the next n */
	for (int warm = 1; warm >= 0; warm--) {
		size_t h0 = heap_bytes();
		long r0 = rss_kib();
		int count = warm ? 1 : n;
		for (int i = 0; i < count; i++) {
			void *o = NULL;
			if (!strcmp(kind, "qp")) {
				struct ibv_qp_init_attr qa = {.send_cq = cq, .recv_cq = cq, .qp_type = IBV_QPT_RC,
							      .cap = {.max_send_wr = 16, .max_recv_wr = 16, .max_send_sge = 1, .max_recv_sge = 1}};
				o = ibv_create_qp(pd, &qa);
			} else if (!strcmp(kind, "mr")) {
				o = ibv_reg_mr(pd, buf, 4096, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
			} else if (!strcmp(kind, "cq")) {
				o = ibv_create_cq(ctx, 16, NULL, NULL, 0);
			} else if (!strcmp(kind, "pd")) {
				o = ibv_alloc_pd(ctx);
			} else {
				fprintf(stderr, "footprint: unknown kind %s\n", kind);
				return 2;
			}
			if (!o) {
				fprintf(stderr, "footprint: creating %s #%d failed: %s\n", kind, i, strerror(errno));
				return 1;
			}
			if (!warm)
				objs[i] = o;
		}
		if (!warm) {
			size_t h1 = heap_bytes();
			long r1 = rss_kib();
			printf("{\"suite\":\"footprint\",\"label\":\"%s\",\"kind\":\"%s\",\"objects\":%d,\"heap_bytes\":%zd,"
			       "\"rss_kib\":%ld,\"heap_bytes_per_object\":%.1f,\"rss_bytes_per_object\":%.1f}\n",
			       label, kind, n, (ssize_t)(h1 - h0), r1 - r0, (double)(ssize_t)(h1 - h0) / n, (r1 - r0) * 1024.0 / n);
		}
	}
	return 0;
}
