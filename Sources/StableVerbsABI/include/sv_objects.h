/*
 * Virtual verbs objects, laid out as rdma-core 44's inline code reads them.
 *
 * Every virtual object starts with the public rdma-core structure the application holds a pointer
 * to, so the object's shim state is reached in O(1) by a cast (by container_of for the context,
 * whose ibv_context is the *last* member of its verbs_context). Private state follows the public
 * structure, never inside it. The fields named `real` point at the current real object (real
 * libibverbs or the software HCA); a rebuild swaps them, the application's pointers never change.
 *
 * `core` is an unretained pointer to the Swift object that owns this virtual object (its journal
 * entry and handle-table record); the fast path never touches it.
 */
#ifndef SV_OBJECTS_H
#define SV_OBJECTS_H

#include <stddef.h>
#include <stdint.h>
#include <stdatomic.h>
#include <infiniband/verbs.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Data-path functions of this library that nothing outside it calls: hidden, so that the shim's
 * ops call them directly rather than through the PLT (one indirect jump fewer per call). */
#define SV_DATA_PATH __attribute__((visibility("hidden")))

/* ---------------------------------------------------------------------------------------------
 * Identity maps: 32-bit key -> 32-bit value, read lock-free on the fast path, written under the
 * owner's lock on the control path. `moved` counts entries whose value differs from their key: while
 * it is zero the map is the identity and the fast path may skip the lookup (the lookup still runs
 * through the map the moment any entry moves). The table layout is private to
 * Sources/StableVerbs/Identity (IdentityMap.swift); retired tables are freed when the map is.
 * ------------------------------------------------------------------------------------------- */
struct sv_idmap {
	_Atomic(void *) table;     /* current table, published with release, read with acquire */
	_Atomic(uint32_t) moved;   /* live entries with value != key */
	uint32_t reserved;
	void *retired;             /* tables replaced by a resize, freed with the map */
};

static inline void *sv_idmap_table(const struct sv_idmap *m)
{
	return atomic_load_explicit((_Atomic(void *) *)&m->table, memory_order_acquire);
}
static inline void sv_idmap_publish(struct sv_idmap *m, void *t)
{
	atomic_store_explicit(&m->table, t, memory_order_release);
}
static inline uint32_t sv_idmap_moved(const struct sv_idmap *m)
{
	return atomic_load_explicit((_Atomic(uint32_t) *)&m->moved, memory_order_relaxed);
}
static inline void sv_idmap_set_moved(struct sv_idmap *m, uint32_t v)
{
	atomic_store_explicit(&m->moved, v, memory_order_release);
}
/* 64-bit slot access for the table implementation (relaxed loads; publication orders them). */
static inline uint64_t sv_load_u64(const uint64_t *p)
{
	return atomic_load_explicit((_Atomic(uint64_t) *)p, memory_order_acquire);
}
static inline void sv_store_u64(uint64_t *p, uint64_t v)
{
	atomic_store_explicit((_Atomic(uint64_t) *)p, v, memory_order_release);
}
static inline uint32_t sv_load_u32(const uint32_t *p)
{
	return atomic_load_explicit((_Atomic(uint32_t) *)p, memory_order_acquire);
}
static inline void sv_store_u32(uint32_t *p, uint32_t v)
{
	atomic_store_explicit((_Atomic(uint32_t) *)p, v, memory_order_release);
}
static inline void *sv_load_ptr(void *const *p)
{
	return atomic_load_explicit((_Atomic(void *) *)p, memory_order_acquire);
}
static inline void sv_store_ptr(void **p, void *v)
{
	atomic_store_explicit((_Atomic(void *) *)p, v, memory_order_release);
}

/* The identities of one side of a connection that a peer must translate: its virtual rkeys and
 * QPNs to their current real values. A context carries its own; a QP points at the one of the
 * context that owns its remote end (NULL: unknown, identity). */
