/*
 * Work rings and the real-QPN index of the recovery (sv_objects.h). Data-path functions here do
 * no allocation, take no lock and call nothing but memcpy; scripts/check-fastpath follows them
 * from the sv_op_* ops.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include "sv_objects.h"

static uint32_t pow2(uint32_t v)
{
	uint32_t p = 16;
	while (p < v && p < (1u << 30))
		p <<= 1;
	return p;
}

struct sv_wr_ring *sv_ring_create(uint32_t depth, uint32_t max_sge, uint32_t max_inline, int is_send, int sig_all)
{
	struct sv_wr_ring *r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	if (max_sge == 0)
		max_sge = 1;
	/* Twice the queue depth: a provider may free queue slots before the application polls. */
	r->capacity = pow2(depth * 2 + 1);
	r->max_sge = max_sge;
	r->max_inline = (max_inline + 7) & ~7u;
	size_t wr = is_send ? sizeof(struct sv_ring_entry) : SV_RECV_ENTRY_SIZE;
	r->entry_size = (uint32_t)((wr + max_sge * sizeof(struct ibv_sge) + r->max_inline + 15) & ~(size_t)15);
	r->is_send = is_send ? 1 : 0;
	r->sig_all = sig_all ? 1 : 0;
	r->mtu_shift = 12; /* until a modify_qp sets the path MTU */
	r->entries = calloc(r->capacity, r->entry_size);
	if (!r->entries) {
		free(r);
		return NULL;
	}
	return r;
}

void sv_ring_destroy(struct sv_wr_ring *r)
{
	if (!r)
		return;
	free(r->entries);
	free(r);
}

/* Inline data is kept after the SGEs (the application may reuse inline buffers at once); the
 * entry's SGEs name the application's buffers (the replay points them at the kept bytes).
 * Appends `length` bytes to the entry's kept inline data. */
static inline void keep_inline(struct sv_wr_ring *r, struct sv_ring_entry *e, const void *addr, size_t length)
{
	unsigned char *dst = (unsigned char *)(sv_ring_sges(e) + r->max_sge);
	if (length > 0)
		memcpy(dst + e->inline_len, addr, length);
	e->inline_len += (uint32_t)length;
}

/* The entry's work request gathers from one SGE. */
static inline void one_sge(struct sv_ring_entry *e, uint32_t lkey, uint64_t addr, uint32_t length)
{
	struct ibv_sge *sg = sv_ring_sges(e);
	sg->addr = addr;
	sg->length = length;
	sg->lkey = lkey;
	e->wr.send.num_sge = 1;
}

__attribute__((noinline)) static uint64_t record_send_list(struct sv_wr_ring *r, const struct ibv_send_wr *wr,
							    const struct ibv_send_wr *stop);
__attribute__((noinline)) static uint64_t record_recv_list(struct sv_wr_ring *r, const struct ibv_recv_wr *wr,
							    const struct ibv_recv_wr *stop);

/* The entry at the tail (the poster's) when the ring has room, else NULL. */
static inline struct sv_ring_entry *next_free(struct sv_wr_ring *r, uint64_t *tail)
{
	uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
	*tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
	return *tail - head < r->capacity ? sv_ring_at(r, *tail) : NULL;
}

/* One send WR with at most one SGE (checked by the caller); `keep`: its bytes are inline data. */
static inline uint64_t record_send_one(struct sv_wr_ring *r, const struct ibv_send_wr *wr, int keep)
{
	uint64_t tail;
	struct sv_ring_entry *e = next_free(r, &tail);
	if (!e)
		return UINT64_MAX;
	struct ibv_sge *sg = sv_ring_sges(e);
	e->wr.send = *wr;
	e->wr.send.next = NULL;
	e->wr.send.sg_list = sg;
	e->done = 0;
	e->inline_len = 0;
	uint32_t length = 0;
	if (wr->num_sge) {
		*sg = *wr->sg_list;
		length = sg->length;
		if (keep) {
			if (sg->length > r->max_inline)
				return UINT64_MAX;
			keep_inline(r, e, (const void *)(uintptr_t)sg->addr, sg->length);
		}
	}
	e->msgno = r->msg_count;
	r->msg_count += (uint64_t)sv_opcode_consumes(wr->opcode);
	sv_ring_take_psns(r, e, length);
	atomic_store_explicit(&r->tail, tail + 1, memory_order_release);
	return tail;
}

