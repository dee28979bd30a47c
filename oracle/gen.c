// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * gen: a seeded random sequence of iommufd / VFIO-compat uAPI calls on /dev/iommu, one
 * environment-independent line per call, for a differential comparison of uiommu against the
 * real Linux kernel (built with CONFIG_IOMMUFD_TEST=y).
 *
 *   gen SEED [NOPS]        (NOPS defaults to 200)
 *
 * Everything the kernel's answers may depend on is made deterministic: the PRNG (splitmix64
 * seeded by SEED), the user buffers (mmap MAP_FIXED_NOREPLACE at fixed addresses, filled with
 * a fixed pattern, followed by unmapped holes), the order of the calls. Printed are the op
 * index and name, the inputs that matter, the result (0 / ret=N, or the errno's name) and the
 * outputs (object ids, IOVAs, lengths, ranges, checksums of data read). File descriptors
 * (access and fault fds) are never printed, only which pool slot they occupy.
 *
 * Built -static against the uapi headers of the kernel tree being compared:
 *   cc -O2 -static -I$KSRC/include/uapi -I$KSRC/drivers/iommu/iommufd -o gen gen.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <linux/types.h>
#include <linux/iommufd.h>
#include <linux/vfio.h>
#include "iommufd_test.h"

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

#define PAGE 4096ULL
#define U64MAX 0xffffffffffffffffULL

/* Fixed user memory. POOL is followed by an unmapped HOLE; SCRATCH (bitmaps, range arrays,
 * access_rw buffers) by another hole; RO is read-only; HUGE is 1 GiB-aligned. */
#define POOL_BASE 0x500000000000ULL
#define POOL_SIZE (4ULL << 20)
#define HOLE_BASE (POOL_BASE + POOL_SIZE)
#define HOLE_SIZE (4ULL << 20)
#define RO_BASE (POOL_BASE + (16ULL << 20))
#define RO_SIZE (64ULL << 10)
#define SCRATCH_BASE (POOL_BASE + (32ULL << 20))
#define SCRATCH_SIZE (64ULL << 10)
#define HUGE_BASE (POOL_BASE + (1ULL << 30))
#define HUGE_SIZE (4ULL << 20)

/* ------------------------------------------------------------------ PRNG */
static uint64_t rng_state;
static uint64_t rnd64(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}
static uint32_t rnd(uint32_t n) { return n ? (uint32_t)(rnd64() % n) : 0; }
static int chance(int pct) { return (int)rnd(100) < pct; }

/* ------------------------------------------------------------------ output */
static int fd = -1;
static int opno;
static int dump; /* gen SEED NOPS dump: also print the bytes ACCESS_RW reads (debugging) */
static char line[4096];
static size_t linelen;

static void out(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line + linelen, sizeof(line) - linelen, fmt, ap);
	va_end(ap);
	if (n > 0)
		linelen += (size_t)n < sizeof(line) - linelen ? (size_t)n : sizeof(line) - linelen - 1;
}
static void begin(const char *name)
{
	linelen = 0;
	out("%04d %s", opno, name);
}
static void end(void)
{
	out("\n");
	fputs(line, stdout);
	fflush(stdout);
}

static const char *errname(int e)
{
	switch (e) {
#define E(x) case x: return #x
	E(EPERM); E(ENOENT); E(ESRCH); E(EINTR); E(EIO); E(ENXIO); E(E2BIG); E(EBADF);
	E(EAGAIN); E(ENOMEM); E(EACCES); E(EFAULT); E(EBUSY); E(EEXIST); E(EXDEV);
	E(ENODEV); E(ENOTDIR); E(EINVAL); E(ENFILE); E(EMFILE); E(ENOTTY); E(EFBIG);
	E(ENOSPC); E(ESPIPE); E(EROFS); E(ERANGE); E(EDOM); E(EOVERFLOW); E(ENOSYS);
	E(EOPNOTSUPP); E(EMSGSIZE); E(EADDRINUSE);
	E(ENOBUFS); E(EALREADY); E(EINPROGRESS); E(ETIMEDOUT); E(ECANCELED); E(ENOLINK);
	E(EPROTO); E(EBADMSG); E(EILSEQ); E(ENOSR); E(ENODATA); E(EDEADLK); E(EBADFD);
	E(EBADR); E(ENOKEY); E(EOWNERDEAD); E(ENOTUNIQ); E(ENOMSG); E(EIDRM); E(ENOTSOCK);
	E(EBADE); E(EBADRQC); E(ECHRNG);
#undef E
	}
	static char buf[32];
	snprintf(buf, sizeof(buf), "errno%d", e);
	return buf;
}

/* result of an ioctl: prints "-> 0", "-> ret=N" or "-> ENAME"; returns rc (errno negated) */
static int res(int rc)
{
	if (rc < 0) {
		int e = errno;
		out(" -> %s", errname(e));
		return -e;
	}
	if (rc == 0)
		out(" -> 0");
	else
		out(" -> ret=%d", rc);
	return rc;
}

/* ------------------------------------------------------------------ object pools */
#define MAXN 16
struct idlist { uint32_t v[MAXN]; int n; };
static void push(struct idlist *l, uint32_t id)
{
	if (l->n < MAXN)
		l->v[l->n++] = id;
	else
		l->v[rnd(MAXN)] = id;
}
static struct idlist all_ids, ioas_ids, hwpt_ids, parent_ids, nested_ids, dirty_ids,
	stdev_ids, idev_ids, idev_nodirty, fault_ids;

static uint32_t bogus_id(void)
{
	static const uint32_t b[] = { 0, 0xffffffffu, 1000, 77, 0x80000000u };
	return b[rnd(5)];
}
/* an id of the kind asked for mostly, else any id seen, else a bogus one */
static uint32_t pick(struct idlist *l)
{
	int r = rnd(100);
	if (r < 40 && l->n) /* the recent ones, mostly live */
		return l->v[l->n - 1 - rnd(l->n < 3 ? l->n : 3)];
	if (r < 75 && l->n)
		return l->v[rnd(l->n)];
	if (r < 92 && all_ids.n)
		return all_ids.v[rnd(all_ids.n)];
	return bogus_id();
}
static void newid(struct idlist *l, uint32_t id)
{
	push(l, id);
	push(&all_ids, id);
}

/* which IOAS a paging HWPT (or the parent of a nested one) maps: ops on a HWPT then pick
 * ranges mapped there */
static struct { uint32_t hwpt, ioas; } owners[64];
static int nowners;
static void set_owner(uint32_t hwpt, uint32_t ioas)
{
	if (nowners < 64) {
		owners[nowners].hwpt = hwpt;
		owners[nowners++].ioas = ioas;
	}
}
static uint32_t owner_of(uint32_t id)
{
	for (int i = nowners - 1; i >= 0; i--)
		if (owners[i].hwpt == id)
			return owners[i].ioas;
	return id; /* an IOAS is its own owner */
}

/* accesses: fds in slots; fault queues likewise */
struct access { int fd; int live; uint32_t ioas; uint32_t pages[8]; int npages; };
static struct access accs[8];
static int naccs;
static int fault_fds[8];
static int nfaults;

/* successful mappings (ioas, iova, length), used as targets */
struct mapping { uint32_t ioas; uint64_t iova, len, va; };
static struct mapping maps[32];
static int nmaps;
static void add_map(uint32_t ioas, uint64_t iova, uint64_t len, uint64_t va)
{
	struct mapping m = { ioas, iova, len, va };
	if (nmaps < 32)
		maps[nmaps++] = m;
	else
		maps[rnd(32)] = m;
}

static uint32_t vfio_ioas_set; /* not used for decisions, informational */

