#!/usr/bin/env bash
# Compare uiommu against the recorded real-kernel corpus: run gen for each recorded seed under
# `uiommu run --as-root --kernel 6.12` and diff its output line by line against the kernel's.
#
# Usage: oracle/compare.sh [--log FILE.txt.xz]... [--seeds FIRST-LAST] [--level 6.12]
#                          [--uiommu PATH] [--instance NAME] [--coverage] [--quiet]
#   --log FILE     a recorded corpus (default: every oracle/logs/kernel-6.12/*.txt.xz)
#   --seeds A-B    only these seeds of the corpus
#   --level V      the uAPI level uiommu follows (`run --kernel`), default 6.12
#   --uiommu PATH  the uiommu executable (default target/release/uiommu, built if missing)
#   --instance N   the host engine instance the static gen is served by (default: oracle)
#   --coverage     also print, per ioctl, how many ops the corpus has and the results seen
#   --categories   also print the first differences grouped by op and the two results
#   --quiet        print only differing seeds and the summary
# Prints per seed "seed N: identical" or the first differing line (kernel and uiommu), then
# "N of M seeds identical". Outputs are kept in oracle/work/cmp/{kernel,uiommu}/SEED.txt.
# Exit: 0 all identical; 1 some differ; 2 setup error.
set -euo pipefail

ORACLE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$ORACLE/.." && pwd)
WORK=$ORACLE/work
LOGS=()
SEEDS=
LEVEL=6.12
UIOMMU=$REPO/target/release/uiommu
INSTANCE=oracle
COVERAGE=0
CATEGORIES=0
QUIET=0
while [ $# -gt 0 ]; do
  case "$1" in
    --log) LOGS+=("${2:?}"); shift ;;
    --seeds) SEEDS=${2:?}; shift ;;
    --level) LEVEL=${2:?}; shift ;;
    --uiommu) UIOMMU=${2:?}; shift ;;
    --instance) INSTANCE=${2:?}; shift ;;
    --coverage) COVERAGE=1 ;;
    --categories) CATEGORIES=1 ;;
    --quiet) QUIET=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
[ ${#LOGS[@]} -gt 0 ] || LOGS=("$ORACLE"/logs/kernel-6.12/*.txt.xz)
for l in "${LOGS[@]}"; do [ -f "$l" ] || { echo "compare.sh: no corpus $l (run oracle/record.sh)" >&2; exit 2; }; done

"$ORACLE/build-gen.sh" || exit 2
if [ ! -x "$UIOMMU" ]; then
  (cd "$REPO" && cargo build --release -p uiommu) || exit 2
fi
# a snapshot of the executable, so that a rebuild during the run does not change the engine
cp "$UIOMMU" "$WORK/uiommu.snapshot.tmp" && mv -f "$WORK/uiommu.snapshot.tmp" "$WORK/uiommu.snapshot"
UIOMMU=$WORK/uiommu.snapshot

K=$WORK/cmp/kernel
U=$WORK/cmp/uiommu
rm -rf "$WORK/cmp"
mkdir -p "$K" "$U"
# split the corpus into one file per seed (each seed begins with its "gen seed=N nops=M" line)
for l in "${LOGS[@]}"; do
  xz -dc "$l" | awk -v dir="$K" '
    /^gen seed=/ { split($2, a, "="); f = dir "/" a[2] ".txt"; printf "" > f }
    f { print >> f }'
done

lo=0; hi=999999999
if [ -n "$SEEDS" ]; then lo=${SEEDS%-*}; hi=${SEEDS#*-}; fi
total=0; same=0
declare -A kinds=()
for f in $(ls "$K" | sort -n); do
  s=${f%.txt}
  [ "$s" -ge "$lo" ] && [ "$s" -le "$hi" ] || continue
  nops=$(head -1 "$K/$f" | sed -n 's/.* nops=\([0-9]*\).*/\1/p')
  skip=$(head -1 "$K/$f" | sed -n 's/.* skip=\([^ ]*\).*/skip=\1/p') # a masked corpus
  for try in 1 2 3; do
    "$UIOMMU" run --as-root --kernel "$LEVEL" --instance "$INSTANCE" -- "$WORK/gen" "$s" "$nops" $skip \
      >"$U/$f" 2>"$U/$s.stderr" || true
    grep -q '^uiommu run:' "$U/$s.stderr" || break # the engine did not start: try again
  done
  total=$((total + 1))
  if cmp -s "$K/$f" "$U/$f"; then
    same=$((same + 1))
    [ "$QUIET" = 1 ] || echo "seed $s: identical"
  else
    c=$(cmp "$K/$f" "$U/$f" 2>&1 || true)
    n=$(echo "$c" | sed -n 's/.* line \([0-9]*\).*/\1/p')
    case "$c" in *EOF*) n=$(( ${n:-0} + 1 )) ;; esac # one output is a prefix of the other
    [ -n "$n" ] || n=1
    kl=$(sed -n "${n}p" "$K/$f"); ul=$(sed -n "${n}p" "$U/$f")
    echo "seed $s: differs at line $n"
    echo "  kernel: ${kl:-<end of output>}"
    echo "  uiommu: ${ul:-<end of output>}"
    printf '%s\t%s\t%s\n' "$s" "$kl" "$ul" >>"$WORK/cmp/firstdiffs.tsv"
    [ -s "$U/$s.stderr" ] && sed 's/^/  stderr: /' "$U/$s.stderr" | head -3
  fi
done
echo "$same of $total seeds identical"

if [ "$CATEGORIES" = 1 ] && [ -s "$WORK/cmp/firstdiffs.tsv" ]; then
  echo
  echo "first differences by op and results (seeds: op | kernel result | uiommu result | example seed)"
  awk -F'\t' '
    function result(l,   r) { if (l == "") return "<end>"; r = l; if (!sub(/.* -> /, "", r)) return "?"
                             split(r, a, " "); return a[1] }
    { split($2, k, " "); op = k[2] == "" ? "<end>" : k[2]
      key = op " | kernel " result($2) " | uiommu " result($3)
      if (result($2) == result($3)) key = key " (outputs differ)"
      n[key]++; if (!(key in ex)) ex[key] = $1 }
    END { for (key in n) printf "%5d  %s | e.g. seed %s\n", n[key], key, ex[key] }' \
    "$WORK/cmp/firstdiffs.tsv" | sort -rn
fi

if [ "$COVERAGE" = 1 ]; then
  echo
  echo "coverage of the kernel corpus (ops; distinct results: result=count ...)"
  cat "$K"/*.txt | awk '
    /^[0-9][0-9][0-9][0-9] / {
      op = $2; r = "?"
      for (i = 3; i <= NF; i++) if ($i == "->") { r = $(i + 1); break }
      if (r ~ /^ret=/) r = "ret"
      n[op]++; if (!((op, r) in c)) nr[op]++; c[op, r]++
    }
    END {
      for (op in n) {
        line = sprintf("%-22s %6d ops %2d results:", op, n[op], nr[op])
        for (k in c) { split(k, p, SUBSEP); if (p[1] == op) line = line " " p[2] "=" c[k] }
        print line
      }
    }' | sort
fi
[ "$same" = "$total" ]
