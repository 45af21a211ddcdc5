/*
 * StableVerbs public C API.
 *
 * A program that links libstableverbs.so (or runs under LD_PRELOAD=libstableverbs.so) keeps using
 * <infiniband/verbs.h> as usual; every verbs object it gets is a virtual one whose identities (QPN,
 * LID, GID, lkey, rkey) never change. This header adds what the plain verbs API cannot say: whether
 * the shim is active, and the real identities behind the virtual ones.
 *
 * Every function returns 0 on success or an errno value (EINVAL for an object that is not one of the
 * shim's, ENOENT when no real counterpart exists right now), and never blocks.
 */
#ifndef STABLEVERBS_H
#define STABLEVERBS_H

#include <stdint.h>
#include <infiniband/verbs.h>

#ifdef __cplusplus
extern "C" {
#endif

#define STABLEVERBS_API_VERSION 1

/* "MAJOR.MINOR.PATCH" of the library. */
const char *stableverbs_version(void);

/* 1 when verbs calls go through the shim's virtual objects; 0 in pass-through mode
 * (STABLEVERBS_PASSTHROUGH=1), where every call goes straight to the lower interface. */
int stableverbs_is_active(void);

/* Name of the lower interface in use: "libibverbs" (the real library) or "softhca" (the test double). */
const char *stableverbs_lower_name(void);

/* Name of the real device currently behind a virtual context (e.g. "rxe0"). Copies at most len
 * bytes including the terminating NUL. */
int stableverbs_real_device_name(struct ibv_context *context, char *name, size_t len);

/* How many times the real objects behind this context were rebuilt (0 until the first move). */
int stableverbs_generation(struct ibv_context *context, uint32_t *generation);

/* The virtual and current real QP number of a QP. */
int stableverbs_qp_identity(struct ibv_qp *qp, uint32_t *virtual_qpn, uint32_t *real_qpn);

/* The virtual and current real keys of a memory region (any pointer may be NULL). */
int stableverbs_mr_identity(struct ibv_mr *mr, uint32_t *virtual_lkey, uint32_t *real_lkey,
			    uint32_t *virtual_rkey, uint32_t *real_rkey);

/* The virtual and current real LID of a port. */
int stableverbs_port_lid(struct ibv_context *context, uint8_t port_num, uint16_t *virtual_lid,
			 uint16_t *real_lid);

/* The virtual and current real GID at an index. */
int stableverbs_gid_identity(struct ibv_context *context, uint8_t port_num, int index,
			     union ibv_gid *virtual_gid, union ibv_gid *real_gid);

/*
 * Rebuild every real object behind a context in place, the way a recovery does: device reopened,
 * PD, MRs (same address, length, access), completion channels (same fd numbers), CQs, SRQs, QPs
 * (replayed through their recorded state transitions, reconnected to peers that live in this
 * process), AHs. Afterwards the real identities differ and the virtual ones are unchanged.
 * The caller must have let every posted work request complete (sends and receives): until the
 * recovery work log exists, work still posted at the call is not replayed. QPs whose remote end
 * lives outside this process make it fail with ENOTSUP (nothing is changed) until the peer
 * protocol exists.
 */
int stableverbs_rebuild_context(struct ibv_context *context);

#ifdef __cplusplus
}
#endif
#endif /* STABLEVERBS_H */
