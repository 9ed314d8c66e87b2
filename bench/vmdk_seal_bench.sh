#!/usr/bin/env bash
# Sealing a VMDK export against `qemu-img convert` of the same file (issue 18).
# One run:
#   1. generates a raw disk (default 4 GiB; alternating 64 MiB regions of
#      random data and holes) and turns it into a monolithicSparse VMDK with
#      qemu-img (not timed);
#   2. times, in the order A B B A (repeated --pairs times, so each tool runs
#      first as often as second):
#        A  qemu-img convert -f vmdk -O qcow2 disk.vmdk out.qcow2; sync out
#        B  vmseal seal disk.vmdk (converted to qcow2 with qemu-img into
#           memory, then sealed with the stream format into an OVA); sync out
#      B does A's work plus the encryption, the manifest and the tar, so the
#      ratio B/A is the price of sealing on top of the conversion;
#      with --compare-file, F (vmseal seal --conversion-memory 0: converted
#      into a temporary qcow2 file first, as before) runs between them, in
#      the order A F B B F A, so B/F is what converting in memory saves;
#   3. prints the median and spread (min..max) of each, the ratio of the
#      medians, and the load average before and after (the machine is
#      shared: the figures are noisy, the ratio less so).
#
# Usage: bench/vmdk_seal_bench.sh [--size-gib N] [--pairs N] [--compare-file] [--vmseal PATH]
#                                 [--dir DIR]
set -euo pipefail

SIZE_GIB=4
PAIRS=1
COMPARE=0
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VMSEAL="$REPO/build/vmseal"
WORK_PARENT="${TMPDIR:-/tmp}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --size-gib) SIZE_GIB="$2"; shift 2 ;;
    --pairs) PAIRS="$2"; shift 2 ;;
    --compare-file) COMPARE=1; shift ;;
    --vmseal) VMSEAL="$2"; shift 2 ;;
    --dir) WORK_PARENT="$2"; shift 2 ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "vmdk_seal_bench: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ "$SIZE_GIB" =~ ^[1-9][0-9]*$ && "$PAIRS" =~ ^[1-9][0-9]*$ ]] ||
  { echo "vmdk_seal_bench: --size-gib and --pairs want positive integers" >&2; exit 2; }
for tool in qemu-img openssl dd awk; do
  command -v "$tool" >/dev/null || { echo "vmdk_seal_bench: $tool missing" >&2; exit 2; }
done
[[ -x "$VMSEAL" ]] || { echo "vmdk_seal_bench: $VMSEAL missing (build target vmseal)" >&2; exit 2; }

WORK="$(mktemp -d "$WORK_PARENT/vmseal-vmdk-bench.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

echo "vmdk_seal_bench: $SIZE_GIB GiB disk in $WORK ($(nproc) cores)"
echo "  load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
RAW="$WORK/disk.raw"
truncate -s "$((SIZE_GIB << 30))" "$RAW"
for ((i = 0; i < SIZE_GIB * 16; i += 2)); do
  openssl enc -aes-128-ctr -K "$(openssl rand -hex 16)" -iv "$(openssl rand -hex 16)" \
      -in /dev/zero 2>/dev/null |
    dd of="$RAW" bs=1M count=64 seek=$((i * 64)) conv=notrunc iflag=fullblock status=none \
       2>/dev/null || true
done
VMDK="$WORK/export-disk1.vmdk"
qemu-img convert -q -f raw -O vmdk -o subformat=monolithicSparse "$RAW" "$VMDK"
rm -f "$RAW"
sync
echo "  vmdk: $(stat -c %s "$VMDK") bytes (monolithicSparse, half random, half holes)"
openssl genpkey -algorithm X25519 -out "$WORK/key.pem" 2>/dev/null
openssl pkey -in "$WORK/key.pem" -pubout -out "$WORK/pub.pem"

now() { date +%s.%N; }
run_a() {
  rm -f "$WORK/out.qcow2"
  local t0; t0=$(now)
  qemu-img convert -q -f vmdk -O qcow2 "$VMDK" "$WORK/out.qcow2"
  sync "$WORK/out.qcow2"
  awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'
  rm -f "$WORK/out.qcow2"
}
run_b() {
  rm -f "$WORK/out.ova"
  local t0; t0=$(now)
  "$VMSEAL" seal "$VMDK" --pubkey "$WORK/pub.pem" --tenant bench --unsigned \
      -o "$WORK/out.ova" "$@" >/dev/null 2>&1
  sync "$WORK/out.ova"
  awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'
  rm -f "$WORK/out.ova"
}

A=() B=() F=()
for ((p = 0; p < PAIRS; ++p)); do
  A+=("$(run_a)"); echo "  A qemu-img convert  ${A[-1]} s"
  if [[ "$COMPARE" -eq 1 ]]; then
    F+=("$(run_b --conversion-memory 0)"); echo "  F seal via a file   ${F[-1]} s"
  fi
  B+=("$(run_b)"); echo "  B vmseal seal       ${B[-1]} s"
  B+=("$(run_b)"); echo "  B vmseal seal       ${B[-1]} s"
  if [[ "$COMPARE" -eq 1 ]]; then
    F+=("$(run_b --conversion-memory 0)"); echo "  F seal via a file   ${F[-1]} s"
  fi
  A+=("$(run_a)"); echo "  A qemu-img convert  ${A[-1]} s"
done
stats() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
  m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
  printf "%.3f %.3f %.3f", m, v[1], v[NR] }'; }
read -r AM AMIN AMAX <<<"$(stats "${A[@]}")"
read -r BM BMIN BMAX <<<"$(stats "${B[@]}")"
echo "results ($SIZE_GIB GiB VMDK, ${#A[@]} runs each, order A B B A):"
echo "  qemu-img convert vmdk->qcow2 (reference): median $AM s  spread $AMIN..$AMAX s"
echo "  vmseal seal (convert + seal):             median $BM s  spread $BMIN..$BMAX s"
awk -v a="$AM" -v b="$BM" -v g="$SIZE_GIB" 'BEGIN {
  printf "  ratio seal / convert: %.2f  (seal %.0f MiB/s, convert %.0f MiB/s of virtual disk)\n",
         b / a, g * 1024 / b, g * 1024 / a }'
if [[ "$COMPARE" -eq 1 ]]; then
  read -r FM FMIN FMAX <<<"$(stats "${F[@]}")"
  echo "  vmseal seal via a temporary file (before): median $FM s  spread $FMIN..$FMAX s"
  awk -v a="$AM" -v b="$BM" -v f="$FM" 'BEGIN {
    printf "  ratio via-file / convert: %.2f; in memory / via file: %.2f\n", f / a, b / f }'
fi
echo "  load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
