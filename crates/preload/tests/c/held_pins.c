/*
 * A pin of MAP_SHARED memory holds its pages (docs/HOST.md, issue 12), as on Linux: once a
 * range of a memfd is mapped into an IOAS with a domain attached, DMA (here the selftest
 * access's reads and writes through the IOAS) reaches those pages whatever the program then
 * does to its address space:
 *  - after munmap of the range, reads still return the pinned pages' bytes and writes land in
 *    them (seen again by mapping the memfd anew);
 *  - after a MAP_FIXED private mapping over the range, reads return the pinned pages, not the
 *    new mapping's bytes, and writes never touch the new mapping;
 *  - after IOAS_UNMAP nothing is held any more: the access reads nothing there (ENOENT);
 *  - a memfd shared with a child: DMA and the child's own mapping see each other's writes;
 *  - the same for a hugetlb memfd (when a 2 MiB page is free);
 *  - a memfd shrunk under its pin: EFAULT for the part gone (Linux keeps those pages), the
 *    rest still read, the engine unharmed.
 * With argument `hold`: map a memfd range, munmap it, say READY and wait for stdin to close
 * (the test reads the engine's status meanwhile), then check the data and exit. With `many`:
 * the same for 200 maps of 200 ranges of one memfd (the engine holds one descriptor of it).
 * Run under either engine (a root one opens the file behind the mapping through
 * /proc/PID/map_files, another the memfd through the descriptor this program keeps).
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
#define OP_MOCK_DOMAIN 2
#define OP_CREATE_ACCESS 5
#define OP_ACCESS_RW 8
#define RW_WRITE 1
#define MOCK_IOVA 0x1000000ULL
#define PAGE 4096
#define LEN (2 * PAGE)

struct test_cmd {
	__u32 size;
	__u32 op;
	__u32 id;
	__u32 reserved;
	union {
		__u32 out[14];
		struct {
			__u32 out_access_fd;
			__u32 flags;
		} create_access;
		struct {
			__u64 iova;
			__u64 length;
			__u64 uptr;
			__u32 flags;
		} access_rw;
	};
};

static int iommufd;

static int access_rw(int access, __u64 iova, void *buf, __u64 len, __u32 flags)
{
	struct test_cmd c = { .size = sizeof(c), .op = OP_ACCESS_RW, .id = (__u32)access };
	c.access_rw.iova = iova;
	c.access_rw.length = len;
	c.access_rw.uptr = (uintptr_t)buf;
	c.access_rw.flags = flags;
	return ioctl(iommufd, IOMMU_TEST_CMD, &c);
}

static void map_at_iova(__u32 ioas, void *va, __u64 iova)
{
	struct iommu_ioas_map m = {
		.size = sizeof(m),
		.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE |
			 IOMMU_IOAS_MAP_WRITEABLE,
		.ioas_id = ioas,
		.user_va = (uintptr_t)va,
		.length = LEN,
		.iova = iova,
	};
	CHECK(ioctl(iommufd, IOMMU_IOAS_MAP, &m) == 0);
}

static void map(__u32 ioas, void *va)
{
	map_at_iova(ioas, va, MOCK_IOVA);
}

static void unmap(__u32 ioas)
{
	struct iommu_ioas_unmap u = { .size = sizeof(u), .ioas_id = ioas, .iova = MOCK_IOVA,
				      .length = LEN };
	CHECK(ioctl(iommufd, IOMMU_IOAS_UNMAP, &u) == 0 && u.length == LEN);
}

static int filled(const char *p, char c, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != c)
			return 0;
	return 1;
}

/* A memfd of `n` * LEN bytes of `c`, mapped shared. */
static char *shared_n(int *mfd, char c, int n)
{
	*mfd = memfd_create("held", MFD_CLOEXEC);
	CHECK(*mfd >= 0 && ftruncate(*mfd, (off_t)n * LEN) == 0);
	char *v = mmap(NULL, (size_t)n * LEN, PROT_READ | PROT_WRITE, MAP_SHARED, *mfd, 0);
	CHECK(v != MAP_FAILED);
	memset(v, c, (size_t)n * LEN);
	return v;
}

