/*
 * Unrelated processes sharing one host engine (`uiommu run --engine host`): each role runs
 * as its own process, started separately by tests/host_engine.rs; none is another's parent.
 *
 *   hold N             bind vfioN to a new context, attach it to an IOAS with a secret page
 *                      mapped at SRC_IOVA; print "READY <pid> <iommufd> <devfd> <ioas>" and
 *                      wait for stdin to close
 *   contend N ERRNO    bind vfioN to a new context: fails with ERRNO (or succeeds for 0)
 *   steal PID IFD DFD IOAS
 *                      open /proc/PID/fd/IFD and /proc/PID/fd/DFD: a new context and a new,
 *                      unbound file of the device; nothing of PID's is reachable
 *   send PATH          bind vfio1, map a buffer, send the iommufd and device fd to the Unix
 *                      socket at PATH, exit
 *   receive PATH       listen at PATH, take the files, wait for the sender to go, then map
 *                      its own buffers and DMA through them
 *   pin N PAGES        with RLIMIT_MEMLOCK = PAGES pages, bind vfioN, attach, map PAGES
 *                      pages; print "READY" and wait for stdin to close
 *   pinfail N PAGES    as pin, but the map fails with ENOMEM (the user's pinned pages are
 *                      charged already)
 *   churn N            map/unmap/DMA in a loop for ever (to be killed)
 *   open ERRNO         open /dev/iommu and /dev/vfio/devices/vfio0: fail with ERRNO (0: work)
 */
#define _GNU_SOURCE
#include "dma_engine.h"

#include <signal.h>
#include <sys/stat.h>
#include <sys/un.h>

static const char SECRET[] = "the holder's secret";

static __u32 bound_and_attached(int n, int *ictx, int *devfd)
{
	*ictx = iommufd_open();
	__u32 ioas = ioas_alloc(*ictx);
	*devfd = vfio_open(n);
	CHECK(*devfd >= 0);
	CHECK(vfio_bind(*devfd, *ictx, NULL) == 0);
	CHECK(attach(*devfd, ioas) == 0);
	return ioas;
}

static void wait_stdin_eof(void)
{
	char c;
	while (read(0, &c, 1) > 0)
		;
}

static int hold(int n)
{
	int ictx, devfd;
	__u32 ioas = bound_and_attached(n, &ictx, &devfd);
	unsigned char *secret = page_buffer(PAGE);
	memcpy(secret, SECRET, sizeof(SECRET));
	CHECK(map(ictx, ioas, secret, PAGE, SRC_IOVA, IOMMU_IOAS_MAP_READABLE) == 0);
	printf("READY %d %d %d %u\n", getpid(), ictx, devfd, ioas);
	fflush(stdout);
	wait_stdin_eof();
	PASS("host_peers hold");
	return 0;
}

static int contend(int n, int err)
{
	int ictx = iommufd_open();
	int devfd = vfio_open(n);
	CHECK(devfd >= 0);
	if (err)
		CHECK_ERR(vfio_bind(devfd, ictx, NULL), err);
	else
		CHECK(vfio_bind(devfd, ictx, NULL) == 0);
	PASS("host_peers contend");
	return 0;
}

static int steal(int pid, int ifd, int dfd, __u32 ioas)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/fd/%d", pid, ifd);
	int ictx = open(path, O_RDWR);
	CHECK(ictx >= 0);
	snprintf(path, sizeof(path), "/proc/%d/fd/%d", pid, dfd);
	int devfd = open(path, O_RDWR);
	CHECK(devfd >= 0);
	struct stat st;
	CHECK(fstat(ictx, &st) == 0 && S_ISCHR(st.st_mode));
	/* A new context: the holder's IOAS is not one of its objects. */
	unsigned char *mine = page_buffer(PAGE);
	CHECK_ERR(map(ictx, ioas, mine, PAGE, DST_IOVA, IOMMU_IOAS_MAP_WRITEABLE), ENOENT);
	struct iommu_destroy d = { .size = sizeof(d), .id = ioas };
	CHECK_ERR(ioctl(ictx, IOMMU_DESTROY, &d), ENOENT);
	CHECK(ioas_alloc(ictx) == 1);
	/* A new file of the device: unbound, so it grants nothing; and the device is bound. */
	struct vfio_device_info info = { .argsz = sizeof(info) };
	CHECK_ERR(ioctl(devfd, VFIO_DEVICE_GET_INFO, &info), EINVAL);
	__u32 v;
	CHECK_ERR(pread(devfd, &v, 4, 0), EINVAL);
	CHECK_ERR(vfio_bind(devfd, ictx, NULL), EINVAL);
	PASS("host_peers steal");
	return 0;
}

