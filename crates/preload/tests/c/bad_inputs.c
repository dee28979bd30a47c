/*
 * Bad inputs through the real ABI under libuiommu_preload.so, with the Linux 6.12 kernel's
 * errno for each (drivers/iommu/iommufd/{main,ioas,io_pagetable,pages,hw_pagetable,device,
 * fault,vfio_compat}.c, drivers/vfio/{device_cdev,vfio_main,group}.c, vfio_pci_core.c):
 *
 * - every iommufd command (0x80..0x8e): bad pointers (NULL, an unmapped low page, the page
 *   after a mapping, a size field readable with the rest of the struct unmapped, a struct
 *   whose declared tail runs into the unmapped page) EFAULT; size below the minimum EINVAL; a
 *   non-zero byte past the struct E2BIG, a zero tail accepted; the number with direction and
 *   size bits ENOTTY; then each command's own refusals, table-driven: unknown flags and
 *   reserved fields, unknown ids and ids of the wrong object type, IOVA/length overflow;
 *   unknown command numbers ENOTTY;
 * - the VFIO device cdev: before bind, bind's refusals (EBADF, EBADFD, ...), then argsz, flags,
 *   indexes, pt ids of attach/detach, info and SET_IRQS;
 * - the legacy container and group: GET_STATUS, SET_CONTAINER, MAP_DMA/UNMAP_DMA/GET_INFO.
 *
 * After each batch of refusals the state is checked unchanged (IOVA ranges, the mappings, the
 * lowest free object id and fd number, a device still attached, a group without container).
 */
#define _GNU_SOURCE
#include "uiommu_test.h"
#include <termios.h>
#include <sys/uio.h>

#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096
#define BUF 0x10000ULL /* the mapping kept in each IOAS for the state checks */
#define IOVA 0x100000ULL
#define FREE_IOVA 0x4000000ULL /* nothing mapped there */
#define WRAP_IOVA 0xffffffffffff0000ULL /* + WRAP_LEN wraps past 2^64 */
#define WRAP_LEN 0x20000ULL
#define WRAP_VA 0xfffffffffffff000ULL /* + 0x2000 wraps */
#define BAD_ID 999
#define NOT_OPEN_FD 999

/*
 * The 6.12 structs, by private names: installed <linux/iommufd.h> of 6.2..6.11 lack some of
 * them or have older layouts (iommu_hwpt_alloc grew twice). Layouts are the ABI's.
 */
struct t_allow_iovas {
	__u32 size, ioas_id, num_iovas, __reserved;
	__aligned_u64 allowed_iovas;
};
struct t_ioas_copy {
	__u32 size, flags, dst_ioas_id, src_ioas_id;
	__aligned_u64 length, dst_iova, src_iova;
};
struct t_option {
	__u32 size, option_id;
	__u16 op, __reserved;
	__u32 object_id;
	__aligned_u64 val64;
};
struct t_vfio_ioas {
	__u32 size, ioas_id;
	__u16 op, __reserved;
};
struct t_hwpt_alloc {
	__u32 size, flags, dev_id, pt_id, out_hwpt_id, __reserved, data_type, data_len;
	__aligned_u64 data_uptr;
	__u32 fault_id, __reserved2;
};
struct t_hw_info {
	__u32 size, flags, dev_id, data_len;
	__aligned_u64 data_uptr;
	__u32 out_data_type;
	__u8 out_max_pasid_log2, __reserved[3];
	__aligned_u64 out_capabilities;
};
struct t_set_dirty {
	__u32 size, flags, hwpt_id, __reserved;
};
struct t_get_dirty {
	__u32 size, hwpt_id, flags, __reserved;
	__aligned_u64 iova, length, page_size, data;
};
struct t_invalidate {
	__u32 size, hwpt_id;
	__aligned_u64 data_uptr;
	__u32 data_type, entry_len, entry_num, __reserved;
};
struct t_fault_alloc {
	__u32 size, flags, out_fault_id, out_fault_fd;
};
/* vfio_iommu_type1_dma_unmap without the flexible array newer headers end it with. */
struct t_dma_unmap {
	__u32 argsz, flags;
	__aligned_u64 iova, size;
};
_Static_assert(sizeof(struct t_hwpt_alloc) == 48, "iommu_hwpt_alloc");
_Static_assert(sizeof(struct t_hw_info) == 40, "iommu_hw_info");
_Static_assert(sizeof(struct t_get_dirty) == 48, "iommu_hwpt_get_dirty_bitmap");
_Static_assert(sizeof(struct t_invalidate) == 32, "iommu_hwpt_invalidate");
_Static_assert(sizeof(struct t_option) == 24, "iommu_option");

#define IOMMU_CMD(nr) _IO(';', (nr))
enum {
	NR_DESTROY = 0x80,
	NR_IOAS_ALLOC,
	NR_ALLOW_IOVAS,
	NR_IOAS_COPY,
	NR_IOVA_RANGES,
	NR_IOAS_MAP,
	NR_IOAS_UNMAP,
	NR_OPTION,
	NR_VFIO_IOAS,
	NR_HWPT_ALLOC,
	NR_GET_HW_INFO,
	NR_SET_DIRTY,
	NR_GET_DIRTY,
	NR_INVALIDATE,
	NR_FAULT_ALLOC,
};

/* Each command's minimum (offsetofend of the first version's last field, main.c's
 * iommufd_ioctl_ops) and its 6.12 size. */
static const struct {
	const char *name;
	unsigned nr, min, size;
} cmds[] = {
	{ "DESTROY", NR_DESTROY, 8, 8 },
	{ "IOAS_ALLOC", NR_IOAS_ALLOC, 12, 12 },
	{ "IOAS_ALLOW_IOVAS", NR_ALLOW_IOVAS, 24, 24 },
	{ "IOAS_COPY", NR_IOAS_COPY, 40, 40 },
	{ "IOAS_IOVA_RANGES", NR_IOVA_RANGES, 32, 32 },
	{ "IOAS_MAP", NR_IOAS_MAP, 40, 40 },
	{ "IOAS_UNMAP", NR_IOAS_UNMAP, 24, 24 },
	{ "OPTION", NR_OPTION, 24, 24 },
	{ "VFIO_IOAS", NR_VFIO_IOAS, 12, 12 },
	{ "HWPT_ALLOC", NR_HWPT_ALLOC, 24, 48 },
	{ "GET_HW_INFO", NR_GET_HW_INFO, 32, 40 },
	{ "HWPT_SET_DIRTY_TRACKING", NR_SET_DIRTY, 16, 16 },
	{ "HWPT_GET_DIRTY_BITMAP", NR_GET_DIRTY, 48, 48 },
	{ "HWPT_INVALIDATE", NR_INVALIDATE, 32, 32 },
	{ "FAULT_QUEUE_ALLOC", NR_FAULT_ALLOC, 16, 16 },
};

#define IOAS_MAP_FIXED 1
#define IOAS_MAP_RW 6 /* WRITEABLE | READABLE */
#define OPTION_RLIMIT_MODE 0
#define OPTION_HUGE_PAGES 1
#define OPTION_OP_SET 0
#define OPTION_OP_GET 1
#define VFIO_IOAS_GET 0
#define VFIO_IOAS_SET 1
#define HWPT_FAULT_ID_VALID (1u << 2)
#define DMA_MAP_FLAG_VADDR (1u << 2)
#define DMA_UNMAP_FLAG_DIRTY (1u << 0)
#define DMA_UNMAP_FLAG_ALL (1u << 1)
#define DMA_UNMAP_FLAG_VADDR (1u << 2)

/* --- checks -------------------------------------------------------------------------------- */

/* `r` (a call's result, errno as it left it) is -1 with `err`, or succeeded when `err` is 0. */
static void expect_at(int line, const char *what, long r, int err)
{
	int e = errno;
	uiommu_checks++;
	if (err == 0 ? r < 0 : (r != -1 || e != err)) {
		fprintf(stderr, "%s:%d: %s: returned %ld errno %d (%s), expected %s%d (%s)\n",
			__FILE__, line, what, r, r < 0 ? e : 0, r < 0 ? strerror(e) : "-",
			err ? "-1 errno " : "", err, err ? strerror(err) : "success");
		exit(1);
	}
}
#define EXPECT(what, call, err)                                                            \
	do {                                                                               \
		errno = 0;                                                                 \
		long r_ = (long)(call);                                                    \
		expect_at(__LINE__, (what), r_, (err));                                    \
	} while (0)

