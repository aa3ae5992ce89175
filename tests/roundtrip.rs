//! End-to-end round-trip and feature tests: the real `tessera` binary on real files.
//!
//! Every test builds its own small tree in a temp dir, backs it up, restores it and compares.
//! Several tests need root (chown, mknod, mount); we run as root locally and in CI.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Env, bin, ok, restored, run, stderr, tessera};
use serde_json::Value;

const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A temp dir directly below `/`. A snapshot records the metadata of every directory above
/// the source path (all but `/` itself), so under /tmp a parallel test creating its temp dir
/// changes /tmp's mtime and with it the top tree of the next backup. Tests that assert an
/// exact count of new chunks between backups use this instead, whose only recorded ancestor
/// is the temp dir itself, which nobody else touches.
fn stable_env() -> Env {
    let dir = tempfile::Builder::new()
        .prefix(".tessera-roundtrip-")
        .tempdir_in("/")
        .expect("temp dir below / (tests run as root)");
    Env { dir }
}

/// An `Env` on a private tmpfs when we may mount one (root), else on the temp dir's disk.
/// Only for tests whose subject is not the filesystem (many small files, large data): on a
/// busy disk mounted with `discard`, deleting tens of thousands of files or syncing hundreds
/// of MiB takes minutes, while unmounting a tmpfs frees everything at once.
struct FastEnv {
    env: Env,
    mounted: bool,
}

impl FastEnv {
    fn new() -> Self {
        let env = Env::new();
        let (what, fstype, target) = (CString::new("tessera-test").unwrap(), CString::new("tmpfs").unwrap(), cpath(env.dir.path()));
        let mounted = unsafe { libc::mount(what.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) } == 0;
        if !mounted {
            eprintln!("note: no tmpfs ({}); using the disk", io::Error::last_os_error());
        }
        FastEnv { env, mounted }
    }
}

impl std::ops::Deref for FastEnv {
    type Target = Env;
    fn deref(&self) -> &Env {
        &self.env
    }
}

impl Drop for FastEnv {
    fn drop(&mut self) {
        if self.mounted {
            let c = cpath(self.env.dir.path());
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn u(v: &Value, key: &str) -> u64 {
    v["summary"][key].as_u64().unwrap_or_else(|| panic!("summary.{key} in {v}"))
}

fn snap_id(v: &Value) -> String {
    v["snapshot"].as_str().unwrap_or_else(|| panic!("snapshot id in {v}")).to_string()
}

fn write(path: &Path, data: &[u8]) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    fs::write(path, data).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// Sets mtime (and atime) to the nanosecond without following symlinks.
fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let ts = libc::timespec { tv_sec: sec as _, tv_nsec: nsec as _ };
    let times = [ts, ts];
    let c = cpath(path);
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    assert_eq!(r, 0, "utimensat {path:?}: {}", io::Error::last_os_error());
}

fn mknod(path: &Path, kind: libc::mode_t, perm: libc::mode_t, major: u32, minor: u32) {
    let c = cpath(path);
    let r = unsafe { libc::mknod(c.as_ptr(), kind | perm, libc::makedev(major, minor)) };
    assert_eq!(r, 0, "mknod {path:?}: {}", io::Error::last_os_error());
}

fn mkfifo(path: &Path, perm: libc::mode_t) {
    let c = cpath(path);
    let r = unsafe { libc::mkfifo(c.as_ptr(), perm) };
    assert_eq!(r, 0, "mkfifo {path:?}: {}", io::Error::last_os_error());
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap_or_else(|e| panic!("chmod {path:?}: {e}"));
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Files in the chunk store (`objects/<2 hex>/<64 hex>`).
fn count_objects(repo: &Path) -> usize {
    let mut n = 0;
    for e in fs::read_dir(repo.join("objects")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.len() == 2 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
            n += fs::read_dir(e.path())
                .unwrap()
                .filter(|f| f.as_ref().unwrap().file_name().len() == 64)
                .count();
        }
    }
    n
}

fn snapshots_json(repo: &Path) -> Vec<Value> {
    let out = ok(tessera(repo).args(["snapshots", "--json"]));
    serde_json::from_str::<Value>(&out).expect("snapshots --json is JSON").as_array().expect("array").clone()
}

fn stats_json(repo: &Path) -> Value {
    serde_json::from_str(&ok(tessera(repo).args(["stats", "--json"]))).expect("stats --json is JSON")
}

/// The paths `ls --json` lists (absolute paths as in the snapshot).
fn ls_paths(repo: &Path, snapshot: &str, path: Option<&Path>) -> BTreeSet<String> {
    let mut cmd = tessera(repo);
    cmd.args(["ls", snapshot, "--json"]);
    if let Some(p) = path {
        cmd.arg(p);
    }
    let v: Value = serde_json::from_str(&ok(&mut cmd)).expect("ls --json is JSON");
    v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["path"].as_str().expect("path").to_string())
        .collect()
}

fn p(path: &Path) -> String {
    path.to_str().expect("utf-8 test path").to_string()
}

fn check_read_data(repo: &Path) {
    let out = ok(tessera(repo).args(["check", "--read-data", "--json"]));
    let v: Value = serde_json::from_str(&out).expect("check --json is JSON");
    assert_eq!(v["problems"].as_array().map(Vec::len), Some(0), "check problems: {v}");
    assert_eq!(v["damaged"].as_array().map(Vec::len), Some(0), "check damaged: {v}");
    assert!(v["objects_read"].as_u64().unwrap() > 0, "check --read-data read nothing: {v}");
    assert_eq!(v["objects_read"], v["objects"], "check --read-data must read every object: {v}");
}

// ---------------------------------------------------------------------------------------------
// Tree walker: everything a faithful restore must reproduce
// ---------------------------------------------------------------------------------------------

#[derive(Debug, PartialEq, Clone)]
struct Meta {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    size: u64,
    content: Option<blake3::Hash>,
    target: Option<OsString>,
    xattrs: Vec<(OsString, Vec<u8>)>,
    rdev: u64,
    nlink: u64,
    /// All names (relative to the walked root) of this inode, for files with several links.
    links: Vec<PathBuf>,
}

fn hash_file(path: &Path) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    io::copy(&mut File::open(path).unwrap_or_else(|e| panic!("open {path:?}: {e}")), &mut h).unwrap();
    h.finalize()
}