/* ------------------------------------------------------------------ value pickers */
static uint64_t pick_va(void)
{
	int r = rnd(100);
	if (r < 55)
		return POOL_BASE + rnd(POOL_SIZE / PAGE) * PAGE;
	if (r < 63)
		return POOL_BASE + rnd(POOL_SIZE / PAGE) * PAGE + (chance(50) ? 0x800 : 8 * (1 + rnd(64)));
	if (r < 73)
		return HUGE_BASE + (chance(50) ? rnd(2) * (2ULL << 20) : rnd(HUGE_SIZE / PAGE) * PAGE);
	if (r < 80)
		return RO_BASE + rnd(RO_SIZE / PAGE) * PAGE;
	if (r < 88)
		return HOLE_BASE + rnd(HOLE_SIZE / PAGE) * PAGE;
	if (r < 93)
		return POOL_BASE + POOL_SIZE - PAGE * (1 + rnd(4)); /* runs into the hole */
	if (r < 96)
		return 0;
	static const uint64_t b[] = { 0xffff800000000000ULL, 0x7ffffffff000ULL, U64MAX & ~(PAGE - 1),
				      0x1000 };
	return b[rnd(4)];
}
static uint64_t pick_len(void)
{
	int r = rnd(100);
	if (r < 50)
		return (1 + rnd(16)) * PAGE;
	if (r < 62)
		return (17 + rnd(240)) * PAGE;
	if (r < 68)
		return 0;
	if (r < 76)
		return chance(50) ? (1 + rnd(8)) * PAGE + 1 + rnd(PAGE - 1) : 1 + rnd(PAGE - 1);
	if (r < 84)
		return chance(50) ? (2ULL << 20) : (4ULL << 20);
	if (r < 90)
		return 1ULL << 40;
	if (r < 95)
		return U64MAX;
	static const uint64_t b[] = { 1ULL << 63, U64MAX - PAGE + 1, 1ULL << 32, 3ULL << 30 };
	return b[rnd(4)];
}
static uint64_t pick_iova(void)
{
	int r = rnd(100);
	if (r < 40)
		return (1ULL << 24) + rnd(8192) * PAGE;
	if (r < 58 && nmaps) {
		struct mapping *m = &maps[rnd(nmaps)];
		return m->iova + (chance(50) ? 0 : rnd(8) * PAGE);
	}
	if (r < 66)
		return chance(50) ? 0 : PAGE * (1 + rnd(16));
	if (r < 72)
		return (1ULL << 24) + rnd(1024) * PAGE + 1 + rnd(PAGE - 1);
	if (r < 80) {
		static const uint64_t b[] = { U64MAX - PAGE + 1, 1ULL << 47, 1ULL << 31,
					      (1ULL << 31) - PAGE, 1ULL << 63, U64MAX };
		return b[rnd(6)];
	}
	return (uint64_t)rnd(1u << 20) * PAGE;
}
/* a (iova, length) range to unmap/copy/access: mostly within or around a known mapping */
static uint64_t range_va; /* the user VA behind the range last chosen (0: none known) */
static void range_of(const struct mapping *m, uint64_t *iova, uint64_t *len)
{
	int k = rnd(6);
	uint64_t np = m->len / PAGE;
	if (k <= 1 || np < 2) { /* exact */
		*iova = m->iova;
		*len = m->len;
	} else if (k == 2) { /* head */
		*iova = m->iova;
		*len = (1 + rnd(np - 1)) * PAGE;
	} else if (k == 3) { /* tail or middle */
		uint64_t s = 1 + rnd(np - 1);
		*iova = m->iova + s * PAGE;
		*len = (1 + rnd(np - s)) * PAGE;
	} else if (k == 4) { /* covering */
		*iova = m->iova >= PAGE ? m->iova - PAGE : m->iova;
		*len = m->len + 2 * PAGE;
	} else { /* unaligned */
		*iova = m->iova + 1 + rnd(PAGE - 1);
		*len = m->len ? m->len : 1;
	}
	range_va = m->va ? m->va + (*iova - m->iova) : 0;
}
static void pick_range(uint32_t *ioas, uint64_t *iova, uint64_t *len)
{
	if (nmaps && chance(70)) {
		struct mapping *m = &maps[rnd(nmaps)];
		if (chance(70))
			*ioas = m->ioas;
		range_of(m, iova, len);
		return;
	}
	*iova = pick_iova();
	*len = pick_len();
	range_va = pick_va();
}
/* a range mostly in a mapping of the given IOAS */
static void pick_range_in(uint32_t want, uint64_t *iova, uint64_t *len)
{
	int idx[32], n = 0;
	for (int i = 0; i < nmaps; i++)
		if (maps[i].ioas == want)
			idx[n++] = i;
	if (!n || chance(12)) {
		uint32_t ioas = want;
		pick_range(&ioas, iova, len);
		return;
	}
	range_of(&maps[idx[rnd(n)]], iova, len);
}

/* the mapping record an (ioas, iova) falls in, for the VA behind a copy */
static uint64_t va_of(uint32_t ioas, uint64_t iova)
{
	for (int i = nmaps - 1; i >= 0; i--)
		if (maps[i].ioas == ioas && iova >= maps[i].iova && iova - maps[i].iova < maps[i].len)
			return maps[i].va ? maps[i].va + (iova - maps[i].iova) : 0;
	return 0;
}

/* ------------------------------------------------------------------ ioctl wrapper */
static uint8_t argbuf[512] __attribute__((aligned(16)));

/* Sometimes vary the struct's size word: smaller than the minimum (EINVAL), larger with a zero
 * tail (accepted) or a nonzero tail (E2BIG). Prints sz= when not the natural size. */
static uint32_t vary_size(uint32_t natural)
{
	int r = rnd(100);
	memset(argbuf + natural, 0, sizeof(argbuf) - natural);
	if (r < 92)
		return natural;
	if (r < 95) {
		out(" sz=%u", natural + 16);
		return natural + 16;
	}
	if (r < 97) {
		argbuf[natural + 3] = 1;
		out(" sz=%u+nz", natural + 16);
		return natural + 16;
	}
	out(" sz=4");
	return 4;
}

static int ioc(unsigned long req, void *arg)
{
	return ioctl(fd, req, arg);
}

/* ------------------------------------------------------------------ the ops */
static void op_ioas_alloc(void)
{
	struct iommu_ioas_alloc *c = (void *)argbuf;
	memset(argbuf, 0, sizeof(argbuf));
	begin("IOAS_ALLOC");
	c->flags = chance(95) ? 0 : 1u << rnd(32);
	if (c->flags)
		out(" flags=0x%x", c->flags);
	c->size = vary_size(sizeof(*c));
	c->out_ioas_id = 0;
	if (res(ioc(IOMMU_IOAS_ALLOC, c)) == 0) {
		out(" ioas=%u", c->out_ioas_id);
		newid(&ioas_ids, c->out_ioas_id);
	}
	end();
}

static void op_destroy(void)
{
	struct iommu_destroy *c = (void *)argbuf;
	memset(argbuf, 0, sizeof(argbuf));
	begin("DESTROY");
	int r = rnd(100);
	c->id = r < 30 ? pick(&ioas_ids) : r < 50 ? pick(&hwpt_ids) : r < 65 ? pick(&stdev_ids) :
		r < 75 ? pick(&idev_ids) : r < 82 ? pick(&fault_ids) : pick(&all_ids);
	out(" id=%u", c->id);
	c->size = vary_size(sizeof(*c));
	res(ioc(IOMMU_DESTROY, c));
	end();
}

static uint32_t pick_map_flags(int fixed)
{
	int r = rnd(100);
	uint32_t f = fixed ? IOMMU_IOAS_MAP_FIXED_IOVA : 0;
	if (r < 75)
		return f | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE;
	if (r < 83)
		return f | IOMMU_IOAS_MAP_READABLE;
	if (r < 88)
		return f | IOMMU_IOAS_MAP_WRITEABLE;
	if (r < 93)
		return f;
	return f | IOMMU_IOAS_MAP_READABLE | (1u << (3 + rnd(29)));
}

