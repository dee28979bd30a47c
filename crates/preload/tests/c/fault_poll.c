/*
 * A fault queue's fd under poll, ppoll, select, pselect and epoll (ready for reading exactly
 * while a fault is queued, always writable, a blocked poll woken by a fault another thread
 * raises), and its read into memory that cannot be written (EFAULT, the fault stays queued;
 * a group that does not fit in the writable part stays queued while those before it are read).
 * Faults come from the kernel selftest's mock device (IOMMU_TEST_CMD), as in the selftests:
 * a nested HWPT with a fault queue, the mock device replaced onto it, TRIGGER_IOPF.
 *
 * The structs below are the Linux 6.12 uAPI layouts (iommufd.h, iommufd_test.h), declared here
 * with our own names because the build machine's headers may predate them.
 */
#define _GNU_SOURCE
#include "uiommu_test.h"
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/select.h>
#include <time.h>
#include <unistd.h>

struct ut_hwpt_alloc {
	__u32 size, flags, dev_id, pt_id, out_hwpt_id, reserved, data_type, data_len;
	__aligned_u64 data_uptr;
	__u32 fault_id, reserved2;
};
#define UT_HWPT_ALLOC _IO(';', 0x89)
#define UT_HWPT_ALLOC_NEST_PARENT (1 << 0)
#define UT_HWPT_FAULT_ID_VALID (1 << 2)
#define UT_HWPT_DATA_SELFTEST 0xdead
#define UT_TEST_IOTLB_DEFAULT 0xbadbeef

struct ut_fault_alloc {
	__u32 size, flags, out_fault_id, out_fault_fd;
};
#define UT_FAULT_QUEUE_ALLOC _IO(';', 0x8e)

struct ut_test_cmd {
	__u32 size, op, id, reserved;
	__u32 payload[12];
	__u32 last, pad;
};
#define UT_TEST_CMD _IO(';', 0xa0)
#define UT_OP_MOCK_DOMAIN 2
#define UT_OP_MOCK_DOMAIN_REPLACE 10
#define UT_OP_TRIGGER_IOPF 15

struct ut_pgfault {
	__u32 flags, dev_id, pasid, grpid, perm, reserved;
	__aligned_u64 addr;
	__u32 length, cookie;
};
struct ut_response {
	__u32 cookie, code;
};

_Static_assert(sizeof(struct ut_hwpt_alloc) == 48, "iommu_hwpt_alloc");
_Static_assert(sizeof(struct ut_test_cmd) == 72, "iommu_test_cmd");
_Static_assert(sizeof(struct ut_pgfault) == 40, "iommu_hwpt_pgfault");

static int iommufd;
static __u32 idev;

static int test_cmd(__u32 op, __u32 id, struct ut_test_cmd *c)
{
	c->size = sizeof(*c);
	c->op = op;
	c->id = id;
	return ioctl(iommufd, UT_TEST_CMD, c);
}

static int trigger(__u32 grpid, __u64 addr)
{
	struct ut_test_cmd c = { 0 };
	c.payload[0] = idev; /* dev_id */
	c.payload[1] = 0;    /* pasid */
	c.payload[2] = grpid;
	c.payload[3] = 3;    /* perm: read | write */
	memcpy(&c.payload[4], &addr, sizeof(addr));
	return test_cmd(UT_OP_TRIGGER_IOPF, 0, &c);
}

static short poll1(int fd, short events, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = events };
	int r = poll(&p, 1, timeout_ms);
	if (r < 0)
		return -1;
	CHECK(r == (p.revents != 0));
	CHECK(p.fd == fd);
	return p.revents;
}

static int select_read(int fd)
{
	fd_set r;
	FD_ZERO(&r);
	FD_SET(fd, &r);
	struct timeval tv = { 0, 0 };
	int n = select(fd + 1, &r, NULL, NULL, &tv);
	return n < 0 ? -1 : (n == 1 && FD_ISSET(fd, &r));
}

static int fault_fd;
static short woken_revents;

static void *waiter(void *arg)
{
	(void)arg;
	struct pollfd p = { .fd = fault_fd, .events = POLLIN };
	struct timespec ts = { 10, 0 };
	if (ppoll(&p, 1, &ts, NULL) == 1)
		woken_revents = p.revents;
	return NULL;
}

