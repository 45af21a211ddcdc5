/*
 * udclaim: a UD receive from a sender in another process that moved shows the sender's virtual
 * QPN. The peer protocol's `ud-moved` claim ("my UD QP V is now at real QPN R", from the shim on
 * the sender's host) is what tells the receiving shim. Two processes on the software HCA cannot
 * exchange datagrams, so this program plays both: UA (device A) sends to UB (device B, or A), and
 * the program itself sends the claim a moved peer's shim would send, to its own shim's peer
 * service over loopback (run with STABLEVERBS_PEER_HOST=127.0.0.1, which makes the loopback speak
 * for every GID, and STABLEVERBS_PEER_PORT=P, STABLEVERBS_PEER_PORTS=1: the service's port).
 *
 *   1. before any claim: src_qp = UA's QPN (real = virtual);
 *   2. claim "V:R" for A's GID, R = UA's real QPN, V another number: src_qp = V;
 *   3. claim "V:V" (that QP is back at its own number): src_qp = R again, as it came;
 *   4. a claim that names no GID: refused ("denied"), nothing changes.
 *
 * A UD peer whose GID changed with its move (its NIC re-addressed): an address handle towards GID X
 * (::ffff:10.99.0.1, nobody's) and the claim that X's QP V is now at UB's GID and real QPN:
 *   5. without a commitment for X: refused;
 *   6. `ud-hello` gives X's commitment (SHA-256 of the secret "abc"); a claim whose proof is not
 *      that secret: refused;
 *   7. with the proof: noted; a send through the AH towards X to QPN V reaches UB (the shim made
 *      the real AH again towards UB's GID), and UB's sends to UA show src_qp V and source GID X;
 *   8. X back at its own address with the old proof again (the claim committed to a new secret):
 *      refused; with the new secret: noted.
 *   9. with no address handle towards another host left, a `ud-hello` (a process on "this" host
 *      made one towards us), then a planned move (stableverbs_detach / attach): the shim asks the
 *      greeter's shims to hold and tells them where its UD QPs went (its log, which the test reads:
 *      "asked 1 shim(s) on 127.0.0.1", "told 1 shim(s) on 127.0.0.1"); UA → UB still works.
 *
 *   udclaim
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include "common.h"
#include <dlfcn.h>
#include "stableverbs.h"

#define GRH 40
#define QKEY 0x11111111u
#define SLOT 256

static int errors;

/* Sends one peer-protocol request to this process's own service; returns the reply's verb. */
static void request(const char *verb_out, const char *body, char *verb, size_t verb_len);

static void claim(const char *gids, const char *qpns, char *verb, size_t verb_len)
{
	char body[256];
	snprintf(body, sizeof(body), "gids=%s\nqpns=%s\n", gids, qpns);
	request("ud-moved", body, verb, verb_len);
}

static void request(const char *verb_out, const char *body, char *verb, size_t verb_len)
{
	int port = tp_env_int("STABLEVERBS_PEER_PORT", 0);
	TP_CHECK(port > 0, "STABLEVERBS_PEER_PORT is not set");
	char req[1024];
	int n = snprintf(req, sizeof(req), "stableverbs-peer 1 %s\n%s", verb_out, body);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	TP_CHECK(fd >= 0, "socket: %s", strerror(errno));
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	double deadline = tp_now() + 10;
	while (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		TP_CHECK(tp_now() < deadline, "connect to the peer service on port %d: %s", port, strerror(errno));
		usleep(20000);
	}
	TP_CHECK(write(fd, req, (size_t)n) == n, "write: %s", strerror(errno));
	shutdown(fd, SHUT_WR);
	char rep[512];
	size_t got = 0;
	ssize_t r;
	while (got < sizeof(rep) - 1 && (r = read(fd, rep + got, sizeof(rep) - 1 - got)) > 0)
		got += (size_t)r;
	rep[got] = 0;
	close(fd);
	/* "stableverbs-peer 1 VERB\n..." */
	const char *magic = "stableverbs-peer 1 ";
	TP_CHECK(!strncmp(rep, magic, strlen(magic)), "the peer service answered \"%s\"", rep);
	size_t k = 0;
	for (const char *p = rep + strlen(magic); *p && *p != '\n' && k + 1 < verb_len; p++)
		verb[k++] = *p;
	verb[k] = 0;
}

static void hexgid(char out[33], const union ibv_gid *g)
{
	for (int i = 0; i < 16; i++)
		snprintf(out + 2 * i, 3, "%02x", g->raw[i]);
}