/* The inline copy calls memcpy: apart, so that the common path saves no registers. */
__attribute__((noinline)) static uint64_t record_send_one_inline(struct sv_wr_ring *r, const struct ibv_send_wr *wr)
{
	return record_send_one(r, wr, 1);
}

/* Record: the common case — one WR, at most one SGE — takes no loop (it is on every post); lists
 * and several SGEs go the general way. */
uint64_t sv_ring_record_send(struct sv_wr_ring *r, const struct ibv_send_wr *wr)
{
	if (wr->next || (uint32_t)wr->num_sge > 1 || (uint32_t)wr->num_sge > r->max_sge)
		return record_send_list(r, wr, NULL);
	if (wr->send_flags & IBV_SEND_INLINE)
		return record_send_one_inline(r, wr);
	return record_send_one(r, wr, 0);
}

/* A receive entry from `wr` and its `n` SGEs (n within max_sge, checked by the caller). */
static inline void fill_recv(struct sv_ring_entry *e, const struct ibv_recv_wr *wr, int n)
{
	struct ibv_sge *sg = sv_ring_recv_sges(e);
	e->wr.recv.wr_id = wr->wr_id;
	e->wr.recv.next = NULL;
	e->wr.recv.sg_list = sg;
	e->wr.recv.num_sge = n;
	if (n == 1)
		*sg = *wr->sg_list;
	else if (n > 0)
		memcpy(sg, wr->sg_list, (size_t)n * sizeof(struct ibv_sge));
	e->done = 0;
	e->inline_len = 0;
}

uint64_t sv_ring_record_recv(struct sv_wr_ring *r, const struct ibv_recv_wr *wr)
{
	if (wr->next || wr->num_sge != 1 || r->max_sge < 1)
		return record_recv_list(r, wr, NULL);
	uint64_t tail;
	struct sv_ring_entry *e = next_free(r, &tail);
	if (!e)
		return UINT64_MAX;
	fill_recv(e, wr, 1);
	atomic_store_explicit(&r->tail, tail + 1, memory_order_release);
	return tail;
}

/* A legacy post through `obj`'s work ring `ring`: the same steps for a QP's send queue, its
 * receive queue and an SRQ (`op`: the provider's op, `fixup`: the Swift fix-up). Everything is
 * reloaded from `obj` after the provider's call, so only obj, wr and bad live across it. */
#define POST_THROUGH_RING(obj, ring, record, op, fixup)                                            \
	do {                                                                                       \
		(obj)->ring->post_mark = record((obj)->ring, wr);                                  \
		int rc = (obj)->real->context->ops.op((obj)->real, wr, bad);                       \
		if (__builtin_expect(rc != 0 || (obj)->ring->post_mark == UINT64_MAX, 0))          \
			return fixup((obj)->ctx, (obj)->ring, rc, wr, bad);                        \
		return rc;                                                                         \
	} while (0)

int sv_ring_post_send(struct sv_qp *q, struct ibv_send_wr *wr, struct ibv_send_wr **bad)
{
	POST_THROUGH_RING(q, send_ring, sv_ring_record_send, post_send, sv_post_send_fixup);
}

int sv_ring_post_recv(struct sv_qp *q, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad)
{
	POST_THROUGH_RING(q, recv_ring, sv_ring_record_recv, post_recv, sv_post_recv_fixup);
}

int sv_ring_post_srq_recv(struct sv_srq *s, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad)
{
	POST_THROUGH_RING(s, recv_ring, sv_ring_record_recv, post_srq_recv, sv_post_recv_fixup);
}

uint64_t sv_ring_record_send_prefix(struct sv_wr_ring *r, const struct ibv_send_wr *wr, const struct ibv_send_wr *stop)
{
	return record_send_list(r, wr, stop);
}

uint64_t sv_ring_record_recv_prefix(struct sv_wr_ring *r, const struct ibv_recv_wr *wr, const struct ibv_recv_wr *stop)
{
	return record_recv_list(r, wr, stop);
}

