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

/* Kinds of virtual object for stableverbs_real_object. */
enum stableverbs_object_type {
	STABLEVERBS_OBJECT_CONTEXT = 1, /* struct ibv_context * */
	STABLEVERBS_OBJECT_PD = 2,      /* struct ibv_pd * */
	STABLEVERBS_OBJECT_MR = 3,      /* struct ibv_mr * */
	STABLEVERBS_OBJECT_CQ = 4,      /* struct ibv_cq * (or the ibv_cq_ex's, which starts the same) */
	STABLEVERBS_OBJECT_CQ_EX = 5,   /* struct ibv_cq_ex *: the real ibv_cq_ex (ENOENT if not made by create_cq_ex) */
	STABLEVERBS_OBJECT_SRQ = 6,     /* struct ibv_srq * */
	STABLEVERBS_OBJECT_QP = 7,      /* struct ibv_qp * */
	STABLEVERBS_OBJECT_QP_EX = 8,   /* struct ibv_qp * or ibv_qp_ex *: the real ibv_qp_ex (ENOENT before
					 * ibv_qp_to_qp_ex succeeded on it) */
	STABLEVERBS_OBJECT_AH = 9,      /* struct ibv_ah * */
};

/*
 * For benchmarks and diagnostics only: the real object currently behind a virtual one (the lower
 * provider's own object, whose op pointers a benchmark may call to compare with the shim's). The
 * pointer is valid until the next rebuild or until the virtual object is destroyed; a program
 * that uses it for anything but measuring or printing breaks the shim's guarantees.
 * Returns 0 and sets *real, EINVAL (not one of the shim's objects, or an unknown type), or ENOENT
 * (no real counterpart right now).
 */
int stableverbs_real_object(enum stableverbs_object_type type, void *virtual_object, void **real);

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


/*
 * Recovery (phase A: every connection's two ends in this process).
 *
 * stableverbs_detach: quiesce and release every context on the named device (NULL: all), and the
 * contexts connected to them: new posts are buffered, posted sends are given up to
 * STABLEVERBS_QUIESCE_MS (default 2000) to complete, then every real object is destroyed and the
 * device context closed (a VF can be detached, an rxe device deleted). Returns 0 once released,
 * ENODEV for an unknown device name. The application keeps running: posts are buffered (ENOMEM
 * when a queue's buffer is full), polls return the completions kept from the released CQs.
 *
 * stableverbs_attach: rebuild every released context on a device chosen by STABLEVERBS_MATCH
 * (name | guid | any; default: the same name, or after STABLEVERBS_MATCH_WAIT_MS any device with
 * an active port), waiting up to STABLEVERBS_DEVICE_WAIT_MS (default 60000) for one; reconnect the
 * QPs, re-post what was in flight and what was buffered, in order. 0, or ETIMEDOUT.
 *
 * Unplanned losses (IBV_EVENT_DEVICE_FATAL, IBV_EVENT_PORT_ERR with the device gone from the list,
 * the device missing from a rescan, EIO/ENODEV from a real call) run the same machine from
 * "released" on, automatically, without a call.
 */
int stableverbs_detach(const char *device_or_null);
int stableverbs_attach(void);

/* The last recovery's phase durations (ns) and the number of recoveries so far. */
struct stableverbs_recovery_stats {
	uint64_t count;          /* recoveries completed */
	uint64_t quiesce_ns;     /* planned: the quiesce; unplanned: in-flight work settling on a device that still works */
	uint64_t release_ns;
	uint64_t device_wait_ns;
	uint64_t rebuild_ns;
	uint64_t reconnect_ns;   /* QP state transitions replayed */
	uint64_t replay_ns;      /* work re-posted */
	uint64_t replayed_wrs;   /* work requests re-posted by the last recovery */
	uint32_t planned;        /* the last recovery was a detach/attach */
	uint32_t contexts;       /* contexts the last recovery moved */
	/* Appended (a caller that knows a shorter struct gets the fields it knows). */
	uint64_t started_ns;     /* CLOCK_MONOTONIC: the last recovery began (detach called, loss noticed) */
	uint64_t device_found_ns; /* CLOCK_MONOTONIC: its device was found again (the rebuild could start) */
	uint64_t live_ns;        /* CLOCK_MONOTONIC: it ended (objects rebuilt, work replayed, live again) */
};
/* `size` is sizeof(struct stableverbs_recovery_stats) as the caller knows it. */
int stableverbs_recovery_stats(struct stableverbs_recovery_stats *stats, size_t size);

/*
 * The control socket (the `stableverbs` command talks to it: status, detach, attach).
 *
 * Every shimmed process listens on <dir>/<pid>.sock, made when it opens its first device context;
 * <dir> is $STABLEVERBS_RUNTIME_DIR, else $XDG_RUNTIME_DIR/stableverbs, else /tmp/stableverbs-<uid>
 * (created 0700; refused, with an error in the log and no socket, when it is not a directory of
 * this uid or the group or others can reach it). The socket is 0600, accepts the same uid or root,
 * and is removed at exit; a fork child gets its own at its next context open.
 *
 * stableverbs_control_path copies this process's socket path into buf: 0, ENOENT (no socket yet,
 * or it was refused), ERANGE (len too small for the path and its NUL), EINVAL (buf NULL or len 0).
 */
int stableverbs_control_path(char *buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif /* STABLEVERBS_H */