/// Every entry below `root` (and `root` itself, as ""), without following symlinks.
fn scan(root: &Path) -> BTreeMap<PathBuf, Meta> {
    let mut out = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let path = if rel.as_os_str().is_empty() { root.to_path_buf() } else { root.join(&rel) };
        let m = fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("lstat {path:?}: {e}"));
        let ft = m.file_type();
        let kind = if ft.is_file() {
            "file"
        } else if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_char_device() {
            "chardev"
        } else if ft.is_block_device() {
            "blockdev"
        } else if ft.is_socket() {
            "socket"
        } else {
            "unknown"
        };
        if ft.is_dir() {
            for e in fs::read_dir(&path).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
        }
        let mut xattrs: Vec<(OsString, Vec<u8>)> = xattr::list(&path)
            .unwrap_or_else(|e| panic!("listxattr {path:?}: {e}"))
            .map(|name| {
                let value = xattr::get(&path, &name).unwrap().unwrap_or_default();
                (name, value)
            })
            .collect();
        xattrs.sort();
        if ft.is_file() && m.nlink() > 1 {
            inodes.entry((m.dev(), m.ino())).or_default().push(rel.clone());
        }
        let meta = Meta {
            kind,
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            mtime: (m.mtime(), m.mtime_nsec()),
            size: if ft.is_file() { m.len() } else { 0 },
            content: ft.is_file().then(|| hash_file(&path)),
            target: ft.is_symlink().then(|| fs::read_link(&path).unwrap().into_os_string()),
            xattrs,
            rdev: if ft.is_char_device() || ft.is_block_device() { m.rdev() } else { 0 },
            nlink: m.nlink(),
            links: Vec::new(),
        };
        out.insert(rel, meta);
    }
    for mut group in inodes.into_values() {
        group.sort();
        for rel in &group {
            out.get_mut(rel).unwrap().links = group.clone();
        }
    }
    out
}

/// Panics with a list of every difference between the trees at `a` and `b`.
fn assert_same_tree(a: &Path, b: &Path) -> BTreeMap<PathBuf, Meta> {
    let (ta, tb) = (scan(a), scan(b));
    let mut diffs = Vec::new();
    for (rel, ma) in &ta {
        match tb.get(rel) {
            None => diffs.push(format!("missing from restore: {rel:?} ({})", ma.kind)),
            Some(mb) if mb != ma => diffs.push(format!("{rel:?} differs:\n    source:   {ma:?}\n    restored: {mb:?}")),
            Some(_) => {}
        }
    }
    for (rel, mb) in &tb {
        if !ta.contains_key(rel) {
            diffs.push(format!("only in restore: {rel:?} ({})", mb.kind));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} differences between {a:?} and {b:?}:\n{}",
        diffs.len(),
        diffs.iter().take(60).cloned().collect::<Vec<_>>().join("\n")
    );
    ta
}

/// The comparator itself must notice each kind of difference, or the round trips prove nothing.
#[test]
fn tree_comparison_notices_differences() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let make = |root: &Path| {
        write(&root.join("f"), b"content");
        fs::hard_link(root.join("f"), root.join("g")).unwrap();
        write(&root.join("h"), b"other");
        std::os::unix::fs::symlink("f", root.join("l")).unwrap();
        xattr::set(root.join("h"), "user.x", b"1").unwrap();
        for rel in ["f", "h", "l", ""] {
            set_mtime(&root.join(rel), 1_600_000_000, 5);
        }
    };
    make(&a);
    make(&b);
    assert_same_tree(&a, &b);
    let differs = |change: &dyn Fn(&Path)| {
        let c = dir.path().join("c");
        let _ = fs::remove_dir_all(&c);
        make(&c);
        change(&c);
        let (a, c) = (a.clone(), c.clone());
        let caught = std::panic::catch_unwind(move || {
            assert_same_tree(&a, &c);
        });
        assert!(caught.is_err(), "comparator missed a difference");
    };
    differs(&|c| set_mtime(&c.join("h"), 1_600_000_000, 6));
    differs(&|c| set_mtime(&c.join("l"), 1_600_000_000, 6));
    differs(&|c| set_mtime(c, 1_600_000_001, 5));
    differs(&|c| chmod(&c.join("h"), 0o4644));
    differs(&|c| xattr::set(c.join("h"), "user.x", b"2").unwrap());
    differs(&|c| {
        fs::remove_file(c.join("l")).unwrap();
        std::os::unix::fs::symlink("g", c.join("l")).unwrap();
        set_mtime(&c.join("l"), 1_600_000_000, 5);
    });
    differs(&|c| {
        // Same content, but g no longer shares f's inode.
        fs::remove_file(c.join("g")).unwrap();
        write(&c.join("g"), b"content");
        set_mtime(&c.join("g"), 1_600_000_000, 5);
        set_mtime(c, 1_600_000_000, 5);
    });
    differs(&|c| {
        OpenOptions::new().write(true).open(c.join("h")).unwrap().write_all_at(b"O", 0).unwrap();
        set_mtime(&c.join("h"), 1_600_000_000, 5);
    });
    differs(&|c| std::os::unix::fs::lchown(c.join("h"), Some(1), None).unwrap());
    differs(&|c| fs::create_dir(c.join("extra")).unwrap());
}

// ---------------------------------------------------------------------------------------------
// 1. Faithful round trip
// ---------------------------------------------------------------------------------------------

const SPARSE_SIZE: u64 = 64 * MIB;
const NON_UTF8: &[u8] = b"bad-\xff\xfe-name";