static int send_files(const char *path)
{
	int ictx, devfd;
	__u32 ioas = bound_and_attached(1, &ictx, &devfd);
	unsigned char *buf = page_buffer(PAGE);
	memset(buf, 0x5a, PAGE);
	CHECK(map(ictx, ioas, buf, PAGE, SRC_IOVA, IOMMU_IOAS_MAP_READABLE) == 0);
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
	CHECK(connect(s, (struct sockaddr *)&a, sizeof(a)) == 0);
	send_fd(s, ictx);
	send_fd(s, devfd);
	CHECK(write(s, &ioas, sizeof(ioas)) == sizeof(ioas));
	PASS("host_peers send");
	/* Exit with the files still open here: the receiver's copies keep them. */
	fflush(stdout);
	_exit(0);
}

static int receive(const char *path)
{
	int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
	unlink(path);
	CHECK(bind(l, (struct sockaddr *)&a, sizeof(a)) == 0);
	CHECK(listen(l, 1) == 0);
	printf("READY\n");
	fflush(stdout);
	int s = accept(l, NULL, NULL);
	CHECK(s >= 0);
	int ictx = recv_fd(s);
	int devfd = recv_fd(s);
	__u32 ioas = 0;
	CHECK(read(s, &ioas, sizeof(ioas)) == sizeof(ioas));
	/* EOF: the sender closed its end, which it does by exiting. */
	char c;
	CHECK(read(s, &c, 1) == 0);
	struct ucred cred;
	socklen_t len = sizeof(cred);
	CHECK(getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0);
	/* The sender is gone (a zombie at most): wait until it is reaped or dead. */
	for (int i = 0; i < 500; i++) {
		char st[64], state = 0;
		snprintf(st, sizeof(st), "/proc/%d/stat", cred.pid);
		FILE *f = fopen(st, "r");
		if (!f)
			break;
		if (fscanf(f, "%*d %*s %c", &state) != 1 || state == 'Z') {
			fclose(f);
			break;
		}
		fclose(f);
		usleep(10000);
	}
	struct vfio_device_info info = { .argsz = sizeof(info) };
	CHECK(ioctl(devfd, VFIO_DEVICE_GET_INFO, &info) == 0 && info.num_regions > 0);
	unsigned char *src = page_buffer(BUF), *dst = page_buffer(BUF);
	for (int i = 0; i < BUF; i++)
		src[i] = (unsigned char)(i * 7 + 3);
	/* The sender's mapping is still there (its IOVA is taken), and ours go beside it. */
	CHECK_ERR(map(ictx, ioas, src, BUF, SRC_IOVA, IOMMU_IOAS_MAP_READABLE), EEXIST);
	CHECK(map(ictx, ioas, src, BUF, DST_IOVA + 0x100000, IOMMU_IOAS_MAP_READABLE) == 0);
	CHECK(map(ictx, ioas, dst, BUF, DST_IOVA,
		  IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE) == 0);
	struct dev d = setup(devfd);
	CHECK(dma(&d, OP_COPY, DST_IOVA + 0x100000, DST_IOVA, BUF) == STATUS_DONE);
	CHECK(memcmp(src, dst, BUF) == 0);
	/* The exited sender's pinned pages are still what its mapping reaches, as on Linux (a
	 * pin holds its pages until the unmap): a DMA from it copies the bytes it had. */
	CHECK(dma(&d, OP_COPY, SRC_IOVA, DST_IOVA, 16) == STATUS_DONE);
	for (int i = 0; i < 16; i++)
		CHECK(dst[i] == 0x5a);
	PASS("host_peers receive");
	return 0;
}

