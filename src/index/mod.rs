//! The fingerprint index: which chunks the store holds, split into shards by id prefix.
//!
//! The index is derived data (invariant 5): it may say "absent" for a stored chunk, never
//! "present" for one that is not durable, and it can be rebuilt from the store.

mod bloom;
mod dedup;
mod sqlite;

pub use bloom::BloomFilter;
pub use dedup::Deduper;
pub use sqlite::LocalIndex;

use crate::error::Result;
use crate::fingerprint::ChunkId;
use crate::manifest::Slice;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub id: ChunkId,
    pub raw_len: u64,
    pub stored_len: u64,
}

/// A small file's content under the hash of its bytes, so identical small files anywhere in
/// the repository (any path, any machine) share one copy of their bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub hash: ChunkId,
    pub content: Vec<Slice>,
}

pub trait Index: Send + Sync {
    /// For each id, whether the index knows it. One batched query per shard.
    fn lookup(&self, ids: &[ChunkId]) -> Result<Vec<bool>>;
    /// Records chunks that are durable in the store. One batched write per shard.
    fn register(&self, entries: &[IndexEntry]) -> Result<()>;
    /// For each whole-content hash, the slices of a stored file with those bytes.
    fn lookup_files(&self, hashes: &[ChunkId]) -> Result<Vec<Option<Vec<Slice>>>>;
    /// Records small files whose chunks are all durable and registered.
    fn register_files(&self, files: &[FileEntry]) -> Result<()>;
    /// The current Bloom filter over the index (possibly stale, which is safe).
    fn filter(&self) -> Result<BloomFilter>;
    /// Publishes the filter with everything registered through this handle.
    fn flush_filter(&self) -> Result<()>;
    /// Replaces the whole index with `chunks` (the store's contents) and `files` (from the
    /// snapshots' trees).
    fn rebuild(&self, chunks: &[IndexEntry], files: &[FileEntry]) -> Result<()>;
    /// Every entry, for statistics and checks.
    fn entries(&self, visit: &mut dyn FnMut(IndexEntry)) -> Result<()>;
}

/// Splits ids by owning shard, remembering each id's position in the batch.
pub(crate) fn by_shard(ids: &[ChunkId], shard_count: u32) -> Vec<Vec<usize>> {
    let mut groups = vec![Vec::new(); shard_count as usize];
    for (i, id) in ids.iter().enumerate() {
        groups[id.shard(shard_count) as usize].push(i);
    }
    groups
}
