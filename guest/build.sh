#!/usr/bin/env bash
# Build the NVMe test guest: a Debian cloud kernel and a tiny initramfs (static busybox,
# mke2fs/e2fsck with their shared libraries, the static pattern helper, guest/init as /init).
# Nothing is compiled but guest/pattern.c and guest/iobench.c; guest/run.sh boots the result under QEMU TCG.
#
# On Debian bookworm, as root:
#   1. installs what it needs with apt: qemu-system-x86 (bookworm-backports, adding
#      `deb http://deb.debian.org/debian bookworm-backports main` to
#      /etc/apt/sources.list.d/backports.list when no backports source is configured), cpio,
#      gzip, gcc + libc6-dev (the static helper), binutils (objcopy, for kernel modules);
#   2. fetches with `apt-get download` and unpacks with `dpkg-deb -x` into the work dir (none
#      is installed): the cloud kernel image that linux-image-cloud-amd64 depends on
#      (bookworm-backports' 6.12 by default), busybox-static, e2fsprogs and the libraries it
#      links (libext2fs2, libcom-err2, libblkid1, libuuid1; libc comes from the host);
#   3. checks the kernel config: the basics built in; NVMe, ext4 and loop built in or packed as
#      modules (decompressed, with the modules they depend on, insmod-ed by /init in order);
#   4. builds the static helpers (work/pattern, usable on the host too; work/iobench) and packs
#      work/initrd.gz; copies the kernel to work/vmlinuz.
# Everything fetched is cached in the work dir: a second run downloads nothing.
#
# Usage: guest/build.sh [--work DIR] [--kernel-suite backports|bookworm] [--no-install]
#   --work DIR          cache and output directory (default guest/work)
#   --kernel-suite S    backports: linux-image-cloud-amd64 from bookworm-backports (6.12);
#                       bookworm: the one from bookworm / bookworm-security (6.1)
#   --no-install        use only what is installed or cached (no apt at all)
# Output: DIR/vmlinuz, DIR/initrd.gz, DIR/pattern, DIR/build.meta (key=value).
# Exit: 0 built; 1 error.
set -euo pipefail

GDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORK=$GDIR/work
SUITE=backports
INSTALL=1

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "build.sh: $*" >&2; exit 1; }
log() { echo "== $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --work) WORK=${2:?--work needs a directory}; shift ;;
    --kernel-suite) SUITE=${2:?--kernel-suite needs backports or bookworm}; shift ;;
    --no-install) INSTALL=0 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done
case "$SUITE" in backports|bookworm) ;; *) die "--kernel-suite: backports or bookworm" ;; esac
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

