#!/usr/bin/env bash
# uiommu's emulated NVMe controller passed into a guest beside QEMU's own emulated NVMe, in ONE
# TCG guest boot: the guest (guest/, bench mode: uiommu.bench=ROUNDS) runs bin/iobench
# (guest/iobench.c: O_DIRECT, queue depth 1) on both namespaces, alternating them within each
# test: sequential 128 KiB writes and reads of 32 MiB, 2000 random 4 KiB writes and reads in
# those 32 MiB. Both namespaces are 256 MiB files here, in the page cache (uiommu's ssd0 through
# its `file` option, QEMU's through -drive format=raw). Two boots: the uiommu side served by
# the in-process engine (`uiommu run`'s default), then by the host engine (`--engine host`),
# the iommufd backend both times. Prints per boot and test the medians over the rounds and the
# ratio uiommu / QEMU of that boot, and writes OUT/nvme.json (docs/PERFORMANCE.md).
#
# Usage: bash bench/nvme/run.sh [--rounds N] [--out DIR]   (as root: guest/build.sh needs it)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=3
OUT=target/bench-nvme
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=${2:?--rounds needs a number}; shift ;;
    --out) OUT=${2:?--out needs a directory}; shift ;;
    *) echo "usage: bash bench/nvme/run.sh [--rounds N] [--out DIR]" >&2; exit 1 ;;
  esac
  shift
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cargo build --release -p uiommu -p uiommu-preload
bash guest/build.sh >/dev/null
# The built-in platform with ssd0 (its last function) backed by a 256 MiB file.
cp platforms/default.toml "$OUT/platform.toml"
echo 'options = { size = 268435456, file = "ssd0.img" }' >>"$OUT/platform.toml"
rm -f "$OUT/ssd0.img" "$OUT/qemu.img"
truncate -s 256M "$OUT/ssd0.img" "$OUT/qemu.img"
# One boot per engine of uiommu (`uiommu run --engine in-process`, the default, and `--engine
# host`), each with QEMU's own NVMe beside it in the same boot.
for engine in in-process host; do
  extra=""
  [ "$engine" = host ] && extra="--instance bench-nvme-$$"
  set +e
  bash guest/run.sh --timeout 1200 --log "$OUT/console-$engine.log" --append "uiommu.bench=$ROUNDS" \
    --wrap "target/release/uiommu run --engine $engine $extra --platform $OUT/platform.toml --" \
    -- -object iommufd,id=iommufd0 -device vfio-pci,host=0000:09:00.0,iommufd=iommufd0 \
    -drive "file=$OUT/qemu.img,if=none,id=d0,format=raw,cache=writeback" \
    -device nvme,serial=qemu-nvme,drive=d0 >"$OUT/run-$engine.out"
  rc=$?
  set -e
  if [ "$rc" != 0 ]; then
    cat "$OUT/run-$engine.out" >&2
    echo "bench/nvme/run.sh: the guest did not pass (engine $engine, guest/run.sh exit $rc)" >&2
    exit 1
  fi
done
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, re, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
result = {"rounds": rounds, "engines": {}}
for engine in ("in-process", "host"):
    text = open(f"{out}/run-{engine}.out").read()
    models = dict(re.findall(r'bench device ns=(\S+) model="([^"]*)"', text))
    runs = {}
    for ns, rnd, test, bs, mib_s, iops in re.findall(
            r'bench ns=(\S+) round=(\d+) test=(\S+) bs=(\d+) bytes=\d+ ops=\d+ ns=\d+ '
            r'mib_s=([\d.]+) iops=(\d+)', text):
        side = 'uiommu' if models.get(ns, '').startswith('uiommu') else 'qemu'
        runs.setdefault((test, int(bs)), {}).setdefault(side, []).append((float(mib_s), int(iops)))
    tests = []
    print(f"uiommu run --engine {engine} (one boot, QEMU's own NVMe beside it):")
    print(f"  {'test':<10} {'bs':>7} {'uiommu MiB/s':>13} {'iops':>7} {'QEMU nvme MiB/s':>16} {'iops':>7} {'ratio':>6}")
    for (test, bs), sides in runs.items():
        u_runs = [m for m, _ in sides.get('uiommu', [])]
        q_runs = [m for m, _ in sides.get('qemu', [])]
        u = statistics.median(u_runs) if u_runs else 0
        q = statistics.median(q_runs) if q_runs else 0
        ui = statistics.median(i for _, i in sides['uiommu']) if u_runs else 0
        qi = statistics.median(i for _, i in sides['qemu']) if q_runs else 0
        ratio = u / q if q else 0
        print(f"  {test:<10} {bs:>7} {u:>13.2f} {ui:>7.0f} {q:>16.2f} {qi:>7.0f} {ratio:>6.2f}")
        tests.append({"test": test, "bs": bs, "uiommu_mib_s": u, "uiommu_iops": ui,
                      "qemu_mib_s": q, "qemu_iops": qi, "ratio": ratio,
                      "uiommu_runs": u_runs, "qemu_runs": q_runs})
    result["engines"][engine] = {"models": models, "tests": tests}
json.dump(result, open(f"{out}/nvme.json", "w"), indent=1)
print(f"(medians of {rounds} rounds per boot; {out}/nvme.json)")
PY
