/*
 * A pin of private anonymous memory holds its pages (issue 12, docs/engine.md), as on Linux:
 * once such a range is mapped into an IOAS with a domain attached, the selftest access's reads
 * and writes through the IOAS (DMA) reach those pages whatever the program then does:
 *  - munmap of the range: reads return the pinned bytes, writes land in them;
 *  - a MAP_FIXED mapping over it: never reached, the pinned pages still are;
 *  - mremap: the pinned pages move with the mapping, shared by the program and DMA;
 *  - transparent huge pages (MADV_HUGEPAGE) and private hugetlb: the same after munmap;
 *  - fork: the child has its own copy (its writes are not DMA's, the parent's later writes are
 *    not the child's); the parent's pages stay the pinned ones;
 *  - exec by a child that mapped its own buffer: DMA reaches the child's old pages, never the
 *    new program's memory at the same address;
 *  - another thread writing the range while it is mapped loses no write;
 *  - mapped with no domain and pinned when one is attached: held from then on.
 * Under either engine (`uiommu run`, in-process or host). With `exec-target ADDR FD`: the
 * program a child execs (see below).
 */
#define _GNU_SOURCE
#include "uiommu_test.h"
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
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
static __u32 ioas;
static int access_fd;

static int access_rw(__u64 iova, void *buf, __u64 len, __u32 flags)
{
	struct test_cmd c = { .size = sizeof(c), .op = OP_ACCESS_RW, .id = (__u32)access_fd };
	c.access_rw.iova = iova;
	c.access_rw.length = len;
	c.access_rw.uptr = (uintptr_t)buf;
	c.access_rw.flags = flags;
	return ioctl(iommufd, IOMMU_TEST_CMD, &c);
}

static void map_at(void *va, __u64 len, __u64 iova)
{
	struct iommu_ioas_map m = {
		.size = sizeof(m),
		.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE |
			 IOMMU_IOAS_MAP_WRITEABLE,
		.ioas_id = ioas,
		.user_va = (uintptr_t)va,
		.length = len,
		.iova = iova,
	};
	CHECK(ioctl(iommufd, IOMMU_IOAS_MAP, &m) == 0);
}

static void unmap_at(__u64 len, __u64 iova)
{
	struct iommu_ioas_unmap u = { .size = sizeof(u), .ioas_id = ioas, .iova = iova,
				      .length = len };
	CHECK(ioctl(iommufd, IOMMU_IOAS_UNMAP, &u) == 0 && u.length == len);
}

static int filled(const char *p, char c, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != c)
			return 0;
	return 1;
}

static char *private_buf(char c)
{
	char *v = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(v != MAP_FAILED);
	memset(v, c, LEN);
	return v;
}

static volatile int stop_writing;
static volatile unsigned long *counter;

static void *writer(void *arg)
{
	unsigned long n = 0;
	(void)arg;
	/* Read-modify-write of the memory itself: a write lost to the move would leave the
	 * count in memory below the number of increments made. */
	while (!stop_writing) {
		counter[0] = counter[0] + 1;
		counter[1] = counter[0];
		n++;
	}
	return (void *)n;
}

/* The program a child execs: map ADDR as its own memory, fill it with 'Y', tell the parent
 * (write FD), wait for it (read FD... the same pipe pair's other end: stdin), check. */