int main(void)
{
	iommufd = open("/dev/iommu", O_RDWR);
	CHECK(iommufd >= 0);
	struct iommu_ioas_alloc ia = { .size = sizeof(ia) };
	CHECK(ioctl(iommufd, IOMMU_IOAS_ALLOC, &ia) == 0);
	struct ut_test_cmd md = { 0 };
	CHECK(test_cmd(UT_OP_MOCK_DOMAIN, ia.out_ioas_id, &md) == 0);
	__u32 stdev = md.payload[0];
	idev = md.payload[2];
	struct ut_hwpt_alloc parent = { .size = sizeof(parent),
					.flags = UT_HWPT_ALLOC_NEST_PARENT,
					.dev_id = idev,
					.pt_id = ia.out_ioas_id };
	CHECK(ioctl(iommufd, UT_HWPT_ALLOC, &parent) == 0);
	struct ut_fault_alloc fa = { .size = sizeof(fa) };
	CHECK(ioctl(iommufd, UT_FAULT_QUEUE_ALLOC, &fa) == 0);
	fault_fd = (int)fa.out_fault_fd;
	__u32 iotlb = UT_TEST_IOTLB_DEFAULT;
	struct ut_hwpt_alloc nested = { .size = sizeof(nested),
					.flags = UT_HWPT_FAULT_ID_VALID,
					.dev_id = idev,
					.pt_id = parent.out_hwpt_id,
					.data_type = UT_HWPT_DATA_SELFTEST,
					.data_len = sizeof(iotlb),
					.data_uptr = (uintptr_t)&iotlb,
					.fault_id = fa.out_fault_id };
	CHECK(ioctl(iommufd, UT_HWPT_ALLOC, &nested) == 0);
	struct ut_test_cmd rp = { 0 };
	rp.payload[0] = nested.out_hwpt_id;
	CHECK(test_cmd(UT_OP_MOCK_DOMAIN_REPLACE, stdev, &rp) == 0);

	/* Nothing queued: writable, not readable, by every interface. */
	CHECK(poll1(fault_fd, POLLIN, 0) == 0);
	CHECK(poll1(fault_fd, POLLIN | POLLOUT, 0) == POLLOUT);
	CHECK(select_read(fault_fd) == 0);
	int ep = epoll_create1(EPOLL_CLOEXEC);
	CHECK(ep >= 0);
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 42 };
	CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, fault_fd, &ev) == 0);
	struct epoll_event got[2];
	CHECK(epoll_wait(ep, got, 2, 0) == 0);
	/* Other fds in the same poll are served as ever. */
	int pipefd[2];
	CHECK(pipe(pipefd) == 0);
	CHECK(write(pipefd[1], "x", 1) == 1);
	struct pollfd two[2] = { { .fd = fault_fd, .events = POLLIN }, { .fd = pipefd[0], .events = POLLIN } };
	CHECK(poll(two, 2, 0) == 1 && two[0].revents == 0 && two[1].revents == POLLIN);

	/* A poll blocked in another thread wakes when a fault is raised. */
	pthread_t t;
	CHECK(pthread_create(&t, NULL, waiter, NULL) == 0);
	struct timespec nap = { 0, 50 * 1000 * 1000 };
	nanosleep(&nap, NULL);
	CHECK(trigger(1, 0x100000) == 0);
	pthread_join(t, NULL);
	CHECK(woken_revents == POLLIN);
	/* POLLRDNORM when asked for, as the kernel masks with the events asked. */
	CHECK(poll1(fault_fd, POLLRDNORM, 0) == POLLRDNORM);
	CHECK(poll1(fault_fd, POLLIN | POLLOUT, 0) == (POLLIN | POLLOUT));
	CHECK(select_read(fault_fd) == 1);
	fd_set rs;
	FD_ZERO(&rs);
	FD_SET(fault_fd, &rs);
	struct timespec zero = { 0, 0 };
	sigset_t none;
	sigemptyset(&none);
	CHECK(pselect(fault_fd + 1, &rs, NULL, NULL, &zero, &none) == 1 && FD_ISSET(fault_fd, &rs));
	CHECK(epoll_wait(ep, got, 2, 0) == 1 && got[0].data.u64 == 42 && (got[0].events & EPOLLIN));
	two[0].revents = two[1].revents = 0;
	CHECK(poll(two, 2, 0) == 2 && two[0].revents == POLLIN);

	/* A read into memory that cannot be written: EFAULT, and the fault stays queued. */
	long page = sysconf(_SC_PAGESIZE);
	char *mem = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(mem != MAP_FAILED);
	CHECK(mprotect(mem + page, page, PROT_READ) == 0);
	CHECK_ERR(read(fault_fd, mem + page, sizeof(struct ut_pgfault)), EFAULT);
	void *volatile null_buf = NULL;
	CHECK_ERR(read(fault_fd, null_buf, sizeof(struct ut_pgfault)), EFAULT);
	CHECK(poll1(fault_fd, POLLIN, 0) == POLLIN);

	/* Read: the queue empties and stops being readable. */
	struct ut_pgfault f;
	CHECK(read(fault_fd, &f, sizeof(f)) == sizeof(f));
	CHECK(f.dev_id == idev && f.grpid == 1 && f.addr == 0x100000 && f.cookie != 0);
	CHECK(poll1(fault_fd, POLLIN, 0) == 0);
	CHECK(select_read(fault_fd) == 0);
	CHECK(epoll_wait(ep, got, 2, 0) == 0);
	struct ut_response resp = { .cookie = f.cookie, .code = 0 };
	CHECK(write(fault_fd, &resp, sizeof(resp)) == sizeof(resp));

	/* Two groups, room for the first only before the unwritable page: the first is read,
	 * the second stays queued. */
	CHECK(trigger(2, 0x200000) == 0);
	CHECK(trigger(3, 0x300000) == 0);
	char *edge = mem + page - sizeof(struct ut_pgfault);
	CHECK(read(fault_fd, edge, 2 * sizeof(struct ut_pgfault)) == sizeof(struct ut_pgfault));
	memcpy(&f, edge, sizeof(f));
	CHECK(f.grpid == 2);
	CHECK(poll1(fault_fd, POLLIN, 0) == POLLIN);
	struct ut_pgfault g2[2];
	CHECK(read(fault_fd, g2, sizeof(g2)) == sizeof(struct ut_pgfault) && g2[0].grpid == 3);
	CHECK(g2[0].cookie != f.cookie);
	CHECK(poll1(fault_fd, POLLIN, 0) == 0);
	struct ut_response two_resp[2] = { { f.cookie, 0 }, { g2[0].cookie, 0 } };
	CHECK(write(fault_fd, two_resp, sizeof(two_resp)) == sizeof(two_resp));

	CHECK(epoll_ctl(ep, EPOLL_CTL_DEL, fault_fd, NULL) == 0);
	close(ep);
	close(pipefd[0]);
	close(pipefd[1]);
	munmap(mem, 2 * page);
	PASS("fault_poll");
	return 0;
}
