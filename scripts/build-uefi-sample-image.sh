#!/usr/bin/env bash
# Builds a small UEFI-bootable raw disk image from this machine's own files,
# without root privileges, mounts, loop devices or downloads:
#   GPT + one EFI System Partition (FAT12) holding \EFI\BOOT\BOOTX64.EFI, a
#   GRUB made by grub-mkstandalone (Debian grub-efi-amd64-bin) whose embedded
#   grub.cfg prints a marker line to the serial console and idles.
# The GRUB binary is not signed: under Secure Boot with the Microsoft/Debian
# keys enrolled (OVMF_VARS_4M.ms.fd) the firmware refuses it ("Access
# Denied"), which the tests use to see that Secure Boot is enforced.
#
#   scripts/build-uefi-sample-image.sh OUT.img [--marker TEXT]
#
# --marker TEXT  the text to print (default: random per build). The marker is
#                printed to stdout and written to OUT.img.marker.
# Tools needed: scripts/packages/vm.txt (grub-efi-amd64-bin, mtools,
# dosfstools, fdisk).
set -euo pipefail

usage() {
  echo "usage: $0 OUT.img [--marker TEXT]" >&2
  exit 2
}

out=""
marker=""
while [ $# -gt 0 ]; do
  case "$1" in
    --marker) [ $# -ge 2 ] || usage; marker="$2"; shift 2 ;;
    --marker=*) marker="${1#--marker=}"; shift ;;
    -h|--help) usage ;;
    -*) echo "build-uefi-sample-image: unknown option $1" >&2; usage ;;
    *) [ -z "$out" ] || usage; out="$1"; shift ;;
  esac
done
[ -n "$out" ] || usage
if [ -z "$marker" ]; then
  marker="vmseal-uefi-marker-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
fi
case "$marker" in
  *[!A-Za-z0-9._:=+-]*) echo "build-uefi-sample-image: marker may only contain [A-Za-z0-9._:=+-]" >&2
                       exit 2 ;;
esac
for tool in grub-mkstandalone sfdisk mkfs.fat mmd mcopy dd; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "build-uefi-sample-image: $tool not found (install scripts/packages/vm.txt)" >&2
    exit 1
  }
done
[ -d /usr/lib/grub/x86_64-efi ] || {
  echo "build-uefi-sample-image: /usr/lib/grub/x86_64-efi missing (grub-efi-amd64-bin)" >&2
  exit 1
}

work="$(mktemp -d "${TMPDIR:-/tmp}/vmseal-uefi-image.XXXXXX")"
tmp_img="$out.tmp.$$"
trap 'rm -rf "$work"; rm -f "$tmp_img"' EXIT

# The firmware sets up the serial port; GRUB writes to it and to its console
# (which OVMF also mirrors to the serial port).
cat >"$work/grub.cfg" <<CFG
serial --unit=0 --speed=115200
terminal_output serial
echo "VMSEAL-UEFI-SAMPLE-IMAGE booted: \$grub_platform"
echo "$marker"
sleep 100000
CFG
grub-mkstandalone -O x86_64-efi -o "$work/BOOTX64.EFI" \
  --install-modules="normal serial echo sleep test terminal" --modules="serial" \
  --locales= --fonts= --themes= "boot/grub/grub.cfg=$work/grub.cfg"

export MTOOLS_SKIP_CHECK=1
part_sectors=16384        # 8 MiB ESP
part_start_sectors=2048   # 1 MiB alignment
truncate -s 8M "$work/esp.fat"
mkfs.fat -F 12 -n ESP "$work/esp.fat" >/dev/null
mmd -i "$work/esp.fat" ::/EFI ::/EFI/BOOT
mcopy -i "$work/esp.fat" "$work/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI

rm -f "$tmp_img"
truncate -s 10M "$tmp_img"
printf 'label: gpt\nstart=%d, size=%d, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n' \
  "$part_start_sectors" "$part_sectors" |
  sfdisk --no-reread --no-tell-kernel -q "$tmp_img" >/dev/null
dd if="$work/esp.fat" of="$tmp_img" bs=512 seek="$part_start_sectors" conv=notrunc status=none
mv -f "$tmp_img" "$out"
printf '%s\n' "$marker" >"$out.marker"
echo "$marker"
