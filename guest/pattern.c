/*
 * pattern: the deterministic test pattern of the uiommu NVMe guest (guest/init), the same
 * bytes on the host and in the guest.
 *
 *   pattern gen MIB [SEED]           write MIB MiB of the pattern to stdout
 *   pattern check FILE MIB [SEED]    compare the first MIB MiB of FILE (a block device or an
 *                                    image) with the pattern, sector by sector; prints
 *                                    "pattern check: sectors=N bad=M first_bad=S" (first_bad=-
 *                                    when none) and exits 0 when M is 0, 1 otherwise
 *
 * Each 512-byte sector s is 64 little-endian 64-bit words:
 *   word 0      s (the sector number from the start of the device)
 *   word 1      SEED
 *   words 2-63  splitmix64 outputs, its state starting at SEED * 0x9E3779B97F4A7C15 ^ s
 * so a sector that landed at the wrong place, a stale one and a torn one all differ.
 * SEED is decimal or 0x-hex, default 1. Exit 2 on a usage or I/O error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SECTOR 512
#define WORDS (SECTOR / 8)
#define CHUNK (1024 * 1024) /* one MiB: 2048 sectors */

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static void put_le64(unsigned char *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void fill_sector(unsigned char *p, uint64_t sector, uint64_t seed) {
  uint64_t st = seed * 0x9E3779B97F4A7C15ull ^ sector;
  put_le64(p, sector);
  put_le64(p + 8, seed);
  for (int w = 2; w < WORDS; w++) put_le64(p + 8 * w, splitmix64(&st));
}

static void fill_chunk(unsigned char *buf, uint64_t first_sector, uint64_t seed) {
  for (int i = 0; i < CHUNK / SECTOR; i++) fill_sector(buf + i * SECTOR, first_sector + i, seed);
}

static int parse_u64(const char *s, uint64_t *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 0);
  if (errno || end == s || *end || s[0] == '-') return -1;
  *out = v;
  return 0;
}

static int usage(void) {
  fprintf(stderr,
          "usage: pattern gen MIB [SEED]\n"
          "       pattern check FILE MIB [SEED]\n");
  return 2;
}

static int write_all(int fd, const unsigned char *p, size_t n) {
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Reads up to n bytes; returns how many (short only at end of file), -1 on error. */
static ssize_t read_full(int fd, unsigned char *p, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, p + got, n - got);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (r == 0) break;
    got += (size_t)r;
  }
  return (ssize_t)got;
}

int main(int argc, char **argv) {
  static unsigned char want[CHUNK], got[CHUNK];
  uint64_t mib, seed = 1;
  if (argc < 2) return usage();
  if (!strcmp(argv[1], "gen")) {
    if (argc < 3 || argc > 4 || parse_u64(argv[2], &mib) || (argc == 4 && parse_u64(argv[3], &seed)))
      return usage();
    for (uint64_t m = 0; m < mib; m++) {
      fill_chunk(want, m * (CHUNK / SECTOR), seed);
      if (write_all(1, want, CHUNK)) {
        fprintf(stderr, "pattern: write: %s\n", strerror(errno));
        return 2;
      }
    }
    return 0;
  }
  if (!strcmp(argv[1], "check")) {
    if (argc < 4 || argc > 5 || parse_u64(argv[3], &mib) || (argc == 5 && parse_u64(argv[4], &seed)))
      return usage();
    int fd = open(argv[2], O_RDONLY);
    if (fd < 0) {
      fprintf(stderr, "pattern: %s: %s\n", argv[2], strerror(errno));
      return 2;
    }
    uint64_t sectors = 0, bad = 0, first_bad = 0;
    int short_read = 0;
    for (uint64_t m = 0; m < mib && !short_read; m++) {
      ssize_t n = read_full(fd, got, CHUNK);
      if (n < 0) {
        fprintf(stderr, "pattern: read %s at MiB %llu: %s\n", argv[2], (unsigned long long)m, strerror(errno));
        return 2;
      }
      if (n < CHUNK) short_read = 1;
      fill_chunk(want, m * (CHUNK / SECTOR), seed);
      for (int i = 0; i < CHUNK / SECTOR; i++) {
        uint64_t s = m * (CHUNK / SECTOR) + (uint64_t)i;
        int ok = (i + 1) * SECTOR <= n && !memcmp(want + i * SECTOR, got + i * SECTOR, SECTOR);
        if (!ok && bad++ == 0) first_bad = s;
        sectors++;
      }
    }
    close(fd);
    if (bad)
      printf("pattern check: sectors=%llu bad=%llu first_bad=%llu%s\n", (unsigned long long)sectors,
             (unsigned long long)bad, (unsigned long long)first_bad, short_read ? " (file too short)" : "");
    else
      printf("pattern check: sectors=%llu bad=0 first_bad=-\n", (unsigned long long)sectors);
    return bad ? 1 : 0;
  }
  return usage();
}
