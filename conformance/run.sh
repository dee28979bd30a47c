#!/usr/bin/env bash
# Conformance: run the Linux 6.12 kernel's own iommufd selftest binary
# (tools/testing/selftests/iommu/iommufd.c, built unmodified from Debian's linux-source-6.12)
# against uiommu with `uiommu run`, and report pass / fail / skip per fixture.
#
#   bash conformance/run.sh [--floor FILE] [--expect-failed FILE]
#
# UIOMMU_KERNEL (uiommu run --kernel) chooses the uAPI level; with --expect-failed FILE the
# run must fail exactly the tests FILE lists (one name a line, # comments), e.g.
# conformance/failed-6.12.txt, the real 6.12 kernel's failures, under UIOMMU_KERNEL=6.12.
#
# Runs on a fresh Debian machine, as root or not. The kernel source is downloaded (apt) and
# built in a work directory outside the repository, never copied into it:
#   UIOMMU_CONFORMANCE_DIR      work directory (default /tmp/uiommu-conformance)
#   UIOMMU_BIN                  a uiommu executable to use instead of building the workspace
#   UIOMMU_CONFORMANCE_TIMEOUT  seconds for the whole selftest run (default 1200)
#   UIOMMU_ENGINE, UIOMMU_INSTANCE  passed on to `uiommu run`: `UIOMMU_ENGINE=host` runs the suite
#                               under the instance's host engine (docs/HOST.md; floor-host.txt)
#   UIOMMU_CONFORMANCE_STATIC=1 build the selftest with -static: `uiommu run` then serves it
#                               through the seccomp front-end and the host engine (floor-host.txt)
#   UIOMMU_CONFORMANCE_SUITE    which selftest program: `iommufd` (the default) or
#                               `iommufd_fail_nth` (the fault-injection sweeps; floor-fail-nth.txt)
# Results: conformance-results.txt (what is printed) and conformance-results.json
# ({pass, fail, skip, total, per_fixture, failed_tests, ...}) in the work directory, next to the
# run's TAP output (SUITE.log). A crashed or timed-out run is still summarised from what it
# printed; the tests it never reported count as failed.
#
# Exit status: 0, or 1 if --floor FILE is given and fewer tests pass than the number in FILE;
# 2 for a setup problem (missing package and not root, bad arguments).
set -euo pipefail

KVER=6.12
TARBALL=/usr/src/linux-source-$KVER.tar.xz
TOP=linux-source-$KVER
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${UIOMMU_CONFORMANCE_DIR:-/tmp/uiommu-conformance}
TIMEOUT=${UIOMMU_CONFORMANCE_TIMEOUT:-1200}
FACTS=$REPO/conformance/facts.h
SUITE=${UIOMMU_CONFORMANCE_SUITE:-iommufd}
case "$SUITE" in
    iommufd|iommufd_fail_nth) ;;
    *) echo "conformance: UIOMMU_CONFORMANCE_SUITE=$SUITE: expected iommufd or iommufd_fail_nth" >&2; exit 2 ;;
esac
floor_file=
expect_file=

die() { echo "conformance: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --floor) [ $# -ge 2 ] || die "--floor needs a FILE"; floor_file=$2; shift 2 ;;
        --floor=*) floor_file=${1#--floor=}; shift ;;
        --expect-failed) [ $# -ge 2 ] || die "--expect-failed needs a FILE"; expect_file=$2; shift 2 ;;
        -h|--help) sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (usage: run.sh [--floor FILE] [--expect-failed FILE])" ;;
    esac
done
if [ -n "$expect_file" ]; then
    [ -r "$expect_file" ] || die "--expect-failed: cannot read $expect_file"
    expect_file=$(cd "$(dirname "$expect_file")" && pwd)/$(basename "$expect_file")
fi
if [ -n "$floor_file" ]; then
    [ -r "$floor_file" ] || die "--floor: cannot read $floor_file"
    floor=$(grep -Eo '[0-9]+' "$floor_file" | head -1 || true)
    [ -n "$floor" ] || die "--floor: no number in $floor_file"
fi

script_start=$(date +%s)
is_root=false
[ "$(id -u)" = 0 ] && is_root=true

