/*
 * Resource exhaustion answered with the kernel's errno and fully recovered after release
 * (issue 15, part 3):
 *  - file descriptors (RLIMIT_NOFILE): opening /dev/iommu, a device cdev and a fault queue at
 *    the limit is EMFILE; a fault queue refused for want of an fd leaves no object behind (the
 *    next object takes the id it would have had); closing one fd makes room again;
 *  (RLIMIT_MEMLOCK exhaustion: vfio_dma.c; the in-process engine reads the limit once, at its
 *  first open, where Linux reads it at each pin: not yet fixed.)
 */
#include "dma_engine.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

struct ut_fault_alloc {
	__u32 size, flags, out_fault_id, out_fault_fd;
};
#define UT_FAULT_QUEUE_ALLOC _IO(';', 0x8e)

static int fault_alloc(int iommufd, __u32 *id, int *fd)
{
	struct ut_fault_alloc f = { .size = sizeof(f) };
	int r = ioctl(iommufd, UT_FAULT_QUEUE_ALLOC, &f);
	*id = f.out_fault_id;
	*fd = (int)f.out_fault_fd;
	return r;
}

static int destroy(int iommufd, __u32 id)
{
	struct iommu_destroy d = { .size = sizeof(d), .id = id };
	return ioctl(iommufd, IOMMU_DESTROY, &d);
}

static void fds(void)
{
	struct rlimit old;
	CHECK(getrlimit(RLIMIT_NOFILE, &old) == 0);
	int base = open("/dev/null", O_RDONLY);
	CHECK(base >= 0);
	close(base);
	/* Room for 6 more descriptors above the lowest free one. */
	struct rlimit rl = { (rlim_t)base + 6, old.rlim_max };
	CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0);
	int held[16], n = 0;
	for (;;) {
		int fd = open("/dev/iommu", O_RDWR);
		if (fd < 0) {
			CHECK(errno == EMFILE);
			break;
		}
		CHECK(n < 16);
		held[n++] = fd;
	}
	CHECK(n == 6);
	CHECK_ERR(open("/dev/vfio/devices/vfio0", O_RDWR), EMFILE);
	/* A fault queue needs an fd: EMFILE, and the object it would have been is not left. */
	close(held[--n]);
	int iommufd = held[0];
	__u32 ioas = ioas_alloc(iommufd); /* id 1 */
	int qfd;
	__u32 qid;
	CHECK(fault_alloc(iommufd, &qid, &qfd) == 0 && qid == 2); /* takes the last fd */
	__u32 again;
	int qfd2;
	CHECK_ERR(fault_alloc(iommufd, &again, &qfd2), EMFILE);
	CHECK(ioas_alloc(iommufd) == 3); /* id 3 was free: no fault object stayed behind */
	CHECK(destroy(iommufd, 3) == 0);
	CHECK_ERR(destroy(iommufd, 4), ENOENT);
	/* Room again: close the queue's fd; the next queue gets a descriptor. */
	close(qfd);
	CHECK(destroy(iommufd, qid) == 0);
	CHECK(fault_alloc(iommufd, &again, &qfd2) == 0);
	close(qfd2);
	CHECK(destroy(iommufd, ioas) == 0);
	for (int i = 0; i < n; i++)
		close(held[i]);
	CHECK(setrlimit(RLIMIT_NOFILE, &old) == 0);
	/* Everything is usable after the release. */
	int fd = iommufd_open();
	CHECK(ioas_alloc(fd) == 1);
	close(fd);
}

int main(void)
{
	fds();
	PASS("exhaust");
	return 0;
}
