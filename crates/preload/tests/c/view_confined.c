/*
 * The sysfs view the seccomp front-end serves is the engine's tree, opened by the engine for
 * the program: run as an unprivileged uid against a root engine, nothing of it reaches outside
 * the view or writes to it.
 *  - a path that climbs out of the view with `..` (after a symlink of the view, or not) never
 *    opens the host's files with the engine's credentials: a root-only file given as argv[1]
 *    stays out of reach;
 *  - the view's files open only for reading (EACCES for writing, creating, truncating), and
 *    access(W_OK) is EACCES for this uid;
 *  - what the view has reads as sysfs would.
 * Run as a static program under the seccomp front-end (crates/uiommu/tests/seccomp.rs).
 */
#define _GNU_SOURCE
#include "uiommu_test.h"
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#define SYSDEV "/sys/bus/pci/devices/0000:04:01.0"

static void unreachable(const char *prefix, const char *secret)
{
	char path[1024];
	snprintf(path, sizeof(path), "%s/../../../../../../../../../..%s", prefix, secret);
	int fd = open(path, O_RDONLY);
	if (fd >= 0) {
		char buf[64] = { 0 };
		ssize_t n = read(fd, buf, sizeof(buf) - 1);
		fprintf(stderr, "%s opened (read %zd: %s)\n", path, n, buf);
		CHECK(fd < 0);
	}
	/* (stat of the file is allowed to anyone who may search its directories, as here.) */
	char link[256];
	CHECK(readlink(path, link, sizeof(link)) < 0);
}

int main(int argc, char **argv)
{
	CHECK(argc == 2);
	CHECK(getuid() != 0);
	/* The file itself: not this uid's to read. */
	CHECK_ERR(open(argv[1], O_RDONLY), EACCES);
	unreachable(SYSDEV, argv[1]);
	unreachable(SYSDEV "/iommu_group", argv[1]);
	unreachable("/sys/kernel/iommu_groups", argv[1]);
	unreachable("/dev/vfio/devices", argv[1]);

	CHECK_ERR(open(SYSDEV "/vendor", O_WRONLY), EACCES);
	CHECK_ERR(open(SYSDEV "/vendor", O_RDWR), EACCES);
	CHECK_ERR(open(SYSDEV "/vendor", O_RDONLY | O_TRUNC), EACCES);
	CHECK_ERR(open(SYSDEV "/new", O_WRONLY | O_CREAT, 0644), EACCES);
	CHECK_ERR(access(SYSDEV "/vendor", W_OK), EACCES);
	CHECK(access(SYSDEV "/vendor", R_OK) == 0);
	CHECK_ERR(access(SYSDEV "/vendor", X_OK), EACCES);
	CHECK(access(SYSDEV, X_OK) == 0);
	CHECK_ERR(access(SYSDEV "/nonexistent", F_OK), ENOENT);

	int fd = open(SYSDEV "/vendor", O_RDONLY);
	CHECK(fd >= 0);
	char buf[16] = { 0 };
	CHECK(read(fd, buf, sizeof(buf) - 1) > 2 && strncmp(buf, "0x", 2) == 0);
	CHECK(close(fd) == 0);
	PASS("view_confined");
}
