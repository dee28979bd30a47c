/*
 * The end-to-end VFIO cdev flow through libuiommu_preload.so, as a userspace driver does it:
 * open /dev/vfio/devices/vfio0 (the dma-engine dma0 of the built-in platform), bind it to an
 * iommufd, attach it to an IOAS, map the program's own buffers, program the dma-engine through
 * pwrite at the BAR0 region offset, poll STATUS through pread, and see the data move in this
 * process's memory. Then: DMA before attach and to unmapped or read-only IOVAs faults,
 * interrupts arrive on an eventfd, pinning is charged to RLIMIT_MEMLOCK, a second iommufd
 * cannot bind a sibling (EPERM), nor can anyone bind into a group a DMA driver uses, and the
 * device file keeps its context alive until its last fd closes.
 *
 * Registers: docs/dma-engine.md.
 */
#include "uiommu_test.h"

#include <fcntl.h>
#include <linux/capability.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#define REG_ID 0x000
#define REG_SRC 0x008
#define REG_DST 0x010
#define REG_LEN 0x018
#define REG_OP 0x020
#define REG_FILL 0x024
#define REG_DOORBELL 0x028
#define REG_STATUS 0x02c
#define REG_FAULT_CODE 0x030
#define REG_IRQ_ENABLE 0x034
#define REG_FAULT_IOVA 0x038
#define REG_RESULT 0x040
#define REG_BYTES_DONE 0x048

#define OP_COPY 0
#define OP_FILL 1
#define OP_CRC32 2

#define STATUS_DONE 1
#define STATUS_FAULT 2

#define FAULT_BLOCKED 1
#define FAULT_NOT_MAPPED 2
#define FAULT_PERMISSION 3
#define FAULT_WRITE_SIDE (1u << 8)

#define BUF 0x10000 /* 64 KiB */
#define SRC_IOVA 0x100000ULL
#define DST_IOVA 0x200000ULL
#define PAGE 4096
#define PCI_COMMAND_OFFSET 0x04

/* One open VFIO device and where its regions are. */
struct dev {
	int fd;
	__u64 bar0;
	__u64 config;
};

static __u32 rd32(struct dev *d, __u64 reg)
{
	__u32 v = 0;
	CHECK(pread(d->fd, &v, 4, d->bar0 + reg) == 4);
	return v;
}

static __u64 rd64(struct dev *d, __u64 reg)
{
	__u64 v = 0;
	CHECK(pread(d->fd, &v, 8, d->bar0 + reg) == 8);
	return v;
}

static void wr32(struct dev *d, __u64 reg, __u32 v)
{
	CHECK(pwrite(d->fd, &v, 4, d->bar0 + reg) == 4);
}

static void wr64(struct dev *d, __u64 reg, __u64 v)
{
	CHECK(pwrite(d->fd, &v, 8, d->bar0 + reg) == 8);
}

/* Run one operation; returns STATUS (the doorbell runs it before pwrite returns). */
static __u32 dma(struct dev *d, __u32 op, __u64 src, __u64 dst, __u64 len)
{
	wr64(d, REG_SRC, src);
	wr64(d, REG_DST, dst);
	wr64(d, REG_LEN, len);
	wr32(d, REG_OP, op);
	wr32(d, REG_DOORBELL, 1);
	return rd32(d, REG_STATUS);
}

static int iommufd_open(void)
{
	int fd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
	CHECK(fd >= 0);
	return fd;
}

static __u32 ioas_alloc(int iommufd)
{
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	CHECK(ioctl(iommufd, IOMMU_IOAS_ALLOC, &a) == 0);
	return a.out_ioas_id;
}

static int map(int iommufd, __u32 ioas, void *va, __u64 len, __u64 iova, __u32 prot)
{
	struct iommu_ioas_map m = {
		.size = sizeof(m),
		.flags = IOMMU_IOAS_MAP_FIXED_IOVA | prot,
		.ioas_id = ioas,
		.user_va = (uintptr_t)va,
		.length = len,
		.iova = iova,
	};
	return ioctl(iommufd, IOMMU_IOAS_MAP, &m);
}

