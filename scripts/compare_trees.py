#!/usr/bin/env python3
"""Compare two directory trees entry by entry: SRC (the original) and DST (a restore of it).

Usage: compare_trees.py SRC DST [--since EPOCH_NS] [--exclude REL]... [--exclude-contents REL]...
                         [--max-lines N] [--jobs N]

Checked for every entry, on both sides, with lstat (symlinks are never followed):
  presence (MISSING: in SRC only, EXTRA: in DST only), file type (TYPE), permission bits
  incl. setuid/setgid/sticky (MODE), uid/gid (OWNER), mtime in nanoseconds for every type
  incl. directories and symlinks (MTIME), size and SHA-256 of regular files (SIZE, CONTENT),
  symlink targets as bytes (SYMLINK), st_rdev of char/block devices (RDEV), every xattr name
  and value, security.* and system.* (ACLs) included (XATTR), hard-link structure within
  the tree in both directions (HARDLINK), and sparseness: a file that is sparse in SRC
  (st_blocks*512 < st_size) must not use more than SRC's blocks + 8 in DST (SPARSE).
  ctime and atime cannot be restored and are not compared. I/O errors are reported as ERROR.

Not compared, and listed on `#` lines after the summary instead:
  * directories on another filesystem than SRC (or DST) itself -- mount points -- are not
    entered on either side; a backup taken with --one-file-system does not contain them;
  * sockets, which a backup cannot restore meaningfully;
  * --exclude REL paths (relative to SRC/DST, e.g. `var/tmp`) and everything below them;
    --exclude-contents REL: everything below REL, while REL itself is compared.
A file fully allocated in SRC with holes in DST is a difference too (HOLES): same content,
but a swap file, for one, would no longer work.

--since EPOCH_NS (e.g. `date +%s%N` taken before the backup started): an SRC entry whose
ctime or mtime is >= EPOCH_NS changed while (or after) the backup ran, so a difference in it
proves nothing. Such entries, and entries missing or extra in a directory that changed, are
listed separately as "changed during backup" and do not count as differences. (An mtime
later than the comparison's own start is a file dated in the future, not a change: such
entries are still compared.)

Output: one summary line (entries compared, bytes hashed per side, differences, entries
changed during backup), `#` information lines, then up to --max-lines (200) lines
`KIND path: detail`, then up to as many `CHANGED path: KIND detail; ...` lines. Paths are
relative to SRC/DST, with bytes that are not UTF-8 shown as \\xNN. Exit status: 0 no
differences, 1 differences, 2 usage error.

Paths are handled as bytes throughout, so names that are not valid UTF-8 work. Files of
256 KiB and more are hashed in a thread pool (--jobs, default 2: both sides of a file at
once, while the walk goes on; reading and SHA-256 release the GIL); smaller ones in the
walking thread, where that is cheaper. Python 3 standard library only.
"""

import argparse
import collections
import errno
import hashlib
import io
import os
import signal
import stat
import sys
import time
from concurrent.futures import ThreadPoolExecutor

BLOCK = 1 << 20  # read size for hashing: large enough to keep syscall overhead negligible
SPARSE_SLACK_BLOCKS = 8  # 512-byte blocks a restored sparse file may use beyond the original
SMALL_FILE = 256 << 10  # files below this are hashed in the walking thread
MAX_PENDING = 64  # files being hashed at once: bounds memory while keeping the pool busy


def show(rel):
    """A relative path (bytes) for printing; undecodable bytes shown as \\xNN."""
    return rel.decode("utf-8", "backslashreplace") if rel else "."


def join(base, rel):
    return os.path.join(base, rel) if rel else base


