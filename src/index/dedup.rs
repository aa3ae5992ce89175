//! The client's dedup check: seen-this-run set, then Bloom filter, then batched index query.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::error::Result;
use crate::fingerprint::ChunkId;
use crate::index::{BloomFilter, Index};

pub struct Deduper {
    index: Arc<dyn Index>,
    filter: BloomFilter,
    seen: Mutex<HashSet<ChunkId>>,
}

impl Deduper {
    pub fn new(index: Arc<dyn Index>) -> Result<Self> {
        let filter = index.filter()?;
        Ok(Deduper {
            index,
            filter,
            seen: Mutex::new(HashSet::new()),
        })
    }

    /// For each id, whether this caller must upload it. An id is handed out for upload at
    /// most once per run, so concurrent workers never store the same new chunk twice.
    pub fn claim_missing(&self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        let mut fresh: Vec<usize> = {
            let mut seen = self.seen.lock().expect("seen set poisoned");
            (0..ids.len()).filter(|&i| seen.insert(ids[i])).collect()
        };
        let mut upload = vec![false; ids.len()];
        let ask: Vec<usize> = fresh
            .iter()
            .copied()
            .filter(|&i| self.filter.may_contain(&ids[i]))
            .collect();
        if !ask.is_empty() {
            let query: Vec<ChunkId> = ask.iter().map(|&i| ids[i]).collect();
            let known = self.index.lookup(&query)?;
            let known: HashSet<usize> = ask
                .iter()
                .zip(known)
                .filter_map(|(&i, k)| k.then_some(i))
                .collect();
            fresh.retain(|i| !known.contains(i));
        }
        for i in fresh {
            upload[i] = true;
        }
        Ok(upload)
    }
}