static void op_ioas_map(void)
{
	struct iommu_ioas_map *c = (void *)argbuf;
	memset(argbuf, 0, sizeof(argbuf));
	begin("IOAS_MAP");
	int fixed = chance(50);
	c->flags = pick_map_flags(fixed);
	c->ioas_id = pick(&ioas_ids);
	c->user_va = pick_va();
	c->length = pick_len();
	c->iova = fixed ? pick_iova() : (chance(80) ? 0 : pick_iova());
	if (chance(3))
		c->__reserved = 1;
	out(" ioas=%u flags=0x%x va=0x%llx len=0x%llx iova=0x%llx%s", c->ioas_id, c->flags,
	    (unsigned long long)c->user_va, (unsigned long long)c->length,
	    (unsigned long long)c->iova, c->__reserved ? " rsv=1" : "");
	c->size = vary_size(sizeof(*c));
	if (res(ioc(IOMMU_IOAS_MAP, c)) == 0) {
		out(" iova=0x%llx", (unsigned long long)c->iova);
		add_map(c->ioas_id, c->iova, c->length, c->user_va);
	}
	end();
}

static void op_ioas_unmap(void)
{
	struct iommu_ioas_unmap *c = (void *)argbuf;
	memset(argbuf, 0, sizeof(argbuf));
	begin("IOAS_UNMAP");
	uint32_t ioas = pick(&ioas_ids);
	uint64_t iova, len;
	if (chance(20)) {
		iova = 0;
		len = U64MAX;
	} else {
		pick_range(&ioas, &iova, &len);
	}
	c->ioas_id = ioas;
	c->iova = iova;
	c->length = len;
	out(" ioas=%u iova=0x%llx len=0x%llx", ioas, (unsigned long long)iova,
	    (unsigned long long)len);
	c->size = vary_size(sizeof(*c));
	int rc = res(ioc(IOMMU_IOAS_UNMAP, c));
	if (rc == 0)
		out(" unmapped=0x%llx", (unsigned long long)c->length);
	end();
}

static void op_ioas_copy(void)
{
	struct iommu_ioas_copy *c = (void *)argbuf;
	memset(argbuf, 0, sizeof(argbuf));
	begin("IOAS_COPY");
	uint32_t src = pick(&ioas_ids);
	uint64_t iova, len;
	pick_range(&src, &iova, &len);
	int fixed = chance(50);
	c->flags = pick_map_flags(fixed);
	c->src_ioas_id = src;
	c->dst_ioas_id = pick(&ioas_ids);
	c->src_iova = iova;
	c->length = len;
	c->dst_iova = fixed ? pick_iova() : 0;
	out(" dst=%u src=%u flags=0x%x src_iova=0x%llx len=0x%llx dst_iova=0x%llx",
	    c->dst_ioas_id, c->src_ioas_id, c->flags, (unsigned long long)c->src_iova,
	    (unsigned long long)c->length, (unsigned long long)c->dst_iova);
	c->size = vary_size(sizeof(*c));
	if (res(ioc(IOMMU_IOAS_COPY, c)) == 0) {
		out(" dst_iova=0x%llx", (unsigned long long)c->dst_iova);
		add_map(c->dst_ioas_id, c->dst_iova, c->length, va_of(c->src_ioas_id, c->src_iova));
	}
	end();
}

static void op_iova_ranges(void)
{
	struct iommu_ioas_iova_ranges *c = (void *)argbuf;
	struct iommu_iova_range *rg = (void *)(uintptr_t)SCRATCH_BASE;
	memset(argbuf, 0, sizeof(argbuf));
	memset(rg, 0xa5, 16 * sizeof(*rg));
	begin("IOVA_RANGES");
	static const uint32_t caps[] = { 0, 1, 2, 3, 8 };
	uint32_t cap = caps[rnd(5)];
	c->ioas_id = pick(&ioas_ids);
	c->num_iovas = cap;
	c->allowed_iovas = chance(95) ? SCRATCH_BASE : HOLE_BASE;
	if (chance(3))
		c->__reserved = 1;
	out(" ioas=%u cap=%u%s%s", c->ioas_id, cap, c->allowed_iovas == HOLE_BASE ? " buf=hole" : "",
	    c->__reserved ? " rsv=1" : "");
	c->size = vary_size(sizeof(*c));
	int rc = res(ioc(IOMMU_IOAS_IOVA_RANGES, c));
	if (rc == 0 || rc == -EMSGSIZE) {
		out(" num=%u align=0x%llx", c->num_iovas, (unsigned long long)c->out_iova_alignment);
		if (c->allowed_iovas == SCRATCH_BASE)
			for (uint32_t i = 0; i < c->num_iovas && i < cap; i++)
				out(" [0x%llx,0x%llx]", (unsigned long long)rg[i].start,
				    (unsigned long long)rg[i].last);
	}
	end();
}

static void pick_iova_range(struct iommu_iova_range *r)
{
	int k = rnd(100);
	if (k < 25) {
		r->start = 1ULL << 24;
		r->last = (1ULL << 31) - 1;
	} else if (k < 35) {
		r->start = 0;
		r->last = U64MAX;
	} else if (k < 65) {
		r->start = (1ULL << 24) + rnd(4096) * PAGE;
		r->last = r->start + (1 + rnd(4096)) * PAGE - 1;
	} else if (k < 75) {
		r->start = PAGE * (1 + rnd(64));
		r->last = r->start - PAGE * (1 + rnd(2)); /* inverted */
	} else if (k < 85) {
		r->start = (1ULL << 24) + 1 + rnd(100);
		r->last = r->start + rnd(1 << 20);
	} else {
		r->start = (uint64_t)rnd(1u << 20) * PAGE;
		r->last = r->start + (1ULL << (12 + rnd(30))) - 1;
	}
}

static void op_allow_iovas(void)
{
	struct iommu_ioas_allow_iovas *c = (void *)argbuf;
	struct iommu_iova_range *rg = (void *)(uintptr_t)SCRATCH_BASE;
	memset(argbuf, 0, sizeof(argbuf));
	begin("ALLOW_IOVAS");
	c->ioas_id = pick(&ioas_ids);
	c->num_iovas = rnd(4);
	c->allowed_iovas = SCRATCH_BASE;
	out(" ioas=%u n=%u", c->ioas_id, c->num_iovas);
	for (uint32_t i = 0; i < c->num_iovas; i++) {
		pick_iova_range(&rg[i]);
		out(" [0x%llx,0x%llx]", (unsigned long long)rg[i].start,
		    (unsigned long long)rg[i].last);
	}
	c->size = vary_size(sizeof(*c));
	res(ioc(IOMMU_IOAS_ALLOW_IOVAS, c));
	end();
}

static void op_option(void)
{
	struct iommu_option *c = (void *)argbuf;
	memset(argbuf, 0, sizeof(argbuf));
	begin("OPTION");
	int r = rnd(100);
	c->option_id = r < 40 ? IOMMU_OPTION_RLIMIT_MODE : r < 92 ? IOMMU_OPTION_HUGE_PAGES : 2 + rnd(5);
	c->op = chance(92) ? (chance(50) ? IOMMU_OPTION_OP_SET : IOMMU_OPTION_OP_GET) : 2 + rnd(3);
	if (c->option_id == IOMMU_OPTION_RLIMIT_MODE)
		c->object_id = chance(85) ? 0 : pick(&ioas_ids);
	else
		c->object_id = pick(&ioas_ids);
	c->val64 = chance(90) ? rnd(2) : 2 + rnd(3);
	if (chance(3))
		c->__reserved = 1;
	out(" opt=%u op=%u obj=%u val=%llu%s", c->option_id, c->op, c->object_id,
	    (unsigned long long)c->val64, c->__reserved ? " rsv=1" : "");
	c->size = vary_size(sizeof(*c));
	if (res(ioc(IOMMU_OPTION, c)) == 0)
		out(" val=%llu", (unsigned long long)c->val64);
	end();
}