static char *shared(int *mfd, char c)
{
	return shared_n(mfd, c, 1);
}

int main(int argc, char **argv)
{
	int many = argc > 1 && strcmp(argv[1], "many") == 0;
	int hold = many || (argc > 1 && strcmp(argv[1], "hold") == 0);
	iommufd = open("/dev/iommu", O_RDWR);
	CHECK(iommufd >= 0);
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	CHECK(ioctl(iommufd, IOMMU_IOAS_ALLOC, &a) == 0);
	__u32 ioas = a.out_ioas_id;
	struct test_cmd mock = { .size = sizeof(mock), .op = OP_MOCK_DOMAIN, .id = ioas };
	CHECK(ioctl(iommufd, IOMMU_TEST_CMD, &mock) == 0);
	struct test_cmd acc = { .size = sizeof(acc), .op = OP_CREATE_ACCESS, .id = ioas };
	CHECK(ioctl(iommufd, IOMMU_TEST_CMD, &acc) == 0);
	int access = (int)acc.create_access.out_access_fd;
	static char buf[LEN];

	if (hold) {
		int mfd;
		int n = many ? 200 : 1;
		char *v = shared_n(&mfd, 'H', n);
		for (int i = 0; i < n; i++)
			map_at_iova(ioas, v + (size_t)i * LEN, MOCK_IOVA + (__u64)i * LEN);
		CHECK(munmap(v, (size_t)n * LEN) == 0);
		printf("READY\n");
		fflush(stdout);
		char c;
		while (read(0, &c, 1) > 0)
			;
		for (int i = 0; i < n; i++) {
			memset(buf, 0, LEN);
			CHECK(access_rw(access, MOCK_IOVA + (__u64)i * LEN, buf, LEN, 0) == 0 &&
			      filled(buf, 'H', LEN));
		}
		for (int i = 0; i < n; i++) {
			struct iommu_ioas_unmap u = { .size = sizeof(u), .ioas_id = ioas,
						      .iova = MOCK_IOVA + (__u64)i * LEN, .length = LEN };
			CHECK(ioctl(iommufd, IOMMU_IOAS_UNMAP, &u) == 0);
		}
		PASS("held_pins hold");
		return 0;
	}

	/* munmap after the map: the pinned pages stay reachable. */
	int mfd;
	char *v = shared(&mfd, 'A');
	map(ioas, v);
	CHECK(munmap(v, LEN) == 0);
	memset(buf, 0, LEN);
	CHECK(access_rw(access, MOCK_IOVA, buf, LEN, 0) == 0 && filled(buf, 'A', LEN));
	memset(buf, 'B', LEN);
	CHECK(access_rw(access, MOCK_IOVA + 100, buf, PAGE, RW_WRITE) == 0);
	char *again = mmap(NULL, LEN, PROT_READ, MAP_SHARED, mfd, 0);
	CHECK(again != MAP_FAILED);
	CHECK(filled(again, 'A', 100) && filled(again + 100, 'B', PAGE) &&
	      filled(again + 100 + PAGE, 'A', LEN - 100 - PAGE));
	CHECK(munmap(again, LEN) == 0);
	unmap(ioas);
	/* Unpinned: the access finds no mapping there. */
	CHECK_ERR(access_rw(access, MOCK_IOVA, buf, LEN, 0), ENOENT);
	close(mfd);

	/* MAP_FIXED over the range: the new mapping is never reached. */
	v = shared(&mfd, 'C');
	map(ioas, v);
	char *over = mmap(v, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
			  -1, 0);
	CHECK(over == v);
	memset(over, 'D', LEN);
	CHECK(access_rw(access, MOCK_IOVA, buf, LEN, 0) == 0 && filled(buf, 'C', LEN));
	memset(buf, 'E', LEN);
	CHECK(access_rw(access, MOCK_IOVA, buf, LEN, RW_WRITE) == 0);
	CHECK(filled(over, 'D', LEN));
	CHECK(pread(mfd, buf, LEN, 0) == LEN && filled(buf, 'E', LEN));
	unmap(ioas);
	CHECK(munmap(over, LEN) == 0);
	close(mfd);

	/* A memfd shared by two processes: a child maps it (another mapping, its own address)
	 * and writes; DMA through the parent's pin sees the child's bytes, and the child sees
	 * DMA's. */
	v = shared(&mfd, 'P');
	map(ioas, v);
	int sync_pipe[2];
	CHECK(pipe(sync_pipe) == 0);
	pid_t kid = fork();
	CHECK(kid >= 0);
	if (kid == 0) {
		char *w = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
		if (w == MAP_FAILED)
			_exit(30);
		memset(w, 'Q', PAGE);
		char c;
		close(sync_pipe[1]);
		if (read(sync_pipe[0], &c, 1) != 1)
			_exit(31);
		_exit(filled(w + PAGE, 'R', PAGE) ? 0 : 32);
	}
	close(sync_pipe[0]);
	int kst;
	/* The child's write is there once it is (the child writes before waiting). */
	for (int i = 0; i < 500; i++) {
		memset(buf, 0, LEN);
		CHECK(access_rw(access, MOCK_IOVA, buf, PAGE, 0) == 0);
		if (filled(buf, 'Q', PAGE))
			break;
		usleep(2000);
	}
	CHECK(filled(buf, 'Q', PAGE));
	memset(buf, 'R', PAGE);
	CHECK(access_rw(access, MOCK_IOVA + PAGE, buf, PAGE, RW_WRITE) == 0);
	CHECK(write(sync_pipe[1], "x", 1) == 1);
	CHECK(waitpid(kid, &kst, 0) == kid && WIFEXITED(kst) && WEXITSTATUS(kst) == 0);
	close(sync_pipe[1]);
	unmap(ioas);
	CHECK(munmap(v, LEN) == 0);
	close(mfd);

	/* Huge pages (a hugetlb memfd): held too, through the engine's own mapping of the file. */
	int hfd = memfd_create("held-huge", MFD_CLOEXEC | MFD_HUGETLB);
	char *huge = MAP_FAILED;
	if (hfd >= 0 && ftruncate(hfd, 2 << 20) == 0)
		huge = mmap(NULL, 2 << 20, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, hfd, 0);
	if (huge == MAP_FAILED) {
		printf("held_pins: hugetlb not run (no free 2 MiB page: /proc/sys/vm/nr_hugepages)\n");
	} else {
		memset(huge, 'F', LEN);
		map(ioas, huge);
		CHECK(munmap(huge, 2 << 20) == 0);
		memset(buf, 0, LEN);
		CHECK(access_rw(access, MOCK_IOVA, buf, LEN, 0) == 0 && filled(buf, 'F', LEN));
		memset(buf, 'G', PAGE);
		CHECK(access_rw(access, MOCK_IOVA, buf, PAGE, RW_WRITE) == 0);
		char *back = mmap(NULL, 2 << 20, PROT_READ, MAP_SHARED, hfd, 0);
		CHECK(back != MAP_FAILED && filled(back, 'G', PAGE) && filled(back + PAGE, 'F', PAGE));
		CHECK(munmap(back, 2 << 20) == 0);
		unmap(ioas);
		printf("held_pins: hugetlb held\n");
	}
	if (hfd >= 0)
		close(hfd);

	/*
	 * The memfd shrunk under the pin (a difference from Linux, docs/engine.md: there the
	 * truncated pages stay pinned and DMA still reaches them): the access to the part gone
	 * is EFAULT, the part left still reads, and the engine goes on serving.
	 */
	v = shared(&mfd, 'K');
	map(ioas, v);
	CHECK(munmap(v, LEN) == 0);
	CHECK(ftruncate(mfd, PAGE) == 0);
	CHECK_ERR(access_rw(access, MOCK_IOVA + PAGE, buf, PAGE, 0), EFAULT);
	memset(buf, 0, LEN);
	CHECK(access_rw(access, MOCK_IOVA, buf, PAGE, 0) == 0 && filled(buf, 'K', PAGE));
	unmap(ioas);
	close(mfd);

	close(access);
	CHECK(close(iommufd) == 0);
	PASS("held_pins");
}
