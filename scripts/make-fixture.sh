#!/usr/bin/env bash
# Regenerates the stored format fixture tests/fixtures/repo-v1 with the real binary.
#
# Run this ONCE per format version, then commit the result: the point of the fixture is that
# it is NOT regenerated, so a change to any on-disk format makes tests/format_fixture.rs fail.
# Only a deliberate new format version (with docs/FORMAT.md updated) should add a new
# fixture directory (repo-v2, ...) next to the old one, which must keep passing.
#
# Usage: scripts/make-fixture.sh [path/to/tessera] [out-dir]
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-}
out=${2:-$here/tests/fixtures/repo-v1}
if [[ -z $bin ]]; then
    (cd "$here" && cargo build --quiet --bin tessera)
    bin=${CARGO_TARGET_DIR:-$here/target}/debug/tessera
fi
if [[ -e $out ]]; then
    echo "refusing to overwrite $out: the fixture is meant to be generated once" >&2
    exit 1
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
