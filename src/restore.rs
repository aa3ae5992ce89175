//! Restore: snapshot -> trees -> chunk lists -> fetch + verify -> files and metadata.
//!
//! Each chunk is fetched once and written to every file that uses it, in parallel. Files are
//! written unnamed (`O_TMPFILE`; where the filesystem cannot, under a temporary name) and
//! given their name only once complete; metadata goes on last, directories deepest first.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use rayon::prelude::*;

use crate::error::{Error, IoContext, Result};
use crate::fingerprint::ChunkId;
use crate::manifest::{FileWarning, Node, NodeType, RawBytes, Snapshot, Subtree};
use crate::repo::Repository;

/// Fetching is I/O as much as CPU: a few more threads than cores keeps both busy.
const RESTORE_THREADS: usize = 4;

pub struct RestoreOptions {
    pub target: PathBuf,
    /// Snapshot paths to restore (with everything below them); empty means all.
    pub includes: Vec<String>,
    pub overwrite: bool,
}

#[derive(Default)]
pub struct RestoreLive {
    pub total_files: AtomicU64,
    pub total_bytes: AtomicU64,
    pub files: AtomicU64,
    pub bytes: AtomicU64,
}

#[derive(Debug, Default)]
pub struct RestoreReport {
    pub files: u64,
    pub dirs: u64,
    pub others: u64,
    pub bytes: u64,
    /// Files that could not be restored (each named), and metadata that could not be set.
    pub errors: Vec<FileWarning>,
}

/// One entry to restore, at `rel` below the target.
pub struct Item {
    pub rel: PathBuf,
    pub node: Node,
}

/// The entries of a snapshot below `includes`, parents before children.
pub fn plan(repo: &Repository, snapshot: &Snapshot, includes: &[String]) -> Result<Vec<Item>> {
    let includes: Vec<Vec<Vec<u8>>> = includes.iter().map(|i| components(i)).collect::<Result<_>>()?;
    let mut matched = vec![false; includes.len()];
    let mut items = Vec::new();
    let mut stack = vec![(Subtree::Chunk(snapshot.tree), PathBuf::new(), Vec::<Vec<u8>>::new())];
    while let Some((subtree, rel, comps)) = stack.pop() {
        let nodes = repo.open_subtree(subtree)?;
        let mut subdirs = Vec::new();
        for mut node in nodes {
            let mut path = comps.clone();
            path.push(node.name.0.clone());
            let mut take = includes.is_empty();
            for (i, inc) in includes.iter().enumerate() {
                if path.starts_with(inc) {
                    take = true;
                    matched[i] |= path.len() == inc.len();
                } else if node.kind == NodeType::Dir && inc.starts_with(&path) {
                    take = true;
                }
            }
            if !take {
                continue;
            }
            let rel = rel.join(node.name.as_os_str());
            if let Some(sub) = node.take_subtree() {
                subdirs.push((sub, rel.clone(), path));
            }
            items.push(Item { rel, node });
        }
        stack.extend(subdirs.into_iter().rev());
    }
    if let Some(i) = matched.iter().position(|m| !m) {
        return Err(Error::NotInSnapshot {
            path: String::from_utf8_lossy(&includes[i].join(&b'/')).into_owned(),
            snapshot: snapshot.paths.join(" "),
        });
    }
    // Stack order visits a directory's children right after it, so parents come first.
    Ok(items)
}

fn components(path: &str) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(crate::error::invalid("include path", format!("{path:?} contains ..") )),
            c => out.push(c.as_bytes().to_vec()),
        }
    }
    Ok(out)
}

