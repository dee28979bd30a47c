/*
 * Calls on our fds from a signal handler while the interrupted thread is in the middle of
 * malloc or of another call on the same files (host engine: async-signal-safe front-end). The
 * handler makes ioctls, preads and a close of a dup; the main thread churns malloc/free and
 * map/unmap. Every call must give its right result and the program must not hang.
 */
#define _GNU_SOURCE
#include "dma_engine.h"

#include <signal.h>
#include <sys/time.h>

static int g_ictx, g_dev;
static __u32 g_ioas;
static volatile sig_atomic_t handled, bad;

static void on_alarm(int sig)
{
	(void)sig;
	int e = errno;
	struct iommu_ioas_iova_ranges r = { .size = sizeof(r), .ioas_id = g_ioas };
	/* No room for ranges: EMSGSIZE with the count, as the kernel answers. */
	if (ioctl(g_ictx, IOMMU_IOAS_IOVA_RANGES, &r) != -1 || errno != EMSGSIZE || r.num_iovas == 0)
		bad++;
	__u32 id = 0;
	if (pread(g_dev, &id, 4, REG_ID) != 4 || id != 0x444d4145)
		bad++;
	int d = dup(g_ictx);
	if (d < 0 || close(d) != 0)
		bad++;
	handled++;
	errno = e;
}

int main(void)
{
	g_ictx = iommufd_open();
	g_ioas = ioas_alloc(g_ictx);
	g_dev = vfio_open(1);
	CHECK(g_dev >= 0);
	CHECK(vfio_bind(g_dev, g_ictx, NULL) == 0);
	CHECK(attach(g_dev, g_ioas) == 0);
	struct dev d = setup(g_dev);
	CHECK(d.bar0 == 0);
	unsigned char *buf = page_buffer(PAGE);
	struct sigaction sa = { .sa_handler = on_alarm, .sa_flags = SA_RESTART };
	CHECK(sigaction(SIGALRM, &sa, NULL) == 0);
	struct itimerval it = { .it_interval = { 0, 500 }, .it_value = { 0, 500 } };
	CHECK(setitimer(ITIMER_REAL, &it, NULL) == 0);
	struct iommu_ioas_unmap u = { .size = sizeof(u), .ioas_id = g_ioas, .iova = SRC_IOVA,
				      .length = PAGE };
	int rounds = 0;
	while (handled < 200 && rounds < 200000) {
		void *p[16];
		for (int i = 0; i < 16; i++)
			p[i] = malloc(64 + i * 512);
		for (int i = 0; i < 16; i++)
			free(p[i]);
		CHECK(map(g_ictx, g_ioas, buf, PAGE, SRC_IOVA, IOMMU_IOAS_MAP_READABLE) == 0);
		CHECK(ioctl(g_ictx, IOMMU_IOAS_UNMAP, &u) == 0 && u.length == PAGE);
		rounds++;
	}
	struct itimerval off = { 0 };
	CHECK(setitimer(ITIMER_REAL, &off, NULL) == 0);
	CHECK(handled >= 200);
	CHECK(bad == 0);
	printf("signal handler ran %d times over %d rounds\n", (int)handled, rounds);
	PASS("signal_calls");
	return 0;
}
