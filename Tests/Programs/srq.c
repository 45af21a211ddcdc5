/*
 * srq: 16 RC QPs on the receive side share one SRQ (and one receive CQ); 16 sender QPs each send
 * their own numbered messages. Completions are told apart by wc.qp_num alone (as ibv_srq_pingpong
 * does): it must be the qp_num the application sees for the receiving QP, the payload must name
 * the same QP, messages of one QP arrive in order, and every message is accounted for exactly once.
 * Also: ibv_modify_srq (limit), ibv_query_srq, ibv_post_srq_recv with chains of receives.
 *
 *   srq [-q qps] [-m messages-per-qp] [-x]      -x senders use the wr_* API
 */
#include "common.h"

#define NQP_MAX 64
#define MSG 256
#define SRQ_WR 256

static int errors;

int main(int argc, char **argv)
{
	int nqp = 16, per = 100, ex = 0, opt;
	while ((opt = getopt(argc, argv, "q:m:x")) != -1) {
		switch (opt) {
		case 'q': nqp = atoi(optarg); break;
		case 'm': per = atoi(optarg); break;
		case 'x': ex = 1; break;
		default: fprintf(stderr, "usage: srq [-q qps] [-m messages] [-x]\n"); return 2;
		}
	}
	tp_start("srq", 60);
	TP_CHECK(nqp >= 1 && nqp <= NQP_MAX, "-q must be 1..%d", NQP_MAX);
	struct tp_dev da, dbs, *db;
	tp_open(&da, &dbs, &db);

	/* Receive side: one SRQ, one receive CQ, one big MR of SRQ_WR slots. */
	struct ibv_srq_init_attr sa = {.attr = {.max_wr = SRQ_WR, .max_sge = 1}};
	struct ibv_srq *srq = ibv_create_srq(db->pd, &sa);
	TP_CHECK(srq, "ibv_create_srq failed: %s", strerror(errno));
	struct ibv_cq *rcq = ibv_create_cq(db->ctx, SRQ_WR * 2, NULL, NULL, 0);
	TP_CHECK(rcq, "ibv_create_cq failed: %s", strerror(errno));
	uint8_t *slots;
	TP_CHECK(posix_memalign((void **)&slots, 4096, (size_t)SRQ_WR * MSG) == 0, "posix_memalign failed");
	struct ibv_mr *smr = ibv_reg_mr(db->pd, slots, (size_t)SRQ_WR * MSG, IBV_ACCESS_LOCAL_WRITE);
	TP_CHECK(smr, "ibv_reg_mr failed: %s", strerror(errno));

	/* Fill the SRQ with chains of 8 receives. */
	for (int k = 0; k < SRQ_WR; k += 8) {
		struct ibv_sge sg[8];
		struct ibv_recv_wr wr[8], *bad = NULL;
		for (int j = 0; j < 8; j++) {
			sg[j] = (struct ibv_sge){.addr = (uintptr_t)(slots + (size_t)(k + j) * MSG), .length = MSG,
						 .lkey = smr->lkey};
			wr[j] = (struct ibv_recv_wr){.wr_id = (uint64_t)(k + j), .sg_list = &sg[j], .num_sge = 1,
						     .next = j < 7 ? &wr[j + 1] : NULL};
		}
		int rc = ibv_post_srq_recv(srq, wr, &bad);
		TP_CHECK(rc == 0, "ibv_post_srq_recv failed: %s", strerror(rc));
	}
	struct ibv_srq_attr lim = {.srq_limit = 4};
	int rc = ibv_modify_srq(srq, &lim, IBV_SRQ_LIMIT);
	TP_CHECK(rc == 0, "ibv_modify_srq(IBV_SRQ_LIMIT) failed: %s", strerror(rc));
	struct ibv_srq_attr q;
	rc = ibv_query_srq(srq, &q);
	TP_CHECK(rc == 0, "ibv_query_srq failed: %s", strerror(rc));
	TP_CHECK(q.max_wr >= SRQ_WR && q.srq_limit == 4, "ibv_query_srq: max_wr %u srq_limit %u", q.max_wr,
		 q.srq_limit);

	struct tp_end snd[NQP_MAX], rcv[NQP_MAX];
	struct tp_qp_opts so = {.type = IBV_QPT_RC, .ex = ex, .buf_size = 4096, .max_send_wr = 128};
	struct tp_qp_opts ro = {.type = IBV_QPT_RC, .srq = srq, .rcq = rcq, .buf_size = 4096};
	for (int i = 0; i < nqp; i++) {
		tp_end_create(&snd[i], &da, &so);
		tp_end_create(&rcv[i], db, &ro);
		tp_connect_rc(&snd[i], &rcv[i]);
	}
	for (int i = 0; i < nqp; i++)
		for (int j = 0; j < i; j++)
			TP_CHECK(rcv[i].qp->qp_num != rcv[j].qp->qp_num, "two QPs share qp_num 0x%x",
				 rcv[i].qp->qp_num);

	int next_send[NQP_MAX] = {0}, next_recv[NQP_MAX] = {0}, in_flight[NQP_MAX] = {0};
	long total = (long)nqp * per, received = 0, sent_done = 0;
	double deadline = tp_now() + 30;
	while (received < total || sent_done < total) {
		TP_CHECK(tp_now() < deadline, "stuck: %ld of %ld received, %ld of %ld sends completed", received,
			 total, sent_done, total);
		/* Keep up to 8 sends in flight per QP, round robin: completions interleave across QPs. */
		for (int i = 0; i < nqp; i++) {
			while (next_send[i] < per && in_flight[i] < 8) {
				int m = next_send[i]++;
				uint8_t *p = snd[i].buf + (size_t)(m % 8) * MSG;
				uint32_t hdr[2] = {(uint32_t)i, (uint32_t)m};
				size_t len = 8 + (size_t)((i * 31 + m * 7) % (MSG - 8));
				memcpy(p, hdr, 8);
				tp_fill(p + 8, len - 8, (uint32_t)(i * 100000 + m));
				struct ibv_sge sg = {.addr = (uintptr_t)p, .length = (uint32_t)len, .lkey = snd[i].mr->lkey};
				struct tp_wr w = {.op = TP_SEND, .wr_id = (uint64_t)m, .sg = &sg, .num_sge = 1};
				rc = tp_post(&snd[i], &w, ex);
				TP_CHECK(rc == 0, "post SEND on sender %d failed: %s", i, strerror(rc));
				in_flight[i]++;
			}
		}
		struct ibv_wc wc[16];
		for (int i = 0; i < nqp; i++) {
			int n = ibv_poll_cq(snd[i].scq, 16, wc);
			TP_CHECK(n >= 0, "ibv_poll_cq failed");
			for (int k = 0; k < n; k++) {
				TP_CHECK(wc[k].status == IBV_WC_SUCCESS, "send on QP %d: status %s", i,
					 tp_status_name(wc[k].status));
				in_flight[i]--;
				sent_done++;
			}
		}
		int n = ibv_poll_cq(rcq, 16, wc);
		TP_CHECK(n >= 0, "ibv_poll_cq failed");
		for (int k = 0; k < n; k++) {
			TP_CHECK(wc[k].status == IBV_WC_SUCCESS, "SRQ receive: status %s", tp_status_name(wc[k].status));
			TP_CHECK(wc[k].opcode == IBV_WC_RECV, "SRQ receive: opcode %d", wc[k].opcode);
			int who = -1;
			for (int i = 0; i < nqp; i++)
				if (rcv[i].qp->qp_num == wc[k].qp_num)
					who = i;
			uint8_t *p = slots + (size_t)wc[k].wr_id * MSG;
			uint32_t hdr[2];
			memcpy(hdr, p, 8);
			if (who < 0) {
				printf("srq: a completion with wc.qp_num 0x%x, which is none of our QPs\n", wc[k].qp_num);
				errors++;
			} else if (hdr[0] != (uint32_t)who) {
				printf("srq: wc.qp_num 0x%x is receiver %d, but the message came from sender %u\n",
				       wc[k].qp_num, who, hdr[0]);
				errors++;
			} else if (hdr[1] != (uint32_t)next_recv[who]) {
				printf("srq: receiver %d got message %u, expected %d (order/duplicate)\n", who, hdr[1],
				       next_recv[who]);
				errors++;
				next_recv[who] = (int)hdr[1] + 1;
			} else {
				size_t len = 8 + (size_t)((who * 31 + (int)hdr[1] * 7) % (MSG - 8));
				if (wc[k].byte_len != len) {
					printf("srq: receiver %d message %u: byte_len %u, expected %zu\n", who, hdr[1],
					       wc[k].byte_len, len);
					errors++;
				} else {
					char what[64];
					snprintf(what, sizeof(what), "receiver %d message %u", who, hdr[1]);
					errors += tp_verify(p + 8, len - 8, (uint32_t)(who * 100000) + hdr[1], what);
				}
				next_recv[who]++;
			}
			received++;
			/* Give the slot back to the SRQ. */
			memset(p, 0, MSG);
			struct ibv_sge sg = {.addr = (uintptr_t)p, .length = MSG, .lkey = smr->lkey};
			struct ibv_recv_wr wr = {.wr_id = wc[k].wr_id, .sg_list = &sg, .num_sge = 1}, *bad = NULL;
			rc = ibv_post_srq_recv(srq, &wr, &bad);
			TP_CHECK(rc == 0, "ibv_post_srq_recv failed: %s", strerror(rc));
		}
		if (errors > 20)
			tp_fail("too many errors");
	}
	for (int i = 0; i < nqp; i++)
		if (next_recv[i] != per) {
			printf("srq: receiver %d got %d messages, expected %d\n", i, next_recv[i], per);
			errors++;
		}
	tp_expect_empty(rcq, "SRQ receive CQ at the end");

	for (int i = 0; i < nqp; i++) {
		tp_end_destroy(&snd[i], 1);
		tp_end_destroy(&rcv[i], 0);
	}
	rc = ibv_destroy_srq(srq);
	TP_CHECK(rc == 0, "ibv_destroy_srq failed: %s", strerror(rc));
	rc = ibv_destroy_cq(rcq);
	TP_CHECK(rc == 0, "ibv_destroy_cq failed: %s", strerror(rc));
	rc = ibv_dereg_mr(smr);
	TP_CHECK(rc == 0, "ibv_dereg_mr failed: %s", strerror(rc));
	free(slots);
	if (db != &da)
		tp_close_dev(db);
	tp_close_dev(&da);
	printf("srq: %d QPs x %d messages = %ld received, %d errors\n", nqp, per, received, errors);
	return errors ? 1 : 0;
}
