//! A chunk store in a local directory: `objects/<2 hex>/<64 hex>`.

use std::fs::{self, File};
use std::io::{ErrorKind, IoSlice, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, IoContext, Result};
use crate::fingerprint::ChunkId;
use crate::store::ChunkStore;
use crate::tmpfile;

pub struct LocalStore {
    root: PathBuf,
    tmp: PathBuf,
    tmp_seq: AtomicU64,
}

impl LocalStore {
    /// Creates the fan-out directories of a new store.
    pub fn create(root: &Path) -> Result<Self> {
        for i in 0..=255u8 {
            let dir = root.join(hex::encode([i]));
            fs::create_dir_all(&dir).at(&dir)?;
        }
        let tmp = root.join("tmp");
        fs::create_dir_all(&tmp).at(&tmp)?;
        Ok(Self::open(root))
    }

    pub fn open(root: &Path) -> Self {
        LocalStore {
            root: root.to_path_buf(),
            tmp: root.join("tmp"),
            tmp_seq: AtomicU64::new(0),
        }
    }

    fn path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.root.join(&hex[..2]).join(hex)
    }
}

/// Renames into place, recreating a missing fan-out directory.
fn rename_into(tmp: &Path, dest: &Path) -> Result<()> {
    match fs::rename(tmp, dest) {
        Err(e) if e.kind() == ErrorKind::NotFound && tmp.exists() => {
            let dir = dest.parent().expect("objects live in a fan-out directory");
            fs::create_dir_all(dir).at(dir)?;
            fs::rename(tmp, dest).at(dest)
        }
        other => other.at(dest),
    }
}

