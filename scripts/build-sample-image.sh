#!/usr/bin/env bash
# Builds a small bootable raw disk image from Debian packages, without root
# privileges, mounts or loop devices:
#   MBR (syslinux mbr.bin) + one FAT16 partition holding syslinux, a Debian
#   kernel (cloud flavour when available) and an initramfs whose init
#   (busybox sh) prints a marker line to the serial console (ttyS0), after
#   lines saying whether the VM has a TPM, how it was started and one line
#   per virtio disk (scripts/lib/sample-linux-payload.sh).
#
#   scripts/build-sample-image.sh OUT.img [--marker TEXT] [--poweroff]
#
# --marker TEXT  the text to print (default: random per build). The marker is
#                printed to stdout and written to OUT.img.marker.
# --poweroff     power the VM off after printing the marker (default: idle).
#
# The .debs are cached in $VMSEAL_DEB_CACHE (default
# ${XDG_CACHE_HOME:-$HOME/.cache}/vmseal/debs) so reruns work offline.
# Tools needed: scripts/packages/vm.txt.
set -euo pipefail

usage() {
  echo "usage: $0 OUT.img [--marker TEXT] [--poweroff]" >&2
  exit 2
}

out=""
marker=""
poweroff=0
while [ $# -gt 0 ]; do
  case "$1" in
    --marker) [ $# -ge 2 ] || usage; marker="$2"; shift 2 ;;
    --marker=*) marker="${1#--marker=}"; shift ;;
    --poweroff) poweroff=1; shift ;;
    -h|--help) usage ;;
    -*) echo "build-sample-image: unknown option $1" >&2; usage ;;
    *) [ -z "$out" ] || usage; out="$1"; shift ;;
  esac
done
[ -n "$out" ] || usage
if [ -z "$marker" ]; then
  marker="vmseal-marker-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
fi
case "$marker" in
  *[!A-Za-z0-9._:=+-]*) echo "build-sample-image: marker may only contain [A-Za-z0-9._:=+-]" >&2
                       exit 2 ;;
esac

for tool in apt-get apt-cache dpkg-deb cpio gzip sfdisk mkfs.fat mcopy syslinux dd; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "build-sample-image: $tool not found (install scripts/packages/vm.txt)" >&2
    exit 1
  }
done
mbr_bin=""
for f in /usr/lib/syslinux/mbr/mbr.bin /usr/lib/SYSLINUX/mbr.bin /usr/share/syslinux/mbr.bin; do
  if [ -f "$f" ]; then mbr_bin="$f"; break; fi
done
[ -n "$mbr_bin" ] || { echo "build-sample-image: syslinux mbr.bin not found (syslinux-common)" >&2; exit 1; }

cache="${VMSEAL_DEB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmseal/debs}"
mkdir -p "$cache"
work="$(mktemp -d "${TMPDIR:-/tmp}/vmseal-image.XXXXXX")"
tmp_img="$out.tmp.$$"
# On any failure no partial image is left behind.
trap 'rm -rf "$work"; rm -f "$tmp_img"' EXIT

die() {
  echo "build-sample-image: $*" >&2
  exit 1
}
# shellcheck source=lib/sample-linux-payload.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/sample-linux-payload.sh"
mkdir "$work/payload"
build_linux_payload "$work/payload" "$marker" "$poweroff"
vmlinuz="$work/payload/vmlinuz"

cat >"$work/syslinux.cfg" <<'EOF'
SERIAL 0 115200
DEFAULT vmseal
PROMPT 0
TIMEOUT 0
LABEL vmseal
  LINUX /vmlinuz
  INITRD /initrd.gz
  APPEND console=ttyS0 quiet panic=-1
EOF

# The FAT partition: sized from the payload plus slack, built as a plain file.
payload_kib=$(( ($(stat -c %s "$vmlinuz") + $(stat -c %s "$work/payload/initrd.gz")) / 1024 ))
part_mib=$(( payload_kib / 1024 + 8 ))
part_start_sectors=2048   # 1 MiB alignment
part="$work/part.fat"
truncate -s "${part_mib}M" "$part"
mkfs.fat -F 16 -n VMSEAL "$part" >/dev/null
syslinux --install "$part"
export MTOOLS_SKIP_CHECK=1
mcopy -i "$part" "$vmlinuz" ::/vmlinuz
mcopy -i "$part" "$work/payload/initrd.gz" ::/initrd.gz
mcopy -i "$part" "$work/syslinux.cfg" ::/syslinux.cfg

# The disk: MBR boot code, one bootable FAT16 (LBA) partition, the FAT data.
rm -f "$tmp_img"
truncate -s "$(( part_mib + 1 ))M" "$tmp_img"
printf 'label: dos\nstart=%d, type=e, bootable\n' "$part_start_sectors" |
  sfdisk --no-reread --no-tell-kernel -q "$tmp_img" >/dev/null
dd if="$mbr_bin" of="$tmp_img" bs=440 count=1 conv=notrunc status=none
dd if="$part" of="$tmp_img" bs=512 seek="$part_start_sectors" conv=notrunc,sparse status=none
mv -f "$tmp_img" "$out"
printf '%s\n' "$marker" >"$out.marker"
echo "$marker"
