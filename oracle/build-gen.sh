#!/usr/bin/env bash
# Build oracle/work/gen (static) against the 6.12 uapi headers: iommufd.h and vfio.h from the
# kernel tree with the __user annotations stripped (what `make headers_install` would leave),
# and the selftest's iommufd_test.h, put first on the include path ahead of the host's older
# linux-libc-dev. Used by record.sh and compare.sh.
#   KSRC=... (default /work/ksrc/linux-source-6.12, else oracle/work/linux-source-6.12)
set -euo pipefail
ORACLE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORK=$ORACLE/work
if [ -z "${KSRC:-}" ]; then
  for d in "$WORK/linux-source-6.12" /work/ksrc/linux-source-6.12; do
    [ -f "$d/include/uapi/linux/iommufd.h" ] && { KSRC=$d; break; }
  done
fi
[ -n "${KSRC:-}" ] || { echo "build-gen.sh: no 6.12 kernel tree (set KSRC)" >&2; exit 1; }
INC=$WORK/include
mkdir -p "$INC/linux"
for h in iommufd vfio; do
  sed -E 's/([[:space:](])__user[[:space:]]+/\1/g' "$KSRC/include/uapi/linux/$h.h" >"$INC/linux/$h.h"
done
sed -E 's/([[:space:](])__user[[:space:]]+/\1/g' "$KSRC/drivers/iommu/iommufd/iommufd_test.h" \
  >"$INC/iommufd_test.h"
${CC:-gcc} -O2 -Wall -static -isystem "$INC" -I "$INC" -o "$WORK/gen" "$ORACLE/gen.c"