struct sv_peer_ids {
	struct sv_idmap rkeys;     /* virtual rkey -> real rkey */
	struct sv_idmap qpns;      /* virtual QPN  -> real QPN */
};

/* Per-context data-path state (sv_context.state). Anything but LIVE sends the op to its slow path. */
enum sv_ctx_state {
	SV_CTX_LIVE = 0,
	SV_CTX_QUIESCING = 1,
	SV_CTX_RELEASED = 2,
	SV_CTX_REBUILDING = 3,
	SV_CTX_RECONNECTING = 4,
	SV_CTX_PASSTHROUGH = 5,
	SV_CTX_FAILED = 6, /* the device did not come back (STABLEVERBS_LOSS_WAIT_MS): posts fail with EIO */
};

#define SV_MAGIC_DEVICE  0x5356444556494345ull /* "SVDEVICE" */

struct sv_device {
	struct ibv_device dev;     /* a copy the application may read; _ops zeroed */
	uint64_t magic;
	struct ibv_device *real;   /* current real device, NULL while absent */
	void *core;
};

struct sv_context {
	struct verbs_context vctx; /* MUST be first; its ibv_context is its last member */
	struct ibv_context *real;
	struct verbs_context *real_vctx; /* verbs_get_ctx(real) */
	struct sv_device *device;
	_Atomic(uint32_t) state;   /* enum sv_ctx_state */
	uint32_t generation;       /* bumped by every rebuild */
	struct sv_idmap lkeys;     /* virtual lkey -> real lkey */
	struct sv_idmap qpn_up;    /* real QPN -> virtual QPN (completions, events) */
	struct sv_idmap lid_up;    /* real LID -> virtual LID (wc.slid) */
	struct sv_idmap lid_down;  /* virtual LID -> real LID (modify_qp, AH attributes) */
	struct sv_peer_ids ids;    /* this context's own rkeys/QPNs, for local peers */
	void *core;
	struct sv_qp_index *qp_index; /* real QPN -> QP (recovery work rings); sv_qp_index_create */
};

/* ---------------------------------------------------------------------------------------------
 * Work rings (recovery, DESIGN §4): per send queue / receive queue / SRQ, a preallocated FIFO of
 * the work requests posted and not yet seen completed, plus those buffered while the context was
 * not LIVE. The poster appends (tail) before it hands the list to the provider; the poller retires
 * entries (head) as it sees their completions; a recovery re-posts [head, tail) in order.
 * Single producer, single consumer: one thread posting to a queue at a time, one thread polling
 * the completions of a queue at a time (documented limits). No allocation, no locks.
 * Entry layout: the bookkeeping, then the work request, then its SGEs. A send ring's entry holds a
 * whole struct ibv_send_wr, max_sge SGEs and max_inline bytes; a receive ring's (QP or SRQ) ends
 * with wr.recv (SV_RECV_ENTRY_SIZE bytes) and its SGEs follow there: it never holds the rest of the
 * union (read a receive entry through wr.recv, sv_ring_recv_wr and sv_ring_recv_sges only).
 * ------------------------------------------------------------------------------------------- */
struct sv_context;
struct sv_qp;

struct sv_ring_entry {
	uint32_t done;      /* completion seen (out-of-order retirement on SRQs) */
	uint32_t inline_len; /* bytes of inline data kept after the SGEs (send, IBV_SEND_INLINE) */
	uint64_t msgno;     /* send rings: receive-consuming messages posted before this entry (peer protocol) */
	uint32_t psn;       /* send rings: the PSN of its first packet on the connection it was handed to */
	uint32_t reserved;
	union {
		struct ibv_send_wr send;
		struct ibv_recv_wr recv;
	} wr;
};
#define SV_RECV_ENTRY_SIZE (offsetof(struct sv_ring_entry, wr) + sizeof(struct ibv_recv_wr))