/* The WRs of the list before `stop` (NULL: all of them), or nothing (UINT64_MAX). */
static uint64_t record_send_list(struct sv_wr_ring *r, const struct ibv_send_wr *wr, const struct ibv_send_wr *stop)
{
	uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
	uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
	uint64_t t = tail;
	uint64_t mc = r->msg_count;
	uint32_t psn = r->next_psn;
	for (const struct ibv_send_wr *w = wr; w && w != stop; w = w->next) {
		if (t - head >= r->capacity)
			return UINT64_MAX;
		struct sv_ring_entry *e = sv_ring_at(r, t);
		int n = w->num_sge;
		if (n < 0 || (uint32_t)n > r->max_sge)
			return UINT64_MAX; /* the provider will refuse it anyway */
		e->wr.send = *w;
		e->wr.send.next = NULL;
		e->done = 0;
		e->inline_len = 0;
		e->msgno = mc;
		mc += (uint64_t)sv_opcode_consumes(w->opcode);
		struct ibv_sge *sg = sv_ring_sges(e);
		if (n > 0)
			memcpy(sg, w->sg_list, (size_t)n * sizeof(struct ibv_sge));
		e->wr.send.sg_list = sg;
		if (w->send_flags & IBV_SEND_INLINE) {
			for (int k = 0; k < n; k++) {
				uint32_t l = w->sg_list[k].length;
				if (l > r->max_inline - e->inline_len)
					return UINT64_MAX;
				keep_inline(r, e, (const void *)(uintptr_t)w->sg_list[k].addr, l);
			}
		}
		e->psn = psn;
		psn = sv_psn_after(psn, w->opcode, sv_ring_entry_length(e), r->mtu_shift);
		t++;
	}
	r->msg_count = mc;
	r->next_psn = psn;
	atomic_store_explicit(&r->tail, t, memory_order_release);
	return tail;
}

static uint64_t record_recv_list(struct sv_wr_ring *r, const struct ibv_recv_wr *wr, const struct ibv_recv_wr *stop)
{
	uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
	uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
	uint64_t t = tail;
	for (const struct ibv_recv_wr *w = wr; w && w != stop; w = w->next) {
		if (t - head >= r->capacity)
			return UINT64_MAX;
		struct sv_ring_entry *e = sv_ring_at(r, t);
		int n = w->num_sge;
		if (n < 0 || (uint32_t)n > r->max_sge)
			return UINT64_MAX;
		fill_recv(e, w, n);
		t++;
	}
	atomic_store_explicit(&r->tail, t, memory_order_release);
	return tail;
}

void sv_ring_unrecord_send(struct sv_wr_ring *r, uint64_t old_tail, const struct ibv_send_wr *wr,
			   const struct ibv_send_wr *bad)
{
	uint64_t t = old_tail;
	for (const struct ibv_send_wr *w = wr; w && w != bad; w = w->next)
		t++;
	if (t != atomic_load_explicit(&r->tail, memory_order_relaxed)) {
		r->msg_count = sv_ring_at(r, t)->msgno;
		r->next_psn = sv_ring_at(r, t)->psn;
	}
	atomic_store_explicit(&r->tail, t, memory_order_release);
}

void sv_ring_unrecord_recv(struct sv_wr_ring *r, uint64_t old_tail, const struct ibv_recv_wr *wr,
			   const struct ibv_recv_wr *bad)
{
	uint64_t t = old_tail;
	for (const struct ibv_recv_wr *w = wr; w && w != bad; w = w->next)
		t++;
	atomic_store_explicit(&r->tail, t, memory_order_release);
}

/* ---- ibv_wr_* batches --------------------------------------------------------------------- */

/* The batch's PSNs are counted as its WRs are built (the length is known at the data setter):
 * the op takes the entry's PSN and counts it as carrying no data, a setter counts it again with
 * its bytes; the commit publishes the count. */
static inline void batch_psns(struct sv_wr_ring *r, struct sv_ring_entry *e, uint32_t length)
{
	r->wr_psn = sv_psn_after(e->psn, e->wr.send.opcode, length, r->mtu_shift);
}

void sv_ring_wr_start(struct sv_wr_ring *r)
{
	r->wr_pending = atomic_load_explicit(&r->tail, memory_order_relaxed);
	r->wr_msg = r->msg_count;
	r->wr_psn = r->next_psn;
	r->wr_cur = NULL;
	r->wr_over = 0;
}

