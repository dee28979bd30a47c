#!/usr/bin/env bash
# Run `uiommu bench` inside a QEMU TCG guest (software-emulated CPU, 2 vCPUs), the same kind
# of guest the real Linux 6.12 kernel's reference figures were measured in
# (bench/kernel-6.12.md), so that both sides pay the same emulation.
#
# On a fresh Debian bookworm machine, as root:
#   1. installs what it needs with apt: qemu-system-x86 (bookworm-backports), cpio, gzip; a
#      static busybox and the Debian 6.12 kernel (bookworm-backports linux-image-amd64) are
#      fetched with `apt-get download` and unpacked into the work dir with `dpkg-deb -x`, so
#      neither replaces the host's busybox nor becomes the host's boot kernel;
#   2. builds the static uiommu binary (unless --bin PATH);
#   3. packs a tiny initramfs: busybox + uiommu + /init (mounts proc/sys/devtmpfs, optionally
#      reserves hugetlb pages, prints a calibration, runs the bench, prints the table and the
#      JSON between markers on the serial console, powers off);
#   4. boots it with qemu-system-x86_64 -accel tcg -smp 2 -m 4096 -nographic -no-reboot
#      -nic none (no network needed), under a timeout; captures the console, extracts the JSON.
#
# Usage: bench/vm/run.sh [--quick] [--bin PATH] [--out DIR] [--mem MiB] [--timeout SECONDS]
#                        [--hugepages N] [--thp always|madvise|never|keep] [--smp N]
#                        [--cpu MODEL] [--kernel VMLINUZ] [--no-install]
#                        [--only TEXT]... [--env NAME=VALUE]...
#   --only TEXT        passed on to `uiommu bench --only` (repeatable): run only those steps
#   --env NAME=VALUE   set in the bench's environment in the guest (repeatable), e.g.
#                      UIOMMU_RING=0 to time the host engine's messages instead of its rings
# Output: DIR/guest.json (the bench's JSON), DIR/guest.log (the whole console),
#         DIR/guest.meta (key=value: guest kernel, vCPU model, calibration, wall times).
# Exit: 0 ok; 1 setup error; 2 markers missing (timeout, crash, OOM...); 3 bench failed.
set -euo pipefail

VMDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$VMDIR/../.." && pwd)
WORK=$VMDIR/work

QUICK=0
BIN=
BUILT=
OUT=$VMDIR/out
MEM=4096
TIMEOUT=
HUGEPAGES=0
THP=madvise
SMP=2
CPU=
KERNEL=
INSTALL=1
ONLY=()
ENVS=()

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "run.sh: $*" >&2; exit 1; }
log() { echo "== $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --bin) BIN=${2:?--bin needs a path}; shift ;;
    --out) OUT=${2:?--out needs a directory}; shift ;;
    --mem) MEM=${2:?--mem needs MiB}; shift ;;
    --timeout) TIMEOUT=${2:?--timeout needs seconds}; shift ;;
    --hugepages) HUGEPAGES=${2:?--hugepages needs a count}; shift ;;
    --thp) THP=${2:?--thp needs a mode}; shift ;;
    --smp) SMP=${2:?--smp needs a count}; shift ;;
    --cpu) CPU=${2:?--cpu needs a model}; shift ;;
    --kernel) KERNEL=${2:?--kernel needs a path}; shift ;;
    --no-install) INSTALL=0 ;;
    --only) ONLY+=("${2:?--only needs a step name}"); shift ;;
    --env)
      case "${2:?--env needs NAME=VALUE}" in
        [A-Za-z_]*=*) ;;
        *) die "--env takes NAME=VALUE" ;;
      esac
      case "${2%%=*}" in *[!A-Za-z0-9_]*) die "--env: bad name: ${2%%=*}" ;; esac
      ENVS+=("$2"); shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done
