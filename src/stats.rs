//! Repository statistics: logical bytes against what the store holds, and the same chunk,
//! index and Bloom filter figures `analyze` estimates, measured.

use std::collections::HashSet;
use std::fs;

use serde::Serialize;

use crate::error::Result;
use crate::fingerprint::ChunkId;
use crate::manifest::Subtree;
use crate::repo::Repository;

#[derive(Debug, Serialize)]
pub struct RepoStats {
    pub snapshots: usize,
    /// Sum over all snapshots of the bytes of their files.
    pub logical_bytes: u64,
    /// Distinct chunks (file data and trees) and their plaintext bytes.
    pub unique_chunks: u64,
    pub unique_bytes: u64,
    /// The part of the above that is trees (directory listings) reachable from snapshots;
    /// the rest is file data, what `analyze` calls unique chunks and bytes.
    pub tree_chunks: u64,
    pub tree_bytes: u64,
    pub data_chunks: u64,
    pub data_bytes: u64,
    /// Plaintext sizes of the distinct data chunks.
    pub chunk_sizes: ChunkSizes,
    /// Objects in the store and the bytes they take (after compression).
    pub objects: u64,
    pub stored_bytes: u64,
    /// The index shards (databases and write-ahead logs) and the Bloom filter file on disk.
    pub index_bytes: u64,
    pub bloom_bytes: u64,
    /// logical / unique: what deduplication saves.
    pub dedup_ratio: f64,
    /// unique / stored: what compression saves.
    pub compression_ratio: f64,
    /// logical / stored.
    pub total_ratio: f64,
}

/// Mean, median and 99th percentile of chunk sizes in bytes (0 when there are none).
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize)]
pub struct ChunkSizes {
    pub mean: f64,
    pub median: u64,
    pub p99: u64,
}

/// Sorts `sizes` in place; the median of an even count is the lower middle one, the p99
/// the smallest size at least 99% of chunks do not exceed.
pub fn chunk_sizes(sizes: &mut [u32]) -> ChunkSizes {
    if sizes.is_empty() {
        return ChunkSizes::default();
    }
    sizes.sort_unstable();
    let n = sizes.len();
    let sum: u64 = sizes.iter().map(|&s| u64::from(s)).sum();
    ChunkSizes {
        mean: sum as f64 / n as f64,
        median: u64::from(sizes[(n - 1) / 2]),
        p99: u64::from(sizes[(n * 99).div_ceil(100) - 1]),
    }
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
    let trees = tree_ids(repo, snapshots.iter().map(|(_, s)| s.tree));
    let (mut unique_chunks, mut unique_bytes, mut tree_bytes) = (0u64, 0u64, 0u64);
    let mut sizes = Vec::new();
    repo.index().entries(&mut |e| {
        if ids.contains(&e.id) {
            unique_chunks += 1;
            unique_bytes += e.raw_len;
            if trees.contains(&e.id) {
                tree_bytes += e.raw_len;
            } else {
                sizes.push(u32::try_from(e.raw_len).unwrap_or(u32::MAX));
            }
        }
    })?;
    let (index_bytes, bloom_bytes) = index_files(repo);
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Ok(RepoStats {
        snapshots: snapshots.len(),
        logical_bytes,
        unique_chunks,
        unique_bytes,
        tree_chunks: unique_chunks - sizes.len() as u64,
        tree_bytes,
        data_chunks: sizes.len() as u64,
        data_bytes: unique_bytes - tree_bytes,
        chunk_sizes: chunk_sizes(&mut sizes),
        objects,
        stored_bytes,
        index_bytes,
        bloom_bytes,
        dedup_ratio: ratio(logical_bytes, unique_bytes),
        compression_ratio: ratio(unique_bytes, stored_bytes),
        total_ratio: ratio(logical_bytes, stored_bytes),
    })
}

/// Every distinct tree reachable from the roots. Trees are small and each is read once,
/// so this costs a fraction of what `check` does; an unreadable tree is `check`'s to report.
fn tree_ids(repo: &Repository, roots: impl Iterator<Item = ChunkId>) -> HashSet<ChunkId> {
    let mut seen = HashSet::new();
    let mut stack: Vec<Subtree> = roots.map(Subtree::Chunk).collect();
    while let Some(sub) = stack.pop() {
        if let Subtree::Chunk(id) = &sub
            && !seen.insert(*id)
        {
            continue;
        }
        if let Ok(nodes) = repo.open_subtree(sub) {
            stack.extend(nodes.into_iter().filter_map(|mut n| n.take_subtree()));
        }
    }
    seen
}

/// Bytes of the index directory: (shard databases and their write-ahead logs, Bloom filter).
/// The `-shm` files are left out: SQLite's shared-memory scratch, there only while open.
fn index_files(repo: &Repository) -> (u64, u64) {
    let (mut shards, mut bloom) = (0u64, 0u64);
    let Ok(dir) = fs::read_dir(repo.root().join("index")) else { return (0, 0) };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let len = entry.metadata().map_or(0, |m| m.len());
        if name == "bloom" {
            bloom = len;
        } else if name.starts_with("shard-") && !name.ends_with("-shm") {
            shards += len;
        }
    }
    (shards, bloom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_distribution() {
        assert_eq!(chunk_sizes(&mut []), ChunkSizes::default());
        let mut sizes: Vec<u32> = (1..=100).rev().collect();
        let s = chunk_sizes(&mut sizes);
        assert_eq!((s.mean, s.median, s.p99), (50.5, 50, 99));
        assert_eq!(chunk_sizes(&mut [7]).p99, 7);
    }
}
