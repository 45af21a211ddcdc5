/*
 * control: the control socket's life cycle, seen from the process (issue 4 part 2). Run under
 * LD_PRELOAD with STABLEVERBS_RUNTIME_DIR set.
 *
 *   control           before the first device context: stableverbs_control_path says ENOENT and
 *                     there is no <dir>/<pid>.sock; after ibv_open_device: the path is exactly
 *                     <dir>/<pid>.sock, a socket of mode 0600 in a directory of mode 0700 owned by
 *                     this uid (ERANGE for a short buffer). A fork child that never opens a device
 *                     exits (atexit handlers run) and the parent's socket stays. A fork child that
 *                     opens a device gets <dir>/<child pid>.sock (ENOENT before that), and its exit
 *                     removes it (the parent's stays).
 *   control -r        the runtime directory is refused: after ibv_open_device the path is still
 *                     ENOENT and the directory holds no socket of this pid.
 *   control -f N      the life cycle, then N fork children in a row while the parent has a device
 *                     open (the shim's threads run and take its control lock): each child's first
 *                     control-path call must answer (ENOENT) within 5 s — a child that inherited
 *                     the lock held by a thread it does not have would hang.
 *
 * Prints "control: <mode>, 0 errors" when every check held.
 */
#include "common.h"
#include <dlfcn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include "stableverbs.h"

static int errors;
static __typeof__(&stableverbs_control_path) sv_path;

static void check(int ok, const char *what)
{
	if (!ok) {
		printf("control[%d]: FAILED: %s\n", (int)getpid(), what);
		errors++;
	}
}

static int exists(const char *path)
{
	struct stat st;
	return lstat(path, &st) == 0;
}

static void expect_socket(const char *dir, pid_t pid, const char *what)
{
	char want[512], got[512];
	snprintf(want, sizeof(want), "%s/%d.sock", dir, (int)pid);
	int rc = sv_path(got, sizeof(got));
	if (rc != 0) {
		printf("control[%d]: FAILED: %s: stableverbs_control_path: %s\n", (int)getpid(), what, strerror(rc));
		errors++;
		return;
	}
	check(strcmp(got, want) == 0, "the control path is <dir>/<pid>.sock");
	struct stat st;
	check(lstat(want, &st) == 0 && S_ISSOCK(st.st_mode), "the control socket exists and is a socket");
	check((st.st_mode & 07777) == 0600, "the control socket has mode 0600");
	check(st.st_uid == geteuid(), "the control socket belongs to this uid");
	check(lstat(dir, &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 07777) == 0700, "the runtime dir has mode 0700");
	char small[8];
	check(sv_path(small, sizeof(small)) == ERANGE, "a short buffer gives ERANGE");
}

static struct ibv_context *open_first(void)
{
	int n = 0;
	struct ibv_device **list = ibv_get_device_list(&n);
	TP_CHECK(list && n > 0, "no device");
	struct ibv_context *ctx = ibv_open_device(list[0]);
	TP_CHECK(ctx, "ibv_open_device failed: %s", strerror(errno));
	ibv_free_device_list(list);
	return ctx;
}

int main(int argc, char **argv)
{
	int refused = argc > 1 && strcmp(argv[1], "-r") == 0;
	int forks = argc > 2 && strcmp(argv[1], "-f") == 0 ? atoi(argv[2]) : 0;
	tp_start("control", 60);
	sv_path = dlsym(RTLD_DEFAULT, "stableverbs_control_path");
	TP_CHECK(sv_path, "stableverbs_control_path not found: is libstableverbs.so preloaded?");
	const char *dir = getenv("STABLEVERBS_RUNTIME_DIR");
	TP_CHECK(dir && *dir, "set STABLEVERBS_RUNTIME_DIR");
	char mine[512], buf[512];
	snprintf(mine, sizeof(mine), "%s/%d.sock", dir, (int)getpid());

	check(sv_path(buf, sizeof(buf)) == ENOENT, "ENOENT before the first device context");
	check(!exists(mine), "no socket before the first device context");
	struct ibv_context *ctx = open_first();

	if (refused) {
		check(sv_path(buf, sizeof(buf)) == ENOENT, "ENOENT when the runtime directory is refused");
		check(!exists(mine), "no socket in a refused runtime directory");
		ibv_close_device(ctx);
		printf("control: refused, %d errors\n", errors);
		return errors ? 1 : 0;
	}
	expect_socket(dir, getpid(), "parent");

	/* A child that never opens a device: its exit must not remove the parent's socket. */
	pid_t child = fork();
	TP_CHECK(child >= 0, "fork failed");
	if (child == 0) {
		int ok = sv_path(buf, sizeof(buf)) == ENOENT;
		exit(ok ? 0 : 7);
	}
	int status = 0;
	waitpid(child, &status, 0);
	check(WIFEXITED(status) && WEXITSTATUS(status) == 0, "a fork child has no control path before it opens a device");
	check(exists(mine), "the parent's socket survives a child's exit");

	/* A child that opens a device: its own socket, removed at its exit. */
	child = fork();
	TP_CHECK(child >= 0, "fork failed");
	if (child == 0) {
		int before = sv_path(buf, sizeof(buf));
		check(before == ENOENT, "ENOENT in a fork child before it opens a device");
		struct ibv_context *c2 = open_first();
		expect_socket(dir, getpid(), "child");
		check(exists(mine), "the parent's socket is still there while the child has its own");
		ibv_close_device(c2);
		exit(errors ? 1 : 0);
	}
	waitpid(child, &status, 0);
	check(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the fork child's checks");
	char childs[512];
	snprintf(childs, sizeof(childs), "%s/%d.sock", dir, (int)child);
	check(!exists(childs), "the child's socket is removed at its exit");
	check(exists(mine), "the parent's socket survives");
	expect_socket(dir, getpid(), "parent after the children");

	int hung = 0;
	for (int i = 0; i < forks; i++) {
		child = fork();
		TP_CHECK(child >= 0, "fork failed");
		if (child == 0)
			_exit(sv_path(buf, sizeof(buf)) == ENOENT ? 0 : 7);
		int waited = 0;
		pid_t r;
		while ((r = waitpid(child, &status, WNOHANG)) == 0 && waited < 5000) {
			usleep(1000);
			waited++;
		}
		if (r == 0) {
			kill(child, SIGKILL);
			waitpid(child, &status, 0);
			hung++;
		} else {
			check(WIFEXITED(status) && WEXITSTATUS(status) == 0, "a fork child's control path answers ENOENT");
		}
	}
	if (forks > 0) {
		printf("control: %d fork children, %d hung\n", forks, hung);
		check(hung == 0, "no fork child hangs in the control path");
	}

	ibv_close_device(ctx);
	printf("control: lifecycle, %d errors\n", errors);
	return errors ? 1 : 0;
}
