/* The real libibverbs behind the lower interface: every entry a dlvsym pointer, resolved once. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include "sv_lower.h"

static struct sv_lower real_lower;
static const char *real_why;
static pthread_once_t real_once = PTHREAD_ONCE_INIT;

static void *resolve(void *lib, const char *name, const char *version)
{
	void *f = dlvsym(lib, name, version);
	return f;
}

#define R(slot, name, version) real_lower.slot = (__typeof__(real_lower.slot))resolve(lib, name, version)

static void load_real(void)
{
	void *lib = dlopen("libibverbs.so.1", RTLD_NOW | RTLD_GLOBAL);
	if (!lib) {
		real_why = dlerror();
		return;
	}
	real_lower.name = "libibverbs";
	R(get_device_list, "ibv_get_device_list", "IBVERBS_1.1");
	R(free_device_list, "ibv_free_device_list", "IBVERBS_1.1");
	R(get_device_name, "ibv_get_device_name", "IBVERBS_1.1");
	R(get_device_guid, "ibv_get_device_guid", "IBVERBS_1.1");
	R(get_device_index, "ibv_get_device_index", "IBVERBS_1.9");
	R(open_device, "ibv_open_device", "IBVERBS_1.1");
	R(close_device, "ibv_close_device", "IBVERBS_1.1");
	R(query_device, "ibv_query_device", "IBVERBS_1.1");
	R(query_gid, "ibv_query_gid", "IBVERBS_1.1");
	R(query_gid_ex, "_ibv_query_gid_ex", "IBVERBS_1.11");
	R(query_gid_table, "_ibv_query_gid_table", "IBVERBS_1.11");
	R(query_pkey, "ibv_query_pkey", "IBVERBS_1.1");
	R(get_pkey_index, "ibv_get_pkey_index", "IBVERBS_1.5");
	R(alloc_pd, "ibv_alloc_pd", "IBVERBS_1.1");
	R(dealloc_pd, "ibv_dealloc_pd", "IBVERBS_1.1");
	R(reg_mr, "ibv_reg_mr", "IBVERBS_1.1");
	R(reg_mr_iova2, "ibv_reg_mr_iova2", "IBVERBS_1.8");
	R(dereg_mr, "ibv_dereg_mr", "IBVERBS_1.1");
	R(create_comp_channel, "ibv_create_comp_channel", "IBVERBS_1.0");
	R(destroy_comp_channel, "ibv_destroy_comp_channel", "IBVERBS_1.0");
	R(create_cq, "ibv_create_cq", "IBVERBS_1.1");
	R(resize_cq, "ibv_resize_cq", "IBVERBS_1.1");
	R(destroy_cq, "ibv_destroy_cq", "IBVERBS_1.1");
	R(get_cq_event, "ibv_get_cq_event", "IBVERBS_1.1");
	R(ack_cq_events, "ibv_ack_cq_events", "IBVERBS_1.1");
	R(get_async_event, "ibv_get_async_event", "IBVERBS_1.1");
	R(ack_async_event, "ibv_ack_async_event", "IBVERBS_1.1");
	R(create_qp, "ibv_create_qp", "IBVERBS_1.1");
	R(modify_qp, "ibv_modify_qp", "IBVERBS_1.1");
	R(query_qp, "ibv_query_qp", "IBVERBS_1.1");
	R(destroy_qp, "ibv_destroy_qp", "IBVERBS_1.1");
	R(qp_to_qp_ex, "ibv_qp_to_qp_ex", "IBVERBS_1.6");
	R(query_ece, "ibv_query_ece", "IBVERBS_1.10");
	R(set_ece, "ibv_set_ece", "IBVERBS_1.10");
	R(create_srq, "ibv_create_srq", "IBVERBS_1.1");
	R(modify_srq, "ibv_modify_srq", "IBVERBS_1.1");
	R(query_srq, "ibv_query_srq", "IBVERBS_1.1");
	R(destroy_srq, "ibv_destroy_srq", "IBVERBS_1.1");
	R(create_ah, "ibv_create_ah", "IBVERBS_1.1");
	R(destroy_ah, "ibv_destroy_ah", "IBVERBS_1.1");
	R(init_ah_from_wc, "ibv_init_ah_from_wc", "IBVERBS_1.1");
	R(attach_mcast, "ibv_attach_mcast", "IBVERBS_1.1");
	R(detach_mcast, "ibv_detach_mcast", "IBVERBS_1.1");
	R(fork_init, "ibv_fork_init", "IBVERBS_1.1");
	if (!real_lower.open_device || !real_lower.get_device_list) {
		real_why = "libibverbs.so.1 lacks IBVERBS_1.1 symbols";
		return;
	}
}

const struct sv_lower *sv_lower_real(const char **why)
{
	pthread_once(&real_once, load_real);
	if (real_why) {
		if (why)
			*why = real_why;
		return NULL;
	}
	return &real_lower;
}
