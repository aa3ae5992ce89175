//! Integrity: `check` (structure, and with `read_data` every chunk re-hashed) and
//! rebuilding the derived index from the chunk store.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use rayon::prelude::*;
use serde::Serialize;

use crate::error::Result;
use crate::fingerprint::ChunkId;
use crate::index::{FileEntry, IndexEntry};
use crate::manifest::{NodeType, Slice, Subtree};
use crate::repo::Repository;
use crate::store::object;

#[derive(Debug, Default, Serialize)]
pub struct CheckReport {
    pub snapshots: usize,
    pub trees: usize,
    pub objects: u64,
    pub objects_read: u64,
    pub problems: Vec<String>,
    pub damaged: Vec<DamagedChunk>,
}

#[derive(Debug, Serialize)]
pub struct DamagedChunk {
    pub id: ChunkId,
    pub reason: String,
    /// (snapshot id, path) of every file that uses the chunk.
    pub affected: Vec<(String, String)>,
}

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty() && self.damaged.is_empty()
    }
}

/// What a snapshot's trees reference: every tree and every file chunk, by path.
struct Walked {
    trees: HashSet<ChunkId>,
    chunks: HashSet<ChunkId>,
}

pub fn check(repo: &Repository, read_data: bool, progress: &AtomicU64) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let mut stored: HashMap<ChunkId, u64> = HashMap::new();
    repo.store().list(&mut |id, len| {
        stored.insert(id, len);
        Ok(())
    })?;
    report.objects = stored.len() as u64;

    let snapshots = repo.snapshots()?;
    report.snapshots = snapshots.len();
    let mut walked = Walked { trees: HashSet::new(), chunks: HashSet::new() };
    for (sid, snap) in &snapshots {
        walk_snapshot(repo, sid, &snap.tree, &stored, &mut walked, &mut report.problems, &mut |_, _| {});
    }
    report.trees = walked.trees.len();

    let mut unindexed_missing = Vec::new();
    repo.index().entries(&mut |e| {
        if !stored.contains_key(&e.id) {
            unindexed_missing.push(e.id);
        }
    })?;
    for id in unindexed_missing {
        report.problems.push(format!(
            "index lists chunk {id} which the store does not hold; run `tessera repair index`"
        ));
    }

    if read_data {
        let damaged: Mutex<Vec<(ChunkId, String)>> = Mutex::new(Vec::new());
        let ids: Vec<ChunkId> = stored.keys().copied().collect();
        ids.par_iter().for_each(|id| {
            if let Err(e) = repo.read_chunk(id) {
                damaged.lock().expect("poisoned").push((*id, e.to_string()));
            }
            progress.fetch_add(1, Relaxed);
        });
        report.objects_read = ids.len() as u64;
        let mut damaged = damaged.into_inner().expect("poisoned");
        damaged.sort();
        if !damaged.is_empty() {
            report.damaged = name_affected(repo, &snapshots, damaged, &stored);
        }
    }
    Ok(report)
}

/// Walks one snapshot's trees (each distinct tree once), noting missing chunks by path.
fn walk_snapshot(
    repo: &Repository,
    sid: &str,
    root: &ChunkId,
    stored: &HashMap<ChunkId, u64>,
    walked: &mut Walked,
    problems: &mut Vec<String>,
    on_file: &mut dyn FnMut(&ChunkId, &str),
) {
    let mut stack = vec![(Subtree::Chunk(*root), PathBuf::from("/"))];
    while let Some((subtree, path)) = stack.pop() {
        if let Subtree::Chunk(id) = &subtree {
            walked.trees.insert(*id);
        }
        let nodes = match repo.open_subtree(subtree) {
            Ok(nodes) => nodes,
            Err(e) => {
                problems.push(format!("snapshot {}: directory {}: {e}", &sid[..12], path.display()));
                continue;
            }
        };
        for mut node in nodes {
            let p = path.join(node.name.as_os_str());
            if node.kind == NodeType::File {
                for s in &node.content {
                    on_file(s.id(), &p.to_string_lossy());
                    walked.chunks.insert(*s.id());
                    if !stored.contains_key(s.id()) {
                        problems.push(format!("snapshot {}: file {}: chunk {} is missing", &sid[..12], p.display(), s.id()));
                    }
                }
            }
            if let Some(sub) = node.take_subtree() {
                stack.push((sub, p));
            }
        }
    }
}