/* ---- IOMMU_TEST_CMD */
static struct iommu_test_cmd *tcmd(uint32_t op)
{
	struct iommu_test_cmd *c = (void *)argbuf;
	memset(argbuf, 0, sizeof(argbuf));
	c->size = sizeof(*c);
	c->op = op;
	return c;
}

static void op_mock_domain(int with_flags)
{
	struct iommu_test_cmd *c = tcmd(with_flags ? IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS :
						     IOMMU_TEST_OP_MOCK_DOMAIN);
	begin(with_flags ? "MOCK_DOMAIN_FLAGS" : "MOCK_DOMAIN");
	c->id = chance(80) ? pick(&ioas_ids) : pick(&hwpt_ids);
	uint32_t fl = 0;
	if (with_flags) {
		static const uint32_t f[] = { 0, MOCK_FLAGS_DEVICE_NO_DIRTY,
					      MOCK_FLAGS_DEVICE_HUGE_IOVA,
					      MOCK_FLAGS_DEVICE_NO_DIRTY | MOCK_FLAGS_DEVICE_HUGE_IOVA,
					      1u << 2, 1u << 7 };
		fl = f[rnd(6)];
		c->mock_domain_flags.dev_flags = fl;
		out(" pt=%u dev_flags=0x%x", c->id, fl);
	} else {
		out(" pt=%u", c->id);
	}
	if (res(ioc(IOMMU_TEST_CMD, c)) == 0) {
		out(" stdev=%u hwpt=%u idev=%u", c->mock_domain.out_stdev_id,
		    c->mock_domain.out_hwpt_id, c->mock_domain.out_idev_id);
		newid(&stdev_ids, c->mock_domain.out_stdev_id);
		newid(&hwpt_ids, c->mock_domain.out_hwpt_id);
		set_owner(c->mock_domain.out_hwpt_id, owner_of(c->id));
		newid(&idev_ids, c->mock_domain.out_idev_id);
		/* dirty tracking on a huge-IOVA mock domain reports per physical run (contiguity
		 * of the backing pages), which is environment dependent: keep those apart */
		if (!(fl & MOCK_FLAGS_DEVICE_HUGE_IOVA))
			push(&idev_nodirty, c->mock_domain.out_idev_id);
	}
	end();
}

static void op_mock_replace(void)
{
	struct iommu_test_cmd *c = tcmd(IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE);
	begin("MOCK_DOMAIN_REPLACE");
	c->id = pick(&stdev_ids);
	int r = rnd(100);
	c->mock_domain_replace.pt_id = r < 35 ? pick(&ioas_ids) : r < 55 ? pick(&nested_ids) :
					r < 70 ? pick(&parent_ids) : pick(&hwpt_ids);
	out(" stdev=%u pt=%u", c->id, c->mock_domain_replace.pt_id);
	if (res(ioc(IOMMU_TEST_CMD, c)) == 0)
		out(" hwpt=%u", c->mock_domain_replace.pt_id);
	end();
}

static void op_add_reserved(void)
{
	struct iommu_test_cmd *c = tcmd(IOMMU_TEST_OP_ADD_RESERVED);
	begin("ADD_RESERVED");
	c->id = pick(&ioas_ids);
	uint32_t ioas = c->id;
	uint64_t iova, len;
	pick_range(&ioas, &iova, &len);
	c->add_reserved.start = iova;
	c->add_reserved.length = len;
	out(" ioas=%u start=0x%llx len=0x%llx", c->id, (unsigned long long)iova,
	    (unsigned long long)len);
	res(ioc(IOMMU_TEST_CMD, c));
	end();
}

static int pick_access(int *slot)
{
	int r = rnd(100);
	int live[8], nl = 0;
	for (int i = 0; i < naccs; i++)
		if (accs[i].live)
			live[nl++] = i;
	if (nl && r < 80) {
		*slot = live[rnd(nl)];
		return accs[*slot].fd;
	}
	if (naccs && r < 90) {
		*slot = rnd(naccs);
		return accs[*slot].fd;
	}
	*slot = -1;
	return r < 95 ? 1000 : 0x7fffffff;
}
static void out_acc(int slot)
{
	if (slot >= 0)
		out(" acc=#%d%s", slot, accs[slot].live ? "" : "(closed)");
	else
		out(" acc=bogus");
}

static void op_create_access(void)
{
	struct iommu_test_cmd *c = tcmd(IOMMU_TEST_OP_CREATE_ACCESS);
	begin("CREATE_ACCESS");
	c->id = pick(&ioas_ids);
	c->create_access.flags = chance(70) ? MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES :
					      chance(85) ? 0 : 2;
	out(" ioas=%u flags=0x%x", c->id, c->create_access.flags);
	if (res(ioc(IOMMU_TEST_CMD, c)) == 0) {
		int slot;
		if (naccs < 8) {
			slot = naccs++;
		} else {
			slot = rnd(8);
			if (accs[slot].live)
				close(accs[slot].fd);
		}
		accs[slot].fd = (int)c->create_access.out_access_fd;
		accs[slot].live = 1;
		accs[slot].ioas = c->id;
		accs[slot].npages = 0;
		out(" acc=#%d", slot);
	}
	end();
}

static void op_destroy_access(void)
{
	begin("DESTROY_ACCESS");
	if (!naccs) {
		out(" none -> skip");
		end();
		return;
	}
	int slot = rnd(naccs);
	out_acc(slot);
	if (accs[slot].live) {
		res(close(accs[slot].fd));
		accs[slot].live = 0;
	} else {
		out(" -> skip");
	}
	end();
}

static void op_access_replace(void)
{
	int slot;
	struct iommu_test_cmd *c = tcmd(IOMMU_TEST_OP_ACCESS_REPLACE_IOAS);
	begin("ACCESS_REPLACE_IOAS");
	c->id = (uint32_t)pick_access(&slot);
	out_acc(slot);
	c->access_replace_ioas.ioas_id = pick(&ioas_ids);
	out(" ioas=%u", c->access_replace_ioas.ioas_id);
	if (res(ioc(IOMMU_TEST_CMD, c)) == 0 && slot >= 0)
		accs[slot].ioas = c->access_replace_ioas.ioas_id;
	end();
}

static void op_access_pages(void)
{
	int slot;
	struct iommu_test_cmd *c = tcmd(IOMMU_TEST_OP_ACCESS_PAGES);
	begin("ACCESS_PAGES");
	c->id = (uint32_t)pick_access(&slot);
	uint32_t ioas = 0;
	uint64_t iova, len;
	if (slot >= 0)
		pick_range_in(accs[slot].ioas, &iova, &len);
	else
		pick_range(&ioas, &iova, &len);
	if (len > (64 * PAGE) && chance(80))
		len = (1 + rnd(16)) * PAGE;
	c->access_pages.iova = iova;
	c->access_pages.length = len;
	int u = rnd(100);
	c->access_pages.uptr = u < 75 && range_va ? range_va : u < 88 ? 0 : pick_va();
	c->access_pages.flags = chance(50) ? MOCK_FLAGS_ACCESS_WRITE : chance(90) ? 0 : 2;
	out_acc(slot);
	out(" flags=0x%x iova=0x%llx len=0x%llx uptr=0x%llx", c->access_pages.flags,
	    (unsigned long long)iova, (unsigned long long)len,
	    (unsigned long long)c->access_pages.uptr);
	if (res(ioc(IOMMU_TEST_CMD, c)) == 0) {
		out(" pages_id=%u", c->access_pages.out_access_pages_id);
		if (slot >= 0 && accs[slot].npages < 8)
			accs[slot].pages[accs[slot].npages++] = c->access_pages.out_access_pages_id;
	}
	end();
}

