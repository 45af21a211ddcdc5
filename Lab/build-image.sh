#!/bin/sh
# build-image.sh KERNEL_ROOT KVER OUT.cpio.gz
# Builds the lab guest's initramfs: busybox-static, the kernel modules the lab needs in dependency
# order (crc32_generic first: rdma_rxe needs it; sch_netem for tests that delay a guest's
# packets), Lab/init as /init, Lab/lab-device, lab-programs and lab-recovery.
# Called by `stableverbs-lab setup`; needs busybox-static, cpio, kmod (depmod, modprobe), gzip.
set -eu
ROOT=$1 KVER=$2 OUT=$3
HERE=$(cd "$(dirname "$0")" && pwd)
BUSYBOX=${BUSYBOX:-/bin/busybox}
MODULES="crc32_generic virtio_pci virtio_net virtio_console 9pnet_virtio 9p rdma_rxe rdma_ucm veth sch_netem"
for tool in cpio depmod modprobe gzip; do
  command -v $tool >/dev/null || { echo "build-image: $tool is missing (apt-get install cpio kmod gzip)" >&2; exit 1; }
done
file "$BUSYBOX" 2>/dev/null | grep -q 'dynamically' && { echo "build-image: $BUSYBOX is not static (apt-get install busybox-static)" >&2; exit 1; }
[ -x "$BUSYBOX" ] || { echo "build-image: $BUSYBOX is missing (apt-get install busybox-static)" >&2; exit 1; }

STAGE=$(mktemp -d "${OUT}.stage.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/bin" "$STAGE/lib/modules" "$STAGE/proc" "$STAGE/sys" "$STAGE/dev" "$STAGE/tmp" "$STAGE/host" "$STAGE/lab"
cp "$BUSYBOX" "$STAGE/bin/busybox"
ln -s busybox "$STAGE/bin/sh"
cp "$HERE/init" "$STAGE/init"
cp "$HERE/lab-device" "$HERE/lab-programs" "$HERE/lab-recovery" "$STAGE/lab/"
chmod +x "$STAGE/init" "$STAGE/lab/lab-device" "$STAGE/lab/lab-programs" "$STAGE/lab/lab-recovery"

depmod -b "$ROOT" "$KVER"
: > "$STAGE/lib/modules/order"
for m in $MODULES; do
  modprobe -d "$ROOT" -S "$KVER" --show-depends "$m" | awk '$1=="insmod"{print $2}'
done | awk '!seen[$0]++' | while read -r ko; do
  name=$(basename "$ko")
  case "$name" in
    *.ko) cp "$ko" "$STAGE/lib/modules/$name" ;;
    *.ko.xz) xz -dc "$ko" > "$STAGE/lib/modules/${name%.xz}"; name=${name%.xz} ;;
    *.ko.zst) zstd -qdc "$ko" > "$STAGE/lib/modules/${name%.zst}"; name=${name%.zst} ;;
  esac
  echo "$name" >> "$STAGE/lib/modules/order"
done
grep -q '^rdma_rxe.ko$' "$STAGE/lib/modules/order" || { echo "build-image: rdma_rxe not found in $ROOT" >&2; exit 1; }
(cd "$STAGE" && find . | cpio -o -H newc --quiet) | gzip -1 > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "build-image: $OUT ($(wc -l < "$STAGE/lib/modules/order") modules)"
