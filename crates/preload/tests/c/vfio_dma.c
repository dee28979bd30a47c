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
#include "dma_engine.h"

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
	CHECK(vfio_bind(devfd, ictx_a, &devid) == 0);
	CHECK(devid != 0);
	CHECK_ERR(vfio_bind(devfd, ictx_a, NULL), EINVAL); /* once per file */
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
	CHECK(set_msix_eventfd(devfd, efd) == 0);
	CHECK(close(efd) == 0); /* the device holds its own reference */
	int efd2 = eventfd(0, EFD_CLOEXEC); /* a new eventfd may reuse the number */
	wr32(&d, REG_IRQ_ENABLE, 1);
	CHECK(dma(&d, OP_COPY, SRC_IOVA, DST_IOVA, 16) == STATUS_DONE);
	CHECK(set_msix_eventfd(devfd, efd2) == 0);
	CHECK(dma(&d, OP_COPY, SRC_IOVA, DST_IOVA, 16) == STATUS_DONE);
	__u64 count = 0;
	CHECK(read(efd2, &count, 8) == 8 && count == 1);
	int notefd = open("/dev/null", O_RDONLY);
	CHECK_ERR(set_msix_eventfd(devfd, notefd), EINVAL);
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
	CHECK_ERR(vfio_bind(sib1, -1, NULL), EINVAL);
	CHECK_ERR(vfio_bind(sib1, 1000, NULL), EBADF);
	CHECK_ERR(vfio_bind(sib1, efd2, NULL), EBADFD); /* not an iommufd */
	CHECK_ERR(vfio_bind(sib1, devfd, NULL), EBADFD);
	CHECK(vfio_bind(sib1, ictx_a, NULL) == 0);
	CHECK_ERR(vfio_bind(sib2, ictx_b, NULL), EPERM);
	CHECK(vfio_bind(sib2, ictx_a, NULL) == 0);
	CHECK(close(sib1) == 0 && close(sib2) == 0);

	/* vfio3 (legacy0) shares its group with a function an nvme driver uses for DMA: the
	 * group is not viable for user ownership (EPERM, as iommu_device_claim_dma_owner). */
	int legacy = vfio_open(3);
	CHECK(legacy >= 0);
	CHECK_ERR(vfio_bind(legacy, ictx_b, NULL), EPERM);
	CHECK(close(legacy) == 0);
	/* vfio4 is the nvme model's (ssd0); there is no vfio5. */
	CHECK_ERR(vfio_open(5), ENOENT);

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
	CHECK(vfio_bind(devfd, ictx_c, NULL) == 0); /* not bound through another file any more */
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
