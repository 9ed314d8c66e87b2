#!/usr/bin/env bash
# Sets up (packages + build) and runs the whole test suite: the Release build
# with every label, then the ASan+UBSan build of the unit tests.
#   scripts/test.sh               everything
#   VMSEAL_TEST_LABELS=unit scripts/test.sh   only tests with that label
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
labels=${VMSEAL_TEST_LABELS:-}
args=(--output-on-failure -j "$(nproc)" --timeout 900)
[ -n "$labels" ] && args+=(-L "$labels")
(cd build && ctest "${args[@]}")
if [ "${VMSEAL_SKIP_SANITIZE:-0}" != 1 ]; then
  bash scripts/setup.sh --sanitize
  (cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --output-on-failure -j "$(nproc)" -L unit --timeout 900)
fi