pub fn restore(repo: &Repository, snapshot: &Snapshot, opts: &RestoreOptions, live: &RestoreLive) -> Result<RestoreReport> {
    let items = plan(repo, snapshot, &opts.includes)?;
    let target = &opts.target;
    fs::create_dir_all(target).at(target)?;
    check_conflicts(target, &items, opts.overwrite)?;
    let mut report = RestoreReport::default();
    let errors = Mutex::new(Vec::new());
    let fail = |path: &Path, e: &dyn std::fmt::Display| {
        errors.lock().expect("poisoned").push(FileWarning {
            path: path.to_string_lossy().into_owned(),
            error: e.to_string(),
        })
    };

    for item in items.iter().filter(|i| i.node.kind == NodeType::Dir) {
        make_dir(&target.join(&item.rel), opts.overwrite)?;
        report.dirs += 1;
    }

    // The first restored path of each hard-link group gets the content, the rest link to it.
    let mut link_first: HashMap<(u64, u64), usize> = HashMap::new();
    let mut links = Vec::new();
    let mut files = Vec::new();
    for (i, item) in items.iter().enumerate() {
        if item.node.kind != NodeType::File {
            continue;
        }
        if let Some((dev, _)) = item.node.links {
            if let Some(&first) = link_first.get(&(dev, item.node.inode)) {
                links.push((first, i));
                continue;
            }
            link_first.insert((dev, item.node.inode), i);
        }
        files.push(OutFile::new(target, i, item));
    }
    live.total_files.store(files.len() as u64, Relaxed);
    live.total_bytes.store(files.iter().map(|f| f.size).sum(), Relaxed);

    let mut chunks: Vec<(ChunkId, Vec<Piece>)> = Vec::new();
    let mut chunk_pos: HashMap<ChunkId, usize> = HashMap::new();
    for (f, out) in files.iter().enumerate() {
        let mut file_off = 0u64;
        for s in &items[out.item].node.content {
            let pos = *chunk_pos.entry(*s.id()).or_insert_with(|| {
                chunks.push((*s.id(), Vec::new()));
                chunks.len() - 1
            });
            chunks[pos].1.push(Piece { file: f, file_off, chunk_off: s.offset(), len: s.len() });
            file_off += s.len() as u64;
        }
    }
    drop(chunk_pos);

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(RESTORE_THREADS)
        .build()
        .map_err(|e| crate::error::invalid("thread pool", e.to_string()))?;
    let root = is_root();
    pool.install(|| {
        files.par_iter().filter(|f| f.size == 0).for_each(|f| f.finish(&items, root, live, &fail));
        chunks.par_iter().for_each(|(id, pieces)| {
            let data = repo.read_chunk(id);
            for p in pieces {
                let out = &files[p.file];
                let written = match &data {
                    Ok(d) if p.chunk_off + p.len <= d.len() => out.write(&d[p.chunk_off..p.chunk_off + p.len], p.file_off),
                    Ok(_) => Err(io::Error::other(format!("chunk {id} is shorter than the slice the tree names"))),
                    Err(e) => Err(io::Error::other(e.to_string())),
                };
                if let Err(e) = written
                    && !out.failed.swap(true, Relaxed)
                {
                    fail(&out.dest, &format!("not restored: {e}"));
                }
                live.bytes.fetch_add(p.len as u64, Relaxed);
                if out.remaining.fetch_sub(p.len as u64, Relaxed) == p.len as u64 {
                    out.finish(&items, root, live, &fail);
                }
            }
        });
    });
    report.files = files.iter().filter(|f| !f.failed.load(Relaxed)).count() as u64;
    report.bytes = files.iter().filter(|f| !f.failed.load(Relaxed)).map(|f| f.size).sum();

    for (first, i) in links {
        let (src, dest) = (target.join(&items[first].rel), target.join(&items[i].rel));
        let linked = replace_with(&dest, opts.overwrite, || fs::hard_link(&src, &dest));
        match linked {
            Ok(()) => report.files += 1,
            Err(e) => fail(&dest, &format!("could not create hard link to {}: {e}", src.display())),
        }
    }
    for item in items.iter().filter(|i| !matches!(i.node.kind, NodeType::File | NodeType::Dir)) {
        let dest = target.join(&item.rel);
        match replace_with(&dest, opts.overwrite, || make_special(&dest, &item.node)) {
            Ok(()) => {
                report.others += 1;
                for e in set_metadata(Target::Path(&dest), &item.node, root) {
                    fail(&dest, &e);
                }
            }
            Err(e) => fail(&dest, &format!("could not create {:?}: {e}", item.node.kind)),
        }
    }
    for item in items.iter().rev().filter(|i| i.node.kind == NodeType::Dir) {
        let dest = target.join(&item.rel);
        for e in set_metadata(Target::Path(&dest), &item.node, root) {
            fail(&dest, &e);
        }
    }
    report.errors = errors.into_inner().expect("poisoned");
    Ok(report)
}

struct Piece {
    file: usize,
    file_off: u64,
    chunk_off: usize,
    len: usize,
}

enum Handle {
    NotOpen,
    /// `anonymous`: an `O_TMPFILE` file, named at the end by a link; else it is at `tmp`.
    Open { file: File, anonymous: bool },
    Closed,
}

struct OutFile {
    item: usize,
    dest: PathBuf,
    tmp: PathBuf,
    size: u64,
    /// All-zero blocks are left as holes (the file was sparse when backed up).
    holes: bool,
    remaining: AtomicU64,
    handle: Mutex<Handle>,
    failed: AtomicBool,
}

impl OutFile {
    fn new(target: &Path, item: usize, it: &Item) -> Self {
        let dest = target.join(&it.rel);
        let tmp = dest.with_file_name(format!(".tessera-restore-{item}"));
        let size = it.node.content.iter().map(|s| s.len() as u64).sum();
        OutFile { item, dest, tmp, size, holes: it.node.sparse, remaining: AtomicU64::new(size), handle: Mutex::new(Handle::NotOpen), failed: AtomicBool::new(false) }
    }

