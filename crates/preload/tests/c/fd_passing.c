/*
 * An iommufd sent over a Unix socket to a process outside the sender's family (neither its
 * descendant nor forked by one) keeps working there, as the shared open file does in Linux:
 * the receiver reaches the sender's context (the file names the sender's server, which serves
 * a process that holds the file), maps its own memory into the sender's IOAS, and sends the
 * fd back; the sender closed its own copy right after sending (the message held the file).
 */
#include "dma_engine.h"

#include <sys/stat.h>
#include <sys/wait.h>

static int ioas_exists(int iommufd, __u32 ioas)
{
	struct iommu_ioas_iova_ranges r = { .size = sizeof(r), .ioas_id = ioas };
	int rc = ioctl(iommufd, IOMMU_IOAS_IOVA_RANGES, &r);
	return rc == 0 || errno == EMSGSIZE;
}

/* The receiver, reparented away from the sender before the sender had an engine. */
static void stranger(int sock, int done, pid_t sender)
{
	CHECK(getppid() != sender);
	int fd = recv_fd(sock);
	CHECK(fd >= 0);
	struct stat st;
	CHECK(fstat(fd, &st) == 0 && S_ISCHR(st.st_mode));
	CHECK(ioas_exists(fd, 1));
	unsigned char *buf = page_buffer(2 * PAGE);
	memset(buf, 0x5a, 2 * PAGE);
	CHECK(map(fd, 1, buf, 2 * PAGE, SRC_IOVA, IOMMU_IOAS_MAP_READABLE) == 0);
	/* Its argument structs are read in its own memory: a bad pointer is EFAULT. */
	CHECK_ERR(ioctl(fd, IOMMU_IOAS_MAP, (void *)8), EFAULT);
	send_fd(sock, fd);
	CHECK(close(fd) == 0);
	char y = 'y';
	CHECK(write(done, &y, 1) == 1);
	PASS("fd_passing receiver");
	fflush(stdout);
}

int main(void)
{
	int sv[2], done[2];
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
	CHECK(pipe(done) == 0);
	pid_t sender = getpid();
	pid_t mid = fork(); /* before this process has an engine: no family tie */
	CHECK(mid >= 0);
	if (mid == 0) {
		pid_t s = fork();
		CHECK(s >= 0);
		if (s == 0) {
			close(sv[0]);
			close(done[0]);
			/* Wait until the middle process is gone (reparented). */
			while (getppid() == mid)
				usleep(1000);
			stranger(sv[1], done[1], sender);
			_exit(0);
		}
		_exit(0);
	}
	int status = 0;
	CHECK(waitpid(mid, &status, 0) == mid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
	CHECK(close(sv[1]) == 0 && close(done[1]) == 0);

	int ictx = iommufd_open();
	CHECK(ioas_alloc(ictx) == 1);
	send_fd(sv[0], ictx);
	CHECK(close(ictx) == 0); /* the message, then the receiver, hold the file */

	int back = recv_fd(sv[0]);
	char y = 0;
	CHECK(read(done[0], &y, 1) == 1 && y == 'y');
	CHECK(ioas_exists(back, 1));
	/* The receiver's mapping is in the IOAS. */
	struct iommu_ioas_unmap u = {
		.size = sizeof(u), .ioas_id = 1, .iova = SRC_IOVA, .length = 2 * PAGE,
	};
	CHECK(ioctl(back, IOMMU_IOAS_UNMAP, &u) == 0 && u.length == 2 * PAGE);
	CHECK(close(back) == 0);
	PASS("fd_passing");
	return 0;
}
