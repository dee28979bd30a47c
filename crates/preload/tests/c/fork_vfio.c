/*
 * Files inherited across fork keep working, as the shared open file descriptions do in Linux:
 *
 * A. A child drives the parent's device and context through the inherited fds: it binds the
 *    device to the inherited iommufd (an fd argument naming one of its own fds), reads the
 *    config space and BAR with pread and with read at the file position (which it advances),
 *    is refused mmap with the parent's errno, maps its own memory, runs a DMA copy in its
 *    memory, gets the completion interrupt on an eventfd of its own, and allocates a fault
 *    queue whose fd it can read; fstat of the inherited fds and poll of inherited and new
 *    fault queues answer as in the parent. The parent then sees the child's work: the device bound and
 *    attached, the child's mapping in the IOAS.
 * B. A file stays open while a child holds it: the parent closes its fds of a context and a
 *    device; the child's copies keep the context (it sends the iommufd back and the IOAS is
 *    there) and the device's group (a sibling cannot be bound) alive; when the child closes
 *    its device fd the group is free at once.
 * C. When the last holder exits without closing, its files are closed by the time the parent's
 *    waitpid returns, as in Linux; a grandchild nobody waits for closes them soon after its
 *    exit (the owner looks again periodically).
 * D. Threads of a child call through an inherited fd at once.
 * E. The child of a child that has an engine of its own reaches both engines.
 * F. A child that `exec`s with the parent's used iommufd open still reaches the parent's
 *    context (the file names its engine's server).
 * G. An iommufd the parent opens after the fork and sends to the child is served too.
 */
#include "dma_engine.h"

#include <poll.h>
#include <pthread.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#define MEMLOCK_PAGES 64

struct pgfault_rec {
	__u32 flags, dev_id, pasid, grpid, perm, __reserved;
	__u64 addr;
	__u32 length, cookie;
};

struct fault_alloc {
	__u32 size, flags, out_fault_id, out_fault_fd;
};
#define FAULT_QUEUE_ALLOC _IO(';', 0x8e)

static int ioas_exists(int iommufd, __u32 ioas)
{
	struct iommu_ioas_iova_ranges r = { .size = sizeof(r), .ioas_id = ioas };
	int rc = ioctl(iommufd, IOMMU_IOAS_IOVA_RANGES, &r);
	return rc == 0 || errno == EMSGSIZE;
}

static void say(int fd, char c)
{
	CHECK(write(fd, &c, 1) == 1);
}

