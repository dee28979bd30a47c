#!/usr/bin/env bash
# IOAS_MAP+UNMAP of 4 KiB with a device attached: in-process engine, host engine (preload
# front-end; seccomp front-end, the same program built static), and a bare two-process socket
# round trip, all in one run (docs/HOST.md); and the in-process pair with `run --trace` on, beside
# the same with it off, the same with the trace compiled out (what off costs), and the host
# engine's pair with and without a live tracer (`uiommu trace`) (docs/TRACE.md).
# Usage: bash bench/host/run.sh [PAIRS]   (from anywhere)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p uiommu -p uiommu-preload
out=target/bench-host
mkdir -p "$out"
cc -O2 -Wall -Wextra -Werror -I crates/preload/tests/c -o "$out/map_unmap" bench/host/map_unmap.c
cc -O2 -Wall -Wextra -Werror -static -I crates/preload/tests/c -o "$out/map_unmap_static" \
  bench/host/map_unmap.c
bin=target/release/uiommu
n=${1:-20000}
inproc=$("$bin" run --engine in-process -- "$out/map_unmap" "$n")
host=$("$bin" run --engine host --instance bench-$$ -- "$out/map_unmap" "$n")
seccomp=$("$bin" run --instance bench-$$ -- "$out/map_unmap_static" "$n")
rm -f "$out/trace.txt"
traced=$("$bin" run --engine in-process --trace "$out/trace.txt" -- "$out/map_unmap" "$n")
untraced=$("$bin" run --engine in-process -- "$out/map_unmap" "$n")
# What the trace costs when off: the in-process pair with the library as shipped (trace off)
# against the same library with the trace compiled out, alternated five times (medians).
cargo build --release -p uiommu-preload --features no-trace --target-dir target/notrace
notrace_lib=target/notrace/release/libuiommu_preload.so
offs="" outs=""
for _ in 1 2 3 4 5; do
  offs="$offs $("$bin" run --engine in-process -- "$out/map_unmap" "$n" | tr -d ' ')"
  outs="$outs $("$bin" run --engine in-process --preload "$notrace_lib" -- "$out/map_unmap" "$n" | tr -d ' ')"
done
# The host engine's live trace (`uiommu trace`): the pair with no tracer, then with one.
live=bench-live-$$
"$bin" serve --instance "$live" 2>/dev/null &
serve_pid=$!
trap 'kill $serve_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do "$bin" status --instance "$live" >/dev/null 2>&1 && break; sleep 0.1; done
host_off=$("$bin" run --engine host --instance "$live" -- "$out/map_unmap" "$n")
rm -f "$out/live.txt"
"$bin" trace --instance "$live" --output "$out/live.txt" &
tracer_pid=$!
for _ in $(seq 100); do
  "$bin" status --json --instance "$live" | grep -q '"tracers":1' && break; sleep 0.1
done
host_on=$("$bin" run --engine host --instance "$live" -- "$out/map_unmap" "$n")
kill $serve_pid; wait $tracer_pid || true
echo "$inproc"
echo "$host"
echo "$seccomp"
echo "$traced"
echo "$host_off"
echo "$host_on"
python3 - "$inproc" "$host" "$seccomp" "$traced" "$untraced" "$(wc -l < "$out/trace.txt")" \
  "$host_off" "$host_on" "$(wc -l < "$out/live.txt")" "$offs" "$outs" <<'PY'
import json, statistics, sys
a, b, c, t, u = (json.loads(x) for x in sys.argv[1:6])
lines = int(sys.argv[6])
off, on = (json.loads(x) for x in sys.argv[7:9])
live_lines = int(sys.argv[9])
print(f"in-process {a['pair_us']:.2f} us/pair, host engine {b['pair_us']:.2f} us/pair "
      f"({b['pair_us'] / a['pair_us']:.1f}x), bare round trip {b['round_trip_us']:.2f} us "
      f"(a pair forwards 2 calls: {b['pair_us'] / (2 * b['round_trip_us']):.2f}x of 2 round trips)")
print(f"seccomp front-end (static) {c['pair_us']:.2f} us/pair "
      f"({c['pair_us'] / a['pair_us']:.1f}x in-process, {c['pair_us'] / b['pair_us']:.2f}x preload)")
print(f"trace on: {t['pair_us']:.2f} us/pair ({lines} lines) against off {u['pair_us']:.2f} and "
      f"{a['pair_us']:.2f} us/pair in the same run ({t['pair_us'] / ((a['pair_us'] + u['pair_us']) / 2):.2f}x)")
print(f"host engine, live trace: no tracer {off['pair_us']:.2f} us/pair (and {b['pair_us']:.2f} on demand), "
      f"one tracer {on['pair_us']:.2f} us/pair ({live_lines} lines; {on['pair_us'] / off['pair_us']:.2f}x)")
shipped = [json.loads(x)['pair_us'] for x in sys.argv[10].split()]
compiled_out = [json.loads(x)['pair_us'] for x in sys.argv[11].split()]
ms, mc = statistics.median(shipped), statistics.median(compiled_out)
print(f"trace off: {ms:.3f} us/pair (median of " + ", ".join(f"{x:.3f}" for x in shipped) +
      f") against the trace compiled out {mc:.3f} (" + ", ".join(f"{x:.3f}" for x in compiled_out) +
      f"): {ms / mc:.3f}x")
PY
