/* UD senders: real GID -> the sender's map of real QPN -> virtual QPN (sv_objects.h). */
#include <string.h>
#include "sv_objects.h"

static _Atomic(struct sv_senders *) current;

struct sv_idmap *sv_senders_next(const uint8_t gid[16], uint32_t *cursor)
{
	const struct sv_senders *t = atomic_load_explicit(&current, memory_order_acquire);
	if (!t)
		return NULL;
	for (uint32_t i = *cursor; i < t->count; i++)
		if (!memcmp(t->entries[i].gid, gid, 16)) {
			*cursor = i + 1;
			return t->entries[i].up;
		}
	return NULL;
}

struct sv_senders *sv_senders_publish(struct sv_senders *t)
{
	return atomic_exchange_explicit(&current, t, memory_order_acq_rel);
}

void sv_grh_sgid(const void *grh, uint8_t gid[16])
{
	const uint8_t *g = grh;
	static const uint8_t zeros[20];
	if (!memcmp(g, zeros, 20) && g[20] == 0x45) { /* IPv4, header length 5 words */
		memset(gid, 0, 10);
		gid[10] = gid[11] = 0xff;
		memcpy(gid + 12, g + 20 + 12, 4);
		return;
	}
	memcpy(gid, g + 8, 16);
}

const void *sv_ring_recv_grh(struct sv_qp *q, uint64_t wr_id)
{
	struct sv_wr_ring *r = q->recv_ring;
	if (!r)
		return NULL;
	uint64_t tail = sv_ring_tail(r);
	for (uint64_t i = sv_ring_head(r); i != tail; i++) {
		struct sv_ring_entry *e = sv_ring_at(r, i);
		if (e->done || e->wr.recv.wr_id != wr_id)
			continue;
		if (e->wr.recv.num_sge < 1 || sv_ring_sges(e)->length < 40)
			return NULL;
		return (const void *)(uintptr_t)sv_ring_sges(e)->addr;
	}
	return NULL;
}