static int vfio_open(int n)
{
	char path[64];
	snprintf(path, sizeof(path), "/dev/vfio/devices/vfio%d", n);
	return open(path, O_RDWR | O_CLOEXEC);
}

static int bind(int devfd, int iommufd, __u32 *devid)
{
	struct vfio_device_bind_iommufd b = {
		.argsz = sizeof(b),
		.iommufd = iommufd,
	};
	int r = ioctl(devfd, VFIO_DEVICE_BIND_IOMMUFD, &b);
	if (r == 0 && devid)
		*devid = b.out_devid;
	return r;
}

static int attach(int devfd, __u32 pt)
{
	struct vfio_device_attach_iommufd_pt a = {
		.argsz = sizeof(a),
		.pt_id = pt,
	};
	return ioctl(devfd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &a);
}

static __u64 region_offset(int devfd, __u32 index, __u64 *size)
{
	struct vfio_region_info ri = { .argsz = sizeof(ri), .index = index };
	CHECK(ioctl(devfd, VFIO_DEVICE_GET_REGION_INFO, &ri) == 0);
	if (size)
		*size = ri.size;
	return ri.offset;
}

/* Find the regions and turn on memory decoding (PCI command bit 1), as a driver does. */
static struct dev setup(int devfd)
{
	struct dev d = { .fd = devfd };
	__u64 bar0_size = 0;
	d.bar0 = region_offset(devfd, VFIO_PCI_BAR0_REGION_INDEX, &bar0_size);
	CHECK(bar0_size == 4096);
	d.config = region_offset(devfd, VFIO_PCI_CONFIG_REGION_INDEX, NULL);
	__u16 cmd = 0;
	CHECK(pread(devfd, &cmd, 2, d.config + PCI_COMMAND_OFFSET) == 2);
	cmd |= 0x2;
	CHECK(pwrite(devfd, &cmd, 2, d.config + PCI_COMMAND_OFFSET) == 2);
	CHECK(rd32(&d, REG_ID) == 0x444d4145);
	return d;
}

/* zlib's crc32 (IEEE 802.3, reflected). */
static __u32 crc32(const unsigned char *p, size_t n)
{
	__u32 c = 0xffffffffu;
	for (size_t i = 0; i < n; i++) {
		c ^= p[i];
		for (int k = 0; k < 8; k++)
			c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
	}
	return c ^ 0xffffffffu;
}

/* Take CAP_IPC_LOCK out of the effective set (if we run as root), so pinning is charged. */
static void drop_ipc_lock(void)
{
	struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct c[2];
	CHECK(syscall(SYS_capget, &h, c) == 0);
	c[0].effective &= ~(1u << CAP_IPC_LOCK);
	CHECK(syscall(SYS_capset, &h, c) == 0);
}

static void *page_buffer(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(p != MAP_FAILED);
	return p;
}

#define MEMLOCK_PAGES 40

