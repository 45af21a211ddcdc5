/*
 * Control-path helpers for the Swift core that are easier (or only possible) in C: the one-time
 * start of the Swift state, the process-wide control lock, errno access, the entry points of the
 * real libibverbs that are not part of the lower interface, and the dlsym interposer's state.
 */
#ifndef SV_CONTROL_H
#define SV_CONTROL_H
#include <stddef.h>
#include <stdint.h>
#include <infiniband/verbs.h>
#ifdef __cplusplus
extern "C" {
#endif

/* Runs init exactly once per process (pthread_once); later callers wait for the first to finish. */
void sv_control_once(void (*init)(void));

/* The control-path lock: one recursive mutex for the whole process. Never taken on the data path,
 * never held across a call that may block (get_cq_event, get_async_event, destroy_* waiting for
 * event acknowledgements). Recursive so that a provider re-entering a public verb with a real
 * object from inside a locked verb cannot deadlock. */
void sv_control_lock(void);
void sv_control_unlock(void);

int sv_get_errno(void);
void sv_set_errno(int value);

/* Entry points of the real libibverbs that the lower interface does not carry (rarely used; the
 * software HCA has none of them). Resolved once with dlvsym; NULL slots when absent. */
struct sv_lower_extra {
	int (*rereg_mr)(struct ibv_mr *mr, int flags, struct ibv_pd *pd, void *addr, size_t length,
			int access);
	struct ibv_mr *(*reg_mr_iova)(struct ibv_pd *pd, void *addr, size_t length, uint64_t iova,
				      int access);
	int (*query_qp_data_in_order)(struct ibv_qp *qp, enum ibv_wr_opcode op, uint32_t flags);
	int (*resolve_eth_l2_from_gid)(struct ibv_context *context, struct ibv_ah_attr *attr,
				       uint8_t eth_mac[6], uint16_t *vid);
	struct ibv_mr *(*reg_dmabuf_mr)(struct ibv_pd *pd, uint64_t offset, size_t length,
					uint64_t iova, int fd, int access);
	struct ibv_pd *(*import_pd)(struct ibv_context *context, uint32_t pd_handle);
	void (*unimport_pd)(struct ibv_pd *pd);
	struct ibv_mr *(*import_mr)(struct ibv_pd *pd, uint32_t mr_handle);
	void (*unimport_mr)(struct ibv_mr *mr);
	struct ibv_dm *(*import_dm)(struct ibv_context *context, uint32_t dm_handle);
	void (*unimport_dm)(struct ibv_dm *dm);
	struct ibv_context *(*import_device)(int cmd_fd);
};
const struct sv_lower_extra *sv_lower_real_extra(void);

/* The dlsym interposer (sv_dlsym.c): for a handle of libibverbs.so.1 and an ibv_* name this
 * library defines, dlsym returns the shim's function; everything else goes to the C library's
 * dlsym by a tail call (so RTLD_NEXT keeps meaning "after the caller"). Counts redirections. */
unsigned long sv_dlsym_redirections(void);

/* Size of the compat port attribute block (struct _compat_ibv_port_attr of rdma-core 44). */
size_t sv_compat_port_attr_size(void);

#ifdef __cplusplus
}
#endif
#endif
