/* Virtual object headers that rdma-core's inline code trusts. */
#include <string.h>
#include "sv_objects.h"

void *sv_shim_post_send_op;

void sv_context_init_header(struct sv_context *c, struct ibv_context *real, struct ibv_device *vdev)
{
	struct ibv_context *pub = &c->vctx.context;

	c->vctx.sz = sizeof(struct verbs_context);
	pub->abi_compat = __VERBS_ABI_IS_EXTENDED;
	pub->device = vdev;
	pub->cmd_fd = real ? real->cmd_fd : -1;
	pub->async_fd = real ? real->async_fd : -1;
	pub->num_comp_vectors = real ? real->num_comp_vectors : 1;
	pthread_mutex_init(&pub->mutex, NULL);
	c->real = real;
	c->real_vctx = real ? verbs_get_ctx(real) : NULL;
}

/* rdma-core 44 (Debian 12) layouts the inline verbs code relies on. */
_Static_assert(sizeof(struct verbs_context) == 648, "verbs_context is 648 bytes in rdma-core 44");
_Static_assert(offsetof(struct verbs_context, context) == 320, "ibv_context sits at offset 320");
_Static_assert(offsetof(struct verbs_context, context) + sizeof(struct ibv_context) ==
		       sizeof(struct verbs_context),
	       "ibv_context is the last member of verbs_context");
_Static_assert(offsetof(struct sv_context, vctx) == 0, "the verbs_context starts the virtual context");
_Static_assert(offsetof(struct sv_qp, qpx) == 0 && offsetof(struct ibv_qp_ex, qp_base) == 0,
	       "an ibv_qp pointer is an sv_qp pointer");
_Static_assert(offsetof(struct sv_cq, cq) == 0, "an ibv_cq pointer is an sv_cq pointer");
