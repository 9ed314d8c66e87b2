#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/*_fuzzer.cc) with clang-16, ASan and
# UBSan in build-fuzz/, then for each target replays its seed corpus
# (fuzz/corpus/<name>) and fuzzes it for SECONDS (default 10). Exits non-zero
# on any crash, leak, timeout or out-of-memory, printing the input's path.
# New inputs and crash files go to a scratch directory, never the checkout.
#   scripts/fuzz.sh [SECONDS] [TARGET...]       e.g. scripts/fuzz.sh 600 json
#   scripts/fuzz.sh --coverage [TARGET...]      line/region coverage of the
#       parsers from the corpora (build-fuzz-cov/, llvm-cov-16 report)
#   scripts/fuzz.sh --build-only                 configure build-fuzz/ and build
#       the targets, run nothing (scripts/sanitize.sh builds on that tree)
# Environment: VMSEAL_FUZZ_WORK=DIR keeps the scratch directory (default: a
# fresh one under /tmp, removed unless something failed); VMSEAL_FUZZ_JOBS=N
# build parallelism (default: nproc). docs/fuzzing.md has the details.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

coverage=0
build_only=0
seconds=10
targets=()
for arg in "$@"; do
  case "$arg" in
    --coverage) coverage=1 ;;
    --build-only) build_only=1 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    ''|*[!0-9]*) targets+=("$arg") ;;
    *) seconds=$arg ;;
  esac
done

# The packages of scripts/packages/fuzz.txt (setup.sh installs them too).
bash scripts/install-packages.sh scripts/packages/fuzz.txt

if [ "$coverage" -eq 1 ]; then
  build=build-fuzz-cov
  flags=(-DVMSEAL_FUZZ=ON -DVMSEAL_FUZZ_COVERAGE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo)
else
  build=build-fuzz
  # OSS-Fuzz's flags: -O1 with line tables compiles in about half the time
  # of RelWithDebInfo's -O2 -g and still symbolizes every report.
  flags=(-DVMSEAL_FUZZ=ON -DVMSEAL_TESTS_PER_BINARY=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo
         "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -gline-tables-only -DNDEBUG"
         "-DCMAKE_C_FLAGS_RELWITHDEBINFO=-O1 -gline-tables-only -DNDEBUG")
fi
if command -v ccache >/dev/null 2>&1; then
  flags+=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
fi
CC=clang-16 CXX=clang++-16 cmake -S . -B "$build" "${flags[@]}" >/dev/null
jobs=${VMSEAL_FUZZ_JOBS:-$(nproc)}
build_start=$(date +%s)
if ! cmake --build "$build" -j "$jobs" --target vmseal_fuzzers >"$build/fuzz-build.log" 2>&1; then
  grep -E "error|Error" "$build/fuzz-build.log" | head -40
  echo "fuzz: build failed (log: $build/fuzz-build.log)" >&2
  exit 1
fi
echo "fuzz: built $build/fuzz in $(( $(date +%s) - build_start )) s"
[ "$build_only" -eq 1 ] && exit 0