case "$MEM$HUGEPAGES$SMP${TIMEOUT:-0}" in *[!0-9]*) die "--mem/--hugepages/--smp/--timeout take numbers" ;; esac
case "$THP" in always|madvise|never|keep) ;; *) die "--thp: always, madvise, never or keep" ;; esac
# Under TCG a quick run takes minutes, a full one much longer.
[ -n "$TIMEOUT" ] || { [ "$QUICK" = 1 ] && TIMEOUT=1800 || TIMEOUT=7200; }
# Hugetlb pages come out of the guest's memory: keep at least 2 GiB for everything else (the
# 1 GiB pre-faulted buffer, 1M mappings' metadata, the initramfs itself).
[ $((HUGEPAGES * 2 + 2048)) -le "$MEM" ] || die "--hugepages $HUGEPAGES (2 MiB each) leaves under 2 GiB of --mem $MEM"

mkdir -p "$WORK" "$OUT"
OUT=$(cd "$OUT" && pwd)

# ---------------------------------------------------------------- 1. what it needs (apt)
APT=(apt-get -o DPkg::Lock::Timeout=900 -q)
apt_updated=0
apt_update() {
  [ "$apt_updated" = 1 ] && return 0
  log "apt-get update"
  "${APT[@]}" update >/dev/null
  apt_updated=1
}
need_root() { [ "$(id -u)" = 0 ] || die "$1 is missing and installing it needs root (or pass it in)"; }
have_backports() {
  grep -qs -E '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
    /etc/apt/sources.list.d/*.sources
}
ensure_backports() {
  have_backports && return 0
  need_root "the bookworm-backports apt source"
  log "adding the bookworm-backports apt source"
  echo 'deb http://deb.debian.org/debian bookworm-backports main' \
    >/etc/apt/sources.list.d/bookworm-backports.list
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
  if [ ${#pkgs[@]} -gt 0 ]; then
    need_root "${pkgs[*]}"
    ensure_backports
    apt_update
    log "apt-get install ${pkgs[*]} (qemu from bookworm-backports, else bookworm)"
    DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y -t bookworm-backports "${pkgs[@]}" >/dev/null \
      || DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y "${pkgs[@]}" >/dev/null
  fi
fi
for t in qemu-system-x86_64 cpio gzip timeout; do
  command -v "$t" >/dev/null || die "$t not found"
done

# A static busybox: the host's /bin/busybox if it is static (busybox-static installed), else
# busybox-static's binary unpacked into the work dir (installing busybox-static would replace
# the host's dynamic busybox package, which other packages may depend on).
BUSYBOX=
if is_static /bin/busybox; then
  BUSYBOX=/bin/busybox
elif is_static "$WORK/busybox-static/bin/busybox"; then
  BUSYBOX=$WORK/busybox-static/bin/busybox
else
  [ "$INSTALL" = 1 ] || die "no static busybox (drop --no-install to fetch busybox-static)"
  apt_update
  log "apt-get download busybox-static (unpacked into $WORK/busybox-static)"
  rm -rf "$WORK/busybox-static" "$WORK"/busybox-static_*.deb
  (cd "$WORK" && "${APT[@]}" download busybox-static) 2>&1 | { grep -v '^W: Download is performed unsandboxed' || true; }
  dpkg-deb -x "$WORK"/busybox-static_*.deb "$WORK/busybox-static"
  BUSYBOX=$WORK/busybox-static/bin/busybox
  is_static "$BUSYBOX" || die "busybox-static did not give a static busybox"
fi

# The guest kernel: Debian's 6.12 from bookworm-backports, unpacked (not installed).
KPKG=
if [ -z "$KERNEL" ]; then
  cached=$(ls -1d "$WORK"/kernel/linux-image-*/boot/vmlinuz-* 2>/dev/null | sort -V | tail -1 || true)
  if [ "$INSTALL" = 1 ]; then
    ensure_backports
    apt_update
    kver=$(apt-cache madison linux-image-amd64 | awk -F'|' '$3 ~ /bookworm-backports/ {gsub(/ /, "", $2); print $2; exit}')
    if [ -n "$kver" ]; then
      KPKG=$(apt-cache show "linux-image-amd64=$kver" | sed -n 's/^Depends: \(linux-image-[^ ,]*\).*/\1/p' | head -1)
    else
      echo "run.sh: WARNING: no linux-image-amd64 in bookworm-backports; using bookworm's (6.1), not 6.12" >&2
      KPKG=$(apt-cache show linux-image-amd64 | sed -n 's/^Depends: \(linux-image-[^ ,]*\).*/\1/p' | head -1)
    fi
    [ -n "$KPKG" ] || die "cannot resolve the linux-image-amd64 package"
    kdir=$WORK/kernel/$KPKG
    if ! ls "$kdir"/boot/vmlinuz-* >/dev/null 2>&1; then
      log "apt-get download $KPKG (unpacked into $kdir, not installed)"
      rm -rf "$kdir" "$WORK"/kernel/*.deb
      mkdir -p "$WORK/kernel"
      (cd "$WORK/kernel" && "${APT[@]}" download "$KPKG") 2>&1 | { grep -v '^W: Download is performed unsandboxed' || true; }
      deb=$(ls -1 "$WORK"/kernel/"$KPKG"_*.deb 2>/dev/null | head -1)
      [ -n "$deb" ] || die "apt-get download $KPKG gave no .deb"
      dpkg-deb -x "$deb" "$kdir"
      rm -f "$deb"
    fi
    KERNEL=$(ls -1 "$kdir"/boot/vmlinuz-* | head -1)
  elif [ -n "$cached" ]; then
    KERNEL=$cached
  else
    die "no kernel: pass --kernel VMLINUZ or drop --no-install"
  fi
fi
[ -r "$KERNEL" ] || die "kernel image not readable: $KERNEL"
# The Debian config must have what this guest uses built in (no modules are loaded).
kconfig=$(dirname "$KERNEL")/config-$(basename "$KERNEL" | sed 's/^vmlinuz-//')
if [ -r "$kconfig" ]; then
  for opt in BLK_DEV_INITRD RD_GZIP DEVTMPFS PROC_FS SYSFS BINFMT_ELF SERIAL_8250 SERIAL_8250_CONSOLE; do
    grep -q "^CONFIG_$opt=y" "$kconfig" || die "$kconfig: CONFIG_$opt is not built in"
  done
  grep -q '^CONFIG_HUGETLBFS=y' "$kconfig" || echo "run.sh: WARNING: no CONFIG_HUGETLBFS: --hugepages has no effect" >&2
else
  echo "run.sh: WARNING: no kernel config beside $KERNEL; not checked" >&2
fi

# ---------------------------------------------------------------- 2. the static binary
if [ -z "$BIN" ]; then
  log "building the static uiommu binary"
  (cd "$REPO" && RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --release -p uiommu --target x86_64-unknown-linux-gnu)
  BIN=$REPO/target/x86_64-unknown-linux-gnu/release/uiommu
  BUILT="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" diff --quiet HEAD -- crates Cargo.toml Cargo.lock 2>/dev/null || echo ' + uncommitted changes')"
fi
[ -x "$BIN" ] || die "not an executable: $BIN"
is_static "$BIN" || die "$BIN is not statically linked (the guest has no libc)"

# ---------------------------------------------------------------- 3. the initramfs
log "packing the initramfs"
ROOT=$WORK/initramfs
rm -rf "$ROOT"
mkdir -p "$ROOT"/{bin,sbin,etc,proc,sys,dev,tmp,root}
cp "$BUSYBOX" "$ROOT/bin/busybox"
ln -s busybox "$ROOT/bin/sh"
# Debug info is most of the binary's size; symbols stay (backtraces).
if command -v strip >/dev/null; then
  strip --strip-debug -o "$ROOT/bin/uiommu" "$BIN"
else
  cp "$BIN" "$ROOT/bin/uiommu"
fi
cp "$VMDIR/calibrate.sh" "$ROOT/bin/calibrate.sh"
# Without /dev/console in the archive the kernel starts /init with no stdout (the init
# script reopens the console from devtmpfs too, for a non-root packer).
[ "$(id -u)" = 0 ] && mknod -m 600 "$ROOT/dev/console" c 5 1
BENCH_ARGS=
[ "$QUICK" = 1 ] && BENCH_ARGS=--quick
{
  echo "BENCH_ARGS='$BENCH_ARGS'"
  echo "HUGEPAGES=$HUGEPAGES"
  echo "THP=$THP"
  # Each as one shell word: --only "map+unmap 4 KiB" stays one argument.
  printf 'set --'
  for o in "${ONLY[@]}"; do printf ' --only %q' "$o"; done
  echo
  for e in "${ENVS[@]}"; do printf 'export %s=%q\n' "${e%%=*}" "${e#*=}"; done
} >"$ROOT/etc/bench.conf"
cat >"$ROOT/init" <<'EOF'
#!/bin/sh
# uiommu bench guest: calibration, bench, JSON between markers, power off.
export PATH=/bin:/sbin
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s /bin
exec </dev/console >/dev/console 2>&1
. /etc/bench.conf
M=UIOMMU-VM
up() { read -r u _ </proc/uptime; echo "$u"; }

echo "@@@ $M calibration"
echo "guest.kernel=$(uname -r)"
echo "guest.kernel_version=$(cat /proc/version)"
echo "guest.cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
echo "guest.cpus=$(grep -c '^processor' /proc/cpuinfo)"
echo "guest.cpu_vendor=$(sed -n 's/^vendor_id[[:space:]]*: //p' /proc/cpuinfo | head -1)"
echo "guest.cpu_bugs=$(sed -n 's/^bugs[[:space:]]*: //p' /proc/cpuinfo | head -1)"
echo "guest.bogomips=$(sed -n 's/^bogomips[[:space:]]*: //p' /proc/cpuinfo | head -1)"
echo "guest.mem_total=$(sed -n 's/^MemTotal: *//p' /proc/meminfo)"
thp=/sys/kernel/mm/transparent_hugepage/enabled
[ "$THP" != keep ] && [ -w "$thp" ] && echo "$THP" >"$thp"
echo "guest.thp=$(cat "$thp" 2>/dev/null)"
[ "$HUGEPAGES" -gt 0 ] && echo "$HUGEPAGES" >/proc/sys/vm/nr_hugepages
echo "guest.hugepages=$(cat /proc/sys/vm/nr_hugepages) (asked $HUGEPAGES)"
echo "guest.boot_uptime_s=$(up)"
sh /bin/calibrate.sh /bin/busybox | sed 's/^/guest./'

