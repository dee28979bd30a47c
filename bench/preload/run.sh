#!/usr/bin/env bash
# The cost of calls a fork child forwards to its parent's engine, beside the same call in the
# parent and a bare Unix-socket round trip measured in the same run (docs/preload.md).
# Usage: bash bench/preload/run.sh [ITERATIONS]   (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p uiommu-preload
out=target/bench-preload
mkdir -p "$out"
cc -O2 -Wall -Wextra -Werror -I crates/preload/tests/c -o "$out/fork_call" bench/preload/fork_call.c
LD_PRELOAD="$PWD/target/release/libuiommu_preload.so" "$out/fork_call" "${1:-5000}"
