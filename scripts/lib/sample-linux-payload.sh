# Sourced by scripts/build-sample-image.sh and
# scripts/build-uefi-sample-image.sh: the sample guest's Linux payload, a
# Debian kernel (cloud flavour when available; Debian-signed, so shim lets
# it boot under Secure Boot) and a busybox initramfs whose init prints to
# the serial console (ttyS0):
#   VMSEAL-SAMPLE-IMAGE booted: <kernel release>
#   VMSEAL-TPM: device=/dev/tpm0|none acpi=TPM2|none
#   VMSEAL-FIRMWARE: efi|bios secureboot=enabled|disabled|unknown
#   VMSEAL-DISK: vda sectors=N head=<first 16 bytes, hex>   (one per virtio disk)
#   <marker>
#
# build_linux_payload WORK MARKER POWEROFF
#   WORK      an empty scratch directory; vmlinuz and initrd.gz are left in it
#   MARKER    the marker line
#   POWEROFF  1: power off after the marker; 0: idle
# Needs $cache (the .deb cache directory) and a `die` function.

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
      die "apt-get download $pkg failed"
      return 1
    }
    f="$(ls -1 "$cache/${pkg}"_*.deb | sort -V | tail -n1)"
  fi
  echo "$f"
}

build_linux_payload() {
  local work="$1" marker="$2" poweroff="$3"
  local kernel_pkg="" meta kernel_deb busybox_deb vmlinuz root finish m ko
  # The virtio block driver's modules: the init loads them to list the VM's
  # disks (this kernel builds them as modules).
  local virtio_modules="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk"
  # The kernel: resolve the versioned package behind the flavour metapackage.
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
  [ -n "$kernel_pkg" ] || die "no linux-image package found (apt-get update?)"

  kernel_deb="$(fetch_deb "$kernel_pkg")"
  busybox_deb="$(fetch_deb busybox-static)"

  # Kernel: boot/vmlinuz-* and the virtio block driver's modules.
  mkdir "$work/kernel"
  dpkg-deb --fsys-tarfile "$kernel_deb" |
    tar -x -C "$work/kernel" --wildcards './boot/vmlinuz-*' \
        './lib/modules/*/kernel/drivers/virtio/*.ko' './lib/modules/*/kernel/drivers/block/virtio_blk.ko'
  vmlinuz="$(ls -1 "$work"/kernel/boot/vmlinuz-* | head -n1)"
  mv "$vmlinuz" "$work/vmlinuz"

  # Initramfs: busybox plus an init script. The kernel's built-in initramfs
  # already provides /dev/console, so no device node (which needs root) is made.
  root="$work/root"
  mkdir -p "$root/bin" "$root/dev" "$root/proc" "$root/sys" "$root/lib/modules"
  for m in $virtio_modules; do
    ko="$(find "$work/kernel/lib/modules" -name "$m.ko" | head -n1)"
    [ -n "$ko" ] || die "$m.ko not in $kernel_pkg"
    cp "$ko" "$root/lib/modules/$m.ko"
  done
  rm -rf "$work/kernel"
  dpkg-deb --fsys-tarfile "$busybox_deb" | tar -x -C "$work" ./bin/busybox
  mv "$work/bin/busybox" "$root/bin/busybox"
  if [ "$poweroff" -eq 1 ]; then
    finish='/bin/busybox poweroff -f'
  else
    finish='while true; do /bin/busybox sleep 3600; done'
  fi
  cat >"$root/init" <<INIT
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
# How the guest was started: EFI or BIOS, and what the kernel found of
# Secure Boot (its "secureboot:" boot message).
fw=bios; [ -d /sys/firmware/efi ] && fw=efi
sb=unknown
/bin/busybox dmesg | /bin/busybox grep -q 'secureboot: Secure boot enabled' && sb=enabled
/bin/busybox dmesg | /bin/busybox grep -q 'secureboot: Secure boot disabled' && sb=disabled
echo "VMSEAL-FIRMWARE: \$fw secureboot=\$sb"
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
INIT
  chmod 0755 "$root/init" "$root/bin/busybox"
  (cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -9n >"$work/initrd.gz"
  rm -rf "$root" "$work/bin"
}
