#!/usr/bin/env bash
# Migrating an image from cloud A to cloud B against copying its package
# between the two portals with curl (issue 19). One run:
#   1. starts two complete deployments on loopback (KMS A + portal A, KMS B
#      + portal B), registers one customer at each, seals a raw disk
#      (default 1 GiB, random data) to the customer at A and uploads it
#      there (not timed);
#   2. times, in the order A B B A (repeated --pairs times):
#        A  curl: GET the package from portal A into a file, then PUT it
#           into an upload session at portal B, the bytes only (no commit:
#           portal B would refuse a package sealed to A's tenant)
#        B  vmseal customer migrate: verify the customer's certificate at B,
#           export the package from A into a file verified against the
#           customer's signature (every digest), sign the authorization,
#           have KMS A re-wrap the data key, write the package for B (new
#           EncryptedKey and tag, disk ciphertext copied unchanged, signed)
#           and upload it to portal B (committed: KMS B verifies it)
#   3. prints the median and spread (min..max) of each, the ratio B/A of
#      the medians, and the load average before and after.
# B moves the bytes three times (A -> disk, disk -> disk, disk -> B) and
# commits; A twice (A -> disk -> B) without a commit.
#
# Usage: bench/migrate_bench.sh [--size-gib N] [--pairs N] [--vmseal PATH] [--dir DIR]
set -euo pipefail

SIZE_GIB=1
PAIRS=1
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VMSEAL="$REPO/build/vmseal"
WORK_PARENT="${TMPDIR:-/tmp}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --size-gib) SIZE_GIB="$2"; shift 2 ;;
    --pairs) PAIRS="$2"; shift 2 ;;
    --vmseal) VMSEAL="$2"; shift 2 ;;
    --dir) WORK_PARENT="$2"; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "migrate_bench: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ "$SIZE_GIB" =~ ^[1-9][0-9]*$ && "$PAIRS" =~ ^[1-9][0-9]*$ ]] ||
  { echo "migrate_bench: --size-gib and --pairs want positive integers" >&2; exit 2; }
for tool in curl openssl dd awk python3; do
  command -v "$tool" >/dev/null || { echo "migrate_bench: $tool missing" >&2; exit 2; }
done
[[ -x "$VMSEAL" ]] || { echo "migrate_bench: $VMSEAL missing (build target vmseal)" >&2; exit 2; }

WORK="$(mktemp -d "$WORK_PARENT/vmseal-migrate-bench.XXXXXX")"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_file() {  # a port file, at most 60 s
  for ((i = 0; i < 600; i++)); do [[ -s "$1" ]] && return 0; sleep 0.1; done
  echo "migrate_bench: $1 never appeared" >&2; exit 1
}
# deployment NAME: KMS and portal; sets PORTAL_<NAME> and KMSCA_<NAME>.
deployment() {
  local n="$1" d="$WORK/$1"
  mkdir -p "$d"
  "$VMSEAL" kms init --dir "$d/kms" >/dev/null
  "$VMSEAL" kms issue-identity --dir "$d/kms" --role portal --name portal --out "$d/kms/portal" >/dev/null
  "$VMSEAL" kms serve --config "$d/kms/kms.json" --port 0 --port-file "$d/kms/port" \
      >"$d/kms.log" 2>&1 &
  PIDS+=($!)
  wait_file "$d/kms/port"
  "$VMSEAL" csp serve --data-dir "$d/portal" --port 0 --port-file "$d/portal.port" \
      --kms-url "https://127.0.0.1:$(cat "$d/kms/port")" --kms-ca "$d/kms/ca.pem" \
      --kms-cert "$d/kms/portal.pem" --kms-key "$d/kms/portal-key.pem" >"$d/portal.log" 2>&1 &
  PIDS+=($!)
  wait_file "$d/portal.port"
  printf -v "PORTAL_$n" 'http://127.0.0.1:%s' "$(cat "$d/portal.port")"
  printf -v "KMSCA_$n" '%s' "$d/kms/ca.pem"
}
# signup NAME PORTAL KMSCA: a customer with its session in $WORK/NAME.
signup() {
  local d="$WORK/$1" c=("$VMSEAL" customer --portal "$2" --session "$WORK/$1/session.json")
  mkdir -p "$d"
  local login
  login="$("${c[@]}" --json register --password-out "$d/pw" |
           python3 -c 'import json,sys; print(json.load(sys.stdin)["login_id"])')"
  "${c[@]}" login --login-id "$login" --password-file "$d/pw" >/dev/null
  "${c[@]}" fetch-cert --out "$d/customer.pem" --kms-ca "$3" >/dev/null
}

