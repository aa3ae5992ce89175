#!/usr/bin/env bash
# Whole-root-filesystem round trip: backs up / with tessera, verifies the repository, restores
# the snapshot into a scratch directory and proves the restore is (1) identical and (2) usable.
#
#   sudo scripts/rootfs-roundtrip.sh [WORK]        # WORK defaults to /var/tmp/rootfs-roundtrip
#
# What it proves:
#   * backup: `tessera backup / --one-file-system` completes (exit 0, or 3 = some files were
#     unreadable; those are listed) -- wall time and peak RSS from /usr/bin/time -v;
#   * `tessera check --read-data`: every stored chunk re-hashes to its id;
#   * identical: scripts/compare_trees.py walks the live root and WORK/restore side by side and
#     compares type, mode bits, owner, ns mtimes (dirs and symlinks too), content hashes,
#     symlink targets, device numbers, all xattrs (file capabilities, ACLs), hard-link
#     structure and sparseness. Entries that changed on the live system after the backup
#     started (ctime/mtime >= its start) are listed as "changed during backup", not failures;
#   * usable: the same small commands (sh, id, ls, python3 ssl/sqlite3, dpkg, apt-cache,
#     getcap -r /usr) run with chroot in the live root and in the restored root must succeed
#     and print the same thing; the mount-point directories of the live root (/proc, /sys,
#     /dev, ...), which a booting system mounts onto, must exist in the restore; swap files
#     in use must be restored without holes.
# Besides EXCLUDES and WORK, other filesystems are left out by --one-file-system alone (their
# mount points come back as empty directories; see "Mount points" below).
#
# The chroot checks run after the comparison: running programs may write into the restored
# tree (caches), which is kept afterwards. For them /proc (bind) and, if the restore has
# no /dev/null, a private /dev (tmpfs) are mounted inside WORK and unmounted on any exit;
# only a kill -9 can leave them: check `findmnt | grep WORK` before removing WORK then.
#
# Reading the output: each step prints a "== step" header; the final "== summary" block
# has sizes, times, the compare_trees.py summary line and one PASS/FAIL/SKIP line per usability
# check. Full logs stay in WORK (backup.err, compare.txt, usability.txt, *.time); WORK is
# kept for inspection and the last line says how to remove it. Exit status 0 only if the
# check, the restore, the comparison and every usability check passed.
#
# Environment:
#   EXCLUDES     space-separated absolute directories (inside ROOT) whose contents are not
#                backed up or compared (the directories themselves are, and come back
#                empty), default "/tmp /var/tmp /work /mnt". Literal paths, not globs. WORK
#                is always excluded too.
#   TESSERA_BIN  the binary, default <this repository>/target/release/tessera
#   ROOT         the tree to back up, default /. For testing on a small fake root; the chroot
#                checks are skipped (and say so) when ROOT has no /bin/sh.
set -euo pipefail

die() { echo "rootfs-roundtrip: $*" >&2; exit 2; }

[[ $EUID -eq 0 ]] || die "must run as root (reads every file, restores owners and device nodes, chroots)"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=${TESSERA_BIN:-$(dirname "$here")/target/release/tessera}
COMPARE=$here/compare_trees.py
WORK=$(realpath -m "${1:-/var/tmp/rootfs-roundtrip}")
ROOT=$(realpath -e "${ROOT:-/}")
EXCLUDES=${EXCLUDES:-/tmp /var/tmp /work /mnt}

[[ -x $BIN ]] || die "no tessera binary at $BIN (cargo build --release, or set TESSERA_BIN)"
[[ -f $COMPARE ]] || die "missing $COMPARE"
command -v python3 >/dev/null || die "python3 is needed for compare_trees.py"
[[ -x /usr/bin/time ]] || die "/usr/bin/time is needed (apt-get install time)"
if [[ -e $WORK ]] && [[ -n $(ls -A "$WORK") ]]; then
    die "$WORK exists and is not empty; remove it or pass another WORK"
