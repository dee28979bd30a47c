/*
 * The emulated kernel's systematic fault injection, as iommufd_fail_nth drives it:
 * /proc/<pid>/task/<tid>/fail-nth (its text, kstrtouint's parsing, per-thread counts, the
 * copies of its own reads and writes as sites) and the debugfs knobs under /sys/kernel/debug
 * (failslab's ignore-gfp-wait deciding whether allocations count). A sweep of a short scenario
 * fails each site in turn: every failure is ENOMEM or EFAULT, leaves no object behind (the
 * next IOAS gets the same id) and the scenario completes once the count outlasts it.
 */
#include "uiommu_test.h"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

static int open_nth(pid_t tid)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/task/%d/fail-nth", (int)tid);
	return open(path, O_RDWR);
}

static void set_nth(int fd, unsigned n)
{
	char text[16];
	int len = snprintf(text, sizeof(text), "%u", n);
	CHECK(pwrite(fd, text, len, 0) == len);
}

/* The count as read (a read is itself a copy: a site of the reader's count). */
static long get_nth(int fd)
{
	char text[16] = { 0 };
	ssize_t n = pread(fd, text, sizeof(text) - 1, 0);
	if (n < 0)
		return -errno;
	return strtol(text, NULL, 10);
}

static int ioas_alloc(int fd, __u32 *id)
{
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	int r = ioctl(fd, IOMMU_IOAS_ALLOC, &a);
	*id = a.out_ioas_id;
	return r;
}

static void write_knob(const char *path, const char *value)
{
	int fd = open(path, O_WRONLY);
	CHECK(fd >= 0);
	CHECK(write(fd, value, strlen(value)) == (ssize_t)strlen(value));
	close(fd);
}

/* A scenario: IOAS alloc, map a buffer at an automatic IOVA, unmap it, destroy the IOAS. */
static int scenario(int iommufd, void *buf)
{
	__u32 ioas;
	if (ioas_alloc(iommufd, &ioas))
		return -1;
	struct iommu_ioas_map map = {
		.size = sizeof(map),
		.flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
		.ioas_id = ioas,
		.user_va = (uintptr_t)buf,
		.length = 65536,
	};
	int r = ioctl(iommufd, IOMMU_IOAS_MAP, &map);
	if (r == 0) {
		struct iommu_ioas_unmap unmap = {
			.size = sizeof(unmap),
			.ioas_id = ioas,
			.iova = map.iova,
			.length = 65536,
		};
		r = ioctl(iommufd, IOMMU_IOAS_UNMAP, &unmap);
	}
	int e = errno;
	struct iommu_destroy d = { .size = sizeof(d), .id = ioas };
	while (ioctl(iommufd, IOMMU_DESTROY, &d) && errno != ENOENT)
		; /* the destroy's own copy may be the failing site: again */
	errno = e;
	return r;
}

static pid_t other_tid;
static int other_go;

static void *sleeper(void *arg)
{
	(void)arg;
	__atomic_store_n(&other_tid, (pid_t)syscall(SYS_gettid), __ATOMIC_SEQ_CST);
	while (!__atomic_load_n(&other_go, __ATOMIC_SEQ_CST))
		usleep(1000);
	return NULL;
}

/*
 * `fail_nth process N`: under UIOMMU_FAIL_NTH=N (a count for the whole process, every site
 * counting), the N-th site fails once: N=1 is the context's allocation of the first open,
 * N=3 the IOAS object of the first IOAS_ALLOC (after the open and the command's copy).
 */
