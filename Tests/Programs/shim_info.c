/*
 * shim_info: reports whether the shim is in this process and what it drives, from inside the
 * program (found with dlsym(RTLD_DEFAULT), so it needs no link-time dependency on the shim):
 *     shim_info: active=1 lower=softhca version=X.Y.Z devices=N
 * or  shim_info: no shim
 * then one line per device. Exits 0 unless listing the devices fails.
 */
#include "common.h"
#include <dlfcn.h>

int main(void)
{
	tp_start("shim_info", 30);
	int (*is_active)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "stableverbs_is_active");
	const char *(*lower)(void) = (const char *(*)(void))dlsym(RTLD_DEFAULT, "stableverbs_lower_name");
	const char *(*version)(void) = (const char *(*)(void))dlsym(RTLD_DEFAULT, "stableverbs_version");
	int n = 0;
	struct ibv_device **list = ibv_get_device_list(&n);
	TP_CHECK(list, "ibv_get_device_list failed: %s", strerror(errno));
	if (is_active && lower && version)
		printf("shim_info: active=%d lower=%s version=%s devices=%d\n", is_active(), lower(), version(), n);
	else
		printf("shim_info: no shim, devices=%d\n", n);
	for (int i = 0; i < n; i++) {
		struct ibv_context *ctx = ibv_open_device(list[i]);
		TP_CHECK(ctx, "ibv_open_device(%s) failed", ibv_get_device_name(list[i]));
		struct ibv_device_attr da;
		TP_CHECK(ibv_query_device(ctx, &da) == 0, "ibv_query_device failed");
		for (uint8_t p = 1; p <= da.phys_port_cnt; p++) {
			struct ibv_port_attr pa;
			TP_CHECK(ibv_query_port(ctx, p, &pa) == 0, "ibv_query_port failed");
			printf("shim_info: device %s port %u link=%s state=%d lid=%u gids=%d\n",
			       ibv_get_device_name(list[i]), p,
			       pa.link_layer == IBV_LINK_LAYER_ETHERNET ? "eth" : "ib", (int)pa.state, pa.lid,
			       pa.gid_tbl_len);
		}
		TP_CHECK(ibv_close_device(ctx) == 0, "ibv_close_device failed");
	}
	ibv_free_device_list(list);
	return 0;
}
