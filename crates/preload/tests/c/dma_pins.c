/*
 * Issue 12's three cases as a user meets them, with the dma-engine (a VFIO cdev bound to an
 * iommufd and attached to an IOAS): the device's DMA reaches the pages a map pinned, as on
 * Linux, not whatever the program later has at those addresses.
 *  - MAP_FIXED over a mapped buffer: the device reads the old bytes, and its writes land in
 *    the old pages (seen by a DMA copy out of them), never in the new mapping;
 *  - munmap of a mapped buffer: DMA from it still copies its bytes (no fault);
 *  - a child maps its buffer into the shared IOAS and execs a program that maps new memory
 *    at the same address: the parent's device reads the child's old bytes and its writes do
 *    not reach the new program.
 * The first two also through a legacy type1 container (VFIO_IOMMU_MAP_DMA). With
 * `exec-target ADDR FD`: the program the child execs.
 */
#define _GNU_SOURCE
#include "dma_engine.h"
#include <stdint.h>
#include <stdlib.h>
#include <sys/wait.h>

#define OUT_IOVA 0x300000ULL
#define CHILD_IOVA 0x400000ULL
#define N 4096

static int filled(const unsigned char *p, unsigned char c, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != c)
			return 0;
	return 1;
}

static unsigned char *buffer(unsigned char c)
{
	unsigned char *p = page_buffer(N);
	memset(p, c, N);
	return p;
}

static int exec_target(char **argv)
{
	uintptr_t addr = (uintptr_t)strtoull(argv[2], NULL, 16);
	int fd = atoi(argv[3]);
	unsigned char *v = mmap((void *)addr, N, PROT_READ | PROT_WRITE,
				MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (v != (unsigned char *)addr)
		return 2;
	memset(v, 'Y', N);
	char c = 'r';
	if (write(fd, &c, 1) != 1)
		return 3;
	while (read(0, &c, 1) > 0)
		;
	return filled(v, 'Y', N) ? 0 : 4;
}

static int map_dma(int container, void *va, __u64 iova, __u32 flags)
{
	struct vfio_iommu_type1_dma_map m = { .argsz = sizeof(m), .flags = flags,
					      .vaddr = (uintptr_t)va, .iova = iova, .size = N };
	return ioctl(container, VFIO_IOMMU_MAP_DMA, &m);
}

/* The same through the legacy type1 container (VFIO_IOMMU_MAP_DMA pins at once). */
static int type1(void)
{
	char link[256] = { 0 };
	CHECK(readlink("/sys/bus/pci/devices/0000:01:00.0/iommu_group", link,
		       sizeof(link) - 1) > 0);
	char gpath[64];
	snprintf(gpath, sizeof(gpath), "/dev/vfio/%s", strrchr(link, '/') + 1);
	int container = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
	int group = open(gpath, O_RDWR | O_CLOEXEC);
	CHECK(container >= 0 && group >= 0);
	CHECK(ioctl(group, VFIO_GROUP_SET_CONTAINER, &container) == 0);
	CHECK(ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) == 0);
	const __u32 rw = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
	unsigned char *out = buffer(0), *src = buffer('E'), *gone = buffer('F');
	CHECK(map_dma(container, out, OUT_IOVA, rw) == 0);
	CHECK(map_dma(container, src, SRC_IOVA, rw) == 0);
	CHECK(map_dma(container, gone, DST_IOVA, rw) == 0);
	int devfd = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, "0000:01:00.0");
	CHECK(devfd >= 0);
	struct dev d = setup(devfd);
	CHECK(mmap(src, N, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
		   0) == src);
	memset(src, 'G', N);
	CHECK(dma(&d, OP_COPY, SRC_IOVA, OUT_IOVA, N) == STATUS_DONE);
	CHECK(filled(out, 'E', N));
	CHECK(munmap(gone, N) == 0);
	CHECK(dma(&d, OP_COPY, DST_IOVA, OUT_IOVA, N) == STATUS_DONE);
	CHECK(filled(out, 'F', N));
	close(devfd);
	close(group);
	close(container);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc > 3 && strcmp(argv[1], "exec-target") == 0)
		return exec_target(argv);
	type1();
	int ictx = iommufd_open();
	__u32 ioas = ioas_alloc(ictx);
	int devfd = vfio_open(0);
	CHECK(devfd >= 0);
	CHECK(vfio_bind(devfd, ictx, NULL) == 0);
	CHECK(attach(devfd, ioas) == 0);
	struct dev d = setup(devfd);
	const __u32 rw = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE;
	unsigned char *out = buffer(0);
	CHECK(map(ictx, ioas, out, N, OUT_IOVA, rw) == 0);

	/* MAP_FIXED over the source: the device reads the old bytes. */
	unsigned char *src = buffer('A');
	CHECK(map(ictx, ioas, src, N, SRC_IOVA, rw) == 0);
	CHECK(mmap(src, N, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
		   0) == src);
	memset(src, 'B', N);
	CHECK(dma(&d, OP_COPY, SRC_IOVA, OUT_IOVA, N) == STATUS_DONE);
	CHECK(filled(out, 'A', N));
	/* Its writes land in the old pages, not in the new mapping. */
	wr32(&d, REG_FILL, 'C');
	CHECK(dma(&d, OP_FILL, 0, SRC_IOVA, N) == STATUS_DONE);
	CHECK(filled(src, 'B', N));
	CHECK(dma(&d, OP_COPY, SRC_IOVA, OUT_IOVA, N) == STATUS_DONE);
	CHECK(filled(out, 'C', N));

	/* munmap: DMA from it still copies its bytes. */
	unsigned char *gone = buffer('D');
	CHECK(map(ictx, ioas, gone, N, DST_IOVA, rw) == 0);
	CHECK(munmap(gone, N) == 0);
	CHECK(dma(&d, OP_COPY, DST_IOVA, OUT_IOVA, N) == STATUS_DONE);
	CHECK(filled(out, 'D', N));

	/* exec: the child's old pages, never the new program's. */
	int ready[2], hold[2];
	CHECK(pipe(ready) == 0 && pipe(hold) == 0);
	pid_t child = fork();
	CHECK(child >= 0);
	if (child == 0) {
		unsigned char *cv = buffer('X');
		CHECK(map(ictx, ioas, cv, N, CHILD_IOVA, rw) == 0);
		CHECK(munmap(cv, N) == 0);
		char addr[32], fd[16];
		snprintf(addr, sizeof(addr), "%lx", (unsigned long)(uintptr_t)cv);
		snprintf(fd, sizeof(fd), "%d", ready[1]);
		dup2(hold[0], 0);
		close(ready[0]);
		close(hold[1]);
		execl("/proc/self/exe", argv[0], "exec-target", addr, fd, (char *)NULL);
		_exit(20);
	}
	close(ready[1]);
	close(hold[0]);
	char c;
	CHECK(read(ready[0], &c, 1) == 1);
	CHECK(dma(&d, OP_COPY, CHILD_IOVA, OUT_IOVA, N) == STATUS_DONE);
	CHECK(filled(out, 'X', N));
	wr32(&d, REG_FILL, 'Z');
	CHECK(dma(&d, OP_FILL, 0, CHILD_IOVA, N) == STATUS_DONE);
	close(hold[1]);
	int st;
	CHECK(waitpid(child, &st, 0) == child);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	CHECK(dma(&d, OP_COPY, CHILD_IOVA, OUT_IOVA, N) == STATUS_DONE);
	CHECK(filled(out, 'Z', N));
	PASS("dma_pins");
}