static void op_destroy_access_pages(void)
{
	int slot;
	struct iommu_test_cmd *c = tcmd(IOMMU_TEST_OP_DESTROY_ACCESS_PAGES);
	begin("DESTROY_ACCESS_PAGES");
	c->id = (uint32_t)pick_access(&slot);
	if (slot >= 0 && accs[slot].npages && chance(80))
		c->destroy_access_pages.access_pages_id = accs[slot].pages[rnd(accs[slot].npages)];
	else
		c->destroy_access_pages.access_pages_id = rnd(6);
	out_acc(slot);
	out(" pages_id=%u", c->destroy_access_pages.access_pages_id);
	res(ioc(IOMMU_TEST_CMD, c));
	end();
}

static uint64_t fnv(const uint8_t *p, uint64_t n)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (uint64_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ULL;
	return h;
}

/* dump mode: the runs of pool/huge pages whose contents are no longer the initial pattern */
static void dump_changed(void)
{
	static const uint64_t reg[2][2] = { { POOL_BASE, POOL_SIZE }, { HUGE_BASE, HUGE_SIZE } };
	begin("#changed");
	for (int r = 0; r < 2; r++) {
		int64_t run = -1;
		for (uint64_t a = reg[r][0]; a <= reg[r][0] + reg[r][1]; a += PAGE) {
			int ch = 0;
			if (a < reg[r][0] + reg[r][1]) {
				const uint64_t *w = (const uint64_t *)(uintptr_t)a;
				for (uint64_t i = 0; i < PAGE / 8 && !ch; i++)
					ch = w[i] != (a + i * 8) * 0x9e3779b97f4a7c15ULL;
			}
			if (ch && run < 0)
				run = (int64_t)a;
			if (!ch && run >= 0) {
				out(" [0x%llx,0x%llx)", (unsigned long long)run, (unsigned long long)a);
				run = -1;
			}
		}
	}
	end();
}

static void op_access_rw(void)
{
	int slot;
	struct iommu_test_cmd *c = tcmd(IOMMU_TEST_OP_ACCESS_RW);
	begin("ACCESS_RW");
	c->id = (uint32_t)pick_access(&slot);
	uint32_t ioas = 0;
	uint64_t iova, len;
	if (slot >= 0)
		pick_range_in(accs[slot].ioas, &iova, &len);
	else
		pick_range(&ioas, &iova, &len);
	if (chance(60) || len > (1ULL << 32))
		len = chance(50) ? 1 + rnd(3 * PAGE) : (1 + rnd(8)) * PAGE;
	if (chance(30))
		iova += rnd(PAGE);
	int write = chance(40);
	c->access_rw.iova = iova;
	c->access_rw.length = len;
	c->access_rw.flags = (write ? MOCK_ACCESS_RW_WRITE : 0) |
			     (chance(30) ? MOCK_ACCESS_RW_SLOW_PATH : 0) | (chance(5) ? 2 : 0);
	uint8_t *buf = (uint8_t *)(uintptr_t)SCRATCH_BASE;
	int in_hole = chance(4);
	c->access_rw.uptr = in_hole ? HOLE_BASE : SCRATCH_BASE;
	uint64_t n = len < SCRATCH_SIZE ? len : SCRATCH_SIZE;
	for (uint64_t i = 0; i < n; i++)
		buf[i] = write ? (uint8_t)(opno * 7 + i * 13) : 0;
	if (dump && !write) {
		dump_changed();
		begin("ACCESS_RW");
	}
	out_acc(slot);
	out(" flags=0x%x iova=0x%llx len=0x%llx%s", c->access_rw.flags, (unsigned long long)iova,
	    (unsigned long long)len, in_hole ? " buf=hole" : "");
	int rc = res(ioc(IOMMU_TEST_CMD, c));
	if (rc == 0 && write && dump) {
		end();
		dump_changed();
		return;
	}
	if (rc == 0 && !write && !in_hole) {
		out(" sum=%016llx", (unsigned long long)fnv(buf, n));
		if (dump) {
			end();
			begin("#data");
			for (uint64_t i = 0; i < n && linelen < sizeof(line) - 8; i++)
				out("%s%02x", i % 256 ? "" : " ", buf[i]);
		}
	}
	end();
}

