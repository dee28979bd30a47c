#!/usr/bin/env bash
# IOAS_MAP+UNMAP of 4 KiB with a device attached: in-process engine, host engine (preload
# front-end), and a bare two-process socket round trip, all in one run (docs/HOST.md).
# Usage: bash bench/host/run.sh [PAIRS]   (from anywhere)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p uiommu -p uiommu-preload
out=target/bench-host
mkdir -p "$out"
cc -O2 -Wall -Wextra -Werror -I crates/preload/tests/c -o "$out/map_unmap" bench/host/map_unmap.c
bin=target/release/uiommu
n=${1:-20000}
inproc=$("$bin" run --engine in-process -- "$out/map_unmap" "$n")
host=$("$bin" run --engine host --instance bench-$$ -- "$out/map_unmap" "$n")
echo "$inproc"
echo "$host"
python3 - "$inproc" "$host" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"in-process {a['pair_us']:.2f} us/pair, host engine {b['pair_us']:.2f} us/pair "
      f"({b['pair_us'] / a['pair_us']:.1f}x), bare round trip {b['round_trip_us']:.2f} us "
      f"(a pair forwards 2 calls: {b['pair_us'] / (2 * b['round_trip_us']):.2f}x of 2 round trips)")
PY
