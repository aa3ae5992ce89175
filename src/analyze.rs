//! `tessera analyze`: what a backup of some paths would store under several chunker
//! configurations, without writing a repository.
//!
//! Each configuration replays exactly what `backup` does into a fresh repository: the same
//! walk order, the same `Cutter`, files below `small_file_limit` packed into one
//! `StreamPacker` stream per backup run, a small file whose whole-content hash was already
//! seen (this run or an earlier version) not packed again, and chunks deduplicated by id.
//! So `unique_bytes` and `unique_chunks` equal the data chunks a real backup stores. Trees
//! (directories too large to go inline in their parent, and the root) are estimated as an
//! upper bound and counted separately in `trees` and `objects`.
//!
//! Memory: one id and one length per distinct chunk, one hash per distinct small file, and
//! a bounded batch of chunk data per configuration; never the data itself.

mod plot;
mod render;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

pub use plot::write_plot;

use crate::backup::{INLINE_TREE_BYTES, MAX_INLINE_DEPTH};
use crate::chunker::{ChunkerParams, Cutter, StreamPacker, parse_size};
use crate::error::{Error, IoContext, Result, invalid};
use crate::fingerprint::{ChunkId, HashAlgo};
use crate::index::BloomFilter;
use crate::manifest::FileWarning;
use crate::stats::{ChunkSizes, chunk_sizes};
use crate::store::object;

/// Measured on a shard with 200k random-order inserts (B-tree pages about 70% full):
/// bytes per row of the `chunks` table (32-byte id + two integers) ...
pub const INDEX_CHUNK_ROW_BYTES: u64 = 51;
/// ... and of the `files` table (32-byte hash + 40 bytes per slice, mostly one slice).
pub const INDEX_FILE_ROW_BYTES: u64 = 98;
/// An empty shard: header page plus one root page per table.
const SHARD_BASE_BYTES: u64 = 3 * 4096;
/// Chunk data hashed and compressed together, so both cores work on one configuration.
const BATCH_BYTES: usize = 16 << 20;

pub struct AnalyzeOptions {
    pub paths: Vec<PathBuf>,
    /// Each configuration with its display name (see `parse_chunkers`).
    pub chunkers: Vec<(String, Cutter)>,
    pub hash: HashAlgo,
    /// Each path is a successive backup of the same data set.
    pub as_versions: bool,
    /// Index shards of the modelled repository (for the index size estimate).
    pub index_shards: u32,
}

/// Counters a caller may watch: bytes read so far, summed over configurations.
#[derive(Default)]
pub struct AnalyzeLive {
    pub bytes: AtomicU64,
}

#[derive(Debug, Serialize)]
pub struct AnalyzeReport {
    pub hash: HashAlgo,
    pub as_versions: bool,
    pub configs: Vec<ConfigReport>,
    /// Files that could not be read; like `backup`, they are left out.
    pub warnings: Vec<FileWarning>,
}

#[derive(Debug, Serialize)]
pub struct ConfigReport {
    /// As given on the command line, e.g. `fastcdc:1MiB` or `fixed:4MiB`.
    pub chunker: String,
    /// `fastcdc` or `fixed`.
    pub kind: &'static str,
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
    /// Figures for all paths together (the last version's cumulative figures).
    pub total: Figures,
    /// One entry per backup run: one per path with `as_versions`, else one for all paths.
    pub versions: Vec<VersionReport>,
    pub seconds: f64,
    /// Logical bytes per second of wall time (configurations run side by side).
    pub throughput: f64,
}