void sv_ring_wr_op(struct sv_wr_ring *r, uint64_t wr_id, unsigned int flags, enum ibv_wr_opcode op, uint32_t rkey,
		   uint64_t remote_addr, uint64_t compare_add, uint64_t swap, uint32_t imm)
{
	uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
	uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
	if (r->wr_pending < tail) {
		/* No ibv_wr_start before this op (misuse): never write over live entries. */
		r->wr_pending = tail;
		r->wr_msg = r->msg_count;
		r->wr_psn = r->next_psn;
	}
	if (r->wr_pending - head >= r->capacity) {
		r->wr_cur = NULL;
		r->wr_over = 1;
		return;
	}
	struct sv_ring_entry *e = sv_ring_at(r, r->wr_pending++);
	struct ibv_send_wr *w = &e->wr.send;
	memset(w, 0, sizeof(*w));
	w->wr_id = wr_id;
	w->send_flags = flags & ~(unsigned int)IBV_SEND_INLINE; /* inline only through the setters */
	w->opcode = op;
	w->sg_list = sv_ring_sges(e);
	switch (op) {
	case IBV_WR_ATOMIC_CMP_AND_SWP:
	case IBV_WR_ATOMIC_FETCH_AND_ADD:
		w->wr.atomic.remote_addr = remote_addr;
		w->wr.atomic.compare_add = compare_add;
		w->wr.atomic.swap = swap;
		w->wr.atomic.rkey = rkey;
		break;
	case IBV_WR_RDMA_WRITE_WITH_IMM:
		w->imm_data = imm;
		/* fallthrough */
	case IBV_WR_RDMA_WRITE:
	case IBV_WR_RDMA_READ:
		w->wr.rdma.remote_addr = remote_addr;
		w->wr.rdma.rkey = rkey;
		break;
	case IBV_WR_SEND_WITH_IMM:
		w->imm_data = imm;
		break;
	case IBV_WR_SEND_WITH_INV:
	case IBV_WR_LOCAL_INV:
		w->invalidate_rkey = imm;
		break;
	default:
		break;
	}
	e->done = 0;
	e->inline_len = 0;
	e->msgno = r->wr_msg;
	r->wr_msg += (uint64_t)sv_opcode_consumes(op);
	e->psn = r->wr_psn;
	batch_psns(r, e, 0);
	r->wr_cur = e;
}

void sv_ring_wr_unrecordable(struct sv_wr_ring *r)
{
	r->wr_cur = NULL;
	r->wr_over = 1;
}

void sv_ring_wr_sge(struct sv_wr_ring *r, uint32_t lkey, uint64_t addr, uint32_t length)
{
	struct sv_ring_entry *e = r->wr_cur;
	if (!e)
		return;
	one_sge(e, lkey, addr, length);
	batch_psns(r, e, length);
}

void sv_ring_wr_sge_list(struct sv_wr_ring *r, size_t n, const struct ibv_sge *list)
{
	struct sv_ring_entry *e = r->wr_cur;
	if (!e)
		return;
	if (n > r->max_sge) {
		sv_ring_wr_unrecordable(r);
		return;
	}
	uint32_t length = 0;
	for (size_t k = 0; k < n; k++)
		length += list[k].length;
	if (n > 0)
		memcpy(sv_ring_sges(e), list, n * sizeof(struct ibv_sge));
	e->wr.send.num_sge = (int)n;
	batch_psns(r, e, length);
}

static void inline_entry(struct sv_ring_entry *e, uint64_t addr, uint32_t length)
{
	one_sge(e, 0, addr, length);
	e->wr.send.send_flags |= IBV_SEND_INLINE;
}

void sv_ring_wr_inline(struct sv_wr_ring *r, const void *addr, size_t length)
{
	struct sv_ring_entry *e = r->wr_cur;
	if (!e)
		return;
	if (length > r->max_inline) {
		sv_ring_wr_unrecordable(r);
		return;
	}
	e->inline_len = 0;
	keep_inline(r, e, addr, length);
	inline_entry(e, (uint64_t)(uintptr_t)addr, (uint32_t)length);
	batch_psns(r, e, (uint32_t)length);
}

void sv_ring_wr_inline_list(struct sv_wr_ring *r, size_t n, const struct ibv_data_buf *list)
{
	struct sv_ring_entry *e = r->wr_cur;
	if (!e)
		return;
	size_t total = 0;
	for (size_t k = 0; k < n; k++)
		total += list[k].length;
	if (total > r->max_inline) {
		sv_ring_wr_unrecordable(r);
		return;
	}
	e->inline_len = 0;
	for (size_t k = 0; k < n; k++)
		keep_inline(r, e, list[k].addr, list[k].length);
	inline_entry(e, n > 0 ? (uint64_t)(uintptr_t)list[0].addr : 0, (uint32_t)total);
	batch_psns(r, e, (uint32_t)total);
}

