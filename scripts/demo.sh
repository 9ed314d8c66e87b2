#!/usr/bin/env bash
# Sets up (packages + build) and runs the main job: `vmseal demo`.
# Extra arguments go to `vmseal demo` (e.g. --keep).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec build/vmseal demo "$@"
