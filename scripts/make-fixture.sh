#!/usr/bin/env bash
# Generates a stored format fixture tests/fixtures/repo-vN with the real binary.
#
# Run this ONCE per format version, then commit the result: the point of the fixture is that
# it is NOT regenerated, so a change to any on-disk format makes tests/format_fixture.rs fail.
# Only a deliberate new format version (with docs/FORMAT.md updated) should add a new
# fixture directory (repo-v2, ...) next to the old one, which must keep passing.
#
# Usage: scripts/make-fixture.sh [v1|v2] [path/to/tessera] [out-dir]
#
#   v2 (the default) is what the current binary writes: tree format version 2. Besides the
#      v1 contents it holds an empty directory and `big/`, a directory with enough entries
#      (> 32 KiB of tree) to get a tree chunk of its own, with an inline `big/nested/`; the
#      small directories (`sub/`, `empty-dir/`, `big/nested/`) are stored inline.
#   v1 is the original fixture. It can only be written by a tessera from before tree format
#      version 2 (commit 0fbaa5b or older), passed as path/to/tessera; the current binary
#      writes version 2 trees.
#
# It never overwrites an existing fixture directory.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
version=v2
if [[ ${1:-} == v[0-9]* ]]; then
    version=$1
    shift
fi
case $version in
    v1 | v2) ;;
    *)
        echo "unknown fixture version $version (expected v1 or v2)" >&2
        exit 2
        ;;
esac
bin=${1:-}
out=${2:-$here/tests/fixtures/repo-$version}
if [[ -e $out ]]; then
    echo "refusing to overwrite $out: the fixture is meant to be generated once" >&2
    exit 1
fi
if [[ -z $bin ]]; then
    if [[ $version == v1 ]]; then
        echo "a v1 fixture needs a tessera from before tree format version 2: pass its path" >&2
        exit 2
    fi
    (cd "$here" && cargo build --quiet --bin tessera)
    bin=${CARGO_TARGET_DIR:-$here/target}/debug/tessera
fi

# A fixed source path: the snapshot records absolute paths, and the test asserts them.
src_root=/tmp/tessera-fixture
rm -rf "$src_root"
data=$src_root/data
mkdir -p "$data/sub"

printf 'hello, tessera\n' > "$data/hello.txt"
cp "$data/hello.txt" "$data/copy-of-hello.txt"           # identical small file: shares one range
printf 'latin-1 name\n' > "$data/$(printf 'caf\xe9.txt')"   # non-UTF-8 name: {"hex": ...}
: > "$data/empty"                                           # empty file: no content slices
ln -s hello.txt "$data/link"                                # symlink
mkfifo "$data/pipe"                                         # fifo
printf 'linked\n' > "$data/hardlink-a"
ln "$data/hardlink-a" "$data/sub/hardlink-b"                # hard link pair: "links" field
# Compressible text above the average chunk size: large-file path, zstd-compressed chunks.
python3 - "$data/sub/lorem.txt" "$data/sub/random.bin" <<'PY'
import sys
text = "".join(f"line {i:04d}: the quick brown fox jumps over the lazy dog\n" for i in range(100))
open(sys.argv[1], "w").write(text)
# Incompressible bytes (xorshift64): stored raw.
x, out = 0x9E3779B97F4A7C15, bytearray()
for _ in range(1500):
    x ^= (x << 13) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 7
    x ^= (x << 17) & 0xFFFFFFFFFFFFFFFF
    out.append((x >> 24) & 0xFF)
open(sys.argv[2], "wb").write(bytes(out))
PY
python3 -c 'import os,sys; os.setxattr(sys.argv[1], "user.comment", b"fixture")' "$data/hello.txt"

if [[ $version != v1 ]]; then
    # Tree format 2: small directories go inline into their parent's tree, large ones get a
    # tree chunk of their own. `big/` holds 120 small files (about 37 KiB of tree), above the
    # 32 KiB inline limit; `big/nested/` and `empty-dir/` stay inline.
    mkdir -p "$data/empty-dir" "$data/big/nested"
    for i in $(seq -w 0 119); do
        printf 'big file %s\n' "$i" > "$data/big/file-$i.txt"
    done
    printf 'deep\n' > "$data/big/nested/deep.txt"
    chmod 0644 "$data"/big/file-*.txt "$data/big/nested/deep.txt"
    chmod 0700 "$data/empty-dir"
    chmod 0755 "$data/big" "$data/big/nested"
    export TZ=UTC
    touch -d '2024-01-02 03:04:05.123456789' "$data"/big/file-*.txt "$data/big/nested/deep.txt"
    touch -d '2024-01-02 03:04:06.5' "$data/big/nested"
    touch -d '2024-01-02 03:04:06' "$data/big" "$data/empty-dir"
fi

chmod 0644 "$data/hello.txt" "$data/copy-of-hello.txt" "$data/sub/lorem.txt"
chmod 0600 "$data/$(printf 'caf\xe9.txt')" "$data/sub/random.bin"
chmod 0640 "$data/empty" "$data/hardlink-a"
chmod 0620 "$data/pipe"
chmod 0750 "$data/sub"
chmod 0755 "$data" "$src_root"

# Fixed mtimes (with nanoseconds); directories last, deepest first.
export TZ=UTC
for f in hello.txt copy-of-hello.txt "$(printf 'caf\xe9.txt')" empty link pipe hardlink-a \
         sub/lorem.txt sub/random.bin; do
    touch -h -d '2024-01-02 03:04:05.123456789' "$data/$f"
done
touch -d '2024-01-02 03:04:06' "$data/sub"
touch -d '2024-01-02 03:04:07' "$data"
touch -d '2024-01-02 03:04:08' "$src_root"

# Small chunks (1 KiB average) keep the fixture tiny while still exercising both the
# small-file packing and the large-file chunking paths.
"$bin" --repo "$out" init --chunk-avg 1KiB
"$bin" --repo "$out" backup --quiet --host fixture-host --tag fixture "$data"

# Derived data and empty directories are not part of the fixture: the index is rebuilt from
# the store, and git keeps no empty directories anyway (the test recreates them).
rm -rf "$out/index" "$out/objects/tmp"
find "$out/objects" -mindepth 1 -type d -empty -delete
rm -rf "$src_root"
echo "fixture written to $out"
find "$out" -type f | sort
