/*
 * /dev/iommu through libuiommu_preload.so: the IOAS life cycle, bad pointers, unknown ioctls,
 * file semantics (dup keeps the context, the last close ends it), and paths that are not there.
 */
#include "uiommu_test.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define BUF_SIZE (64 * 1024)

static __u32 ioas_alloc(int fd)
{
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	CHECK(ioctl(fd, IOMMU_IOAS_ALLOC, &a) == 0);
	CHECK(a.out_ioas_id != 0);
	return a.out_ioas_id;
}

static int iova_ranges(int fd, __u32 ioas, struct iommu_iova_range *r, __u32 n, __u32 *out_n)
{
	struct iommu_ioas_iova_ranges q = {
		.size = sizeof(q),
		.ioas_id = ioas,
		.num_iovas = n,
		.allowed_iovas = (uintptr_t)r,
	};
	int ret = ioctl(fd, IOMMU_IOAS_IOVA_RANGES, &q);
	*out_n = q.num_iovas;
	return ret;
}

int main(void)
{
	/* Opening: every open flavour reaches the same file kind. */
	volatile int rdwr = O_RDWR; /* not a constant: _FORTIFY_SOURCE makes this __open_2 */
	int fd = open("/dev/iommu", rdwr | O_CLOEXEC);
	CHECK(fd >= 0);
	CHECK(fcntl(fd, F_GETFD) == FD_CLOEXEC);
	int fd2 = openat(AT_FDCWD, "/dev/iommu", O_RDWR);
	CHECK(fd2 >= 0 && fd2 != fd);
	CHECK(fcntl(fd2, F_GETFD) == 0);

	/* Paths that are ours but not there, and what the VFS refuses on a device node. */
	CHECK_ERR(open("/dev/vfio/vfio0", O_RDWR), ENOENT);
	CHECK_ERR(open("/dev/vfio/1", O_RDWR), ENOENT); /* a group without a vfio-pci function */
	CHECK_ERR(open("/dev/vfio/devices/vfio999", O_RDWR), ENOENT);
	CHECK_ERR(open("/dev/iommu", O_RDWR | O_DIRECTORY), ENOTDIR);
	CHECK_ERR(open("/dev/iommu", O_RDWR | O_CREAT | O_EXCL, 0600), EEXIST);

	/* IOAS_ALLOC, MAP (automatic and fixed IOVA), IOVA_RANGES, UNMAP, DESTROY. */
	__u32 ioas = ioas_alloc(fd);
	void *buf = NULL;
	CHECK(posix_memalign(&buf, 4096, BUF_SIZE) == 0);
	memset(buf, 0x5a, BUF_SIZE);

	struct iommu_ioas_map map = {
		.size = sizeof(map),
		.flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
		.ioas_id = ioas,
		.user_va = (uintptr_t)buf,
		.length = BUF_SIZE,
	};
	CHECK(ioctl(fd, IOMMU_IOAS_MAP, &map) == 0);
	__u64 auto_iova = map.iova;
	CHECK(auto_iova % 4096 == 0);

	map.flags |= IOMMU_IOAS_MAP_FIXED_IOVA;
	map.iova = 0x10000000;
	CHECK(ioctl(fd, IOMMU_IOAS_MAP, &map) == 0);
	CHECK(map.iova == 0x10000000);
	/* The same fixed IOVA again overlaps. */
	CHECK_ERR(ioctl(fd, IOMMU_IOAS_MAP, &map), EEXIST);

	__u32 n = 0;
	CHECK_ERR(iova_ranges(fd, ioas, NULL, 0, &n), EMSGSIZE);
	CHECK(n >= 1);
	struct iommu_iova_range ranges[16];
	CHECK(n <= 16);
	CHECK(iova_ranges(fd, ioas, ranges, n, &n) == 0);
	CHECK(ranges[0].start <= ranges[0].last);

	struct iommu_ioas_unmap unmap = {
		.size = sizeof(unmap),
		.ioas_id = ioas,
		.iova = 0x10000000,
		.length = BUF_SIZE,
	};
	CHECK(ioctl(fd, IOMMU_IOAS_UNMAP, &unmap) == 0);
	CHECK(unmap.length == BUF_SIZE);
	CHECK_ERR(ioctl(fd, IOMMU_IOAS_UNMAP, &unmap), ENOENT);

	/* A second IOAS, destroyed; destroying it again is ENOENT. */
	__u32 ioas2 = ioas_alloc(fd);
	CHECK(ioas2 != ioas);
	struct iommu_destroy d = { .size = sizeof(d), .id = ioas2 };
	CHECK(ioctl(fd, IOMMU_DESTROY, &d) == 0);
	CHECK_ERR(ioctl(fd, IOMMU_DESTROY, &d), ENOENT);

	/* Each open is its own context: fd2 does not see fd's IOAS. */
	d.id = ioas;
	CHECK_ERR(ioctl(fd2, IOMMU_DESTROY, &d), ENOENT);

	/* Bad pointers are EFAULT, never a crash. */
	CHECK_ERR(ioctl(fd, IOMMU_IOAS_ALLOC, (void *)8), EFAULT);
	CHECK_ERR(ioctl(fd, IOMMU_IOAS_MAP, (void *)-4096L), EFAULT);
	CHECK_ERR(iova_ranges(fd, ioas, (struct iommu_iova_range *)8, 16, &n), EFAULT);

	/* Unknown commands are ENOTTY; requests of other types reach the memfd. */
	struct iommu_destroy unknown = { .size = sizeof(unknown) };
	CHECK_ERR(ioctl(fd, _IO(IOMMUFD_TYPE, 0x9f), &unknown), ENOTTY);
	CHECK_ERR(ioctl(fd, _IO(IOMMUFD_TYPE, 0xff), &unknown), ENOTTY);
	int on = 1;
	CHECK(ioctl(fd, FIONBIO, &on) == 0);
	CHECK((fcntl(fd, F_GETFL) & O_NONBLOCK) != 0);

	/* No read, write or mmap on an iommufd. */
	char c;
	CHECK_ERR(read(fd, &c, 1), EINVAL);
	CHECK_ERR(write(fd, &c, 1), EINVAL);
	CHECK_ERR(pread(fd, &c, 1, 0), EINVAL);
	CHECK(mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0) == MAP_FAILED);
	CHECK(errno == ENODEV);

	/* dup, close the original: the context lives on through the duplicate. */
	int dupfd = dup(fd);
	CHECK(dupfd >= 0);
	int dupfd2 = fcntl(fd, F_DUPFD_CLOEXEC, 100);
	CHECK(dupfd2 >= 100);
	CHECK(close(fd) == 0);
	unmap.iova = auto_iova;
	CHECK(ioctl(dupfd, IOMMU_IOAS_UNMAP, &unmap) == 0);
	CHECK(unmap.length == BUF_SIZE);
	CHECK(close(dupfd) == 0);
	CHECK(iova_ranges(dupfd2, ioas, ranges, 16, &n) == 0);

	/* dup2 over the last fd of a context closes it; fd number reuse is not confused. */
	CHECK(dup2(fd2, dupfd2) == dupfd2);
	d.id = ioas;
	CHECK_ERR(ioctl(dupfd2, IOMMU_DESTROY, &d), ENOENT); /* now fd2's context */
	CHECK(close(dupfd2) == 0);

	/* The last close: the fd is gone, and a new open is a fresh context. */
	CHECK(close(fd2) == 0);
	CHECK_ERR(ioctl(fd2, IOMMU_IOAS_ALLOC, &d), EBADF);
	int fd3 = open("/dev/iommu", O_RDWR);
	CHECK(fd3 >= 0);
	CHECK(ioas_alloc(fd3) == 1);
	CHECK(close(fd3) == 0);

	free(buf);
	PASS("iommufd_basic");
	return 0;
}