/// A tree with every kind of thing a faithful restore must bring back.
fn build_fixture(src: &Path) {
    fs::create_dir_all(src).unwrap();
    // Empty files and directories.
    write(&src.join("empty"), b"");
    write(&src.join("files/empty-too"), b"");
    fs::create_dir_all(src.join("empty-dir")).unwrap();
    fs::create_dir_all(src.join("empty-nested/a/b/c")).unwrap();
    // A file of many chunks (64 KiB average), and one that repeats itself.
    write(&src.join("big.bin"), &common::random_bytes(1, 3 * MIB as usize));
    let block = common::random_bytes(2, 100_000);
    write(&src.join("files/repeated.bin"), &block.repeat(5));
    // Many small files of varied size, some identical.
    let pool = common::random_bytes(3, 256 * 1024);
    for i in 0..300usize {
        let len = (i * 7919) % 5000;
        let off = (i * 104_729) % (pool.len() - len);
        let data = if i % 10 == 9 { &pool[..1000] } else { &pool[off..off + len] };
        write(&src.join(format!("small/{:02}/f{i}.dat", i % 7)), data);
    }
    // Names: unicode, odd characters, not UTF-8 at all.
    write(&src.join("names/héllo wörld ✓.txt"), b"unicode\n");
    write(&src.join("names/日本語のファイル"), b"japanese\n");
    write(&src.join("names/🦀 crab"), b"crab\n");
    write(&src.join("names/Ünïcødé dir/inner.txt"), b"inner\n");
    write(&src.join("names/-leading-dash"), b"dash\n");
    write(&src.join("names/# hash"), b"hash\n");
    write(&src.join("names/back\\slash"), b"backslash\n");
    write(&src.join("names/new\nline"), b"newline\n");
    write(&src.join("names/ spaces "), b"spaces\n");
    write(&src.join("names").join(OsStr::from_bytes(NON_UTF8)), b"not utf-8\n");
    write(&src.join("names").join(OsStr::from_bytes(b"dir-\xc3\x28")).join("x"), b"in a non-utf-8 dir\n");
    // Deep nesting: 30 levels.
    let mut deep = src.join("deep");
    for i in 0..30 {
        deep.push(format!("level{i:02}"));
    }
    write(&deep.join("leaf.txt"), b"at the bottom\n");
    // Symlinks: relative, absolute, dangling, to a directory, with a non-UTF-8 target.
    fs::create_dir_all(src.join("links")).unwrap();
    std::os::unix::fs::symlink("../big.bin", src.join("links/relative")).unwrap();
    std::os::unix::fs::symlink(src.join("files/repeated.bin"), src.join("links/absolute")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", src.join("links/dangling")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/absolute/dangling", src.join("links/dangling-abs")).unwrap();
    std::os::unix::fs::symlink("../deep", src.join("links/to-dir")).unwrap();
    std::os::unix::fs::symlink(OsStr::from_bytes(b"target-\xff"), src.join("links/odd-target")).unwrap();
    // Hard links: a group of three names in two directories, and a pair.
    write(&src.join("hard/a"), &common::random_bytes(4, 200_000));
    fs::hard_link(src.join("hard/a"), src.join("hard/b")).unwrap();
    fs::create_dir_all(src.join("other")).unwrap();
    fs::hard_link(src.join("hard/a"), src.join("other/c")).unwrap();
    write(&src.join("hard/x"), b"small hard-linked file\n");
    fs::hard_link(src.join("hard/x"), src.join("hard/y")).unwrap();
    // Special files.
    fs::create_dir_all(src.join("special")).unwrap();
    mkfifo(&src.join("special/fifo"), 0o640);
    mknod(&src.join("special/null"), libc::S_IFCHR, 0o666, 1, 3);
    mknod(&src.join("special/blockdev"), libc::S_IFBLK, 0o660, 7, 200);
    // Owner and group (as root), before modes: chown clears setuid/setgid.
    write(&src.join("owned/file"), b"owned by 1234:2345\n");
    std::os::unix::fs::symlink("file", src.join("owned/link")).unwrap();
    write(&src.join("owned/dir/inner"), b"x");
    for rel in ["owned", "owned/file", "owned/link", "owned/dir", "owned/dir/inner"] {
        std::os::unix::fs::lchown(src.join(rel), Some(1234), Some(2345)).unwrap();
    }
    write(&src.join("owned/setuid-owned"), b"#!/bin/sh\n");
    std::os::unix::fs::lchown(src.join("owned/setuid-owned"), Some(1234), Some(2345)).unwrap();
    chmod(&src.join("owned/setuid-owned"), 0o6755);
    // Permission bits.
    for (name, mode) in [("setuid", 0o4755), ("setgid", 0o2755), ("sticky", 0o1644), ("all", 0o7777), ("none", 0o000), ("odd", 0o640)] {
        let f = src.join("perms").join(name);
        write(&f, name.as_bytes());
        chmod(&f, mode);
    }
    for (name, mode) in [("setgid-dir", 0o2775), ("sticky-dir", 0o1777), ("private-dir", 0o700)] {
        let d = src.join("perms").join(name);
        write(&d.join("file"), b"in a special dir\n");
        chmod(&d, mode);
    }
    chmod(&src.join("special/fifo"), 0o4640);
    // User xattrs on a file and a directory (binary and empty values too).
    write(&src.join("xattrs/file"), b"has xattrs\n");
    xattr::set(src.join("xattrs/file"), "user.comment", b"hello world").unwrap();
    xattr::set(src.join("xattrs/file"), "user.binary", &[0, 1, 2, 0xff, 0xfe]).unwrap();
    xattr::set(src.join("xattrs/file"), "user.empty", b"").unwrap();
    xattr::set(src.join("xattrs"), "user.dir-attr", b"on a directory").unwrap();
    xattr::set(src.join("hard/a"), "user.on-hardlink", b"shared").unwrap();
    // A sparse file: 64 MiB with a few written blocks.
    let f = OpenOptions::new().create(true).write(true).truncate(true).open(src.join("sparse.img")).unwrap();
    f.set_len(SPARSE_SIZE).unwrap();
    for (i, off) in [0, 10 * MIB + 12345, 40 * MIB, SPARSE_SIZE - 4096].into_iter().enumerate() {
        f.write_all_at(&common::random_bytes(10 + i as u64, 4096), off).unwrap();
    }
    drop(f);
    // Its opposite: a file of mostly zeros, every block allocated (as a swap file is).
    let mut zeros = vec![0u8; 4 * MIB as usize];
    zeros[..9].copy_from_slice(b"not holes");
    write(&src.join("allocated-zeros.img"), &zeros);
    // A read-only directory with content (last, since nothing can be added to it after).
    write(&src.join("readonly/file"), b"in a read-only dir\n");
    chmod(&src.join("readonly/file"), 0o444);
    chmod(&src.join("readonly"), 0o555);

    // Finally mtimes with nanoseconds on everything, the root included: children before
    // parents is not needed (setting a child's times touches only its own ctime).
    let mut all: Vec<PathBuf> = scan(src).into_keys().collect();
    all.sort();
    for (i, rel) in all.iter().enumerate() {
        let path = if rel.as_os_str().is_empty() { src.to_path_buf() } else { src.join(rel) };
        let i = i as i64;
        set_mtime(&path, 1_500_000_000 + i * 3_607, (i * 987_654_321 + 123_457) % 1_000_000_000);
    }
}

