/*
 * IOMMU_IOAS_MAP + IOMMU_IOAS_UNMAP of 4 KiB with a device attached (so each map pins), timed in
 * this process under whichever engine serves it (`uiommu run --engine host|in-process`), and a
 * bare SOCK_SEQPACKET round trip between two processes measured in the same run: the floor of
 * any design that forwards one call per message. Run by bench/host/run.sh.
 */
#define _GNU_SOURCE
#include "dma_engine.h"

#include <sys/wait.h>
#include <time.h>

static double now_us(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

/* Microseconds per round trip of a 56-byte request and a 40-byte reply between processes. */
static double round_trip_us(int n)
{
	int sv[2];
	CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) == 0);
	pid_t pid = fork();
	CHECK(pid >= 0);
	char buf[64] = { 0 };
	if (pid == 0) {
		close(sv[0]);
		while (read(sv[1], buf, 56) == 56)
			if (write(sv[1], buf, 40) != 40)
				break;
		_exit(0);
	}
	close(sv[1]);
	double t0 = now_us();
	for (int i = 0; i < n; i++) {
		CHECK(write(sv[0], buf, 56) == 56);
		CHECK(read(sv[0], buf, 64) == 40);
	}
	double us = (now_us() - t0) / n;
	close(sv[0]);
	waitpid(pid, NULL, 0);
	return us;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 20000;
	int ictx = iommufd_open();
	__u32 ioas = ioas_alloc(ictx);
	int devfd = vfio_open(0);
	CHECK(devfd >= 0);
	CHECK(vfio_bind(devfd, ictx, NULL) == 0);
	CHECK(attach(devfd, ioas) == 0);
	unsigned char *buf = page_buffer(PAGE);
	struct iommu_ioas_unmap u = { .size = sizeof(u), .ioas_id = ioas, .iova = SRC_IOVA,
				      .length = PAGE };
	for (int i = 0; i < n / 10 + 1; i++) { /* warm up */
		CHECK(map(ictx, ioas, buf, PAGE, SRC_IOVA, IOMMU_IOAS_MAP_READABLE) == 0);
		CHECK(ioctl(ictx, IOMMU_IOAS_UNMAP, &u) == 0);
	}
	double t0 = now_us();
	for (int i = 0; i < n; i++) {
		CHECK(map(ictx, ioas, buf, PAGE, SRC_IOVA, IOMMU_IOAS_MAP_READABLE) == 0);
		CHECK(ioctl(ictx, IOMMU_IOAS_UNMAP, &u) == 0);
	}
	double pair = (now_us() - t0) / n;
	double rt = round_trip_us(n);
	printf("{\"engine\": \"%s\", \"pairs\": %d, \"pair_us\": %.3f, \"pairs_per_s\": %.0f, "
	       "\"round_trip_us\": %.3f}\n",
	       host_engine() ? "host" : "in-process", n, pair, 1e6 / pair, rt);
	return 0;
}