def kind_name(mode):
    for test, name in (
        (stat.S_ISREG, "file"),
        (stat.S_ISDIR, "dir"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISCHR, "chardev"),
        (stat.S_ISBLK, "blockdev"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "unknown(%o)" % stat.S_IFMT(mode)


def lstat_or_none(path):
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def xattrs(path):
    """All xattrs of `path` itself (not a symlink's target) as {name: value}."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    out = {}
    for name in names:
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as e:
            if e.errno != errno.ENODATA:  # removed between list and get
                raise
    return out


def file_hash(path, size):
    """SHA-256 of a file's content (SHA-NI makes it faster than BLAKE2 in CPython)."""
    try:
        # O_NOATIME: hashing ~everything twice should not rewrite every inode's atime.
        fd = os.open(path, os.O_RDONLY | os.O_NOATIME | os.O_NOFOLLOW)
    except PermissionError:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    h = hashlib.sha256()
    with io.FileIO(fd, "rb") as f:
        # Sized to the file: zeroing a 1 MiB buffer per small file would dominate the time.
        buf = bytearray(min(max(size, 4096), BLOCK))
        view = memoryview(buf)
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest()


class Done:
    """A computation run on the spot, with the interface of a Future (result() re-raises)."""

    def __init__(self, fn, *args):
        try:
            self.value, self.error = fn(*args), None
        except OSError as e:
            self.value, self.error = None, e

    def result(self):
        if self.error is not None:
            raise self.error
        return self.value


def fmt_ns(ns):
    return "%s.%09d" % (time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ns // 10**9)), ns % 10**9)


class Comparison:
    def __init__(self, src, dst, since, excludes, exclude_contents, jobs):
        self.src, self.dst, self.since = src, dst, since
        self.started_ns = time.time_ns()
        self.excludes, self.exclude_contents = excludes, exclude_contents
        self.pool = ThreadPoolExecutor(max_workers=max(1, jobs))
        self.pending = collections.deque()  # (rel, changed, SRC lstat, SRC hash, DST hash)
        self.entries = 0
        self.bytes_hashed = 0
        self.diffs = []  # (kind, rel, detail)
        self.changed = {}  # rel -> [(kind, detail)]; insertion order = walk order
        self.mounts = []  # (rel, note)
        self.sockets = 0
        # Hard links: inode -> [(rel, inode on the other side)], per side; only entries with
        # st_nlink > 1 on either side, which is all that can take part in a link group.
        self.links_src = collections.defaultdict(list)
        self.links_dst = collections.defaultdict(list)
        self.changed_total = 0  # SRC entries changed since --since, differing or not

    def is_changed(self, st):
        # ctime catches every change (a touch -d too); an mtime in [since, now] is a change as
        # well, but a future mtime is just a file dated ahead, so it is still verified.
        return self.since is not None and st is not None and (
            st.st_ctime_ns >= self.since or self.since <= st.st_mtime_ns <= self.started_ns
        )

    def report(self, kind, rel, detail, changed):
        if changed:
            self.changed.setdefault(rel, []).append((kind, detail))
        else:
            self.diffs.append((kind, rel, detail))

    # -- the walk ---------------------------------------------------------------------------

    def run(self):
        s, d = os.lstat(self.src), os.lstat(self.dst)
        if not (stat.S_ISDIR(s.st_mode) and stat.S_ISDIR(d.st_mode)):
            sys.exit("compare_trees: SRC and DST must both be directories")
        self.src_dev, self.dst_dev = s.st_dev, d.st_dev
        # SRC and DST themselves are not compared: a restore target is the user's directory,
        # whose metadata a restore leaves alone (tessera, restic and borg alike).
        # Iterative depth-first walk: no recursion limit on deep trees.
        stack = [(b"", self.is_changed(s))]
        while stack:
            rel, dir_changed = stack.pop()
            subdirs = self.compare_dir(rel, dir_changed)
            stack.extend(reversed(subdirs))
        self.drain(0)
        self.pool.shutdown()
        self.check_links()

    def listdir(self, root, rel, changed):
        try:
            return set(os.listdir(join(root, rel)))
        except OSError as e:
            self.report("ERROR", rel, "cannot list %s: %s" % (root.decode(errors="replace"), e), changed)
            return set()

    def compare_dir(self, rel, dir_changed):
        """Compares the entries of directory `rel`; returns the subdirectories to enter."""
        names = self.listdir(self.src, rel, dir_changed) | self.listdir(self.dst, rel, dir_changed)
        subdirs = []
        for name in sorted(names):
            crel = os.path.join(rel, name) if rel else name
            if crel in self.excludes:
                continue
            try:
                s = lstat_or_none(join(self.src, crel))
                d = lstat_or_none(join(self.dst, crel))
            except OSError as e:
                self.report("ERROR", crel, "lstat: %s" % e, dir_changed)
                continue
            if self.is_mount(crel, s, d):
                continue
            if s is not None and stat.S_ISSOCK(s.st_mode):
                # Sockets are not backed up; one in DST as well would be the odd thing.
                self.sockets += 1
                if d is not None:
                    self.report("EXTRA", crel, "a socket in SRC; DST has a %s" % kind_name(d.st_mode), dir_changed)
                continue
            # A directory that changed during the backup may have gained or lost entries.
            changed = dir_changed or self.is_changed(s)
            if s is None:
                self.changed_total += dir_changed
                self.report("EXTRA", crel, "in DST only (%s)" % kind_name(d.st_mode), dir_changed)
                continue
            if d is None:
                self.changed_total += changed
                self.report("MISSING", crel, "in SRC only (%s)" % kind_name(s.st_mode), changed)
                continue
            self.compare_entry(crel, s, d)
            if stat.S_ISDIR(s.st_mode) and stat.S_ISDIR(d.st_mode) and crel not in self.exclude_contents:
                subdirs.append((crel, self.is_changed(s)))
        return subdirs

    def is_mount(self, rel, s, d):
        """True for a directory on another filesystem on either side: not entered."""
        s_mount = s is not None and stat.S_ISDIR(s.st_mode) and s.st_dev != self.src_dev
        d_mount = d is not None and stat.S_ISDIR(d.st_mode) and d.st_dev != self.dst_dev
        if not (s_mount or d_mount):
            return False
        if s_mount:
            note = "present in DST" if d is not None else "absent in DST"
        else:
            note = "a mount point in DST only"
        self.mounts.append((rel, note))
        return True

    # -- one entry --------------------------------------------------------------------------

    def compare_entry(self, rel, s, d):
        self.entries += 1
        changed = self.is_changed(s)
        self.changed_total += changed
        if s.st_nlink > 1 or d.st_nlink > 1:
            if not stat.S_ISDIR(s.st_mode):
                self.links_src[s.st_ino].append((rel, d.st_ino))
            if not stat.S_ISDIR(d.st_mode):
                self.links_dst[d.st_ino].append((rel, s.st_ino))
        sk, dk = kind_name(s.st_mode), kind_name(d.st_mode)
        if sk != dk:
            self.report("TYPE", rel, "%s in SRC, %s in DST" % (sk, dk), changed)
            return
        if stat.S_IMODE(s.st_mode) != stat.S_IMODE(d.st_mode):
            self.report("MODE", rel, "%04o in SRC, %04o in DST" % (stat.S_IMODE(s.st_mode), stat.S_IMODE(d.st_mode)), changed)
        if (s.st_uid, s.st_gid) != (d.st_uid, d.st_gid):
            self.report("OWNER", rel, "%d:%d in SRC, %d:%d in DST" % (s.st_uid, s.st_gid, d.st_uid, d.st_gid), changed)
        if s.st_mtime_ns != d.st_mtime_ns:
            self.report("MTIME", rel, "%s in SRC, %s in DST" % (fmt_ns(s.st_mtime_ns), fmt_ns(d.st_mtime_ns)), changed)
        sp, dp = join(self.src, rel), join(self.dst, rel)
        try:
            self.compare_xattrs(rel, xattrs(sp), xattrs(dp), changed)
            if sk == "symlink":
                st, dt = os.readlink(sp), os.readlink(dp)
                if st != dt:
                    self.report("SYMLINK", rel, "%r in SRC, %r in DST" % (st, dt), changed)
            elif sk in ("chardev", "blockdev") and s.st_rdev != d.st_rdev:
                self.report("RDEV", rel, "%d:%d in SRC, %d:%d in DST" % (
                    os.major(s.st_rdev), os.minor(s.st_rdev), os.major(d.st_rdev), os.minor(d.st_rdev)), changed)
        except OSError as e:
            self.report("ERROR", rel, str(e), changed or self.src_changed(rel, s))
        if sk == "file":
            self.compare_file(rel, s, d, changed)

    def compare_xattrs(self, rel, sx, dx, changed):
        for name in sorted(set(sx) | set(dx)):
            if name not in dx:
                self.report("XATTR", rel, "%s missing in DST" % name, changed)
            elif name not in sx:
                self.report("XATTR", rel, "%s only in DST" % name, changed)
            elif sx[name] != dx[name]:
                self.report("XATTR", rel, "%s differs: %r in SRC, %r in DST" % (name, sx[name][:64], dx[name][:64]), changed)

    def compare_file(self, rel, s, d, changed):
        if s.st_size != d.st_size:
            self.report("SIZE", rel, "%d in SRC, %d in DST" % (s.st_size, d.st_size), changed)
            return
        if s.st_blocks * 512 < s.st_size and d.st_blocks > s.st_blocks + SPARSE_SLACK_BLOCKS:
            self.report("SPARSE", rel, "sparse in SRC (%d blocks for %d bytes), %d blocks in DST" % (
                s.st_blocks, s.st_size, d.st_blocks), changed)
        elif s.st_blocks * 512 >= s.st_size and d.st_blocks + SPARSE_SLACK_BLOCKS < s.st_blocks:
            # Same content, fewer blocks: zero blocks became holes. A file that must be fully
            # allocated (a swap file) would no longer work.
            self.report("HOLES", rel, "fully allocated in SRC (%d blocks), %d blocks in DST" % (
                s.st_blocks, d.st_blocks), changed)
        if s.st_size == 0:
            return
        self.bytes_hashed += s.st_size
        sp, dp = join(self.src, rel), join(self.dst, rel)
        if s.st_size < SMALL_FILE:
            # Handing a small file to a thread costs more than hashing it, and the GIL
            # hand-offs slow the walk down (measured: 2x on /usr/share).
            self.pending.append((rel, changed, s, Done(file_hash, sp, s.st_size), Done(file_hash, dp, s.st_size)))
        else:
            self.pending.append((rel, changed, s, self.pool.submit(file_hash, sp, s.st_size),
                                 self.pool.submit(file_hash, dp, s.st_size)))
        self.drain(MAX_PENDING)

    def drain(self, keep):
        """Collects hash results until at most `keep` files are pending."""
        while len(self.pending) > keep:
            rel, changed, s, fs, fd = self.pending.popleft()
            try:
                hs, hd = fs.result(), fd.result()
            except OSError as e:
                self.report("ERROR", rel, "reading: %s" % e, changed or self.src_changed(rel, s))
                continue
            if hs != hd:
                # The file may have been written after it was lstat'ed above.
                self.report("CONTENT", rel, "sha256 %s.. in SRC, %s.. in DST" % (hs[:16], hd[:16]),
                            changed or self.src_changed(rel, s))

    def check_links(self):
        """Paths sharing an inode on one side must share one on the other, both ways."""
        for side, groups, other in (("SRC", self.links_src, "DST"), ("DST", self.links_dst, "SRC")):
            for members in groups.values():
                if len(members) < 2 or len({ino for _, ino in members}) == 1:
                    continue
                # A link made or removed during the backup explains a difference.
                changed = any(self.src_changed(rel) for rel, _ in members)
                first, first_other = members[0]
                for rel, ino in members[1:]:
                    if ino != first_other:
                        self.report("HARDLINK", rel, "shares an inode with %s in %s, not in %s" % (
                            show(first), side, other), changed)

    def src_changed(self, rel, before=None):
        """Whether SRC's `rel` is gone or changed now (since --since, or since `before`)."""
        try:
            now = os.lstat(join(self.src, rel))
        except OSError:
            return True
        return self.is_changed(now) or (before is not None and now.st_ctime_ns != before.st_ctime_ns)


def main():
    # Like other Unix tools, stop quietly when the reader goes away (`... | head`).
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--since", type=int, help="epoch ns: SRC entries changed at/after it are not failures")
    ap.add_argument("--exclude", action="append", default=[], metavar="REL",
                    help="relative path to skip on both sides (with everything below it)")
    ap.add_argument("--exclude-contents", action="append", default=[], metavar="REL",
                    help="relative path whose contents are skipped on both sides (REL itself is compared)")
    ap.add_argument("--max-lines", type=int, default=200, help="difference lines to print (default 200)")
    ap.add_argument("--jobs", type=int, default=2, help="hashing threads (default 2)")
    args = ap.parse_args()

    def rels(paths):
        return {os.fsencode(p).strip(b"/") for p in paths} - {b""}

    excludes, exclude_contents = rels(args.exclude), rels(args.exclude_contents)
    cmp = Comparison(os.fsencode(args.src), os.fsencode(args.dst), args.since, excludes, exclude_contents, args.jobs)
    started = time.monotonic()
    cmp.run()
    elapsed = time.monotonic() - started

    print("compare_trees: %d entries compared, %d bytes hashed (each side), %d differences, "
          "%d changed during backup (%d of them differ) in %.1fs" % (
              cmp.entries, cmp.bytes_hashed, len(cmp.diffs), cmp.changed_total, len(cmp.changed), elapsed))
    if cmp.mounts:
        print("# mount points not entered (%d): %s" % (
            len(cmp.mounts), ", ".join("%s (%s)" % (show(r), n) for r, n in cmp.mounts)))
    if cmp.sockets:
        print("# sockets skipped (not backed up): %d" % cmp.sockets)
    if excludes or exclude_contents:
        print("# excluded: %s" % " ".join(
            [show(e) for e in sorted(excludes)] + [show(e) + "/*" for e in sorted(exclude_contents)]))
    for kind, rel, detail in cmp.diffs[:args.max_lines]:
        print("%s %s: %s" % (kind, show(rel), detail))
    if len(cmp.diffs) > args.max_lines:
        print("... and %d more differences" % (len(cmp.diffs) - args.max_lines))
    changed = list(cmp.changed.items())
    for rel, items in changed[:args.max_lines]:
        print("CHANGED %s: %s" % (show(rel), "; ".join("%s %s" % kd for kd in items)))
    if len(changed) > args.max_lines:
        print("... and %d more entries changed during backup" % (len(changed) - args.max_lines))
    return 1 if cmp.diffs else 0


if __name__ == "__main__":
    sys.exit(main())
