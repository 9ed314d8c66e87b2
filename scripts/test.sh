#!/usr/bin/env bash
# Sets up (packages + build) and runs the whole test suite: the Release build
# with every label, the fuzz targets (corpus replay and a short run each),
# then the unit tests built with ASan+UBSan (scripts/sanitize.sh).
#   scripts/test.sh               everything
#   VMSEAL_TEST_LABELS=unit scripts/test.sh   only tests with that label
#
# The clang-16 tree of the last two steps (build-fuzz/: the fuzz targets and
# the instrumented unit tests) compiles in the background while the Release
# suite runs, at the lowest CPU priority: in a session of its own whose
# autogroup is niced to 19 (with autogroup scheduling a plain nice only
# ranks processes within one session, and the suite's qemu and servers run
# in sessions of their own), and nice 19 inside it. It uses the CPU the
# suite leaves idle while its tests wait on VMs, timers and each other.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
phase() { echo "test.sh: $1 at $(( $(date +%s) - t0 )) s"; }
bash scripts/setup.sh
phase "setup and the Release build done"

clang_pid=
clang_log=build/clang-tree-build.log
stop_clang_build() {
  if [ -n "$clang_pid" ] && kill -0 "$clang_pid" 2>/dev/null; then
    kill -- "-$clang_pid" 2>/dev/null || true
  fi
}
trap stop_clang_build EXIT
if [ "${VMSEAL_SKIP_FUZZ:-0}" != 1 ] || [ "${VMSEAL_SKIP_SANITIZE:-0}" != 1 ]; then
  setsid bash -c 'echo 19 >/proc/self/autogroup 2>/dev/null || true
    exec nice -n 19 bash -c "bash scripts/fuzz.sh --build-only &&
      cmake --build build-fuzz -j $(nproc) --target vmseal_unit_tests"' \
    >"$clang_log" 2>&1 </dev/null &
  clang_pid=$!
fi

labels=${VMSEAL_TEST_LABELS:-}
args=(--output-on-failure -j "$(nproc)" --timeout 900)
[ -n "$labels" ] && args+=(-L "$labels")
(cd build && ctest "${args[@]}")
phase "the Release suite passed"

if [ -n "$clang_pid" ]; then
  if ! wait "$clang_pid"; then
    clang_pid=
    grep -E "error|Error" "$clang_log" | head -40 || tail -40 "$clang_log"
    echo "test.sh: the clang-16 build (build-fuzz/) failed; log: $clang_log" >&2
    exit 1
  fi
  clang_pid=
  phase "the clang-16 tree was built (in the background)"
fi
# Fuzzing (docs/fuzzing.md): replays every seed corpus and fuzzes each target
# for a few seconds (clang-16 + ASan/UBSan build in build-fuzz/).
if [ "${VMSEAL_SKIP_FUZZ:-0}" != 1 ]; then
  bash scripts/fuzz.sh "${VMSEAL_FUZZ_SECONDS:-5}"
  phase "fuzzing passed"
fi
# The unit tests under ASan+UBSan, in the fuzz build's tree (clang-16): the
# project's libraries are compiled instrumented once, for both.
if [ "${VMSEAL_SKIP_SANITIZE:-0}" != 1 ]; then
  bash scripts/sanitize.sh
  phase "the sanitizer run passed"
fi