#[derive(Debug, Serialize)]
pub struct VersionReport {
    pub paths: Vec<String>,
    /// What this backup would add to the repository.
    pub logical_bytes: u64,
    pub new_bytes: u64,
    pub new_stored_bytes: u64,
    pub new_chunks: u64,
    pub new_trees: u64,
    /// Everything up to and including this version.
    pub cumulative: Figures,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Figures {
    pub files: u64,
    pub dirs: u64,
    pub logical_bytes: u64,
    /// Distinct data chunks and their plaintext bytes.
    pub unique_bytes: u64,
    pub unique_chunks: u64,
    /// Sum of the encoded (header + zstd when it pays) size of each distinct chunk.
    pub stored_bytes: u64,
    pub dedup_ratio: f64,
    pub compression_ratio: f64,
    /// Of distinct data chunks.
    pub chunk_sizes: ChunkSizes,
    /// Distinct small files: rows of the index's small-file table.
    pub small_files: u64,
    /// Tree chunks: directories too large to go inline in their parent, plus the root (an
    /// upper bound: node sizes are overestimated and identical trees dedup).
    pub trees: u64,
    /// Objects in the store: distinct data chunks plus trees.
    pub objects: u64,
    /// Estimated on-disk size of the SQLite index shards.
    pub index_bytes: u64,
    /// Size of the Bloom filter file for `objects` ids.
    pub bloom_bytes: u64,
}

/// Parses one `--chunker` value: `fastcdc:AVG[,AVG...]` (min = avg/4, max = 4·avg),
/// `fastcdc:MIN/AVG/MAX`, or `fixed:SIZE[,SIZE...]`.
pub fn parse_chunkers(spec: &str) -> Result<Vec<(String, Cutter)>> {
    let bad = |reason: String| invalid("chunker", format!("{spec:?}: {reason}"));
    if spec.trim().is_empty() {
        return Err(invalid("chunker", "empty chunker list"));
    }
    let (kind, sizes) = spec
        .split_once(':')
        .ok_or_else(|| bad("expected KIND:SIZES, e.g. fastcdc:1MiB or fixed:4MiB".into()))?;
    let mut out = Vec::new();
    for item in sizes.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(bad("empty size list".into()));
        }
        let cutter = match kind.trim().to_ascii_lowercase().as_str() {
            "fastcdc" => Cutter::FastCdc(parse_fastcdc(item).map_err(|e| bad(e.to_string()))?),
            "fixed" => Cutter::Fixed(parse_fixed(item).map_err(|e| bad(e.to_string()))?),
            other => return Err(bad(format!("unknown chunker {other:?} (expected fastcdc or fixed)"))),
        };
        out.push((chunker_name(&cutter, item.contains('/')), cutter));
    }
    Ok(out)
}

/// The default comparison: FastCDC at three average sizes around the repository default.
pub fn default_chunkers() -> Vec<(String, Cutter)> {
    parse_chunkers("fastcdc:256KiB,1MiB,4MiB").expect("default chunkers are valid")
}

fn parse_fastcdc(item: &str) -> Result<ChunkerParams> {
    let parts: Vec<&str> = item.split('/').collect();
    match parts[..] {
        [avg] => ChunkerParams::with_avg(parse_size(avg)?),
        [min, avg, max] => {
            let p = ChunkerParams { min_size: parse_size(min)?, avg_size: parse_size(avg)?, max_size: parse_size(max)? };
            p.validate()?;
            Ok(p)
        }
        _ => Err(invalid("chunker sizes", format!("{item:?}: expected AVG or MIN/AVG/MAX"))),
    }
}

fn parse_fixed(item: &str) -> Result<u32> {
    use fastcdc::v2020::{MAXIMUM_MAX, MINIMUM_MIN};
    let n = parse_size(item)?;
    // Tiny blocks would make the fingerprint set as large as the data; huge ones a huge window.
    if (n as usize) < MINIMUM_MIN || (n as usize) > MAXIMUM_MAX {
        return Err(invalid("chunk size", format!("{item:?}: fixed size must be within {MINIMUM_MIN}..={MAXIMUM_MAX} bytes")));
    }
    Ok(n)
}

fn chunker_name(cutter: &Cutter, explicit: bool) -> String {
    match cutter {
        Cutter::FastCdc(p) if explicit => {
            format!("fastcdc:{}/{}/{}", size_name(p.min_size), size_name(p.avg_size), size_name(p.max_size))
        }
        Cutter::FastCdc(p) => format!("fastcdc:{}", size_name(p.avg_size)),
        Cutter::Fixed(n) => format!("fixed:{}", size_name(*n)),
    }
}

/// `1MiB`, `256KiB` or plain bytes: the shortest exact form.
pub fn size_name(n: u32) -> String {
    match n {
        n if n > 0 && n % (1 << 20) == 0 => format!("{}MiB", n >> 20),
        n if n > 0 && n % (1 << 10) == 0 => format!("{}KiB", n >> 10),
        n => n.to_string(),
    }
}

/// Runs every configuration over the paths (side by side, on all cores).
pub fn analyze(opts: &AnalyzeOptions, live: &AnalyzeLive) -> Result<AnalyzeReport> {
    if opts.chunkers.is_empty() {
        return Err(invalid("chunkers", "empty chunker list"));
    }
    let runs = backup_runs(&opts.paths, opts.as_versions)?;
    let warnings = Mutex::new(BTreeMap::new());
    let configs = opts
        .chunkers
        .par_iter()
        .map(|(name, cutter)| run_config(name, *cutter, opts, &runs, live, &warnings))
        .collect::<Result<Vec<_>>>()?;
    let warnings = warnings.into_inner().expect("poisoned");
    Ok(AnalyzeReport {
        hash: opts.hash,
        as_versions: opts.as_versions,
        configs,
        warnings: warnings.into_iter().map(|(path, error)| FileWarning { path, error }).collect(),
    })
}

