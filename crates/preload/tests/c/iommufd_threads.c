/*
 * Many threads on one iommufd through libuiommu_preload.so: mapping and unmapping disjoint
 * IOVA ranges of one IOAS, allocating and destroying IOASes, duplicating and closing fds of the
 * same context, a device doing DMA through the IOAS, and unrelated file I/O, all at once.
 * Every call must give the answer it would give alone.
 */
#include "uiommu_test.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define MAPPERS 6
#define ROUNDS 200
#define CHUNK 0x4000 /* 16 KiB per map */
#define DEV_SRC 0x70000000ULL
#define DEV_DST 0x71000000ULL

static int iommufd;
static __u32 ioas;
static atomic_int failures;
static atomic_int stop;

#define TCHECK(cond)                                                                       \
	do {                                                                               \
		if (!(cond)) {                                                             \
			fprintf(stderr, "%s:%d: thread check failed: %s (errno %d)\n",     \
				__FILE__, __LINE__, #cond, errno);                         \
			atomic_fetch_add(&failures, 1);                                    \
			return NULL;                                                       \
		}                                                                          \
	} while (0)

static void *mapper(void *arg)
{
	long id = (long)arg;
	void *buf = mmap(NULL, CHUNK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	TCHECK(buf != MAP_FAILED);
	__u64 base = 0x10000000ULL * (__u64)(id + 1);
	for (int i = 0; i < ROUNDS; i++) {
		__u64 iova = base + (__u64)(i % 8) * CHUNK;
		struct iommu_ioas_map m = {
			.size = sizeof(m),
			.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE |
				 IOMMU_IOAS_MAP_WRITEABLE,
			.ioas_id = ioas,
			.user_va = (uintptr_t)buf,
			.length = CHUNK,
			.iova = iova,
		};
		TCHECK(ioctl(iommufd, IOMMU_IOAS_MAP, &m) == 0);
		TCHECK(ioctl(iommufd, IOMMU_IOAS_MAP, &m) == -1 && errno == EEXIST);
		struct iommu_ioas_unmap u = {
			.size = sizeof(u),
			.ioas_id = ioas,
			.iova = iova,
			.length = CHUNK,
		};
		TCHECK(ioctl(iommufd, IOMMU_IOAS_UNMAP, &u) == 0);
		TCHECK(u.length == CHUNK);
	}
	munmap(buf, CHUNK);
	return NULL;
}

static void *allocator(void *arg)
{
	(void)arg;
	for (int i = 0; i < ROUNDS; i++) {
		struct iommu_ioas_alloc a = { .size = sizeof(a) };
		TCHECK(ioctl(iommufd, IOMMU_IOAS_ALLOC, &a) == 0);
		TCHECK(a.out_ioas_id != ioas);
		struct iommu_destroy d = { .size = sizeof(d), .id = a.out_ioas_id };
		TCHECK(ioctl(iommufd, IOMMU_DESTROY, &d) == 0);
	}
	return NULL;
}

/* Duplicates of the shared iommufd come and go; the context must survive all of them. */
static void *duper(void *arg)
{
	(void)arg;
	for (int i = 0; i < ROUNDS; i++) {
		int d = dup(iommufd);
		TCHECK(d >= 0);
		struct iommu_ioas_iova_ranges q = { .size = sizeof(q), .ioas_id = ioas };
		TCHECK(ioctl(d, IOMMU_IOAS_IOVA_RANGES, &q) == -1 && errno == EMSGSIZE);
		TCHECK(close(d) == 0);
		/* A private context of this thread, opened and closed. */
		int own = open("/dev/iommu", O_RDWR);
		TCHECK(own >= 0);
		TCHECK(close(own) == 0);
	}
	return NULL;
}

/* Ordinary file I/O passes through untouched while our fds are busy. */
static void *bystander(void *arg)
{
	(void)arg;
	for (int i = 0; i < ROUNDS; i++) {
		int fd = open("/proc/self/stat", O_RDONLY);
		TCHECK(fd >= 0);
		char buf[64];
		TCHECK(read(fd, buf, sizeof(buf)) > 0);
		TCHECK(close(fd) == 0);
		int p[2];
		TCHECK(pipe(p) == 0);
		TCHECK(write(p[1], "x", 1) == 1);
		TCHECK(read(p[0], buf, 1) == 1 && buf[0] == 'x');
		TCHECK(close(p[0]) == 0 && close(p[1]) == 0);
	}
	return NULL;
}

static int devfd;
static __u64 bar0;

static int reg_rw(int write, __u64 reg, void *v, size_t n)
{
	if (write)
		return pwrite(devfd, v, n, bar0 + reg) == (ssize_t)n;
	return pread(devfd, v, n, bar0 + reg) == (ssize_t)n;
}

/* The dma-engine copies between its own two mappings again and again. */
static void *dmaer(void *arg)
{
	unsigned char *bufs = arg;
	for (int i = 0; i < ROUNDS && !atomic_load(&stop); i++) {
		memset(bufs + CHUNK, 0, CHUNK);
		bufs[i % CHUNK] = (unsigned char)i;
		__u64 src = DEV_SRC, dst = DEV_DST, len = CHUNK;
		__u32 op = 0, one = 1, status = 0;
		TCHECK(reg_rw(1, 0x008, &src, 8) && reg_rw(1, 0x010, &dst, 8));
		TCHECK(reg_rw(1, 0x018, &len, 8) && reg_rw(1, 0x020, &op, 4));
		TCHECK(reg_rw(1, 0x028, &one, 4) && reg_rw(0, 0x02c, &status, 4));
		TCHECK(status == 1);
		TCHECK(memcmp(bufs, bufs + CHUNK, CHUNK) == 0);
	}
	return NULL;
}

int main(void)
{
	iommufd = open("/dev/iommu", O_RDWR);
	CHECK(iommufd >= 0);
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	CHECK(ioctl(iommufd, IOMMU_IOAS_ALLOC, &a) == 0);
	ioas = a.out_ioas_id;

	/* A device attached to the IOAS, so maps pin and program the IOMMU page table. */
	devfd = open("/dev/vfio/devices/vfio0", O_RDWR);
	CHECK(devfd >= 0);
	struct vfio_device_bind_iommufd b = { .argsz = sizeof(b), .iommufd = iommufd };
	CHECK(ioctl(devfd, VFIO_DEVICE_BIND_IOMMUFD, &b) == 0);
	struct vfio_device_attach_iommufd_pt at = { .argsz = sizeof(at), .pt_id = ioas };
	CHECK(ioctl(devfd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at) == 0);
	struct vfio_region_info ri = { .argsz = sizeof(ri), .index = VFIO_PCI_CONFIG_REGION_INDEX };
	CHECK(ioctl(devfd, VFIO_DEVICE_GET_REGION_INFO, &ri) == 0);
	__u16 cmd;
	CHECK(pread(devfd, &cmd, 2, ri.offset + 4) == 2);
	cmd |= 2;
	CHECK(pwrite(devfd, &cmd, 2, ri.offset + 4) == 2);
	ri.index = VFIO_PCI_BAR0_REGION_INDEX;
	CHECK(ioctl(devfd, VFIO_DEVICE_GET_REGION_INFO, &ri) == 0);
	bar0 = ri.offset;
	unsigned char *dmabuf = mmap(NULL, 2 * CHUNK, PROT_READ | PROT_WRITE,
				     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(dmabuf != MAP_FAILED);
	struct iommu_ioas_map m = {
		.size = sizeof(m),
		.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE |
			 IOMMU_IOAS_MAP_WRITEABLE,
		.ioas_id = ioas,
		.user_va = (uintptr_t)dmabuf,
		.length = CHUNK,
		.iova = DEV_SRC,
	};
	CHECK(ioctl(iommufd, IOMMU_IOAS_MAP, &m) == 0);
	m.user_va = (uintptr_t)(dmabuf + CHUNK);
	m.iova = DEV_DST;
	CHECK(ioctl(iommufd, IOMMU_IOAS_MAP, &m) == 0);

	pthread_t t[MAPPERS + 4];
	int n = 0;
	for (long i = 0; i < MAPPERS; i++)
		CHECK(pthread_create(&t[n++], NULL, mapper, (void *)i) == 0);
	CHECK(pthread_create(&t[n++], NULL, allocator, NULL) == 0);
	CHECK(pthread_create(&t[n++], NULL, duper, NULL) == 0);
	CHECK(pthread_create(&t[n++], NULL, bystander, NULL) == 0);
	CHECK(pthread_create(&t[n++], NULL, dmaer, dmabuf) == 0);
	for (int i = 0; i < n; i++)
		CHECK(pthread_join(t[i], NULL) == 0);
	CHECK(atomic_load(&failures) == 0);

	/* Only the device's two mappings are left. */
	struct iommu_ioas_unmap u = {
		.size = sizeof(u), .ioas_id = ioas, .iova = 0, .length = ~0ULL
	};
	CHECK(ioctl(iommufd, IOMMU_IOAS_UNMAP, &u) == 0);
	CHECK(u.length == 2 * CHUNK);

	CHECK(close(devfd) == 0);
	CHECK(close(iommufd) == 0);
	PASS("iommufd_threads");
	return 0;
}
