//! Repository statistics: logical bytes against what the store holds.

use std::collections::HashSet;

use serde::Serialize;

use crate::error::Result;
use crate::repo::Repository;

#[derive(Debug, Serialize)]
pub struct RepoStats {
    pub snapshots: usize,
    /// Sum over all snapshots of the bytes of their files.
    pub logical_bytes: u64,
    /// Distinct chunks (file data and trees) and their plaintext bytes.
    pub unique_chunks: u64,
    pub unique_bytes: u64,
    /// Objects in the store and the bytes they take (after compression).
    pub objects: u64,
    pub stored_bytes: u64,
    /// logical / unique: what deduplication saves.
    pub dedup_ratio: f64,
    /// unique / stored: what compression saves.
    pub compression_ratio: f64,
    /// logical / stored.
    pub total_ratio: f64,
}

pub fn stats(repo: &Repository) -> Result<RepoStats> {
    let snapshots = repo.snapshots()?;
    let logical_bytes = snapshots.iter().map(|(_, s)| s.summary.total_bytes).sum();
    let (mut objects, mut stored_bytes) = (0u64, 0u64);
    let mut ids = HashSet::new();
    repo.store().list(&mut |id, len| {
        objects += 1;
        stored_bytes += len;
        ids.insert(id);
        Ok(())
    })?;
    let (mut unique_chunks, mut unique_bytes) = (0u64, 0u64);
    repo.index().entries(&mut |e| {
        if ids.contains(&e.id) {
            unique_chunks += 1;
            unique_bytes += e.raw_len;
        }
    })?;
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Ok(RepoStats {
        snapshots: snapshots.len(),
        logical_bytes,
        unique_chunks,
        unique_bytes,
        objects,
        stored_bytes,
        dedup_ratio: ratio(logical_bytes, unique_bytes),
        compression_ratio: ratio(unique_bytes, stored_bytes),
        total_ratio: ratio(logical_bytes, stored_bytes),
    })
}