/// The source paths of each backup run, as `backup` resolves them: absolute without
/// following symlinks, in path order, paths inside another source dropped (the walk
/// covers them once).
fn backup_runs(paths: &[PathBuf], as_versions: bool) -> Result<Vec<Vec<PathBuf>>> {
    if paths.is_empty() {
        return Err(invalid("analyze", "no paths given"));
    }
    let cwd = std::env::current_dir().at(".")?;
    for p in paths {
        if fs::symlink_metadata(cwd.join(p)).is_err() {
            return Err(Error::SourceMissing(p.clone()));
        }
    }
    let groups: Vec<Vec<PathBuf>> = if as_versions {
        paths.iter().map(|p| vec![p.clone()]).collect()
    } else {
        vec![paths.to_vec()]
    };
    Ok(groups
        .into_iter()
        .map(|g| {
            let mut abs: Vec<PathBuf> = g.iter().map(|p| crate::walk::absolute(&cwd, p)).collect();
            abs.sort();
            abs.dedup();
            let mut kept: Vec<PathBuf> = Vec::new();
            for p in abs {
                if !kept.iter().any(|k| p.starts_with(k)) {
                    kept.push(p);
                }
            }
            kept
        })
        .collect())
}

fn run_config(
    name: &str,
    cutter: Cutter,
    opts: &AnalyzeOptions,
    runs: &[Vec<PathBuf>],
    live: &AnalyzeLive,
    warnings: &Mutex<BTreeMap<String, String>>,
) -> Result<ConfigReport> {
    let started = Instant::now();
    let mut model = Model::new(cutter, opts.hash, opts.index_shards, live, warnings);
    let mut versions = Vec::with_capacity(runs.len());
    for sources in runs {
        let before = model.totals.clone();
        model.backup_run(sources)?;
        let cumulative = model.figures();
        versions.push(VersionReport {
            paths: sources.iter().map(|p| p.to_string_lossy().into_owned()).collect(),
            logical_bytes: cumulative.logical_bytes - before.logical_bytes,
            new_bytes: cumulative.unique_bytes - before.unique_bytes,
            new_stored_bytes: cumulative.stored_bytes - before.stored_bytes,
            new_chunks: cumulative.unique_chunks - before.unique_chunks,
            new_trees: cumulative.trees - before.trees,
            cumulative,
        });
    }
    let seconds = started.elapsed().as_secs_f64();
    let total = versions.last().expect("at least one run").cumulative.clone();
    let (kind, min_size, avg_size, max_size) = match cutter {
        Cutter::FastCdc(p) => ("fastcdc", p.min_size, p.avg_size, p.max_size),
        Cutter::Fixed(n) => ("fixed", n, n, n),
    };
    Ok(ConfigReport {
        chunker: name.to_string(),
        kind,
        min_size,
        avg_size,
        max_size,
        throughput: if seconds > 0.0 { total.logical_bytes as f64 / seconds } else { 0.0 },
        total,
        versions,
        seconds,
    })
}

/// Upper bounds of a tree node's serialized size (a file node with its whole-content hash and
/// long times is about 300 bytes; each content slice about 90), so that the tree estimate
/// stays an upper bound of what a backup creates.
const NODE_BYTES_BOUND: u64 = 512;
const SLICE_BYTES_BOUND: u64 = 128;

/// Running totals (the parts of `Figures` that are plain sums).
#[derive(Clone, Default)]
struct Totals {
    files: u64,
    dirs: u64,
    logical_bytes: u64,
    unique_bytes: u64,
    unique_chunks: u64,
    stored_bytes: u64,
    trees: u64,
}

/// A chunk waiting in the batch; packed-stream chunks arrive already hashed.
struct Pending {
    id: Option<ChunkId>,
    data: Vec<u8>,
}

/// One configuration's model of a repository that starts empty.
struct Model<'a> {
    cutter: Cutter,
    algo: HashAlgo,
    shards: u32,
    chunks: HashSet<ChunkId>,
    /// Length of each distinct chunk, for the size distribution.
    sizes: Vec<u32>,
    /// Whole-content hashes of small files stored so far: the repository's file index.
    small_files: HashSet<ChunkId>,
    totals: Totals,
    batch: Vec<Pending>,
    batch_bytes: usize,
    live: &'a AnalyzeLive,
    warnings: &'a Mutex<BTreeMap<String, String>>,
}

