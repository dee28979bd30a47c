/*
 * The legacy VFIO flow (container + group + type1) through libuiommu_preload.so, as programs
 * written for VFIO type1 do it: discover dma0's IOMMU group in sysfs, open /dev/vfio/vfio and
 * /dev/vfio/<group>, check the API and TYPE1v2, GET_STATUS, SET_CONTAINER, SET_IOMMU,
 * IOMMU_GET_INFO with its capability chain, MAP_DMA of malloc'd buffers, GET_DEVICE_FD, program
 * the dma-engine through pwrite at the BAR0 region offset, see the data move, UNMAP_DMA and see
 * the DMA fault. Also: sysfs read with stdio (fopen) and opendir, stat/lstat/access/realpath on
 * the view, and the group rules (EBUSY second open, non-viable group, ENOENT for groups without
 * a vfio-pci function).
 *
 * Registers: docs/dma-engine.md.
 */
#include "uiommu_test.h"

#include <dirent.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#define REG_ID 0x000
#define REG_SRC 0x008
#define REG_DST 0x010
#define REG_LEN 0x018
#define REG_OP 0x020
#define REG_DOORBELL 0x028
#define REG_STATUS 0x02c
#define REG_FAULT_CODE 0x030
#define REG_FAULT_IOVA 0x038

#define OP_COPY 0
#define STATUS_DONE 1
#define STATUS_FAULT 2
#define FAULT_NOT_MAPPED 2
#define FAULT_WRITE_SIDE (1u << 8)

#define BUF 0x10000 /* 64 KiB */
#define SRC_IOVA 0x100000ULL
#define DST_IOVA 0x200000ULL
#define PAGE 4096

#define BDF "0000:01:00.0"
#define SYSDEV "/sys/bus/pci/devices/" BDF

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

static __u32 dma(struct dev *d, __u64 src, __u64 dst, __u64 len)
{
	wr64(d, REG_SRC, src);
	wr64(d, REG_DST, dst);
	wr64(d, REG_LEN, len);
	wr32(d, REG_OP, OP_COPY);
	wr32(d, REG_DOORBELL, 1);
	return rd32(d, REG_STATUS);
}

static __u64 region_offset(int devfd, __u32 index)
{
	struct vfio_region_info ri = { .argsz = sizeof(ri), .index = index };
	CHECK(ioctl(devfd, VFIO_DEVICE_GET_REGION_INFO, &ri) == 0);
	return ri.offset;
}

/* The first line of a sysfs file, read with stdio, as a number. */
static unsigned long sysfs_num(const char *path)
{
	FILE *f = fopen(path, "r");
	CHECK(f != NULL);
	if (!f)
		return 0;
	char line[64] = { 0 };
	CHECK(fgets(line, sizeof(line), f) != NULL);
	fclose(f);
	return strtoul(line, NULL, 0);
}

/* The last component of a symlink's target. */
static void link_name(const char *path, char *out, size_t n)
{
	char target[PATH_MAX] = { 0 };
	ssize_t len = readlink(path, target, sizeof(target) - 1);
	CHECK(len > 0);
	if (len <= 0) {
		out[0] = 0;
		return;
	}
	target[len] = 0;
	snprintf(out, n, "%s", basename(target));
}

static int count_entries(const char *dir, const char *want, int *found)
{
	DIR *d = opendir(dir);
	CHECK(d != NULL);
	if (!d)
		return -1;
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		n++;
		if (want && strcmp(e->d_name, want) == 0)
			*found = 1;
	}
	closedir(d);
	return n;
}

static int map_dma(int container, void *va, __u64 iova, __u64 size, __u32 flags)
{
	struct vfio_iommu_type1_dma_map m = {
		.argsz = sizeof(m),
		.flags = flags,
		.vaddr = (uintptr_t)va,
		.iova = iova,
		.size = size,
	};
	return ioctl(container, VFIO_IOMMU_MAP_DMA, &m);
}

