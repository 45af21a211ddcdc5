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

/* The environment as the constructor saw it (getenv is safe there; values are copied). NULL when
 * unset. Names: STABLEVERBS_LOG, STABLEVERBS_LOG_FILE, STABLEVERBS_PASSTHROUGH,
 * STABLEVERBS_LOWER, STABLEVERBS_SOFTHCA, and the recovery's STABLEVERBS_MATCH,
 * STABLEVERBS_MATCH_WAIT_MS, STABLEVERBS_QUIESCE_MS, STABLEVERBS_GRACE_US, STABLEVERBS_DEVICE_WAIT_MS,
 * STABLEVERBS_RESCAN_MS, and the control socket's STABLEVERBS_RUNTIME_DIR and XDG_RUNTIME_DIR. */
const char *sv_env(const char *name);

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
