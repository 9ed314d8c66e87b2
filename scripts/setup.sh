#!/usr/bin/env bash
# Installs every Debian package vmseal needs (idempotent: quiet and offline
# when all are present) and builds vmseal in Release into build/.
#   scripts/setup.sh [--sanitize]   (--sanitize: ASan+UBSan build of the vmseal
#                                    binary and the unit tests in build-asan/)
set -euo pipefail
cd "$(dirname "$0")/.."

sanitize=0
for arg in "$@"; do
  case "$arg" in
    --sanitize) sanitize=1 ;;
    *) echo "setup.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# The wanted packages: every scripts/packages/*.txt.
bash scripts/install-packages.sh scripts/packages/*.txt

# Node.js for the S3-compatible test server: the machine may carry its own
# nodejs (which bundles npm); otherwise take Debian's.
if ! command -v npm >/dev/null 2>&1; then
  echo "setup: installing nodejs npm"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    nodejs npm >/dev/null
fi
if [ -f tools/s3/package.json ] && [ ! -d tools/s3/node_modules ]; then
  echo "setup: installing the S3 test server (npm ci)"
  (cd tools/s3 && npm ci --no-audit --no-fund --silent >/dev/null)
fi
# The console's browser tests: playwright-core and axe-core from npm (the
# browser is Debian's chromium, scripts/packages/console.txt).
if [ -f tools/console-test/package.json ] && [ ! -d tools/console-test/node_modules ]; then
  echo "setup: installing the console's browser test driver (npm ci)"
  (cd tools/console-test && npm ci --no-audit --no-fund --silent >/dev/null)
fi

jobs=$(nproc)
targets=()
if [ "$sanitize" -eq 1 ]; then
  dir=build-asan
  # -O1 -g1: line tables for ASan's reports at half the compile time of
  # RelWithDebInfo's -O2 -g (kms/service.cc: 29 s against 56 s); only the
  # unit tests run under the sanitizers, so only they are built.
  flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DVMSEAL_SANITIZE=ON
         "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG"
         "-DCMAKE_C_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG")
  targets=(--target vmseal_unit_tests)
else
  dir=build
  flags=(-DCMAKE_BUILD_TYPE=Release)
fi
# ccache, when installed, only speeds up rebuilds; the build does not need it.
if command -v ccache >/dev/null 2>&1; then
  flags+=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
fi
cmake -S . -B "$dir" "${flags[@]}" >/dev/null
cmake --build "$dir" -j "$jobs" "${targets[@]}" 2>&1 | grep -E "error|warning:|Error" || true
cmake --build "$dir" -j "$jobs" "${targets[@]}" >/dev/null
echo "setup: built $dir/vmseal"
