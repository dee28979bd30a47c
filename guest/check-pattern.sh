#!/usr/bin/env bash
# Check on the host that the first MIB MiB of IMAGE (a backing store the guest wrote, e.g.
# guest/work/disk.img after `guest/run.sh --qemu-nvme`) hold guest/init's pattern.
#
# Prints the same sha256 as the guest's "UIOMMU-GUEST: pattern sha256=..." line, the image's,
# and the sector-by-sector comparison of the pattern helper:
#   check-pattern: pattern sha256=<hex> image=<hex> ok|MISMATCH
#   pattern check: sectors=N bad=M first_bad=S|-
# Uses guest/work/pattern (built by build.sh), else builds it from guest/pattern.c with gcc.
#
# Usage: guest/check-pattern.sh IMAGE MIB [SEED]   (SEED: uiommu.seed, default 1)
# Exit: 0 the pattern is there; 1 it is not; 2 usage or setup error.
set -euo pipefail

GDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "check-pattern.sh: $*" >&2; exit 2; }

case "${1:-}" in -h|--help) usage; exit 0 ;; esac
[ $# -ge 2 ] && [ $# -le 3 ] || { usage >&2; exit 2; }
IMAGE=$1 MIB=$2 SEED=${3:-1}
case "$MIB" in ''|*[!0-9]*) die "MIB: a number" ;; esac
[ -r "$IMAGE" ] || die "cannot read $IMAGE"

PATTERN=$GDIR/work/pattern
if [ ! -x "$PATTERN" ]; then
  command -v gcc >/dev/null || die "no $PATTERN and no gcc to build it (run guest/build.sh)"
  PATTERN=$(mktemp)
  trap 'rm -f "$PATTERN"' EXIT
  gcc -O2 -Wall -o "$PATTERN" "$GDIR/pattern.c"
fi

if [ ! -b "$IMAGE" ] && [ "$(stat -L -c %s "$IMAGE")" -lt $((MIB * 1048576)) ]; then
  echo "check-pattern.sh: WARNING: $IMAGE is smaller than $MIB MiB" >&2
fi
P=$("$PATTERN" gen "$MIB" "$SEED" | sha256sum | cut -d' ' -f1)
I=$(head -c $((MIB * 1048576)) "$IMAGE" | sha256sum | cut -d' ' -f1)
set +e
out=$("$PATTERN" check "$IMAGE" "$MIB" "$SEED")
rc=$?
set -e
[ "$rc" -le 1 ] || die "pattern check failed (exit $rc)"
if [ "$P" = "$I" ] && [ "$rc" = 0 ]; then
  echo "check-pattern: pattern sha256=$P image=$I ok"
  echo "$out"
  exit 0
fi
echo "check-pattern: pattern sha256=$P image=$I MISMATCH"
echo "$out"
exit 1
