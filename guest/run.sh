#!/usr/bin/env bash
# Boot the NVMe test guest (guest/build.sh's work/vmlinuz + work/initrd.gz) under QEMU TCG with
# the given device arguments, capture its serial console, and report what guest/init found.
#
#   qemu-system-x86_64 -accel tcg -smp 2 -m MEM -nographic -no-reboot -nic none
#     -kernel WORK/vmlinuz -initrd WORK/initrd.gz
#     -append "console=ttyS0 panic=-1 uiommu.mib=N uiommu.deadline=D [APPEND]" DEVICE ARGS...
# optionally prefixed by a wrapper (--wrap), under `timeout`. Never /dev/kvm: always TCG.
#
# Usage: guest/run.sh [--work DIR] [--timeout S] [--mem MiB] [--mib N] [--wrap "CMD ..."]
#                     [--log FILE] [--append "KERNEL ARGS"] [--disk-mib N] [--verbose]
#                     (--qemu-nvme | -- QEMU DEVICE ARGS...)
#   --work DIR        where build.sh put the guest (default guest/work)
#   --timeout S       whole run, QEMU included (default 600); the guest's own watchdog
#                     (uiommu.deadline) is set to S - 60
#   --mem MiB         guest memory (default 512)
#   --mib N           pattern size, kernel parameter uiommu.mib (default 64)
#   --wrap "CMD ..."  run QEMU under CMD (split on blanks), e.g.
#                     --wrap "target/release/uiommu run --"
#   --log FILE        the raw console (default WORK/console.log)
#   --append ARGS     more kernel parameters (e.g. uiommu.fs=0, nvme_core.io_timeout=10)
#   --qemu-nvme       QEMU's own NVMe on a fresh sparse WORK/disk.img (--disk-mib, default 256):
#                     -drive file=WORK/disk.img,if=none,id=d0,format=raw
#                     -device nvme,serial=test,drive=d0
#   --verbose         show the whole console while it runs (default: only UIOMMU-GUEST lines)
#   -- ARGS...        the device arguments, e.g. -device vfio-pci,host=...; none at all boots
#                     a guest without NVMe (it must report "no nvme" and FAIL)
# Exit: 0 result=PASS and done; 1 setup error; 2 no done marker (timeout, crash, hang);
#       3 the guest reported result=FAIL.
set -euo pipefail

GDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORK=$GDIR/work
TIMEOUT=600
MEM=512
MIB=64
WRAP=
LOG=
APPEND=
QEMU_NVME=0
DISK_MIB=256
VERBOSE=0
DEVARGS=()

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "run.sh: $*" >&2; exit 1; }
log() { echo "== $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --work) WORK=${2:?--work needs a directory}; shift ;;
    --timeout) TIMEOUT=${2:?--timeout needs seconds}; shift ;;
    --mem) MEM=${2:?--mem needs MiB}; shift ;;
    --mib) MIB=${2:?--mib needs MiB}; shift ;;
    --wrap) WRAP=${2:?--wrap needs a command}; shift ;;
    --log) LOG=${2:?--log needs a file}; shift ;;
    --append) APPEND=${2:?--append needs kernel parameters}; shift ;;
    --disk-mib) DISK_MIB=${2:?--disk-mib needs MiB}; shift ;;
    --qemu-nvme) QEMU_NVME=1 ;;
    --verbose) VERBOSE=1 ;;
    --) shift; DEVARGS=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done
case "$TIMEOUT$MEM$MIB$DISK_MIB" in *[!0-9]*) die "--timeout/--mem/--mib/--disk-mib take numbers" ;; esac
[ "$TIMEOUT" -ge 120 ] || die "--timeout: at least 120 s (TCG boots slowly)"
[ "$QEMU_NVME" = 1 ] && [ ${#DEVARGS[@]} -gt 0 ] && die "--qemu-nvme or device arguments after --, not both"
WORK=$(cd "$WORK" 2>/dev/null && pwd) || die "no work dir (run guest/build.sh first)"
for f in vmlinuz initrd.gz; do
  [ -r "$WORK/$f" ] || die "no $WORK/$f (run guest/build.sh first)"
done
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found (guest/build.sh installs it)"
[ -n "$LOG" ] || LOG=$WORK/console.log
mkdir -p "$(dirname "$LOG")"

if [ "$QEMU_NVME" = 1 ]; then
  # Fresh each run, so that nothing a previous run wrote can pass for this one's.
  rm -f "$WORK/disk.img"
  truncate -s "${DISK_MIB}M" "$WORK/disk.img"
  DEVARGS=(-drive "file=$WORK/disk.img,if=none,id=d0,format=raw" -device nvme,serial=test,drive=d0)
fi
WRAPV=()
[ -n "$WRAP" ] && read -r -a WRAPV <<<"$WRAP"

DEADLINE=$((TIMEOUT - 60))
QEMU=(qemu-system-x86_64 -accel tcg -smp 2 -m "$MEM" -nographic -no-reboot -nic none
  -kernel "$WORK/vmlinuz" -initrd "$WORK/initrd.gz"
  -append "console=ttyS0 panic=-1 uiommu.mib=$MIB uiommu.deadline=$DEADLINE${APPEND:+ $APPEND}"
  "${DEVARGS[@]}")
CMD=("${WRAPV[@]}" "${QEMU[@]}")
log "booting (timeout ${TIMEOUT}s): ${CMD[*]}"
log "console -> $LOG"

# The serial console ends lines with \r\n and QEMU may add terminal escapes.
clean() { tr -d '\r' | sed -u 's/\x1b\[[0-9;?]*[A-Za-z]//g; s/\x1bc//g'; }
t0=$(date +%s)
set +e
if [ "$VERBOSE" = 1 ]; then
  timeout -k 20 "$TIMEOUT" "${CMD[@]}" </dev/null 2>&1 | tee "$LOG" | clean
else
  timeout -k 20 "$TIMEOUT" "${CMD[@]}" </dev/null 2>&1 | tee "$LOG" | clean | grep --line-buffered '^UIOMMU-GUEST: '
fi
qrc=${PIPESTATUS[0]}
set -e
wall=$(( $(date +%s) - t0 ))

CLEAN=$(clean <"$LOG")
echo
if ! grep -q '^UIOMMU-GUEST: done$' <<<"$CLEAN"; then
  [ "$qrc" = 124 ] && echo "run.sh: timed out after ${TIMEOUT}s" >&2
  echo "run.sh: no 'UIOMMU-GUEST: done' in $LOG (qemu exit $qrc, ${wall}s); its last lines:" >&2
  tail -n 25 <<<"$CLEAN" >&2
  exit 2
fi
if grep -q '^UIOMMU-GUEST: result=PASS$' <<<"$CLEAN"; then
  log "PASS in ${wall}s (qemu exit $qrc; console $LOG)"
  exit 0
fi
log "FAIL in ${wall}s: $(grep -m1 '^UIOMMU-GUEST: result=' <<<"$CLEAN" | sed 's/^UIOMMU-GUEST: //') (console $LOG)"
exit 3