/* The end of a readable page whose next page is unmapped. */
static unsigned char *edge;
#define HOLE ((void *)edge)
/* A page that is never mapped (below mmap_min_addr). */
#define LOW_PAGE ((void *)(uintptr_t)PAGE)

/* The last `n` bytes before the hole, filled from `src`. */
static void *at_edge(const void *src, size_t n)
{
	memcpy(edge - n, src, n);
	return edge - n;
}

/* Whether the hole is still unmapped (msync fails with ENOMEM on an unmapped range). */
static int hole_unmapped(void)
{
	return msync(HOLE, PAGE, MS_ASYNC) == -1 && errno == ENOMEM;
}

/* Every bad pointer for a request whose struct starts with `first` (size or argsz): NULL, a
 * page never mapped, the unmapped page, and the first word readable with the rest unmapped. */
static void bad_pointers(int line, const char *name, int fd, unsigned long req, __u32 first)
{
	char what[96];
	snprintf(what, sizeof(what), "%s NULL", name);
	errno = 0;
	expect_at(line, what, ioctl(fd, req, NULL), EFAULT);
	snprintf(what, sizeof(what), "%s low page", name);
	errno = 0;
	expect_at(line, what, ioctl(fd, req, LOW_PAGE), EFAULT);
	snprintf(what, sizeof(what), "%s unmapped page", name);
	errno = 0;
	expect_at(line, what, ioctl(fd, req, HOLE), EFAULT);
	snprintf(what, sizeof(what), "%s first word readable, rest unmapped", name);
	errno = 0;
	expect_at(line, what, ioctl(fd, req, at_edge(&first, 4)), EFAULT);
}

/* --- iommufd helpers ------------------------------------------------------------------------ */

static __u32 ioas_alloc(int fd)
{
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	CHECK(ioctl(fd, IOMMU_IOAS_ALLOC, &a) == 0);
	return a.out_ioas_id;
}

static int destroy(int fd, __u32 id)
{
	struct iommu_destroy d = { .size = sizeof(d), .id = id };
	return ioctl(fd, IOMMU_DESTROY, &d);
}

static int map_fixed(int fd, __u32 ioas, void *va, __u64 len, __u64 iova)
{
	struct iommu_ioas_map m = {
		.size = sizeof(m),
		.flags = IOAS_MAP_FIXED | IOAS_MAP_RW,
		.ioas_id = ioas,
		.user_va = (uintptr_t)va,
		.length = len,
		.iova = iova,
	};
	return ioctl(fd, IOMMU_IOAS_MAP, &m);
}

/* Bytes unmapped by an unmap of everything. */
static __u64 unmap_all(int fd, __u32 ioas)
{
	struct iommu_ioas_unmap u = { .size = sizeof(u), .ioas_id = ioas, .length = ~0ULL };
	CHECK(ioctl(fd, IOMMU_IOAS_UNMAP, &u) == 0);
	return u.length;
}

/* What must not change when a call is refused. */
struct snap {
	__u32 n;
	struct iommu_iova_range r[8];
	__u64 align;
	__u32 next_id; /* the id the next object gets (ids are the lowest free) */
	int next_fd;
};

static void iova_ranges(int fd, __u32 ioas, struct snap *s)
{
	struct iommu_ioas_iova_ranges q = {
		.size = sizeof(q),
		.ioas_id = ioas,
		.num_iovas = 8,
		.allowed_iovas = (uintptr_t)s->r,
	};
	memset(s->r, 0, sizeof(s->r));
	CHECK(ioctl(fd, IOMMU_IOAS_IOVA_RANGES, &q) == 0);
	s->n = q.num_iovas;
	s->align = q.out_iova_alignment;
}

/* /dev/null, open for the whole run. */
static int null_fd = -1;

static int lowest_free_fd(void)
{
	int f = dup(null_fd);
	CHECK(f >= 0);
	close(f);
	return f;
}

static void take_snap(int fd, __u32 ioas, struct snap *s)
{
	iova_ranges(fd, ioas, s);
	s->next_id = ioas_alloc(fd);
	CHECK(destroy(fd, s->next_id) == 0);
	s->next_fd = lowest_free_fd();
}

/* The IOAS's ranges, its mapping at IOVA (mapping it again is EEXIST), no object and no fd
 * made by the refused calls. */
static void check_state(int line, int fd, __u32 ioas, void *buf, const struct snap *s)
{
	struct snap now;
	take_snap(fd, ioas, &now);
	uiommu_checks++;
	if (now.n != s->n || now.align != s->align ||
	    memcmp(now.r, s->r, sizeof(now.r)) != 0 || now.next_id != s->next_id ||
	    now.next_fd != s->next_fd) {
		fprintf(stderr,
			"%s:%d: state changed: %u ranges (was %u), alignment %llu (%llu), next id "
			"%u (%u), next fd %d (%d)\n",
			__FILE__, line, now.n, s->n, (unsigned long long)now.align,
			(unsigned long long)s->align, now.next_id, s->next_id, now.next_fd,
			s->next_fd);
		exit(1);
	}
	errno = 0;
	expect_at(line, "the mapping is still there", map_fixed(fd, ioas, buf, PAGE, IOVA),
		  EEXIST);
}

/* --- the size protocol of every command ------------------------------------------------------ */

static void size_protocol(int fd, unsigned char *scratch)
{
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		const char *name = cmds[i].name;
		unsigned long req = IOMMU_CMD(cmds[i].nr);
		__u32 size = cmds[i].size, sz;
		char what[96];

		/* Bad pointers: the size is read first. */
		bad_pointers(__LINE__, name, fd, req, size);
		/* The whole struct readable, declared 8 bytes longer: the tail is unmapped. */
		memset(edge - size, 0, size);
		sz = size + 8;
		memcpy(edge - size, &sz, 4);
		snprintf(what, sizeof(what), "%s tail unmapped", name);
		EXPECT(what, ioctl(fd, req, edge - size), EFAULT);

		/* Below the minimum. */
		memset(scratch, 0, 2 * PAGE);
		unsigned shorts[] = { 0, 4, cmds[i].min - 1 };
		for (size_t k = 0; k < 3; k++) {
			memcpy(scratch, &shorts[k], 4);
			snprintf(what, sizeof(what), "%s size %u", name, shorts[k]);
			EXPECT(what, ioctl(fd, req, scratch), EINVAL);
		}

		/* Longer than the 6.12 struct with a non-zero byte in the tail. */
		sz = size + 16;
		memcpy(scratch, &sz, 4);
		scratch[size + 15] = 1;
		snprintf(what, sizeof(what), "%s non-zero last tail byte", name);
		EXPECT(what, ioctl(fd, req, scratch), E2BIG);
		scratch[size + 15] = 0;
		scratch[size] = 0x80;
		snprintf(what, sizeof(what), "%s non-zero first tail byte", name);
		EXPECT(what, ioctl(fd, req, scratch), E2BIG);
		scratch[size] = 0;

		/* The same nr with direction and size bits is another request. */
		memcpy(scratch, &size, 4);
		snprintf(what, sizeof(what), "%s as _IOWR", name);
		EXPECT(what, ioctl(fd, _IOC(_IOC_READ | _IOC_WRITE, ';', cmds[i].nr, size), scratch),
		       ENOTTY);
	}
}

/* --- per-command refusals, table-driven ------------------------------------------------------ */

union arg {
	struct iommu_destroy destroy;
	struct iommu_ioas_alloc alloc;
	struct t_allow_iovas allow;
	struct t_ioas_copy copy;
	struct iommu_ioas_iova_ranges ranges;
	struct iommu_ioas_map map;
	struct iommu_ioas_unmap unmap;
	struct t_option option;
	struct t_vfio_ioas vioas;
	struct t_hwpt_alloc hwpt;
	struct t_hw_info info;
	struct t_set_dirty setdirty;
	struct t_get_dirty bitmap;
	struct t_invalidate inval;
	struct t_fault_alloc fault;
	__u64 align[8];
};

struct row {
	int line;
	unsigned long req;
	int err;
	union arg a;
};

#define SZ(m) ((__u32)sizeof(((union arg *)0)->m))
#define ROW(nr, m, err, ...) { __LINE__, IOMMU_CMD(nr), err, { .m = { .size = SZ(m), __VA_ARGS__ } } }

static void run_rows(int fd, const struct row *t, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		union arg a = t[i].a; /* a fresh copy: a reply does not reach the next row */
		errno = 0;
		expect_at(t[i].line, "table row", ioctl(fd, t[i].req, &a), t[i].err);
	}
}

