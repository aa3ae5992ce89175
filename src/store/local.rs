//! A chunk store in a local directory: `objects/<2 hex>/<64 hex>`.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, IoContext, Result};
use crate::fingerprint::ChunkId;
use crate::store::ChunkStore;

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

impl ChunkStore for LocalStore {
    fn put(&self, id: &ChunkId, object: &[u8]) -> Result<()> {
        // Unique temp name per process and put, so concurrent writers never share a file.
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .tmp
            .join(format!("{}.{}.{seq}", id.to_hex(), std::process::id()));
        if !self.tmp.is_dir() {
            fs::create_dir_all(&self.tmp).at(&self.tmp)?;
        }
        let written = File::create(&tmp).and_then(|mut f| {
            f.write_all(object)?;
            // Start writeback now so the disk works while we compute; `sync` then has little
            // left to wait for.
            unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
            Ok(())
        });
        // Rename replaces atomically; a replaced object had the same plaintext or was damaged.
        let dest = self.path(id);
        let result = written.at(&tmp).and_then(|()| rename_into(&tmp, &dest));
        if result.is_err() {
            // A partial temp file must not hold on to the space that just ran out.
            let _ = fs::remove_file(&tmp);
        }
        result
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

    fn sync(&self) -> Result<()> {
        // One syncfs flushes every object written since the last one; far cheaper than an
        // fsync per object, and the index is only told about objects after it returns.
        let dir = File::open(&self.root).at(&self.root)?;
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error()).at(&self.root);
        }
        Ok(())
    }
}