impl<'a> Model<'a> {
    fn new(cutter: Cutter, algo: HashAlgo, shards: u32, live: &'a AnalyzeLive, warnings: &'a Mutex<BTreeMap<String, String>>) -> Self {
        Model {
            cutter,
            algo,
            shards,
            chunks: HashSet::new(),
            sizes: Vec::new(),
            small_files: HashSet::new(),
            totals: Totals::default(),
            batch: Vec::new(),
            batch_bytes: 0,
            live,
            warnings,
        }
    }

    /// One backup run: a fresh packed stream, the repository's state carried over.
    fn backup_run(&mut self, sources: &[PathBuf]) -> Result<()> {
        // The walk starts at `/`, whose tree is always a chunk; the directories between it
        // and the sources hold one entry each, so they are inline but for the depth cap.
        let above: BTreeSet<&Path> = sources.iter().flat_map(|s| s.ancestors().skip(1)).collect();
        self.totals.trees += 1 + above.len() as u64 / MAX_INLINE_DEPTH as u64;
        let mut packer = StreamPacker::new(self.cutter, self.algo);
        for source in sources {
            match fs::symlink_metadata(source) {
                Ok(meta) => {
                    self.visit(source, &meta, &mut packer)?;
                }
                Err(e) => self.warn(source, format!("could not stat: {e}")),
            }
        }
        while let Some((id, data)) = packer.cut(true) {
            self.add(Some(id), data);
        }
        self.flush();
        Ok(())
    }

    /// Models one entry; returns an upper bound of what its node adds to its parent's tree
    /// (bytes, levels of inline directories), so directories are placed as a backup would:
    /// inline in the parent when small, a tree chunk of their own otherwise.
    fn visit(&mut self, path: &Path, meta: &fs::Metadata, packer: &mut StreamPacker) -> Result<(u64, usize)> {
        if meta.is_dir() {
            self.totals.dirs += 1;
            let (bytes, depth) = self.walk_dir(path, packer)?;
            if bytes >= INLINE_TREE_BYTES as u64 || depth >= MAX_INLINE_DEPTH {
                self.totals.trees += 1;
                return Ok((NODE_BYTES_BOUND, 0));
            }
            return Ok((NODE_BYTES_BOUND + bytes, depth + 1));
        }
        if !meta.is_file() {
            return Ok((NODE_BYTES_BOUND, 0)); // symlinks, devices, FIFOs: metadata only
        }
        let slices = if meta.len() == 0 {
            self.totals.files += 1;
            0
        } else if meta.len() < self.cutter.small_file_limit() {
            self.small_file(path, packer);
            2
        } else {
            self.large_file(path)
        };
        Ok((NODE_BYTES_BOUND + slices * SLICE_BYTES_BOUND, 0))
    }

