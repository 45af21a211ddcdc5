/*
 * The lower interface: the libibverbs entry points the shim reaches *by symbol*.
 *
 * Everything rdma-core reaches through pointers inside its objects (context->ops.post_send,
 * verbs_context->create_qp_ex, ibv_qp_ex->wr_*, ...) is called on the real object directly and is
 * not in this table. Two implementations fill it:
 *   - the real libibverbs, every slot a cached dlvsym() pointer (sv_lower_real(), sv_real.c);
 *   - the software HCA test double (SoftHCA module), whose objects are genuine rdma-core 44
 *     structures with their op pointers set, exactly like a provider's.
 * The shim never calls an ibv_* function by name: inside libstableverbs.so that name is the shim.
 */
#ifndef SV_LOWER_H
#define SV_LOWER_H

#include <infiniband/verbs.h>

#ifdef __cplusplus
extern "C" {
#endif

struct sv_lower {
	const char *name; /* "libibverbs" or "softhca" */

	/* devices */
	struct ibv_device **(*get_device_list)(int *num_devices);
	void (*free_device_list)(struct ibv_device **list);
	const char *(*get_device_name)(struct ibv_device *device);
	__be64 (*get_device_guid)(struct ibv_device *device);
	int (*get_device_index)(struct ibv_device *device);
	struct ibv_context *(*open_device)(struct ibv_device *device);
	int (*close_device)(struct ibv_context *context);

	/* queries (query_port and query_device_ex go through the real verbs_context) */
	int (*query_device)(struct ibv_context *context, struct ibv_device_attr *attr);
	int (*query_gid)(struct ibv_context *context, uint8_t port_num, int index, union ibv_gid *gid);
	int (*query_gid_ex)(struct ibv_context *context, uint32_t port_num, uint32_t gid_index,
			    struct ibv_gid_entry *entry, uint32_t flags, size_t entry_size);
	ssize_t (*query_gid_table)(struct ibv_context *context, struct ibv_gid_entry *entries,
				   size_t max_entries, uint32_t flags, size_t entry_size);
	int (*query_pkey)(struct ibv_context *context, uint8_t port_num, int index, __be16 *pkey);
	int (*get_pkey_index)(struct ibv_context *context, uint8_t port_num, __be16 pkey);

	/* protection domains and memory */
	struct ibv_pd *(*alloc_pd)(struct ibv_context *context);
	int (*dealloc_pd)(struct ibv_pd *pd);
	struct ibv_mr *(*reg_mr)(struct ibv_pd *pd, void *addr, size_t length, int access);
	struct ibv_mr *(*reg_mr_iova2)(struct ibv_pd *pd, void *addr, size_t length, uint64_t iova,
				       unsigned int access);
	int (*dereg_mr)(struct ibv_mr *mr);

	/* completion channels, CQs, events */
	struct ibv_comp_channel *(*create_comp_channel)(struct ibv_context *context);
	int (*destroy_comp_channel)(struct ibv_comp_channel *channel);
	struct ibv_cq *(*create_cq)(struct ibv_context *context, int cqe, void *cq_context,
				    struct ibv_comp_channel *channel, int comp_vector);
	int (*resize_cq)(struct ibv_cq *cq, int cqe);
	int (*destroy_cq)(struct ibv_cq *cq);
	int (*get_cq_event)(struct ibv_comp_channel *channel, struct ibv_cq **cq, void **cq_context);
	void (*ack_cq_events)(struct ibv_cq *cq, unsigned int nevents);
	int (*get_async_event)(struct ibv_context *context, struct ibv_async_event *event);
	void (*ack_async_event)(struct ibv_async_event *event);

	/* QPs, SRQs */
	struct ibv_qp *(*create_qp)(struct ibv_pd *pd, struct ibv_qp_init_attr *attr);
	int (*modify_qp)(struct ibv_qp *qp, struct ibv_qp_attr *attr, int attr_mask);
	int (*query_qp)(struct ibv_qp *qp, struct ibv_qp_attr *attr, int attr_mask,
			struct ibv_qp_init_attr *init_attr);
	int (*destroy_qp)(struct ibv_qp *qp);
	struct ibv_qp_ex *(*qp_to_qp_ex)(struct ibv_qp *qp);
	int (*query_ece)(struct ibv_qp *qp, struct ibv_ece *ece);
	int (*set_ece)(struct ibv_qp *qp, struct ibv_ece *ece);
	struct ibv_srq *(*create_srq)(struct ibv_pd *pd, struct ibv_srq_init_attr *attr);
	int (*modify_srq)(struct ibv_srq *srq, struct ibv_srq_attr *attr, int attr_mask);
	int (*query_srq)(struct ibv_srq *srq, struct ibv_srq_attr *attr);
	int (*destroy_srq)(struct ibv_srq *srq);

	/* address handles, multicast */
	struct ibv_ah *(*create_ah)(struct ibv_pd *pd, struct ibv_ah_attr *attr);
	int (*destroy_ah)(struct ibv_ah *ah);
	int (*init_ah_from_wc)(struct ibv_context *context, uint8_t port_num, struct ibv_wc *wc,
			       struct ibv_grh *grh, struct ibv_ah_attr *ah_attr);
	int (*attach_mcast)(struct ibv_qp *qp, const union ibv_gid *gid, uint16_t lid);
	int (*detach_mcast)(struct ibv_qp *qp, const union ibv_gid *gid, uint16_t lid);

	/* process-wide */
	int (*fork_init)(void);
};

/* The real libibverbs, resolved once with dlvsym (NULL slots for symbols the library lacks).
 * Returns NULL, with a reason in *why, when libibverbs.so.1 cannot be loaded. */
const struct sv_lower *sv_lower_real(const char **why);

#ifdef __cplusplus
}
#endif
#endif /* SV_LOWER_H */