/* The source GID of a UD receive's GRH area (RoCEv2 over IPv4: the IPv4 header's, mapped). */
static void grh_sgid(const uint8_t *grh, union ibv_gid *sgid)
{
	static const uint8_t zeros[20];
	if (!memcmp(grh, zeros, 20) && grh[20] == 0x45) {
		memset(sgid->raw, 0, 10);
		sgid->raw[10] = sgid->raw[11] = 0xff;
		memcpy(sgid->raw + 12, grh + 20 + 12, 4);
	} else {
		memcpy(sgid->raw, grh + 8, 16);
	}
}

static union ibv_gid last_sgid;

static void exchange_to(struct tp_end *a, struct tp_end *b, struct ibv_ah *ah, uint32_t rqpn, uint32_t want,
			const char *what);

static void exchange(struct tp_end *a, struct tp_end *b, struct ibv_ah *ah, uint32_t want, const char *what)
{
	exchange_to(a, b, ah, b->qp->qp_num, want, what);
}

static void exchange_to(struct tp_end *a, struct tp_end *b, struct ibv_ah *ah, uint32_t rqpn, uint32_t want,
			const char *what)
{
	static uint32_t seq;
	uint32_t s = ++seq;
	memset(b->buf, 0, SLOT);
	tp_post_recv(b, s, b->buf, SLOT);
	uint8_t *src = a->buf + SLOT;
	tp_fill(src, 64, s);
	struct ibv_sge sg = {.addr = (uintptr_t)src, .length = 64, .lkey = a->mr->lkey};
	struct tp_wr w = {.op = TP_SEND, .wr_id = s, .sg = &sg, .num_sge = 1, .ah = ah, .rqpn = rqpn, .rqkey = QKEY};
	int rc = tp_post(a, &w, 0);
	TP_CHECK(rc == 0, "%s: post failed: %s", what, strerror(rc));
	struct ibv_wc wc;
	tp_expect(a->scq, &wc, IBV_WC_SEND, s, what);
	tp_expect(b->rcq, &wc, IBV_WC_RECV, s, what);
	TP_CHECK(wc.wc_flags & IBV_WC_GRH, "%s: no IBV_WC_GRH", what);
	errors += tp_verify(b->buf + GRH, 64, s, what);
	grh_sgid(b->buf, &last_sgid);
	if (wc.src_qp != want) {
		printf("udclaim: %s: src_qp 0x%x, expected 0x%x\n", what, wc.src_qp, want);
		errors++;
	} else {
		printf("udclaim: %s: src_qp 0x%x\n", what, wc.src_qp);
	}
}

int main(void)
{
	tp_start("udclaim", 60);
	__typeof__(&stableverbs_qp_identity) identity = dlsym(RTLD_DEFAULT, "stableverbs_qp_identity");
	TP_CHECK(identity, "stableverbs_qp_identity not found: is libstableverbs.so preloaded?");
	struct tp_dev da, dbs, *db;
	tp_open(&da, &dbs, &db);
	struct tp_qp_opts o = {.type = IBV_QPT_UD, .max_sge = 1, .buf_size = 4 * SLOT};
	struct tp_end a, b;
	tp_end_create(&a, &da, &o);
	tp_end_create(&b, db, &o);
	tp_ud_ready(&a);
	tp_ud_ready(&b);
	struct ibv_ah_attr aa;
	tp_ah_attr(&aa, &da, db, 1);
	struct ibv_ah *ah = ibv_create_ah(da.pd, &aa);
	TP_CHECK(ah, "ibv_create_ah failed: %s", strerror(errno));
	uint32_t v, real;
	TP_CHECK(identity(a.qp, &v, &real) == 0 && v == a.qp->qp_num, "stableverbs_qp_identity failed");
	char gid[33], pair[32], verb[32];
	for (int i = 0; i < 16; i++)
		snprintf(gid + 2 * i, 3, "%02x", da.gid.raw[i]);
	uint32_t other = real ^ 0x5a5a00u;

	exchange(&a, &b, ah, v, "before any claim");
	snprintf(pair, sizeof(pair), "%u:%u", other, real);
	claim(gid, pair, verb, sizeof(verb));
	TP_CHECK(!strcmp(verb, "noted"), "the claim %s for %s was answered %s", pair, gid, verb);
	exchange(&a, &b, ah, other, "after a claim that a peer's QP is at UA's real QPN");
	snprintf(pair, sizeof(pair), "%u:%u", other, other);
	claim(gid, pair, verb, sizeof(verb));
	TP_CHECK(!strcmp(verb, "noted"), "the claim %s for %s was answered %s", pair, gid, verb);
	exchange(&a, &b, ah, real, "after a claim that it is back at its own number");
	snprintf(pair, sizeof(pair), "%u:%u", other, real);
	claim("", pair, verb, sizeof(verb));
	printf("udclaim: a claim naming no GID: %s\n", verb);
	if (!strcmp(verb, "noted"))
		errors++;
	exchange(&a, &b, ah, real, "after a claim naming no GID");

	/* 5-8: X moved to UB's GID. */
	union ibv_gid x = {.raw = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 99, 0, 1}};
	char xhex[33], bhex[33], body[512];
	hexgid(xhex, &x);
	hexgid(bhex, &db->gid);
	struct ibv_ah_attr xa = aa;
	xa.is_global = 1;
	xa.grh.dgid = x;
	struct ibv_ah *ahx = ibv_create_ah(da.pd, &xa);
	TP_CHECK(ahx, "ibv_create_ah towards X failed: %s", strerror(errno));
	uint32_t vb = 0x7700u + (b.qp->qp_num & 0xff), vbq, rb;
	TP_CHECK(identity(b.qp, &vbq, &rb) == 0, "stableverbs_qp_identity failed");
	/* SHA-256("abc") and SHA-256("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") (FIPS 180-4). */
	const char *h1 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
	const char *h2 = "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1";
	const char *abc = "616263";