static int pin(int n, long pages, int expect)
{
	drop_ipc_lock();
	struct rlimit rl = { pages * PAGE, pages * PAGE };
	CHECK(setrlimit(RLIMIT_MEMLOCK, &rl) == 0);
	int ictx, devfd;
	__u32 ioas = bound_and_attached(n, &ictx, &devfd);
	unsigned char *buf = page_buffer(pages * PAGE);
	if (expect)
		CHECK_ERR(map(ictx, ioas, buf, pages * PAGE, SRC_IOVA, IOMMU_IOAS_MAP_READABLE),
			  expect);
	else
		CHECK(map(ictx, ioas, buf, pages * PAGE, SRC_IOVA, IOMMU_IOAS_MAP_READABLE) == 0);
	if (!expect) {
		printf("READY\n");
		fflush(stdout);
		wait_stdin_eof();
	}
	PASS("host_peers pin");
	return 0;
}

static int churn(int n)
{
	int ictx, devfd;
	__u32 ioas = bound_and_attached(n, &ictx, &devfd);
	unsigned char *src = page_buffer(BUF), *dst = page_buffer(BUF);
	struct dev d = setup(devfd);
	printf("READY\n");
	fflush(stdout);
	for (;;) {
		map(ictx, ioas, src, BUF, SRC_IOVA, IOMMU_IOAS_MAP_READABLE);
		map(ictx, ioas, dst, BUF, DST_IOVA, IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE);
		dma(&d, OP_COPY, SRC_IOVA, DST_IOVA, BUF);
		struct iommu_ioas_unmap u = { .size = sizeof(u), .ioas_id = ioas, .length = ~0ULL };
		ioctl(ictx, IOMMU_IOAS_UNMAP, &u);
	}
	return 0;
}

static int open_nodes(int err)
{
	const char *paths[] = { "/dev/iommu", "/dev/vfio/devices/vfio0" };
	for (int i = 0; i < 2; i++) {
		/* stat and access say what open does: the engine's owner (root here) and mode. */
		struct stat st;
		CHECK(stat(paths[i], &st) == 0 && S_ISCHR(st.st_mode) && st.st_uid == 0);
		CHECK((st.st_mode & 0777) == (err ? 0600 : 0666));
		CHECK(access(paths[i], F_OK) == 0);
		if (err) {
			CHECK_ERR(access(paths[i], R_OK | W_OK), EACCES);
			CHECK_ERR(open(paths[i], O_RDWR), err);
		} else {
			CHECK(access(paths[i], R_OK | W_OK) == 0);
			int fd = open(paths[i], O_RDWR);
			CHECK(fd >= 0);
			close(fd);
		}
		CHECK_ERR(access(paths[i], X_OK), EACCES);
	}
	/* The legacy container is anyone's, as on Linux. */
	struct stat st;
	CHECK(stat("/dev/vfio/vfio", &st) == 0 && (st.st_mode & 0777) == 0666);
	CHECK(access("/dev/vfio/vfio", R_OK | W_OK) == 0);
	PASS("host_peers open");
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 3 && !strcmp(argv[1], "hold"))
		return hold(atoi(argv[2]));
	if (argc >= 4 && !strcmp(argv[1], "contend"))
		return contend(atoi(argv[2]), atoi(argv[3]));
	if (argc >= 6 && !strcmp(argv[1], "steal"))
		return steal(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), (__u32)atoi(argv[5]));
	if (argc >= 3 && !strcmp(argv[1], "send"))
		return send_files(argv[2]);
	if (argc >= 3 && !strcmp(argv[1], "receive"))
		return receive(argv[2]);
	if (argc >= 4 && !strcmp(argv[1], "pin"))
		return pin(atoi(argv[2]), atol(argv[3]), 0);
	if (argc >= 4 && !strcmp(argv[1], "pinfail"))
		return pin(atoi(argv[2]), atol(argv[3]), ENOMEM);
	if (argc >= 3 && !strcmp(argv[1], "open"))
		return open_nodes(atoi(argv[2]));
	if (argc >= 3 && !strcmp(argv[1], "churn"))
		return churn(atoi(argv[2]));
	fprintf(stderr, "usage: host_peers hold|contend|steal|send|receive|pin|pinfail|churn|open ...\n");
	return 2;
}