static long unmap_dma(int container, __u64 iova, __u64 size, __u32 flags)
{
	struct vfio_iommu_type1_dma_unmap u = {
		.argsz = sizeof(u),
		.flags = flags,
		.iova = iova,
		.size = size,
	};
	if (ioctl(container, VFIO_IOMMU_UNMAP_DMA, &u) != 0)
		return -1;
	return (long)u.size;
}

int main(void)
{
	/* The container. */
	CHECK(access("/dev/vfio/vfio", R_OK | W_OK) == 0);
	int container = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
	CHECK(container >= 0);
	CHECK(ioctl(container, VFIO_GET_API_VERSION) == VFIO_API_VERSION);
	CHECK(ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) == 1);
	CHECK(ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1_IOMMU) == 1);
	CHECK(ioctl(container, VFIO_CHECK_EXTENSION, VFIO_SPAPR_TCE_IOMMU) == 0);
	/* No group yet: SET_IOMMU fails (iommufd's compat: ENODEV). */
	CHECK_ERR(ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU), ENODEV);

	/* Discovery through sysfs. */
	char name[64];
	link_name(SYSDEV "/iommu_group", name, sizeof(name));
	int group_no = atoi(name);
	CHECK(group_no > 0);
	char rp[PATH_MAX];
	CHECK(realpath(SYSDEV "/iommu_group", rp) != NULL);
	char want_rp[64];
	snprintf(want_rp, sizeof(want_rp), "/sys/kernel/iommu_groups/%d", group_no);
	CHECK(strcmp(rp, want_rp) == 0);
	char *rp2 = realpath(SYSDEV, NULL);
	CHECK(rp2 && strcmp(rp2, "/sys/devices/pci0000:00/" BDF) == 0);
	free(rp2);
	link_name(SYSDEV "/driver", name, sizeof(name));
	CHECK(strcmp(name, "vfio-pci") == 0);
	struct stat st;
	CHECK(stat(SYSDEV "/vendor", &st) == 0 && S_ISREG(st.st_mode));
	CHECK(lstat(SYSDEV "/iommu_group", &st) == 0 && S_ISLNK(st.st_mode));
	CHECK(stat(SYSDEV, &st) == 0 && S_ISDIR(st.st_mode));
	CHECK(access(SYSDEV "/vfio-dev", F_OK) == 0);
	CHECK_ERR(access("/sys/bus/pci/devices/0000:01:00.0/nonexistent", F_OK), ENOENT);
	unsigned long vendor = sysfs_num(SYSDEV "/vendor");
	unsigned long device = sysfs_num(SYSDEV "/device");
	unsigned long class = sysfs_num(SYSDEV "/class");
	CHECK(vendor != 0 && vendor <= 0xffff);
	int found = 0;
	char gdir[96];
	snprintf(gdir, sizeof(gdir), "/sys/kernel/iommu_groups/%d/devices", group_no);
	CHECK(count_entries(gdir, BDF, &found) == 1 && found);
	found = 0;
	CHECK(count_entries("/sys/bus/pci/devices", BDF, &found) > 1 && found);
	found = 0;
	CHECK(count_entries(SYSDEV "/vfio-dev", "vfio0", &found) == 1 && found);
	found = 0;
	CHECK(count_entries("/sys/bus/pci/drivers/vfio-pci", BDF, &found) >= 1 && found);
	/* open(2) reads the view too. */
	int vfd = open(SYSDEV "/vendor", O_RDONLY);
	CHECK(vfd >= 0);
	char vbuf[16] = { 0 };
	CHECK(read(vfd, vbuf, sizeof(vbuf) - 1) > 0);
	CHECK(strtoul(vbuf, NULL, 0) == vendor);
	close(vfd);

	/* The group. */
	char gpath[128];
	snprintf(gpath, sizeof(gpath), "/dev/vfio/%d", group_no);
	int group = open(gpath, O_RDWR | O_CLOEXEC);
	CHECK(group >= 0);
	CHECK_ERR(open(gpath, O_RDWR), EBUSY);
	struct vfio_group_status gs = { .argsz = sizeof(gs) };
	CHECK(ioctl(group, VFIO_GROUP_GET_STATUS, &gs) == 0);
	CHECK(gs.flags == VFIO_GROUP_FLAGS_VIABLE);
	CHECK_ERR(ioctl(group, VFIO_GROUP_GET_DEVICE_FD, BDF), EINVAL);
	CHECK(ioctl(group, VFIO_GROUP_SET_CONTAINER, &container) == 0);
	CHECK_ERR(ioctl(group, VFIO_GROUP_SET_CONTAINER, &container), EINVAL);
	CHECK(ioctl(group, VFIO_GROUP_GET_STATUS, &gs) == 0);
	CHECK(gs.flags == (VFIO_GROUP_FLAGS_VIABLE | VFIO_GROUP_FLAGS_CONTAINER_SET));
	CHECK(ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) == 0);

	/* IOMMU_GET_INFO: ask for the size, then read the capability chain. */
	struct vfio_iommu_type1_info info = { .argsz = sizeof(info) };
	CHECK(ioctl(container, VFIO_IOMMU_GET_INFO, &info) == 0);
	CHECK(info.flags & VFIO_IOMMU_INFO_PGSIZES);
	CHECK(info.flags & VFIO_IOMMU_INFO_CAPS);
	CHECK(info.iova_pgsizes & PAGE);
	CHECK(info.argsz > sizeof(info));
	struct vfio_iommu_type1_info *full = calloc(1, info.argsz);
	CHECK(full != NULL);
	full->argsz = info.argsz;
	CHECK(ioctl(container, VFIO_IOMMU_GET_INFO, full) == 0);
	CHECK(full->cap_offset == sizeof(*full));
	int seen_ranges = 0, seen_avail = 0;
	for (__u32 off = full->cap_offset; off;) {
		struct vfio_info_cap_header *h = (void *)((char *)full + off);
		if (h->id == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE) {
			struct vfio_iommu_type1_info_cap_iova_range *r = (void *)h;
			seen_ranges = r->nr_iovas;
			CHECK(r->iova_ranges[0].start <= SRC_IOVA);
		} else if (h->id == VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL) {
			struct vfio_iommu_type1_info_dma_avail *a = (void *)h;
			seen_avail = 1;
			CHECK(a->avail > 0);
		}
		CHECK(h->next == 0 || h->next > off);
		off = h->next;
	}
	CHECK(seen_ranges >= 1 && seen_avail);
	free(full);

	/* Map malloc'd buffers. */
	unsigned char *src = NULL, *dst = NULL;
	CHECK(posix_memalign((void **)&src, PAGE, BUF) == 0);
	CHECK(posix_memalign((void **)&dst, PAGE, BUF) == 0);
	for (int i = 0; i < BUF; i++)
		src[i] = (unsigned char)(i * 7 + 3);
	memset(dst, 0, BUF);
	CHECK(map_dma(container, src, SRC_IOVA, BUF, VFIO_DMA_MAP_FLAG_READ) == 0);
	CHECK(map_dma(container, dst, DST_IOVA, BUF,
		      VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE) == 0);
	CHECK_ERR(map_dma(container, dst, DST_IOVA, BUF, VFIO_DMA_MAP_FLAG_READ), EEXIST);

	/* The device, bound and attached by the group. */
	CHECK_ERR(ioctl(group, VFIO_GROUP_GET_DEVICE_FD, "0000:01:00.7"), ENODEV);
	int devfd = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, BDF);
	CHECK(devfd >= 0);
	CHECK(fcntl(devfd, F_GETFD) == FD_CLOEXEC);
	struct vfio_device_info di = { .argsz = sizeof(di) };
	CHECK(ioctl(devfd, VFIO_DEVICE_GET_INFO, &di) == 0);
	CHECK(di.flags & VFIO_DEVICE_FLAGS_PCI);
	struct dev d = { .fd = devfd };
	d.bar0 = region_offset(devfd, VFIO_PCI_BAR0_REGION_INDEX);
	d.config = region_offset(devfd, VFIO_PCI_CONFIG_REGION_INDEX);
	/* sysfs agrees with config space. */
	unsigned char cfg[12] = { 0 };
	CHECK(pread(devfd, cfg, sizeof(cfg), d.config) == sizeof(cfg));
	CHECK((unsigned long)(cfg[0] | cfg[1] << 8) == vendor);
	CHECK((unsigned long)(cfg[2] | cfg[3] << 8) == device);
	CHECK((unsigned long)(cfg[9] | cfg[10] << 8 | cfg[11] << 16) == class);
	__u16 cmd = 0;
	CHECK(pread(devfd, &cmd, 2, d.config + 4) == 2);
	cmd |= 0x2;
	CHECK(pwrite(devfd, &cmd, 2, d.config + 4) == 2);
	CHECK(rd32(&d, REG_ID) == 0x444d4145);

	/* DMA: the data moves in this process's memory. */
	CHECK(dma(&d, SRC_IOVA, DST_IOVA, BUF) == STATUS_DONE);
	CHECK(memcmp(src, dst, BUF) == 0);

	/* TYPE1v2: no unmapping inside a mapping. */
	CHECK_ERR(unmap_dma(container, DST_IOVA + PAGE, PAGE, 0), ENOENT);
	CHECK(unmap_dma(container, DST_IOVA, BUF, 0) == BUF);
	CHECK(unmap_dma(container, DST_IOVA, BUF, 0) == 0);
	CHECK(dma(&d, SRC_IOVA, DST_IOVA, 16) == STATUS_FAULT);
	__u32 code = rd32(&d, REG_FAULT_CODE);
	CHECK((code & 0xff) == FAULT_NOT_MAPPED && (code & FAULT_WRITE_SIDE));
	CHECK(rd64(&d, REG_FAULT_IOVA) == DST_IOVA);
	CHECK(unmap_dma(container, 0, 0, VFIO_DMA_UNMAP_FLAG_ALL) == BUF);
	CHECK(dma(&d, SRC_IOVA, SRC_IOVA + PAGE, 16) == STATUS_FAULT);

	/* The device file keeps the group open; closing both frees it. */
	close(group);
	CHECK_ERR(open(gpath, O_RDWR), EBUSY);
	close(devfd);
	group = open(gpath, O_RDWR);
	CHECK(group >= 0);
	CHECK(ioctl(group, VFIO_GROUP_GET_STATUS, &gs) == 0);
	CHECK(gs.flags == VFIO_GROUP_FLAGS_VIABLE);
	close(group);

	/* legacy0 shares its group with an nvme function: not viable. */
	link_name("/sys/bus/pci/devices/0000:04:01.0/iommu_group", name, sizeof(name));
	snprintf(gpath, sizeof(gpath), "/dev/vfio/%s", name);
	int g7 = open(gpath, O_RDWR);
	CHECK(g7 >= 0);
	CHECK(ioctl(g7, VFIO_GROUP_GET_STATUS, &gs) == 0);
	CHECK(!(gs.flags & VFIO_GROUP_FLAGS_VIABLE));
	close(g7);
	/* A group without a vfio-pci function has no node. */
	link_name("/sys/bus/pci/devices/0000:07:00.0/iommu_group", name, sizeof(name));
	snprintf(gpath, sizeof(gpath), "/dev/vfio/%s", name);
	CHECK_ERR(open(gpath, O_RDWR), ENOENT);
	CHECK_ERR(access(gpath, F_OK), ENOENT);
	link_name("/sys/bus/pci/devices/0000:07:00.0/driver", name, sizeof(name));
	CHECK(strcmp(name, "nvme") == 0);

	close(container);
	free(src);
	free(dst);
	PASS("vfio_legacy");
	return 0;
}