struct sv_wr_ring {
	_Atomic(uint64_t) head;  /* oldest entry not yet retired (poller) */
	uint64_t pad0[7];
	_Atomic(uint64_t) tail;  /* next free entry (poster) */
	uint64_t msg_count;      /* send rings: receive-consuming messages recorded so far (poster) */
	uint64_t wr_pending;     /* ibv_wr_* batch: next entry of the open batch (poster) */
	uint64_t wr_msg;         /* ibv_wr_* batch: msg_count once the batch is committed (poster) */
	struct sv_ring_entry *wr_cur; /* ibv_wr_* batch: the entry the setters fill (NULL: not recorded) */
	uint32_t wr_over;        /* ibv_wr_* batch: an op or setter could not be recorded */
	uint32_t next_psn;       /* send rings: the PSN the next WR handed to the QP starts at (poster) */
	uint32_t mtu_shift;      /* send rings: log2 of the path MTU in bytes (control, set before RTS) */
	uint32_t wr_psn;         /* ibv_wr_* batch: next_psn once the batch is committed (poster) */
	uint64_t post_mark;      /* legacy post: the tail before its WRs were recorded (poster; sv_ring_post_*) */
	uint32_t capacity;       /* entries, a power of two */
	uint32_t max_sge;
	uint32_t max_inline;
	uint32_t entry_size;
	uint32_t is_send;
	uint32_t sig_all;        /* sq_sig_all: every send is signaled */
	_Atomic(uint32_t) lost;  /* a post could not be recorded: this queue cannot be replayed */
	uint32_t reserved;
	unsigned char *entries;
};

/* Allocation (control path). NULL on ENOMEM. */
struct sv_wr_ring *sv_ring_create(uint32_t depth, uint32_t max_sge, uint32_t max_inline, int is_send, int sig_all);
void sv_ring_destroy(struct sv_wr_ring *r);
static inline struct sv_ring_entry *sv_ring_at(struct sv_wr_ring *r, uint64_t i)
{
	return (struct sv_ring_entry *)(r->entries + (size_t)(i & (r->capacity - 1)) * r->entry_size);
}
/* A send entry's SGEs (they follow the whole union; a receive entry's: sv_ring_recv_sges). */
static inline struct ibv_sge *sv_ring_sges(struct sv_ring_entry *e) { return (struct ibv_sge *)(e + 1); }
static inline struct ibv_sge *sv_ring_recv_sges(struct sv_ring_entry *e)
{
	return (struct ibv_sge *)((unsigned char *)e + SV_RECV_ENTRY_SIZE);
}
/* The work request an entry holds (what the replay hands to the provider). */
static inline struct ibv_send_wr *sv_ring_send_wr(struct sv_ring_entry *e) { return &e->wr.send; }
static inline struct ibv_recv_wr *sv_ring_recv_wr(struct sv_ring_entry *e) { return &e->wr.recv; }
static inline uint64_t sv_ring_head(struct sv_wr_ring *r) { return atomic_load_explicit(&r->head, memory_order_acquire); }
static inline uint64_t sv_ring_tail(struct sv_wr_ring *r) { return atomic_load_explicit(&r->tail, memory_order_acquire); }

/* Data path (no allocation, no locks). Record: appends every WR of the list; returns the tail
 * before the append (for sv_ring_unrecord), or UINT64_MAX when the ring had no room (nothing
 * appended; the caller decides: the fast path posts anyway and marks the ring lost, the cold
 * path answers ENOMEM like a full queue). */
SV_DATA_PATH uint64_t sv_ring_record_send(struct sv_wr_ring *r, const struct ibv_send_wr *wr);
SV_DATA_PATH uint64_t sv_ring_record_recv(struct sv_wr_ring *r, const struct ibv_recv_wr *wr);
/* Cold: the WRs of a list before `stop` only (the provider took those and refused `stop`, after
 * the whole list could not be recorded); UINT64_MAX when even they cannot be. */