# The work directory must not be inside the repository: kernel files never enter it.
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd -P)
case "$WORK/" in
    "$(cd "$REPO" && pwd -P)"/*) die "UIOMMU_CONFORMANCE_DIR ($WORK) is inside the repository; use a directory outside it" ;;
esac

echo "== conformance: prerequisites"
pkgs=()
[ -f "$TARBALL" ] || pkgs+=("linux-source-$KVER")
command -v gcc >/dev/null 2>&1 || pkgs+=(gcc)
[ -f /usr/include/stdio.h ] || pkgs+=(libc6-dev)
command -v make >/dev/null 2>&1 || pkgs+=(make)
command -v xz >/dev/null 2>&1 || pkgs+=(xz-utils)
if [ ${#pkgs[@]} -gt 0 ]; then
    if ! $is_root; then
        echo "conformance: missing Debian packages: ${pkgs[*]}" >&2
        echo "conformance: install them as root (apt-get install ${pkgs[*]}) or run this script as root" >&2
        exit 2
    fi
    echo "installing: ${pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi
[ -f "$TARBALL" ] || die "$TARBALL still missing after installing linux-source-$KVER"

echo "== conformance: extracting the selftest from $TARBALL into $WORK/src"
SRC=$WORK/src/$TOP
members=(
    "$TOP/tools/testing/selftests/iommu/*"
    "$TOP/tools/testing/selftests/kselftest*.h"
    "$TOP/tools/testing/selftests/lib.mk"
    "$TOP/include/uapi/linux/iommufd.h"
    "$TOP/include/uapi/linux/vfio.h"
    "$TOP/drivers/iommu/iommufd/iommufd_test.h"
)
stamp="$(stat -c '%s %Y' "$TARBALL") ${members[*]}"
if [ "$(cat "$WORK/src/.stamp" 2>/dev/null || true)" != "$stamp" ]; then
    rm -rf "$WORK/src"
    mkdir -p "$WORK/src"
    tar -xJf "$TARBALL" -C "$WORK/src" --wildcards --no-wildcards-match-slash "${members[@]}"
    printf '%s\n' "$stamp" > "$WORK/src/.stamp"
else
    echo "(already extracted)"
fi

# The selftest Makefile expects installed uapi headers (KHDR_INCLUDES = -isystem usr/include, as
# `make headers_install` leaves them). Do that for the two uapi headers the test includes, from
# the 6.12 source rather than the host's (older) linux-libc-dev: strip the __user annotations.
mkdir -p "$WORK/usr/include/linux" "$WORK/bin"
for h in iommufd vfio; do
    sed -E 's/([[:space:](])__user[[:space:]]+/\1/g' "$SRC/include/uapi/linux/$h.h" \
        > "$WORK/usr/include/linux/$h.h"
done

echo "== conformance: building the selftest (unmodified; post-$KVER uapi facts from conformance/facts.h)"
link=()
if [ "${UIOMMU_CONFORMANCE_STATIC:-}" = 1 ]; then
    # A static binary: no preload library reaches it; the seccomp front-end does.
    link=(LDFLAGS=-static)
    echo "(static: served through the seccomp front-end)"
fi
rm -f "$WORK/bin/$SUITE"
make -C "$SRC/tools/testing/selftests/iommu" --no-print-directory V=1 OUTPUT="$WORK/bin" \
    KHDR_INCLUDES="-isystem $WORK/usr/include" USERCFLAGS="-include $FACTS" "${link[@]}" \
    "$WORK/bin/$SUITE"
SELFTEST=$WORK/bin/$SUITE

# The expected tests, in run order, from the harness's own listing (-l only lists, runs nothing).
# Lines are "%-20s %-25s %s" (fixture, variant, test); a fixture's first line names it.
"$SELFTEST" -l 2>&1 | awk '
    function field(s, w,   tok, l) {
        if (s == "" || substr(s, 1, 1) == " ") { REST = substr(s, w + 2); return "" }
        match(s, /^[^ ]+/); tok = substr(s, 1, RLENGTH)
        l = RLENGTH > w ? RLENGTH : w; REST = substr(s, l + 2); return tok
    }
    function flush(   i, j) {
        if (fx == "") return
        if (nv == 0) { nv = 1; var[1] = "" }
        for (i = 1; i <= nv; i++) for (j = 1; j <= nt; j++)
            print fx (var[i] == "" ? "" : "." var[i]) "." tst[j]
        fx = ""; nv = 0; nt = 0
    }
    /^# FIXTURE/ { next }
    /^-----/ { flush(); next }
    {
        f = field($0, 20); v = field(REST, 25); t = REST; gsub(/ /, "", t)
        if (f != "") { flush(); fx = f }
        if (v != "") var[++nv] = v
        if (t != "") tst[++nt] = t
    }
    END { flush() }' > "$WORK/tests.list" || true
echo "$(wc -l < "$WORK/tests.list") tests listed by the binary"

echo "== conformance: hugetlb pages"
hp_free=$(awk '/^HugePages_Free:/ {print $2}' /proc/meminfo)
if $is_root && [ "${hp_free:-0}" -lt 128 ]; then
    hp_total=$(cat /proc/sys/vm/nr_hugepages)
    echo $((hp_total + 128 - hp_free)) > /proc/sys/vm/nr_hugepages \
        || echo "warning: could not raise /proc/sys/vm/nr_hugepages"
    hp_free=$(awk '/^HugePages_Free:/ {print $2}' /proc/meminfo)
fi
echo "free 2 MiB huge pages: ${hp_free:-0} (the suite needs at least 64$($is_root || echo '; not root, so none were reserved'))"

if [ -n "${UIOMMU_BIN:-}" ]; then
    BIN=$UIOMMU_BIN
    case "$BIN" in /*) ;; */*) BIN=$PWD/$BIN ;; *) BIN=$(command -v "$BIN" || echo "$BIN") ;; esac
    echo "== conformance: using UIOMMU_BIN=$BIN"