echo "@@@ $M bench: uiommu bench $BENCH_ARGS $* --json /tmp/b.json"
cd /tmp
t0=$(up)
/bin/uiommu bench $BENCH_ARGS "$@" --json /tmp/b.json
rc=$?
t1=$(up)
# Only emergencies on the console from here, so that nothing interleaves with the JSON.
dmesg -n 1
echo "guest.bench_exit=$rc"
echo "guest.bench_wall_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')"
if [ "$rc" != 0 ]; then
  echo "@@@ $M kernel log tail"
  dmesg | tail -n 30
fi
if [ -s /tmp/b.json ]; then
  echo "@@@ $M JSON BEGIN"
  cat /tmp/b.json
  echo
  echo "@@@ $M JSON END"
fi
echo "@@@ $M done"
sync
poweroff -f
EOF
chmod 755 "$ROOT/init" "$ROOT/bin/calibrate.sh"
INITRD=$WORK/initrd.gz
(cd "$ROOT" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner=0:0 --quiet) \
  | gzip -6 >"$INITRD"

# ---------------------------------------------------------------- 4. boot under TCG
LOG=$OUT/guest.log
JSON=$OUT/guest.json
META=$OUT/guest.meta
rm -f "$LOG" "$JSON" "$META"
host_calib=$("$BUSYBOX" sh "$VMDIR/calibrate.sh" "$BUSYBOX" | sed 's/^/host./')
QEMU=(qemu-system-x86_64 -accel tcg -smp "$SMP" -m "$MEM")
[ -n "$CPU" ] && QEMU+=(-cpu "$CPU")
QEMU+=(-kernel "$KERNEL" -initrd "$INITRD" -append 'console=ttyS0 quiet panic=-1'
  -nographic -no-reboot -nic none)