uint64_t sv_ring_record_send_prefix(struct sv_wr_ring *r, const struct ibv_send_wr *wr, const struct ibv_send_wr *stop);
uint64_t sv_ring_record_recv_prefix(struct sv_wr_ring *r, const struct ibv_recv_wr *wr, const struct ibv_recv_wr *stop);
/* The provider refused the list from `bad` on: drop the entries recorded for it and after it. */
void sv_ring_unrecord_send(struct sv_wr_ring *r, uint64_t old_tail, const struct ibv_send_wr *wr,
			   const struct ibv_send_wr *bad);
void sv_ring_unrecord_recv(struct sv_wr_ring *r, uint64_t old_tail, const struct ibv_recv_wr *wr,
			   const struct ibv_recv_wr *bad);

/* Whether a send opcode consumes a receive at the remote end (counted by msgno). */
static inline int sv_opcode_consumes(enum ibv_wr_opcode op)
{
	return op == IBV_WR_SEND || op == IBV_WR_SEND_WITH_IMM || op == IBV_WR_SEND_WITH_INV ||
	       op == IBV_WR_RDMA_WRITE_WITH_IMM;
}
static inline int sv_opcode_is_atomic(enum ibv_wr_opcode op)
{
	return op == IBV_WR_ATOMIC_CMP_AND_SWP || op == IBV_WR_ATOMIC_FETCH_AND_ADD;
}
/* The PSNs an RC work request of `op` gathering `length` bytes takes (IBTA 9.7: one per packet of
 * a SEND or WRITE, one per response packet of a READ, one for an atomic; none for the local
 * operations), on a path of 2^shift-byte MTU. The peer protocol compares an entry's PSN with the
 * PSN the responder expects next to tell whether it executed the entry (an atomic must not run
 * twice). Data path: a few instructions, no branch. */
static inline uint32_t sv_wr_psns(enum ibv_wr_opcode op, uint32_t length, uint32_t shift)
{
	uint32_t packets = 1 + ((length - (length != 0)) >> (shift & 31));
	return (op == IBV_WR_LOCAL_INV || op == IBV_WR_BIND_MW) ? 0 : packets;
}
/* The PSN after a work request of `op` gathering `length` bytes that starts at `psn` (24 bits). */
static inline uint32_t sv_psn_after(uint32_t psn, enum ibv_wr_opcode op, uint32_t length, uint32_t shift)
{
	return (psn + sv_wr_psns(op, length, shift)) & 0xFFFFFFu;
}
/* Hands the entry the next PSN of its ring and advances it (poster). */
static inline void sv_ring_take_psns(struct sv_wr_ring *r, struct sv_ring_entry *e, uint32_t length)
{
	e->psn = r->next_psn;
	r->next_psn = sv_psn_after(r->next_psn, e->wr.send.opcode, length, r->mtu_shift);
}
/* The bytes a recorded send entry gathers (inline: the bytes kept). */
static inline uint32_t sv_ring_entry_length(struct sv_ring_entry *e)
{
	if (e->inline_len)
		return e->inline_len;
	uint32_t n = 0;
	for (int k = 0; k < e->wr.send.num_sge; k++)
		n += sv_ring_sges(e)[k].length;
	return n;
}
/* ibv_wr_* batches (data path, like sv_ring_record_send): the op builders and setters record the
 * WR as an ibv_send_wr in the entries after tail; sv_ring_wr_commit publishes them before the real
 * wr_complete (which may fail: sv_ring_wr_uncommit) and an abort simply does not commit. An op or
 * setter that cannot be recorded (ring full, more SGEs or inline bytes than the QP was created
 * for, an opcode the legacy API cannot replay) makes the commit mark the ring lost. */