void sv_ring_wr_ud(struct sv_wr_ring *r, struct ibv_ah *ah, uint32_t remote_qpn, uint32_t remote_qkey)
{
	struct sv_ring_entry *e = r->wr_cur;
	if (!e)
		return;
	e->wr.send.wr.ud.ah = ah;
	e->wr.send.wr.ud.remote_qpn = remote_qpn;
	e->wr.send.wr.ud.remote_qkey = remote_qkey;
}

uint64_t sv_ring_wr_commit(struct sv_wr_ring *r)
{
	uint64_t old = atomic_load_explicit(&r->tail, memory_order_relaxed);
	if (r->wr_over)
		sv_ring_mark_lost(r);
	r->wr_cur = NULL;
	if (r->wr_pending <= old)
		return old; /* nothing recorded since the last commit (or no ibv_wr_start at all) */
	r->msg_count = r->wr_msg;
	r->next_psn = r->wr_psn;
	atomic_store_explicit(&r->tail, r->wr_pending, memory_order_release);
	return old;
}

void sv_ring_wr_uncommit(struct sv_wr_ring *r, uint64_t old_tail)
{
	if (old_tail != atomic_load_explicit(&r->tail, memory_order_relaxed)) {
		r->msg_count = sv_ring_at(r, old_tail)->msgno;
		r->next_psn = sv_ring_at(r, old_tail)->psn;
	}
	atomic_store_explicit(&r->tail, old_tail, memory_order_release);
}

/* Advances head over retired entries. */
static void advance(struct sv_wr_ring *r, uint64_t head, uint64_t tail)
{
	while (head != tail && sv_ring_at(r, head)->done)
		head++;
	atomic_store_explicit(&r->head, head, memory_order_release);
}

void sv_ring_settle(struct sv_wr_ring *r)
{
	advance(r, atomic_load_explicit(&r->head, memory_order_relaxed), atomic_load_explicit(&r->tail, memory_order_acquire));
}

static void retire_send(struct sv_wr_ring *r, uint64_t wr_id, int error)
{
	uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
	uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
	/* Sends complete in order: a signaled completion retires every earlier unsignaled send and
	 * the first signaled one; an error completion stands for the first entry with its wr_id.
	 * Every entry from head to the one the completion stands for is retired at once by moving
	 * head past it (they need no done mark), then past any later entries already done. */
	uint64_t i = head;
	while (i != tail) {
		struct sv_ring_entry *e = sv_ring_at(r, i++);
		if (!e->done && (error ? e->wr.send.wr_id == wr_id
				       : (r->sig_all || (e->wr.send.send_flags & IBV_SEND_SIGNALED))))
			break;
	}
	advance(r, i, tail);
}

static void retire_recv(struct sv_wr_ring *r, uint64_t wr_id)
{
	uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
	uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
	/* In order on a QP's own receive queue (the head: retired by moving head past it); an SRQ
	 * may consume out of order (marked done, passed by head once every earlier one is). */
	for (uint64_t i = head; i != tail; i++) {
		struct sv_ring_entry *e = sv_ring_at(r, i);
		if (!e->done && e->wr.recv.wr_id == wr_id) {
			if (i == head) {
				advance(r, head + 1, tail);
				return;
			}
			e->done = 1;
			break;
		}
	}
	advance(r, head, tail);
}

static inline struct sv_qp_index *current_index(struct sv_context *ctx);
static inline struct sv_qp *index_find(const struct sv_qp_index *t, uint32_t qpn);

static inline __attribute__((always_inline)) void retire(struct sv_qp *q, const struct ibv_wc *w, int error)
{
	if (w->opcode & IBV_WC_RECV) {
		if (q->recv_ring)
			retire_recv(q->recv_ring, w->wr_id);
		if (!error) /* one poller per QP's receive completions: no read-modify-write needed */
			atomic_store_explicit(&q->recv_seen,
					      atomic_load_explicit(&q->recv_seen, memory_order_relaxed) + 1,
					      memory_order_release);
	} else if (q->send_ring) {
		retire_send(q->send_ring, w->wr_id, error);
	}
}