#[test]
fn faithful_round_trip() {
    assert!(is_root(), "this test needs root (chown, mknod)");
    let env = Env::new();
    env.init(&["--chunk-avg", "64KiB"]);
    let src = env.path("src");
    build_fixture(&src);
    let sparse_src = fs::metadata(src.join("sparse.img")).unwrap();
    assert!(
        sparse_src.blocks() * 512 < 2 * MIB,
        "precondition: this filesystem must keep the source sparse ({} blocks)",
        sparse_src.blocks()
    );

    let report = env.backup(&src, &[]);
    assert!(report["warnings"].as_array().unwrap().is_empty(), "backup warnings: {report}");
    assert!(u(&report, "files") > 300, "{report}");
    let target = env.path("out");
    env.restore("latest", &target, &[]);
    let dest = restored(&target, &src);
    let tree = assert_same_tree(&src, &dest);

    // The same tree must not be trivially empty: spot-check that the walker saw what we made.
    let kinds: BTreeSet<&str> = tree.values().map(|m| m.kind).collect();
    for k in ["file", "dir", "symlink", "fifo", "chardev", "blockdev"] {
        assert!(kinds.contains(k), "fixture has no {k}");
    }
    assert!(tree.contains_key(&PathBuf::from("names").join(OsStr::from_bytes(NON_UTF8))));
    assert_eq!(tree[Path::new("owned/file")].uid, 1234);
    assert_eq!(tree[Path::new("owned/link")].gid, 2345);

    // Hard links: one inode with all three names, link count 3.
    let a = fs::metadata(dest.join("hard/a")).unwrap();
    for other in ["hard/b", "other/c"] {
        let m = fs::metadata(dest.join(other)).unwrap();
        assert_eq!((m.dev(), m.ino()), (a.dev(), a.ino()), "{other} is not a hard link of hard/a");
    }
    assert_eq!(a.nlink(), 3);
    let x = fs::metadata(dest.join("hard/x")).unwrap();
    assert_eq!(x.ino(), fs::metadata(dest.join("hard/y")).unwrap().ino());
    assert_eq!(x.nlink(), 2);
    assert_ne!(x.ino(), a.ino());

    // Devices keep their numbers; the sparse file stays sparse.
    let null = fs::symlink_metadata(dest.join("special/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    let sparse = fs::metadata(dest.join("sparse.img")).unwrap();
    assert_eq!(sparse.len(), SPARSE_SIZE);
    assert!(
        sparse.blocks() * 512 < SPARSE_SIZE / 8,
        "restored sparse file takes {} bytes on disk for {} bytes",
        sparse.blocks() * 512,
        SPARSE_SIZE
    );
    // A file without holes gets none, however many of its blocks are zeros.
    let zeros_src = fs::metadata(src.join("allocated-zeros.img")).unwrap();
    assert!(zeros_src.blocks() * 512 >= zeros_src.len(), "precondition: the source file is fully allocated");
    let zeros = fs::metadata(dest.join("allocated-zeros.img")).unwrap();
    assert!(zeros.blocks() * 512 >= zeros.len(), "restored with holes: {} blocks for {} bytes", zeros.blocks(), zeros.len());
    // Setuid survives the chown of a root restore.
    assert_eq!(fs::metadata(dest.join("owned/setuid-owned")).unwrap().mode() & 0o7777, 0o6755);

    check_read_data(&env.repo());
}

/// `ls --json` must list a snapshot with a name that is not UTF-8 (JSON cannot hold the raw
/// bytes, but the listing must not fail).
#[test]
fn ls_json_lists_non_utf8_names() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    write(&src.join("plain.txt"), b"plain");
    write(&src.join(OsStr::from_bytes(NON_UTF8)), b"odd");
    env.backup(&src, &[]);
    let out = run(tessera(&env.repo()).args(["ls", "latest", "--json"]));
    assert!(out.status.success(), "ls --json failed on a non-UTF-8 name: {}", common::stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("ls --json is JSON");
    let entries = v["entries"].as_array().unwrap();
    assert!(entries.iter().any(|e| e["path"].as_str().is_some_and(|s| s.ends_with("/plain.txt"))));
    assert!(entries.len() >= 3, "{v}");
    // Plain `ls` shows it (lossily).
    let plain = ok(tessera(&env.repo()).args(["ls", "latest"]));
    assert!(plain.contains("bad-"), "{plain}");
}

// ---------------------------------------------------------------------------------------------
// 2. Content-defined chunking survives an insertion
// ---------------------------------------------------------------------------------------------

#[test]
fn cdc_insert_one_byte_stores_little() {
    let env = FastEnv::new();
    env.init(&[]); // default: 1 MiB average chunks
    let src = env.path("src");
    let size = 64 * MIB as usize;
    let data = common::random_bytes(42, size);
    write(&src.join("data.bin"), &data);
    let first = env.backup(&src, &[]);
    assert!(u(&first, "new_bytes") >= size as u64, "{first}");

    let mut shifted = Vec::with_capacity(size + 1);
    shifted.push(0x5a);
    shifted.extend_from_slice(&data);
    write(&src.join("data.bin"), &shifted);
    let second = env.backup(&src, &[]);
    assert_eq!(u(&second, "read_bytes"), size as u64 + 1, "{second}");
    let frac = u(&second, "new_bytes") as f64 / size as f64;
    eprintln!("CDC shift: one byte inserted at the start of 64 MiB -> new_bytes {} ({:.3}% of 64 MiB)", u(&second, "new_bytes"), frac * 100.0);
    assert!(frac < 0.05, "inserting one byte stored {:.2}% of the file again: {second}", frac * 100.0);

    let target = env.path("out");
    env.restore("latest", &target, &[]);
    assert!(fs::read(restored(&target, &src).join("data.bin")).unwrap() == shifted, "restored content differs");
}

// ---------------------------------------------------------------------------------------------
// 3. Incremental backups
// ---------------------------------------------------------------------------------------------

#[test]
fn incremental_reads_only_changes() {
    let env = stable_env();
    env.init(&["--chunk-avg", "64KiB"]);
    let src = env.path("src");
    let outs = env.path("out");
    fs::create_dir_all(&outs).unwrap(); // before the first backup: the temp dir's mtime is recorded
    write(&src.join("a.txt"), &common::random_bytes(1, 10_000));
    write(&src.join("b.bin"), &common::random_bytes(2, 2 * MIB as usize));
    write(&src.join("sub/c.txt"), b"c version 1\n");
    write(&src.join("sub/deeper/d.bin"), &common::random_bytes(3, 300_000));
    let total = 10_000 + 2 * MIB + 12 + 300_000;

    let s1 = env.backup(&src, &[]);
    assert_eq!(u(&s1, "total_bytes"), total);
    assert_eq!(u(&s1, "read_bytes"), total);
    assert!(u(&s1, "new_chunks") > 0);

    let s2 = env.backup(&src, &[]);
    assert_eq!(u(&s2, "read_bytes"), 0, "unchanged tree was read again: {s2}");
    assert_eq!(u(&s2, "new_chunks"), 0, "unchanged tree stored new chunks: {s2}");
    assert_eq!(u(&s2, "new_bytes"), 0);
    assert_eq!(u(&s2, "total_bytes"), total);

    // Change one file's content and size.
    let a2 = common::random_bytes(11, 12_345);
    write(&src.join("a.txt"), &a2);
    let s3 = env.backup(&src, &[]);
    assert_eq!(u(&s3, "read_bytes"), 12_345, "only a.txt should be read: {s3}");
    assert!(u(&s3, "new_chunks") >= 1);

    // Change one file in place, same size, and put its mtime back: ctime still tells.
    let b_path = src.join("b.bin");
    let b_meta = fs::metadata(&b_path).unwrap();
    let mut b2 = fs::read(&b_path).unwrap();
    b2[MIB as usize..MIB as usize + 8].copy_from_slice(b"CHANGED!");
    OpenOptions::new().write(true).open(&b_path).unwrap().write_all_at(b"CHANGED!", MIB).unwrap();
    set_mtime(&b_path, b_meta.mtime(), b_meta.mtime_nsec());
    let s4 = env.backup(&src, &[]);
    assert_eq!(u(&s4, "read_bytes"), 2 * MIB, "in-place change with restored mtime not detected: {s4}");

    // --force-rehash reads everything. Large files dedupe completely. Small files are packed
    // into one stream, so re-reading all of them (a.txt and sub/c.txt, 12,357 bytes) may cut
    // a new pack chunk, and the trees naming it change too (a few KiB); nothing more.
    let s5 = env.backup(&src, &["--force-rehash"]);
    let total5 = total - 10_000 + 12_345;
    assert_eq!(u(&s5, "read_bytes"), total5, "{s5}");
    assert!(u(&s5, "new_bytes") < 32 * 1024, "force-rehash of unchanged data stored too much: {s5}");

    // Each snapshot restores its own version.
    let a1 = common::random_bytes(1, 10_000);
    let b1 = common::random_bytes(2, 2 * MIB as usize);
    for (i, (snap, a, b)) in [(&s1, &a1, &b1), (&s2, &a1, &b1), (&s3, &a2, &b1), (&s4, &a2, &b2), (&s5, &a2, &b2)].into_iter().enumerate() {
        let target = outs.join(format!("s{}", i + 1));
        env.restore(&snap_id(snap), &target, &[]);
        let dest = restored(&target, &src);
        assert!(fs::read(dest.join("a.txt")).unwrap() == *a, "snapshot {} a.txt", i + 1);
        assert!(fs::read(dest.join("b.bin")).unwrap() == *b, "snapshot {} b.bin", i + 1);
        assert_eq!(fs::read(dest.join("sub/c.txt")).unwrap(), b"c version 1\n");
    }
    // The last one is the source as it is now, metadata included.
    assert_same_tree(&src, &restored(&outs.join("s5"), &src));
}

// ---------------------------------------------------------------------------------------------
// 4. Many small files are packed into few objects
// ---------------------------------------------------------------------------------------------

#[test]
fn small_files_are_packed() {
    let env = FastEnv::new();
    env.init(&[]);
    let src = env.path("src");
    let pool = common::random_bytes(5, 4 * MIB as usize);
    let mut total = 0u64;
    for i in 0..20_000usize {
        let j = if i % 10 == 9 { i - 4 } else { i }; // every tenth file duplicates another
        let len = 100 + (j * 7919) % 2901;
        let off = (j * 1_000_003) % (pool.len() - len);
        let dir = src.join(format!("d{:02}", i % 20));
        if i < 20 {
            fs::create_dir_all(&dir).unwrap();
        }
        fs::write(dir.join(format!("file{i:05}.txt")), &pool[off..off + len]).unwrap();
        total += len as u64;
    }
    let report = env.backup(&src, &[]);
    assert_eq!(u(&report, "files"), 20_000);
    assert_eq!(u(&report, "total_bytes"), total);
    let objects = count_objects(&env.repo());
    eprintln!("20,000 small files ({total} bytes) -> {objects} objects");
    assert!(objects < 200, "20,000 small files made {objects} objects");
    assert!(objects > 0);

    let target = env.path("out");
    env.restore("latest", &target, &[]);
    assert_same_tree(&src, &restored(&target, &src));
}

// ---------------------------------------------------------------------------------------------
// 5. Dedup, and SHA-256 repositories
// ---------------------------------------------------------------------------------------------

#[test]
fn identical_files_are_stored_once_blake3_and_sha256() {
    for hash in ["blake3", "sha256"] {
        let env = Env::new();
        env.init(&["--hash", hash, "--chunk-avg", "256KiB"]);
        let src = env.path("src");
        let data = common::random_bytes(6, 8 * MIB as usize);
        write(&src.join("one/copy.bin"), &data);
        write(&src.join("two/deeper/same.bin"), &data);
        write(&src.join("small-a.txt"), b"the same small file\n");
        write(&src.join("two/small-b.txt"), b"the same small file\n");
        let r = env.backup(&src, &[]);
        let new_bytes = u(&r, "new_bytes");
        assert_eq!(u(&r, "total_bytes"), 2 * 8 * MIB + 40);
        assert!(
            (8 * MIB..8 * MIB + 256 * 1024).contains(&new_bytes),
            "{hash}: two identical 8 MiB files stored {new_bytes} new bytes: {r}"
        );
        let target = env.path("out");
        env.restore("latest", &target, &[]);
        assert_same_tree(&src, &restored(&target, &src));
        check_read_data(&env.repo());
        let config = fs::read_to_string(env.repo().join("config")).unwrap();
        assert!(config.contains(hash), "{hash} not recorded in config: {config}");
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Selection and the other commands
// ---------------------------------------------------------------------------------------------

#[test]
fn excludes_by_name_path_and_file() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    for f in [
        "keep.txt", "junk.tmp", "sub/keep2.txt", "sub/junk2.tmp", "sub/x.tmpl",
        "cache/blob1", "cache/blob2", "cache/nested/deep.txt",
        "logs/a.log", "logs/keep.txt", "build/out.o", "sub/build/kept-not-top-level",
        "# comment line", "notes/.keep",
    ] {
        write(&src.join(f), f.as_bytes());
    }
    let exclude_file = env.path("excludes.txt");
    fs::write(&exclude_file, format!("# comment line\n\n   \n*.log\n{}/build\n  # indented comment\n", p(&src))).unwrap();
    let r = env.backup(
        &src,
        &["--exclude", "*.tmp", "--exclude", &format!("{}/cache/*", p(&src)), "--exclude-file", &p(&exclude_file)],
    );
    let listed = ls_paths(&env.repo(), "latest", None);
    let s = p(&src);
    for keep in ["keep.txt", "sub/keep2.txt", "sub/x.tmpl", "cache", "logs/keep.txt", "sub/build/kept-not-top-level", "# comment line", "notes/.keep"] {
        assert!(listed.contains(&format!("{s}/{keep}")), "{keep} should be kept; listed: {listed:#?}");
    }
    for gone in ["junk.tmp", "sub/junk2.tmp", "cache/blob1", "cache/blob2", "cache/nested", "cache/nested/deep.txt", "logs/a.log", "build", "build/out.o"] {
        assert!(!listed.contains(&format!("{s}/{gone}")), "{gone} should be excluded; listed: {listed:#?}");
    }
    assert_eq!(u(&r, "files"), 7, "{r}");
}

#[test]
fn dry_run_writes_nothing_but_reports() {
    let env = stable_env();
    env.init(&["--chunk-avg", "64KiB"]);
    let src = env.path("src");
    write(&src.join("old.bin"), &common::random_bytes(7, 500_000));
    env.backup(&src, &[]);
    write(&src.join("new.bin"), &common::random_bytes(8, 700_000));
    write(&src.join("new-small.txt"), b"new small file\n");

    let objects = count_objects(&env.repo());
    let snapshots = snapshots_json(&env.repo()).len();
    let dry = env.backup(&src, &["--dry-run"]);
    assert!(dry["snapshot"].is_null(), "dry run returned a snapshot id: {dry}");
    assert_eq!(dry["dry_run"], Value::Bool(true));
    assert!(u(&dry, "new_bytes") >= 700_000, "dry run should report the new data: {dry}");
    assert!(u(&dry, "new_chunks") >= 2, "{dry}");
    assert_eq!(count_objects(&env.repo()), objects, "dry run wrote objects");
    assert_eq!(snapshots_json(&env.repo()).len(), snapshots, "dry run wrote a snapshot");

    // What the dry run predicted is what a real run then stores.
    let real = env.backup(&src, &[]);
    assert_eq!(u(&real, "new_chunks"), u(&dry, "new_chunks"), "dry: {dry}\nreal: {real}");
    assert_eq!(u(&real, "new_bytes"), u(&dry, "new_bytes"));
    assert_eq!(u(&real, "stored_bytes"), u(&dry, "stored_bytes"));
    assert_eq!(count_objects(&env.repo()), objects + u(&real, "new_chunks") as usize);
}

#[test]
fn restore_include_subdir_and_single_file() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    write(&src.join("top.txt"), b"top");
    write(&src.join("sub/a.txt"), b"a");
    write(&src.join("sub/inner/b.txt"), b"b");
    write(&src.join("subway/not-sub.txt"), b"prefix but not below sub");
    write(&src.join("other/d.txt"), b"d");
    write(&src.join("other/e.txt"), b"e");
    env.backup(&src, &[]);

    let t1 = env.path("out1");
    env.restore("latest", &t1, &["--include", &format!("{}/sub", p(&src))]);
    let d1 = restored(&t1, &src);
    assert_same_tree(&src.join("sub"), &d1.join("sub"));
    for absent in ["top.txt", "subway", "other"] {
        assert!(!d1.join(absent).exists(), "{absent} restored though not included");
    }

    let t2 = env.path("out2");
    env.restore("latest", &t2, &["--include", &format!("{}/other/d.txt", p(&src))]);
    let d2 = restored(&t2, &src);
    assert_eq!(fs::read(d2.join("other/d.txt")).unwrap(), b"d");
    assert_eq!(fs::read_dir(d2.join("other")).unwrap().count(), 1, "siblings of the included file restored");
    assert_eq!(fs::read_dir(&d2).unwrap().count(), 1);

    // Including a path that is not in the snapshot is an error.
    let t3 = env.path("out3");
    let out = run(tessera(&env.repo()).args(["restore", "latest", "--target"]).arg(&t3).arg("--include").arg(src.join("nope")));
    assert!(!out.status.success(), "restore of a missing include succeeded");
}

#[test]
fn ls_snapshots_ids_env_tags_hosts() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    write(&src.join("file.txt"), b"hello\n");
    chmod(&src.join("file.txt"), 0o644);
    write(&src.join("sub/inner.txt"), b"inner\n");
    let r1 = env.backup(&src, &["--tag", "daily", "--tag", "second-tag", "--host", "alpha"]);
    write(&src.join("sub/added.txt"), b"added\n");
    let r2 = env.backup(&src, &["--host", "beta"]);
    let (id1, id2) = (snap_id(&r1), snap_id(&r2));

    let list = snapshots_json(&env.repo());
    assert_eq!(list.len(), 2);
    let ids: Vec<&str> = list.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [id1.as_str(), id2.as_str()], "snapshots --json lists oldest first");
    for id in &ids {
        assert!(id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()), "bad id {id}");
    }
    assert_eq!(list[0]["host"], "alpha");
    assert_eq!(list[0]["tags"], serde_json::json!(["daily", "second-tag"]));
    assert_eq!(list[1]["host"], "beta");
    assert_eq!(list[1]["tags"], serde_json::json!([]));
    assert_eq!(list[0]["paths"], serde_json::json!([p(&src)]));
    let text = ok(tessera(&env.repo()).arg("snapshots"));
    assert!(text.contains(&id1[..12]) && text.contains("alpha") && text.contains("daily"), "{text}");

    // ls: whole snapshot, below a path, by prefix, `latest`.
    let s = p(&src);
    let latest = ok(tessera(&env.repo()).args(["ls", "latest"]));
    assert!(latest.lines().any(|l| l == format!("{s}/sub/added.txt")), "{latest}");
    let below: Vec<String> = ok(tessera(&env.repo()).args(["ls", "latest"]).arg(src.join("sub"))).lines().map(String::from).collect();
    assert!(below.contains(&format!("{s}/sub/inner.txt")), "{below:?}");
    assert!(!below.contains(&format!("{s}/file.txt")), "ls PATH listed outside PATH: {below:?}");
    let first = ls_paths(&env.repo(), &id1[..10], None);
    assert!(first.contains(&format!("{s}/sub/inner.txt")));
    assert!(!first.contains(&format!("{s}/sub/added.txt")), "prefix resolved to the wrong snapshot");
    let long = ok(tessera(&env.repo()).args(["ls", "latest", "--long"]));
    assert!(long.lines().any(|l| l.starts_with("-rw-r--r--") && l.ends_with("/file.txt")), "{long}");

    let v: Value = serde_json::from_str(&ok(tessera(&env.repo()).args(["ls", &id2[..8], "--json"]))).unwrap();
    assert_eq!(v["snapshot"], id2.as_str());
    let file = v["entries"].as_array().unwrap().iter().find(|e| e["path"] == format!("{s}/file.txt")).expect("file.txt listed");
    assert_eq!(file["type"], "file");
    assert_eq!(file["size"], 6);
    assert_eq!(file["mode"], 0o644);

    // Restore by prefix.
    let t = env.path("out");
    env.restore(&id1[..8], &t, &[]);
    assert!(restored(&t, &src).join("sub/inner.txt").exists());
    assert!(!restored(&t, &src).join("sub/added.txt").exists(), "restore by prefix took the wrong snapshot");
    // Unknown prefix fails.
    assert!(!run(tessera(&env.repo()).args(["ls", "zzzz"])).status.success());

    // TESSERA_REPO instead of --repo; neither is an error.
    let out = ok(Command::new(common::bin()).env("TESSERA_REPO", env.repo()).args(["snapshots", "--json"]));
    let via_env: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(via_env.len(), 2);
    assert_eq!(via_env[1]["id"], id2.as_str());
    let none = run(Command::new(common::bin()).env_remove("TESSERA_REPO").arg("snapshots"));
    assert_eq!(none.status.code(), Some(1));
    assert!(common::stderr(&none).contains("TESSERA_REPO"), "{}", common::stderr(&none));
}