/* The objects of the iommufd context the rows use. */
struct ids {
	__u32 ioas, ioas2, fault, dev, hwpt;
};

static void command_rows(int fd, const struct ids *o, void *buf, void *wbuf)
{
	static struct iommu_iova_range inverted[] = { { 0x200000, 0x1fffff } };
	static struct iommu_iova_range empty[] = { { 0x200000, 0x200000 } };
	static struct iommu_iova_range overlap[] = { { 0x100000, 0x2fffff }, { 0x200000, 0x3fffff } };
	static __u64 inv_entries[4];
	const __u64 va = (uintptr_t)buf, wva = (uintptr_t)wbuf;
	const __u64 MAX = ~0ULL;
	/* A valid range just before the hole: the second one of the array is unmapped. */
	struct iommu_iova_range ok = { 0x1000000, 0x1ffffff };
	at_edge(&ok, sizeof(ok));
	struct row t[] = {
		/* DESTROY: ids that name nothing. */
		ROW(NR_DESTROY, destroy, ENOENT, .id = 0),
		ROW(NR_DESTROY, destroy, ENOENT, .id = BAD_ID),
		/* IOAS_ALLOC: flags. */
		ROW(NR_IOAS_ALLOC, alloc, EOPNOTSUPP, .flags = 1),
		ROW(NR_IOAS_ALLOC, alloc, EOPNOTSUPP, .flags = 0x80000000),
		/* IOAS_ALLOW_IOVAS: reserved, ids, bad array, start >= last, overlap. */
		ROW(NR_ALLOW_IOVAS, allow, EOPNOTSUPP, .ioas_id = o->ioas, .__reserved = 1),
		ROW(NR_ALLOW_IOVAS, allow, ENOENT, .ioas_id = BAD_ID),
		ROW(NR_ALLOW_IOVAS, allow, ENOENT, .ioas_id = o->hwpt),
		ROW(NR_ALLOW_IOVAS, allow, ENOENT, .ioas_id = o->dev),
		ROW(NR_ALLOW_IOVAS, allow, ENOENT, .ioas_id = o->fault),
		ROW(NR_ALLOW_IOVAS, allow, EFAULT, .ioas_id = o->ioas, .num_iovas = 1),
		ROW(NR_ALLOW_IOVAS, allow, EFAULT, .ioas_id = o->ioas, .num_iovas = 1,
		    .allowed_iovas = (uintptr_t)HOLE),
		ROW(NR_ALLOW_IOVAS, allow, EFAULT, .ioas_id = o->ioas, .num_iovas = 2,
		    .allowed_iovas = (uintptr_t)(edge - sizeof(struct iommu_iova_range))),
		ROW(NR_ALLOW_IOVAS, allow, EINVAL, .ioas_id = o->ioas, .num_iovas = 1,
		    .allowed_iovas = (uintptr_t)inverted),
		ROW(NR_ALLOW_IOVAS, allow, EINVAL, .ioas_id = o->ioas, .num_iovas = 1,
		    .allowed_iovas = (uintptr_t)empty),
		ROW(NR_ALLOW_IOVAS, allow, EINVAL, .ioas_id = o->ioas, .num_iovas = 2,
		    .allowed_iovas = (uintptr_t)overlap),
		/* IOAS_COPY: flags, u64 overflow, rights, ids, wrapping source and destination. */
		ROW(NR_IOAS_COPY, copy, EOPNOTSUPP, .flags = IOAS_MAP_RW | 8, .dst_ioas_id = o->ioas2,
		    .src_ioas_id = o->ioas, .length = PAGE, .src_iova = IOVA),
		ROW(NR_IOAS_COPY, copy, EOVERFLOW, .flags = IOAS_MAP_RW, .dst_ioas_id = o->ioas2,
		    .src_ioas_id = o->ioas, .length = MAX, .src_iova = IOVA),
		ROW(NR_IOAS_COPY, copy, EOVERFLOW, .flags = IOAS_MAP_RW, .dst_ioas_id = o->ioas2,
		    .src_ioas_id = o->ioas, .length = PAGE, .src_iova = MAX),
		ROW(NR_IOAS_COPY, copy, EOVERFLOW, .flags = IOAS_MAP_RW | IOAS_MAP_FIXED,
		    .dst_ioas_id = o->ioas2, .src_ioas_id = o->ioas, .length = PAGE,
		    .src_iova = IOVA, .dst_iova = MAX),
		ROW(NR_IOAS_COPY, copy, EINVAL, .flags = IOAS_MAP_FIXED, .dst_ioas_id = o->ioas2,
		    .src_ioas_id = o->ioas, .length = PAGE, .src_iova = IOVA),
		ROW(NR_IOAS_COPY, copy, ENOENT, .flags = IOAS_MAP_RW, .dst_ioas_id = o->ioas2,
		    .src_ioas_id = BAD_ID, .length = PAGE, .src_iova = IOVA),
		ROW(NR_IOAS_COPY, copy, ENOENT, .flags = IOAS_MAP_RW, .dst_ioas_id = o->ioas2,
		    .src_ioas_id = o->hwpt, .length = PAGE, .src_iova = IOVA),
		ROW(NR_IOAS_COPY, copy, EINVAL, .flags = IOAS_MAP_RW, .dst_ioas_id = o->ioas2,
		    .src_ioas_id = o->ioas, .length = 0, .src_iova = IOVA),
		ROW(NR_IOAS_COPY, copy, EOVERFLOW, .flags = IOAS_MAP_RW, .dst_ioas_id = o->ioas2,
		    .src_ioas_id = o->ioas, .length = WRAP_LEN, .src_iova = WRAP_IOVA),
		ROW(NR_IOAS_COPY, copy, ENOENT, .flags = IOAS_MAP_RW, .dst_ioas_id = o->ioas2,
		    .src_ioas_id = o->ioas, .length = PAGE, .src_iova = FREE_IOVA),
		ROW(NR_IOAS_COPY, copy, ENOENT, .flags = IOAS_MAP_RW, .dst_ioas_id = BAD_ID,
		    .src_ioas_id = o->ioas, .length = PAGE, .src_iova = IOVA),
		ROW(NR_IOAS_COPY, copy, ENOENT, .flags = IOAS_MAP_RW, .dst_ioas_id = o->dev,
		    .src_ioas_id = o->ioas, .length = PAGE, .src_iova = IOVA),
		ROW(NR_IOAS_COPY, copy, EOVERFLOW, .flags = IOAS_MAP_RW | IOAS_MAP_FIXED,
		    .dst_ioas_id = o->ioas2, .src_ioas_id = o->ioas, .length = BUF,
		    .src_iova = IOVA, .dst_iova = 0xfffffffffffff000ULL),
		/* IOAS_IOVA_RANGES: reserved, ids, a bad output array. */
		ROW(NR_IOVA_RANGES, ranges, EOPNOTSUPP, .ioas_id = o->ioas, .__reserved = 1),
		ROW(NR_IOVA_RANGES, ranges, ENOENT, .ioas_id = BAD_ID),
		ROW(NR_IOVA_RANGES, ranges, ENOENT, .ioas_id = o->hwpt),
		ROW(NR_IOVA_RANGES, ranges, ENOENT, .ioas_id = o->dev),
		ROW(NR_IOVA_RANGES, ranges, EFAULT, .ioas_id = o->ioas, .num_iovas = 4),
		ROW(NR_IOVA_RANGES, ranges, EFAULT, .ioas_id = o->ioas, .num_iovas = 4,
		    .allowed_iovas = (uintptr_t)HOLE),
		/* IOAS_MAP: flags, reserved, u64 overflow, rights, ids, wrapping IOVA and VA. */
		ROW(NR_IOAS_MAP, map, EOPNOTSUPP, .flags = IOAS_MAP_RW | 8, .ioas_id = o->ioas,
		    .user_va = va, .length = PAGE),
		ROW(NR_IOAS_MAP, map, EOPNOTSUPP, .flags = IOAS_MAP_RW, .ioas_id = o->ioas,
		    .__reserved = 1, .user_va = va, .length = PAGE),
		ROW(NR_IOAS_MAP, map, EOVERFLOW, .flags = IOAS_MAP_RW | IOAS_MAP_FIXED,
		    .ioas_id = o->ioas, .user_va = va, .length = PAGE, .iova = MAX),
		ROW(NR_IOAS_MAP, map, EOVERFLOW, .flags = IOAS_MAP_RW, .ioas_id = o->ioas,
		    .user_va = va, .length = MAX),
		ROW(NR_IOAS_MAP, map, EINVAL, .flags = IOAS_MAP_FIXED, .ioas_id = o->ioas,
		    .user_va = va, .length = PAGE, .iova = FREE_IOVA),
		ROW(NR_IOAS_MAP, map, ENOENT, .flags = IOAS_MAP_RW, .ioas_id = BAD_ID, .user_va = va,
		    .length = PAGE),
		ROW(NR_IOAS_MAP, map, ENOENT, .flags = IOAS_MAP_RW, .ioas_id = o->hwpt,
		    .user_va = va, .length = PAGE),
		ROW(NR_IOAS_MAP, map, ENOENT, .flags = IOAS_MAP_RW, .ioas_id = o->fault,
		    .user_va = va, .length = PAGE),
		ROW(NR_IOAS_MAP, map, EINVAL, .flags = IOAS_MAP_RW, .ioas_id = o->ioas, .user_va = va,
		    .length = 0),
		ROW(NR_IOAS_MAP, map, EOVERFLOW, .flags = IOAS_MAP_RW | IOAS_MAP_FIXED,
		    .ioas_id = o->ioas, .user_va = wva, .length = WRAP_LEN, .iova = WRAP_IOVA),
		ROW(NR_IOAS_MAP, map, EOVERFLOW, .flags = IOAS_MAP_RW | IOAS_MAP_FIXED,
		    .ioas_id = o->ioas, .user_va = WRAP_VA, .length = 2 * PAGE, .iova = FREE_IOVA),
		ROW(NR_IOAS_MAP, map, EEXIST, .flags = IOAS_MAP_RW | IOAS_MAP_FIXED,
		    .ioas_id = o->ioas, .user_va = va, .length = PAGE, .iova = IOVA + BUF - PAGE),
		/* IOAS_UNMAP: ids, wrapping, u64 overflow, zero length, nothing or part mapped. */
		ROW(NR_IOAS_UNMAP, unmap, ENOENT, .ioas_id = BAD_ID, .iova = IOVA, .length = BUF),
		ROW(NR_IOAS_UNMAP, unmap, ENOENT, .ioas_id = o->hwpt, .iova = IOVA, .length = BUF),
		ROW(NR_IOAS_UNMAP, unmap, ENOENT, .ioas_id = o->dev, .iova = 0, .length = MAX),
		ROW(NR_IOAS_UNMAP, unmap, EOVERFLOW, .ioas_id = o->ioas, .iova = WRAP_IOVA,
		    .length = WRAP_LEN),
		ROW(NR_IOAS_UNMAP, unmap, EOVERFLOW, .ioas_id = o->ioas, .iova = MAX, .length = 1),
		ROW(NR_IOAS_UNMAP, unmap, EOVERFLOW, .ioas_id = o->ioas, .iova = PAGE, .length = MAX),
		ROW(NR_IOAS_UNMAP, unmap, EINVAL, .ioas_id = o->ioas, .iova = IOVA, .length = 0),
		ROW(NR_IOAS_UNMAP, unmap, ENOENT, .ioas_id = o->ioas, .iova = FREE_IOVA,
		    .length = PAGE),
		ROW(NR_IOAS_UNMAP, unmap, ENOENT, .ioas_id = o->ioas, .iova = IOVA + PAGE,
		    .length = PAGE),
		/* OPTION: option, reserved, op, object ids, value. */
		ROW(NR_OPTION, option, EOPNOTSUPP, .option_id = 99, .op = OPTION_OP_GET),
		ROW(NR_OPTION, option, EOPNOTSUPP, .option_id = OPTION_HUGE_PAGES,
		    .op = OPTION_OP_GET, .__reserved = 1, .object_id = o->ioas),
		ROW(NR_OPTION, option, EOPNOTSUPP, .option_id = OPTION_RLIMIT_MODE,
		    .op = OPTION_OP_GET, .object_id = o->ioas),
		ROW(NR_OPTION, option, EOPNOTSUPP, .option_id = OPTION_RLIMIT_MODE, .op = 7),
		ROW(NR_OPTION, option, ENOENT, .option_id = OPTION_HUGE_PAGES, .op = OPTION_OP_GET,
		    .object_id = BAD_ID),
		ROW(NR_OPTION, option, ENOENT, .option_id = OPTION_HUGE_PAGES, .op = OPTION_OP_GET,
		    .object_id = o->hwpt),
		ROW(NR_OPTION, option, ENOENT, .option_id = OPTION_HUGE_PAGES, .op = OPTION_OP_GET,
		    .object_id = 0),
		ROW(NR_OPTION, option, EOPNOTSUPP, .option_id = OPTION_HUGE_PAGES, .op = 7,
		    .object_id = o->ioas),
		ROW(NR_OPTION, option, EINVAL, .option_id = OPTION_HUGE_PAGES, .op = OPTION_OP_SET,
		    .object_id = o->ioas, .val64 = 2),
		/* VFIO_IOAS: reserved, op, ids; GET without a compatibility IOAS. */
		ROW(NR_VFIO_IOAS, vioas, EOPNOTSUPP, .op = VFIO_IOAS_GET, .__reserved = 1),
		ROW(NR_VFIO_IOAS, vioas, EOPNOTSUPP, .op = 9),
		ROW(NR_VFIO_IOAS, vioas, ENOENT, .op = VFIO_IOAS_SET, .ioas_id = BAD_ID),
		ROW(NR_VFIO_IOAS, vioas, ENOENT, .op = VFIO_IOAS_SET, .ioas_id = o->hwpt),
		ROW(NR_VFIO_IOAS, vioas, ENOENT, .op = VFIO_IOAS_SET, .ioas_id = o->fault),
		ROW(NR_VFIO_IOAS, vioas, ENODEV, .op = VFIO_IOAS_GET),
		/* HWPT_ALLOC: reserved, data type vs length, device ids, pt ids (EINVAL), flags. */
		ROW(NR_HWPT_ALLOC, hwpt, EOPNOTSUPP, .dev_id = o->dev, .pt_id = o->ioas,
		    .__reserved = 1),
		ROW(NR_HWPT_ALLOC, hwpt, EINVAL, .dev_id = o->dev, .pt_id = o->ioas, .data_len = 4,
		    .data_uptr = va),
		ROW(NR_HWPT_ALLOC, hwpt, EINVAL, .dev_id = o->dev, .pt_id = o->ioas, .data_type = 1),
		ROW(NR_HWPT_ALLOC, hwpt, ENOENT, .dev_id = BAD_ID, .pt_id = o->ioas),
		ROW(NR_HWPT_ALLOC, hwpt, ENOENT, .dev_id = o->ioas, .pt_id = o->ioas),
		ROW(NR_HWPT_ALLOC, hwpt, ENOENT, .dev_id = o->hwpt, .pt_id = o->ioas),
		ROW(NR_HWPT_ALLOC, hwpt, EINVAL, .dev_id = o->dev, .pt_id = BAD_ID),
		ROW(NR_HWPT_ALLOC, hwpt, EINVAL, .dev_id = o->dev, .pt_id = o->dev),
		ROW(NR_HWPT_ALLOC, hwpt, EINVAL, .dev_id = o->dev, .pt_id = o->fault),
		ROW(NR_HWPT_ALLOC, hwpt, EOPNOTSUPP, .flags = 1u << 7, .dev_id = o->dev,
		    .pt_id = o->ioas),
		ROW(NR_HWPT_ALLOC, hwpt, EOPNOTSUPP, .flags = HWPT_FAULT_ID_VALID,
		    .dev_id = o->dev, .pt_id = o->ioas, .fault_id = o->fault),
		/* GET_HW_INFO: flags, reserved, ids, an unwritable data buffer. */
		ROW(NR_GET_HW_INFO, info, EOPNOTSUPP, .flags = 2, .dev_id = o->dev),
		ROW(NR_GET_HW_INFO, info, EOPNOTSUPP, .dev_id = o->dev, .__reserved = { 0, 0, 1 }),
		ROW(NR_GET_HW_INFO, info, ENOENT, .dev_id = BAD_ID),
		ROW(NR_GET_HW_INFO, info, ENOENT, .dev_id = o->ioas),
		ROW(NR_GET_HW_INFO, info, EFAULT, .dev_id = o->dev, .data_len = 8),
		ROW(NR_GET_HW_INFO, info, EFAULT, .dev_id = o->dev, .data_len = 8,
		    .data_uptr = (uintptr_t)HOLE),
		/* HWPT_SET_DIRTY_TRACKING: flags, ids. */
		ROW(NR_SET_DIRTY, setdirty, EOPNOTSUPP, .flags = 2, .hwpt_id = o->hwpt),
		ROW(NR_SET_DIRTY, setdirty, ENOENT, .hwpt_id = BAD_ID),
		ROW(NR_SET_DIRTY, setdirty, ENOENT, .hwpt_id = o->ioas),
		ROW(NR_SET_DIRTY, setdirty, ENOENT, .hwpt_id = o->dev),
		/* HWPT_GET_DIRTY_BITMAP: flags, reserved, ids, the range. */
		ROW(NR_GET_DIRTY, bitmap, EOPNOTSUPP, .hwpt_id = o->hwpt, .flags = 2, .iova = IOVA,
		    .length = BUF, .page_size = PAGE, .data = va),
		ROW(NR_GET_DIRTY, bitmap, EOPNOTSUPP, .hwpt_id = o->hwpt, .__reserved = 1,
		    .iova = IOVA, .length = BUF, .page_size = PAGE, .data = va),
		ROW(NR_GET_DIRTY, bitmap, ENOENT, .hwpt_id = BAD_ID, .iova = IOVA, .length = BUF,
		    .page_size = PAGE, .data = va),
		ROW(NR_GET_DIRTY, bitmap, ENOENT, .hwpt_id = o->ioas, .iova = IOVA, .length = BUF,
		    .page_size = PAGE, .data = va),
		ROW(NR_GET_DIRTY, bitmap, EINVAL, .hwpt_id = o->hwpt, .iova = IOVA, .length = 0,
		    .page_size = PAGE, .data = va),
		ROW(NR_GET_DIRTY, bitmap, EOVERFLOW, .hwpt_id = o->hwpt, .iova = WRAP_IOVA,
		    .length = WRAP_LEN, .page_size = PAGE, .data = va),
		ROW(NR_GET_DIRTY, bitmap, EINVAL, .hwpt_id = o->hwpt, .iova = IOVA, .length = BUF,
		    .page_size = 0, .data = va),
		/* HWPT_INVALIDATE: reserved, the array's bounds, ids (a nested HWPT is needed). */
		ROW(NR_INVALIDATE, inval, EOPNOTSUPP, .hwpt_id = o->hwpt, .__reserved = 1),
		ROW(NR_INVALIDATE, inval, EINVAL, .hwpt_id = o->hwpt, .entry_len = 8,
		    .entry_num = 1),
		ROW(NR_INVALIDATE, inval, EINVAL, .hwpt_id = o->hwpt,
		    .data_uptr = (uintptr_t)inv_entries, .entry_len = 0, .entry_num = 1),
		ROW(NR_INVALIDATE, inval, EINVAL, .hwpt_id = o->hwpt,
		    .data_uptr = (uintptr_t)inv_entries, .entry_len = 2 * PAGE, .entry_num = 1),
		ROW(NR_INVALIDATE, inval, ENOENT, .hwpt_id = BAD_ID,
		    .data_uptr = (uintptr_t)inv_entries, .entry_len = 8, .entry_num = 1),
		ROW(NR_INVALIDATE, inval, ENOENT, .hwpt_id = o->hwpt,
		    .data_uptr = (uintptr_t)inv_entries, .entry_len = 8, .entry_num = 1),
		ROW(NR_INVALIDATE, inval, ENOENT, .hwpt_id = o->ioas),
		/* FAULT_QUEUE_ALLOC: flags. */
		ROW(NR_FAULT_ALLOC, fault, EOPNOTSUPP, .flags = 1),
		ROW(NR_FAULT_ALLOC, fault, EOPNOTSUPP, .flags = 0x80000000),
	};
	run_rows(fd, t, sizeof(t) / sizeof(t[0]));

	/* HWPT_INVALIDATE writes entry_num back (0 handled) even when it fails. */
	struct t_invalidate inv = {
		.size = sizeof(inv),
		.hwpt_id = BAD_ID,
		.data_uptr = (uintptr_t)inv_entries,
		.entry_len = 8,
		.entry_num = 3,
	};
	EXPECT("INVALIDATE unknown id", ioctl(fd, IOMMU_CMD(NR_INVALIDATE), &inv), ENOENT);
	CHECK(inv.entry_num == 0);

	/* Unknown command numbers of the ';' type (0xa0 is the selftest command). */
	__u32 scratch[16] = { sizeof(scratch) };
	const unsigned unknown[] = { 0x00, 0x7f, 0x8f, 0x90, 0x9f, 0xa1, 0xff };
	for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++)
		EXPECT("unknown nr", ioctl(fd, IOMMU_CMD(unknown[i]), scratch), ENOTTY);
}