fn name_affected(
    repo: &Repository,
    snapshots: &[(String, crate::manifest::Snapshot)],
    damaged: Vec<(ChunkId, String)>,
    stored: &HashMap<ChunkId, u64>,
) -> Vec<DamagedChunk> {
    let index: HashMap<ChunkId, usize> = damaged.iter().enumerate().map(|(i, (id, _))| (*id, i)).collect();
    let mut out: Vec<DamagedChunk> = damaged
        .into_iter()
        .map(|(id, reason)| DamagedChunk { id, reason, affected: Vec::new() })
        .collect();
    for (sid, snap) in snapshots {
        let mut walked = Walked { trees: HashSet::new(), chunks: HashSet::new() };
        let mut ignored = Vec::new();
        let mut hit = |id: &ChunkId, path: &str| {
            if let Some(&i) = index.get(id) {
                out[i].affected.push((sid.clone(), path.to_string()));
            }
        };
        walk_snapshot(repo, sid, &snap.tree, stored, &mut walked, &mut ignored, &mut hit);
        // A damaged tree hides the files below it; say which directory it was.
        for p in ignored.into_iter().filter(|p| !p.contains("is missing")) {
            for d in out.iter_mut() {
                if p.contains(&d.id.to_hex()) {
                    d.affected.push((sid.clone(), p.clone()));
                }
            }
        }
    }
    for d in &mut out {
        d.affected.dedup();
    }
    out
}

/// Rebuilds the index (and its Bloom filter) from the objects in the store, and the small-file
/// entries from the snapshots' trees. Returns the number of chunks and files indexed.
pub fn rebuild_index(repo: &Repository) -> Result<(u64, u64)> {
    let mut objects = Vec::new();
    repo.store().list(&mut |id, len| {
        objects.push((id, len));
        Ok(())
    })?;
    let chunks: Vec<IndexEntry> = objects
        .par_iter()
        .filter_map(|(id, len)| {
            let header = object::parse_header(id, &repo.store().get(id).ok()?).ok()?;
            Some(IndexEntry { id: *id, raw_len: header.raw_len, stored_len: *len })
        })
        .collect();
    let stored: HashSet<ChunkId> = chunks.iter().map(|e| e.id).collect();
    let files = small_files(repo, &stored)?;
    repo.index().rebuild(&chunks, &files)?;
    Ok((chunks.len() as u64, files.len() as u64))
}

/// Every small file in every snapshot whose chunks are all in `stored`, once per content.
fn small_files(repo: &Repository, stored: &HashSet<ChunkId>) -> Result<Vec<FileEntry>> {
    let mut files: HashMap<ChunkId, Vec<Slice>> = HashMap::new();
    let mut seen_trees = HashSet::new();
    for (_, snap) in repo.snapshots()? {
        let mut stack = vec![Subtree::Chunk(snap.tree)];
        while let Some(subtree) = stack.pop() {
            if let Subtree::Chunk(id) = &subtree
                && !seen_trees.insert(*id)
            {
                continue;
            }
            // A damaged tree is check's to report; its files simply stay unindexed.
            let Ok(nodes) = repo.open_subtree(subtree) else { continue };
            for mut node in nodes {
                stack.extend(node.take_subtree());
                if let Some(hash) = node.hash
                    && node.content.iter().all(|s| stored.contains(s.id()))
                {
                    files.entry(hash).or_insert(node.content);
                }
            }
        }
    }
    Ok(files.into_iter().map(|(hash, content)| FileEntry { hash, content }).collect())
}
