/*
 * iommufd file semantics through libuiommu_preload.so: an fd passed over a Unix socket is the
 * same context, close_range and closefrom close our fds like any other, and after fork the
 * child's inherited fd reaches the parent's context: it maps its own memory into the parent's
 * IOAS (pinned from the child's memory while it lives; EFAULT once it is gone), closing it
 * leaves the parent's context open, and the child still opens contexts of its own.
 *
 * `iommufd_files expect-enodev` checks only that /dev/iommu cannot be opened (ENODEV), for a
 * run with a broken UIOMMU_PLATFORM.
 */
#define _GNU_SOURCE
#include "uiommu_test.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static __u32 ioas_alloc(int fd)
{
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	if (ioctl(fd, IOMMU_IOAS_ALLOC, &a) != 0)
		return 0;
	return a.out_ioas_id;
}

/* Whether object `id` exists in the context of `fd` (IOVA_RANGES answers EMSGSIZE for an
 * IOAS when asked for 0 ranges). */
static int ioas_exists(int fd, __u32 id)
{
	struct iommu_ioas_iova_ranges q = { .size = sizeof(q), .ioas_id = id };
	return ioctl(fd, IOMMU_IOAS_IOVA_RANGES, &q) == -1 && errno == EMSGSIZE;
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "expect-enodev") == 0) {
		CHECK_ERR(open("/dev/iommu", O_RDWR), ENODEV);
		CHECK_ERR(open("/dev/vfio/devices/vfio0", O_RDWR), ENODEV);
		/* Other files are not affected. */
		int fd = open("/dev/null", O_RDWR);
		CHECK(fd >= 0 && close(fd) == 0);
		PASS("iommufd_files expect-enodev");
		return 0;
	}

	/* SCM_RIGHTS within the process: the received fd is the same context. */
	int sv[2];
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	int fd = open("/dev/iommu", O_RDWR);
	CHECK(fd >= 0);
	__u32 ioas = ioas_alloc(fd);
	CHECK(ioas != 0);
	send_fd(sv[0], fd);
	int got = recv_fd(sv[1]);
	CHECK(got >= 0 && got != fd);
	CHECK(close(fd) == 0);
	CHECK(ioas_exists(got, ioas));
	/* In flight: sent, its only fd closed, then received; the message held the file. */
	send_fd(sv[0], got);
	CHECK(close(got) == 0);
	got = recv_fd(sv[1]);
	CHECK(ioas_exists(got, ioas));

	/* close_range and closefrom close our fds: the context goes with its last fd. */
	int hi = fcntl(got, F_DUPFD, 200);
	CHECK(hi >= 200);
	CHECK(close(got) == 0);
	CHECK(ioas_exists(hi, ioas));
	int hi2 = fcntl(hi, F_DUPFD, 300);
	CHECK(close_range(hi, hi, CLOSE_RANGE_CLOEXEC) == 0); /* marks, does not close */
	CHECK(ioas_exists(hi, ioas));
	CHECK(close_range(hi, hi, 0) == 0);
	CHECK(ioas_exists(hi2, ioas));
	closefrom(300);
	CHECK_ERR(fcntl(hi2, F_GETFD), EBADF);
	int fresh = open("/dev/iommu", O_RDWR);
	CHECK(fresh >= 0);
	CHECK(ioas_alloc(fresh) == 1); /* a new context; the old one is gone */

	/* fork: the inherited fd reaches the parent's context (as the shared open file
	 * description does in Linux); the child maps its own memory into the parent's IOAS,
	 * and can still open contexts of its own. */
	__u32 parent_ioas = ioas_alloc(fresh);
	CHECK(parent_ioas == 2);
	unsigned char *buf = mmap(NULL, 8192, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(buf != MAP_FAILED);
	memset(buf, 0x11, 8192);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		struct iommu_ioas_map m = {
			.size = sizeof(m),
			.flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_FIXED_IOVA,
			.ioas_id = parent_ioas,
			.user_va = (uintptr_t)buf,
			.length = 8192,
			.iova = 1 << 20,
		};
		CHECK(ioctl(fresh, IOMMU_IOAS_MAP, &m) == 0);
		CHECK(ioas_exists(fresh, parent_ioas));
		/* A bad pointer in the child is EFAULT, read in the child's memory. */
		CHECK_ERR(ioctl(fresh, IOMMU_IOAS_MAP, (void *)8), EFAULT);
		/* A grandchild reaches the same context. */
		pid_t g = fork();
		CHECK(g >= 0);
		if (g == 0)
			_exit(ioas_alloc(fresh) == 3 ? 0 : 1);
		int gs = 0;
		CHECK(waitpid(g, &gs, 0) == g && WIFEXITED(gs) && WEXITSTATUS(gs) == 0);
		/* Closing the inherited fd does not close the parent's context. */
		CHECK(close(fresh) == 0);
		/* Its own engine, mapping its own memory. */
		int own = open("/dev/iommu", O_RDWR);
		CHECK(own >= 0);
		__u32 child_ioas = ioas_alloc(own);
		CHECK(child_ioas == 1);
		m.ioas_id = child_ioas;
		CHECK(ioctl(own, IOMMU_IOAS_MAP, &m) == 0);
		CHECK(close(own) == 0);
		PASS("iommufd_files child");
		fflush(stdout);
		_exit(0);
	}
	int status = 0;
	CHECK(waitpid(pid, &status, 0) == pid);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	CHECK(ioas_exists(fresh, parent_ioas));
	/* The child's mapping is in the parent's IOAS. */
	struct iommu_ioas_unmap u = {
		.size = sizeof(u),
		.ioas_id = parent_ioas,
		.iova = 1 << 20,
		.length = 8192,
	};
	CHECK(ioctl(fresh, IOMMU_IOAS_UNMAP, &u) == 0 && u.length == 8192);

	/* A domain attached after the child exited cannot pin its pages (EFAULT, as the kernel
	 * on a gone mm); while a child is alive, its pages are pinned from its memory. */
	int dev = open("/dev/vfio/devices/vfio0", O_RDWR);
	CHECK(dev >= 0);
	struct vfio_device_bind_iommufd b = { .argsz = sizeof(b), .iommufd = fresh };
	CHECK(ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &b) == 0);
	for (int alive = 0; alive < 2; alive++) {
		int go[2], done[2];
		CHECK(pipe(go) == 0 && pipe(done) == 0);
		pid = fork();
		CHECK(pid >= 0);
		if (pid == 0) {
			struct iommu_ioas_map m = {
				.size = sizeof(m),
				.flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_FIXED_IOVA,
				.ioas_id = parent_ioas,
				.user_va = (uintptr_t)buf,
				.length = 8192,
				.iova = 1 << 20,
			};
			char c = ioctl(fresh, IOMMU_IOAS_MAP, &m) == 0 ? 'y' : 'n';
			CHECK(write(done[1], &c, 1) == 1);
			if (alive)
				CHECK(read(go[0], &c, 1) == 1);
			_exit(0);
		}
		char c = 0;
		CHECK(read(done[0], &c, 1) == 1 && c == 'y');
		if (!alive)
			CHECK(waitpid(pid, &status, 0) == pid);
		struct vfio_device_attach_iommufd_pt a = { .argsz = sizeof(a), .pt_id = parent_ioas };
		if (alive) {
			CHECK(ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &a) == 0);
			c = 'g';
			CHECK(write(go[1], &c, 1) == 1);
			CHECK(waitpid(pid, &status, 0) == pid);
			CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
		} else {
			CHECK_ERR(ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &a), EFAULT);
			CHECK(ioctl(fresh, IOMMU_IOAS_UNMAP, &u) == 0 && u.length == 8192);
		}
		close(go[0]), close(go[1]), close(done[0]), close(done[1]);
	}
	/* The pinned pages stay mapped after the child exited; unmapping unpins them. */
	u.length = 8192;
	CHECK(ioctl(fresh, IOMMU_IOAS_UNMAP, &u) == 0 && u.length == 8192);
	CHECK(close(dev) == 0);
	CHECK(ioas_alloc(fresh) == 4); /* 3 is the grandchild's */
	CHECK(close(fresh) == 0);
	CHECK(close(sv[0]) == 0 && close(sv[1]) == 0);
	PASS("iommufd_files");
	return 0;
}
