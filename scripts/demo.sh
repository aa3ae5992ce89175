#!/usr/bin/env bash
# The main job, end to end on the embedded (local directory) repository with default settings:
# build the release binary, generate a sample directory, back it up, change it, back it up
# again (incremental), restore, compare with diff, verify and print the statistics.
#
# Usage: scripts/demo.sh [work-dir]      (default: a fresh temp dir, removed on success)
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> building the release binary"
cargo build --release --quiet --bin tessera
bin=${CARGO_TARGET_DIR:-$PWD/target}/release/tessera

work=${1:-$(mktemp -d "${TMPDIR:-/tmp}/tessera-demo.XXXXXX")}
mkdir -p "$work"
src=$work/sample repo=$work/repo out=$work/restored
rm -rf "$src" "$repo" "$out"
export TESSERA_REPO=$repo

echo "==> generating a sample directory in $src"
mkdir -p "$src/docs" "$src/code/src" "$src/media" "$src/empty-dir"
# Many small text files (packed into shared chunks), some of them identical.
for i in $(seq 1 400); do
    printf 'file %d\n%s\n' "$i" "$(seq "$i" $((i + 40)) | tr '\n' ' ')" > "$src/code/src/mod$i.rs"
done
for i in $(seq 1 20); do cp "$src/code/src/mod1.rs" "$src/code/src/copy$i.rs"; done
seq 1 200000 > "$src/docs/numbers.txt"                      # compressible, ~1.2 MiB
head -c $((8 << 20)) /dev/urandom > "$src/media/random.bin"  # incompressible, 8 MiB
cp "$src/media/random.bin" "$src/media/random-copy.bin"      # whole-file duplicate
truncate -s 64M "$src/media/sparse.img"                      # sparse: a hole with some data
printf 'header' | dd of="$src/media/sparse.img" conv=notrunc status=none
: > "$src/docs/empty.txt"
ln -s ../docs/numbers.txt "$src/code/numbers-link"
ln "$src/docs/numbers.txt" "$src/docs/numbers-hardlink.txt"
printf 'non-UTF-8 name\n' > "$src/docs/$(printf 'caf\xe9.txt')"
chmod 0600 "$src/docs/empty.txt"
du -sh --apparent-size "$src" | sed 's/^/    apparent size: /'

echo "==> tessera init"
"$bin" init
echo "==> tessera backup (first)"
"$bin" backup --quiet --tag demo "$src"

echo "==> changing a few files, then tessera backup (incremental)"
echo "one more line" >> "$src/docs/numbers.txt"
printf 'changed\n' > "$src/code/src/mod7.rs"
head -c $((1 << 20)) /dev/urandom > "$src/media/new.bin"
"$bin" backup --quiet --tag demo "$src"
"$bin" snapshots

echo "==> tessera restore latest"
"$bin" restore latest --target "$out"
restored=$out/${src#/}

echo "==> comparing the restored tree with the source"
diff -r --no-dereference "$src" "$restored"
for f in docs/numbers.txt media/sparse.img docs/empty.txt; do
    [[ $(stat -c '%a %s %Y' "$src/$f") == $(stat -c '%a %s %Y' "$restored/$f") ]] ||
        { echo "metadata differs for $f" >&2; exit 1; }
done
[[ $(stat -c %i "$restored/docs/numbers.txt") == $(stat -c %i "$restored/docs/numbers-hardlink.txt") ]] ||
    { echo "hard link not restored" >&2; exit 1; }
echo "    identical (contents, symlinks, modes, mtimes, hard links)"
echo "    sparse.img (64 MiB apparent) on disk: $(du -k "$src/media/sparse.img" | cut -f1) KiB in the source," \
     "$(du -k "$restored/media/sparse.img" | cut -f1) KiB restored"

echo "==> tessera check --read-data"
"$bin" check --read-data
echo "==> tessera stats"
"$bin" stats

if [[ -z ${1:-} ]]; then
    rm -rf "$work"
else
    echo "==> left the sample, repository and restore in $work"
fi
echo "demo OK"