int main(void)
{
	/* The engine reads the limits at the first open: 40 pages of RLIMIT_MEMLOCK. */
	drop_ipc_lock();
	struct rlimit rl = { MEMLOCK_PAGES * PAGE, MEMLOCK_PAGES * PAGE };
	CHECK(setrlimit(RLIMIT_MEMLOCK, &rl) == 0);

	int ictx_a = iommufd_open();
	__u32 ioas = ioas_alloc(ictx_a);

	/* Before bind the device file grants nothing. */
	int devfd = vfio_open(0);
	CHECK(devfd >= 0);
	__u32 v;
	CHECK_ERR(pread(devfd, &v, 4, 0), EINVAL);
	struct vfio_device_info info = { .argsz = sizeof(info) };
	CHECK_ERR(ioctl(devfd, VFIO_DEVICE_GET_INFO, &info), EINVAL);
	CHECK(mmap(NULL, PAGE, PROT_READ, MAP_SHARED, devfd, 0) == MAP_FAILED && errno == EINVAL);

	/* Bind: the group is claimed and blocked. */
	__u32 devid = 0;
	CHECK(bind(devfd, ictx_a, &devid) == 0);
	CHECK(devid != 0);
	CHECK_ERR(bind(devfd, ictx_a, NULL), EINVAL); /* once per file */
	CHECK(ioctl(devfd, VFIO_DEVICE_GET_INFO, &info) == 0);
	CHECK(info.flags & VFIO_DEVICE_FLAGS_PCI);
	CHECK(info.num_regions >= VFIO_PCI_CONFIG_REGION_INDEX + 1);
	CHECK_ERR(ioctl(devfd, VFIO_DEVICE_GET_INFO, (void *)8), EFAULT);
	struct dev d = setup(devfd);
	void *volatile bad = (void *)8;
	CHECK_ERR(pread(devfd, bad, 4, d.bar0 + REG_ID), EFAULT);

	unsigned char *src = page_buffer(BUF), *dst = page_buffer(BUF);
	for (int i = 0; i < BUF; i++)
		src[i] = (unsigned char)(i * 7 + 3);

	/* Bound but not attached: every DMA faults as blocked. */
	CHECK(dma(&d, OP_COPY, SRC_IOVA, DST_IOVA, 64) == STATUS_FAULT);
	CHECK((rd32(&d, REG_FAULT_CODE) & 0xff) == FAULT_BLOCKED);

	/* Attach to the IOAS and map the buffers: source read-only, destination read-write. */
	CHECK(attach(devfd, ioas) == 0);
	CHECK(map(ictx_a, ioas, src, BUF, SRC_IOVA, IOMMU_IOAS_MAP_READABLE) == 0);
	CHECK(map(ictx_a, ioas, dst, BUF, DST_IOVA,
		  IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE) == 0);

	/* Copy: the data moves in this process's own buffers. */
	CHECK(dma(&d, OP_COPY, SRC_IOVA, DST_IOVA, BUF) == STATUS_DONE);
	CHECK(rd64(&d, REG_BYTES_DONE) == BUF);
	CHECK(memcmp(src, dst, BUF) == 0);

	/* Fill and CRC-32. */
	wr32(&d, REG_FILL, 0xab);
	CHECK(dma(&d, OP_FILL, 0, DST_IOVA + 100, 50) == STATUS_DONE);
	CHECK(dst[99] == src[99] && dst[100] == 0xab && dst[149] == 0xab && dst[150] == src[150]);
	CHECK(dma(&d, OP_CRC32, SRC_IOVA, 0, BUF) == STATUS_DONE);
	CHECK(rd64(&d, REG_RESULT) == crc32(src, BUF));

	/* DMA to an unmapped IOVA faults; so does a write to the read-only mapping. */
	CHECK(dma(&d, OP_COPY, SRC_IOVA, 0x900000, 16) == STATUS_FAULT);
	__u32 code = rd32(&d, REG_FAULT_CODE);
	CHECK((code & 0xff) == FAULT_NOT_MAPPED && (code & FAULT_WRITE_SIDE));
	CHECK(rd64(&d, REG_FAULT_IOVA) == 0x900000);
	CHECK(dma(&d, OP_COPY, DST_IOVA, SRC_IOVA, 16) == STATUS_FAULT);
	CHECK((rd32(&d, REG_FAULT_CODE) & 0xff) == FAULT_PERMISSION);

	/* An interrupt on completion arrives on an eventfd (MSI-X vector 0). */
	int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	CHECK(efd >= 0);
	char irqbuf[sizeof(struct vfio_irq_set) + sizeof(__s32)];
	struct vfio_irq_set *irq = (struct vfio_irq_set *)irqbuf;
	irq->argsz = sizeof(irqbuf);
	irq->flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
	irq->index = VFIO_PCI_MSIX_IRQ_INDEX;
	irq->start = 0;
	irq->count = 1;
	memcpy(irq->data, &efd, sizeof(efd));
	CHECK(ioctl(devfd, VFIO_DEVICE_SET_IRQS, irq) == 0);
	CHECK(close(efd) == 0); /* the device holds its own reference */
	int efd2 = eventfd(0, EFD_CLOEXEC); /* a new eventfd may reuse the number */
	wr32(&d, REG_IRQ_ENABLE, 1);
	CHECK(dma(&d, OP_COPY, SRC_IOVA, DST_IOVA, 16) == STATUS_DONE);
	memcpy(irq->data, &efd2, sizeof(efd2));
	CHECK(ioctl(devfd, VFIO_DEVICE_SET_IRQS, irq) == 0);
	CHECK(dma(&d, OP_COPY, SRC_IOVA, DST_IOVA, 16) == STATUS_DONE);
	__u64 count = 0;
	CHECK(read(efd2, &count, 8) == 8 && count == 1);
	int notefd = open("/dev/null", O_RDONLY);
	memcpy(irq->data, &notefd, sizeof(notefd));
	CHECK_ERR(ioctl(devfd, VFIO_DEVICE_SET_IRQS, irq), EINVAL);
	close(notefd);
	wr32(&d, REG_IRQ_ENABLE, 0);

	/* Pinning is charged against RLIMIT_MEMLOCK: 32 of 40 pages are pinned now. */
	unsigned char *more = page_buffer(BUF);
	CHECK_ERR(map(ictx_a, ioas, more, BUF, 0x400000, IOMMU_IOAS_MAP_READABLE), ENOMEM);

	/* Siblings: vfio1 and vfio2 (dma1, dma2) share a group. Bound to context A, the group
	 * belongs to A: context B cannot bind the sibling (EPERM); A can. */
	int ictx_b = iommufd_open();
	int sib1 = vfio_open(1), sib2 = vfio_open(2);
	CHECK(sib1 >= 0 && sib2 >= 0);
	CHECK_ERR(bind(sib1, -1, NULL), EINVAL);
	CHECK_ERR(bind(sib1, 1000, NULL), EBADF);
	CHECK_ERR(bind(sib1, efd2, NULL), EBADFD); /* not an iommufd */
	CHECK_ERR(bind(sib1, devfd, NULL), EBADFD);
	CHECK(bind(sib1, ictx_a, NULL) == 0);
	CHECK_ERR(bind(sib2, ictx_b, NULL), EPERM);
	CHECK(bind(sib2, ictx_a, NULL) == 0);
	CHECK(close(sib1) == 0 && close(sib2) == 0);

	/* vfio3 (legacy0) shares its group with a function an nvme driver uses for DMA: the
	 * group is not viable for user ownership (EPERM, as iommu_device_claim_dma_owner). */
	int legacy = vfio_open(3);
	CHECK(legacy >= 0);
	CHECK_ERR(bind(legacy, ictx_b, NULL), EPERM);
	CHECK(close(legacy) == 0);
	CHECK_ERR(vfio_open(4), ENOENT);

	/* The device file holds its context: with every iommufd fd of A closed, and the device
	 * reached through a duplicate only, DMA still works. */
	int devdup = fcntl(devfd, F_DUPFD_CLOEXEC, 50);
	CHECK(devdup >= 50);
	CHECK(close(devfd) == 0);
	CHECK(close(ictx_a) == 0);
	d.fd = devdup;
	memset(dst, 0, BUF);
	CHECK(dma(&d, OP_COPY, SRC_IOVA, DST_IOVA, BUF) == STATUS_DONE);
	CHECK(memcmp(src, dst, BUF) == 0);

	/* The last fd of the device closes it: unbound, context A torn down, pages unpinned. */
	CHECK(close(devdup) == 0);
	int ictx_c = iommufd_open();
	__u32 ioas_c = ioas_alloc(ictx_c);
	devfd = vfio_open(0);
	CHECK(bind(devfd, ictx_c, NULL) == 0); /* not bound through another file any more */
	CHECK(attach(devfd, ioas_c) == 0);
	unsigned char *big = page_buffer(MEMLOCK_PAGES * PAGE);
	CHECK(map(ictx_c, ioas_c, big, MEMLOCK_PAGES * PAGE, SRC_IOVA,
		  IOMMU_IOAS_MAP_READABLE) == 0); /* the whole limit: A's charge is gone */
	CHECK_ERR(map(ictx_c, ioas_c, more, PAGE, 0x800000, IOMMU_IOAS_MAP_READABLE), ENOMEM);

	CHECK(close(devfd) == 0);
	CHECK(close(ictx_c) == 0);
	CHECK(close(ictx_b) == 0);
	CHECK(close(efd2) == 0);
	PASS("vfio_dma");
	return 0;
}
