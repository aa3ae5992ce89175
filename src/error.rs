//! The library's error type: every variant says what went wrong and where.

use std::path::PathBuf;

use crate::fingerprint::ChunkId;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a Tessera repository (no config file); create one with `tessera init`")]
    NotARepository(PathBuf),
    #[error("{0} already holds a repository (or other files); refusing to initialise over it")]
    AlreadyExists(PathBuf),
    #[error(
        "{path}: repository format version {found} is newer than this tessera supports ({supported}); upgrade tessera"
    )]
    NewerFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("{what} at {path} is malformed: {reason}")]
    Malformed {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("chunk {id} is damaged: {reason}")]
    ChunkDamaged { id: ChunkId, reason: String },
    #[error("chunk {0} is missing from the chunk store")]
    ChunkMissing(ChunkId),
    #[error("tree {id} is malformed: {reason}")]
    BadTree { id: ChunkId, reason: String },
    #[error("index shard {path}: {source}")]
    Index {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("no snapshot matches {0:?} (see `tessera snapshots`)")]
    SnapshotNotFound(String),
    #[error("snapshot id prefix {prefix:?} is ambiguous: it matches {}", .matches.join(", "))]
    AmbiguousSnapshot { prefix: String, matches: Vec<String> },
    #[error("source path {0} does not exist")]
    SourceMissing(PathBuf),
    #[error("path {path} is not in snapshot {snapshot}")]
    NotInSnapshot { path: String, snapshot: String },
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error(
        "restore target {target} already holds {} of the paths to restore (first: {}); pass --overwrite to replace them",
        .paths.len(), .paths[0].display()
    )]
    RestoreConflict { target: PathBuf, paths: Vec<PathBuf> },
    #[error("unsafe name {name:?} in tree {tree}: {reason}")]
    UnsafeName {
        tree: ChunkId,
        name: String,
        reason: &'static str,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Attaches the path an I/O error happened at.
pub trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: path.into(),
            source,
        })
    }
}

pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Error {
    Error::Invalid {
        what,
        reason: reason.into(),
    }
}
