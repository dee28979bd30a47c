#!/usr/bin/env bash
# Build a minimal x86_64 Linux 6.12 with CONFIG_IOMMUFD_TEST=y for the differential oracle.
#
# Source: /usr/src/linux-source-6.12.tar.xz (Debian package linux-source-6.12; installed with
# apt if missing, from bookworm-backports if needed). Extracted into oracle/work/ (ignored by
# git), configured from `make tinyconfig` plus the options below, built with `make bzImage`.
#
# Usage: oracle/build-kernel.sh [-j N]
# Output: oracle/work/bzImage (and oracle/work/build.log)
set -euo pipefail

ORACLE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORK=$ORACLE/work
JOBS=$(nproc)
[ "${1:-}" = "-j" ] && JOBS=${2:?-j needs a number}
TARBALL=/usr/src/linux-source-6.12.tar.xz
SRC=$WORK/linux-source-6.12

log() { echo "== $*"; }
mkdir -p "$WORK"

apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  if ! apt-get install -y -qq "${missing[@]}"; then
    # linux-source-6.12 lives in bookworm-backports on Debian 12
    echo 'deb http://deb.debian.org/debian bookworm-backports main' \
      >/etc/apt/sources.list.d/oracle-backports.list
    apt-get update -qq
    apt-get install -y -qq -t bookworm-backports "${missing[@]}"
  fi
}

apt_install gcc make flex bison bc libelf-dev libssl-dev xz-utils cpio
[ -f "$TARBALL" ] || apt_install linux-source-6.12

if [ ! -f "$SRC/Makefile" ]; then
  log "extracting $TARBALL"
  tar -C "$WORK" -xf "$TARBALL"
fi

cd "$SRC"
# IOMMU_IOPF is a hidden bool selected only by hardware IOMMU drivers (intel, amd, arm-smmu-v3
# SVA), which every distribution kernel has. Without it the mock driver's I/O page fault queue
# is absent and fault-capable HWPTs fail (ENODEV), unlike on a Debian 6.12 kernel. Give the
# symbol a prompt in this work copy (a Kconfig-only change; no code is touched).
sed -i '/^config IOMMU_IOPF$/{n;s/^\tbool$/\tbool "IOMMU I\/O page faults (oracle build)"/}' \
  drivers/iommu/Kconfig
grep -A1 '^config IOMMU_IOPF$' drivers/iommu/Kconfig | grep -q '"' \
  || { echo "build-kernel.sh: could not make IOMMU_IOPF selectable" >&2; exit 1; }
T0=$(date +%s)
log "configuring (tinyconfig + oracle options)"
make -s ARCH=x86_64 tinyconfig
E="scripts/config --file .config --enable"
for o in 64BIT PRINTK PRINTK_TIME EARLY_PRINTK TTY SERIAL_8250 SERIAL_8250_CONSOLE \
         BLK_DEV_INITRD DEVTMPFS DEVTMPFS_MOUNT PROC_FS SYSFS BINFMT_ELF BINFMT_SCRIPT \
         MULTIUSER FUTEX POSIX_TIMERS SHMEM MEMFD_CREATE TMPFS HUGETLBFS HUGETLB_PAGE \
         TRANSPARENT_HUGEPAGE PCI IOMMU_SUPPORT IOMMUFD IOMMUFD_TEST DEBUG_KERNEL \
         RUNTIME_TESTING_MENU FAULT_INJECTION FAILSLAB FAIL_PAGE_ALLOC \
         FAULT_INJECTION_USERCOPY DEBUG_FS DEBUG_FS_ALLOW_ALL FAULT_INJECTION_DEBUG_FS \
         IOMMU_IOPF SLUB EPOLL SIGNALFD TIMERFD EVENTFD AIO FILE_LOCKING UNIX; do
  $E "$o"
done
scripts/config --file .config --set-val IOMMUFD y
make -s ARCH=x86_64 olddefconfig
ok=1
for o in IOMMUFD IOMMUFD_TEST FAULT_INJECTION SERIAL_8250_CONSOLE BLK_DEV_INITRD DEVTMPFS \
         64BIT BINFMT_ELF PCI IOMMU_IOPF; do
  if grep -q "^CONFIG_$o=y" .config; then echo "CONFIG_$o=y"; else echo "MISSING CONFIG_$o"; ok=0; fi
done
[ $ok = 1 ] || { echo "build-kernel.sh: required options did not survive olddefconfig" >&2; exit 1; }

log "make -j$JOBS bzImage (log: $WORK/build.log)"
make ARCH=x86_64 -j"$JOBS" bzImage >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log"; exit 1; }
cp arch/x86/boot/bzImage "$WORK/bzImage"
T1=$(date +%s)
log "built $WORK/bzImage in $((T1 - T0)) s"