impl LocalStore {
    /// The common case: the object is new. An anonymous file in the object's own directory,
    /// linked under its name only once complete, is a conditional create. False when this
    /// filesystem cannot do it, or when the name already exists; the caller then replaces.
    fn create_new(&self, dest: &Path, parts: &[&[u8]]) -> Result<bool> {
        let dir = dest.parent().expect("objects live in a fan-out directory");
        let file = match tmpfile::create(dir, 0o666) {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                fs::create_dir_all(dir).at(dir)?;
                tmpfile::create(dir, 0o666)
            }
            other => other,
        };
        let Some(mut file) = file.at(dir)? else { return Ok(false) };
        write_and_start_writeback(&mut file, parts).at(dest)?;
        tmpfile::link(&file, dest).at(dest)
    }

    /// Writes a temp file and renames it over `dest`, replacing whatever is there.
    fn replace(&self, id: &ChunkId, dest: &Path, parts: &[&[u8]]) -> Result<()> {
        // Unique temp name per process and put, so concurrent writers never share a file.
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .tmp
            .join(format!("{}.{}.{seq}", id.to_hex(), std::process::id()));
        if !self.tmp.is_dir() {
            fs::create_dir_all(&self.tmp).at(&self.tmp)?;
        }
        let written = File::create(&tmp).and_then(|mut f| write_and_start_writeback(&mut f, parts));
        let result = written.at(&tmp).and_then(|()| rename_into(&tmp, dest));
        if result.is_err() {
            // A partial temp file must not hold on to the space that just ran out.
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

/// Runs blocking `op` over `items` on a few threads; the first error wins.
fn in_parallel<T: Sync>(items: &[T], op: impl Fn(&T) -> Result<()> + Sync) -> Result<()> {
    const SYNC_THREADS: usize = 8;
    let per_thread = items.len().div_ceil(SYNC_THREADS).max(1);
    std::thread::scope(|s| {
        let workers: Vec<_> = items.chunks(per_thread).map(|part| s.spawn(|| part.iter().try_for_each(&op))).collect();
        workers.into_iter().try_for_each(|w| w.join().expect("sync thread panicked"))
    })
}

fn write_and_start_writeback(f: &mut File, parts: &[&[u8]]) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match f.write_vectored(rest) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    // Start writeback now so the disk works while we compute; `sync` then has little left to
    // wait for.
    unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    Ok(())
}

impl ChunkStore for LocalStore {
    fn put(&self, id: &ChunkId, parts: &[&[u8]]) -> Result<()> {
        let dest = self.path(id);
        if self.create_new(&dest, parts)? {
            return Ok(());
        }
        // Exists: a concurrent writer's identical object, or a damaged one being replaced.
        self.replace(id, &dest, parts)
    }

    fn get(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let path = self.path(id);
        fs::read(&path).map_err(|e| match e.kind() {
            ErrorKind::NotFound => Error::ChunkMissing(*id),
            _ => Error::Io { path, source: e },
        })
    }

    fn stat(&self, id: &ChunkId) -> Result<Option<u64>> {
        let path = self.path(id);
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io { path, source: e }),
        }
    }

    fn list(&self, visit: &mut dyn FnMut(ChunkId, u64) -> Result<()>) -> Result<()> {
        for i in 0..=255u8 {
            let dir = self.root.join(hex::encode([i]));
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                // A fan-out directory that was never needed (or not kept by a copy) is empty.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e).at(&dir),
            };
            for entry in entries {
                let entry = entry.at(&dir)?;
                let name = entry.file_name();
                let Some(id) = name.to_str().and_then(|n| ChunkId::from_hex(n).ok()) else {
                    continue;
                };
                let len = entry.metadata().at(entry.path())?.len();
                visit(id, len)?;
            }
        }
        Ok(())
    }

    fn sync(&self, ids: &[ChunkId]) -> Result<()> {
        // One fsync per object and per directory, not one syncfs: syncfs would also wait for
        // every other dirty file on the filesystem (a source tree just copied in, say). They
        // run a few at a time, objects and directories together (the names are linked
        // already), so the block layer can merge their cache flushes.
        let mut targets: Vec<(PathBuf, Option<&ChunkId>)> = ids.iter().map(|id| (self.path(id), Some(id))).collect();
        let dirs: std::collections::BTreeSet<PathBuf> = targets
            .iter()
            .map(|(path, _)| path.parent().expect("objects live in a fan-out directory").to_path_buf())
            .collect();
        targets.extend(dirs.into_iter().map(|d| (d, None)));
        in_parallel(&targets, |(path, id)| {
            File::open(path).and_then(|f| f.sync_all()).map_err(|e| match (e.kind(), id) {
                (ErrorKind::NotFound, Some(id)) => Error::ChunkMissing(**id),
                _ => Error::Io { path: path.clone(), source: e },
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::HashAlgo;

    fn store() -> (tempfile::TempDir, LocalStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::create(&dir.path().join("objects")).unwrap();
        (dir, store)
    }

    fn objects_and_temps(root: &Path) -> (usize, usize) {
        let mut objects = 0;
        for entry in walkdir(root) {
            let name = entry.file_name().unwrap().to_str().unwrap().to_string();
            if ChunkId::from_hex(&name).is_ok() {
                objects += 1;
            }
        }
        let temps = fs::read_dir(root.join("tmp")).map_or(0, |d| d.count());
        (objects, temps)
    }

    fn walkdir(root: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in fs::read_dir(root).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walkdir(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn put_creates_the_object_and_leaves_no_temp_file() {
        let (dir, store) = store();
        let id = HashAlgo::Blake3.hash(b"chunk");
        store.put(&id, &[b"object ", b"bytes"]).unwrap();
        assert_eq!(store.get(&id).unwrap(), b"object bytes");
        assert_eq!(objects_and_temps(&dir.path().join("objects")), (1, 0));
    }

    #[test]
    fn put_replaces_a_damaged_object() {
        let (dir, store) = store();
        let id = HashAlgo::Blake3.hash(b"chunk");
        store.put(&id, &[b"damaged"]).unwrap();
        store.put(&id, &[b"object ", b"bytes"]).unwrap();
        assert_eq!(store.get(&id).unwrap(), b"object bytes");
        assert_eq!(objects_and_temps(&dir.path().join("objects")), (1, 0));
    }

    #[test]
    fn put_recreates_a_missing_fan_out_directory() {
        let (_dir, store) = store();
        let id = HashAlgo::Blake3.hash(b"chunk");
        fs::remove_dir(store.path(&id).parent().unwrap()).unwrap();
        store.put(&id, &[b"object ", b"bytes"]).unwrap();
        assert_eq!(store.get(&id).unwrap(), b"object bytes");
    }

    #[test]
    fn racing_puts_of_one_chunk_leave_one_whole_object() {
        let (dir, store) = store();
        let id = HashAlgo::Blake3.hash(b"chunk");
        let object = vec![7u8; 1 << 20];
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| store.put(&id, &[&object[..1000], &object[1000..]]).unwrap());
            }
        });
        assert_eq!(store.get(&id).unwrap(), object);
        assert_eq!(objects_and_temps(&dir.path().join("objects")), (1, 0));
    }

    #[test]
    fn sync_names_an_object_that_is_not_there() {
        let (_dir, store) = store();
        let stored = HashAlgo::Blake3.hash(b"stored");
        let missing = HashAlgo::Blake3.hash(b"never stored");
        store.put(&stored, &[b"object bytes"]).unwrap();
        store.sync(&[stored]).unwrap();
        match store.sync(&[stored, missing]) {
            Err(Error::ChunkMissing(id)) => assert_eq!(id, missing),
            other => panic!("expected ChunkMissing, got {other:?}"),
        }
    }
}
