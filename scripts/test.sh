#!/usr/bin/env bash
# All of uiommu's tests, on a fresh Debian machine: the README's test command, and what
# .ci/run calls.
#
#   bash scripts/test.sh [--no-install] [--quick]
#
# 1. Installs what the tests need when it can (root and apt): gcc and libc6-dev (the C test
#    programs, some linked -static), QEMU 8.2 or newer from bookworm-backports
#    (crates/uiommu/tests/qemu.rs; bookworm's own is 7.2), and reserves 128 hugetlb pages (the
#    kernel's selftest needs 64 free). conformance/run.sh installs linux-source-6.12 itself.
#    What cannot be installed is said, and the tests that need it report themselves not run.
# 2. Runs `cargo test --workspace`; then (unless --quick) the kernel's iommufd selftests under
#    uiommu run (in-process, under the host engine, and built static: the seccomp front-end) and
#    the rust-vmm clients under the host engine.
# 3. Prints one summary. A test that could not run here (not root, no QEMU) says "not run:"
#    in its output and is counted as not run, never as passed; one that ran in part lists the
#    part that did not ("part not run:").
#
# Exit status: 0 when nothing failed (tests not run do not fail it), 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

install=1
quick=0
for a in "$@"; do
  case "$a" in
    --no-install) install=0 ;;
    --quick) quick=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "test.sh: unknown argument $a (see --help)" >&2; exit 2 ;;
  esac
done

root=0
[ "$(id -u)" = 0 ] && root=1
can_apt=0
[ "$install" = 1 ] && [ "$root" = 1 ] && command -v apt-get >/dev/null 2>&1 && can_apt=1
not_installed=()

echo "== prerequisites"
# A C compiler and libc.a.
if ! command -v cc >/dev/null 2>&1 || ! [ -f "$(cc -print-file-name=libc.a 2>/dev/null)" ]; then
  if [ "$can_apt" = 1 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev >/dev/null
  else
    not_installed+=("gcc libc6-dev (the C test programs)")
  fi
fi
command -v cc >/dev/null 2>&1 && cc --version | head -1

# QEMU >= 8.2 (the iommufd object).
qemu_ok() {
  local v
  v=$(qemu-system-x86_64 --version 2>/dev/null | sed -n 's/.*version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p' | head -1)
  [ -n "$v" ] && set -- $v && { [ "$1" -gt 8 ] || { [ "$1" -eq 8 ] && [ "$2" -ge 2 ]; }; }
}
if ! qemu_ok && [ "$can_apt" = 1 ]; then
  list=/etc/apt/sources.list.d/backports.list
  grep -qs '^deb http://deb.debian.org/debian bookworm-backports main' "$list" \
    || echo 'deb http://deb.debian.org/debian bookworm-backports main' >> "$list"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports qemu-system-x86 >/dev/null
fi
if qemu_ok; then
  qemu-system-x86_64 --version | head -1
else
  not_installed+=("qemu-system-x86 >= 8.2 from bookworm-backports (crates/uiommu/tests/qemu.rs)")
  export UIOMMU_SKIP_QEMU=1
fi

# Hugetlb pages for the selftest (64 free) and the huge-page tests.
free_huge() { awk '/^HugePages_Free:/ {print $2}' /proc/meminfo; }
if [ "$(free_huge)" -lt 64 ]; then
  if [ "$root" = 1 ] && [ "$install" = 1 ]; then
    want=$(( $(awk '/^HugePages_Total:/ {print $2}' /proc/meminfo) + 128 - $(free_huge) ))
    echo "$want" > /proc/sys/vm/nr_hugepages || true
  fi
  [ "$(free_huge)" -ge 64 ] || not_installed+=("64 free hugetlb pages (echo 128 > /proc/sys/vm/nr_hugepages as root)")
fi
echo "free 2 MiB huge pages: $(free_huge)"
for n in "${not_installed[@]}"; do
  echo "not installed: $n$([ "$root" = 1 ] || echo ' (not root)')"
done

log=$(mktemp -d "${TMPDIR:-/tmp}/uiommu-test.XXXXXX")
export UIOMMU_NOT_RUN=$log/not-run
: > "$UIOMMU_NOT_RUN"
failed_steps=()
passed=0
failed=0
skipped=0

count() { # add a cargo log's totals
  local p f
  p=$(grep -Eo '[0-9]+ passed' "$1" | awk '{s+=$1} END {print s+0}')
  f=$(grep -Eo '[0-9]+ failed' "$1" | awk '{s+=$1} END {print s+0}')
  passed=$((passed + p))
  failed=$((failed + f))
}

echo "== cargo test --workspace"
if ! cargo test --workspace 2>&1 | tee "$log/cargo.log"; then failed_steps+=("cargo test --workspace"); fi
count "$log/cargo.log"

conformance() { # NAME FLOOR [EXPECTED-FAILURES-FILE] [ENV...]
  local name=$1 floor=$2 expect=
  shift 2
  case "${1:-}" in *.txt) expect=$1; shift ;; esac
  echo "== conformance: $name"
  if env "$@" bash conformance/run.sh --floor "$floor" ${expect:+--expect-failed "$expect"} 2>&1 \
      | tee "$log/conformance-$name.log"; then :; else
    failed_steps+=("conformance ($name)")
  fi
  # Its table's last row: total PASS FAIL SKIP TOTAL (a skipped selftest is not run here).
  local line
  line=$(grep -E '^total +[0-9]' "$log/conformance-$name.log" | tail -1)
  if [ -n "$line" ]; then
    set -- $line
    passed=$((passed + $2)); skipped=$((skipped + $4))
    if [ -n "$expect" ]; then
      # The failures the real kernel has too: run.sh checked they are exactly those (a
      # difference fails the step); each gave the kernel's result.
      as_kernel=$((as_kernel + $3))
    else
      failed=$((failed + $3))
    fi
  else
    failed_steps+=("conformance ($name): no results")
  fi
}
as_kernel=0

