#!/bin/sh
# A tiny, cheap calibration run the same way on the host and inside the TCG guest (busybox sh),
# so that the guest's slowdown can be read as ratios:
#   syscalls: busybox dd of 500,000 one-byte blocks /dev/zero -> /dev/null (1M syscalls)
#   shell:    100,000 iterations of a busybox sh arithmetic loop (interpreter: loads, branches)
# Each is run 3 times and the fastest is kept. Times come from /proc/uptime (10 ms
# resolution). Prints "calib.NAME_ms=N" lines.
# Usage: busybox sh calibrate.sh [BUSYBOX]   (BUSYBOX: path of the busybox binary to use)
bb=${1:-busybox}

now_cs() {
  # /proc/uptime's first field, in centiseconds.
  read -r up _ </proc/uptime
  echo "${up%.*}${up#*.}"
}

best_dd='' best_sh=''
for _ in 1 2 3; do
  t0=$(now_cs)
  "$bb" dd if=/dev/zero of=/dev/null bs=1 count=500000 2>/dev/null
  t1=$(now_cs)
  d=$(( (t1 - t0) * 10 ))
  if [ -z "$best_dd" ] || [ "$d" -lt "$best_dd" ]; then best_dd=$d; fi

  t0=$(now_cs)
  i=0
  while [ "$i" -lt 100000 ]; do i=$((i + 1)); done
  t1=$(now_cs)
  d=$(( (t1 - t0) * 10 ))
  if [ -z "$best_sh" ] || [ "$d" -lt "$best_sh" ]; then best_sh=$d; fi
done
echo "calib.dd_500k_1byte_ms=$best_dd"
echo "calib.sh_loop_100k_ms=$best_sh"