    /// The file to write and whether it is anonymous.
    fn open(&self) -> io::Result<(File, bool)> {
        let dir = self.dest.parent().expect("restored files live in a directory");
        let (file, anonymous) = match crate::tmpfile::create(dir, 0o600)? {
            Some(f) => (f, true),
            None => {
                let f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&self.tmp)?;
                (f, false)
            }
        };
        // Setting the length first leaves unwritten (all-zero) ranges of a sparse file as holes.
        file.set_len(self.size)?;
        Ok((file, anonymous))
    }

    /// Names a complete file: links an unnamed one, renames a temp one. A file already at
    /// `dest` (restoring with --overwrite) is replaced.
    fn name(&self, file: &File, anonymous: bool) -> io::Result<()> {
        if anonymous {
            if crate::tmpfile::link(file, &self.dest)? {
                return Ok(());
            }
            let _ = fs::remove_file(&self.tmp);
            if !crate::tmpfile::link(file, &self.tmp)? {
                return Err(io::Error::other("cannot link the restored file into place"));
            }
        }
        fs::rename(&self.tmp, &self.dest)
    }

    fn write(&self, data: &[u8], offset: u64) -> io::Result<()> {
        if self.failed.load(Relaxed) {
            return Ok(());
        }
        let mut h = self.handle.lock().expect("poisoned");
        if matches!(*h, Handle::NotOpen) {
            let (file, anonymous) = self.open()?;
            *h = Handle::Open { file, anonymous };
        }
        let Handle::Open { file: f, .. } = &*h else {
            return Err(io::Error::other("file already closed"));
        };
        if !self.holes {
            return f.write_all_at(data, offset);
        }
        for (start, end) in data_runs(data, offset) {
            f.write_all_at(&data[start..end], offset + start as u64)?;
        }
        Ok(())
    }

    /// Closes, applies metadata and renames into place; a failed file's temp is removed.
    fn finish(&self, items: &[Item], root: bool, live: &RestoreLive, fail: &(dyn Fn(&Path, &dyn std::fmt::Display) + Sync)) {
        let handle = std::mem::replace(&mut *self.handle.lock().expect("poisoned"), Handle::Closed);
        if self.failed.load(Relaxed) {
            drop(handle);
            let _ = fs::remove_file(&self.tmp);
            return;
        }
        let opened = match handle {
            Handle::Open { file, anonymous } => Ok((file, anonymous)),
            _ => self.open(),
        };
        let (file, anonymous) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                self.failed.store(true, Relaxed);
                fail(&self.dest, &format!("not restored: {e}"));
                return;
            }
        };
        for e in set_metadata(Target::File(&file), &items[self.item].node, root) {
            fail(&self.dest, &e);
        }
        if let Err(e) = self.name(&file, anonymous) {
            self.failed.store(true, Relaxed);
            let _ = fs::remove_file(&self.tmp);
            fail(&self.dest, &format!("not restored: {e}"));
            return;
        }
        live.files.fetch_add(1, Relaxed);
    }
}

/// In a sparse file, filesystem blocks that are all zero are left as holes (the file was
/// sized up front), so it stays sparse. Returns the byte ranges of `data` to write, with block
/// boundaries aligned to the file offset `offset`.
fn data_runs(data: &[u8], offset: u64) -> Vec<(usize, usize)> {
    const BLOCK: u64 = 4096;
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut start = 0usize;
    while start < data.len() {
        let to_boundary = (BLOCK - (offset + start as u64) % BLOCK) as usize;
        let end = (start + to_boundary).min(data.len());
        if data[start..end].iter().any(|&b| b != 0) {
            match runs.last_mut() {
                Some(last) if last.1 == start => last.1 = end,
                _ => runs.push((start, end)),
            }
        }
        start = end;
    }
    runs
}

fn check_conflicts(target: &Path, items: &[Item], overwrite: bool) -> Result<()> {
    if overwrite {
        return Ok(());
    }
    let paths: Vec<PathBuf> = items
        .iter()
        .filter_map(|i| {
            let p = target.join(&i.rel);
            let existing = fs::symlink_metadata(&p).ok()?;
            (i.node.kind != NodeType::Dir || !existing.is_dir()).then_some(p)
        })
        .collect();
    if paths.is_empty() {
        Ok(())
    } else {
        Err(Error::RestoreConflict { target: target.to_path_buf(), paths })
    }
}

/// Creates a directory, or accepts an existing real one: never one reached through a symlink.
fn make_dir(path: &Path, overwrite: bool) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) if overwrite => fs::remove_file(path).at(path)?,
        Ok(_) => return Err(Error::RestoreConflict { target: path.to_path_buf(), paths: vec![path.to_path_buf()] }),
        Err(_) => {}
    }
    fs::DirBuilder::new().mode(0o700).create(path).at(path)
}

