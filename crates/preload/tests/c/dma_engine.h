/*
 * Helpers shared by the C tests that drive the dma-engine through a VFIO device cdev
 * (vfio_dma.c, fork_vfio.c): its registers (docs/dma-engine.md), BAR access by pread/pwrite
 * at the region offset, and the iommufd/VFIO calls a userspace driver makes.
 */
#ifndef DMA_ENGINE_H
#define DMA_ENGINE_H

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

static inline __u32 rd32(struct dev *d, __u64 reg)
{
	__u32 v = 0;
	CHECK(pread(d->fd, &v, 4, d->bar0 + reg) == 4);
	return v;
}

static inline __u64 rd64(struct dev *d, __u64 reg)
{
	__u64 v = 0;
	CHECK(pread(d->fd, &v, 8, d->bar0 + reg) == 8);
	return v;
}

static inline void wr32(struct dev *d, __u64 reg, __u32 v)
{
	CHECK(pwrite(d->fd, &v, 4, d->bar0 + reg) == 4);
}

static inline void wr64(struct dev *d, __u64 reg, __u64 v)
{
	CHECK(pwrite(d->fd, &v, 8, d->bar0 + reg) == 8);
}

/* Run one operation; returns STATUS (the doorbell runs it before pwrite returns). */
static inline __u32 dma(struct dev *d, __u32 op, __u64 src, __u64 dst, __u64 len)
{
	wr64(d, REG_SRC, src);
	wr64(d, REG_DST, dst);
	wr64(d, REG_LEN, len);
	wr32(d, REG_OP, op);
	wr32(d, REG_DOORBELL, 1);
	return rd32(d, REG_STATUS);
}

static inline int iommufd_open(void)
{
	int fd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
	CHECK(fd >= 0);
	return fd;
}

static inline __u32 ioas_alloc(int iommufd)
{
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	CHECK(ioctl(iommufd, IOMMU_IOAS_ALLOC, &a) == 0);
	return a.out_ioas_id;
}

static inline int map(int iommufd, __u32 ioas, void *va, __u64 len, __u64 iova, __u32 prot)
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

static inline int vfio_open(int n)
{
	char path[64];
	snprintf(path, sizeof(path), "/dev/vfio/devices/vfio%d", n);
	return open(path, O_RDWR | O_CLOEXEC);
}

static inline int vfio_bind(int devfd, int iommufd, __u32 *devid)
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

static inline int attach(int devfd, __u32 pt)
{
	struct vfio_device_attach_iommufd_pt a = {
		.argsz = sizeof(a),
		.pt_id = pt,
	};
	return ioctl(devfd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &a);
}

static inline __u64 region_offset(int devfd, __u32 index, __u64 *size)
{
	struct vfio_region_info ri = { .argsz = sizeof(ri), .index = index };
	CHECK(ioctl(devfd, VFIO_DEVICE_GET_REGION_INFO, &ri) == 0);
	if (size)
		*size = ri.size;
	return ri.offset;
}

/* VFIO_DEVICE_SET_IRQS: trigger eventfd `efd` on MSI-X vector 0 (the dma-engine's completion
 * interrupt); the ioctl's result. */
static inline int set_msix_eventfd(int devfd, int efd)
{
	char buf[sizeof(struct vfio_irq_set) + sizeof(__s32)];
	struct vfio_irq_set *irq = (struct vfio_irq_set *)buf;
	irq->argsz = sizeof(buf);
	irq->flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
	irq->index = VFIO_PCI_MSIX_IRQ_INDEX;
	irq->start = 0;
	irq->count = 1;
	memcpy(irq->data, &efd, sizeof(efd));
	return ioctl(devfd, VFIO_DEVICE_SET_IRQS, irq);
}

/* Find the regions and turn on memory decoding (PCI command bit 1), as a driver does. */
static inline struct dev setup(int devfd)
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
static inline __u32 crc32(const unsigned char *p, size_t n)
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
static inline void drop_ipc_lock(void)
{
	struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct c[2];
	CHECK(syscall(SYS_capget, &h, c) == 0);
	c[0].effective &= ~(1u << CAP_IPC_LOCK);
	CHECK(syscall(SYS_capset, &h, c) == 0);
}

static inline void *page_buffer(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(p != MAP_FAILED);
	return p;
}

#endif /* DMA_ENGINE_H */
