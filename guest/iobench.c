/*
 * iobench: O_DIRECT throughput of a block device, for the uiommu NVMe guest's bench mode
 * (guest/init, uiommu.bench=N; bench/nvme/run.sh).
 *
 *   iobench DEV seqwrite|seqread|randwrite|randread BS MIB [OPS]
 *
 * seq*: BS-byte requests one after the other over the device's first MIB MiB; rand*: OPS
 * requests of BS bytes at random BS-aligned offsets in the first MIB MiB (a fixed xorshift
 * sequence, so every run and every device sees the same offsets). One request in flight
 * (queue depth 1), as dd does. Writes write a fixed non-zero pattern. Prints one line:
 *   "bytes=B ops=N ns=T mib_s=X iops=Y"
 * Exit 0, or 2 on a usage or I/O error (with a message on stderr).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t xorshift(uint64_t *s) {
  uint64_t x = *s;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return *s = x;
}

static long number(const char *s, const char *what) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || *end || v <= 0) {
    fprintf(stderr, "iobench: bad %s: %s\n", what, s);
    exit(2);
  }
  return v;
}

int main(int argc, char **argv) {
  if (argc < 5 || argc > 6) {
    fprintf(stderr, "usage: iobench DEV seqwrite|seqread|randwrite|randread BS MIB [OPS]\n");
    return 2;
  }
  const char *mode = argv[2];
  int write = !strcmp(mode, "seqwrite") || !strcmp(mode, "randwrite");
  int rand = !strcmp(mode, "randwrite") || !strcmp(mode, "randread");
  if (!write && !rand && strcmp(mode, "seqread")) {
    fprintf(stderr, "iobench: unknown mode %s\n", mode);
    return 2;
  }
  size_t bs = (size_t)number(argv[3], "BS");
  uint64_t span = (uint64_t)number(argv[4], "MIB") << 20;
  if (bs % 4096 || span < bs) {
    fprintf(stderr, "iobench: BS must be a multiple of 4096 and at most MIB MiB\n");
    return 2;
  }
  uint64_t slots = span / bs;
  uint64_t ops = rand ? (uint64_t)(argc == 6 ? number(argv[5], "OPS") : 1000) : slots;
  int fd = open(argv[1], (write ? O_WRONLY : O_RDONLY) | O_DIRECT);
  if (fd < 0) {
    fprintf(stderr, "iobench: %s: %s\n", argv[1], strerror(errno));
    return 2;
  }
  void *buf;
  if (posix_memalign(&buf, 4096, bs)) {
    fprintf(stderr, "iobench: no memory for %zu bytes\n", bs);
    return 2;
  }
  memset(buf, 0x5a, bs);
  uint64_t seed = 0x9E3779B97F4A7C15ull;
  uint64_t t0 = now_ns();
  for (uint64_t i = 0; i < ops; i++) {
    uint64_t slot = rand ? xorshift(&seed) % slots : i;
    off_t at = (off_t)(slot * bs);
    ssize_t n = write ? pwrite(fd, buf, bs, at) : pread(fd, buf, bs, at);
    if (n != (ssize_t)bs) {
      fprintf(stderr, "iobench: %s of %zu bytes at %lld: %s\n", mode, bs, (long long)at,
              n < 0 ? strerror(errno) : "short");
      return 2;
    }
  }
  if (write && fdatasync(fd)) {
    fprintf(stderr, "iobench: fdatasync: %s\n", strerror(errno));
    return 2;
  }
  uint64_t ns = now_ns() - t0;
  if (ns == 0)
    ns = 1;
  uint64_t bytes = ops * bs;
  printf("bytes=%llu ops=%llu ns=%llu mib_s=%.2f iops=%.0f\n", (unsigned long long)bytes,
         (unsigned long long)ops, (unsigned long long)ns, (double)bytes / 1048576.0 * 1e9 / (double)ns,
         (double)ops * 1e9 / (double)ns);
  close(fd);
  free(buf);
  return 0;
}