/* Sizes between the minimum and the 6.12 struct, and zero tails beyond it, are accepted; a
 * reply covers only the caller's size. */
static void accepted_sizes(int fd, const struct ids *o, unsigned char *scratch,
			   const struct snap *s)
{
	/* IOAS_ALLOC with a 20-byte zero tail: the id comes back, the tail stays zero. */
	memset(scratch, 0, 2 * PAGE);
	struct iommu_ioas_alloc *a = (void *)scratch;
	a->size = sizeof(*a) + 20;
	CHECK(ioctl(fd, IOMMU_IOAS_ALLOC, a) == 0);
	__u32 id = a->out_ioas_id;
	CHECK(id == s->next_id);
	for (size_t i = sizeof(*a); i < sizeof(*a) + 20; i++)
		CHECK(scratch[i] == 0);
	/* DESTROY with a zero tail; again: ENOENT. */
	memset(scratch, 0, 2 * PAGE);
	struct iommu_destroy *d = (void *)scratch;
	d->size = PAGE;
	d->id = id;
	CHECK(ioctl(fd, IOMMU_DESTROY, d) == 0);
	EXPECT("DESTROY twice", ioctl(fd, IOMMU_DESTROY, d), ENOENT);

	/* IOVA_RANGES with a zero tail answers what the plain call answers. */
	struct iommu_iova_range r[8] = { 0 };
	memset(scratch, 0, 2 * PAGE);
	struct iommu_ioas_iova_ranges *q = (void *)scratch;
	q->size = sizeof(*q) + 64;
	q->ioas_id = o->ioas;
	q->num_iovas = 8;
	q->allowed_iovas = (uintptr_t)r;
	CHECK(ioctl(fd, IOMMU_IOAS_IOVA_RANGES, q) == 0);
	CHECK(q->num_iovas == s->n && q->out_iova_alignment == s->align);
	CHECK(memcmp(r, s->r, sizeof(r)) == 0);

	/* GET_HW_INFO at its minimum (32): out_capabilities (bytes 32..39) is not written. */
	memset(scratch, 0xab, 64);
	struct t_hw_info *hi = (void *)scratch;
	memset(hi, 0, 32);
	hi->size = 32;
	hi->dev_id = o->dev;
	CHECK(ioctl(fd, IOMMU_CMD(NR_GET_HW_INFO), hi) == 0);
	for (size_t i = 32; i < 64; i++)
		CHECK(scratch[i] == 0xab);

	/* HWPT_ALLOC at its minimum (24: no data, no fault id) allocates a paging HWPT. */
	memset(scratch, 0xcd, 64);
	struct t_hwpt_alloc *h = (void *)scratch;
	memset(h, 0, 24);
	h->size = 24;
	h->dev_id = o->dev;
	h->pt_id = o->ioas;
	CHECK(ioctl(fd, IOMMU_CMD(NR_HWPT_ALLOC), h) == 0);
	CHECK(h->out_hwpt_id != 0);
	for (size_t i = 24; i < 64; i++)
		CHECK(scratch[i] == 0xcd);
	CHECK(destroy(fd, h->out_hwpt_id) == 0);
}

