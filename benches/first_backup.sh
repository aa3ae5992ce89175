#!/usr/bin/env bash
# benches/first_backup.sh [RUNS] [BINARY...]
#
# The first backup of edits v01 as anchors.sh times it, repeated and interleaved across
# binaries, with what the machine did meanwhile: for each run and binary, settle (sync +
# drop caches when root), init a fresh repository, `rsync -a` a fresh staging copy of v01 (not
# synced, as anchors.sh leaves it), read it once, then time the backup.  Prints wall and CPU
# seconds of the backup, the `sync` after it, and the /proc/stat ticks (10 ms) of the whole
# machine during the backup: idle, iowait and steal show when the two cores were not ours.
#
#   RUNS            rounds (default 4); BINARY defaults to target/release/tessera
#   DATASET         default ${TESSERA_BENCH_DATA:-/var/tmp/tessera-bench}/edits/v01
#   WORK_PARENT     where the repository and staging copy go (default: next to the datasets)
set -euo pipefail

RUNS=${1:-4}
shift || true
BINS=("$@")
((${#BINS[@]} > 0)) || BINS=("$(cd "$(dirname "$0")/.." && pwd)/target/release/tessera")
DATA=${TESSERA_BENCH_DATA:-/var/tmp/tessera-bench}
DATASET=${DATASET:-$DATA/edits/v01}
WORK_PARENT=${WORK_PARENT:-$DATA/bench-tmp}
[[ -d "$DATASET" ]] || { echo "no dataset at $DATASET (see /work/shared/bench/make-datasets.sh)" >&2; exit 1; }
mkdir -p "$WORK_PARENT"

settle() {
  sync
  if [[ -w /proc/sys/vm/drop_caches ]]; then echo 3 >/proc/sys/vm/drop_caches || true; fi
}
stat_ticks() { head -n1 /proc/stat; }

one() {
  local bin=$1 work t0 t1 t2 s0 s1
  work=$(mktemp -d "$WORK_PARENT/first-backup.XXXXXX")
  settle
  "$bin" -q --repo "$work/repo" init >/dev/null
  sync
  rsync -a "$DATASET/" "$work/staging/"
  find "$work/staging" -type f -print0 | xargs -0 cat >/dev/null
  read -r -a s0 < <(stat_ticks)
  t0=$(date +%s.%N)
  /usr/bin/time -f '%U %S' -o "$work/time" "$bin" -q --repo "$work/repo" backup "$work/staging" --host bench >/dev/null
  t1=$(date +%s.%N)
  read -r -a s1 < <(stat_ticks)
  sync
  t2=$(date +%s.%N)
  read -r user sys <"$work/time"
  # /proc/stat cpu line: user nice system idle iowait irq softirq steal
  awk -v b="$bin" -v a="$t0" -v z="$t1" -v y="$t2" -v u="$user" -v s="$sys" \
    -v idle=$((s1[4] - s0[4])) -v iow=$((s1[5] - s0[5])) -v st=$((s1[8] - s0[8])) \
    'BEGIN {printf "%-40s wall %.3f s  user %.2f  sys %.2f  sync after %.3f s  | idle %d  iowait %d  steal %d ticks\n", b, z - a, u, s, y - z, idle, iow, st}'
  DONE+=("$work")
}

# Removed only at the end: on ext4 without a journal, every inode allocation skips, one by
# one, the free inodes of its group deleted in the last 30 s, 330 s once their inode-table
# block is dirty again (`recently_deleted()`; see benches/compare.sh), so deleting one
# run's repository would tax the next run's object files.
DONE=()
cleanup() { ((${#DONE[@]} == 0)) || rm -rf "${DONE[@]}"; }
trap cleanup EXIT

for ((r = 1; r <= RUNS; r++)); do
  for bin in "${BINS[@]}"; do one "$bin"; done
done
