#!/usr/bin/env bash
# Runs the whole test suite: unit tests, end-to-end tests (tests/*.rs, real binary, real
# files) and the stored format fixture. Some end-to-end tests need root (chown, mknod, mount)
# and the tools `.ci/run` installs. Extra arguments go to cargo, e.g. `scripts/test.sh fixture`.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --workspace --no-fail-fast "$@"