#[test]
fn stats_dedup_ratio_after_same_data_from_another_host() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    write(&src.join("big.bin"), &common::random_bytes(9, 3 * MIB as usize));
    write(&src.join("small.txt"), b"small\n");
    let r1 = env.backup(&src, &["--host", "one"]);
    let st1 = stats_json(&env.repo());
    assert_eq!(st1["snapshots"], 1);
    let r2 = env.backup(&src, &["--host", "two"]);
    assert_eq!(u(&r2, "read_bytes"), u(&r1, "total_bytes"), "another host has no parent: everything is read");
    assert!(u(&r2, "new_bytes") < 64 * 1024, "same data from another host stored again: {r2}");
    let st = stats_json(&env.repo());
    assert_eq!(st["snapshots"], 2);
    assert_eq!(st["logical_bytes"].as_u64().unwrap(), 2 * u(&r1, "total_bytes"));
    let ratio = st["dedup_ratio"].as_f64().unwrap();
    assert!(ratio > 1.5, "dedup ratio {ratio} after two identical backups: {st}");
    assert!(st1["dedup_ratio"].as_f64().unwrap() < 1.01, "{st1}");
    assert_eq!(st["objects"].as_u64().unwrap() as usize, count_objects(&env.repo()));
}

#[test]
fn completions_mention_tessera() {
    let bash = ok(Command::new(common::bin()).args(["completions", "bash"]));
    assert!(bash.contains("tessera"), "{bash}");
    assert!(bash.contains("snapshots") && bash.contains("--exclude-file"), "bash completions lack subcommands/options");
    for shell in ["zsh", "fish"] {
        let out = ok(Command::new(common::bin()).args(["completions", shell]));
        assert!(out.contains("tessera"), "{shell}: {out}");
    }
}

