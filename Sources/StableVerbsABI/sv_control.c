/* Control-path helpers: once, the control lock, errno, extra real entry points. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include "sv_control.h"

static pthread_once_t control_once = PTHREAD_ONCE_INIT;
static void (*control_init)(void);
static pthread_mutex_t control_mutex = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;

static void run_control_init(void)
{
	if (control_init)
		control_init();
}

void sv_control_once(void (*init)(void))
{
	/* Only the first caller's routine matters; every caller passes the same one. */
	if (!__atomic_load_n(&control_init, __ATOMIC_ACQUIRE))
		__atomic_store_n(&control_init, init, __ATOMIC_RELEASE);
	pthread_once(&control_once, run_control_init);
}

/* Fork. The shim's own threads (the watcher, the peer service, the control socket) take the
 * control lock from time to time; a fork while one of them held it would leave the child's copy
 * locked for ever, by a thread the child does not have, and the child's first control-path call
 * (opening a device, stableverbs_control_path, ...) would hang. So fork waits until the lock is
 * free and holds it across; the child starts with a fresh, unlocked one (its owner in the parent
 * is not a thread of the child: a recursive mutex cannot be unlocked there, only re-made). */
static void control_prepare(void)
{
	pthread_mutex_lock(&control_mutex);
}

static void control_parent(void)
{
	pthread_mutex_unlock(&control_mutex);
}

static void control_child(void)
{
	pthread_mutex_t fresh = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
	control_mutex = fresh;
}

__attribute__((constructor)) static void control_atfork(void)
{
	pthread_atfork(control_prepare, control_parent, control_child);
}

void sv_control_lock(void)
{
	pthread_mutex_lock(&control_mutex);
}

void sv_control_unlock(void)
{
	pthread_mutex_unlock(&control_mutex);
}

int sv_get_errno(void)
{
	return errno;
}

void sv_set_errno(int value)
{
	errno = value;
}

static struct sv_lower_extra extra;
static pthread_once_t extra_once = PTHREAD_ONCE_INIT;

static void load_extra(void)
{
	void *lib = dlopen("libibverbs.so.1", RTLD_NOW | RTLD_NOLOAD);
	if (!lib)
		lib = dlopen("libibverbs.so.1", RTLD_NOW | RTLD_GLOBAL);
	if (!lib)
		return;
	extra.rereg_mr = (__typeof__(extra.rereg_mr))dlvsym(lib, "ibv_rereg_mr", "IBVERBS_1.1");
	extra.reg_mr_iova = (__typeof__(extra.reg_mr_iova))dlvsym(lib, "ibv_reg_mr_iova", "IBVERBS_1.7");
	extra.query_qp_data_in_order = (__typeof__(extra.query_qp_data_in_order))dlvsym(
		lib, "ibv_query_qp_data_in_order", "IBVERBS_1.14");
	extra.resolve_eth_l2_from_gid = (__typeof__(extra.resolve_eth_l2_from_gid))dlvsym(
		lib, "ibv_resolve_eth_l2_from_gid", "IBVERBS_1.1");
	extra.reg_dmabuf_mr = (__typeof__(extra.reg_dmabuf_mr))dlvsym(lib, "ibv_reg_dmabuf_mr", "IBVERBS_1.12");
	extra.import_pd = (__typeof__(extra.import_pd))dlvsym(lib, "ibv_import_pd", "IBVERBS_1.10");
	extra.unimport_pd = (__typeof__(extra.unimport_pd))dlvsym(lib, "ibv_unimport_pd", "IBVERBS_1.10");
	extra.import_mr = (__typeof__(extra.import_mr))dlvsym(lib, "ibv_import_mr", "IBVERBS_1.10");
	extra.unimport_mr = (__typeof__(extra.unimport_mr))dlvsym(lib, "ibv_unimport_mr", "IBVERBS_1.10");
	extra.import_dm = (__typeof__(extra.import_dm))dlvsym(lib, "ibv_import_dm", "IBVERBS_1.13");
	extra.unimport_dm = (__typeof__(extra.unimport_dm))dlvsym(lib, "ibv_unimport_dm", "IBVERBS_1.13");
	extra.import_device = (__typeof__(extra.import_device))dlvsym(lib, "ibv_import_device", "IBVERBS_1.10");
}

const struct sv_lower_extra *sv_lower_real_extra(void)
{
	pthread_once(&extra_once, load_extra);
	return &extra;
}

/* rdma-core 44's struct _compat_ibv_port_attr is struct ibv_port_attr up to and including `flags`. */
size_t sv_compat_port_attr_size(void)
{
	return offsetof(struct ibv_port_attr, port_cap_flags2);
}
_Static_assert(offsetof(struct ibv_port_attr, port_cap_flags2) == 48, "compat port attr is 48 bytes");
