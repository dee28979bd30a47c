#!/usr/bin/env bash
# Record the oracle corpus on the real kernel: build gen and a tiny /init (static), pack them
# into an initramfs, boot oracle/work/bzImage (build-kernel.sh) in QEMU TCG, run gen for each
# seed and keep its output, compressed, in oracle/logs/kernel-6.12/.
#
# Usage: oracle/record.sh [--seeds FIRST-LAST] [--nops N] [--timeout SECONDS] [--kernel BZIMAGE]
#                         [--out DIR] [--dump] [--skip OP+OP...]
#   defaults: --seeds 1-200 --nops 200 --timeout 3600 --kernel oracle/work/bzImage
#             --out oracle/logs/kernel-6.12
#   --dump   run `gen SEED NOPS dump` (extra "#data" lines: the bytes ACCESS_RW read, and
#            "#changed" lines: the user pages no longer holding their initial pattern);
#            --dumpall: "#changed" after every op. For debugging a difference, not for the
#            corpus (use --out oracle/work/...)
#   --skip OP+OP  gen never chooses these ops (names of gen.c's ops table, e.g.
#            GET_DIRTY_BITMAP+VFIO_MAP_DMA): a masked corpus, to see the differences that the
#            frequent ones hide (compare.sh runs gen with the same skip list)
# Output: oracle/logs/kernel-6.12/seeds-FIRST-LAST.txt.xz (every seed's gen output in turn;
#         each begins with its "gen seed=N" line), oracle/work/console.log (the whole console).
# Exit: 0 ok; 1 setup error; 2 markers missing or a seed did not finish (timeout, crash).
set -euo pipefail

ORACLE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORK=$ORACLE/work
SEEDS=1-200
NOPS=200
TIMEOUT=3600
KERNEL=$WORK/bzImage
OUTDIR=$ORACLE/logs/kernel-6.12
DUMP=
SKIP=
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) SEEDS=${2:?}; shift ;;
    --nops) NOPS=${2:?}; shift ;;
    --timeout) TIMEOUT=${2:?}; shift ;;
    --kernel) KERNEL=${2:?}; shift ;;
    --out) OUTDIR=${2:?}; shift ;;
    --dump) DUMP=dump ;;
    --dumpall) DUMP=dumpall ;;
    --skip) SKIP=skip=${2:?}; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "record.sh: unknown argument: $1" >&2; exit 1 ;;
  esac
  shift
done
FIRST=${SEEDS%-*}; LAST=${SEEDS#*-}
case "$FIRST$LAST$NOPS$TIMEOUT" in *[!0-9]*) echo "record.sh: numbers please" >&2; exit 1 ;; esac
[ -f "$KERNEL" ] || { echo "record.sh: no kernel $KERNEL (run oracle/build-kernel.sh)" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || { echo "record.sh: qemu-system-x86_64 missing" >&2; exit 1; }

echo "== building gen and init"
"$ORACLE/build-gen.sh"
gcc -O2 -Wall -static -o "$WORK/init" "$ORACLE/init.c"

# gen_init_cpio (the kernel's own, built with the kernel; else compiled from its source) packs
# device nodes without needing mknod on the host.
KSRC=$WORK/linux-source-6.12
CPIO=$KSRC/usr/gen_init_cpio
[ -x "$CPIO" ] || { gcc -O2 -o "$WORK/gen_init_cpio" "$KSRC/usr/gen_init_cpio.c"; CPIO=$WORK/gen_init_cpio; }
opts=$DUMP${DUMP:+${SKIP:+,}}$SKIP
echo "$FIRST $LAST $NOPS $opts" >"$WORK/seeds"
cat >"$WORK/initramfs.list" <<LIST
dir /dev 0755 0 0
nod /dev/console 0600 0 0 c 5 1
dir /proc 0755 0 0
dir /sys 0755 0 0
file /init $WORK/init 0755 0 0
file /gen $WORK/gen 0755 0 0
file /seeds $WORK/seeds 0644 0 0
LIST
"$CPIO" "$WORK/initramfs.list" | gzip -1 >"$WORK/initramfs.cpio.gz"

echo "== booting $KERNEL (seeds $FIRST-$LAST, $NOPS ops each, timeout ${TIMEOUT}s)"
T0=$(date +%s)
set +e
timeout "$TIMEOUT" qemu-system-x86_64 -accel tcg -smp 2 -m 2048 -nographic -no-reboot -nic none \
  -kernel "$KERNEL" -initrd "$WORK/initramfs.cpio.gz" \
  -append "console=ttyS0 loglevel=1 panic=-1 transparent_hugepage=never" </dev/null \
  >"$WORK/console.log" 2>&1
QRC=$?
set -e
T1=$(date +%s)
echo "== qemu exit $QRC after $((T1 - T0)) s"

tr -d '\r' <"$WORK/console.log" >"$WORK/console.txt"
grep -q '^@@ORACLE END' "$WORK/console.txt" || { echo "record.sh: no @@ORACLE END marker (see $WORK/console.log)" >&2; exit 2; }
grep '^@@ORACLE BEGIN' "$WORK/console.txt"
mkdir -p "$OUTDIR"
OUT=$OUTDIR/seeds-$FIRST-$LAST.txt
bad=0
awk -v out="$OUT" '
  /^@@SEED [0-9]+ BEGIN$/ { inseed = 1; next }
  /^@@SEED [0-9]+ END / { inseed = 0; if ($4 != "status=0") { print "seed " $2 ": " $4 > "/dev/stderr"; bad = 1 } next }
  inseed { print > out }
  END { exit bad }' "$WORK/console.txt" </dev/null || bad=1
[ -f "$OUT" ] || : >"$OUT"
seeds=$(grep -c '^gen seed=' "$OUT" || true)
ends=$(grep -c '^gen end$' "$OUT" || true)
ops=$(grep -c '^[0-9][0-9][0-9][0-9] ' "$OUT" || true)
xz -9e -f "$OUT"
echo "== recorded $seeds seeds ($ends complete, $ops ops) into $OUT.xz ($(stat -c %s "$OUT.xz") bytes)"
[ "$bad" = 0 ] && [ "$seeds" = "$ends" ] || exit 2
