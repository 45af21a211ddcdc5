/*
 * Vendor direct-verbs entry points (mlx5dv_*) on the shim's virtual objects.
 *
 * A program linked with libmlx5 that hands a virtual context, device or object to an mlx5dv_*
 * function would have the provider read private state the virtual object does not have. The shim
 * defines the common entry points itself: on a virtual object they log once and fail cleanly
 * (EOPNOTSUPP, or "not supported" for the predicate); on a real object — pass-through mode, or a
 * program that uses the provider directly — they forward to the next definition (libmlx5), and
 * answer EOPNOTSUPP when there is none.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <infiniband/verbs.h>

#include "sv_control.h"
#include "sv_objects.h"
#include "sv_startup.h"

/* Provided by the Swift core: one warning per verb name (first use only). */
extern void sv_report_unsupported(const char *verb);

struct mlx5dv_context_attr;
struct mlx5dv_context;
struct mlx5dv_obj;
struct mlx5dv_qp_init_attr;
struct mlx5dv_cq_init_attr;

static int is_virtual_device(struct ibv_device *d)
{
	return d && ((struct sv_device *)d)->magic == SV_MAGIC_DEVICE;
}

/* Every rdma-core object starts with its context pointer. */
static int is_virtual_object(const void *object)
{
	return object && sv_is_virtual_context(*(struct ibv_context *const *)object);
}

static void *next_definition(const char *name)
{
	return sv_real_dlsym(RTLD_NEXT, name);
}

#define REFUSE(verb, value)                                                                        \
	do {                                                                                       \
		sv_report_unsupported(verb);                                                       \
		errno = EOPNOTSUPP;                                                                \
		return value;                                                                      \
	} while (0)

bool mlx5dv_is_supported(struct ibv_device *device)
{
	if (is_virtual_device(device)) {
		sv_report_unsupported("mlx5dv_is_supported");
		return false;
	}
	bool (*f)(struct ibv_device *) = next_definition("mlx5dv_is_supported");
	return f ? f(device) : false;
}

struct ibv_context *mlx5dv_open_device(struct ibv_device *device, struct mlx5dv_context_attr *attr)
{
	struct ibv_context *(*f)(struct ibv_device *, struct mlx5dv_context_attr *) =
		next_definition("mlx5dv_open_device");
	if (is_virtual_device(device) || !f)
		REFUSE("mlx5dv_open_device", NULL);
	return f(device, attr);
}

int mlx5dv_query_device(struct ibv_context *context, struct mlx5dv_context *attrs)
{
	int (*f)(struct ibv_context *, struct mlx5dv_context *) = next_definition("mlx5dv_query_device");
	if (sv_is_virtual_context(context) || !f) {
		sv_report_unsupported("mlx5dv_query_device");
		return EOPNOTSUPP;
	}
	return f(context, attrs);
}

/* struct mlx5dv_obj is a list of {in, out} pairs, one per object type bit, in this order. */
int mlx5dv_init_obj(struct mlx5dv_obj *obj, uint64_t obj_type)
{
	int (*f)(struct mlx5dv_obj *, uint64_t) = next_definition("mlx5dv_init_obj");
	void **pairs = (void **)obj;
	for (int bit = 0; obj && bit < 7; bit++)
		if ((obj_type & (1ULL << bit)) && is_virtual_object(pairs[2 * bit])) {
			sv_report_unsupported("mlx5dv_init_obj");
			return EOPNOTSUPP;
		}
	if (!f) {
		sv_report_unsupported("mlx5dv_init_obj");
		return EOPNOTSUPP;
	}
	return f(obj, obj_type);
}

struct ibv_qp *mlx5dv_create_qp(struct ibv_context *context, struct ibv_qp_init_attr_ex *qp_attr,
				struct mlx5dv_qp_init_attr *mlx5_qp_attr)
{
	struct ibv_qp *(*f)(struct ibv_context *, struct ibv_qp_init_attr_ex *,
			    struct mlx5dv_qp_init_attr *) = next_definition("mlx5dv_create_qp");
	if (sv_is_virtual_context(context) || !f)
		REFUSE("mlx5dv_create_qp", NULL);
	return f(context, qp_attr, mlx5_qp_attr);
}

struct ibv_cq_ex *mlx5dv_create_cq(struct ibv_context *context, struct ibv_cq_init_attr_ex *cq_attr,
				   struct mlx5dv_cq_init_attr *mlx5_cq_attr)
{
	struct ibv_cq_ex *(*f)(struct ibv_context *, struct ibv_cq_init_attr_ex *,
			       struct mlx5dv_cq_init_attr *) = next_definition("mlx5dv_create_cq");
	if (sv_is_virtual_context(context) || !f)
		REFUSE("mlx5dv_create_cq", NULL);
	return f(context, cq_attr, mlx5_cq_attr);
}
