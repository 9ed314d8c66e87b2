#!/usr/bin/env bash
# Builds a small UEFI-bootable raw disk image from this machine's own files
# (and, with --linux, the sample kernel's .debs), without root privileges,
# mounts or loop devices: GPT + one EFI System Partition (FAT) holding
# \EFI\BOOT\BOOTX64.EFI and a grub.cfg that prints a marker line to the
# serial console.
#
#   scripts/build-uefi-sample-image.sh OUT.img [--marker TEXT] [--signed] [--linux]
#
# --marker TEXT  the text to print (default: random per build). The marker is
#                printed to stdout and written to OUT.img.marker.
# --signed       the Secure Boot chain Debian installs: BOOTX64.EFI is shim
#                (shim-signed, signed by Microsoft's UEFI CA, which
#                OVMF_VARS_4M.ms.fd enrolls), \EFI\BOOT\grubx64.efi is GRUB
#                signed by Debian (grub-efi-amd64-signed; shim checks it
#                against Debian's key built into shim) and the config is
#                \EFI\debian\grub.cfg, where that GRUB looks for it.
#                Without it, BOOTX64.EFI is an unsigned GRUB made by
#                grub-mkstandalone (grub-efi-amd64-bin) with the config
#                inside: Secure Boot refuses it ("Access Denied"), which
#                the tests use to see that Secure Boot is enforced.
# --linux        GRUB prints its lines, then boots the Linux payload of
#                scripts/build-sample-image.sh (a Debian-signed kernel and a
#                busybox init that prints the TPM and firmware lines and the
#                marker; scripts/lib/sample-linux-payload.sh) from the ESP.
#                Without it, GRUB prints the marker itself and idles.
# GRUB prints "VMSEAL-UEFI-SAMPLE-IMAGE booted: efi" and, only without
# --linux, the marker; with --linux the marker comes from Linux alone.
# The .debs of --linux are cached like build-sample-image.sh's
# ($VMSEAL_DEB_CACHE).
# Tools needed: scripts/packages/vm.txt.
set -euo pipefail

usage() {
  echo "usage: $0 OUT.img [--marker TEXT] [--signed] [--linux]" >&2
  exit 2
}

out=""
marker=""
signed=0
linux=0
while [ $# -gt 0 ]; do
  case "$1" in
    --marker) [ $# -ge 2 ] || usage; marker="$2"; shift 2 ;;
    --marker=*) marker="${1#--marker=}"; shift ;;
    --signed) signed=1; shift ;;
    --linux) linux=1; shift ;;
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
die() {
  echo "build-uefi-sample-image: $*" >&2
  exit 1
}
tools=(sfdisk mkfs.fat mmd mcopy dd)
[ "$signed" -eq 1 ] || tools+=(grub-mkstandalone)
[ "$linux" -eq 0 ] || tools+=(apt-get apt-cache dpkg-deb cpio gzip)
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found (install scripts/packages/vm.txt)"
done
shim=/usr/lib/shim/shimx64.efi.signed
signed_grub=/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed
if [ "$signed" -eq 1 ]; then
  [ -f "$shim" ] || die "$shim missing (shim-signed)"
  [ -f "$signed_grub" ] || die "$signed_grub missing (grub-efi-amd64-signed)"
else
  [ -d /usr/lib/grub/x86_64-efi ] || die "/usr/lib/grub/x86_64-efi missing (grub-efi-amd64-bin)"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/vmseal-uefi-image.XXXXXX")"
tmp_img="$out.tmp.$$"
# On any failure no partial image is left behind.
trap 'rm -rf "$work"; rm -f "$tmp_img"' EXIT

if [ "$linux" -eq 1 ]; then
  cache="${VMSEAL_DEB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmseal/debs}"
  mkdir -p "$cache"
  # shellcheck source=lib/sample-linux-payload.sh
  . "$(dirname "${BASH_SOURCE[0]}")/lib/sample-linux-payload.sh"
  mkdir "$work/payload"
  build_linux_payload "$work/payload" "$marker" 0
fi

# The firmware sets up the serial port; GRUB writes to it and to its console
# (which OVMF also mirrors to the serial port). The ESP is GRUB's root: the
# signed GRUB's prefix is (its device)/EFI/debian, and the unsigned one is
# told to search for the kernel.
{
  echo 'serial --unit=0 --speed=115200'
  echo 'terminal_output serial'
  echo 'echo "VMSEAL-UEFI-SAMPLE-IMAGE booted: $grub_platform"'
  if [ "$linux" -eq 1 ]; then
    [ "$signed" -eq 1 ] || echo 'search --no-floppy --file --set=root /vmlinuz'
    echo 'linux /vmlinuz console=ttyS0 quiet panic=-1'
    echo 'initrd /initrd.gz'
    echo 'boot'
  else
    echo "echo \"$marker\""
    echo 'sleep 100000'
  fi
} >"$work/grub.cfg"
if [ "$signed" -eq 0 ]; then
  modules="normal serial echo sleep test terminal"
  [ "$linux" -eq 0 ] || modules+=" linux search search_fs_file fat part_gpt gzio"
  grub-mkstandalone -O x86_64-efi -o "$work/BOOTX64.EFI" \
    --install-modules="$modules" --modules="serial" \
    --locales= --fonts= --themes= "boot/grub/grub.cfg=$work/grub.cfg"
fi

export MTOOLS_SKIP_CHECK=1
esp_mib=8
if [ "$linux" -eq 1 ]; then
  esp_mib=$(( ($(stat -c %s "$work/payload/vmlinuz") + $(stat -c %s "$work/payload/initrd.gz")) / 1048576 + 12 ))
fi
part_sectors=$(( esp_mib * 2048 ))
part_start_sectors=2048   # 1 MiB alignment
truncate -s "${esp_mib}M" "$work/esp.fat"
fat_bits=12; [ "$esp_mib" -le 16 ] || fat_bits=16
mkfs.fat -F "$fat_bits" -n ESP "$work/esp.fat" >/dev/null
mmd -i "$work/esp.fat" ::/EFI ::/EFI/BOOT
if [ "$signed" -eq 1 ]; then
  mmd -i "$work/esp.fat" ::/EFI/debian
  mcopy -i "$work/esp.fat" "$shim" ::/EFI/BOOT/BOOTX64.EFI
  mcopy -i "$work/esp.fat" "$signed_grub" ::/EFI/BOOT/grubx64.efi
  mcopy -i "$work/esp.fat" "$work/grub.cfg" ::/EFI/debian/grub.cfg
else
  mcopy -i "$work/esp.fat" "$work/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
fi
if [ "$linux" -eq 1 ]; then
  mcopy -i "$work/esp.fat" "$work/payload/vmlinuz" ::/vmlinuz
  mcopy -i "$work/esp.fat" "$work/payload/initrd.gz" ::/initrd.gz
fi

rm -f "$tmp_img"
truncate -s "$(( esp_mib + 2 ))M" "$tmp_img"
printf 'label: gpt\nstart=%d, size=%d, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n' \
  "$part_start_sectors" "$part_sectors" |
  sfdisk --no-reread --no-tell-kernel -q "$tmp_img" >/dev/null
dd if="$work/esp.fat" of="$tmp_img" bs=512 seek="$part_start_sectors" conv=notrunc status=none
mv -f "$tmp_img" "$out"
printf '%s\n' "$marker" >"$out.marker"
echo "$marker"