enum { SV_WR_BATCH_NONE = 0, SV_WR_BATCH_DIRECT = 1, SV_WR_BATCH_BUFFERED = 2 };
SV_DATA_PATH void sv_ring_wr_start(struct sv_wr_ring *r);
SV_DATA_PATH void sv_ring_wr_op(struct sv_wr_ring *r, uint64_t wr_id, unsigned int flags, enum ibv_wr_opcode op, uint32_t rkey,
		   uint64_t remote_addr, uint64_t compare_add, uint64_t swap, uint32_t imm);
SV_DATA_PATH void sv_ring_wr_unrecordable(struct sv_wr_ring *r);
SV_DATA_PATH void sv_ring_wr_sge(struct sv_wr_ring *r, uint32_t lkey, uint64_t addr, uint32_t length);
SV_DATA_PATH void sv_ring_wr_sge_list(struct sv_wr_ring *r, size_t n, const struct ibv_sge *list);
SV_DATA_PATH void sv_ring_wr_inline(struct sv_wr_ring *r, const void *addr, size_t length);
SV_DATA_PATH void sv_ring_wr_inline_list(struct sv_wr_ring *r, size_t n, const struct ibv_data_buf *list);
SV_DATA_PATH void sv_ring_wr_ud(struct sv_wr_ring *r, struct ibv_ah *ah, uint32_t remote_qpn, uint32_t remote_qkey);
/* Returns the tail before the commit (for sv_ring_wr_uncommit). */
SV_DATA_PATH uint64_t sv_ring_wr_commit(struct sv_wr_ring *r);
SV_DATA_PATH void sv_ring_wr_uncommit(struct sv_wr_ring *r, uint64_t old_tail);

/* Advances head over entries marked done (recovery, control lock). */
void sv_ring_settle(struct sv_wr_ring *r);

/* Completions (poll path): retires the ring entries the completions stand for. `wc` holds real
 * QP numbers. Returns the index of the first completion with an error status (its entries are
 * not retired: the caller decides whether the error is the device's), or n. */
SV_DATA_PATH int sv_ring_retire(struct sv_context *ctx, const struct ibv_wc *wc, int n);
/* One completion: retires its entries (error completions too). */
SV_DATA_PATH void sv_ring_retire_one(struct sv_context *ctx, const struct ibv_wc *wc);
/* Whether an entry not yet done with this wr_id is on q's send or receive ring (1 also when q has
 * no rings): an error completion that matches none repeats one the shim already made. */
int sv_ring_outstanding(const struct sv_qp *q, uint64_t wr_id);
/* Where the GRH of a UD receive not yet retired landed: its first SGE's address, or NULL (no such
 * receive outstanding, or a first SGE shorter than a GRH). Cold (sv_senders.c). */
const void *sv_ring_recv_grh(struct sv_qp *q, uint64_t wr_id);
/* The successful completion an extended real CQ is positioned on (start_poll/next_poll returned
 * 0): retires its entry (its QP from read_qp_num, which the shim always asks the CQ for). */
SV_DATA_PATH void sv_ring_retire_cq_ex(struct sv_context *ctx, struct ibv_cq_ex *real);

/* eventfd(0, EFD_CLOEXEC | (semaphore ? EFD_SEMAPHORE : 0) | (nonblock ? EFD_NONBLOCK : 0)). */
int sv_eventfd(int semaphore, int nonblock);

/* Real QPN -> virtual QP, per context, for the poll path: open addressing, linear probing, at
 * most half full. Readers are lock-free; writers (insert, remove, create, destroy) hold the
 * control lock. A table that fills up is replaced by one twice its size, published with one
 * release store; the replaced one stays readable (a poller may be inside it) and removals still
 * reach it, so it never names a destroyed QP; it is freed at a later replacement once
 * SV_QP_INDEX_RETIRED_NS have passed, or when the context closes. */