/* ---- HWPT */
static void op_hwpt_alloc(void)
{
	struct iommu_hwpt_alloc *c = (void *)argbuf;
	struct iommu_hwpt_selftest *data = (void *)(uintptr_t)(SCRATCH_BASE + 0x8000);
	memset(argbuf, 0, sizeof(argbuf));
	begin("HWPT_ALLOC");
	int kind = rnd(100);
	const char *what;
	int dirty = 0, nested = 0, parent = 0;
	c->data_type = IOMMU_HWPT_DATA_NONE;
	if (kind >= 45 && kind < 80 && !parent_ids.n && chance(80))
		kind = 0; /* make a parent first */
	if (kind < 45) { /* paging on an IOAS */
		static const uint32_t f[] = { 0, IOMMU_HWPT_ALLOC_NEST_PARENT,
					      IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
					      IOMMU_HWPT_ALLOC_NEST_PARENT |
						      IOMMU_HWPT_ALLOC_DIRTY_TRACKING };
		c->flags = f[rnd(4)];
		dirty = !!(c->flags & IOMMU_HWPT_ALLOC_DIRTY_TRACKING);
		parent = !!(c->flags & IOMMU_HWPT_ALLOC_NEST_PARENT);
		c->dev_id = dirty ? pick(&idev_nodirty) : pick(&idev_ids);
		c->pt_id = pick(&ioas_ids);
		what = "paging";
	} else if (kind < 80) { /* nested on a parent */
		c->flags = chance(90) ? 0 : IOMMU_HWPT_ALLOC_DIRTY_TRACKING;
		c->dev_id = pick(&idev_ids);
		c->pt_id = chance(80) ? pick(&parent_ids) : pick(&hwpt_ids);
		c->data_type = chance(90) ? IOMMU_HWPT_DATA_SELFTEST : IOMMU_HWPT_DATA_VTD_S1;
		c->data_len = chance(85) ? sizeof(*data) : rnd(3) * 4;
		data->iotlb = chance(80) ? IOMMU_TEST_IOTLB_DEFAULT : rnd(3);
		c->data_uptr = chance(95) ? SCRATCH_BASE + 0x8000 : HOLE_BASE;
		if (chance(20) && fault_ids.n) {
			c->flags |= IOMMU_HWPT_FAULT_ID_VALID;
			c->fault_id = pick(&fault_ids);
		}
		nested = 1;
		what = "nested";
	} else { /* anything */
		c->flags = chance(50) ? (1u << rnd(5)) : rnd(8);
		c->dev_id = chance(70) ? pick(&idev_ids) : pick(&all_ids);
		c->pt_id = pick(&all_ids);
		c->data_type = chance(60) ? IOMMU_HWPT_DATA_NONE : chance(50) ? IOMMU_HWPT_DATA_SELFTEST :
										 rnd(4);
		c->data_len = chance(50) ? 0 : sizeof(*data);
		data->iotlb = IOMMU_TEST_IOTLB_DEFAULT;
		c->data_uptr = c->data_len ? SCRATCH_BASE + 0x8000 : 0;
		if (c->flags & IOMMU_HWPT_FAULT_ID_VALID)
			c->fault_id = pick(&fault_ids);
		if (chance(3))
			c->__reserved = 1;
		what = "any";
		if (c->flags & IOMMU_HWPT_ALLOC_DIRTY_TRACKING) /* see op_mock_domain */
			c->dev_id = pick(&idev_nodirty);
	}
	out(" %s dev=%u pt=%u flags=0x%x type=0x%x dlen=%u", what, c->dev_id, c->pt_id, c->flags,
	    c->data_type, c->data_len);
	if (c->data_len && c->data_uptr != HOLE_BASE)
		out(" iotlb=0x%x", data->iotlb);
	if (c->data_uptr == HOLE_BASE)
		out(" data=hole");
	if (c->flags & IOMMU_HWPT_FAULT_ID_VALID)
		out(" fault=%u", c->fault_id);
	if (c->__reserved)
		out(" rsv=1");
	c->size = vary_size(sizeof(*c));
	if (res(ioc(IOMMU_HWPT_ALLOC, c)) == 0) {
		out(" hwpt=%u", c->out_hwpt_id);
		newid(&hwpt_ids, c->out_hwpt_id);
		set_owner(c->out_hwpt_id, owner_of(c->pt_id));
		if (parent || (!nested && (c->flags & IOMMU_HWPT_ALLOC_NEST_PARENT)))
			push(&parent_ids, c->out_hwpt_id);
		if (nested || c->data_type == IOMMU_HWPT_DATA_SELFTEST)
			push(&nested_ids, c->out_hwpt_id);
		if (c->flags & IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
			push(&dirty_ids, c->out_hwpt_id);
	}
	end();
}

static void op_set_dirty(void)
{
	struct iommu_hwpt_set_dirty_tracking *c = (void *)argbuf;
	memset(argbuf, 0, sizeof(argbuf));
	begin("SET_DIRTY_TRACKING");
	c->hwpt_id = chance(75) ? pick(&dirty_ids) : pick(&hwpt_ids);
	c->flags = chance(90) ? (chance(60) ? IOMMU_HWPT_DIRTY_TRACKING_ENABLE : 0) : 2;
	if (chance(3))
		c->__reserved = 1;
	out(" hwpt=%u flags=0x%x%s", c->hwpt_id, c->flags, c->__reserved ? " rsv=1" : "");
	c->size = vary_size(sizeof(*c));
	res(ioc(IOMMU_HWPT_SET_DIRTY_TRACKING, c));
	end();
}

static uint64_t dirty_page_size(void)
{
	static const uint64_t ps[] = { PAGE, PAGE, PAGE, 2048, 8192, 2ULL << 20, 0, 3000 };
	return ps[rnd(8)];
}

static uint64_t popcount_buf(const uint8_t *p, uint64_t n)
{
	uint64_t k = 0;
	for (uint64_t i = 0; i < n; i++)
		k += __builtin_popcount(p[i]);
	return k;
}

static void op_get_dirty(void)
{
	struct iommu_hwpt_get_dirty_bitmap *c = (void *)argbuf;
	uint8_t *bm = (uint8_t *)(uintptr_t)SCRATCH_BASE;
	memset(argbuf, 0, sizeof(argbuf));
	memset(bm, 0, SCRATCH_SIZE);
	begin("GET_DIRTY_BITMAP");
	uint64_t iova, len;
	c->hwpt_id = chance(80) ? pick(&dirty_ids) : pick(&hwpt_ids);
	pick_range_in(owner_of(c->hwpt_id), &iova, &len);
	c->flags = chance(90) ? (chance(50) ? IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR : 0) : 2;
	c->iova = iova;
	c->length = len;
	c->page_size = dirty_page_size();
	c->data = chance(95) ? SCRATCH_BASE : HOLE_BASE;
	if (chance(3))
		c->__reserved = 1;
	out(" hwpt=%u flags=0x%x iova=0x%llx len=0x%llx pgsz=0x%llx%s%s", c->hwpt_id, c->flags,
	    (unsigned long long)iova, (unsigned long long)len, (unsigned long long)c->page_size,
	    c->data == HOLE_BASE ? " data=hole" : "", c->__reserved ? " rsv=1" : "");
	c->size = vary_size(sizeof(*c));
	if (res(ioc(IOMMU_HWPT_GET_DIRTY_BITMAP, c)) == 0)
		out(" dirty_bits=%llu", (unsigned long long)popcount_buf(bm, SCRATCH_SIZE));
	end();
}

static void op_test_dirty(void)
{
	struct iommu_test_cmd *c = tcmd(IOMMU_TEST_OP_DIRTY);
	uint64_t *bm = (uint64_t *)(uintptr_t)SCRATCH_BASE;
	begin("TEST_DIRTY");
	uint64_t iova, len;
	c->id = chance(80) ? pick(&dirty_ids) : pick(&hwpt_ids);
	pick_range_in(owner_of(c->id), &iova, &len);
	if (len > (16ULL << 20) && chance(80))
		len = (1 + rnd(64)) * PAGE;
	c->dirty.iova = iova;
	c->dirty.length = len;
	c->dirty.page_size = dirty_page_size();
	c->dirty.uptr = SCRATCH_BASE;
	uint64_t pat = chance(50) ? 0x5555555555555555ULL : U64MAX;
	for (uint64_t i = 0; i < SCRATCH_SIZE / 8; i++)
		bm[i] = pat;
	out(" hwpt=%u iova=0x%llx len=0x%llx pgsz=0x%llx pat=%s", c->id, (unsigned long long)iova,
	    (unsigned long long)len, (unsigned long long)c->dirty.page_size,
	    pat == U64MAX ? "all" : "even");
	if (res(ioc(IOMMU_TEST_CMD, c)) == 0)
		out(" nr_dirty=%llu", (unsigned long long)c->dirty.out_nr_dirty);
	end();
}

static void op_invalidate(void)
{
	struct iommu_hwpt_invalidate *c = (void *)argbuf;
	struct iommu_hwpt_invalidate_selftest *e = (void *)(uintptr_t)SCRATCH_BASE;
	memset(argbuf, 0, sizeof(argbuf));
	begin("HWPT_INVALIDATE");
	c->hwpt_id = chance(80) ? pick(&nested_ids) : pick(&hwpt_ids);
	int r = rnd(100);
	c->data_type = r < 80 ? IOMMU_HWPT_INVALIDATE_DATA_SELFTEST :
		       r < 88 ? IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID :
		       r < 94 ? IOMMU_HWPT_INVALIDATE_DATA_VTD_S1 : 0x1234;
	c->entry_len = chance(85) ? sizeof(*e) : (chance(50) ? 4 : 16);
	c->entry_num = rnd(4);
	c->data_uptr = chance(95) ? SCRATCH_BASE : (chance(50) ? 0 : HOLE_BASE);
	uint8_t *raw = (uint8_t *)(uintptr_t)SCRATCH_BASE;
	memset(raw, 0, 256);
	out(" hwpt=%u type=0x%x elen=%u n=%u", c->hwpt_id, c->data_type, c->entry_len, c->entry_num);
	if (c->data_uptr != SCRATCH_BASE)
		out(" data=%s", c->data_uptr ? "hole" : "null");
	for (uint32_t i = 0; i < c->entry_num; i++) {
		struct iommu_hwpt_invalidate_selftest *x = (void *)(raw + (uint64_t)i * c->entry_len);
		x->flags = chance(25) ? IOMMU_TEST_INVALIDATE_FLAG_ALL : chance(90) ? 0 : 2;
		x->iotlb_id = chance(90) ? rnd(4) : 4 + rnd(3);
		out(" {f=%u id=%u}", x->flags, x->iotlb_id);
	}
	if (chance(3))
		c->__reserved = 1, out(" rsv=1");
	c->size = vary_size(sizeof(*c));
	res(ioc(IOMMU_HWPT_INVALIDATE, c));
	out(" n=%u", c->entry_num);
	end();
}

static void op_check_iotlb(void)
{
	struct iommu_test_cmd *c = tcmd(IOMMU_TEST_OP_MD_CHECK_IOTLB);
	begin("CHECK_IOTLB");
	c->id = chance(85) ? pick(&nested_ids) : pick(&hwpt_ids);
	c->check_iotlb.id = chance(90) ? rnd(4) : 4 + rnd(2);
	c->check_iotlb.iotlb = chance(50) ? IOMMU_TEST_IOTLB_DEFAULT : 0;
	out(" hwpt=%u idx=%u expect=0x%x", c->id, c->check_iotlb.id, c->check_iotlb.iotlb);
	res(ioc(IOMMU_TEST_CMD, c));
	end();
}

static void op_fault_alloc(void)
{
	struct iommu_fault_alloc *c = (void *)argbuf;
	memset(argbuf, 0, sizeof(argbuf));
	begin("FAULT_QUEUE_ALLOC");
	c->flags = chance(92) ? 0 : 1;
	if (c->flags)
		out(" flags=0x%x", c->flags);
	c->size = vary_size(sizeof(*c));
	if (res(ioc(IOMMU_FAULT_QUEUE_ALLOC, c)) == 0) {
		out(" fault=%u", c->out_fault_id);
		newid(&fault_ids, c->out_fault_id);
		if (nfaults < 8)
			fault_fds[nfaults++] = (int)c->out_fault_fd;
	}
	end();
}

static void op_hw_info(void)
{
	struct iommu_hw_info *c = (void *)argbuf;
	uint32_t *data = (uint32_t *)(uintptr_t)SCRATCH_BASE;
	memset(argbuf, 0, sizeof(argbuf));
	memset(data, 0xcc, 64);
	begin("GET_HW_INFO");
	c->dev_id = chance(80) ? pick(&idev_ids) : pick(&all_ids);
	static const uint32_t lens[] = { 0, 4, 8, 8, 16, 3 };
	c->data_len = lens[rnd(6)];
	c->data_uptr = c->data_len ? (chance(95) ? SCRATCH_BASE : HOLE_BASE) : (chance(50) ? 0 : SCRATCH_BASE);
	c->flags = chance(92) ? 0 : 1u << rnd(4);
	if (chance(3))
		c->__reserved[0] = 1;
	out(" dev=%u dlen=%u flags=0x%x%s%s", c->dev_id, c->data_len, c->flags,
	    c->data_uptr == HOLE_BASE ? " data=hole" : "", c->__reserved[0] ? " rsv=1" : "");
	c->size = vary_size(sizeof(*c));
	if (res(ioc(IOMMU_GET_HW_INFO, c)) == 0) {
		out(" type=0x%x dlen=%u caps=0x%llx pasid_log2=%u", c->out_data_type, c->data_len,
		    (unsigned long long)c->out_capabilities, c->out_max_pasid_log2);
		if (c->data_uptr == SCRATCH_BASE)
			out(" data=%08x,%08x,%08x,%08x", data[0], data[1], data[2], data[3]);
	}
	end();
}

/* ---- VFIO compatibility on the iommufd fd */
static void op_vfio_ioas(void)
{
	struct iommu_vfio_ioas *c = (void *)argbuf;
	memset(argbuf, 0, sizeof(argbuf));
	begin("VFIO_IOAS");
	int r = rnd(100);
	c->op = r < 40 ? IOMMU_VFIO_IOAS_SET : r < 75 ? IOMMU_VFIO_IOAS_GET :
		r < 92 ? IOMMU_VFIO_IOAS_CLEAR : 3 + rnd(3);
	c->ioas_id = c->op == IOMMU_VFIO_IOAS_SET ? pick(&ioas_ids) : (chance(80) ? 0 : pick(&ioas_ids));
	if (chance(3))
		c->__reserved = 1;
	out(" op=%u ioas=%u%s", c->op, c->ioas_id, c->__reserved ? " rsv=1" : "");
	c->size = vary_size(sizeof(*c));
	if (res(ioc(IOMMU_VFIO_IOAS, c)) == 0) {
		out(" ioas=%u", c->ioas_id);
		vfio_ioas_set = c->ioas_id;
	}
	end();
}

static void op_vfio_simple(void)
{
	int r = rnd(100);
	if (r < 25) {
		begin("VFIO_GET_API_VERSION");
		res(ioctl(fd, VFIO_GET_API_VERSION));
	} else if (r < 65) {
		unsigned long ext = rnd(12);
		if (ext == 8) /* VFIO_NOIOMMU_IOMMU: a kernel config choice (CONFIG_VFIO_NOIOMMU) */
			ext = 9;
		begin("VFIO_CHECK_EXTENSION");
		out(" ext=%lu", ext);
		res(ioctl(fd, VFIO_CHECK_EXTENSION, ext));
	} else {
		static const unsigned long t[] = { VFIO_TYPE1_IOMMU, VFIO_TYPE1v2_IOMMU,
						   VFIO_TYPE1v2_IOMMU, 0, 2, 6 };
		unsigned long type = t[rnd(6)];
		begin("VFIO_SET_IOMMU");
		out(" type=%lu", type);
		res(ioctl(fd, VFIO_SET_IOMMU, type));
	}
	end();
}

static void op_vfio_map(void)
{
	struct vfio_iommu_type1_dma_map *c = (void *)argbuf;
	memset(argbuf, 0, sizeof(argbuf));
	begin("VFIO_MAP_DMA");
	c->argsz = chance(92) ? sizeof(*c) : (chance(50) ? 8 : sizeof(*c) + 8);
	int r = rnd(100);
	c->flags = r < 80 ? VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE :
		   r < 88 ? VFIO_DMA_MAP_FLAG_READ : r < 93 ? 0 : VFIO_DMA_MAP_FLAG_VADDR | 3;
	c->vaddr = pick_va();
	c->iova = pick_iova();
	c->size = pick_len();
	out(" argsz=%u flags=0x%x va=0x%llx iova=0x%llx size=0x%llx", c->argsz, c->flags,
	    (unsigned long long)c->vaddr, (unsigned long long)c->iova, (unsigned long long)c->size);
	uint64_t iova = c->iova, len = c->size;
	if (res(ioctl(fd, VFIO_IOMMU_MAP_DMA, c)) == 0 && vfio_ioas_set)
		add_map(vfio_ioas_set, iova, len, c->vaddr);
	end();
}

static void op_vfio_unmap(void)
{
	struct vfio_iommu_type1_dma_unmap *c = (void *)argbuf;
	memset(argbuf, 0, sizeof(argbuf));
	begin("VFIO_UNMAP_DMA");
	c->argsz = chance(92) ? sizeof(*c) : (chance(50) ? 8 : sizeof(*c) + 8);
	int r = rnd(100);
	uint32_t ioas = 0;
	uint64_t iova, len;
	pick_range(&ioas, &iova, &len);
	if (r < 75) {
		c->flags = 0;
	} else if (r < 90) {
		c->flags = VFIO_DMA_UNMAP_FLAG_ALL;
		if (chance(80))
			iova = len = 0;
	} else {
		c->flags = chance(50) ? VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP : VFIO_DMA_UNMAP_FLAG_VADDR;
	}
	c->iova = iova;
	c->size = len;
	out(" argsz=%u flags=0x%x iova=0x%llx size=0x%llx", c->argsz, c->flags,
	    (unsigned long long)iova, (unsigned long long)len);
	int rc = res(ioctl(fd, VFIO_IOMMU_UNMAP_DMA, c));
	if (rc == 0)
		out(" unmapped=0x%llx", (unsigned long long)c->size);
	end();
}

static void op_vfio_info(void)
{
	struct vfio_iommu_type1_info *c = (void *)(uintptr_t)SCRATCH_BASE;
	memset(c, 0, 1024);
	begin("VFIO_GET_INFO");
	static const uint32_t sz[] = { 8, 16, sizeof(*c), 40, 64, 256, 1024 };
	uint32_t argsz = sz[rnd(7)];
	c->argsz = argsz;
	out(" argsz=%u", argsz);
	if (res(ioctl(fd, VFIO_IOMMU_GET_INFO, c)) == 0) {
		out(" argsz=%u flags=0x%x pgsizes=0x%llx", c->argsz, c->flags,
		    (unsigned long long)c->iova_pgsizes);
		if (argsz >= sizeof(*c))
			out(" cap_offset=%u", c->cap_offset);
		/* walk the capability chain within what we gave */
		uint32_t off = argsz >= sizeof(*c) ? c->cap_offset : 0;
		int guard = 0;
		while (off && off + sizeof(struct vfio_info_cap_header) <= argsz && guard++ < 8) {
			struct vfio_info_cap_header *h = (void *)((uint8_t *)c + off);
			out(" cap{id=%u v=%u", h->id, h->version);
			if (h->id == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE) {
				struct vfio_iommu_type1_info_cap_iova_range *ir = (void *)h;
				out(" n=%u", ir->nr_iovas);
				for (uint32_t i = 0; i < ir->nr_iovas && i < 8 &&
						     off + sizeof(*ir) + (i + 1) * 16 <= argsz;
				     i++)
					out(" [0x%llx,0x%llx]",
					    (unsigned long long)ir->iova_ranges[i].start,
					    (unsigned long long)ir->iova_ranges[i].end);
			} else if (h->id == VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL) {
				struct vfio_iommu_type1_info_dma_avail *da = (void *)h;
				out(" avail=%u", da->avail);
			}
			out("}");
			off = h->next;
		}
	}
	end();
}

/* ------------------------------------------------------------------ setup and main */
static void map_fixed(uint64_t addr, uint64_t size, int prot, const char *what)
{
	void *p = mmap((void *)(uintptr_t)addr, size, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (p != (void *)(uintptr_t)addr) {
		fprintf(stderr, "gen: cannot map %s at 0x%llx: %s\n", what,
			(unsigned long long)addr, strerror(errno));
		exit(2);
	}
	uint64_t *w = p;
	for (uint64_t i = 0; i < size / 8; i++)
		w[i] = (addr + i * 8) * 0x9e3779b97f4a7c15ULL;
	if (prot != (PROT_READ | PROT_WRITE) && mprotect(p, size, prot)) {
		perror("gen: mprotect");
		exit(2);
	}
}

static void ensure_hole(uint64_t addr, uint64_t size)
{
	void *p = mmap((void *)(uintptr_t)addr, size, PROT_NONE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (p != (void *)(uintptr_t)addr) {
		fprintf(stderr, "gen: hole at 0x%llx is not free\n", (unsigned long long)addr);
		exit(2);
	}
	munmap(p, size);
}

/* whether NAME is one of the '+'-separated names of LIST */
static int skipped(const char *list, const char *name)
{
	size_t n = strlen(name);
	for (const char *p = list; *p;) {
		const char *e = strchr(p, '+');
		size_t l = e ? (size_t)(e - p) : strlen(p);
		if (l == n && !strncmp(p, name, n))
			return 1;
		p += l + (e ? 1 : 0);
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: gen SEED [NOPS]\n");
		return 2;
	}
	uint64_t seed = strtoull(argv[1], NULL, 0);
	int nops = argc > 2 ? atoi(argv[2]) : 200;
	/* OPTIONS: comma-separated: dump, dumpall, skip=OP+OP (ops never chosen: a masked corpus
	 * for finding the differences hidden behind the frequent ones; OP as in the ops table) */
	const char *skip = "";
	for (char *o = argc > 3 ? strtok(argv[3], ",") : NULL; o; o = strtok(NULL, ",")) {
		if (!strcmp(o, "dump"))
			dump = 1;
		else if (!strcmp(o, "dumpall"))
			dump = 2;
		else if (!strncmp(o, "skip=", 5))
			skip = o + 5;
	}
	rng_state = seed * 0x2545f4914f6cdd1dULL + 1;

	map_fixed(POOL_BASE, POOL_SIZE, PROT_READ | PROT_WRITE, "pool");
	ensure_hole(HOLE_BASE, HOLE_SIZE);
	map_fixed(RO_BASE, RO_SIZE, PROT_READ, "ro");
	map_fixed(SCRATCH_BASE, SCRATCH_SIZE, PROT_READ | PROT_WRITE, "scratch");
	ensure_hole(SCRATCH_BASE + SCRATCH_SIZE, HOLE_SIZE);
	map_fixed(HUGE_BASE, HUGE_SIZE, PROT_READ | PROT_WRITE, "huge");

	fd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
	printf("gen seed=%llu nops=%d%s%s open=%s\n", (unsigned long long)seed, nops,
	       *skip ? " skip=" : "", skip, fd < 0 ? errname(errno) : "0");
	fflush(stdout);
	if (fd < 0)
		return 1;

	struct { int w; void (*fn)(void); const char *name; } ops[] = {
		{ 9, op_ioas_alloc, "IOAS_ALLOC" }, { 6, op_destroy, "DESTROY" },
		{ 18, op_ioas_map, "IOAS_MAP" }, { 9, op_ioas_unmap, "IOAS_UNMAP" },
		{ 6, op_ioas_copy, "IOAS_COPY" }, { 4, op_iova_ranges, "IOVA_RANGES" },
		{ 4, op_allow_iovas, "ALLOW_IOVAS" }, { 4, op_option, "OPTION" },
		{ 6, NULL, "MOCK_DOMAIN" }, { 3, NULL, "MOCK_DOMAIN_FLAGS" },
		{ 4, op_mock_replace, "MOCK_DOMAIN_REPLACE" }, { 2, op_add_reserved, "ADD_RESERVED" },
		{ 4, op_create_access, "CREATE_ACCESS" }, { 2, op_destroy_access, "DESTROY_ACCESS" },
		{ 2, op_access_replace, "ACCESS_REPLACE_IOAS" }, { 5, op_access_pages, "ACCESS_PAGES" },
		{ 3, op_destroy_access_pages, "DESTROY_ACCESS_PAGES" }, { 5, op_access_rw, "ACCESS_RW" },
		{ 7, op_hwpt_alloc, "HWPT_ALLOC" }, { 3, op_set_dirty, "SET_DIRTY_TRACKING" },
		{ 3, op_get_dirty, "GET_DIRTY_BITMAP" }, { 2, op_test_dirty, "TEST_DIRTY" },
		{ 4, op_invalidate, "HWPT_INVALIDATE" }, { 2, op_check_iotlb, "CHECK_IOTLB" },
		{ 2, op_fault_alloc, "FAULT_QUEUE_ALLOC" }, { 3, op_hw_info, "GET_HW_INFO" },
		{ 3, op_vfio_ioas, "VFIO_IOAS" }, { 4, op_vfio_simple, "VFIO_SIMPLE" },
		{ 4, op_vfio_map, "VFIO_MAP_DMA" }, { 3, op_vfio_unmap, "VFIO_UNMAP_DMA" },
		{ 2, op_vfio_info, "VFIO_GET_INFO" },
	};

	int nkinds = sizeof(ops) / sizeof(ops[0]), total = 0;
	for (int i = 0; i < nkinds; i++)
		total += ops[i].w;

	for (opno = 0; opno < nops; opno++) {
		int x = rnd(total), i = 0;
		if (opno == 0) {
			op_ioas_alloc();
			continue;
		}
		while (x >= ops[i].w)
			x -= ops[i++].w;
		if (skipped(skip, ops[i].name)) { /* draw again */
			opno--;
			continue;
		}
		if (i == 8)
			op_mock_domain(0);
		else if (i == 9)
			op_mock_domain(1);
		else
			ops[i].fn();
		if (dump > 1)
			dump_changed();
	}
	printf("gen end\n");
	fflush(stdout);
	return 0;
}
