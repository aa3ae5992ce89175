#!/usr/bin/env bash
# Runs the whole test suite: unit tests, end-to-end tests (tests/*.rs, real binary, real
# files) and the stored format fixture. Some end-to-end tests need root (chown, mknod, mount)
# and the tools `.ci/run` installs. Extra arguments go to cargo, e.g. `scripts/test.sh fixture`.
# Ends with one line totalling every test target: "tests: N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