int sv_ring_retire(struct sv_context *ctx, const struct ibv_wc *wc, int n)
{
	/* Loaded after the provider's poll: a QP whose completion it returned was indexed before. */
	const struct sv_qp_index *t = current_index(ctx);
	if (!t)
		return n;
	for (int i = 0; i < n; i++) {
		const struct ibv_wc *w = wc + i;
		if (w->status != IBV_WC_SUCCESS)
			return i;
		struct sv_qp *q = index_find(t, w->qp_num);
		if (q)
			retire(q, w, 0);
	}
	return n;
}

void sv_ring_retire_one(struct sv_context *ctx, const struct ibv_wc *w)
{
	struct sv_qp *q = sv_qp_index_find(ctx, w->qp_num);
	if (q)
		retire(q, w, w->status != IBV_WC_SUCCESS);
}

static int ring_has(struct sv_wr_ring *r, uint64_t wr_id, int send)
{
	uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
	for (uint64_t i = atomic_load_explicit(&r->head, memory_order_acquire); i != tail; i++) {
		const struct sv_ring_entry *e = sv_ring_at(r, i);
		if (!e->done && (send ? e->wr.send.wr_id : e->wr.recv.wr_id) == wr_id)
			return 1;
	}
	return 0;
}

int sv_ring_outstanding(const struct sv_qp *q, uint64_t wr_id)
{
	/* Both rings: an error completion's opcode is not defined, so it does not say which queue. */
	if (!q->send_ring && !q->recv_ring)
		return 1;
	return (q->send_ring && ring_has(q->send_ring, wr_id, 1)) || (q->recv_ring && ring_has(q->recv_ring, wr_id, 0));
}

void sv_ring_retire_cq_ex(struct sv_context *ctx, struct ibv_cq_ex *real)
{
	const struct sv_qp_index *t = current_index(ctx);
	if (!t)
		return;
	struct sv_qp *q = index_find(t, real->read_qp_num(real));
	if (!q)
		return;
	struct ibv_wc w = {.wr_id = real->wr_id, .status = IBV_WC_SUCCESS, .opcode = real->read_opcode(real)};
	retire(q, &w, 0);
}

/* ---- real QPN -> QP ---------------------------------------------------------------------- */

#define QPN_EMPTY 0u
#define QPN_REMOVED 0xFFFFFFFFu

static inline uint32_t slot_of(const struct sv_qp_index *t, uint32_t qpn) { return (qpn * 2654435761u) & t->mask; }

static inline struct sv_qp_index *current_index(struct sv_context *ctx)
{
	return __atomic_load_n(&ctx->qp_index, __ATOMIC_ACQUIRE);
}

static struct sv_qp_index *index_alloc(uint32_t slots)
{
	struct sv_qp_index *t = calloc(1, sizeof(*t) + (size_t)slots * sizeof(struct sv_qp_index_slot));
	if (t)
		t->mask = slots - 1;
	return t;
}

static uint64_t monotonic_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Places qpn -> qp in the first empty or removed slot of its probe (or its own). Table at most half full. */
static void index_put(struct sv_qp_index *t, uint32_t qpn, struct sv_qp *qp)
{
	uint32_t i = slot_of(t, qpn), reuse = UINT32_MAX;
	for (uint32_t k = 0; k <= t->mask; k++, i = (i + 1) & t->mask) {
		uint32_t cur = atomic_load_explicit(&t->slots[i].qpn, memory_order_relaxed);
		if (cur == qpn) {
			atomic_store_explicit(&t->slots[i].qp, qp, memory_order_release);
			return;
		}
		if (cur == QPN_REMOVED && reuse == UINT32_MAX)
			reuse = i;
		if (cur == QPN_EMPTY)
			break;
	}
	if (reuse == UINT32_MAX)
		t->used++;
	else
		i = reuse;
	t->live++;
	atomic_store_explicit(&t->slots[i].qp, qp, memory_order_release);
	atomic_store_explicit(&t->slots[i].qpn, qpn, memory_order_release);
}

int sv_qp_index_create(struct sv_context *ctx)
{
	struct sv_qp_index *t = index_alloc(SV_QP_INDEX_INITIAL);
	if (!t)
		return ENOMEM;
	__atomic_store_n(&ctx->qp_index, t, __ATOMIC_RELEASE);
	return 0;
}

void sv_qp_index_destroy(struct sv_context *ctx)
{
	struct sv_qp_index *t = ctx->qp_index;
	__atomic_store_n(&ctx->qp_index, NULL, __ATOMIC_RELEASE);
	while (t) {
		struct sv_qp_index *older = t->older;
		free(t);
		t = older;
	}
}

