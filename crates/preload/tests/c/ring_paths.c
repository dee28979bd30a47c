/*
 * The host engine's fast path (rings, docs/HOST.md): hot calls on an iommufd go through a page
 * shared with the engine, found by the inode of the fd given. Each must give exactly what the
 * call by message gives:
 *  - outputs come back whether the argument struct is on the stack (it travels in the ring)
 *    or on the heap (the engine reads and writes it), and a struct larger than a ring slot
 *    still gets the kernel's checks of its tail (zeros accepted, anything else E2BIG);
 *  - a closed fd is EBADF, a number now naming another file is that file's (ENOTTY for
 *    /dev/null, a new context for another iommufd): never the ring of the file it named,
 *    whether it was closed by close, close_range or closefrom while its file stays open;
 *  - a fork child's calls are its own (its memory is pinned, not its parent's), on the
 *    context it shares with its parent.
 * Run under the host engine only.
 */
#define _GNU_SOURCE
#include "uiommu_test.h"

#include <fcntl.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define IOMMU_TEST_CMD _IO(IOMMUFD_TYPE, 0xa0)
#define IOMMU_TEST_OP_MOCK_DOMAIN 2
#define MOCK_IOVA 0x1000000ULL /* the mock domain's aperture starts here */
#define PAGE 4096

struct mock_cmd {
	__u32 size;
	__u32 op;
	__u32 id;
	__u32 reserved;
	__u32 out[14];
};

static __u32 ioas_alloc(int fd)
{
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	CHECK(ioctl(fd, IOMMU_IOAS_ALLOC, &a) == 0);
	return a.out_ioas_id;
}

static int destroy(int fd, __u32 id)
{
	struct iommu_destroy d = { .size = sizeof(d), .id = id };
	return ioctl(fd, IOMMU_DESTROY, &d);
}

static int map_at(int fd, __u32 ioas, void *va, __u64 iova)
{
	struct iommu_ioas_map m = {
		.size = sizeof(m),
		.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE |
			 IOMMU_IOAS_MAP_WRITEABLE,
		.ioas_id = ioas,
		.user_va = (uintptr_t)va,
		.length = PAGE,
		.iova = iova,
	};
	return ioctl(fd, IOMMU_IOAS_MAP, &m);
}

static long long unmap_at(int fd, __u32 ioas, __u64 iova)
{
	struct iommu_ioas_unmap u = { .size = sizeof(u), .ioas_id = ioas, .iova = iova,
				      .length = PAGE };
	if (ioctl(fd, IOMMU_IOAS_UNMAP, &u))
		return -1;
	return (long long)u.length;
}

static void outputs(int fd, __u32 ioas, void *buf)
{
	/* On the stack: the IOVA the engine picks comes back. */
	struct iommu_ioas_map m = {
		.size = sizeof(m),
		.flags = IOMMU_IOAS_MAP_READABLE,
		.ioas_id = ioas,
		.user_va = (uintptr_t)buf,
		.length = PAGE,
	};
	CHECK(ioctl(fd, IOMMU_IOAS_MAP, &m) == 0);
	CHECK(m.iova != 0 && m.iova % PAGE == 0);
	CHECK(unmap_at(fd, ioas, m.iova) == PAGE);

	/* On the heap: the same. */
	struct iommu_ioas_map *h = calloc(1, sizeof(*h));
	CHECK(h);
	*h = m;
	h->iova = 0;
	CHECK(ioctl(fd, IOMMU_IOAS_MAP, h) == 0);
	CHECK(h->iova != 0);
	CHECK(unmap_at(fd, ioas, h->iova) == PAGE);
	free(h);

	/* Larger than a ring slot: a zero tail is accepted, anything else is E2BIG. */
	struct {
		struct iommu_ioas_map m;
		unsigned char tail[200];
	} big;
	memset(&big, 0, sizeof(big));
	big.m = m;
	big.m.size = sizeof(big);
	big.m.iova = 0;
	CHECK(ioctl(fd, IOMMU_IOAS_MAP, &big) == 0);
	CHECK(big.m.iova != 0);
	CHECK(unmap_at(fd, ioas, big.m.iova) == PAGE);
	big.tail[150] = 1;
	CHECK_ERR(ioctl(fd, IOMMU_IOAS_MAP, &big), E2BIG);

	/* A struct that is not readable at all: EFAULT. */
	CHECK_ERR(ioctl(fd, IOMMU_IOAS_MAP, NULL), EFAULT);
}