/* --- the VFIO device cdev -------------------------------------------------------------------- */

/* A VFIO request and the leading words of its argument (argsz, flags, then the request's own:
 * BIND iommufd, ATTACH pt_id, REGION/IRQ_INFO index, SET_IRQS index/start/count). */
struct vrow {
	int line;
	unsigned long req;
	int err;
	__u32 w[8];
};
#define VROW(req, err, ...) { __LINE__, req, err, { __VA_ARGS__ } }

static void run_vrows(int fd, const struct vrow *t, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		__u32 w[16];
		memset(w, 0, sizeof(w));
		memcpy(w, t[i].w, sizeof(t[i].w));
		errno = 0;
		expect_at(t[i].line, "vfio table row", ioctl(fd, t[i].req, w), t[i].err);
	}
}

#define VFIO_UNKNOWN _IO(VFIO_TYPE, VFIO_BASE + 50)
#define IRQ_TRIGGER (VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER)

static int device_bound(int devfd)
{
	struct vfio_device_info di = { .argsz = sizeof(di) };
	return ioctl(devfd, VFIO_DEVICE_GET_INFO, &di) == 0;
}

static void vfio_device(int iommufd, int devfd, struct ids *o, int nullfd)
{
	/* Before bind: every request but BIND is EINVAL, even an unknown one. */
	const struct vrow unbound[] = {
		VROW(VFIO_DEVICE_GET_INFO, EINVAL, 16),
		VROW(VFIO_DEVICE_ATTACH_IOMMUFD_PT, EINVAL, 12, 0, o->ioas),
		VROW(VFIO_DEVICE_DETACH_IOMMUFD_PT, EINVAL, 8),
		VROW(VFIO_UNKNOWN, EINVAL, 16),
		/* BIND: argsz, flags, a negative fd, a number not open, files not an iommufd. */
		VROW(VFIO_DEVICE_BIND_IOMMUFD, EINVAL, 15, 0, (__u32)iommufd),
		VROW(VFIO_DEVICE_BIND_IOMMUFD, EINVAL, 16, 1, (__u32)iommufd),
		VROW(VFIO_DEVICE_BIND_IOMMUFD, EINVAL, 16, 0, (__u32)-1),
		VROW(VFIO_DEVICE_BIND_IOMMUFD, EBADF, 16, 0, NOT_OPEN_FD),
		VROW(VFIO_DEVICE_BIND_IOMMUFD, EBADFD, 16, 0, (__u32)nullfd),
		VROW(VFIO_DEVICE_BIND_IOMMUFD, EBADFD, 16, 0, (__u32)devfd),
	};
	CHECK(fcntl(NOT_OPEN_FD, F_GETFD) == -1 && errno == EBADF);
	run_vrows(devfd, unbound, sizeof(unbound) / sizeof(unbound[0]));
	bad_pointers(__LINE__, "BIND", devfd, VFIO_DEVICE_BIND_IOMMUFD, 16);
	CHECK(!device_bound(devfd)); /* nothing bound by the refusals */

	struct vfio_device_bind_iommufd b = { .argsz = sizeof(b), .iommufd = iommufd };
	CHECK(ioctl(devfd, VFIO_DEVICE_BIND_IOMMUFD, &b) == 0);
	o->dev = b.out_devid;
	CHECK(device_bound(devfd));
	EXPECT("BIND twice", ioctl(devfd, VFIO_DEVICE_BIND_IOMMUFD, &b), EINVAL);

	/* ATTACH before it succeeds; the IOAS's ranges are unchanged by the refusals. */
	const struct vrow attach[] = {
		VROW(VFIO_DEVICE_ATTACH_IOMMUFD_PT, EINVAL, 11, 0, o->ioas),
		VROW(VFIO_DEVICE_ATTACH_IOMMUFD_PT, EINVAL, 12, 1, o->ioas),
		VROW(VFIO_DEVICE_ATTACH_IOMMUFD_PT, EINVAL, 12, 0x80000000, o->ioas),
		VROW(VFIO_DEVICE_ATTACH_IOMMUFD_PT, ENOENT, 12, 0, BAD_ID),
		VROW(VFIO_DEVICE_ATTACH_IOMMUFD_PT, ENOENT, 12, 0, 0),
		VROW(VFIO_DEVICE_ATTACH_IOMMUFD_PT, EINVAL, 12, 0, o->dev),
		VROW(VFIO_DEVICE_ATTACH_IOMMUFD_PT, EINVAL, 12, 0, o->fault),
	};
	struct snap before, after;
	iova_ranges(iommufd, o->ioas, &before);
	run_vrows(devfd, attach, sizeof(attach) / sizeof(attach[0]));
	bad_pointers(__LINE__, "ATTACH", devfd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, 12);
	iova_ranges(iommufd, o->ioas, &after);
	CHECK(after.n == before.n && after.align == before.align &&
	      memcmp(after.r, before.r, sizeof(after.r)) == 0);

	struct vfio_device_attach_iommufd_pt at = { .argsz = sizeof(at), .pt_id = o->ioas };
	CHECK(ioctl(devfd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at) == 0);
	EXPECT("attached IOAS busy", destroy(iommufd, o->ioas), EBUSY);

	const struct vrow bound[] = {
		/* ATTACH again (a replace): the same refusals, the attachment stays. */
		VROW(VFIO_DEVICE_ATTACH_IOMMUFD_PT, ENOENT, 12, 0, BAD_ID),
		VROW(VFIO_DEVICE_ATTACH_IOMMUFD_PT, EINVAL, 12, 0, o->dev),
		VROW(VFIO_DEVICE_ATTACH_IOMMUFD_PT, EINVAL, 12, 2, o->ioas),
		/* DETACH: argsz, flags. */
		VROW(VFIO_DEVICE_DETACH_IOMMUFD_PT, EINVAL, 7),
		VROW(VFIO_DEVICE_DETACH_IOMMUFD_PT, EINVAL, 8, 1),
		/* GET_INFO: argsz. */
		VROW(VFIO_DEVICE_GET_INFO, EINVAL, 15),
		VROW(VFIO_DEVICE_GET_INFO, EINVAL, 0),
		/* GET_REGION_INFO: argsz, no VGA, no device-specific regions. */
		VROW(VFIO_DEVICE_GET_REGION_INFO, EINVAL, 31, 0, VFIO_PCI_BAR0_REGION_INDEX),
		VROW(VFIO_DEVICE_GET_REGION_INFO, EINVAL, 32, 0, VFIO_PCI_VGA_REGION_INDEX),
		VROW(VFIO_DEVICE_GET_REGION_INFO, EINVAL, 32, 0, VFIO_PCI_NUM_REGIONS),
		VROW(VFIO_DEVICE_GET_REGION_INFO, EINVAL, 32, 0, 0xffffffff),
		/* GET_IRQ_INFO: argsz, index. */
		VROW(VFIO_DEVICE_GET_IRQ_INFO, EINVAL, 15, 0, VFIO_PCI_MSIX_IRQ_INDEX),
		VROW(VFIO_DEVICE_GET_IRQ_INFO, EINVAL, 16, 0, VFIO_PCI_NUM_IRQS),
		VROW(VFIO_DEVICE_GET_IRQ_INFO, EINVAL, 16, 0, 0xffffffff),
		/* SET_IRQS (argsz, flags, index, start, count): argsz, unknown flags, two data
		 * types, index, start + count wrapping or past the vectors, data past argsz. */
		VROW(VFIO_DEVICE_SET_IRQS, EINVAL, 19, IRQ_TRIGGER, VFIO_PCI_MSIX_IRQ_INDEX, 0, 0),
		VROW(VFIO_DEVICE_SET_IRQS, EINVAL, 20, IRQ_TRIGGER | (1u << 10),
		     VFIO_PCI_MSIX_IRQ_INDEX, 0, 0),
		VROW(VFIO_DEVICE_SET_IRQS, EINVAL, 20, IRQ_TRIGGER | 0x80000000,
		     VFIO_PCI_MSIX_IRQ_INDEX, 0, 0),
		VROW(VFIO_DEVICE_SET_IRQS, EINVAL, 24,
		     VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
		     VFIO_PCI_MSIX_IRQ_INDEX, 0, 1),
		VROW(VFIO_DEVICE_SET_IRQS, EINVAL, 20, IRQ_TRIGGER, VFIO_PCI_NUM_IRQS, 0, 0),
		VROW(VFIO_DEVICE_SET_IRQS, EINVAL, 20, IRQ_TRIGGER, VFIO_PCI_MSIX_IRQ_INDEX, 1,
		     0xffffffff),
		VROW(VFIO_DEVICE_SET_IRQS, EINVAL, 20, IRQ_TRIGGER, VFIO_PCI_MSIX_IRQ_INDEX, 0x10000,
		     1),
		VROW(VFIO_DEVICE_SET_IRQS, EINVAL, 20,
		     VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
		     VFIO_PCI_MSIX_IRQ_INDEX, 0, 1),
		/* A number vfio-pci does not know. */
		VROW(VFIO_UNKNOWN, ENOTTY, 16),
	};
	run_vrows(devfd, bound, sizeof(bound) / sizeof(bound[0]));
	bad_pointers(__LINE__, "ATTACH (bound)", devfd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, 12);
	bad_pointers(__LINE__, "DETACH", devfd, VFIO_DEVICE_DETACH_IOMMUFD_PT, 8);
	bad_pointers(__LINE__, "GET_INFO", devfd, VFIO_DEVICE_GET_INFO, 16);
	bad_pointers(__LINE__, "GET_REGION_INFO", devfd, VFIO_DEVICE_GET_REGION_INFO, 32);
	bad_pointers(__LINE__, "GET_IRQ_INFO", devfd, VFIO_DEVICE_GET_IRQ_INFO, 16);
	bad_pointers(__LINE__, "SET_IRQS", devfd, VFIO_DEVICE_SET_IRQS, 20);
	/* Still attached, and the regions answer. */
	EXPECT("attached IOAS still busy", destroy(iommufd, o->ioas), EBUSY);
	struct vfio_region_info ri = { .argsz = sizeof(ri), .index = VFIO_PCI_BAR0_REGION_INDEX };
	CHECK(ioctl(devfd, VFIO_DEVICE_GET_REGION_INFO, &ri) == 0 && ri.size > 0);
	/* No expansion ROM is size 0, not an error (VGA, index 8, is EINVAL above). */
	ri.index = VFIO_PCI_ROM_REGION_INDEX;
	CHECK(ioctl(devfd, VFIO_DEVICE_GET_REGION_INFO, &ri) == 0 && ri.size == 0);
}