else
    echo "== conformance: building uiommu (cargo build --release --workspace)"
    (cd "$REPO" && cargo build --release --workspace)
    BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/uiommu
    case "$BIN" in /*) ;; *) BIN=$REPO/$BIN ;; esac
fi
[ -x "$BIN" ] || die "no uiommu executable at $BIN"

LOG=$WORK/$SUITE.log
mkdir -p "$WORK/run"
echo "== conformance: $BIN run --as-root -- $SELFTEST   (timeout ${TIMEOUT}s, TAP output in $LOG)"
run_start=$(date +%s)
set +e
# stdbuf -oL: the harness's TAP lines reach the log as they are printed, even if it crashes.
# --as-root: the suite is written for root (it sets RLIMIT_MODE, which needs CAP_SYS_RESOURCE),
# and the kernel figures it is compared with were measured as root; the emulated caller gets
# root's CAP_IPC_LOCK and CAP_SYS_RESOURCE, whatever this script's own privileges.
(cd "$WORK/run" && exec timeout -k 30 "$TIMEOUT" stdbuf -oL "$BIN" run --as-root -- "$SELFTEST") > "$LOG" 2>&1
rc=$?
set -e
run_secs=$(( $(date +%s) - run_start ))

if grep -q '^# Totals:' "$LOG"; then
    status="completed"
elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    status="timed out after ${TIMEOUT}s"
elif [ "$rc" -gt 128 ]; then
    status="crashed (signal $((rc - 128)))"
else
    status="stopped early"
fi
echo "run: $status, exit status $rc, ${run_secs}s"
echo "-- last lines of the run:"
tail -n 3 "$LOG" | sed 's/^/   | /'

# Summarise: per fixture (the first component of "fixture[.variant].test"), a grand total,
# the failed tests. "ok ... # SKIP" is a skip, "# XFAIL" a pass, "# XPASS" a failure; a listed
# test the run never reported is a failure ("not run"). If the listing failed, the plan line
# "1..N" gives the count of unreported tests.
awk -v txt="$WORK/conformance-results.txt" -v json="$WORK/conformance-results.json" \
    -v countf="$WORK/pass.count" -v status="$status" -v rc="$rc" -v secs="$run_secs" -v kver="$KVER" \
    -v suite="$SUITE" '
    function jstr(s) { gsub(/\\/, "\\\\", s); gsub(/"/, "\\\"", s); return "\"" s "\"" }
    function add(name, res,   fx) {
        if (!(name in result)) {
            order[++n] = name
            fx = name; sub(/\..*/, "", fx)
            if (!(fx in seenfx)) { seenfx[fx] = 1; fxorder[++nfx] = fx }
            fixture[name] = fx
        }
        result[name] = res
    }
    FILENAME == ARGV[1] { if ($0 != "") add($0, "notrun"); next }
    /^1\.\.[0-9]+/ { plan = substr($1, 4) + 0; next }
    /^# (Totals|PASSED|FAILED):/ { harness = harness (harness == "" ? "" : "\n") $0; next }
    /^(not )?ok [0-9]+ / {
        notok = ($1 == "not"); name = notok ? $4 : $3
        if (name == "" || substr(name, 1, 1) == "#") name = "global.(unnamed)"
        if (notok) res = "fail"
        else if ($0 ~ / # SKIP/) res = "skip"
        else if ($0 ~ / # XPASS/) res = "fail"
        else res = "pass"
        add(name, res); reported++
        next
    }
    END {
        unknown = plan - n; if (unknown < 0) unknown = 0
        for (i = 1; i <= n; i++) {
            nm = order[i]; r = result[nm]; f = fixture[nm]
            if (r == "notrun") { r = "fail"; notrun++; failed[++nf] = nm " (not run)" }
            else if (r == "fail") failed[++nf] = nm
            cnt[f, r]++; tot[r]++
        }
        if (unknown > 0) {
            f = "(unlisted)"; fxorder[++nfx] = f; cnt[f, "fail"] += unknown; tot["fail"] += unknown
            notrun += unknown; failed[++nf] = unknown " unlisted tests (not run)"
        }
        total = tot["pass"] + tot["fail"] + tot["skip"]
        out = "uiommu conformance: the Linux " kver " iommufd selftests (tools/testing/selftests/iommu/" suite ")\n"
        out = out "run: " status ", exit status " rc ", " secs "s; " reported + 0 " results reported, " notrun + 0 " tests not run\n"
        out = out (harness == "" ? "(the harness printed no totals)" : harness) "\n\n"
        out = out sprintf("%-26s %6s %6s %6s %6s\n", "fixture", "pass", "fail", "skip", "total")
        for (i = 1; i <= nfx; i++) {
            f = fxorder[i]; p = cnt[f, "pass"] + 0; x = cnt[f, "fail"] + 0; s = cnt[f, "skip"] + 0
            out = out sprintf("%-26s %6d %6d %6d %6d\n", f, p, x, s, p + x + s)
        }
        out = out sprintf("%-26s %6d %6d %6d %6d\n", "total", tot["pass"], tot["fail"], tot["skip"], total)
        printf "%s", out; printf "%s", out > txt
        printf "{\n  \"kernel\": %s,\n  \"status\": %s,\n  \"exit_status\": %d,\n  \"seconds\": %d,\n", jstr(kver), jstr(status), rc, secs > json
        printf "  \"pass\": %d,\n  \"fail\": %d,\n  \"skip\": %d,\n  \"total\": %d,\n  \"not_run\": %d,\n  \"per_fixture\": {", tot["pass"], tot["fail"], tot["skip"], total, notrun > json
        for (i = 1; i <= nfx; i++) {
            f = fxorder[i]; p = cnt[f, "pass"] + 0; x = cnt[f, "fail"] + 0; s = cnt[f, "skip"] + 0
            printf "%s\n    %s: {\"pass\": %d, \"fail\": %d, \"skip\": %d, \"total\": %d}", (i > 1 ? "," : ""), jstr(f), p, x, s, p + x + s > json
        }
        printf "\n  },\n  \"failed_tests\": [" > json
        for (i = 1; i <= nf; i++) printf "%s\n    %s", (i > 1 ? "," : ""), jstr(failed[i]) > json
        printf "%s]\n}\n", (nf ? "\n  " : "") > json
        print tot["pass"] + 0 > countf
    }' "$WORK/tests.list" "$LOG"

pass=$(cat "$WORK/pass.count")
echo "results: $WORK/conformance-results.txt, $WORK/conformance-results.json; log: $LOG"
echo "uAPI level: ${UIOMMU_KERNEL:-default}"
if [ -n "$expect_file" ]; then
    if ! python3 - "$WORK/conformance-results.json" "$expect_file" <<'PY'
import json, sys
got = set(json.load(open(sys.argv[1]))["failed_tests"])
want = {l.strip() for l in open(sys.argv[2]) if l.strip() and not l.startswith("#")}
for name, what in ((sorted(got - want), "failed, not expected to"), (sorted(want - got), "expected to fail, passed")):
    for n in name:
        print(f"conformance: {n}: {what}", file=sys.stderr)
print(f"conformance: {len(got & want)} of the {len(want)} expected failures, {len(got - want)} others")
sys.exit(0 if got == want else 1)
PY
    then
        echo "conformance: FAIL: the failed tests are not those of $expect_file" >&2
        exit 1
    fi
    echo "conformance: exactly the failures of $expect_file"
fi
echo "conformance: $(( $(date +%s) - script_start ))s in all"
if [ -n "$floor_file" ]; then
    if [ "$pass" -lt "$floor" ]; then
        echo "conformance: FAIL: $pass tests pass, below the floor of $floor ($floor_file)" >&2
        exit 1
    fi
    echo "conformance: $pass tests pass (floor $floor)"
fi
