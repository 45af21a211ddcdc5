/*
 * dlsym interposer: programs that dlopen("libibverbs.so.1") and look verbs up by name (NCCL, UCX,
 * libfabric) must get the shim's functions, exactly as programs linked against libibverbs do.
 *
 * For a handle that is libibverbs' own and an ibv_* / _ibv_* name this library defines, return the
 * shim's definition. Every other lookup is a tail call into the C library's dlsym, so that glibc
 * still sees the original caller's return address (RTLD_NEXT stays relative to the caller).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <string.h>
#include "sv_control.h"
#include "sv_startup.h"

typedef void *(*dlsym_fn)(void *, const char *);

static dlsym_fn next_dlsym;
static void *ibverbs_handle;   /* libibverbs.so.1's handle, once it is loaded */
static void *self_handle;      /* this object's handle */
static void *self_base;        /* this object's load address (dladdr) */
static int self_state;         /* 0 unknown, 1 resolved, -1 unavailable */
static unsigned long redirections;

static dlsym_fn resolve_next(void)
{
	dlsym_fn f = __atomic_load_n(&next_dlsym, __ATOMIC_ACQUIRE);
	if (f)
		return f;
	f = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.34");
	if (!f)
		f = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.2.5");
	__atomic_store_n(&next_dlsym, f, __ATOMIC_RELEASE);
	return f;
}

static int resolve_self(void)
{
	int state = __atomic_load_n(&self_state, __ATOMIC_ACQUIRE);
	if (state)
		return state;
	Dl_info info;
	void *h = NULL;
	if (dladdr((void *)&resolve_self, &info) && info.dli_fname) {
		h = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
		self_base = info.dli_fbase;
	}
	self_handle = h;
	state = h ? 1 : -1;
	__atomic_store_n(&self_state, state, __ATOMIC_RELEASE);
	return state;
}

static int is_ibverbs_handle(void *handle)
{
	void *known = __atomic_load_n(&ibverbs_handle, __ATOMIC_ACQUIRE);
	if (!known) {
		known = dlopen("libibverbs.so.1", RTLD_LAZY | RTLD_NOLOAD);
		if (!known)
			return 0;
		/* Keep the reference: libibverbs is a dependency of this library anyway. */
		__atomic_store_n(&ibverbs_handle, known, __ATOMIC_RELEASE);
	}
	return handle == known;
}

static void *shim_symbol(void *handle, const char *symbol)
{
	if (!symbol || handle == RTLD_DEFAULT || handle == RTLD_NEXT)
		return NULL;
	if (strncmp(symbol, "ibv_", 4) != 0 && strncmp(symbol, "_ibv_", 5) != 0)
		return NULL;
	if (!is_ibverbs_handle(handle) || resolve_self() != 1)
		return NULL;
	dlsym_fn next = resolve_next();
	if (!next)
		return NULL;
	void *own = next(self_handle, symbol);
	Dl_info info;
	if (!own || !dladdr(own, &info) || info.dli_fbase != self_base)
		return NULL; /* not one of ours: found in a dependency */
	__atomic_add_fetch(&redirections, 1, __ATOMIC_RELAXED);
	return own;
}

void *dlsym(void *handle, const char *symbol)
{
	void *own = shim_symbol(handle, symbol);
	if (own)
		return own;
	dlsym_fn next = resolve_next();
	if (!next)
		return NULL;
	__attribute__((musttail)) return next(handle, symbol);
}

unsigned long sv_dlsym_redirections(void)
{
	return __atomic_load_n(&redirections, __ATOMIC_RELAXED);
}
