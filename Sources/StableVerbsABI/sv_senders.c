/* UD senders: real GID -> virtual GID and the sender's map of real QPN -> virtual QPN, and the GRH
 * a UD receive carries (sv_objects.h). */
#include <string.h>
#include "sv_objects.h"

static _Atomic(struct sv_senders *) current;

const struct sv_sender *sv_senders_next(const uint8_t gid[16], uint32_t *cursor)
{
	const struct sv_senders *t = atomic_load_explicit(&current, memory_order_acquire);
	if (!t)
		return NULL;
	for (uint32_t i = *cursor; i < t->count; i++)
		if (!memcmp(t->entries[i].gid, gid, 16)) {
			*cursor = i + 1;
			return &t->entries[i];
		}
	return NULL;
}

struct sv_senders *sv_senders_publish(struct sv_senders *t)
{
	return atomic_exchange_explicit(&current, t, memory_order_acq_rel);
}

/* RoCEv2 over IPv4: the GRH area's first 20 bytes are zero and an IPv4 header follows. */
#define IP4 20
static const uint8_t v4_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

static int is_ipv4(const uint8_t *g)
{
	static const uint8_t zeros[IP4];
	return !memcmp(g, zeros, IP4) && g[IP4] == 0x45;
}

static void mapped(uint8_t gid[16], const uint8_t *addr)
{
	memcpy(gid, v4_prefix, 12);
	memcpy(gid + 12, addr, 4);
}

int sv_grh_gids(const void *grh, uint8_t sgid[16], uint8_t dgid[16])
{
	const uint8_t *g = grh;
	if (is_ipv4(g)) {
		mapped(sgid, g + IP4 + 12);
		mapped(dgid, g + IP4 + 16);
		return 4;
	}
	memcpy(sgid, g + 8, 16);
	memcpy(dgid, g + 24, 16);
	return 6;
}

static uint16_t ip4_checksum(const uint8_t *h)
{
	uint32_t sum = 0;
	for (int i = 0; i < 20; i += 2)
		if (i != 10)
			sum += (uint32_t)h[i] << 8 | h[i + 1];
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

int sv_grh_set_gids(void *grh, int version, const uint8_t *sgid, const uint8_t *dgid)
{
	uint8_t *g = grh;
	if (version == 6) {
		if (sgid)
			memcpy(g + 8, sgid, 16);
		if (dgid)
			memcpy(g + 24, dgid, 16);
		return 0;
	}
	if ((sgid && memcmp(sgid, v4_prefix, 12)) || (dgid && memcmp(dgid, v4_prefix, 12)))
		return -1;
	uint8_t *h = g + IP4;
	if (sgid)
		memcpy(h + 12, sgid + 12, 4);
	if (dgid)
		memcpy(h + 16, dgid + 12, 4);
	uint16_t c = ip4_checksum(h);
	h[10] = (uint8_t)(c >> 8);
	h[11] = (uint8_t)c;
	return 0;
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
		if (e->wr.recv.num_sge < 1 || sv_ring_recv_sges(e)->length < 40)
			return NULL;
		return (const void *)(uintptr_t)sv_ring_recv_sges(e)->addr;
	}
	return NULL;
}