/* --- the legacy container and group ---------------------------------------------------------- */

static int group_of(const char *bdf)
{
	char path[128], target[PATH_MAX] = { 0 };
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/iommu_group", bdf);
	ssize_t n = readlink(path, target, sizeof(target) - 1);
	CHECK(n > 0);
	return atoi(basename(target));
}

static __u32 group_flags(int group)
{
	struct vfio_group_status gs = { .argsz = sizeof(gs) };
	CHECK(ioctl(group, VFIO_GROUP_GET_STATUS, &gs) == 0);
	return gs.flags;
}

static int legacy_map(int container, void *va, __u64 iova, __u64 size)
{
	struct vfio_iommu_type1_dma_map m = {
		.argsz = sizeof(m),
		.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
		.vaddr = (uintptr_t)va,
		.iova = iova,
		.size = size,
	};
	return ioctl(container, VFIO_IOMMU_MAP_DMA, &m);
}

static void legacy(void *buf, void *wbuf, int nullfd)
{
	/* dma1's group (02:00.x): dma0's is bound through its cdev. */
	char gpath[64];
	snprintf(gpath, sizeof(gpath), "/dev/vfio/%d", group_of("0000:02:00.0"));
	int container = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
	CHECK(container >= 0);
	int group = open(gpath, O_RDWR | O_CLOEXEC);
	CHECK(group >= 0);
	CHECK(group_flags(group) == VFIO_GROUP_FLAGS_VIABLE);

	/* GET_STATUS: argsz, bad pointers. */
	struct vfio_group_status gs = { .argsz = 7 };
	EXPECT("GET_STATUS argsz 7", ioctl(group, VFIO_GROUP_GET_STATUS, &gs), EINVAL);
	bad_pointers(__LINE__, "GET_STATUS", group, VFIO_GROUP_GET_STATUS, 8);
	/* SET_CONTAINER: bad pointers, fds not open, a file that is not an iommufd. */
	int fdarg = -1;
	EXPECT("SET_CONTAINER NULL", ioctl(group, VFIO_GROUP_SET_CONTAINER, NULL), EFAULT);
	EXPECT("SET_CONTAINER unmapped", ioctl(group, VFIO_GROUP_SET_CONTAINER, HOLE), EFAULT);
	EXPECT("SET_CONTAINER -1", ioctl(group, VFIO_GROUP_SET_CONTAINER, &fdarg), EBADF);
	fdarg = NOT_OPEN_FD;
	EXPECT("SET_CONTAINER not open", ioctl(group, VFIO_GROUP_SET_CONTAINER, &fdarg), EBADF);
	fdarg = nullfd;
	EXPECT("SET_CONTAINER /dev/null", ioctl(group, VFIO_GROUP_SET_CONTAINER, &fdarg),
	       EBADFD);
	fdarg = group;
	EXPECT("SET_CONTAINER a group", ioctl(group, VFIO_GROUP_SET_CONTAINER, &fdarg), EBADFD);
	EXPECT("unknown group request", ioctl(group, VFIO_UNKNOWN, &fdarg), ENOTTY);
	CHECK(group_flags(group) == VFIO_GROUP_FLAGS_VIABLE); /* still no container */
	/* No group in the container yet: no compatibility IOAS. */
	EXPECT("MAP_DMA without a group", legacy_map(container, buf, IOVA, BUF), ENODEV);

	CHECK(ioctl(group, VFIO_GROUP_SET_CONTAINER, &container) == 0);
	CHECK(ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) == 0);
	CHECK(group_flags(group) == (VFIO_GROUP_FLAGS_VIABLE | VFIO_GROUP_FLAGS_CONTAINER_SET));
	fdarg = NOT_OPEN_FD;
	EXPECT("SET_CONTAINER not open, set", ioctl(group, VFIO_GROUP_SET_CONTAINER, &fdarg),
	       EBADF);
	CHECK(legacy_map(container, buf, IOVA, BUF) == 0);

	const __u32 RW = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
	const struct {
		int line, err;
		struct vfio_iommu_type1_dma_map m;
	} maps[] = {
		{ __LINE__, EINVAL, { 31, RW, (uintptr_t)buf, FREE_IOVA, PAGE } },
		{ __LINE__, EINVAL, { 0, RW, (uintptr_t)buf, FREE_IOVA, PAGE } },
		{ __LINE__, EINVAL, { 32, RW | DMA_MAP_FLAG_VADDR, (uintptr_t)buf, FREE_IOVA, PAGE } },
		{ __LINE__, EINVAL, { 32, RW | (1u << 7), (uintptr_t)buf, FREE_IOVA, PAGE } },
		{ __LINE__, EOVERFLOW, { 32, RW, (uintptr_t)wbuf, WRAP_IOVA, WRAP_LEN } },
		{ __LINE__, EOVERFLOW, { 32, RW, WRAP_VA, FREE_IOVA, 2 * PAGE } },
		{ __LINE__, EINVAL, { 32, RW, (uintptr_t)buf, FREE_IOVA, 0 } },
		{ __LINE__, EEXIST, { 32, RW, (uintptr_t)buf, IOVA, PAGE } },
	};
	for (size_t i = 0; i < sizeof(maps) / sizeof(maps[0]); i++) {
		struct vfio_iommu_type1_dma_map m = maps[i].m;
		errno = 0;
		expect_at(maps[i].line, "MAP_DMA row", ioctl(container, VFIO_IOMMU_MAP_DMA, &m),
			  maps[i].err);
	}
	bad_pointers(__LINE__, "MAP_DMA", container, VFIO_IOMMU_MAP_DMA, 32);

	const struct {
		int line, err;
		struct t_dma_unmap u;
	} unmaps[] = {
		{ __LINE__, EINVAL, { 23, 0, IOVA, BUF } },
		{ __LINE__, EINVAL, { 24, DMA_UNMAP_FLAG_DIRTY, IOVA, BUF } },
		{ __LINE__, EINVAL, { 24, DMA_UNMAP_FLAG_VADDR, IOVA, BUF } },
		{ __LINE__, EINVAL, { 24, 1u << 7, IOVA, BUF } },
		{ __LINE__, EINVAL, { 24, DMA_UNMAP_FLAG_ALL, IOVA, 0 } },
		{ __LINE__, EINVAL, { 24, DMA_UNMAP_FLAG_ALL, 0, BUF } },
		{ __LINE__, EINVAL, { 24, 0, IOVA, 0 } },
		{ __LINE__, EOVERFLOW, { 24, 0, WRAP_IOVA, WRAP_LEN } },
		{ __LINE__, ENOENT, { 24, 0, IOVA + PAGE, PAGE } },
	};
	for (size_t i = 0; i < sizeof(unmaps) / sizeof(unmaps[0]); i++) {
		struct t_dma_unmap u = unmaps[i].u;
		errno = 0;
		expect_at(unmaps[i].line, "UNMAP_DMA row",
			  ioctl(container, VFIO_IOMMU_UNMAP_DMA, &u), unmaps[i].err);
	}
	bad_pointers(__LINE__, "UNMAP_DMA", container, VFIO_IOMMU_UNMAP_DMA, 24);

	struct vfio_iommu_type1_info info = { .argsz = 15 };
	EXPECT("IOMMU_GET_INFO argsz 15", ioctl(container, VFIO_IOMMU_GET_INFO, &info), EINVAL);
	bad_pointers(__LINE__, "IOMMU_GET_INFO", container, VFIO_IOMMU_GET_INFO, 16);
	__u32 any[8] = { 32 };
	EXPECT("DIRTY_PAGES", ioctl(container, VFIO_IOMMU_DIRTY_PAGES, any), ENOTTY);
	EXPECT("unknown container nr", ioctl(container, _IO(VFIO_TYPE, 0x7f), any), ENOTTY);

	/* Nothing changed: the one mapping is there and is all there is. */
	info.argsz = sizeof(info);
	CHECK(ioctl(container, VFIO_IOMMU_GET_INFO, &info) == 0);
	CHECK(group_flags(group) == (VFIO_GROUP_FLAGS_VIABLE | VFIO_GROUP_FLAGS_CONTAINER_SET));
	EXPECT("legacy mapping still there", legacy_map(container, buf, IOVA, PAGE), EEXIST);
	struct t_dma_unmap all = { .argsz = sizeof(all), .flags = DMA_UNMAP_FLAG_ALL };
	CHECK(ioctl(container, VFIO_IOMMU_UNMAP_DMA, &all) == 0);
	CHECK(all.size == BUF);
	close(group);
	close(container);
}

