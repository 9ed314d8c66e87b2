#!/usr/bin/env bash
# Builds the unit tests (and the vmseal binary some of them run) with
# clang-16, AddressSanitizer and UndefinedBehaviorSanitizer, and runs them.
# They are built in build-fuzz/, the tree of scripts/fuzz.sh: its libraries
# are already compiled with the sanitizers (and libFuzzer's coverage hooks,
# which cost the tests nothing but a little speed), so CI compiles the
# project's libraries twice (Release with GCC, instrumented with clang), not
# three times. `scripts/setup.sh --sanitize` is the GCC alternative
# (build-asan/) for a developer who wants GCC's view.
#   scripts/sanitize.sh [CTEST ARGS...]    e.g. scripts/sanitize.sh -R json_test
# Each unit test binary is one CTest test here (VMSEAL_TESTS_PER_BINARY):
# ASan starts once per binary instead of once per test case.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fuzz.sh --build-only
jobs=${VMSEAL_FUZZ_JOBS:-$(nproc)}
start=$(date +%s)
if ! cmake --build build-fuzz -j "$jobs" --target vmseal_unit_tests >build-fuzz/unit-build.log 2>&1; then
  grep -E "error|Error" build-fuzz/unit-build.log | head -40
  echo "sanitize: build failed (log: build-fuzz/unit-build.log)" >&2
  exit 1
fi
echo "sanitize: built the unit tests in build-fuzz/ in $(( $(date +%s) - start )) s"
cd build-fuzz
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --output-on-failure -j "$(nproc)" -L unit --timeout 900 "$@"