#define SV_QP_INDEX_INITIAL 1024u
#define SV_QP_INDEX_RETIRED_NS 5000000000ull
struct sv_qp_index_slot {
	_Atomic(uint32_t) qpn;   /* 0: empty, 0xFFFFFFFF: removed */
	uint32_t reserved;
	_Atomic(struct sv_qp *) qp;
};
struct sv_qp_index {
	uint32_t mask;               /* slots - 1 (a power of two) */
	uint32_t used;               /* slots not empty: live or removed */
	uint32_t live;
	uint32_t reserved;
	uint64_t retired_at;         /* CLOCK_MONOTONIC ns it was replaced at; 0 while current */
	struct sv_qp_index *older;   /* the tables this one replaced, newest first */
	struct sv_qp_index_slot slots[];
};
int sv_qp_index_create(struct sv_context *ctx);          /* 0 or ENOMEM */
void sv_qp_index_destroy(struct sv_context *ctx);        /* every table, current and replaced */
int sv_qp_index_insert(struct sv_context *ctx, uint32_t real_qpn, struct sv_qp *qp); /* 0, EINVAL, ENOMEM */
void sv_qp_index_remove(struct sv_context *ctx, uint32_t real_qpn);
struct sv_qp *sv_qp_index_find(struct sv_context *ctx, uint32_t real_qpn);
uint32_t sv_qp_index_slots(struct sv_context *ctx);      /* the current table's size (tests) */
uint32_t sv_qp_index_tables(struct sv_context *ctx);     /* tables kept, current included (tests) */

struct sv_pd {
	struct ibv_pd pd;
	struct ibv_pd *real;
	struct sv_context *ctx;
	void *core;
};

struct sv_mr {
	struct ibv_mr mr;          /* lkey/rkey are the virtual values */
	struct ibv_mr *real;
	struct sv_context *ctx;
	void *core;
};

struct sv_comp_channel {
	struct ibv_comp_channel channel; /* fd: the real channel's fd number, kept across rebuilds */
	struct ibv_comp_channel *real;
	struct sv_context *ctx;
	void *core;
};

struct sv_cq {
	struct ibv_cq_ex cq;       /* ibv_cq is a prefix of ibv_cq_ex */
	struct ibv_cq *real;
	struct ibv_cq_ex *real_ex; /* set when created through create_cq_ex */
	struct sv_context *ctx;
	void *core;
	_Atomic(uint32_t) pending; /* completions the recovery kept for the application (poll them first) */
	uint32_t session;          /* extended CQs: enum sv_cq_session of the application's poll */
	struct ibv_wc kept;        /* extended CQs: the kept completion the read_* ops answer (SV_CQ_SESSION_KEPT) */
	uint32_t src_qp;           /* extended CQs once a UD identity moved: the current completion's src_qp, told by sender */
	uint32_t reserved;
};

/* An extended CQ's poll session (ibv_start_poll .. ibv_end_poll), as the application sees it. */
enum sv_cq_session {
	SV_CQ_SESSION_NONE = 0,
	SV_CQ_SESSION_REAL = 1, /* a real start_poll succeeded: its end_poll is owed */
	SV_CQ_SESSION_KEPT = 2, /* serving completions a recovery kept (cq's read_* ops read `kept`) */
};

struct sv_srq {
	struct ibv_srq srq;
	struct ibv_srq *real;
	struct sv_context *ctx;
	void *core;
	struct sv_wr_ring *recv_ring;
};

struct sv_ah {
	struct ibv_ah ah;
	struct ibv_ah *real;
	struct sv_context *ctx;
	struct sv_peer_ids *peer;  /* whose QPNs a UD send through this AH names (NULL: identity) */
	void *core;
};

