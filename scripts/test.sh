#!/usr/bin/env bash
# Sets up (packages + build) and runs the whole test suite: the Release build
# with every label, the fuzz targets (corpus replay and a short run each),
# then the unit tests built with ASan+UBSan (scripts/sanitize.sh).
#   scripts/test.sh               everything
#   VMSEAL_TEST_LABELS=unit scripts/test.sh   only tests with that label
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
labels=${VMSEAL_TEST_LABELS:-}
args=(--output-on-failure -j "$(nproc)" --timeout 900)
[ -n "$labels" ] && args+=(-L "$labels")
(cd build && ctest "${args[@]}")
# Fuzzing (docs/fuzzing.md): replays every seed corpus and fuzzes each target
# for a few seconds (clang-16 + ASan/UBSan build in build-fuzz/).
if [ "${VMSEAL_SKIP_FUZZ:-0}" != 1 ]; then
  bash scripts/fuzz.sh "${VMSEAL_FUZZ_SECONDS:-5}"
fi
# The unit tests under ASan+UBSan, in the fuzz build's tree (clang-16): the
# project's libraries are compiled instrumented once, for both.
if [ "${VMSEAL_SKIP_SANITIZE:-0}" != 1 ]; then
  bash scripts/sanitize.sh
fi
