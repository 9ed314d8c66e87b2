#!/usr/bin/env bash
# Builds a small bootable raw disk image from Debian packages, without root
# privileges, mounts or loop devices:
#   MBR (syslinux mbr.bin) + one FAT16 partition holding syslinux, a Debian
#   kernel (cloud flavour when available) and an initramfs whose init
#   (busybox sh) prints a marker line to the serial console (ttyS0), after a
#   line "VMSEAL-TPM: device=/dev/tpm0|none acpi=TPM2|none" saying whether
#   the VM has a TPM and one line per virtio disk,
#   "VMSEAL-DISK: vda sectors=N head=<first 16 bytes, hex>".
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

# fetch_deb PACKAGE: prints the path of PACKAGE's .deb in the cache,
# downloading the candidate version when no copy is cached.
fetch_deb() {
  local pkg="$1" f
  f="$(ls -1 "$cache/${pkg}"_*.deb 2>/dev/null | sort -V | tail -n1 || true)"
  if [ -z "$f" ]; then
    # As root, apt would try to drop to _apt, which cannot write the cache.
    local -a opts=(-q)
    [ "$(id -u)" -ne 0 ] || opts+=(-o APT::Sandbox::User=root)
    (cd "$cache" && apt-get download "${opts[@]}" "$pkg" >&2) || {
      echo "build-sample-image: apt-get download $pkg failed" >&2
      return 1
    }
    f="$(ls -1 "$cache/${pkg}"_*.deb | sort -V | tail -n1)"
  fi
  echo "$f"
}

# The kernel: resolve the versioned package behind the flavour metapackage.
kernel_pkg=""
for meta in linux-image-cloud-amd64 linux-image-amd64; do
  kernel_pkg="$(apt-cache depends "$meta" 2>/dev/null |
                sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n1)"
  [ -n "$kernel_pkg" ] && break
done
if [ -z "$kernel_pkg" ]; then
  # apt metadata may be missing while a kernel is cached: use the newest.
  kernel_pkg="$(ls -1 "$cache" | sed -n 's/^\(linux-image-[0-9][^_]*\)_.*\.deb$/\1/p' |
                sort -V | tail -n1)"
fi
[ -n "$kernel_pkg" ] || { echo "build-sample-image: no linux-image package found (apt-get update?)" >&2; exit 1; }

kernel_deb="$(fetch_deb "$kernel_pkg")"
busybox_deb="$(fetch_deb busybox-static)"

# Kernel: boot/vmlinuz-* and the virtio block driver's modules (the init
# loads them to list the VM's disks; this kernel builds them as modules).
virtio_modules="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk"
mkdir "$work/kernel"
dpkg-deb --fsys-tarfile "$kernel_deb" |
  tar -x -C "$work/kernel" --wildcards './boot/vmlinuz-*' \
      './lib/modules/*/kernel/drivers/virtio/*.ko' './lib/modules/*/kernel/drivers/block/virtio_blk.ko'
vmlinuz="$(ls -1 "$work"/kernel/boot/vmlinuz-* | head -n1)"

# Initramfs: busybox plus an init script. The kernel's built-in initramfs
# already provides /dev/console, so no device node (which needs root) is made.
root="$work/root"
mkdir -p "$root/bin" "$root/dev" "$root/proc" "$root/sys" "$root/lib/modules"
for m in $virtio_modules; do
  ko="$(find "$work/kernel/lib/modules" -name "$m.ko" | head -n1)"
  [ -n "$ko" ] || { echo "build-sample-image: $m.ko not in $kernel_pkg" >&2; exit 1; }
  cp "$ko" "$root/lib/modules/$m.ko"
done
dpkg-deb --fsys-tarfile "$busybox_deb" | tar -x -C "$work" ./bin/busybox
mv "$work/bin/busybox" "$root/bin/busybox"
if [ "$poweroff" -eq 1 ]; then
  finish='/bin/busybox poweroff -f'
else
  finish='while true; do /bin/busybox sleep 3600; done'
fi
cat >"$root/init" <<EOF
#!/bin/busybox sh
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
exec >/dev/ttyS0 2>&1
echo "VMSEAL-SAMPLE-IMAGE booted: \$(/bin/busybox uname -r)"
# Whether the VM has a TPM (docs/vm.md "vTPM"): the device node and the
# firmware's ACPI table for it.
tpm_dev=none; [ -e /dev/tpm0 ] && tpm_dev=/dev/tpm0
tpm_acpi=none; [ -e /sys/firmware/acpi/tables/TPM2 ] && tpm_acpi=TPM2
echo "VMSEAL-TPM: device=\$tpm_dev acpi=\$tpm_acpi"
# Every virtio disk as the guest sees it (docs/vm.md "Sample image"): one
# line each, in device order, with its size in 512-byte sectors and its
# first 16 bytes in hex.
for m in $virtio_modules; do /bin/busybox insmod /lib/modules/\$m.ko 2>/dev/null; done
for d in /sys/block/vd*; do
  [ -e "\$d" ] || continue
  n=\${d##*/}
  i=0; while [ ! -b /dev/\$n ] && [ \$i -lt 20 ]; do /bin/busybox sleep 0.1; i=\$((i+1)); done
  head=\$(/bin/busybox dd if=/dev/\$n bs=16 count=1 2>/dev/null | /bin/busybox od -An -tx1 | /bin/busybox tr -d ' \\n')
  echo "VMSEAL-DISK: \$n sectors=\$(/bin/busybox cat \$d/size) head=\$head"
done
echo "$marker"
$finish
EOF
chmod 0755 "$root/init" "$root/bin/busybox"
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -9n >"$work/initrd.gz"

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
payload_kib=$(( ($(stat -c %s "$vmlinuz") + $(stat -c %s "$work/initrd.gz")) / 1024 ))
part_mib=$(( payload_kib / 1024 + 8 ))
part_start_sectors=2048   # 1 MiB alignment
part="$work/part.fat"
truncate -s "${part_mib}M" "$part"
mkfs.fat -F 16 -n VMSEAL "$part" >/dev/null
syslinux --install "$part"
export MTOOLS_SKIP_CHECK=1
mcopy -i "$part" "$vmlinuz" ::/vmlinuz
mcopy -i "$part" "$work/initrd.gz" ::/initrd.gz
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
