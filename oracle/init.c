// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * /init of the oracle's initramfs (record.sh): mounts proc, sysfs and devtmpfs, makes sure
 * /dev/iommu exists, runs `/gen SEED NOPS` for each seed of /seeds ("FIRST LAST NOPS"), its
 * output on the console between markers, then reboots (QEMU runs with -no-reboot, so it exits:
 * the kernel has no ACPI to power off with).
 *
 * Markers (one line each, on the console):
 *   @@ORACLE BEGIN kernel=RELEASE
 *   @@SEED N BEGIN
 *   ... gen's output ...
 *   @@SEED N END status=S
 *   @@ORACLE END
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n > 0)
		(void)!write(1, buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
}

static void make_iommu_node(void)
{
	struct stat st;
	if (stat("/dev/iommu", &st) == 0)
		return;
	/* misc device: major 10, minor from /sys/class/misc/iommu/dev */
	FILE *f = fopen("/sys/class/misc/iommu/dev", "r");
	unsigned maj, min;
	if (f && fscanf(f, "%u:%u", &maj, &min) == 2)
		mknod("/dev/iommu", S_IFCHR | 0666, makedev(maj, min));
	if (f)
		fclose(f);
}

int main(void)
{
	mkdir("/proc", 0755);
	mkdir("/sys", 0755);
	mkdir("/dev", 0755);
	mount("proc", "/proc", "proc", 0, NULL);
	mount("sysfs", "/sys", "sysfs", 0, NULL);
	mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
	int con = open("/dev/console", O_RDWR);
	if (con >= 0) {
		dup2(con, 0);
		dup2(con, 1);
		dup2(con, 2);
		if (con > 2)
			close(con);
	}
	make_iommu_node();

	struct utsname u;
	uname(&u);
	say("\n@@ORACLE BEGIN kernel=%s\n", u.release);

	long first = 1, last = 1, nops = 200;
	char extra[256] = "";
	FILE *f = fopen("/seeds", "r");
	if (!f || fscanf(f, "%ld %ld %ld %255s", &first, &last, &nops, extra) < 3)
		say("@@ORACLE no /seeds\n");
	if (f)
		fclose(f);

	for (long s = first; s <= last; s++) {
		char seed[32], n[32];
		snprintf(seed, sizeof(seed), "%ld", s);
		snprintf(n, sizeof(n), "%ld", nops);
		say("@@SEED %ld BEGIN\n", s);
		pid_t pid = fork();
		if (pid == 0) {
			alarm(300);
			execl("/gen", "gen", seed, n, extra[0] ? extra : (char *)NULL, (char *)NULL);
			_exit(127);
		}
		int status = 0;
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
		say("@@SEED %ld END status=%d\n", s, status);
	}
	say("@@ORACLE END\n");
	sync();
	/* no ACPI in this kernel: a reboot, which QEMU -no-reboot turns into an exit */
	reboot(RB_AUTOBOOT);
	return 0;
}