# ---------------------------------------------------------------- 1. host tools (apt)
APT=(apt-get -o DPkg::Lock::Timeout=900 -q)
apt_updated=0
apt_update() {
  [ "$apt_updated" = 1 ] && return 0
  [ "$INSTALL" = 1 ] || die "$1 is not cached and --no-install forbids apt"
  log "apt-get update"
  "${APT[@]}" update >/dev/null
  apt_updated=1
}
need_root() { [ "$(id -u)" = 0 ] || die "$1 is missing and installing it needs root"; }
have_backports() {
  grep -qs -E '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
    /etc/apt/sources.list.d/*.sources
}
ensure_backports() {
  have_backports && return 0
  need_root "the bookworm-backports apt source"
  log "adding the bookworm-backports apt source (/etc/apt/sources.list.d/backports.list)"
  echo 'deb http://deb.debian.org/debian bookworm-backports main' >/etc/apt/sources.list.d/backports.list
  apt_updated=0
}
is_static() { # ELF and not dynamically linked
  [ -x "$1" ] || return 1
  local out
  out=$(LC_ALL=C ldd "$1" 2>&1 || true)
  case "$out" in *"not a dynamic executable"*|*"statically linked"*) return 0 ;; esac
  return 1
}

if [ "$INSTALL" = 1 ]; then
  pkgs=()
  command -v qemu-system-x86_64 >/dev/null || pkgs+=(qemu-system-x86)
  command -v cpio >/dev/null || pkgs+=(cpio)
  command -v gzip >/dev/null || pkgs+=(gzip)
  command -v gcc >/dev/null || pkgs+=(gcc)
  [ -e /usr/lib/x86_64-linux-gnu/libc.a ] || pkgs+=(libc6-dev)
  command -v objcopy >/dev/null || pkgs+=(binutils)
  if [ ${#pkgs[@]} -gt 0 ]; then
    need_root "${pkgs[*]}"
    ensure_backports
    apt_update "${pkgs[*]}"
    log "apt-get install ${pkgs[*]} (from bookworm-backports where it has them)"
    DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y -t bookworm-backports "${pkgs[@]}" >/dev/null \
      || DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y "${pkgs[@]}" >/dev/null
  fi
fi
for t in cpio gzip gcc ldd dpkg-deb; do
  command -v "$t" >/dev/null || die "$t not found"
done
command -v qemu-system-x86_64 >/dev/null || echo "build.sh: WARNING: no qemu-system-x86_64 (run.sh needs it)" >&2

# ---------------------------------------------------------------- 2. packages (not installed)
# fetch_pkg NAME[=VERSION] DIR: apt-get download + dpkg-deb -x into DIR, unless DIR has it.
fetch_pkg() {
  local spec=$1 dir=$2 name=${1%%=*} deb tmp
  [ -e "$dir/.unpacked" ] && return 0
  apt_update "$name"
  log "apt-get download $spec (unpacked into $dir)"
  tmp=$WORK/download
  rm -rf "$tmp" "$dir"
  mkdir -p "$tmp" "$(dirname "$dir")"
  (cd "$tmp" && "${APT[@]}" download "$spec") 2>&1 | { grep -v '^W: Download is performed unsandboxed' || true; }
  deb=$(ls -1 "$tmp"/"${name}"_*.deb 2>/dev/null | head -1)
  [ -n "$deb" ] || die "apt-get download $spec gave no .deb"
  dpkg-deb -x "$deb" "$dir"
  dpkg-deb -f "$deb" Package Version | sed -n 's/^[A-Za-z]*: //p' | paste -sd= >"$dir/.unpacked"
  rm -rf "$tmp"
}

# The kernel: the package linux-image-cloud-amd64 depends on, remembered in DIR/kernel.SUITE.
KPKG=
[ -r "$WORK/kernel.$SUITE" ] && KPKG=$(cat "$WORK/kernel.$SUITE")
if [ -z "$KPKG" ] || [ ! -e "$WORK/kernel/$KPKG/.unpacked" ]; then
  [ "$SUITE" = backports ] && [ "$INSTALL" = 1 ] && ensure_backports
  apt_update linux-image-cloud-amd64
  if [ "$SUITE" = backports ]; then
    kver=$(apt-cache madison linux-image-cloud-amd64 | awk -F'|' '$3 ~ /bookworm-backports/ {gsub(/ /, "", $2); print $2; exit}')
  else
    kver=$(apt-cache madison linux-image-cloud-amd64 | awk -F'|' '$3 !~ /backports/ {gsub(/ /, "", $2); print $2; exit}')
  fi
  [ -n "$kver" ] || die "no linux-image-cloud-amd64 in $SUITE (apt-cache madison linux-image-cloud-amd64)"
  KPKG=$(apt-cache show "linux-image-cloud-amd64=$kver" | sed -n 's/^Depends: \(linux-image-[^ ,]*\).*/\1/p' | head -1)
  [ -n "$KPKG" ] || die "cannot resolve the package linux-image-cloud-amd64=$kver depends on"
  fetch_pkg "$KPKG" "$WORK/kernel/$KPKG"
  echo "$KPKG" >"$WORK/kernel.$SUITE"
fi
KDIR=$WORK/kernel/$KPKG
KIMG=$(ls -1 "$KDIR"/boot/vmlinuz-* 2>/dev/null | head -1)
[ -n "$KIMG" ] || die "no boot/vmlinuz-* in $KDIR"
KVER=$(basename "$KIMG" | sed 's/^vmlinuz-//')
KCONFIG=$KDIR/boot/config-$KVER
[ -r "$KCONFIG" ] || die "no $KCONFIG"

fetch_pkg busybox-static "$WORK/pkg/busybox-static"
BUSYBOX=$WORK/pkg/busybox-static/bin/busybox
is_static "$BUSYBOX" || die "busybox-static did not give a static busybox"

E2LIBPKGS=(libext2fs2 libcom-err2 libblkid1 libuuid1)
fetch_pkg e2fsprogs "$WORK/pkg/e2fsprogs"
for p in "${E2LIBPKGS[@]}"; do fetch_pkg "$p" "$WORK/pkg/$p"; done

# ---------------------------------------------------------------- 3. the kernel config
kopt() { sed -n "s/^CONFIG_$1=//p" "$KCONFIG"; }
for opt in BLK_DEV_INITRD RD_GZIP DEVTMPFS PROC_FS SYSFS BINFMT_ELF BINFMT_SCRIPT SERIAL_8250 \
  SERIAL_8250_CONSOLE PCI ACPI; do
  [ "$(kopt "$opt")" = y ] || die "$KCONFIG: CONFIG_$opt is not built in"
done

ROOT=$WORK/initramfs
rm -rf "$ROOT"
mkdir -p "$ROOT"/{bin,sbin,etc,proc,sys,dev,tmp,mnt,lib/modules,lib64,lib/x86_64-linux-gnu}
: >"$ROOT/etc/modules"
MODROOT=$(ls -1d "$KDIR"/lib/modules/*/ 2>/dev/null | head -1 || true)
declare -A MOD_DONE=()
# add_module NAME: the module NAME.ko* from the kernel package, after the ones it depends on,
# decompressed into /lib/modules and listed in /etc/modules (insmod order).
add_module() {
  local name=$1 f alt tmp deps d
  alt=$(echo "$name" | tr _ -)
  [ -n "${MOD_DONE[$alt]:-}" ] && return 0
  MOD_DONE[$alt]=1
  [ -n "$MODROOT" ] || die "no lib/modules in $KDIR"
  f=$(find "$MODROOT" \( -name "$alt.ko*" -o -name "$(echo "$name" | tr - _).ko*" \) | head -1)
  [ -n "$f" ] || die "module $name not found in $MODROOT"
  tmp=$ROOT/lib/modules/$alt.ko
  case "$f" in
    *.ko) cp "$f" "$tmp" ;;
    *.ko.xz) xz -dc "$f" >"$tmp" ;;
    *.ko.zst) zstd -qdc "$f" >"$tmp" ;;
    *.ko.gz) gzip -dc "$f" >"$tmp" ;;
    *) die "unknown module compression: $f" ;;
  esac
  command -v objcopy >/dev/null || die "objcopy (binutils) is needed to read module dependencies"
  objcopy -O binary --only-section=.modinfo "$tmp" "$WORK/modinfo.tmp"
  deps=$(tr '\0' '\n' <"$WORK/modinfo.tmp" | sed -n 's/^depends=//p' | tr ',' ' ')
  rm -f "$WORK/modinfo.tmp"
  for d in $deps; do add_module "$d"; done
  echo "$alt" >>"$ROOT/etc/modules"
}
# need NAME CONFIG_OPT MODULE: built in, or the module (and its dependencies) packed.
need() {
  case "$(kopt "$2")" in
    y) ;;
    m) log "CONFIG_$2=m: packing module $3"; add_module "$3" ;;
    *) die "$KCONFIG: no CONFIG_$2 ($1)" ;;
  esac
}
need NVMe BLK_DEV_NVME nvme
need ext4 EXT4_FS ext4
need "loop devices" BLK_DEV_LOOP loop

# ---------------------------------------------------------------- 4. helper + initramfs
log "building the static helpers (pattern, iobench)"
for h in pattern iobench; do
  gcc -O2 -static -Wall -Wextra -o "$WORK/$h.tmp" "$GDIR/$h.c"
  mv "$WORK/$h.tmp" "$WORK/$h"
  is_static "$WORK/$h" || die "$WORK/$h is not static"
done

log "packing the initramfs (kernel $KVER)"
cp "$BUSYBOX" "$ROOT/bin/busybox"
ln -s busybox "$ROOT/bin/sh"
cp "$WORK/pattern" "$ROOT/bin/pattern"
cp "$WORK/iobench" "$ROOT/bin/iobench"
cp "$GDIR/init" "$ROOT/init"
chmod 755 "$ROOT/init"
E2=$WORK/pkg/e2fsprogs
for b in mke2fs e2fsck; do
  src=$(ls -1 "$E2"/sbin/$b "$E2"/usr/sbin/$b 2>/dev/null | head -1 || true)
  [ -n "$src" ] || die "no $b in the e2fsprogs package"
  cp "$src" "$ROOT/sbin/$b"
done
ln -s mke2fs "$ROOT/sbin/mkfs.ext4"
[ -r "$E2/etc/mke2fs.conf" ] && cp "$E2/etc/mke2fs.conf" "$ROOT/etc/mke2fs.conf"
ln -s /proc/mounts "$ROOT/etc/mtab"
# Their shared libraries: from the unpacked packages first, libc and the loader from the host.
libpath=
for p in "${E2LIBPKGS[@]}"; do
  for d in "$WORK/pkg/$p"/lib/x86_64-linux-gnu "$WORK/pkg/$p"/usr/lib/x86_64-linux-gnu; do
    [ -d "$d" ] && libpath=$libpath${libpath:+:}$d
  done
done
for b in mke2fs e2fsck; do
  out=$(LD_LIBRARY_PATH=$libpath LC_ALL=C ldd "$ROOT/sbin/$b")
  if echo "$out" | grep -q 'not found'; then die "ldd $b: $(echo "$out" | grep 'not found' | tr -s ' \t\n' ' ')"; fi
  echo "$out" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | while read -r lib; do
    case "$lib" in
      */ld-linux*) dst=$ROOT/lib64/$(basename "$lib") ;;
      *) dst=$ROOT/lib/x86_64-linux-gnu/$(basename "$lib") ;;
    esac
    [ -e "$dst" ] || cp -L "$lib" "$dst"
  done