static int process_count(int n)
{
	int fd = open("/dev/iommu", O_RDWR);
	if (n == 1) {
		CHECK(fd == -1 && errno == ENOMEM);
		fd = open("/dev/iommu", O_RDWR);
	}
	CHECK(fd >= 0);
	__u32 id;
	if (n == 3)
		CHECK_ERR(ioas_alloc(fd, &id), ENOMEM);
	for (int i = 0; i < 20; i++) /* spent: nothing fails any more */
		CHECK(ioas_alloc(fd, &id) == 0 && id == (__u32)i + 1);
	close(fd);
	PASS("fail_nth process");
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "process"))
		return process_count(atoi(argv[2]));
	pid_t me = (pid_t)syscall(SYS_gettid);

	/* debugfs: the fault-injection facilities at Linux's defaults. */
	DIR *d = opendir("/sys/kernel/debug/");
	CHECK(d != NULL);
	int seen = 0;
	struct dirent *e;
	while ((e = readdir(d)))
		if (!strcmp(e->d_name, "failslab") || !strcmp(e->d_name, "fail_page_alloc") ||
		    !strcmp(e->d_name, "fail_usercopy"))
			seen++;
	CHECK(seen == 3);
	int k = openat(dirfd(d), "failslab/ignore-gfp-wait", O_RDONLY);
	CHECK(k >= 0);
	char yn[4] = { 0 };
	CHECK(read(k, yn, 3) == 2 && !strcmp(yn, "Y\n"));
	close(k);
	closedir(d);

	/* The file: 0 until written; kstrtouint's text; reads and writes are copies. */
	int nth = open_nth(me);
	CHECK(nth >= 0);
	char text[8] = { 0 };
	CHECK(read(nth, text, sizeof(text)) == 2 && !strcmp(text, "0\n"));
	CHECK(read(nth, text, sizeof(text)) == 0); /* the position moved past the text */
	CHECK(pwrite(nth, "+0x10\n", 6, 0) == 6);
	CHECK(get_nth(nth) == 16); /* the text was made before the read's copy took one */
	CHECK(get_nth(nth) == 15);
	CHECK_ERR(pwrite(nth, "abc", 3, 0), EINVAL); /* the copy took one: 13 */
	CHECK_ERR(pwrite(nth, "4294967296", 10, 0), ERANGE);
	CHECK(get_nth(nth) == 12);
	set_nth(nth, 1);
	CHECK(get_nth(nth) == -EFAULT); /* "1\n" made, then the read's copy failed: count 0 */
	CHECK(get_nth(nth) == 0);
	set_nth(nth, 1);
	CHECK_ERR(pwrite(nth, "5", 1, 0), EFAULT); /* the write's copy failed: nothing set */
	CHECK(get_nth(nth) == 0);

	/* A count of another thread is that thread's: this thread's calls do not take from it. */
	pthread_t t;
	CHECK(pthread_create(&t, NULL, sleeper, NULL) == 0);
	while (!__atomic_load_n(&other_tid, __ATOMIC_SEQ_CST))
		usleep(1000);
	int other = open_nth(other_tid);
	CHECK(other >= 0);
	set_nth(other, 1);
	int iommufd = open("/dev/iommu", O_RDWR);
	CHECK(iommufd >= 0);
	__u32 id;
	CHECK(ioas_alloc(iommufd, &id) == 0 && id == 1);
	CHECK(get_nth(other) == 1);
	set_nth(other, 0);
	__atomic_store_n(&other_go, 1, __ATOMIC_SEQ_CST);
	pthread_join(t, NULL);
	close(other);
	int self_nth = open("/proc/thread-self/fail-nth", O_RDONLY);
	CHECK(self_nth >= 0);
	close(self_nth);
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/fail-nth", (int)getpid());
	self_nth = open(path, O_RDONLY);
	CHECK(self_nth >= 0);
	close(self_nth);

	/* Linux's default knobs: allocations may sleep and are not failed; copies are. */
	set_nth(nth, 1);
	CHECK_ERR(ioas_alloc(iommufd, &id), EFAULT);
	CHECK(get_nth(nth) == 0);
	CHECK(ioas_alloc(iommufd, &id) == 0 && id == 2);
	struct iommu_destroy dd = { .size = sizeof(dd), .id = 2 };
	CHECK(ioctl(iommufd, IOMMU_DESTROY, &dd) == 0);
	dd.id = 1;
	CHECK(ioctl(iommufd, IOMMU_DESTROY, &dd) == 0);

	/* failslab's ignore-gfp-wait N (read at the next write of a count): a sweep. */
	write_knob("/sys/kernel/debug/failslab/ignore-gfp-wait", "N");
	void *buf = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(buf != MAP_FAILED);
	int enomem = 0, efault = 0, other_errno = 0, n;
	for (n = 1; n < 400; n++) {
		set_nth(nth, n);
		int r = scenario(iommufd, buf);
		int err = errno;
		long left = get_nth(nth);
		set_nth(nth, 0);
		if (left != 0) {
			CHECK(r == 0); /* the count outlasted the scenario: it completed */
			break;
		}
		if (r) {
			if (err == ENOMEM)
				enomem++;
			else if (err == EFAULT)
				efault++;
			else
				other_errno++;
		}
		/* Nothing stayed behind: the next IOAS is the lowest id again. */
		CHECK(ioas_alloc(iommufd, &id) == 0 && id == 1);
		dd.id = id;
		CHECK(ioctl(iommufd, IOMMU_DESTROY, &dd) == 0);
	}
	printf("sweep: %d sites failed (%d ENOMEM, %d EFAULT, %d other), completed at %d\n",
	       n - 1, enomem, efault, other_errno, n);
	CHECK(n < 400 && enomem >= 3 && efault >= 3 && other_errno == 0);
	/* A context's own allocation: open fails with ENOMEM. */
	set_nth(nth, 1);
	CHECK_ERR(open("/dev/iommu", O_RDWR), ENOMEM);
	CHECK(get_nth(nth) == 0);
	write_knob("/sys/kernel/debug/failslab/ignore-gfp-wait", "Y");
	close(iommufd);
	close(nth);
	PASS("fail_nth");
	return 0;
}