static char hear(int fd)
{
	char c = 0;
	CHECK(read(fd, &c, 1) == 1);
	return c;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

/* Readiness of a fault queue with nothing queued: writable, not readable (a plain memfd
 * would be both). */
static void check_idle_queue(int qfd)
{
	struct pollfd p = { .fd = qfd, .events = POLLIN | POLLOUT };
	CHECK(poll(&p, 1, 0) == 1 && p.revents == POLLOUT);
}

/* Part D: threads of a child calling through the inherited iommufd at once. */
#define THREADS 6
#define ROUNDS 150

static int thread_fd;

static void *thread_calls(void *arg)
{
	(void)arg;
	for (int i = 0; i < ROUNDS; i++) {
		struct iommu_ioas_alloc a = { .size = sizeof(a) };
		if (ioctl(thread_fd, IOMMU_IOAS_ALLOC, &a) != 0) {
			fprintf(stderr, "thread: IOMMU_IOAS_ALLOC failed, errno %d (round %d)\n", errno, i);
			return (void *)1;
		}
		struct iommu_destroy d = { .size = sizeof(d), .id = a.out_ioas_id };
		if (ioctl(thread_fd, IOMMU_DESTROY, &d) != 0) {
			fprintf(stderr, "thread: IOMMU_DESTROY of %u failed, errno %d (round %d)\n", d.id, errno, i);
			return (void *)2;
		}
	}
	return NULL;
}

/* Part A, in the child. */
static void child_drives(int ictx, __u32 ioas, int devfd, int parent_mmap_errno,
			 const struct stat *parent_dev_st, int parent_queue)
{
	/* fstat of the inherited device is the character device the parent sees. */
	struct stat st;
	CHECK(fstat(devfd, &st) == 0);
	CHECK(S_ISCHR(st.st_mode) && st.st_rdev == parent_dev_st->st_rdev &&
	      st.st_ino == parent_dev_st->st_ino);
	CHECK(fstat(ictx, &st) == 0 && S_ISCHR(st.st_mode));
	/* The parent's fault queue, inherited: its readiness is the queue's. */
	check_idle_queue(parent_queue);

	/* mmap is refused as in the parent. */
	errno = 0;
	CHECK(mmap(NULL, PAGE, PROT_READ, MAP_SHARED, devfd, 0) == MAP_FAILED);
	CHECK(errno == parent_mmap_errno);

	/* Bind the inherited device to the inherited iommufd, both named by the child's fds. */
	CHECK_ERR(vfio_bind(devfd, 1000, NULL), EBADF);
	int notiommu = open("/dev/null", O_RDONLY);
	CHECK_ERR(vfio_bind(devfd, notiommu, NULL), EBADFD);
	__u32 devid = 0;
	CHECK(vfio_bind(devfd, ictx, &devid) == 0 && devid != 0);
	CHECK_ERR(vfio_bind(devfd, ictx, NULL), EINVAL);

	/* Config space and BAR by pread/pwrite, and by read at the file position. */
	struct dev d = setup(devfd);
	void *volatile bad = (void *)8;
	CHECK_ERR(pread(devfd, bad, 4, d.bar0 + REG_ID), EFAULT);
	__u32 id = 0;
	if (host_engine()) {
		/* As on Linux: a VFIO device file has no llseek; read starts at position 0. */
		CHECK_ERR(lseek(devfd, (off_t)(d.bar0 + REG_ID), SEEK_SET), ESPIPE);
		CHECK(d.bar0 + REG_ID == 0 && read(devfd, &id, 4) == 4 && id == 0x444d4145);
		CHECK(pread(devfd, &id, 4, 4) == 4);
		CHECK(read(devfd, &id, 4) == 4 && id != 0x444d4145);
	} else {
		CHECK(lseek(devfd, (off_t)(d.bar0 + REG_ID), SEEK_SET) == (off_t)(d.bar0 + REG_ID));
		CHECK(read(devfd, &id, 4) == 4 && id == 0x444d4145);
		CHECK(lseek(devfd, 0, SEEK_CUR) == (off_t)(d.bar0 + REG_ID + 4));
	}

	/* The child's own memory, mapped into the parent's IOAS, moved by the device. */
	unsigned char *src = page_buffer(BUF), *dst = page_buffer(BUF);
	for (int i = 0; i < BUF; i++)
		src[i] = (unsigned char)(i * 13 + 1);
	CHECK(attach(devfd, ioas) == 0);
	CHECK(map(ictx, ioas, src, BUF, SRC_IOVA, IOMMU_IOAS_MAP_READABLE) == 0);
	CHECK(map(ictx, ioas, dst, BUF, DST_IOVA,
		  IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE) == 0);
	CHECK(dma(&d, OP_COPY, SRC_IOVA, DST_IOVA, BUF) == STATUS_DONE);
	CHECK(memcmp(src, dst, BUF) == 0);
	CHECK(dma(&d, OP_COPY, SRC_IOVA, 0x900000, 16) == STATUS_FAULT);
	CHECK((rd32(&d, REG_FAULT_CODE) & 0xff) == FAULT_NOT_MAPPED);

	/* The completion interrupt on the child's own eventfd. */
	int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	CHECK(efd >= 0);
	CHECK_ERR(set_msix_eventfd(devfd, notiommu), EINVAL); /* not an eventfd */
	CHECK(set_msix_eventfd(devfd, efd) == 0);
	wr32(&d, REG_IRQ_ENABLE, 1);
	CHECK(dma(&d, OP_COPY, SRC_IOVA, DST_IOVA, 16) == STATUS_DONE);
	__u64 count = 0;
	CHECK(read(efd, &count, 8) == 8 && count == 1);
	wr32(&d, REG_IRQ_ENABLE, 0);
	CHECK(close(notiommu) == 0);

	/* A file the call makes (a fault queue) is installed in the child. */
	struct fault_alloc fa = { .size = sizeof(fa) };
	CHECK(ioctl(ictx, FAULT_QUEUE_ALLOC, &fa) == 0);
	int ffd = (int)fa.out_fault_fd;
	CHECK(fcntl(ffd, F_GETFD) == FD_CLOEXEC);
	check_idle_queue(ffd);
	struct pgfault_rec recs[2];
	CHECK(read(ffd, recs, sizeof(recs)) == 0); /* no fault queued */
	CHECK_ERR(read(ffd, recs, sizeof(recs[0]) - 1), ESPIPE);
	CHECK_ERR(pread(ffd, recs, sizeof(recs), 0), ESPIPE);
	struct iommu_destroy ds = { .size = sizeof(ds), .id = fa.out_fault_id };
	CHECK_ERR(ioctl(ictx, IOMMU_DESTROY, &ds), EBUSY); /* the fd holds it */
	CHECK(close(ffd) == 0);
	CHECK(ioctl(ictx, IOMMU_DESTROY, &ds) == 0);
}

/* Part F, the image a child `exec`ed with the parent's (used) iommufd open. */
static int exec_child(int fd, __u32 ioas)
{
	struct stat st;
	CHECK(fstat(fd, &st) == 0 && S_ISCHR(st.st_mode));
	CHECK(ioas_exists(fd, ioas)); /* the parent's context */
	__u32 mine = ioas_alloc(fd);
	CHECK(mine != ioas);
	struct iommu_destroy d = { .size = sizeof(d), .id = mine };
	CHECK(ioctl(fd, IOMMU_DESTROY, &d) == 0);
	CHECK(close(fd) == 0);
	PASS("fork_vfio exec child");
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 4 && strcmp(argv[1], "exec-child") == 0)
		return exec_child(atoi(argv[2]), (__u32)atoi(argv[3]));
	drop_ipc_lock();
	struct rlimit rl = { MEMLOCK_PAGES * PAGE, MEMLOCK_PAGES * PAGE };
	CHECK(setrlimit(RLIMIT_MEMLOCK, &rl) == 0);

	/* --- A ------------------------------------------------------------------------------ */
	int ictx = iommufd_open();
	__u32 ioas = ioas_alloc(ictx);
	int devfd = vfio_open(0);
	CHECK(devfd >= 0);
	errno = 0;
	CHECK(mmap(NULL, PAGE, PROT_READ, MAP_SHARED, devfd, 0) == MAP_FAILED);
	int mmap_errno = errno;
	struct vfio_device_info info = { .argsz = sizeof(info) };
	CHECK_ERR(ioctl(devfd, VFIO_DEVICE_GET_INFO, &info), EINVAL); /* not bound yet */

	struct stat dev_st;
	CHECK(fstat(devfd, &dev_st) == 0 && S_ISCHR(dev_st.st_mode));
	struct fault_alloc pq = { .size = sizeof(pq) };
	CHECK(ioctl(ictx, FAULT_QUEUE_ALLOC, &pq) == 0);
	check_idle_queue((int)pq.out_fault_fd);

	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		child_drives(ictx, ioas, devfd, mmap_errno, &dev_st, (int)pq.out_fault_fd);
		PASS("fork_vfio child");
		fflush(stdout);
		_exit(0);
	}
	int status = 0;
	CHECK(waitpid(pid, &status, 0) == pid);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	/* The child bound the parent's device file and mapped into the parent's IOAS. */
	CHECK(ioctl(devfd, VFIO_DEVICE_GET_INFO, &info) == 0);
	struct iommu_ioas_unmap u = {
		.size = sizeof(u), .ioas_id = ioas, .iova = SRC_IOVA, .length = BUF,
	};
	CHECK(ioctl(ictx, IOMMU_IOAS_UNMAP, &u) == 0 && u.length == BUF);
	u.iova = DST_IOVA;
	u.length = BUF;
	CHECK(ioctl(ictx, IOMMU_IOAS_UNMAP, &u) == 0 && u.length == BUF);

	/* --- B ------------------------------------------------------------------------------ */
	int ictx2 = iommufd_open();
	__u32 ioas2 = ioas_alloc(ictx2);
	int dev1 = vfio_open(1), dev2 = vfio_open(2); /* siblings: one group */
	CHECK(dev1 >= 0 && dev2 >= 0);
	CHECK(vfio_bind(dev1, ictx2, NULL) == 0);
	int sv[2], go[2], done[2];
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
	CHECK(pipe(go) == 0 && pipe(done) == 0);
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		CHECK(hear(go[0]) == 'b');
		CHECK(ioas_exists(ictx2, ioas2));
		send_fd(sv[1], ictx2);
		CHECK(hear(go[0]) == 'c');
		CHECK(close(dev1) == 0);
		say(done[1], 'd');
		CHECK(hear(go[0]) == 'x');
		_exit(0);
	}
	/* The parent's fds go; the child's keep both files. */
	CHECK(close(ictx2) == 0);
	CHECK(close(dev1) == 0);
	CHECK_ERR(vfio_bind(dev2, ictx, NULL), EPERM); /* the group still belongs to ictx2 */
	say(go[1], 'b');
	int back = recv_fd(sv[0]);
	CHECK(ioas_exists(back, ioas2));
	/* The child closes its device fd: the group is free as soon as close returns there. */
	say(go[1], 'c');
	CHECK(hear(done[0]) == 'd');
	CHECK(vfio_bind(dev2, ictx, NULL) == 0);
	CHECK(close(dev2) == 0);
	say(go[1], 'x');
	CHECK(waitpid(pid, &status, 0) == pid);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	CHECK(ioas_exists(back, ioas2)); /* the parent holds it again */

	/* --- C ------------------------------------------------------------------------------ */
	dev1 = vfio_open(1);
	CHECK(dev1 >= 0);
	CHECK(vfio_bind(dev1, back, NULL) == 0);
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		CHECK(hear(go[0]) == 'x');
		_exit(0); /* exits holding dev1 */
	}
	CHECK(close(dev1) == 0);
	dev2 = vfio_open(2);
	CHECK(dev2 >= 0);
	CHECK_ERR(vfio_bind(dev2, ictx, NULL), EPERM);
	say(go[1], 'x');
	CHECK(waitpid(pid, &status, 0) == pid);
	/* As in Linux, the exited child's files are closed by the time waitpid returns. */
	CHECK(vfio_bind(dev2, ictx, NULL) == 0);
	CHECK(close(dev2) == 0);

	/* A grandchild that outlives its parent holds dev1; nobody waits for it here, yet its
	 * exit closes the file soon after. */
	dev1 = vfio_open(1);
	CHECK(dev1 >= 0);
	CHECK(vfio_bind(dev1, back, NULL) == 0);
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		pid_t g = fork();
		CHECK(g >= 0);
		if (g == 0) {
			CHECK(hear(go[0]) == 'y');
			_exit(0);
		}
		_exit(0);
	}
	CHECK(waitpid(pid, &status, 0) == pid);
	CHECK(close(dev1) == 0);
	dev2 = vfio_open(2);
	CHECK_ERR(vfio_bind(dev2, ictx, NULL), EPERM);
	say(go[1], 'y');
	int bound = -1;
	for (int i = 0; i < 100 && bound != 0; i++) {
		bound = vfio_bind(dev2, ictx, NULL);
		if (bound != 0) {
			CHECK(errno == EPERM);
			sleep_ms(50);
		}
	}
	CHECK(bound == 0);

	CHECK(close(dev2) == 0);
	CHECK(close(back) == 0);
	/* --- D ------------------------------------------------------------------------------ */
	thread_fd = ictx;
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		pthread_t t[THREADS];
		for (int i = 0; i < THREADS; i++)
			CHECK(pthread_create(&t[i], NULL, thread_calls, NULL) == 0);
		for (int i = 0; i < THREADS; i++) {
			void *r = (void *)1;
			CHECK(pthread_join(t[i], &r) == 0 && r == NULL);
		}
		_exit(0);
	}
	CHECK(waitpid(pid, &status, 0) == pid);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	/* Every object the threads made is gone: the next id is the lowest free one again. */
	__u32 next = ioas_alloc(ictx);
	struct iommu_destroy dn = { .size = sizeof(dn), .id = next };
	CHECK(ioctl(ictx, IOMMU_DESTROY, &dn) == 0);
	CHECK(next < 10);

	/* --- E ------------------------------------------------------------------------------ */
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		/* A child with an engine of its own forks: its child reaches both engines. */
		int own = iommufd_open();
		__u32 own_ioas = ioas_alloc(own);
		pid_t g = fork();
		CHECK(g >= 0);
		if (g == 0) {
			CHECK(ioas_exists(own, own_ioas)); /* the child's engine */
			CHECK(ioas_exists(ictx, ioas));    /* the original owner's */
			CHECK(!ioas_exists(own, ioas + 1000));
			_exit(0);
		}
		int gs = 0;
		CHECK(waitpid(g, &gs, 0) == g && WIFEXITED(gs) && WEXITSTATUS(gs) == 0);
		_exit(0);
	}
	CHECK(waitpid(pid, &status, 0) == pid);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);

	/* --- F ------------------------------------------------------------------------------ */
	int keep = fcntl(ictx, F_DUPFD, 0); /* without close-on-exec */
	CHECK(keep >= 0);
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		char fdarg[16], ioasarg[16];
		snprintf(fdarg, sizeof(fdarg), "%d", keep);
		snprintf(ioasarg, sizeof(ioasarg), "%u", ioas);
		execl("/proc/self/exe", argv[0], "exec-child", fdarg, ioasarg, (char *)NULL);
		_exit(127);
	}
	CHECK(close(keep) == 0);
	CHECK(waitpid(pid, &status, 0) == pid);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);

	/* --- G ------------------------------------------------------------------------------ */
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		int got = recv_fd(sv[1]);
		CHECK(hear(go[0]) == 'g');
		CHECK(ioas_exists(got, 1));
		CHECK(ioas_alloc(got) == 2);
		_exit(0);
	}
	int later = iommufd_open(); /* opened after the fork */
	CHECK(ioas_alloc(later) == 1);
	send_fd(sv[0], later);
	CHECK(close(later) == 0); /* the child's copy (in flight, then received) keeps it */
	say(go[1], 'g');
	CHECK(waitpid(pid, &status, 0) == pid);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);

	CHECK(close((int)pq.out_fault_fd) == 0);
	CHECK(close(devfd) == 0);
	CHECK(close(ictx) == 0);
	PASS("fork_vfio");
	return 0;
}
