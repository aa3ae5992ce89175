#!/usr/bin/env bash
# benches/compare.sh [DATASET_NAME ...]
#
# Whole-binary comparison of tessera against restic and borg, using the shared
# anchor harness (/work/shared/bench/anchors.sh; read its header for what each
# step measures).  For every round (RUNS, default 1) and every dataset under
# $TESSERA_BENCH_DATA (default /var/tmp/tessera-bench; datasets default to
# "edits mixed-tree pypi-versions"), it runs each tool once, interleaved (the
# tool order rotates from round to round), all into one RESULTS_DIR.  After
# each anchors.sh run it counts the files in the repository (objects/packs/
# segments) and, for tessera, saves `stats --json`; then removes the temp dir.
# Finally benches/compare_table.py prints one table (medians over rounds) plus
# tessera/restic ratios computed within each round.
#
# Environment:
#   RUNS=1                     rounds (medians when > 1)
#   TOOLS="tessera restic borg"
#   RESULTS_DIR=target/bench-compare/<UTC timestamp>
#   TESSERA_BENCH_DATA=/var/tmp/tessera-bench
#   ANCHORS=/work/shared/bench/anchors.sh
#   TESSERA_INIT_ARGS=""       extra `tessera init` args, e.g. "--chunk-avg 2MiB"
#   SKIP_BUILD=1               do not run `cargo build --release`
#   TESSERA_BIN=PATH           measure this binary instead of target/release/tessera
#   TESSERA_REV=TEXT           what to call that binary's version (e.g. its commit)
#   FIRST_ROUND=1              number of the first round (to add rounds to an
#                              existing RESULTS_DIR; the table uses them all)
#   BENCH_TMP                  passed through to anchors.sh (temp repos, staging)
#
# The tessera release binary is copied into RESULTS_DIR/bin so a rebuild in the
# middle of a run cannot change what is measured.
#
# tessera templates given to anchors.sh (TOOL=custom):
#   init:    tessera -q --repo {repo} init $TESSERA_INIT_ARGS
#   backup:  tessera -q --repo {repo} backup {src} --host bench --tag {tag}
#   restore: tessera -q --repo {repo} restore latest --target {dst}
# tessera stores absolute paths, so the restore lands in {dst}{src}; anchors.sh
# diffs that subtree against the last version (restic does the same).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
DATA=${TESSERA_BENCH_DATA:-/var/tmp/tessera-bench}
RUNS=${RUNS:-1}
TOOLS=${TOOLS:-"tessera restic borg"}
ANCHORS=${ANCHORS:-/work/shared/bench/anchors.sh}
RESULTS_DIR=${RESULTS_DIR:-$ROOT/target/bench-compare/$(date -u +%Y%m%dT%H%M%SZ)}
if (($# > 0)); then DATASETS=("$@"); else DATASETS=(edits mixed-tree pypi-versions); fi

mkdir -p "$RESULTS_DIR/bin"
RESULTS_DIR=$(cd "$RESULTS_DIR" && pwd)
export RESULTS_DIR

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  (cd "$ROOT" && cargo build --release) >"$RESULTS_DIR/build.log" 2>&1 || { tail -n 30 "$RESULTS_DIR/build.log" >&2; exit 1; }
fi
cp "${TESSERA_BIN:-$ROOT/target/release/tessera}" "$RESULTS_DIR/bin/tessera.new"
mv -f "$RESULTS_DIR/bin/tessera.new" "$RESULTS_DIR/bin/tessera"
TBIN=$RESULTS_DIR/bin/tessera
if [[ -n "${TESSERA_BIN:-}" ]]; then
  REV=${TESSERA_REV:-"unknown ($TESSERA_BIN)"}
else
  REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
  if ! git -C "$ROOT" diff --quiet HEAD -- src 2>/dev/null; then REV="$REV+dirty"; fi
fi

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(nproc) cpus, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
  echo "tessera: $("$TBIN" --version) (git $REV)"
  echo "restic: $(restic version 2>/dev/null | head -n1 || echo missing)"
  echo "borg: $(borg --version 2>/dev/null || echo missing)"
  echo "runs: $RUNS; tools: $TOOLS; datasets: ${DATASETS[*]}; data: $DATA"
  echo "tessera init args: ${TESSERA_INIT_ARGS:-(defaults)}"
} | tee -a "$RESULTS_DIR/machine.txt"

EXTRA=$RESULTS_DIR/extra.jsonl
FAILS=$RESULTS_DIR/failures.txt
read -r -a TOOL_LIST <<<"$TOOLS"
NT=${#TOOL_LIST[@]}

run_one() { # run_one ROUND DATASET TOOL
  local round=$1 ds=$2 tool=$3 log rc=0
  log=$RESULTS_DIR/run-$round-$ds-$tool.log
  echo "### round $round: $ds / $tool  ($(date -u +%H:%M:%S))" | tee -a "$RESULTS_DIR/progress.log"
  if [[ $tool == tessera ]]; then
    # shellcheck disable=SC2016
    KEEP=1 CUSTOM_LABEL=tessera CUSTOM_VERSION="$("$TBIN" --version) (git $REV)" \
      CUSTOM_SETTINGS="blake3, FastCDC 2020, zstd when it pays, init args: ${TESSERA_INIT_ARGS:-defaults (avg 1 MiB)}" \
      CUSTOM_INIT="$TBIN -q --repo {repo} init ${TESSERA_INIT_ARGS:-}" \
      CUSTOM_BACKUP="$TBIN -q --repo {repo} backup {src} --host bench --tag {tag}" \
      CUSTOM_RESTORE="$TBIN -q --repo {repo} restore latest --target {dst}" \
      bash "$ANCHORS" "$DATA/$ds" custom >"$log" 2>&1 || rc=$?
  else
    KEEP=1 bash "$ANCHORS" "$DATA/$ds" "$tool" >"$log" 2>&1 || rc=$?
  fi
  local run_id work files=null stats=null
  run_id=$(sed -n 's/^== \([^:]*\): .*/\1/p' "$log" | head -n1)
  work=$(sed -n 's/^== temp dir \(.*\), logs .*/\1/p' "$log" | head -n1)
  if [[ -n "$work" && -d "$work/repo" ]]; then
    files=$(find "$work/repo" -type f | wc -l)
    if [[ $tool == tessera ]]; then
      stats=$("$TBIN" -q --repo "$work/repo" stats --json 2>>"$log" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))' || echo null)
    fi
  fi
  printf '{"round":%d,"dataset":"%s","tool":"%s","run":"%s","rc":%d,"repo_files":%s,"tessera_stats":%s}\n' \
    "$round" "$ds" "$tool" "$run_id" "$rc" "$files" "$stats" >>"$EXTRA"
  if ((rc != 0)); then
    { echo "FAILED round $round $ds $tool rc=$rc (run $run_id); log $log; temp dir kept: $work"; tail -n 25 "$log"; echo; } | tee -a "$FAILS" >&2
  elif [[ -n "$work" ]]; then
    rm -rf "$work"
  fi
  tail -n 1 "$log"
}

FIRST_ROUND=${FIRST_ROUND:-1}
for ((r = FIRST_ROUND; r < FIRST_ROUND + RUNS; r++)); do
  for ds in "${DATASETS[@]}"; do
    [[ -d "$DATA/$ds" ]] || { echo "missing dataset $DATA/$ds" >&2; continue; }
    for ((i = 0; i < NT; i++)); do
      run_one "$r" "$ds" "${TOOL_LIST[$(((i + r - 1) % NT))]}"
    done
  done
done

python3 "$HERE/compare_table.py" "$RESULTS_DIR" | tee "$RESULTS_DIR/table.md"
[[ -s "$FAILS" ]] && { echo; echo "FAILURES (see $FAILS):"; grep '^FAILED' "$FAILS"; }
echo "results: $RESULTS_DIR"