#define MOVED(proof) snprintf(body, sizeof(body), "gids=%s\nreal=%s\nqpns=%u:%u\nproof=%s\ncommit=%s\n", xhex, bhex, vb, rb, proof, h2)
	MOVED(abc);
	request("ud-moved", body, verb, sizeof(verb));
	printf("udclaim: X moved, no commitment for X: %s\n", verb);
	if (strcmp(verb, "denied"))
		errors++;
	snprintf(body, sizeof(body), "gids=%s\ncommit=%s\n", xhex, h1);
	request("ud-hello", body, verb, sizeof(verb));
	TP_CHECK(!strcmp(verb, "noted"), "ud-hello for X was answered %s", verb);
	MOVED("616264");
	request("ud-moved", body, verb, sizeof(verb));
	printf("udclaim: X moved, a wrong proof: %s\n", verb);
	if (strcmp(verb, "denied"))
		errors++;
	MOVED(abc);
	request("ud-moved", body, verb, sizeof(verb));
	printf("udclaim: X moved, its proof: %s\n", verb);
	if (strcmp(verb, "noted"))
		errors++;
	exchange_to(&a, &b, ahx, vb, v, "a send to X's QP V after X moved to UB's GID");
	struct ibv_ah_attr ba;
	tp_ah_attr(&ba, db, &da, 1);
	struct ibv_ah *ahb = ibv_create_ah(db->pd, &ba);
	TP_CHECK(ahb, "ibv_create_ah UB -> UA failed: %s", strerror(errno));
	exchange(&b, &a, ahb, vb, "a receive from UB after X moved there");
	if (memcmp(last_sgid.raw, x.raw, 16)) {
		char got[33];
		hexgid(got, &last_sgid);
		printf("udclaim: the receive from UB shows source GID %s, expected X %s\n", got, xhex);
		errors++;
	} else {
		printf("udclaim: the receive from UB shows source GID X\n");
	}
	/* X goes back to its own address: a change again, which needs the secret of the new commitment. */
	snprintf(body, sizeof(body), "gids=%s\nreal=%s\nqpns=%u:%u\nproof=%s\n", xhex, xhex, vb, vb, abc);
	request("ud-moved", body, verb, sizeof(verb));
	printf("udclaim: X moved back, the used proof again: %s\n", verb);
	if (strcmp(verb, "denied"))
		errors++;
	snprintf(body, sizeof(body), "gids=%s\nreal=%s\nqpns=%u:%u\nproof=%s\n", xhex, xhex, vb, vb,
		 "6162636462636465636465666465666765666768666768696768696a68696a6b696a6b6c6a6b6c6d6b6c6d6e6c6d6e6f6d6e6f706e6f7071");
	request("ud-moved", body, verb, sizeof(verb));
	printf("udclaim: X moved back, the next proof: %s\n", verb);
	if (strcmp(verb, "noted"))
		errors++;
	ibv_destroy_ah(ahb);
	ibv_destroy_ah(ahx);

	/* 9: told because greeted. */
	__typeof__(&stableverbs_detach) detach = dlsym(RTLD_DEFAULT, "stableverbs_detach");
	__typeof__(&stableverbs_attach) attach = dlsym(RTLD_DEFAULT, "stableverbs_attach");
	TP_CHECK(detach && attach, "stableverbs_detach/attach not found");
	snprintf(body, sizeof(body), "gids=%s\ncommit=%s\n", gid, h1);
	request("ud-hello", body, verb, sizeof(verb));
	printf("udclaim: a greeting: %s\n", verb);
	if (strcmp(verb, "noted"))
		errors++;
	TP_CHECK(detach(NULL) == 0, "stableverbs_detach failed: %s", strerror(errno));
	TP_CHECK(attach() == 0, "stableverbs_attach failed: %s", strerror(errno));
	exchange(&a, &b, ah, v, "after a planned move");
	printf("udclaim: %d errors\n", errors);
	return errors ? 1 : 0;
}