static void numbers(void)
{
	int a = open("/dev/iommu", O_RDWR);
	CHECK(a >= 0);
	__u32 a1 = ioas_alloc(a), a2 = ioas_alloc(a), a3 = ioas_alloc(a);
	CHECK(a1 != a2 && a2 != a3);
	/* Closed: EBADF, though the ring of that file is still mapped in this process. */
	CHECK(close(a) == 0);
	struct iommu_ioas_alloc al = { .size = sizeof(al) };
	CHECK_ERR(ioctl(a, IOMMU_IOAS_ALLOC, &al), EBADF);
	/* The number now names /dev/null: its own answer. */
	int null = open("/dev/null", O_RDWR);
	CHECK(null >= 0);
	CHECK(dup2(null, a) == a);
	CHECK_ERR(ioctl(a, IOMMU_IOAS_ALLOC, &al), ENOTTY);
	/* The number now names another iommufd: a context of its own. */
	int b = open("/dev/iommu", O_RDWR);
	CHECK(b >= 0);
	CHECK(dup2(b, a) == a);
	__u32 b1 = ioas_alloc(a);
	CHECK_ERR(destroy(a, a3 == b1 ? a2 : a3), ENOENT);
	CHECK(destroy(b, b1) == 0);
	CHECK(close(a) == 0 && close(b) == 0 && close(null) == 0);

	/* A second fd of a file that stays open: once closed, by any call that closes, the
	 * number is EBADF (the front-end remembers which ring an fd's calls go to, and forgets
	 * it then), and an fd past the remembered ones works as any other. */
	int c = open("/dev/iommu", O_RDWR);
	CHECK(c >= 0);
	__u32 c1 = ioas_alloc(c);
	int d = dup(c);
	CHECK(d >= 0 && ioas_alloc(d) != c1);
	CHECK(close(d) == 0);
	CHECK_ERR(ioctl(d, IOMMU_IOAS_ALLOC, &al), EBADF);
	CHECK(fcntl(c, F_DUPFD, 201) == 201 && ioas_alloc(201) != c1);
	CHECK(close_range(201, 201, 0) == 0);
	CHECK_ERR(ioctl(201, IOMMU_IOAS_ALLOC, &al), EBADF);
	CHECK(fcntl(c, F_DUPFD, 202) == 202 && ioas_alloc(202) != c1);
	closefrom(202);
	CHECK_ERR(ioctl(202, IOMMU_IOAS_ALLOC, &al), EBADF);
	CHECK(fcntl(c, F_DUPFD, 300) == 300 && ioas_alloc(300) != c1);
	CHECK(destroy(300, c1) == 0);
	CHECK(close(300) == 0);
	CHECK_ERR(ioctl(300, IOMMU_IOAS_ALLOC, &al), EBADF);
	CHECK(close(c) == 0);
}

static void fork_child(void)
{
	int fd = open("/dev/iommu", O_RDWR);
	CHECK(fd >= 0);
	__u32 ioas = ioas_alloc(fd);
	struct mock_cmd mock = { .size = sizeof(mock), .op = IOMMU_TEST_OP_MOCK_DOMAIN,
				 .id = ioas };
	CHECK(ioctl(fd, IOMMU_TEST_CMD, &mock) == 0);
	/* The parent has a ring on fd now. */
	char *mine = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(mine != MAP_FAILED);
	CHECK(map_at(fd, ioas, mine, MOCK_IOVA) == 0);
	CHECK(unmap_at(fd, ioas, MOCK_IOVA) == PAGE);

	int pfd[2];
	CHECK(pipe(pfd) == 0);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		/* Memory only the child has: pinned from the child, so the map succeeds. */
		char *childs = mmap(NULL, PAGE, PROT_READ | PROT_WRITE,
				    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		CHECK(childs != MAP_FAILED);
		CHECK(map_at(fd, ioas, childs, MOCK_IOVA + PAGE) == 0);
		__u32 id = ioas_alloc(fd);
		uintptr_t at = (uintptr_t)childs;
		CHECK(write(pfd[1], &id, sizeof(id)) == sizeof(id));
		CHECK(write(pfd[1], &at, sizeof(at)) == sizeof(at));
		_exit(0);
	}
	__u32 id;
	uintptr_t at;
	CHECK(read(pfd[0], &id, sizeof(id)) == sizeof(id));
	CHECK(read(pfd[0], &at, sizeof(at)) == sizeof(at));
	int status;
	CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
	/* The child's calls were on the shared context: its IOAS and its mapping are here. */
	CHECK(destroy(fd, id) == 0);
	CHECK(unmap_at(fd, ioas, MOCK_IOVA + PAGE) == PAGE);
	/* The child's address is not mapped in the parent: pinning it from here faults. */
	if (msync((void *)at, PAGE, MS_ASYNC) == -1 && errno == ENOMEM)
		CHECK_ERR(map_at(fd, ioas, (void *)at, MOCK_IOVA + PAGE), EFAULT);
	CHECK(close(fd) == 0);
	close(pfd[0]);
	close(pfd[1]);
}

int main(void)
{
	if (!host_engine()) {
		printf("PASS ring_paths: not under the host engine, nothing to check\n");
		return 0;
	}
	int fd = open("/dev/iommu", O_RDWR);
	CHECK(fd >= 0);
	__u32 ioas = ioas_alloc(fd);
	void *buf = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(buf != MAP_FAILED);
	outputs(fd, ioas, buf);
	CHECK(close(fd) == 0);
	numbers();
	fork_child();
	PASS("ring_paths");
	return 0;
}