static int exec_target(char **argv)
{
	uintptr_t addr = (uintptr_t)strtoull(argv[2], NULL, 16);
	int fd = atoi(argv[3]);
	char *v = mmap((void *)addr, LEN, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (v != (char *)addr) {
		printf("exec-target: could not map %#lx\n", (unsigned long)addr);
		return 2;
	}
	memset(v, 'Y', LEN);
	char c = 'r';
	if (write(fd, &c, 1) != 1)
		return 3;
	while (read(0, &c, 1) > 0)
		;
	return filled(v, 'Y', LEN) ? 0 : 4;
}

int main(int argc, char **argv)
{
	if (argc > 3 && strcmp(argv[1], "exec-target") == 0)
		return exec_target(argv);
	iommufd = open("/dev/iommu", O_RDWR);
	CHECK(iommufd >= 0);
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	CHECK(ioctl(iommufd, IOMMU_IOAS_ALLOC, &a) == 0);
	ioas = a.out_ioas_id;
	struct test_cmd mock = { .size = sizeof(mock), .op = OP_MOCK_DOMAIN, .id = ioas };
	CHECK(ioctl(iommufd, IOMMU_TEST_CMD, &mock) == 0);
	struct test_cmd acc = { .size = sizeof(acc), .op = OP_CREATE_ACCESS, .id = ioas };
	CHECK(ioctl(iommufd, IOMMU_TEST_CMD, &acc) == 0);
	access_fd = (int)acc.create_access.out_access_fd;
	static char buf[LEN];

	/* munmap: the pinned pages stay what DMA reaches. */
	char *v = private_buf('A');
	map_at(v, LEN, MOCK_IOVA);
	CHECK(munmap(v, LEN) == 0);
	memset(buf, 0, LEN);
	CHECK(access_rw(MOCK_IOVA, buf, LEN, 0) == 0 && filled(buf, 'A', LEN));
	memset(buf, 'B', PAGE);
	CHECK(access_rw(MOCK_IOVA + 10, buf, PAGE, RW_WRITE) == 0);
	memset(buf, 0, LEN);
	CHECK(access_rw(MOCK_IOVA, buf, LEN, 0) == 0 && filled(buf, 'A', 10) &&
	      filled(buf + 10, 'B', PAGE) && filled(buf + 10 + PAGE, 'A', LEN - 10 - PAGE));
	unmap_at(LEN, MOCK_IOVA);

	/* MAP_FIXED over the range: the new mapping is never reached. */
	v = private_buf('C');
	map_at(v, LEN, MOCK_IOVA);
	char *over = mmap(v, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
			  -1, 0);
	CHECK(over == v);
	memset(over, 'D', LEN);
	CHECK(access_rw(MOCK_IOVA, buf, LEN, 0) == 0 && filled(buf, 'C', LEN));
	memset(buf, 'E', LEN);
	CHECK(access_rw(MOCK_IOVA, buf, LEN, RW_WRITE) == 0);
	CHECK(filled(over, 'D', LEN));
	unmap_at(LEN, MOCK_IOVA);
	CHECK(munmap(over, LEN) == 0);

	/* mremap: the pinned pages move with the mapping (Linux moves the page tables): the
	 * program at the new address and DMA see each other's writes; the old address is gone. */
	v = private_buf('J');
	map_at(v, LEN, MOCK_IOVA);
	char *moved = mmap(NULL, LEN, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(moved != MAP_FAILED);
	CHECK(mremap(v, LEN, LEN, MREMAP_MAYMOVE | MREMAP_FIXED, moved) == moved);
	memset(moved, 'K', PAGE);
	CHECK(access_rw(MOCK_IOVA, buf, LEN, 0) == 0 && filled(buf, 'K', PAGE) &&
	      filled(buf + PAGE, 'J', PAGE));
	memset(buf, 'L', PAGE);
	CHECK(access_rw(MOCK_IOVA + PAGE, buf, PAGE, RW_WRITE) == 0);
	CHECK(filled(moved + PAGE, 'L', PAGE));
	unmap_at(LEN, MOCK_IOVA);
	CHECK(munmap(moved, LEN) == 0);

	/* Transparent huge pages asked for (MADV_HUGEPAGE, 2 MiB aligned): held the same way. */
	char *thp_area = mmap(NULL, 4 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			      -1, 0);
	CHECK(thp_area != MAP_FAILED);
	char *thp = (char *)(((uintptr_t)thp_area + (2 << 20) - 1) & ~(uintptr_t)((2 << 20) - 1));
	CHECK(madvise(thp, 2 << 20, MADV_HUGEPAGE) == 0);
	memset(thp, 'T', 2 << 20);
	map_at(thp, 2 << 20, MOCK_IOVA);
	CHECK(munmap(thp_area, 4 << 20) == 0);
	memset(buf, 0, LEN);
	CHECK(access_rw(MOCK_IOVA + (1 << 20), buf, LEN, 0) == 0 && filled(buf, 'T', LEN));
	unmap_at(2 << 20, MOCK_IOVA);

	/* Private hugetlb memory (when two free 2 MiB pages allow the move): held the same way. */
	char *hp = mmap(NULL, 2 << 20, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
	if (hp == MAP_FAILED) {
		printf("private_pins: hugetlb not run (no free 2 MiB page)\n");
	} else {
		memset(hp, 'V', 2 << 20);
		map_at(hp + (1 << 20), LEN, MOCK_IOVA);
		CHECK(munmap(hp, 2 << 20) == 0);
		memset(buf, 0, LEN);
		int held = access_rw(MOCK_IOVA, buf, LEN, 0) == 0 && filled(buf, 'V', LEN);
		printf("private_pins: hugetlb %s\n", held ? "held" : "not held (no page for the move)");
		if (!held)
			CHECK_ERR(access_rw(MOCK_IOVA, buf, LEN, 0), EFAULT);
		unmap_at(LEN, MOCK_IOVA);
	}

	/* fork: the child's pages are its own copy; the parent's stay the pinned ones. */
	v = private_buf('F');
	map_at(v, LEN, MOCK_IOVA);
	int go[2];
	CHECK(pipe(go) == 0);
	pid_t child = fork();
	CHECK(child >= 0);
	if (child == 0) {
		char c;
		close(go[1]);
		if (read(go[0], &c, 1) != 1)
			_exit(10);
		/* The parent wrote 'H' to its buffer by now: not seen here. */
		if (!filled(v, 'F', LEN))
			_exit(11);
		memset(v, 'G', LEN);
		_exit(filled(v, 'G', LEN) ? 0 : 12);
	}
	close(go[0]);
	memset(v, 'H', PAGE);
	CHECK(write(go[1], "x", 1) == 1);
	int st;
	CHECK(waitpid(child, &st, 0) == child);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		printf("fork child: status %#x\n", st);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	close(go[1]);
	memset(buf, 0, LEN);
	CHECK(access_rw(MOCK_IOVA, buf, LEN, 0) == 0 && filled(buf, 'H', PAGE) &&
	      filled(buf + PAGE, 'F', PAGE));
	/* And DMA writes are the parent's to see. */
	memset(buf, 'I', PAGE);
	CHECK(access_rw(MOCK_IOVA + PAGE, buf, PAGE, RW_WRITE) == 0);
	CHECK(filled(v + PAGE, 'I', PAGE));
	unmap_at(LEN, MOCK_IOVA);
	CHECK(munmap(v, LEN) == 0);

	/* exec: a child maps its own buffer, then execs a program that maps new memory at the
	 * same address; DMA reaches the child's old pages, never the new program's. */
	int ready[2], hold[2];
	CHECK(pipe(ready) == 0 && pipe(hold) == 0);
	child = fork();
	CHECK(child >= 0);
	if (child == 0) {
		char *cv = private_buf('X');
		map_at(cv, LEN, MOCK_IOVA);
		CHECK(munmap(cv, LEN) == 0);
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
	memset(buf, 0, LEN);
	CHECK(access_rw(MOCK_IOVA, buf, LEN, 0) == 0 && filled(buf, 'X', LEN));
	memset(buf, 'Z', LEN);
	CHECK(access_rw(MOCK_IOVA, buf, LEN, RW_WRITE) == 0);
	close(hold[1]);
	CHECK(waitpid(child, &st, 0) == child);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		printf("exec child: status %#x\n", st);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	close(ready[0]);
	memset(buf, 0, LEN);
	CHECK(access_rw(MOCK_IOVA, buf, LEN, 0) == 0 && filled(buf, 'Z', LEN));
	unmap_at(LEN, MOCK_IOVA);

	/* Another thread writing the range while it is mapped: no write is lost, and the pinned
	 * pages are the ones it wrote. */
	v = private_buf(0);
	counter = (volatile unsigned long *)v;
	pthread_t t;
	CHECK(pthread_create(&t, NULL, writer, NULL) == 0);
	usleep(2000);
	map_at(v, LEN, MOCK_IOVA);
	usleep(2000);
	stop_writing = 1;
	void *last;
	CHECK(pthread_join(t, &last) == 0);
	CHECK(counter[0] == (unsigned long)(uintptr_t)last &&
	      counter[1] == (unsigned long)(uintptr_t)last);
	unsigned long seen[2];
	CHECK(access_rw(MOCK_IOVA, seen, sizeof(seen), 0) == 0 &&
	      seen[0] == (unsigned long)(uintptr_t)last);
	CHECK(munmap(v, LEN) == 0);
	CHECK(access_rw(MOCK_IOVA, seen, sizeof(seen), 0) == 0 &&
	      seen[0] == (unsigned long)(uintptr_t)last);
	unmap_at(LEN, MOCK_IOVA);

	/* Mapped with no domain (nothing pinned), pinned when a domain is attached: held then. */
	struct iommu_ioas_alloc a2 = { .size = sizeof(a2) };
	CHECK(ioctl(iommufd, IOMMU_IOAS_ALLOC, &a2) == 0);
	__u32 first_ioas = ioas;
	ioas = a2.out_ioas_id;
	v = private_buf('U');
	map_at(v, LEN, MOCK_IOVA);
	struct test_cmd mock2 = { .size = sizeof(mock2), .op = OP_MOCK_DOMAIN, .id = ioas };
	CHECK(ioctl(iommufd, IOMMU_TEST_CMD, &mock2) == 0);
	struct test_cmd acc2 = { .size = sizeof(acc2), .op = OP_CREATE_ACCESS, .id = ioas };
	CHECK(ioctl(iommufd, IOMMU_TEST_CMD, &acc2) == 0);
	int first_access = access_fd;
	access_fd = (int)acc2.create_access.out_access_fd;
	CHECK(munmap(v, LEN) == 0);
	memset(buf, 0, LEN);
	CHECK(access_rw(MOCK_IOVA, buf, LEN, 0) == 0 && filled(buf, 'U', LEN));
	close(access_fd);
	access_fd = first_access;
	ioas = first_ioas;

	close(access_fd);
	CHECK(close(iommufd) == 0);
	PASS("private_pins");
}
