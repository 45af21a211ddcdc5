/* Start-up in C: the environment snapshot and the libc entry points the shim must not interpose. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "sv_startup.h"

static const char *const env_names[] = {
	"STABLEVERBS_LOG", "STABLEVERBS_LOG_FILE", "STABLEVERBS_PASSTHROUGH",
	"STABLEVERBS_LOWER", "STABLEVERBS_SOFTHCA",
	/* recovery (Sources/StableVerbs/Recovery/Recovery.swift) */
	"STABLEVERBS_MATCH", "STABLEVERBS_MATCH_WAIT_MS", "STABLEVERBS_QUIESCE_MS", "STABLEVERBS_GRACE_US",
	"STABLEVERBS_DEVICE_WAIT_MS", "STABLEVERBS_LOSS_WAIT_MS", "STABLEVERBS_RESCAN_MS",
	/* the control socket's directory (Sources/StableVerbsControl/RuntimeDirectory.swift) */
	"STABLEVERBS_RUNTIME_DIR", "XDG_RUNTIME_DIR",
};
#define ENV_COUNT (sizeof(env_names) / sizeof(env_names[0]))
static char *env_values[ENV_COUNT];
static int startup_pid;

typedef void *(*dlsym_fn)(void *, const char *);
typedef void *(*dlvsym_fn)(void *, const char *, const char *);
static dlsym_fn libc_dlsym;
static dlvsym_fn libc_dlvsym;

__attribute__((constructor)) static void sv_startup(void)
{
	startup_pid = (int)getpid();
	for (size_t i = 0; i < ENV_COUNT; i++) {
		const char *v = getenv(env_names[i]);
		env_values[i] = v ? strdup(v) : NULL;
	}
	/* dlvsym itself is never interposed by the shim, so this lookup is safe. */
	libc_dlvsym = (dlvsym_fn)dlvsym(RTLD_NEXT, "dlvsym", "GLIBC_2.2.5");
	libc_dlsym = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.34");
	if (!libc_dlsym)
		libc_dlsym = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.2.5");
}

const char *sv_env(const char *name)
{
	for (size_t i = 0; i < ENV_COUNT; i++)
		if (strcmp(env_names[i], name) == 0)
			return env_values[i];
	return NULL;
}

void *sv_real_dlsym(void *handle, const char *symbol)
{
	return libc_dlsym ? libc_dlsym(handle, symbol) : NULL;
}

void *sv_real_dlvsym(void *handle, const char *symbol, const char *version)
{
	return libc_dlvsym ? libc_dlvsym(handle, symbol, version) : dlvsym(handle, symbol, version);
}

int sv_startup_pid(void)
{
	return startup_pid;
}

void sv_write_line(int fd, const char *text, size_t length)
{
	while (length > 0) {
		ssize_t n = write(fd, text, length);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return;
		}
		text += n;
		length -= (size_t)n;
	}
}
