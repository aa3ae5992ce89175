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
#   SETTLE=1                   between two anchors.sh runs: `sync`, then drop the page,
#                              dentry and inode caches (root only; skipped with a note in
#                              machine.txt where /proc/sys/vm/drop_caches is not writable).
#                              SETTLE=0 runs them back to back.
#   BENCH_FS=ext4              put BENCH_TMP on a fresh ext4 (mkfs defaults: with a
#                              journal) in a loop-mounted image file of BENCH_FS_SIZE
#                              (default 24G) under BENCH_FS_DIR (default /var/tmp); the
#                              datasets stay where they are.  Root only; removed at exit.
#
# Why spent temp dirs are emptied, not removed, until the end: on an ext4 without a journal
# (this machine's root filesystem) every inode allocation skips, one by one, the free inodes
# of its group deleted in the last 30 s, or 330 s once their inode-table block is dirty
# again: recently_deleted() in the kernel's find_inode_bit().  Removing a run's temp dir
# (repository, staging copy, restore, cp -a copy: up to 60k files) would make the next run
# create its files in the groups just freed and pay for every one of those deletions on
# every allocation: in one profile a mixed-tree restore spent a third of its CPU time there
# after `sync` and dropping caches (which do not help: the first allocation in a block
# reads it back and dirties it).  So each spent temp dir has its files truncated (the
# space comes back, the inodes stay) and is removed only when this script exits; run all
# datasets in one invocation, or leave 6 minutes between invocations.  Deletions inside a
# run (rsync --delete between versions) are anchors.sh's own and are left as they are;
# BENCH_FS=ext4 (a journal: no such check) measures without them.
#
# Why settle (sync + drop caches): each run starts with the disk idle and reads its data
# from disk, whatever the previous run left dirty or cached.
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
SETTLE=${SETTLE:-1}
BENCH_FS=${BENCH_FS:-}

SPENT=()
# Empties a measured run's temp dir now and removes it at exit (see "Why spent temp dirs").
retire() {
  find "$1" -type f -exec truncate -s 0 {} + 2>/dev/null || true
  SPENT+=("$1")
}
on_exit() {
  ((${#SPENT[@]} == 0)) || rm -rf "${SPENT[@]}"
  if declare -F cleanup_fs >/dev/null; then cleanup_fs; fi
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

FS_NOTE="filesystem of BENCH_TMP: as given (${BENCH_TMP:-anchors.sh default: next to the datasets})"
if [[ -n "$BENCH_FS" ]]; then
  [[ "$BENCH_FS" == ext4 ]] || { echo "BENCH_FS=$BENCH_FS: only ext4 is supported" >&2; exit 1; }
  ((EUID == 0)) || { echo "BENCH_FS=ext4 needs root (losetup, mount)" >&2; exit 1; }
  FS_IMG=$(mktemp "${BENCH_FS_DIR:-/var/tmp}/tessera-benchfs.XXXXXX")
  FS_MNT=$(mktemp -d /tmp/tessera-benchfs-mnt.XXXXXX)
  FS_DEV=
  cleanup_fs() {
    if mountpoint -q "$FS_MNT"; then umount "$FS_MNT"; fi
    if [[ -n "$FS_DEV" ]]; then losetup -d "$FS_DEV" || true; fi
    rm -f "$FS_IMG"
    rmdir "$FS_MNT" 2>/dev/null || true
  }
  truncate -s "${BENCH_FS_SIZE:-24G}" "$FS_IMG"
  mkfs.ext4 -q -F "$FS_IMG"
  # Direct I/O on the backing file: one page cache (the loop device's), not two.
  FS_DEV=$(losetup --direct-io=on -f --show "$FS_IMG")
  mount "$FS_DEV" "$FS_MNT"
  export BENCH_TMP=$FS_MNT/bench-tmp
  mkdir -p "$BENCH_TMP"
  FS_NOTE="filesystem of BENCH_TMP: fresh ext4 with journal ($(tune2fs -l "$FS_DEV" | sed -n 's/^Filesystem features: *//p')), ${BENCH_FS_SIZE:-24G} image $FS_IMG on loop $FS_DEV (direct I/O), mounted at $FS_MNT"
fi

settle() {
  ((SETTLE == 1)) || return 0
  sync
  if [[ -w /proc/sys/vm/drop_caches ]]; then echo 3 >/proc/sys/vm/drop_caches || true; fi
}
if ((SETTLE == 1)); then
  if [[ -w /proc/sys/vm/drop_caches ]]; then
    SETTLE_NOTE="between runs: sync + drop caches"
  else
    SETTLE_NOTE="between runs: sync only (/proc/sys/vm/drop_caches not writable)"
  fi
else
  SETTLE_NOTE="between runs: nothing (SETTLE=0)"
fi

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
  echo "$FS_NOTE"
  echo "$SETTLE_NOTE"
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
      CUSTOM_SETTINGS="blake3, FastCDC 2020, zstd when it pays, init args: ${TESSERA_INIT_ARGS:-defaults (avg 512 KiB, zstd level 2)}" \
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
    retire "$work"
  fi
  settle
  tail -n 1 "$log"
}

FIRST_ROUND=${FIRST_ROUND:-1}
settle
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
