//! Chunk stores: where encoded chunk objects live, keyed by chunk id.

mod local;
pub mod object;

pub use local::LocalStore;

use crate::error::Result;
use crate::fingerprint::ChunkId;

/// A content-addressed object store. Puts are idempotent: the same id always carries the
/// same plaintext, so a racing or repeated put can only cost bandwidth.
pub trait ChunkStore: Send + Sync {
    /// Stores the object made of `parts` (in order) under `id`, replacing whatever is there
    /// (callers verify first).
    fn put(&self, id: &ChunkId, parts: &[&[u8]]) -> Result<()>;
    /// The encoded object, or `Error::ChunkMissing`.
    fn get(&self, id: &ChunkId) -> Result<Vec<u8>>;
    /// The object's stored size, if it exists.
    fn stat(&self, id: &ChunkId) -> Result<Option<u64>>;
    /// Every object id with its stored size.
    fn list(&self, visit: &mut dyn FnMut(ChunkId, u64) -> Result<()>) -> Result<()>;
    /// Makes these objects durable (they were put, or found present, by this process).
    fn sync(&self, ids: &[ChunkId]) -> Result<()>;
}