use std::os::unix::fs::DirBuilderExt;

fn replace_with(dest: &Path, overwrite: bool, create: impl Fn() -> io::Result<()>) -> io::Result<()> {
    if overwrite && fs::symlink_metadata(dest).is_ok_and(|m| !m.is_dir()) {
        fs::remove_file(dest)?;
    }
    create()
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::other("path contains NUL"))
}

fn make_special(dest: &Path, node: &Node) -> io::Result<()> {
    let c = cpath(dest)?;
    let (kind, what) = match node.kind {
        NodeType::Symlink => {
            let target = node.target.clone().unwrap_or(RawBytes(Vec::new()));
            return std::os::unix::fs::symlink(target.as_os_str(), dest);
        }
        NodeType::Fifo => (libc::S_IFIFO, "mkfifo"),
        NodeType::Chardev => (libc::S_IFCHR, "mknod"),
        NodeType::Blockdev => (libc::S_IFBLK, "mknod"),
        _ => return Err(io::Error::other("not a special file")),
    };
    let mode = kind | (node.mode & 0o777) as libc::mode_t;
    if unsafe { libc::mknod(c.as_ptr(), mode, node.rdev as libc::dev_t) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// What metadata calls act on: an open file (fewer path lookups), or a path that is not
/// followed if it is a symlink.
enum Target<'a> {
    File(&'a File),
    Path(&'a Path),
}

/// Owner (as root), xattrs, mode, then times (last, since the others touch ctime only).
/// Returns what could not be set.
fn set_metadata(target: Target, node: &Node, root: bool) -> Vec<String> {
    use std::os::fd::AsRawFd;
    use xattr::FileExt as _;
    let mut errors = Vec::new();
    let c = match &target {
        Target::Path(p) => match cpath(p) {
            Ok(c) => Some(c),
            Err(_) => return vec!["path contains NUL".into()],
        },
        Target::File(_) => None,
    };
    let call = |r: libc::c_int, what: &str, errors: &mut Vec<String>| {
        if r != 0 {
            errors.push(format!("{what}: {}", io::Error::last_os_error()));
        }
    };
    let symlink = node.kind == NodeType::Symlink;
    if root {
        let r = match (&target, &c) {
            (Target::File(f), _) => unsafe { libc::fchown(f.as_raw_fd(), node.uid, node.gid) },
            (_, Some(c)) => unsafe { libc::lchown(c.as_ptr(), node.uid, node.gid) },
            _ => unreachable!("paths have a C string"),
        };
        call(r, "chown", &mut errors);
    }
    for x in &node.xattrs {
        let user = x.name.0.starts_with(b"user.");
        if !root && !user {
            continue; // other namespaces need privileges a non-root restore does not have
        }
        let set = match &target {
            Target::File(f) => f.set_xattr(x.name.as_os_str(), &x.value.0),
            Target::Path(p) => xattr::set(p, x.name.as_os_str(), &x.value.0),
        };
        // Linux allows no user.* xattrs on symlinks; such a node cannot come from Linux.
        if let Err(e) = set
            && !(symlink && user)
        {
            errors.push(format!("xattr {}: {e}", x.name.lossy()));
        }
    }
    if !symlink {
        let mode = node.mode as libc::mode_t;
        let r = match (&target, &c) {
            (Target::File(f), _) => unsafe { libc::fchmod(f.as_raw_fd(), mode) },
            (_, Some(c)) => unsafe { libc::chmod(c.as_ptr(), mode) },
            _ => unreachable!("paths have a C string"),
        };
        call(r, "chmod", &mut errors);
    }
    let times = [
        libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        libc::timespec {
            tv_sec: node.mtime_ns.div_euclid(1_000_000_000) as libc::time_t,
            tv_nsec: node.mtime_ns.rem_euclid(1_000_000_000) as libc::c_long,
        },
    ];
    let r = match (&target, &c) {
        (Target::File(f), _) => unsafe { libc::futimens(f.as_raw_fd(), times.as_ptr()) },
        (_, Some(c)) => unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) },
        _ => unreachable!("paths have a C string"),
    };
    call(r, "set mtime", &mut errors);
    errors
}

#[cfg(test)]
mod tests {
    use super::data_runs;

    #[test]
    fn zero_blocks_are_skipped_and_data_blocks_merged() {
        let mut data = vec![0u8; 5 * 4096];
        data[10] = 1;
        data[4096 * 2 + 5] = 1;
        data[4096 * 3] = 1;
        assert_eq!(data_runs(&data, 0), vec![(0, 4096), (8192, 16384)]);
        // Unaligned start: the first block ends at the next file-offset boundary.
        assert_eq!(data_runs(&data[..100], 4000), vec![(0, 96)]);
        assert!(data_runs(&[0u8; 10_000], 123).is_empty());
    }
}