/*
 * Calls of other kinds than our ioctls on our files, as the kernel answers them: ioctls of
 * other types reach the driver (ENOTTY), but the VFS's own ones work; vectored I/O runs as
 * read/write per iovec (iommufd has neither: EINVAL; a device's config space reads).
 */
static void generic_file_calls(int fd, int devfd, int faultfd)
{
	int n = -1;
	EXPECT("FIONREAD iommufd", ioctl(fd, FIONREAD, &n), ENOTTY);
	EXPECT("FIONREAD device", ioctl(devfd, FIONREAD, &n), ENOTTY);
	EXPECT("FIONREAD fault queue", ioctl(faultfd, FIONREAD, &n), ENOTTY);
	CHECK(n == -1);
	struct termios t;
	EXPECT("TCGETS iommufd", tcgetattr(fd, &t), ENOTTY);
	EXPECT("FIOQSIZE device", ioctl(devfd, FIOQSIZE, &n), ENOTTY);
	int on = 1, off = 0;
	EXPECT("FIOASYNC on", ioctl(fd, FIOASYNC, &on), ENOTTY);
	EXPECT("FIOASYNC off", ioctl(fd, FIOASYNC, &off), 0);
	EXPECT("FIOASYNC bad pointer", ioctl(fd, FIOASYNC, HOLE), EFAULT);
	EXPECT("FIONBIO", ioctl(fd, FIONBIO, &off), 0);
	EXPECT("FIOCLEX", ioctl(fd, FIOCLEX), 0);
	CHECK(fcntl(fd, F_GETFD) == FD_CLOEXEC);

	unsigned char a[2], b[2];
	struct iovec iov[2] = { { a, sizeof(a) }, { b, sizeof(b) } };
	EXPECT("readv iommufd", readv(fd, iov, 2), EINVAL);
	EXPECT("readv iommufd, no iovec", readv(fd, iov, 0), EINVAL);
	EXPECT("writev iommufd", writev(fd, iov, 2), EINVAL);
	EXPECT("readv bad iovec array", readv(fd, HOLE, 2), EFAULT);
	volatile int too_many = 1025, negative = -1; /* (hidden from the compiler's checks) */
	EXPECT("readv 1025 iovecs", readv(fd, iov, too_many), EINVAL);
	EXPECT("readv -1 iovecs", readv(fd, iov, negative), EINVAL);
	EXPECT("preadv2 flags", preadv2(devfd, iov, 2, 0, RWF_NOWAIT), EOPNOTSUPP);
	/* Config space through two iovecs: the vendor id, then the device id. */
	const off_t config = (off_t)VFIO_PCI_CONFIG_REGION_INDEX << 40;
	__u16 vendor = 0, device = 0, v2 = 0, d2 = 0;
	CHECK(pread(devfd, &vendor, 2, config) == 2 && pread(devfd, &device, 2, config + 2) == 2);
	struct iovec ids[2] = { { &v2, 2 }, { &d2, 2 } };
	CHECK(preadv(devfd, ids, 2, config) == 4);
	CHECK(v2 == vendor && d2 == device && vendor != 0);
	/* A bad buffer in the second iovec: the first's bytes count. */
	struct iovec half[2] = { { &v2, 2 }, { HOLE, 2 } };
	CHECK(preadv(devfd, half, 2, config) == 2);
	/* A fault queue's readv answers as its read of the same buffer does. */
	struct iovec fq[1] = { { a, sizeof(a) } };
	errno = 0;
	long r = readv(faultfd, fq, 1);
	int e = errno;
	errno = 0;
	long r1 = read(faultfd, a, sizeof(a));
	CHECK(r == r1 && e == errno);
}