#[test]
fn repair_index_rebuilds_from_the_store() {
    let env = stable_env();
    env.init(&["--chunk-avg", "64KiB"]);
    let src = env.path("src");
    write(&src.join("data.bin"), &common::random_bytes(12, MIB as usize));
    write(&src.join("notes.txt"), b"notes\n");
    env.backup(&src, &[]);
    let objects = count_objects(&env.repo());
    assert_eq!(stats_json(&env.repo())["unique_chunks"].as_u64().unwrap() as usize, objects);

    for e in fs::read_dir(env.repo().join("index")).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() { fs::remove_dir_all(&path).unwrap() } else { fs::remove_file(&path).unwrap() }
    }
    assert_eq!(stats_json(&env.repo())["unique_chunks"], 0, "index still knows chunks after deletion");
    let out = ok(tessera(&env.repo()).args(["repair", "index"]));
    assert!(out.contains(&format!("{objects} chunks")), "repair should find {objects} chunks: {out}");
    assert_eq!(stats_json(&env.repo())["unique_chunks"].as_u64().unwrap() as usize, objects, "index not rebuilt");

    let again = env.backup(&src, &["--force-rehash"]);
    assert_eq!(u(&again, "read_bytes"), MIB + 6);
    assert_eq!(u(&again, "new_chunks"), 0, "after repair the same data stored new chunks: {again}");
    assert_eq!(count_objects(&env.repo()), objects);
    check_read_data(&env.repo());
}