done
[ -e "$ROOT/lib64/ld-linux-x86-64.so.2" ] || die "no dynamic loader copied"
# Without /dev/console in the archive the kernel starts /init with no stdout (/init reopens the
# console from devtmpfs too, for a non-root build).
if [ "$(id -u)" = 0 ]; then
  mknod -m 600 "$ROOT/dev/console" c 5 1
  # The copied mke2fs/e2fsck must run in the initramfs as they are.
  chroot "$ROOT" /sbin/mke2fs -V >/dev/null 2>&1 || die "mke2fs does not run in the initramfs (chroot $ROOT /sbin/mke2fs -V)"
  chroot "$ROOT" /sbin/e2fsck -V >/dev/null 2>&1 || die "e2fsck does not run in the initramfs (chroot $ROOT /sbin/e2fsck -V)"
fi
{
  echo "kernel=$(sed -n 1p "$KDIR/.unpacked")"
  echo "busybox=$(sed -n 1p "$WORK/pkg/busybox-static/.unpacked")"
  echo "e2fsprogs=$(sed -n 1p "$E2/.unpacked")"
  echo "modules=$(paste -sd, "$ROOT/etc/modules")"
} >"$ROOT/etc/guest-build"
INITRD=$WORK/initrd.gz
(cd "$ROOT" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner=0:0 --quiet) \
  | gzip -6 >"$INITRD.tmp"
mv "$INITRD.tmp" "$INITRD"
cp "$KIMG" "$WORK/vmlinuz.tmp"
mv "$WORK/vmlinuz.tmp" "$WORK/vmlinuz"
{
  cat "$ROOT/etc/guest-build"
  echo "initrd.bytes=$(stat -c %s "$INITRD")"
} >"$WORK/build.meta"
log "built: $WORK/vmlinuz ($KVER), $INITRD ($(( $(stat -c %s "$INITRD") / 1024 )) KiB), $WORK/pattern"