/* A table with room for one more (at most half full after the insert): the current one, or its
 * replacement (twice the slots when over a quarter of them hold live QPs, else as many: the
 * removed ones are dropped), published. Tables replaced long enough ago are freed. */
static struct sv_qp_index *index_with_room(struct sv_context *ctx)
{
	struct sv_qp_index *t = ctx->qp_index;
	if ((t->used + 1) * 2 <= t->mask + 1)
		return t;
	uint32_t slots = t->mask + 1;
	while ((t->live + 1) * 4 > slots)
		slots *= 2;
	struct sv_qp_index *n = index_alloc(slots);
	if (!n)
		return NULL;
	for (uint32_t i = 0; i <= t->mask; i++) {
		uint32_t qpn = atomic_load_explicit(&t->slots[i].qpn, memory_order_relaxed);
		if (qpn != QPN_EMPTY && qpn != QPN_REMOVED)
			index_put(n, qpn, atomic_load_explicit(&t->slots[i].qp, memory_order_relaxed));
	}
	uint64_t now = monotonic_ns();
	t->retired_at = now;
	n->older = t;
	__atomic_store_n(&ctx->qp_index, n, __ATOMIC_RELEASE);
	/* Each table was retired no later than the one before it in the chain: free from the first
	 * that has been retired long enough. */
	for (struct sv_qp_index **link = &n->older; *link; link = &(*link)->older) {
		if (now - (*link)->retired_at >= SV_QP_INDEX_RETIRED_NS) {
			struct sv_qp_index *old = *link;
			*link = NULL;
			while (old) {
				struct sv_qp_index *next = old->older;
				free(old);
				old = next;
			}
			break;
		}
	}
	return n;
}

int sv_qp_index_insert(struct sv_context *ctx, uint32_t qpn, struct sv_qp *qp)
{
	if (!ctx->qp_index || qpn == QPN_EMPTY || qpn == QPN_REMOVED)
		return EINVAL;
	struct sv_qp_index *t = index_with_room(ctx);
	if (!t)
		return ENOMEM;
	index_put(t, qpn, qp);
	return 0;
}

void sv_qp_index_remove(struct sv_context *ctx, uint32_t qpn)
{
	for (struct sv_qp_index *t = ctx->qp_index; t; t = t->older) {
		uint32_t i = slot_of(t, qpn);
		for (uint32_t k = 0; k <= t->mask; k++, i = (i + 1) & t->mask) {
			uint32_t cur = atomic_load_explicit(&t->slots[i].qpn, memory_order_relaxed);
			if (cur == QPN_EMPTY)
				break;
			if (cur == qpn) {
				atomic_store_explicit(&t->slots[i].qp, NULL, memory_order_release);
				atomic_store_explicit(&t->slots[i].qpn, QPN_REMOVED, memory_order_release);
				t->live--;
				break;
			}
		}
	}
}

static inline struct sv_qp *index_find(const struct sv_qp_index *t, uint32_t qpn)
{
	uint32_t i = slot_of(t, qpn);
	for (uint32_t k = 0; k <= t->mask; k++, i = (i + 1) & t->mask) {
		uint32_t cur = atomic_load_explicit(&t->slots[i].qpn, memory_order_acquire);
		if (cur == qpn)
			return atomic_load_explicit(&t->slots[i].qp, memory_order_acquire);
		if (cur == QPN_EMPTY)
			return NULL;
	}
	return NULL;
}

struct sv_qp *sv_qp_index_find(struct sv_context *ctx, uint32_t qpn)
{
	struct sv_qp_index *t = current_index(ctx);
	return t ? index_find(t, qpn) : NULL;
}

uint32_t sv_qp_index_slots(struct sv_context *ctx)
{
	struct sv_qp_index *t = current_index(ctx);
	return t ? t->mask + 1 : 0;
}

uint32_t sv_qp_index_tables(struct sv_context *ctx)
{
	uint32_t n = 0;
	for (struct sv_qp_index *t = current_index(ctx); t; t = t->older)
		n++;
	return n;
}

int sv_eventfd(int semaphore, int nonblock)
{
	return eventfd(0, EFD_CLOEXEC | (semaphore ? EFD_SEMAPHORE : 0) | (nonblock ? EFD_NONBLOCK : 0));
}
