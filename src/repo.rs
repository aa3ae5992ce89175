//! A repository: config + chunk store + index + snapshot catalog, in one directory.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::chunker::{ChunkerParams, Cutter};
use crate::config::{CONFIG_FILE, Config};
use crate::error::{Error, IoContext, Result};
use crate::fingerprint::{ChunkId, HashAlgo};
use crate::index::{Index, IndexEntry, LocalIndex};
use crate::manifest::{Node, SNAPSHOT_VERSION, Snapshot, Subtree, Tree};
use crate::store::{ChunkStore, LocalStore, object};

const SNAPSHOTS: &str = "snapshots";

pub struct Repository {
    root: PathBuf,
    config: Config,
    store: Arc<dyn ChunkStore>,
    index: Arc<dyn Index>,
}

impl Repository {
    pub fn init(root: &Path, hash: HashAlgo, chunker: ChunkerParams) -> Result<Self> {
        Self::create(root, Config::new(hash, chunker))
    }

    /// Creates a repository with the given config (see `Config::new` for a fresh one).
    pub fn create(root: &Path, config: Config) -> Result<Self> {
        config.chunker.validate()?;
        if root.join(CONFIG_FILE).exists()
            || fs::read_dir(root).is_ok_and(|mut d| d.next().is_some())
        {
            return Err(Error::AlreadyExists(root.to_path_buf()));
        }
        fs::create_dir_all(root).at(root)?;
        LocalStore::create(&root.join("objects"))?;
        let snaps = root.join(SNAPSHOTS);
        fs::create_dir_all(&snaps).at(&snaps)?;
        LocalIndex::create(&root.join("index"), config.index_shards)?;
        // The config goes last: a repository without one is not a repository yet.
        write_atomic(&root.join(CONFIG_FILE), &config.to_bytes())?;
        Self::open(root)
    }

    pub fn open(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            return Err(Error::NotARepository(root.to_path_buf()));
        }
        let config = Config::load(root)?;
        let index = LocalIndex::open(&root.join("index"), config.index_shards)?;
        Ok(Repository {
            root: root.to_path_buf(),
            store: Arc::new(LocalStore::open(&root.join("objects"))),
            index: Arc::new(index),
            config,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn store(&self) -> &Arc<dyn ChunkStore> {
        &self.store
    }
    pub fn index(&self) -> &Arc<dyn Index> {
        &self.index
    }

    pub fn cutter(&self) -> Cutter {
        Cutter::FastCdc(self.config.chunker)
    }

    pub fn hash(&self, data: &[u8]) -> ChunkId {
        self.config.hash.hash(data)
    }

    /// Stores a chunk the index does not know. An object that is already there (left by a
    /// killed or concurrent run) is verified and reused rather than written again.
    /// Returns the index entry and whether bytes were written.
    pub fn store_chunk(&self, id: &ChunkId, data: &[u8]) -> Result<(IndexEntry, bool)> {
        let entry = |stored_len| IndexEntry {
            id: *id,
            raw_len: data.len() as u64,
            stored_len,
        };
        if let Some(len) = self.store.stat(id)?
            && self.read_chunk(id).is_ok()
        {
            return Ok((entry(len), false));
        }
        thread_local! {
            static COMPRESSED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        COMPRESSED.with_borrow_mut(|buf| {
            let object = object::encode_into(data, self.config.zstd_level, buf);
            self.store.put(id, &object.parts())?;
            Ok((entry(object.stored_len() as u64), true))
        })
    }

    /// A chunk's plaintext, verified against its id.
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        object::decode(id, self.config.hash, &self.store.get(id)?)
    }

    pub fn load_tree(&self, id: &ChunkId) -> Result<Tree> {
        Tree::from_bytes(id, &self.read_chunk(id)?)
    }

    /// A directory's entries, wherever they are stored.
    pub fn open_subtree(&self, subtree: Subtree) -> Result<Vec<Node>> {
        match subtree {
            Subtree::Chunk(id) => Ok(self.load_tree(&id)?.nodes),
            Subtree::Inline(nodes) => Ok(nodes),
        }
    }

    /// All snapshots, oldest first.
    pub fn snapshots(&self) -> Result<Vec<(String, Snapshot)>> {
        let dir = self.root.join(SNAPSHOTS);
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).at(&dir)? {
            let entry = entry.at(&dir)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                out.push((name.clone(), self.load_snapshot(&name)?));
            }
        }
        out.sort_by(|a, b| a.1.time.cmp(&b.1.time).then_with(|| a.0.cmp(&b.0)));
        Ok(out)
    }

    pub fn load_snapshot(&self, id: &str) -> Result<Snapshot> {
        let path = self.root.join(SNAPSHOTS).join(id);
        let bytes = fs::read(&path).at(&path)?;
        let malformed = |reason: String| Error::Malformed {
            what: "snapshot",
            path: path.clone(),
            reason,
        };
        if blake3::hash(&bytes).to_hex().as_str() != id {
            return Err(malformed("content does not match its id".into()));
        }
        let snap: Snapshot = serde_json::from_slice(&bytes).map_err(|e| malformed(e.to_string()))?;
        if snap.version > SNAPSHOT_VERSION {
            return Err(malformed(format!(
                "snapshot format version {} is newer than this tessera's {SNAPSHOT_VERSION}",
                snap.version
            )));
        }
        Ok(snap)
    }

    /// Resolves `latest` or a unique id prefix.
    pub fn find_snapshot(&self, spec: &str) -> Result<(String, Snapshot)> {
        let mut all = self.snapshots()?;
        if spec == "latest" {
            return all.pop().ok_or_else(|| Error::SnapshotNotFound(spec.into()));
        }
        let mut matches: Vec<_> = all.into_iter().filter(|(id, _)| id.starts_with(spec)).collect();
        match matches.len() {
            1 if !spec.is_empty() => Ok(matches.pop().expect("one match")),
            0 => Err(Error::SnapshotNotFound(spec.into())),
            _ => Err(Error::AmbiguousSnapshot {
                prefix: spec.into(),
                matches: matches.into_iter().map(|(id, _)| id[..12].to_string()).collect(),
            }),
        }
    }

    /// Makes a snapshot visible. Callers must have made everything it references durable.
    pub fn commit_snapshot(&self, snapshot: &Snapshot) -> Result<String> {
        let bytes = snapshot.to_bytes();
        let id = blake3::hash(&bytes).to_hex().to_string();
        write_atomic(&self.root.join(SNAPSHOTS).join(&id), &bytes)?;
        Ok(id)
    }
}

/// Temp file, fsync, rename, fsync the directory: the file appears whole or not at all.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().expect("file in a directory");
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        path.file_name().expect("file name").to_string_lossy(),
        std::process::id()
    ));
    let mut f = File::create(&tmp).at(&tmp)?;
    f.write_all(bytes).at(&tmp)?;
    f.sync_all().at(&tmp)?;
    fs::rename(&tmp, path).at(path)?;
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}