struct sv_qp {
	struct ibv_qp_ex qpx;      /* ibv_qp is its first member: qp_num is the virtual QPN */
	struct ibv_qp *real;
	struct ibv_qp_ex *real_qpx; /* set once ibv_qp_to_qp_ex succeeded on the real QP */
	struct sv_context *ctx;
	struct sv_peer_ids *peer;  /* remote end's identities for RC/UC (NULL: identity) */
	uint32_t real_qpn;
	uint32_t wr_batch;         /* ibv_wr_* batch open: SV_WR_BATCH_* (poster stores, recovery loads) */
	void *core;
	struct sv_wr_ring *send_ring; /* NULL: not tracked */
	struct sv_wr_ring *recv_ring; /* the QP's own, or its SRQ's */
	_Atomic(uint64_t) recv_seen;  /* receive completions of this QP retired (the peer protocol's
				       * `seen` on an SRQ, whose ring the QPs share; poller) */
};
static inline uint64_t sv_qp_recv_seen(struct sv_qp *q)
{
	return atomic_load_explicit(&q->recv_seen, memory_order_acquire);
}
/* Counts `n` receive completions of `q` made by the recovery (its pollers are out of the fast path). */
static inline void sv_qp_add_recv_seen(struct sv_qp *q, uint64_t n)
{
	atomic_store_explicit(&q->recv_seen, atomic_load_explicit(&q->recv_seen, memory_order_relaxed) + n,
			      memory_order_release);
}

/* Legacy posts through the work ring (data path; the caller checked that the context is LIVE,
 * that nothing needs translating and that the queue has a ring): records the list, hands it to
 * the real QP's (SRQ's) provider op and returns what it returns; when the provider refused part
 * of it or the list could not be recorded, returns what sv_post_*_fixup decides. Written in C so
 * that only the QP, the list and bad_wr live across the provider's call. */
SV_DATA_PATH int sv_ring_post_send(struct sv_qp *q, struct ibv_send_wr *wr, struct ibv_send_wr **bad);
SV_DATA_PATH int sv_ring_post_recv(struct sv_qp *q, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad);
SV_DATA_PATH int sv_ring_post_srq_recv(struct sv_srq *s, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad);
/* Defined in Swift (DataPath/PostOps.swift; cold): the ring's post_mark is the mark of the post. */
int sv_post_send_fixup(struct sv_context *ctx, struct sv_wr_ring *r, int rc, struct ibv_send_wr *wr,
		       struct ibv_send_wr **bad);
int sv_post_recv_fixup(struct sv_context *ctx, struct sv_wr_ring *r, int rc, struct ibv_recv_wr *wr,
		       struct ibv_recv_wr **bad);

static inline struct sv_context *sv_context_of(struct ibv_context *c)
{
	return (struct sv_context *)((char *)c - offsetof(struct sv_context, vctx.context));
}
static inline struct ibv_context *sv_context_public(struct sv_context *c)
{
	return &c->vctx.context;
}
static inline struct sv_qp *sv_qp_of(struct ibv_qp *q) { return (struct sv_qp *)q; }
static inline struct sv_qp *sv_qp_of_ex(struct ibv_qp_ex *q) { return (struct sv_qp *)q; }
static inline struct sv_cq *sv_cq_of(struct ibv_cq *c) { return (struct sv_cq *)c; }
static inline struct sv_cq *sv_cq_of_ex(struct ibv_cq_ex *c) { return (struct sv_cq *)c; }
static inline struct sv_srq *sv_srq_of(struct ibv_srq *s) { return (struct sv_srq *)s; }
static inline struct sv_pd *sv_pd_of(struct ibv_pd *p) { return (struct sv_pd *)p; }
static inline struct sv_mr *sv_mr_of(struct ibv_mr *m) { return (struct sv_mr *)m; }
static inline struct sv_ah *sv_ah_of(struct ibv_ah *a) { return (struct sv_ah *)a; }
static inline struct sv_comp_channel *sv_channel_of(struct ibv_comp_channel *c)
{
	return (struct sv_comp_channel *)c;
}

static inline uint32_t sv_ctx_state(const struct sv_context *c)
{
	return atomic_load_explicit((_Atomic(uint32_t) *)&c->state, memory_order_acquire);
}
static inline void sv_ctx_set_state(struct sv_context *c, uint32_t s)
{
	atomic_store_explicit(&c->state, s, memory_order_release);
}