// ---------------------------------------------------------------------------------------------
// 7. --one-file-system
// ---------------------------------------------------------------------------------------------

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let c = cpath(&self.0);
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Mounts a tmpfs on `dir` (made if missing) until the guard drops; None if the tests were
/// told there is no mounting here (TESSERA_TEST_NO_MOUNT), after saying what goes untested.
fn tmpfs_at(dir: &Path, untested: &str) -> Option<Mount> {
    if std::env::var_os("TESSERA_TEST_NO_MOUNT").is_some() {
        eprintln!("TESSERA_TEST_NO_MOUNT set: {untested} is NOT tested");
        return None;
    }
    fs::create_dir_all(dir).unwrap();
    let (what, fstype, target) = (CString::new("tessera-test").unwrap(), CString::new("tmpfs").unwrap(), cpath(dir));
    let r = unsafe { libc::mount(what.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    assert_eq!(
        r, 0,
        "mount -t tmpfs failed ({}): this test needs root with CAP_SYS_ADMIN; set TESSERA_TEST_NO_MOUNT=1 to skip it explicitly",
        io::Error::last_os_error()
    );
    Some(Mount(dir.to_path_buf()))
}

#[test]
fn one_file_system_skips_other_mounts() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    write(&src.join("outside.txt"), b"on the source filesystem\n");
    write(&src.join("sub/also-outside.txt"), b"same filesystem\n");
    let mnt = src.join("sub/mnt");
    let Some(_guard) = tmpfs_at(&mnt, "--one-file-system") else { return };
    write(&mnt.join("inside.txt"), b"on the tmpfs\n");
    assert_ne!(fs::metadata(&mnt).unwrap().dev(), fs::metadata(&src).unwrap().dev());

    let s = p(&src);
    let x = env.backup(&src, &["--one-file-system"]);
    let listed = ls_paths(&env.repo(), &snap_id(&x), None);
    assert!(listed.contains(&format!("{s}/outside.txt")) && listed.contains(&format!("{s}/sub/also-outside.txt")), "{listed:#?}");
    assert!(!listed.contains(&format!("{s}/sub/mnt/inside.txt")), "-x crossed into the tmpfs: {listed:#?}");
    assert!(listed.contains(&format!("{s}/sub/mnt")), "the mount point itself is kept: {listed:#?}");
    assert_eq!(u(&x, "files"), 2, "{x}");
    let target = env.path("restored");
    env.restore(&snap_id(&x), &target, &[]);
    let mount_point = restored(&target, &mnt);
    assert!(mount_point.is_dir() && fs::read_dir(&mount_point).unwrap().next().is_none(), "restored as an empty directory");
    assert_eq!(fs::metadata(&mount_point).unwrap().mode() & 0o7777, fs::metadata(&mnt).unwrap().mode() & 0o7777);

    let all = env.backup(&src, &["--host", "no-x"]);
    let listed = ls_paths(&env.repo(), &snap_id(&all), None);
    assert!(listed.contains(&format!("{s}/sub/mnt/inside.txt")), "without -x the tmpfs must be included: {listed:#?}");
    assert_eq!(u(&all, "files"), 3);

    // -x short form too.
    let short = env.backup(&src, &["-x", "--host", "short"]);
    assert_eq!(u(&short, "files"), 2);
}

/// Backing up `/` itself with `-x` stays on the root's filesystem too. Run in a chroot
/// holding the binary and its libraries, with a tmpfs mounted inside.
#[test]
fn one_file_system_holds_when_the_source_is_root() {
    let env = Env::new();
    let root = env.path("root");
    let libs = ok(Command::new("ldd").arg(bin()));
    for lib in libs.split_whitespace().filter(|w| w.starts_with('/')) {
        let inside = root.join(lib.trim_start_matches('/'));
        fs::create_dir_all(inside.parent().unwrap()).unwrap();
        fs::copy(lib, &inside).unwrap();
    }
    fs::copy(bin(), root.join("tessera")).unwrap();
    write(&root.join("data/a.txt"), b"on the root filesystem\n");
    let mnt = root.join("othermnt");
    let Some(_guard) = tmpfs_at(&mnt, "--one-file-system from /") else { return };
    write(&mnt.join("inside.txt"), b"on the tmpfs\n");

    let in_root = |args: &[&str]| ok(Command::new("chroot").arg(&root).arg("/tessera").args(["--repo", "/repo"]).args(args));
    in_root(&["init"]);
    in_root(&["backup", "/", "-x", "--exclude", "/repo", "--host", "h"]);
    let v: Value = serde_json::from_str(&in_root(&["ls", "latest", "--json"])).unwrap();
    let listed: BTreeSet<&str> = v["entries"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert!(listed.contains("/data/a.txt") && listed.contains("/tessera"), "{listed:#?}");
    assert!(listed.contains("/othermnt"), "the mount point is kept: {listed:#?}");
    assert!(!listed.contains("/othermnt/inside.txt"), "-x crossed into the tmpfs below /: {listed:#?}");
}

/// `init --compression` sets the zstd level of new chunks: `off` stores text raw, `fast` and
/// `max` compress it, and both restore byte-identical; nonsense levels are refused.
#[test]
fn compression_levels_are_chosen_at_init() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    let text: Vec<u8> = "all work and no play makes jack a dull boy\n".repeat(60_000).into_bytes();
    fs::write(src.join("text.txt"), &text).unwrap();
    let mut stored = Vec::new();
    for level in ["off", "fast", "max"] {
        let repo = env.path(&format!("repo-{level}"));
        ok(tessera(&repo).args(["init", "--compression", level]));
        let report = serde_json::from_str::<serde_json::Value>(&ok(tessera(&repo).arg("backup").arg(&src).arg("--json"))).unwrap();
        stored.push(report["summary"]["stored_bytes"].as_u64().unwrap());
        let target = env.path(&format!("out-{level}"));
        ok(tessera(&repo).args(["restore", "latest", "--target"]).arg(&target));
        assert_eq!(fs::read(restored(&target, &src).join("text.txt")).unwrap(), text);
    }
    assert!(stored[0] >= text.len() as u64, "off stores raw: {stored:?}");
    assert!(stored[1] < text.len() as u64 / 20, "fast compresses: {stored:?}");
    assert!(stored[2] <= stored[1], "max is no larger than fast: {stored:?}");
    for bad in ["42", "ultra", "-1"] {
        let repo = env.path(&format!("repo-bad{bad}"));
        let out = run(tessera(&repo).args(["init", "--compression", bad]));
        assert!(!out.status.success() && stderr(&out).contains(bad), "{bad}: {}", stderr(&out));
        assert!(!repo.exists());
    }
}

/// Small directories go inline into their parent's tree; a chain of 80 of them must still
/// come back (tree readers bound JSON nesting, so deep chains need chunks of their own).
#[test]
fn deep_chain_of_small_directories_round_trips() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    let mut deepest = src.clone();
    for i in 0..80 {
        deepest.push(format!("d{i}"));
    }
    fs::create_dir_all(&deepest).unwrap();
    fs::write(deepest.join("leaf.txt"), b"at the bottom").unwrap();
    env.backup(&src, &[]);
    ok(tessera(&env.repo()).args(["check", "--read-data"]));
    let target = env.path("out");
    env.restore("latest", &target, &[]);
    let back = restored(&target, &deepest).join("leaf.txt");
    assert_eq!(fs::read(back).unwrap(), b"at the bottom");
}