if [ "${#targets[@]}" -eq 0 ]; then
  for f in fuzz/*_fuzzer.cc; do
    n=$(basename "$f" .cc)
    targets+=("${n%_fuzzer}")
  done
fi

work=${VMSEAL_FUZZ_WORK:-$(mktemp -d /tmp/vmseal-fuzz.XXXXXX)}
mkdir -p "$work"
keep_work=${VMSEAL_FUZZ_WORK:+1}
failed=()

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

# llvm-cov's view of each target: the parser sources it is meant to cover.
sources_of() {
  case "$1" in
    stream_header) echo src/stream/internal/header.cc ;;
    sealed_stream) echo src/stream/stream.cc src/stream/internal/header.cc \
                        src/stream/internal/chunk_cipher.cc src/stream/internal/pipeline.cc ;;
    ovf_descriptor) echo src/ovf/descriptor.cc ;;
    ovf_manifest) echo src/ovf/manifest.cc ;;
    ova_tar) echo src/ovf/tar.cc ;;
    ovf_package) echo src/ovf/package.cc src/ovf/tar.cc src/ovf/manifest.cc \
                      src/ovf/descriptor.cc src/ovf/signature.cc src/ovf/internal/key_wrap.cc ;;
    json) echo src/json/json.cc ;;
    kms_request) echo src/attest/evidence.cc src/kms/policy.cc src/kms/service.cc ;;
    portal_request) echo src/csp/policy.cc src/json/json.cc ;;
    tpm_structures) echo src/attest/tpm_format.cc src/attest/verifier.cc src/attest/evidence.cc ;;
    x509) echo src/crypto/x509.cc src/attest/ek_certificate.cc src/ovf/signature.cc ;;
    s3_xml) echo src/store/internal/s3_xml.cc ;;
    disk_format) ls src/disk_format/*.cc 2>/dev/null | grep -v _test.cc || true ;;
    tlog_*) ls src/tlog/*.cc 2>/dev/null | grep -v _test.cc || true ;;
  esac
}

summary=()
for t in "${targets[@]}"; do
  bin=$build/fuzz/${t}_fuzzer
  if [ ! -x "$bin" ]; then
    echo "fuzz: no target $t ($bin)" >&2
    failed+=("$t")
    continue
  fi
  corpus=fuzz/corpus/$t
  mkdir -p "$work/$t/new" "$work/$t/artifacts"
  dict=()
  [ -f "fuzz/$t.dict" ] && dict=(-dict="fuzz/$t.dict")
  common=(-rss_limit_mb=2048 -timeout=10 -artifact_prefix="$work/$t/artifacts/")
  seeds=()
  [ -d "$corpus" ] && seeds=("$corpus")

  if [ "$coverage" -eq 1 ]; then
    # Replay the seeds and what earlier runs in the same work dir found.
    LLVM_PROFILE_FILE="$work/$t/%p.profraw" "$bin" -runs=0 "${common[@]}" \
      "${seeds[@]}" "$work/$t/new" >"$work/$t/coverage.log" 2>&1 || true
    llvm-profdata-16 merge -sparse "$work/$t"/*.profraw -o "$work/$t/merged.profdata"
    mapfile -t srcs < <(sources_of "$t" | tr ' ' '\n' | grep -v '^$')
    echo "=== $t"
    llvm-cov-16 report "$bin" -instr-profile="$work/$t/merged.profdata" \
      "${srcs[@]/#/$root/}" | sed -e "s#$root/##"
    continue
  fi

  # 1. Replay the seed corpus: every input must pass.
  if [ "${#seeds[@]}" -gt 0 ] && ! "$bin" -runs=0 "${common[@]}" "${seeds[@]}" \
      >"$work/$t/replay.log" 2>&1; then
    echo "fuzz: $t: a seed input fails:" >&2
    grep -E "ERROR|SUMMARY|Test unit written|Running:" "$work/$t/replay.log" | tail -5 >&2
    failed+=("$t")
    continue
  fi
  # 2. Fuzz for $seconds; new inputs go to the scratch corpus (first dir).
  if ! "$bin" -max_total_time="$seconds" -print_final_stats=1 "${common[@]}" "${dict[@]}" \
      "$work/$t/new" "${seeds[@]}" >"$work/$t/fuzz.log" 2>&1; then
    echo "fuzz: $t FAILED:" >&2
    grep -E "ERROR|SUMMARY|Test unit written" "$work/$t/fuzz.log" | tail -5 >&2
    for a in "$work/$t/artifacts"/*; do [ -e "$a" ] && echo "fuzz: crash input: $a" >&2; done
    failed+=("$t")
    continue
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t/fuzz.log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/$t/fuzz.log")
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$work/$t/fuzz.log" | tail -1)
  summary+=("$(printf '%-18s %10s execs %8s/s  %s' "$t" "${execs:-?}" "${rate:-?}" "$cov")")
done

if [ "$coverage" -eq 0 ]; then
  echo "fuzz: ${seconds} s per target (work dir $work)"
  for line in "${summary[@]}"; do echo "  $line"; done
fi
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]} (inputs and logs kept in $work)" >&2
  exit 1
fi
[ -z "$keep_work" ] && [ "$coverage" -eq 0 ] && rm -rf "$work"
echo "fuzz: ${#targets[@]} targets passed"
