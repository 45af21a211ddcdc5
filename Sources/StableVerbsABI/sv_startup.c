/* Start-up in C: the environment snapshot and the libc entry points the shim must not interpose. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "sv_startup.h"

/* Every STABLEVERBS_* variable, and XDG_RUNTIME_DIR (the control socket's directory), as the
 * constructor saw them: which names are settings is Swift's to say (Configuration.swift), so a
 * setting can never be missing here. */
#define ENV_MAX 64
static char *env_names[ENV_MAX];
static char *env_values[ENV_MAX];
static size_t env_count;
extern char **environ;
static int startup_pid;

typedef void *(*dlsym_fn)(void *, const char *);
typedef void *(*dlvsym_fn)(void *, const char *, const char *);
static dlsym_fn libc_dlsym;
static dlvsym_fn libc_dlvsym;

__attribute__((constructor)) static void sv_startup(void)
{
	startup_pid = (int)getpid();
	for (char **e = environ; e && *e && env_count < ENV_MAX; e++) {
		const char *eq = strchr(*e, '=');
		if (!eq || (strncmp(*e, "STABLEVERBS_", 12) != 0 && strncmp(*e, "XDG_RUNTIME_DIR=", 16) != 0))
			continue;
		char *name = strndup(*e, (size_t)(eq - *e));
		char *value = strdup(eq + 1);
		if (!name || !value) {
			free(name);
			free(value);
			break;
		}
		env_names[env_count] = name;
		env_values[env_count] = value;
		env_count++;
	}
	/* dlvsym itself is never interposed by the shim, so this lookup is safe. */
	libc_dlvsym = (dlvsym_fn)dlvsym(RTLD_NEXT, "dlvsym", "GLIBC_2.2.5");
	libc_dlsym = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.34");
	if (!libc_dlsym)
		libc_dlsym = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.2.5");
}

const char *sv_env(const char *name)
{
	for (size_t i = 0; i < env_count; i++)
		if (strcmp(env_names[i], name) == 0)
			return env_values[i];
	return NULL;
}

const char *sv_env_name(size_t i)
{
	return i < env_count ? env_names[i] : NULL;
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
