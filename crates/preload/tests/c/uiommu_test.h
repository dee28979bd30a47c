/*
 * The parts of the Linux 6.12 iommufd and VFIO cdev uAPI the C tests use, for machines whose
 * installed kernel headers are older (linux/iommufd.h appeared in 6.2, the VFIO cdev ioctls
 * in 6.6). Layouts and numbers are the ABI's; where the installed headers have them, theirs
 * are used. Also a tiny check harness.
 */
#ifndef UIOMMU_TEST_H
#define UIOMMU_TEST_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/ioctl.h>
#include <linux/types.h>
#include <linux/vfio.h>
#include <sys/socket.h>
#include <sys/uio.h>

#if defined(__has_include)
#if __has_include(<linux/iommufd.h>)
#include <linux/iommufd.h>
#define UIOMMU_HAVE_IOMMUFD_H 1
#endif
#endif

#ifndef UIOMMU_HAVE_IOMMUFD_H
#define IOMMUFD_TYPE (';')

struct iommu_destroy {
	__u32 size;
	__u32 id;
};
#define IOMMU_DESTROY _IO(IOMMUFD_TYPE, 0x80)

struct iommu_ioas_alloc {
	__u32 size;
	__u32 flags;
	__u32 out_ioas_id;
};
#define IOMMU_IOAS_ALLOC _IO(IOMMUFD_TYPE, 0x81)

struct iommu_iova_range {
	__aligned_u64 start;
	__aligned_u64 last;
};

struct iommu_ioas_iova_ranges {
	__u32 size;
	__u32 ioas_id;
	__u32 num_iovas;
	__u32 __reserved;
	__aligned_u64 allowed_iovas;
	__aligned_u64 out_iova_alignment;
};
#define IOMMU_IOAS_IOVA_RANGES _IO(IOMMUFD_TYPE, 0x84)

enum iommufd_ioas_map_flags {
	IOMMU_IOAS_MAP_FIXED_IOVA = 1 << 0,
	IOMMU_IOAS_MAP_WRITEABLE = 1 << 1,
	IOMMU_IOAS_MAP_READABLE = 1 << 2,
};

struct iommu_ioas_map {
	__u32 size;
	__u32 flags;
	__u32 ioas_id;
	__u32 __reserved;
	__aligned_u64 user_va;
	__aligned_u64 length;
	__aligned_u64 iova;
};
#define IOMMU_IOAS_MAP _IO(IOMMUFD_TYPE, 0x85)

struct iommu_ioas_unmap {
	__u32 size;
	__u32 ioas_id;
	__aligned_u64 iova;
	__aligned_u64 length;
};
#define IOMMU_IOAS_UNMAP _IO(IOMMUFD_TYPE, 0x86)
#endif /* !UIOMMU_HAVE_IOMMUFD_H */

#ifndef VFIO_DEVICE_BIND_IOMMUFD
struct vfio_device_bind_iommufd {
	__u32 argsz;
	__u32 flags;
	__s32 iommufd;
	__u32 out_devid;
};
#define VFIO_DEVICE_BIND_IOMMUFD _IO(VFIO_TYPE, VFIO_BASE + 18)

struct vfio_device_attach_iommufd_pt {
	__u32 argsz;
	__u32 flags;
	__u32 pt_id;
};
#define VFIO_DEVICE_ATTACH_IOMMUFD_PT _IO(VFIO_TYPE, VFIO_BASE + 19)

struct vfio_device_detach_iommufd_pt {
	__u32 argsz;
	__u32 flags;
};
#define VFIO_DEVICE_DETACH_IOMMUFD_PT _IO(VFIO_TYPE, VFIO_BASE + 20)
#endif /* !VFIO_DEVICE_BIND_IOMMUFD */

/* --- harness ------------------------------------------------------------------------------ */

static int uiommu_checks;

/* Check `cond`; on failure print where, the condition and errno, and exit 1. */
#define CHECK(cond)                                                                        \
	do {                                                                               \
		uiommu_checks++;                                                           \
		if (!(cond)) {                                                             \
			int e_ = errno;                                                    \
			fprintf(stderr, "%s:%d: check failed: %s (errno %d: %s)\n",        \
				__FILE__, __LINE__, #cond, e_, strerror(e_));              \
			exit(1);                                                           \
		}                                                                          \
	} while (0)

/* Check that `call` fails with -1 and errno `err`. */
#define CHECK_ERR(call, err)                                                               \
	do {                                                                               \
		errno = 0;                                                                 \
		long r_ = (long)(call);                                                    \
		int e_ = errno;                                                            \
		uiommu_checks++;                                                           \
		if (r_ != -1 || e_ != (err)) {                                             \
			fprintf(stderr,                                                    \
				"%s:%d: %s returned %ld errno %d (%s), expected -1 errno %d " \
				"(%s)\n",                                                  \
				__FILE__, __LINE__, #call, r_, e_, strerror(e_), (err),    \
				strerror(err));                                            \
			exit(1);                                                           \
		}                                                                          \
	} while (0)

#define PASS(name) printf("PASS %s: %d checks\n", (name), uiommu_checks)

/* Send `fd` over the Unix socket `sock` (SCM_RIGHTS, one data byte). */
static inline void send_fd(int sock, int fd)
{
	char data = 'f';
	struct iovec iov = { .iov_base = &data, .iov_len = 1 };
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr msg = {
		.msg_iov = &iov,
		.msg_iovlen = 1,
		.msg_control = u.buf,
		.msg_controllen = sizeof(u.buf),
	};
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	CHECK(sendmsg(sock, &msg, 0) == 1);
}

static inline int recv_fd(int sock)
{
	char data;
	struct iovec iov = { .iov_base = &data, .iov_len = 1 };
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr msg = {
		.msg_iov = &iov,
		.msg_iovlen = 1,
		.msg_control = u.buf,
		.msg_controllen = sizeof(u.buf),
	};
	CHECK(recvmsg(sock, &msg, 0) == 1);
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	CHECK(c && c->cmsg_type == SCM_RIGHTS);
	int fd;
	memcpy(&fd, CMSG_DATA(c), sizeof(int));
	return fd;
}


/* Whether the host engine serves this program (`uiommu run --engine host`): our files are then
 * the kernel's sockets, shared across exec, lseek-less as Linux's device files. */
static inline int host_engine(void)
{
	const char *s = getenv("UIOMMU_SOCKET");
	return s && *s;
}

#endif /* UIOMMU_TEST_H */
