#!/usr/bin/env bash
# benches/dedupe.sh [DATASET_NAME ...]
#
# The published dedupe-ratio comparison (docs/benchmarks.md): on each dataset under
# $TESSERA_BENCH_DATA (default /var/tmp/tessera-bench; datasets default to
# "edits mixed-tree pypi-versions"), in one go:
#   1. real backups with tessera, restic and borg through benches/compare.sh (which runs
#      /work/shared/bench/anchors.sh; RUNS rounds, default 1) — skipped with SKIP_COMPARE=1
#      when RESULTS_DIR already holds them;
#   2. `tessera analyze --as-versions` over the dataset's vNN folders with several chunkers
#      (CHUNKERS, default FastCDC at 256 KiB, 512 KiB, 1 MiB, 2 MiB average and fixed 1 MiB),
#      writing RESULTS_DIR/analyze-DATASET.json and .svg (dedup ratio vs chunk size,
#      cumulative stored bytes per version);
#   3. benches/dedupe_table.py: one markdown table per dataset (RESULTS_DIR/dedupe.md).
#
# Environment: RESULTS_DIR (default target/bench-dedupe/<UTC timestamp>), RUNS, SKIP_COMPARE,
# SKIP_BUILD, TESSERA_BIN, TESSERA_BENCH_DATA, CHUNKERS.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
DATA=${TESSERA_BENCH_DATA:-/var/tmp/tessera-bench}
RESULTS_DIR=${RESULTS_DIR:-$ROOT/target/bench-dedupe/$(date -u +%Y%m%dT%H%M%SZ)}
CHUNKERS=${CHUNKERS:-"fastcdc:256KiB,512KiB,1MiB,2MiB fixed:1MiB"}
if (($# > 0)); then DATASETS=("$@"); else DATASETS=(edits mixed-tree pypi-versions); fi
mkdir -p "$RESULTS_DIR"
RESULTS_DIR=$(cd "$RESULTS_DIR" && pwd)
export RESULTS_DIR

if [[ "${SKIP_COMPARE:-0}" != 1 ]]; then
  "$HERE/compare.sh" "${DATASETS[@]}"
fi
if [[ "${SKIP_BUILD:-0}" != 1 && -z "${TESSERA_BIN:-}" ]]; then
  (cd "$ROOT" && cargo build --release) >"$RESULTS_DIR/build-analyze.log" 2>&1
fi
BIN=${TESSERA_BIN:-$ROOT/target/release/tessera}

args=()
for c in $CHUNKERS; do args+=(--chunker "$c"); done
for ds in "${DATASETS[@]}"; do
  mapfile -t versions < <(find "$DATA/$ds" -mindepth 1 -maxdepth 1 -type d -regex '.*/v[0-9][0-9]*' | sort -V)
  ((${#versions[@]})) || { echo "no vNN folders in $DATA/$ds" >&2; exit 1; }
  echo "### analyze $ds (${#versions[@]} versions)" >&2
  /usr/bin/time -f '%e s wall, %M KiB peak RSS' -o "$RESULTS_DIR/analyze-$ds.time" \
    "$BIN" -q analyze "${versions[@]}" --as-versions "${args[@]}" \
    --json --plot "$RESULTS_DIR/analyze-$ds.svg" >"$RESULTS_DIR/analyze-$ds.json"
done
python3 "$HERE/dedupe_table.py" "$RESULTS_DIR" "${DATASETS[@]}" | tee "$RESULTS_DIR/dedupe.md"
