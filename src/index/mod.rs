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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub id: ChunkId,
    pub raw_len: u64,
    pub stored_len: u64,
}

pub trait Index: Send + Sync {
    /// For each id, whether the index knows it. One batched query per shard.
    fn lookup(&self, ids: &[ChunkId]) -> Result<Vec<bool>>;
    /// Records chunks that are durable in the store. One batched write per shard.
    fn register(&self, entries: &[IndexEntry]) -> Result<()>;
    /// The current Bloom filter over the index (possibly stale, which is safe).
    fn filter(&self) -> Result<BloomFilter>;
    /// Publishes the filter with everything registered through this handle.
    fn flush_filter(&self) -> Result<()>;
    /// Replaces the whole index with `entries` (the store's contents).
    fn rebuild(&self, entries: &[IndexEntry]) -> Result<()>;
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