/// Runs `tessera ARGS` in a private mount namespace without /proc, where unnamed files
/// (O_TMPFILE) cannot be linked into place: stores and restores must fall back to temp
/// names and renames.
fn tessera_without_proc(repo: &Path, args: &[&OsStr]) -> String {
    let script = "umount -l /proc && exec \"$0\" \"$@\"";
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", script, common::bin(), "--repo"])
        .arg(repo)
        .args(args)
        .env_remove("TESSERA_REPO");
    ok(&mut cmd)
}

#[test]
fn backup_and_restore_work_without_proc() {
    if std::env::var_os("TESSERA_TEST_NO_MOUNT").is_some() {
        eprintln!("TESSERA_TEST_NO_MOUNT set: the fallback without /proc is NOT tested");
        return;
    }
    assert!(is_root(), "this test needs root (a mount namespace); set TESSERA_TEST_NO_MOUNT=1 to skip it explicitly");
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    write(&src.join("big.bin"), &common::random_bytes(7, 3 << 20));
    write(&src.join("small.txt"), b"packed with the other small files\n");
    write(&src.join("dir/other.txt"), b"another small file\n");
    let os = |s: &'static str| OsStr::new(s);
    tessera_without_proc(&env.repo(), &[os("backup"), src.as_os_str()]);
    assert!(count_objects(&env.repo()) >= 2);
    assert_eq!(fs::read_dir(env.repo().join("objects/tmp")).unwrap().count(), 0, "temp objects left behind");

    let target = env.path("restore");
    tessera_without_proc(&env.repo(), &[os("restore"), os("latest"), os("--target"), target.as_os_str()]);
    assert_same_tree(&src, &restored(&target, &src));
    // Over existing files (the rename replaces them), and with nothing left under temp names.
    write(&restored(&target, &src).join("small.txt"), b"changed since the backup\n");
    tessera_without_proc(&env.repo(), &[os("restore"), os("latest"), os("--target"), target.as_os_str(), os("--overwrite")]);
    assert_same_tree(&src, &restored(&target, &src));
    let temps: Vec<_> = scan(&target).into_keys().filter(|p| p.to_string_lossy().contains(".tessera-restore-")).collect();
    assert!(temps.is_empty(), "restore temp files left: {temps:?}");
    ok(tessera(&env.repo()).args(["check", "--read-data"]));
}