static inline void sv_cq_set_pending(struct sv_cq *c, uint32_t n)
{
	atomic_store_explicit(&c->pending, n, memory_order_release);
}
static inline void sv_ring_mark_lost(struct sv_wr_ring *r)
{
	atomic_store_explicit(&r->lost, 1, memory_order_relaxed);
}
static inline uint32_t sv_qp_wr_batch(const struct sv_qp *q)
{
	return __atomic_load_n(&q->wr_batch, __ATOMIC_ACQUIRE);
}
static inline uint32_t sv_ring_is_lost(struct sv_wr_ring *r)
{
	return atomic_load_explicit(&r->lost, memory_order_relaxed);
}

/* ---------------------------------------------------------------------------------------------
 * UD senders (sv_senders.c): which real GID belongs to which map of real QPN -> virtual QPN and
 * to which virtual GID, so a UD receive's src_qp and GRH can be told in the application's terms
 * (the GRH names the sender's and the receiver's real GIDs). The
 * table is immutable once published; a new one replaces it (exchange with release) and the old
 * one is freed by the caller once no poller can still be in it (a poller may be reading it).
 * ------------------------------------------------------------------------------------------- */
struct sv_sender {
	uint8_t gid[16];      /* real */
	uint8_t vgid[16];     /* virtual: the GID the application knows (for a peer in another process: the GID it had before it moved) */
	struct sv_idmap *up;  /* its moved UD QPs, real QPN -> virtual QPN (NULL: none) */
	uint32_t remote;      /* a sender in another process (never a destination of this one's receives) */
	uint32_t reserved;
};
struct sv_senders {
	uint32_t count;
	uint32_t reserved;
	struct sv_sender entries[];
};
/* The next entry whose real GID is `gid` from entry *cursor on (start at 0; the cursor moves past
 * it), or NULL. Valid until the table is freed (UDSenderGarbage: seconds after its replacement). */
const struct sv_sender *sv_senders_next(const uint8_t gid[16], uint32_t *cursor);
/* Publishes `t` (malloc'ed); returns the table it replaces (the caller frees it once no poller
 * can still be reading it). */
struct sv_senders *sv_senders_publish(struct sv_senders *t);
/* The source and destination GIDs in a UD receive's 40-byte GRH area: a GRH (IPv6, InfiniBand),
 * or RoCEv2 over IPv4 (20 bytes of zeros, then the IPv4 header: the IPv4-mapped GIDs of its
 * addresses). Returns 4 or 6. */
int sv_grh_gids(const void *grh, uint8_t sgid[16], uint8_t dgid[16]);
/* Writes `sgid` / `dgid` (either may be NULL) into the GRH area read by sv_grh_gids (`version`);
 * over IPv4 only IPv4-mapped GIDs can be written (the header checksum is recomputed): returns 0, or
 * -1 when a GID cannot be written (nothing written). */
int sv_grh_set_gids(void *grh, int version, const uint8_t *sgid, const uint8_t *dgid);

/* Fills the verbs_context header of a fresh virtual context: sz, abi_compat = extended marker,
 * and the ibv_context fields copied from the real one (async_fd, num_comp_vectors, cmd_fd). */
void sv_context_init_header(struct sv_context *c, struct ibv_context *real, struct ibv_device *vdev);

/* Whether `c` is one of the shim's virtual contexts (its ops carry the shim's post_send), as
 * opposed to a real object a provider passes back into a public verb. Set by the Swift core. */
extern void *sv_shim_post_send_op;
static inline int sv_is_virtual_context(struct ibv_context *c)
{
	return c && (void *)c->ops.post_send == sv_shim_post_send_op && sv_shim_post_send_op;
}

#ifdef __cplusplus
}
#endif
#endif /* SV_OBJECTS_H */