    /// Entries in byte order of their names, depth first: the order `backup` packs in.
    fn walk_dir(&mut self, dir: &Path, packer: &mut StreamPacker) -> Result<(u64, usize)> {
        let mut names: Vec<std::ffi::OsString> = match fs::read_dir(dir) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.file_name())).collect(),
            Err(e) => {
                self.warn(dir, format!("could not list directory: {e}"));
                return Ok((0, 0));
            }
        };
        names.sort();
        let (mut bytes, mut depth) = (0, 0);
        for name in names {
            let child = dir.join(&name);
            match fs::symlink_metadata(&child) {
                Ok(meta) => {
                    let (b, d) = self.visit(&child, &meta, packer)?;
                    bytes += b;
                    depth = depth.max(d);
                }
                Err(e) => self.warn(&child, format!("could not stat: {e}")),
            }
        }
        Ok((bytes, depth))
    }

    /// A small file joins the packed stream unless its exact bytes are already stored.
    fn small_file(&mut self, path: &Path, packer: &mut StreamPacker) {
        let max = self.cutter.max_size() as u64;
        let mut data = Vec::new();
        if let Err(e) = File::open(path).and_then(|f| f.take(max).read_to_end(&mut data)) {
            self.warn(path, format!("could not read file: {e}"));
            return;
        }
        self.totals.files += 1;
        self.read(data.len());
        if data.is_empty() {
            return;
        }
        if self.small_files.insert(self.algo.hash(&data)) {
            packer.push(&data);
            while let Some((id, data)) = packer.cut(false) {
                self.add(Some(id), data);
            }
        }
    }

    /// Returns the number of chunks (slices in the file's node).
    fn large_file(&mut self, path: &Path) -> u64 {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) => {
                self.warn(path, format!("could not read file: {e}"));
                return 0;
            }
        };
        let mut slices = 0;
        for data in self.cutter.chunks(file) {
            match data {
                Ok(data) => {
                    self.read(data.len());
                    self.add(None, data);
                    slices += 1;
                }
                // Chunks read before the error stay stored, as in a backup.
                Err(e) => {
                    self.warn(path, format!("could not read file: {e}"));
                    return slices;
                }
            }
        }
        self.totals.files += 1;
        slices
    }

    fn read(&mut self, n: usize) {
        self.totals.logical_bytes += n as u64;
        self.live.bytes.fetch_add(n as u64, Relaxed);
    }

    fn add(&mut self, id: Option<ChunkId>, data: Vec<u8>) {
        self.batch_bytes += data.len();
        self.batch.push(Pending { id, data });
        if self.batch_bytes >= BATCH_BYTES.max(2 * self.cutter.max_size()) {
            self.flush();
        }
    }

    /// Hashes the batch in parallel, keeps the chunks not seen before, and compresses
    /// those in parallel for the stored-size estimate.
    fn flush(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let algo = self.algo;
        let ids: Vec<ChunkId> = batch.par_iter().map(|p| p.id.unwrap_or_else(|| algo.hash(&p.data))).collect();
        let new: Vec<&[u8]> = batch
            .iter()
            .zip(&ids)
            .filter(|(_, id)| self.chunks.insert(**id))
            .map(|(p, _)| p.data.as_slice())
            .collect();
        for data in &new {
            self.sizes.push(data.len() as u32);
            self.totals.unique_bytes += data.len() as u64;
        }
        self.totals.unique_chunks += new.len() as u64;
        self.totals.stored_bytes += new.par_iter().map(|d| object::encode(d).len() as u64).sum::<u64>();
    }

    fn warn(&self, path: &Path, error: String) {
        self.warnings.lock().expect("poisoned").entry(path.to_string_lossy().into_owned()).or_insert(error);
    }

    fn figures(&self) -> Figures {
        let t = &self.totals;
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let objects = t.unique_chunks + t.trees;
        let small = self.small_files.len() as u64;
        Figures {
            files: t.files,
            dirs: t.dirs,
            logical_bytes: t.logical_bytes,
            unique_bytes: t.unique_bytes,
            unique_chunks: t.unique_chunks,
            stored_bytes: t.stored_bytes,
            dedup_ratio: ratio(t.logical_bytes, t.unique_bytes),
            compression_ratio: ratio(t.unique_bytes, t.stored_bytes),
            chunk_sizes: chunk_sizes(&mut self.sizes.clone()),
            small_files: small,
            trees: t.trees,
            objects,
            index_bytes: estimate_index_bytes(objects, small, self.shards),
            bloom_bytes: BloomFilter::serialized_len(objects),
        }
    }
}

/// Index shards on disk for this many chunk rows and small-file rows.
pub fn estimate_index_bytes(chunk_rows: u64, file_rows: u64, shards: u32) -> u64 {
    chunk_rows * INDEX_CHUNK_ROW_BYTES + file_rows * INDEX_FILE_ROW_BYTES + u64::from(shards) * SHARD_BASE_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_chunker_specs() {
        let c = parse_chunkers("fastcdc:64KiB,1MiB").unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].0, "fastcdc:64KiB");
        assert_eq!(c[1].1, Cutter::FastCdc(ChunkerParams::with_avg(1 << 20).unwrap()));
        let c = parse_chunkers("fastcdc:16KiB/64KiB/256KiB").unwrap();
        assert_eq!(c[0].0, "fastcdc:16KiB/64KiB/256KiB");
        assert_eq!(parse_chunkers("fixed:1MiB").unwrap()[0].1, Cutter::Fixed(1 << 20));
    }

    #[test]
    fn rejects_bad_chunker_specs() {
        let err = |s: &str| parse_chunkers(s).unwrap_err().to_string();
        assert!(err("rabin:1MiB").contains("unknown chunker \"rabin\""));
        assert!(err("fastcdc:256KiB/64KiB/1MiB").contains("min <= avg <= max"));
        assert!(err("fastcdc:").contains("empty size list"));
        assert!(err("fixed:0").contains("fixed size must be within"));
        assert!(err("fastcdc:12parsecs").contains("12parsecs"));
        assert!(err("1MiB").contains("expected KIND:SIZES"));
        assert!(err(" ").contains("empty chunker list"));
    }

    #[test]
    fn size_names_are_exact() {
        assert_eq!(size_name(1 << 20), "1MiB");
        assert_eq!(size_name(256 << 10), "256KiB");
        assert_eq!(size_name(1000), "1000");
    }
}