int main(void)
{
	/* The edge: a readable page, then an unmapped one. */
	unsigned char *two = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(two != MAP_FAILED);
	CHECK(munmap(two + PAGE, PAGE) == 0);
	edge = two + PAGE;
	CHECK(hole_unmapped());
	unsigned char *scratch = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE,
				      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	void *buf = mmap(NULL, BUF, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	void *wbuf = mmap(NULL, WRAP_LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			  -1, 0);
	CHECK(scratch != MAP_FAILED && buf != MAP_FAILED && wbuf != MAP_FAILED);
	memset(buf, 0x5a, BUF);
	memset(wbuf, 0x33, WRAP_LEN);
	null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	CHECK(null_fd >= 0);

	/* The context: two IOASes, a fault queue, dma0 bound and attached, a paging HWPT. */
	int fd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
	CHECK(fd >= 0);
	struct ids o = { 0 };
	o.ioas = ioas_alloc(fd);
	o.ioas2 = ioas_alloc(fd);
	struct t_fault_alloc fa = { .size = sizeof(fa) };
	CHECK(ioctl(fd, IOMMU_CMD(NR_FAULT_ALLOC), &fa) == 0);
	o.fault = fa.out_fault_id;
	int faultfd = (int)fa.out_fault_fd;
	int devfd = open("/dev/vfio/devices/vfio0", O_RDWR | O_CLOEXEC);
	CHECK(devfd >= 0);
	int c0 = uiommu_checks;
	vfio_device(fd, devfd, &o, null_fd);
	int vfio_checks = uiommu_checks - c0;

	struct t_hwpt_alloc ha = {
		.size = sizeof(ha), .dev_id = o.dev, .pt_id = o.ioas,
	};
	CHECK(ioctl(fd, IOMMU_CMD(NR_HWPT_ALLOC), &ha) == 0);
	o.hwpt = ha.out_hwpt_id;
	CHECK(map_fixed(fd, o.ioas, buf, BUF, IOVA) == 0);
	struct snap s;
	take_snap(fd, o.ioas, &s);

	/* Every command: the size protocol, then its own refusals. */
	c0 = uiommu_checks;
	generic_file_calls(fd, devfd, faultfd);
	size_protocol(fd, scratch);
	check_state(__LINE__, fd, o.ioas, buf, &s);
	command_rows(fd, &o, buf, wbuf);
	check_state(__LINE__, fd, o.ioas, buf, &s);
	accepted_sizes(fd, &o, scratch, &s);
	check_state(__LINE__, fd, o.ioas, buf, &s);
	CHECK(unmap_all(fd, o.ioas2) == 0); /* no refused COPY left a mapping */
	int iommufd_checks = uiommu_checks - c0;

	c0 = uiommu_checks;
	legacy(buf, wbuf, null_fd);
	int legacy_checks = uiommu_checks - c0;

	CHECK(hole_unmapped());
	CHECK(unmap_all(fd, o.ioas) == BUF);
	close(devfd);
	close(faultfd);
	close(fd);
	close(null_fd);
	printf("bad_inputs: iommufd %d checks, vfio cdev %d, legacy container/group %d\n",
	       iommufd_checks, vfio_checks, legacy_checks);
	PASS("bad_inputs");
	return 0;
}