log "booting (timeout ${TIMEOUT}s): ${QEMU[*]}"
log "console -> $LOG"
t0=$(date +%s)
set +e
timeout -k 30 "$TIMEOUT" "${QEMU[@]}" </dev/null 2>&1 | tee "$LOG"
qrc=${PIPESTATUS[0]}
set -e
wall=$(( $(date +%s) - t0 ))

# The serial console ends lines with \r\n and QEMU may add terminal escapes.
CLEAN=$WORK/console.txt
tr -d '\r' <"$LOG" | sed 's/\x1b\[[0-9;?]*[A-Za-z]//g; s/\x1bc//g' >"$CLEAN"
clean() { cat "$CLEAN"; }
clean | sed -n '/^@@@ UIOMMU-VM JSON BEGIN$/,/^@@@ UIOMMU-VM JSON END$/p' | sed '1d;$d' >"$JSON.tmp" || true
{
  echo "run.command=$0 $([ "$QUICK" = 1 ] && echo --quick) --mem $MEM --smp $SMP --hugepages $HUGEPAGES --thp $THP${CPU:+ --cpu $CPU}$(for o in "${ONLY[@]}"; do printf ' --only %q' "$o"; done)$(for e in "${ENVS[@]}"; do printf ' --env %q' "$e"; done)"
  echo "run.qemu=$(qemu-system-x86_64 --version | head -1)"
  echo "run.kernel_image=$KERNEL${KPKG:+ ($KPKG)}"
  echo "run.binary=$BIN${BUILT:+ (built from $BUILT)}"
  echo "run.qemu_exit=$qrc"
  echo "run.wall_s=$wall"
  echo "$host_calib"
  clean | grep -E '^guest\.[a-z_0-9.]+=' || true
} >"$META"
# Guest/host ratios of the calibration loops.
for k in dd_500k_1byte_ms sh_loop_100k_ms; do
  h=$(sed -n "s/^host.calib.$k=//p" "$META"); g=$(sed -n "s/^guest.calib.$k=//p" "$META")
  [ -n "$h" ] && [ -n "$g" ] && [ "$h" -gt 0 ] &&
    awk -v h="$h" -v g="$g" -v k="$k" 'BEGIN { printf "ratio.calib.%s=%.2f\n", k, g / h }' >>"$META"
done

echo
log "summary"
cat "$META"
clean | grep -E '^bench: .*: [0-9.]+ s$' | sed 's/^/section: /' || true
if ! grep -q '^@@@ UIOMMU-VM JSON END$' "$CLEAN"; then
  rm -f "$JSON.tmp"
  [ "$qrc" = 124 ] && echo "run.sh: timed out after ${TIMEOUT}s" >&2
  echo "run.sh: the JSON markers are missing from $LOG (qemu exit $qrc)" >&2
  exit 2
fi
mv "$JSON.tmp" "$JSON"
if command -v jq >/dev/null; then
  jq -e . "$JSON" >/dev/null || { echo "run.sh: $JSON is not valid JSON" >&2; exit 2; }
elif command -v python3 >/dev/null; then
  python3 -m json.tool "$JSON" >/dev/null || { echo "run.sh: $JSON is not valid JSON" >&2; exit 2; }
fi
log "JSON -> $JSON"
if ! grep -q '^guest.bench_exit=0$' "$META"; then
  echo "run.sh: the bench exited nonzero in the guest (see $LOG)" >&2
  exit 3
fi
