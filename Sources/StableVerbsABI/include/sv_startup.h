/*
 * Process start-up, done in C: the constructor runs before the (static) Swift runtime's own
 * initialisers, so it only resolves the real libibverbs and reads the environment. Swift state is
 * built on the first intercepted call.
 */
#ifndef SV_STARTUP_H
#define SV_STARTUP_H
#include <stddef.h>
#ifdef __cplusplus
extern "C" {
#endif

/* The environment as the constructor saw it (values copied): every STABLEVERBS_* variable and
 * XDG_RUNTIME_DIR. NULL when unset. */
const char *sv_env(const char *name);
/* The i-th name kept (NULL past the last): Configuration.swift warns about unknown ones. */
const char *sv_env_name(size_t i);

/* Real dlsym/dlvsym of the C library, for the shim's own dlsym interposer. */
void *sv_real_dlsym(void *handle, const char *symbol);
void *sv_real_dlvsym(void *handle, const char *symbol, const char *version);

/* Pid at which the process-wide state was made (fork detection). */
int sv_startup_pid(void);

/* Write a whole line to fd, retrying on EINTR; never allocates. */
void sv_write_line(int fd, const char *text, size_t length);

#ifdef __cplusplus
}
#endif
#endif