if [ "$quick" = 0 ]; then
  conformance in-process conformance/floor.txt
  # uAPI level 6.12 (uiommu run --kernel 6.12): the real Linux 6.12's result, its 26 failures.
  conformance kernel-6.12 conformance/floor-6.12.txt conformance/failed-6.12.txt UIOMMU_KERNEL=6.12 \
    UIOMMU_CONFORMANCE_DIR=/tmp/uiommu-conformance-6.12
  # The kernel's fault-injection sweeps (iommufd_fail_nth) at both uAPI levels: 7/7, none skipped.
  conformance fail-nth conformance/floor-fail-nth.txt UIOMMU_CONFORMANCE_SUITE=iommufd_fail_nth \
    UIOMMU_CONFORMANCE_DIR=/tmp/uiommu-conformance-fail-nth UIOMMU_BIN=target/release/uiommu
  conformance fail-nth-6.12 conformance/floor-fail-nth.txt UIOMMU_CONFORMANCE_SUITE=iommufd_fail_nth \
    UIOMMU_KERNEL=6.12 UIOMMU_CONFORMANCE_DIR=/tmp/uiommu-conformance-fail-nth-6.12 \
    UIOMMU_BIN=target/release/uiommu
  conformance host conformance/floor-host.txt UIOMMU_ENGINE=host UIOMMU_INSTANCE=test-conformance-$$ \
    UIOMMU_CONFORMANCE_DIR=/tmp/uiommu-conformance-host
  conformance static conformance/floor-host.txt UIOMMU_CONFORMANCE_STATIC=1 \
    UIOMMU_INSTANCE=test-conformance-static-$$ UIOMMU_CONFORMANCE_DIR=/tmp/uiommu-conformance-static \
    UIOMMU_BIN=target/release/uiommu
  echo "== the rust-vmm clients under the host engine (docs/HOST.md)"
  if ! UIOMMU_ENGINE=host UIOMMU_INSTANCE=test-clients-$$ cargo test -p uiommu-clients 2>&1 \
      | tee "$log/clients.log"; then
    failed_steps+=("rust-vmm clients under the host engine")
  fi
  count "$log/clients.log"
fi

whole=$(( $(grep -c '^not run: ' "$UIOMMU_NOT_RUN" || true) + skipped ))
parts=$(grep -c '^part not run: ' "$UIOMMU_NOT_RUN" || true)
passed=$((passed - whole))
echo "== summary"
[ "$skipped" = 0 ] || echo "  not run: $skipped kernel selftest(s) skipped (conformance logs)"
sort "$UIOMMU_NOT_RUN" | uniq -c | sed 's/^ */  /'
for s in "${failed_steps[@]}"; do echo "  failed: $s"; done
[ "$as_kernel" = 0 ] || echo "  $as_kernel kernel selftests failed at uAPI level 6.12 as they fail on Linux 6.12 (expected)"
echo "total: $passed passed, $failed failed, $whole not run ($parts parts not run); logs in $log"
[ "${#failed_steps[@]}" = 0 ] && [ "$failed" = 0 ]