fi
[[ $WORK != "$ROOT" ]] || die "WORK must not be ROOT"
case $ROOT/ in "$WORK"/*) die "ROOT must not lie inside WORK" ;; esac

# The paths become --exclude globs (prefixed with ROOT) and compare_trees.py excludes
# (relative to ROOT); a glob character would make the two disagree.
glob_chars='[][*?{}]'
for p in "$WORK" "$ROOT" $EXCLUDES; do
    [[ ! $p =~ $glob_chars ]] || die "path with a glob character not supported: $p"
done

# "under ROOT" helpers: ROOT=/ gives "", so "$ROOT_PREFIX/var/tmp" is always right.
ROOT_PREFIX=${ROOT%/}
REPO=$WORK/repo
RESTORE=$WORK/restore
# Where ROOT lands in the restore: the snapshot keeps absolute paths.
RESTORED_ROOT=$RESTORE$ROOT_PREFIX
backup_excludes=()
compare_excludes=()
# An excluded directory itself is kept (`DIR/*`): a restored root needs its /tmp (1777).
for p in $EXCLUDES; do
    p=/${p#/}
    p=${p%/}
    backup_excludes+=(--exclude "$ROOT_PREFIX$p/*")
    compare_excludes+=(--exclude-contents "${p#/}")
done
case $WORK/ in
    "$ROOT_PREFIX"/*)
        backup_excludes+=(--exclude "$WORK")
        compare_excludes+=(--exclude "${WORK#"$ROOT_PREFIX"/}")
        ;;
esac

# Whether $1 (a path inside ROOT, with a leading /) is WORK or one of EXCLUDES, or below one.
is_excluded() {
    local p
    for p in $EXCLUDES "${WORK#"$ROOT_PREFIX"}"; do
        p=/${p#/}
        case $1/ in "${p%/}"/*) return 0 ;; esac
    done
    return 1
}

# Mount points: directories directly on ROOT's filesystem that hold another filesystem
# (/proc, /sys, /dev, /boot/efi below an on-root /boot, ...); nested ones (/dev/pts) are
# below them anyway. --one-file-system alone keeps them out (nothing is excluded for them:
# this run tests it; reading /proc/kcore or /sys/kernel/tracing/trace_pipe would show), and
# keeps each as an empty directory, which a booting system mounts onto; the usability
# checks below verify they are in the restore.
root_dev=$(stat -c %d "$ROOT")
mount_points=()  # relative to ROOT, with a leading /
while read -r target; do
    target=$(printf '%b' "$target")  # findmnt -r writes a space as \x20
    case $target in "$ROOT_PREFIX"/?*) ;; *) continue ;; esac
    [[ -d $target && ! -L $target ]] || continue  # a bind-mounted file is backed up as a file
    [[ $(stat -c %d "$target") != "$root_dev" ]] || continue
    [[ $(stat -c %d "$(dirname "$target")") == "$root_dev" ]] || continue
    rel=${target#"$ROOT_PREFIX"}
    ! is_excluded "$rel" || continue
    [[ ! $target =~ $glob_chars ]] || die "mount point with a glob character not supported: $target"
    mount_points+=("$rel")
done < <(findmnt -rn -o TARGET | sort -u)

# Everything mounted for the chroot checks is undone on any exit (error, Ctrl-C, kill).
mounted=()
created_dirs=()
cleanup() {
    local i
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
        umount "${mounted[i]}" 2>/dev/null || umount -l "${mounted[i]}" ||
            echo "rootfs-roundtrip: WARNING: could not unmount ${mounted[i]}" >&2
    done
    mounted=()
    # Directories made only to mount onto go again, and their parent gets its restored mtime
    # back (saved on a reference file), so the kept restore looks as tessera left it.
    for ((i = ${#created_dirs[@]} - 1; i >= 0; i--)); do
        rmdir "${created_dirs[i]}" 2>/dev/null || true
        touch -r "$WORK/parent-times.$i" "$(dirname "${created_dirs[i]}")" 2>/dev/null || true
    done
    created_dirs=()
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Makes directory $1 (to mount onto) if missing; cleanup removes it again and resets the
# parent's mtime from a reference file.
make_dir() {
    [[ ! -d $1 ]] || return 0
    touch -r "$(dirname "$1")" "$WORK/parent-times.${#created_dirs[@]}"
    created_dirs+=("$1")
    mkdir "$1"
}

# "Elapsed (wall clock) time" and "Maximum resident set size" from a /usr/bin/time -v log.
time_summary() {
    awk -F': ' '/Elapsed \(wall clock\)/ { wall = $2 }
                /Maximum resident set size/ { rss = $2 }
                END { printf "wall %s, peak RSS %.0f MiB", wall, rss / 1024 }' "$1"
}

mkdir -p "$WORK"
echo "== setup: ROOT=$ROOT WORK=$WORK BIN=$BIN"
echo "   excluded: WORK; the contents of $EXCLUDES; other filesystems (-x), mounted at: ${mount_points[*]:-none}"
echo "   backup args: ${backup_excludes[*]}"
"$BIN" -q --repo "$REPO" init >"$WORK/init.out"
cat "$WORK/init.out"

echo "== backup"
# Taken before the backup starts: anything with a newer ctime/mtime changed under it.
START_NS=$(date +%s%N)
set +e
/usr/bin/time -v -o "$WORK/backup.time" \
    "$BIN" -q --repo "$REPO" backup "$ROOT" --one-file-system --json "${backup_excludes[@]}" \
    >"$WORK/backup.json" 2>"$WORK/backup.err"
backup_rc=$?
set -e
case $backup_rc in
    0) ;;
    3)
        echo "backup: exit 3, snapshot written but some files could not be read:" >&2
        grep '^warning: ' "$WORK/backup.err" >&2 || cat "$WORK/backup.err" >&2
        ;;
    *)
        cat "$WORK/backup.err" >&2
        die "backup failed with exit $backup_rc"
        ;;
esac
summary=$(python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
print(j["snapshot"], j["summary"]["files"], j["summary"]["total_bytes"])' "$WORK/backup.json")
read -r SNAPSHOT FILES LOGICAL_BYTES <<<"$summary"
BACKUP_TIME=$(time_summary "$WORK/backup.time")
echo "snapshot ${SNAPSHOT:0:12}: $FILES files, $LOGICAL_BYTES bytes; $BACKUP_TIME"

echo "== check --read-data"
set +e
/usr/bin/time -v -o "$WORK/check.time" "$BIN" -q --repo "$REPO" check --read-data >"$WORK/check.out" 2>&1
check_rc=$?
set -e
cat "$WORK/check.out"
CHECK_TIME=$(time_summary "$WORK/check.time")

echo "== restore latest -> $RESTORE"
set +e
/usr/bin/time -v -o "$WORK/restore.time" "$BIN" -q --repo "$REPO" restore latest --target "$RESTORE" \
    >"$WORK/restore.out" 2>"$WORK/restore.err"
restore_rc=$?
set -e
# Per-file errors (metadata that could not be set, ...) are on stderr, one line each.
head -n 50 "$WORK/restore.err"
RESTORE_TIME=$(time_summary "$WORK/restore.time")
[[ -d $RESTORED_ROOT ]] || die "restore produced no $RESTORED_ROOT"

echo "== compare $ROOT with $RESTORED_ROOT"
set +e
/usr/bin/time -v -o "$WORK/compare.time" python3 "$COMPARE" "$ROOT" "$RESTORED_ROOT" \
    --since "$START_NS" "${compare_excludes[@]}" >"$WORK/compare.txt"
compare_rc=$?
set -e
head -n 60 "$WORK/compare.txt"
(($(wc -l <"$WORK/compare.txt") <= 60)) || echo "... (all of it in $WORK/compare.txt)"
[[ $compare_rc -le 1 ]] || die "compare_trees.py failed (exit $compare_rc)"
COMPARE_LINE=$(head -n 1 "$WORK/compare.txt")
COMPARE_TIME=$(time_summary "$WORK/compare.time")

echo "== usability"
results=()  # "PASS|FAIL|SKIP  name: detail"
usable_failed=0
result() {
    results+=("$(printf '%-4s  %s' "$1" "$2")")
    echo "$1  $2"
    [[ $1 != FAIL ]] || usable_failed=1
}

# The mount-point directories (found before the backup) must be there for a system to boot.
missing_mounts=()
for rel in "${mount_points[@]}"; do
    [[ -d $RESTORED_ROOT$rel ]] || missing_mounts+=("$rel")
done
if ((${#missing_mounts[@]} == 0)); then
    result PASS "mount-point dirs: all ${#mount_points[@]} present in the restore${mount_points[*]:+ (${mount_points[*]})}"
else
    result FAIL "mount-point dirs: ${#missing_mounts[@]} of ${#mount_points[@]} missing in the restore: ${missing_mounts[*]}"
fi

# Swap files in use must be fully allocated in the restore too: swapon refuses a file with
# holes (a restore leaves all-zero blocks as holes only in files that were sparse).
# /proc/swaps: name type size ...
bad_swaps=()
nswaps=0
while read -r name type _; do
    [[ $type == file ]] || continue
    case $name in "$ROOT_PREFIX"/?*) ;; *) continue ;; esac
    rel=${name#"$ROOT_PREFIX"}
    ! is_excluded "$rel" || continue
    nswaps=$((nswaps + 1))
    read -r blocks block_size size < <(stat -c '%b %B %s' "$RESTORED_ROOT$rel" 2>/dev/null || echo "0 1 1")
    ((blocks * block_size >= size)) || bad_swaps+=("$rel")
done < <(tail -n +2 /proc/swaps)
if ((nswaps == 0)); then
    result SKIP "swap files: none in use below $ROOT"
elif ((${#bad_swaps[@]} == 0)); then
    result PASS "swap files: all $nswaps fully allocated in the restore"
else
    result FAIL "swap files with holes (or missing) in the restore, swapon would refuse them: ${bad_swaps[*]}"
fi

# Runs CMD with sh -c inside chroot DIR, with a clean environment (the caller's PATH may
# name things like ~/.pyenv that are not what the system itself uses).
in_chroot() {
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C \
        chroot "$1" /bin/sh -c "$2"
}

# The same command in the live root and in the restored one: both must succeed and agree.
# Command output is logged to usability.txt.
both() {
    local name=$1 cmd=$2 live rest live_rc=0 rest_rc=0
    live=$(in_chroot "$ROOT" "$cmd" 2>&1) || live_rc=$?
    rest=$(in_chroot "$RESTORED_ROOT" "$cmd" 2>&1) || rest_rc=$?
    printf '### %s: %s\n--- live (exit %d)\n%s\n--- restored (exit %d)\n%s\n' \
        "$name" "$cmd" "$live_rc" "$live" "$rest_rc" "$rest" >>"$WORK/usability.txt"
    local first=${rest%%$'\n'*} live_first=${live%%$'\n'*}
    if ((live_rc != 0)); then
        # Proves nothing about the restore either way, but is shown.
        result SKIP "$name: fails in the live root itself (exit $live_rc): ${live_first:0:100}"
    elif ((rest_rc != 0)); then
        result FAIL "$name: exit $rest_rc in the restore: ${first:0:120}"
    elif [[ $live != "$rest" ]]; then
        result FAIL "$name: output differs from the live root (see usability.txt)"
    else
        result PASS "$name: ${first:0:120}"
    fi
}

# Whether a command exists in both roots (the checks below are conditional on the system).
has() { [[ -x $ROOT_PREFIX$1 || -L $ROOT_PREFIX$1 ]] && [[ -x $RESTORED_ROOT$1 || -L $RESTORED_ROOT$1 ]]; }

: >"$WORK/usability.txt"
if [[ ! -x $RESTORED_ROOT/bin/sh ]] && [[ $ROOT != / ]]; then
    result SKIP "chroot checks: ROOT=$ROOT has no /bin/sh (a fake root); nothing to run"
elif [[ ! -x $RESTORED_ROOT/bin/sh ]]; then
    result FAIL "chroot checks: the restored root has no executable /bin/sh"
else
    # Programs need /proc and /dev/null & co., as in any chroot; the restored tree may not
    # even have the directories (see the mount-point check). /dev is a private tmpfs with
    # the basic nodes, not a bind of the live /dev: an `rm -rf WORK` while it was still
    # mounted would otherwise delete the live system's device nodes. The EXIT trap undoes all.
    make_dir "$RESTORED_ROOT/proc"
    mount --bind /proc "$RESTORED_ROOT/proc"
    mounted+=("$RESTORED_ROOT/proc")
    if [[ ! -c $RESTORED_ROOT/dev/null ]]; then
        make_dir "$RESTORED_ROOT/dev"
        mount -t tmpfs -o mode=0755,size=64k rootfs-roundtrip-dev "$RESTORED_ROOT/dev"
        mounted+=("$RESTORED_ROOT/dev")
        while read -r name minor; do
            mknod -m 0666 "$RESTORED_ROOT/dev/$name" c 1 "$minor"
        done <<<$'null 3\nzero 5\nfull 7\nrandom 8\nurandom 9'
    fi

    both "sh" "echo ok"
    both "id root" "id root"
    both "ls /usr/bin" "ls /usr/bin | wc -l"
    if has /usr/bin/python3; then
        both "python3 ssl+sqlite3" 'python3 -c "import ssl, sqlite3; print(ssl.OPENSSL_VERSION, sqlite3.sqlite_version)"'
    else
        result SKIP "python3 ssl+sqlite3: no /usr/bin/python3"
    fi
    if has /usr/bin/dpkg; then
        both "dpkg -l" "dpkg -l | wc -l"
    else
        result SKIP "dpkg -l: no /usr/bin/dpkg"
    fi
    if has /usr/bin/apt-cache; then
        # The whole output, not a count: it reads the package lists and dpkg status.
        both "apt-cache policy" "apt-cache policy"
    else
        result SKIP "apt-cache policy: no /usr/bin/apt-cache"
    fi
    if has /usr/sbin/getcap || has /sbin/getcap; then
        # File capabilities are xattrs; getcap reads them through libcap as the system does.
        both "getcap -r /usr" "getcap -r /usr | sort"
    else
        result SKIP "getcap -r /usr: no getcap"
    fi
    cleanup
fi

REPO_BYTES=$(du -sb "$REPO" | cut -f1)
failed=0
echo
echo "== summary"
echo "snapshot:         $SNAPSHOT (backup exit $backup_rc)"
echo "backed up:        $FILES files, $LOGICAL_BYTES logical bytes ($(numfmt --to=iec "$LOGICAL_BYTES")B)"
echo "repository:       $REPO_BYTES bytes on disk ($(numfmt --to=iec "$REPO_BYTES")B), du -sb $REPO"
echo "backup:           $BACKUP_TIME"
echo "check:            $CHECK_TIME, exit $check_rc$( ((check_rc == 0)) || echo ' FAIL')"
echo "restore:          $RESTORE_TIME, exit $restore_rc$( ((restore_rc == 0)) || echo ' FAIL (errors in restore.err)')"
echo "compare:          $COMPARE_TIME"
echo "  $COMPARE_LINE"
echo "usability:"
printf '  %s\n' "${results[@]}"
((check_rc == 0)) || failed=1
((restore_rc == 0)) || failed=1
((compare_rc == 0)) || failed=1
((usable_failed == 0)) || failed=1
if ((failed)); then
    echo "RESULT: FAIL (details: $WORK/compare.txt, $WORK/usability.txt, $WORK/restore.err)"
else
    echo "RESULT: PASS"
fi
echo "WORK kept for inspection; remove it with: rm -rf -- '$WORK'"
exit "$failed"
