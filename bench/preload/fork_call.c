/*
 * Cost of a call a fork child makes on an fd inherited from its parent's engine (forwarded to
 * the parent, crates/preload/src/remote.rs), beside the same call in the parent and a bare
 * Unix-socket round trip between two processes measured in the same run (the floor of any
 * forwarding). Run by bench/preload/run.sh under libuiommu_preload.so.
 */
#include "uiommu_test.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

/* Microseconds per IOMMU_IOAS_IOVA_RANGES asking for the count only (EMSGSIZE with
 * num_iovas written back: a small command read and written back). */
static double ranges(int fd, __u32 ioas, int n)
{
	double t0 = now();
	for (int i = 0; i < n; i++) {
		struct iommu_ioas_iova_ranges r = { .size = sizeof(r), .ioas_id = ioas };
		CHECK(ioctl(fd, IOMMU_IOAS_IOVA_RANGES, &r) == 0 || errno == EMSGSIZE);
	}
	return (now() - t0) / n * 1e6;
}

/* Microseconds per round trip of a 56-byte request and a 32-byte reply between processes. */
static double ping_pong(int n)
{
	int sv[2];
	char b[56] = { 0 };
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
		exit(1);
	pid_t p = fork();
	if (p == 0) {
		for (int i = 0; i < n; i++)
			if (read(sv[1], b, 56) != 56 || write(sv[1], b, 32) != 32)
				_exit(1);
		_exit(0);
	}
	double t0 = now();
	for (int i = 0; i < n; i++)
		if (write(sv[0], b, 56) != 56 || read(sv[0], b, 32) != 32)
			exit(1);
	double us = (now() - t0) / n * 1e6;
	waitpid(p, NULL, 0);
	close(sv[0]);
	close(sv[1]);
	return us;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 5000;
	int fd = open("/dev/iommu", O_RDWR);
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	if (fd < 0 || ioctl(fd, IOMMU_IOAS_ALLOC, &a) != 0) {
		perror("/dev/iommu (run under libuiommu_preload.so)");
		return 1;
	}
	ranges(fd, a.out_ioas_id, n / 10);
	double owner = ranges(fd, a.out_ioas_id, n * 4);
	double floor_us = ping_pong(n);
	int out[2];
	if (pipe(out) != 0)
		return 1;
	pid_t p = fork();
	if (p == 0) {
		ranges(fd, a.out_ioas_id, n / 10);
		double child = ranges(fd, a.out_ioas_id, n);
		if (write(out[1], &child, sizeof(child)) != sizeof(child))
			_exit(1);
		_exit(0);
	}
	double child = 0;
	if (read(out[0], &child, sizeof(child)) != sizeof(child))
		return 1;
	waitpid(p, NULL, 0);
	printf("ioctl in the owner             %8.2f us\n", owner);
	printf("ioctl forwarded from a child   %8.2f us\n", child);
	printf("bare socket round trip         %8.2f us  (same run)\n", floor_us);
	printf("forwarded / round trip         %8.2f x\n", child / floor_us);
	return 0;
}