echo "migrate_bench: $SIZE_GIB GiB disk in $WORK ($(nproc) cores)"
echo "  load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
deployment A
deployment B
signup cust "$PORTAL_A" "$KMSCA_A"
signup cust-b "$PORTAL_B" "$KMSCA_B"
openssl enc -aes-128-ctr -K "$(openssl rand -hex 16)" -iv "$(openssl rand -hex 16)" \
    -in /dev/zero 2>/dev/null | dd of="$WORK/disk.raw" bs=1M count=$((SIZE_GIB * 1024)) \
    iflag=fullblock status=none 2>/dev/null || true  # openssl ends on SIGPIPE
[[ $(stat -c %s "$WORK/disk.raw") -eq $((SIZE_GIB << 30)) ]] ||
  { echo "migrate_bench: could not write the disk" >&2; exit 1; }
"$VMSEAL" seal "$WORK/disk.raw" --cert "$WORK/cust/customer.pem" -o "$WORK/pkg.ova" >/dev/null
rm -f "$WORK/disk.raw"
CA=("$VMSEAL" customer --portal "$PORTAL_A" --session "$WORK/cust/session.json")
"${CA[@]}" upload "$WORK/pkg.ova" --name bench >/dev/null
IMAGE="$("${CA[@]}" --json images | python3 -c 'import json,sys; print(json.load(sys.stdin)["images"][0]["image_id"])')"
PKG_BYTES=$(stat -c %s "$WORK/pkg.ova")
rm -f "$WORK/pkg.ova"
TOKEN_A="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["token"])' "$WORK/cust/session.json")"
TOKEN_B="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["token"])' "$WORK/cust-b/session.json")"
sync

now() { date +%s.%N; }
run_curl() {
  local up
  up="$(curl -sf -X POST -H "Authorization: Bearer $TOKEN_B" "$PORTAL_B/v1/uploads" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["upload_id"])')"
  curl -sf -H "Authorization: Bearer $TOKEN_A" -o "$WORK/copy.ova" "$PORTAL_A/v1/images/$IMAGE/package"
  curl -sf -X PUT -H "Authorization: Bearer $TOKEN_B" -H 'Content-Type: application/octet-stream' \
       -T "$WORK/copy.ova" "$PORTAL_B/v1/uploads/$up?offset=0" >/dev/null
  rm -f "$WORK/copy.ova"
}
RUN=0
run_migrate() {
  RUN=$((RUN + 1))
  local w="$WORK/mig-$RUN"
  mkdir -p "$w"
  "${CA[@]}" migrate "$IMAGE" --kms-ca "$KMSCA_A" --to-portal "$PORTAL_B" \
      --to-session "$WORK/cust-b/session.json" --to-kms-ca "$KMSCA_B" --work-dir "$w" >/dev/null
  rm -rf "$w"
}
A_T=(); B_T=()
time_one() {  # tool
  local t0 t1
  t0=$(now)
  if [[ "$1" == A ]]; then run_curl; else run_migrate; fi
  sync
  t1=$(now)
  local s; s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
  if [[ "$1" == A ]]; then A_T+=("$s"); else B_T+=("$s"); fi
  echo "  $1 $s s"
}
# Warm-up (not counted): one of each.
run_curl; run_migrate
for ((p = 0; p < PAIRS; p++)); do
  for t in A B B A; do time_one "$t"; done
done
stats() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END {
  m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2;
  printf "%.2f %.2f %.2f", m, v[1], v[NR] }'; }
read -r AM AMIN AMAX <<<"$(stats "${A_T[@]}")"
read -r BM BMIN BMAX <<<"$(stats "${B_T[@]}")"
MIB=$(awk -v b="$PKG_BYTES" 'BEGIN { printf "%.0f", b / 1048576 }')
echo "package: $MIB MiB"
echo "A curl copy portal A -> portal B: median $AM s (spread $AMIN..$AMAX), $(awk -v m="$MIB" -v s="$AM" 'BEGIN { printf "%.0f", m / s }') MiB/s"
echo "B customer migrate (verify dest, export+verify, re-wrap, re-sign, upload to B): median $BM s (spread $BMIN..$BMAX), $(awk -v m="$MIB" -v s="$BM" 'BEGIN { printf "%.0f", m / s }') MiB/s"
echo "ratio B/A: $(awk -v a="$AM" -v b="$BM" 'BEGIN { printf "%.2f", b / a }')x"
echo "  load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
