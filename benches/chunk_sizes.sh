#!/usr/bin/env bash
# benches/chunk_sizes.sh [DATASET_NAME ...]     (default: edits mixed-tree)
#
# Chunk-size sweep for docs/chunking.md.  For each dataset under
# $TESSERA_BENCH_DATA (default /var/tmp/tessera-bench) and each average chunk
# size in $SIZES (default "256KiB 512KiB 1MiB 2MiB"), a fresh repository
# (`tessera init --chunk-avg SIZE`) receives every version vNN in order, the way
# anchors.sh does it: `rsync -a --delete vNN/ STAGING/` (one fixed staging path,
# shared by all sizes, synced once per version), then one backup per
# repository.  Afterwards it records, per repository: du -sb of REPO/objects
# and of the whole REPO, the number of object files, `stats --json`
# (dedup_ratio, unique_chunks, ...), and the summed backup wall time.
# Output: $OUT/chunk-sizes.jsonl (one line per dataset x size) and a markdown
# table on stdout.  Binary: $TBIN (default target/release/tessera, copied).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
DATA=${TESSERA_BENCH_DATA:-/var/tmp/tessera-bench}
SIZES=${SIZES:-"256KiB 512KiB 1MiB 2MiB"}
OUT=${OUT:-$ROOT/target/bench-chunk-sizes/$(date -u +%Y%m%dT%H%M%SZ)}
if (($# > 0)); then DATASETS=("$@"); else DATASETS=(edits mixed-tree); fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cp "${TBIN:-$ROOT/target/release/tessera}" "$OUT/tessera"
T=$OUT/tessera
JSONL=$OUT/chunk-sizes.jsonl
read -r -a SZ <<<"$SIZES"

for ds in "${DATASETS[@]}"; do
  WORK=$(mktemp -d "${BENCH_TMP:-$DATA/bench-tmp}/chunks-$ds-XXXXXX")
  STAGING=$WORK/staging
  mkdir -p "$STAGING"
  declare -A WALL=()
  for s in "${SZ[@]}"; do
    "$T" -q --repo "$WORK/repo-$s" init --chunk-avg "$s" >/dev/null
    WALL[$s]=0
  done
  mapfile -t VERSIONS < <(find "$DATA/$ds" -mindepth 1 -maxdepth 1 -type d -regex '.*/v[0-9][0-9]*' | sort -V)
  for v in "${VERSIONS[@]}"; do
    rsync -a --delete "$v/" "$STAGING/"
    for s in "${SZ[@]}"; do
      t0=$(date +%s.%N)
      "$T" -q --repo "$WORK/repo-$s" backup "$STAGING" --host bench --tag "$(basename "$v")" >"$OUT/$ds-$s-$(basename "$v").log" 2>&1
      t1=$(date +%s.%N)
      WALL[$s]=$(awk -v w="${WALL[$s]}" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", w + b - a}')
      echo "$ds $s $(basename "$v") done (cumulative backup wall ${WALL[$s]} s)" >&2
    done
  done
  for s in "${SZ[@]}"; do
    R=$WORK/repo-$s
    obj_bytes=$(du -sb "$R/objects" | cut -f1)
    repo_bytes=$(du -sb "$R" | cut -f1)
    obj_files=$(find "$R/objects" -type f | wc -l)
    stats=$("$T" -q --repo "$R" stats --json | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))')
    printf '{"dataset":"%s","chunk_avg":"%s","versions":%d,"objects_du_bytes":%s,"repo_du_bytes":%s,"object_files":%s,"backup_wall_s":%s,"stats":%s}\n' \
      "$ds" "$s" "${#VERSIONS[@]}" "$obj_bytes" "$repo_bytes" "$obj_files" "${WALL[$s]}" "$stats" >>"$JSONL"
  done
  rm -rf "$WORK"
  unset WALL
done

python3 - "$JSONL" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| dataset | --chunk-avg | objects/ du -sb MiB | repo du -sb MiB | object files | unique chunks | dedup ratio | compression ratio | total ratio | backup wall s (all versions) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    s = r["stats"]
    print(f"| {r['dataset']} | {r['chunk_avg']} | {r['objects_du_bytes']/2**20:.1f} | {r['repo_du_bytes']/2**20:.1f} | {r['object_files']} "
          f"| {s['unique_chunks']} | {s['dedup_ratio']:.2f} | {s['compression_ratio']:.2f} | {s['total_ratio']:.2f} | {r['backup_wall_s']:.1f} |")
PY
echo "results: $OUT" >&2
