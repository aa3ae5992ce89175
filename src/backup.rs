//! The backup pipeline.
//!
//! ```text
//! walker ──large files──> reader (1) ──┐
//!    │   ──small files──> packer (1) ──┼─chunks─> workers (2): fingerprint, dedup check,
//!    │                                 │          compress, store
//!    └──directory records──> tree builder: waits for file contents, places or stores trees
//! ```
//! Every queue that carries data is bounded, so a slow store slows the walk (invariant 8).
//! The reader only reads and cuts; the workers fingerprint a large file's chunks in parallel
//! and fill in its chunk list, which is complete once the last of them is hashed. The
//! packer fingerprints its stream chunks itself, since packed files' slices name them.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::{AcqRel, Acquire, Relaxed, Release}};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};

use crate::chunker::StreamPacker;
use crate::error::{Error, IoContext, Result};
use crate::fingerprint::ChunkId;
use crate::index::{Deduper, FileEntry, IndexEntry};
use crate::manifest::{FileWarning, Node, NodeType, RawBytes, SNAPSHOT_VERSION, Slice, Snapshot, Summary, Tree};
use crate::repo::Repository;
use crate::store::object;
use crate::walk::{Excludes, node_from_metadata};

/// One reader reads and cuts at several times the rate two workers fingerprint and
/// compress, so a second would only add buffers in flight.
const READERS: usize = 1;
const WORKERS: usize = 2;
const CHUNK_QUEUE: usize = 2;
const FILE_QUEUE: usize = 256;
const WORKER_BATCH: usize = 1;
/// Directories whose serialized entries (inline subdirectories included) are smaller than
/// this are stored inline in their parent's tree rather than as a tree chunk of their own.
pub(crate) const INLINE_TREE_BYTES: usize = 32 << 10;
/// Inline directories nest in the tree's JSON, and readers bound nesting depth (serde_json
/// stops at 128 levels, about 60 directories): deeper chains get tree chunks of their own.
pub(crate) const MAX_INLINE_DEPTH: usize = 24;
/// Small files read, hashed and looked up in the index together: at most this many files
/// and about this many bytes.
const PACK_BATCH: usize = 64;
const PACK_BATCH_BYTES: u64 = 1 << 20;
/// A syncer thread makes new chunks durable and registers them in the index each time this
/// much has been stored: the wait for the disk (and its write cache) overlaps the work
/// instead of all coming at the end. Chunks stored but not yet registered when a run dies
/// are found in the store and reused by the next run.
const SYNC_EVERY_BYTES: u64 = 64 << 20;
/// Whole-file dedup of small files within one run remembers at most this many files.
const SMALL_DEDUP_CAP: usize = 1 << 20;

pub struct BackupOptions {
    pub paths: Vec<PathBuf>,
    pub host: String,
    pub tags: Vec<String>,
    pub excludes: Vec<String>,
    pub one_file_system: bool,
    pub dry_run: bool,
    pub force_rehash: bool,
}

/// Counters a caller may watch while a backup runs.
#[derive(Default)]
pub struct LiveStats {
    pub files: AtomicU64,
    /// File bytes done, read or reused from the parent snapshot.
    pub bytes: AtomicU64,
    /// File bytes read from disk (new or changed files).
    pub read_bytes: AtomicU64,
    pub new_bytes: AtomicU64,
    pub stored_bytes: AtomicU64,
    pub new_chunks: AtomicU64,
    /// Filled by `scan` when the caller wants totals for an ETA.
    pub total_files: AtomicU64,
    pub total_bytes: AtomicU64,
}

pub struct BackupReport {
    /// None for a dry run.
    pub snapshot_id: Option<String>,
    pub snapshot: Snapshot,
}

/// Calls back with every per-file problem as it happens; the backup goes on.
pub type WarningSink<'a> = &'a (dyn Fn(&FileWarning) + Sync);

pub fn backup(repo: &Repository, opts: &BackupOptions, live: &LiveStats, on_warning: WarningSink) -> Result<BackupReport> {
    let started = Instant::now();
    let time = chrono::Utc::now();
    let sources = absolute_sources(&opts.paths)?;
    let excludes = Excludes::new(&opts.excludes)?;
    let paths: Vec<String> = sources.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let parent = find_parent(repo, &opts.host, &paths)?;
    let parent_tree = match &parent {
        Some((_, snap)) => Some(repo.load_tree(&snap.tree)?),
        None => None,
    };
    let deduper = Deduper::new(repo.index().clone())?;
    let sink = Sink {
        repo,
        deduper,
        dry_run: opts.dry_run,
        live,
        pending: Mutex::new(Unsynced::default()),
        sync_wanted: Condvar::new(),
        pending_files: Mutex::new(Vec::new()),
        pool: BufferPool::default(),
        windows: BufferPool::default(),
        failure: Mutex::new(None),
    };
    let warnings = Warnings { list: Mutex::new(Vec::new()), sink: on_warning };
    let counts = Mutex::new(Summary::default());

    let root = std::thread::scope(|s| -> Result<Node> {
        let (chunk_tx, chunk_rx) = bounded::<ChunkJob>(CHUNK_QUEUE);
        let (large_tx, large_rx) = bounded::<FileJob>(FILE_QUEUE);
        let (small_tx, small_rx) = bounded::<FileJob>(FILE_QUEUE * 16);
        let (dir_tx, dir_rx) = unbounded::<DirRecord>();
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                let rx = chunk_rx.clone();
                spawn_named(s, "worker", || sink.run_worker(rx))
            })
            .collect();
        drop(chunk_rx);
        for _ in 0..READERS {
            let (rx, tx) = (large_rx.clone(), chunk_tx.clone());
            spawn_named(s, "reader", || read_large_files(repo, rx, tx, &sink.windows, &warnings, live));
        }
        drop(large_rx);
        let packer = Packer::new(repo, &sink, chunk_tx);
        spawn_named(s, "packer", || packer.run(small_rx, &warnings, live));
        let builder = spawn_named(s, "trees", || build_trees(&sink, dir_rx, &counts));
        let syncer = spawn_named(s, "syncer", || sink.run_syncer());
        let mut walker = Walker {
            opts,
            excludes: &excludes,
            repo,
            small_limit: repo.cutter().small_file_limit(),
            large_tx,
            small_tx,
            dir_tx,
            hardlinks: HashMap::new(),
            warnings: &warnings,
            live,
        };
        let walked = walker.walk_root(&sources, parent_tree);
        drop(walker);
        let root = builder.join().expect("tree builder panicked");
        // Every chunk is stored once the workers are done (the walker's end closed the
        // readers' and the packer's inputs, theirs closed the workers').
        workers.into_iter().for_each(|w| w.join().expect("worker panicked"));
        sink.stop_syncer();
        // The syncer may be in the middle of a round: the rest is synced alongside it
        // rather than after it.
        let flushed = if sink.failure.lock().expect("poisoned").is_none() { sink.flush_registrations() } else { Ok(()) };
        syncer.join().expect("syncer panicked");
        walked?;
        flushed?;
        root
    });
    if let Some(e) = sink.failure.lock().expect("poisoned").take() {
        return Err(e);
    }
    let root = root?;
    sink.register_files()?;
    if !opts.dry_run {
        repo.index().flush_filter()?;
    }
    let mut summary = counts.into_inner().expect("poisoned");
    summary.read_bytes = live.read_bytes.load(Relaxed);
    summary.new_chunks = live.new_chunks.load(Relaxed);
    summary.new_bytes = live.new_bytes.load(Relaxed);
    summary.stored_bytes = live.stored_bytes.load(Relaxed);
    summary.duration_s = started.elapsed().as_secs_f64();
    let mut warnings = warnings.list.into_inner().expect("poisoned");
    warnings.sort_by(|a, b| a.path.cmp(&b.path));
    let snapshot = Snapshot {
        version: SNAPSHOT_VERSION,
        time,
        host: opts.host.clone(),
        paths,
        tags: opts.tags.clone(),
        parent: parent.map(|(id, _)| id),
        tree: root.subtree.expect("root is a directory"),
        summary,
        warnings,
    };
    let snapshot_id = if opts.dry_run { None } else { Some(repo.commit_snapshot(&snapshot)?) };
    Ok(BackupReport { snapshot_id, snapshot })
}

/// Named, so that profilers and debuggers tell the pipeline's stages apart.
fn spawn_named<'scope, T: Send + 'scope>(
    s: &'scope std::thread::Scope<'scope, '_>,
    name: &str,
    f: impl FnOnce() -> T + Send + 'scope,
) -> std::thread::ScopedJoinHandle<'scope, T> {
    std::thread::Builder::new().name(name.into()).spawn_scoped(s, f).expect("spawn a pipeline thread")
}

/// Source paths made absolute without resolving symlinks; each must exist.
fn absolute_sources(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if paths.is_empty() {
        return Err(crate::error::invalid("backup", "no source paths given"));
    }
    let cwd = std::env::current_dir().at(".")?;
    let mut out = Vec::new();
    for p in paths {
        let abs = crate::walk::absolute(&cwd, p);
        if fs::symlink_metadata(&abs).is_err() {
            return Err(Error::SourceMissing(p.clone()));
        }
        out.push(abs);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn find_parent(repo: &Repository, host: &str, paths: &[String]) -> Result<Option<(String, Snapshot)>> {
    Ok(repo
        .snapshots()?
        .into_iter()
        .rev()
        .find(|(_, s)| s.host == host && s.paths == paths))
}

/// Totals for a progress ETA: the same walk as a backup, metadata only.
pub fn scan(paths: &[PathBuf], excludes: &[String], one_file_system: bool, live: &LiveStats) -> Result<()> {
    let excludes = Excludes::new(excludes)?;
    let mut stack: Vec<(PathBuf, Option<u64>)> = absolute_sources(paths)?.into_iter().map(|p| (p, None)).collect();
    while let Some((path, dev)) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&path) else { continue };
        if meta.is_file() {
            live.total_files.fetch_add(1, Relaxed);
            live.total_bytes.fetch_add(meta.len(), Relaxed);
        } else if meta.is_dir() && (!one_file_system || dev.is_none_or(|d| d == meta.dev())) {
            let Ok(rd) = fs::read_dir(&path) else { continue };
            for e in rd.flatten() {
                let p = e.path();
                if !excludes.matches(&p) {
                    stack.push((p, Some(dev.unwrap_or(meta.dev()))));
                }
            }
        }
    }
    Ok(())
}

/// Resolved once, read by whoever needs it: a file's content, shared by its hard links.
#[derive(Clone)]
struct Pending<T: Clone>(Arc<(Mutex<Option<T>>, Condvar)>);

impl<T: Clone> Pending<T> {
    fn new() -> Self {
        Pending(Arc::new((Mutex::new(None), Condvar::new())))
    }
    fn ready(v: T) -> Self {
        let p = Self::new();
        p.set(v);
        p
    }
    fn set(&self, v: T) {
        *self.0.0.lock().expect("poisoned") = Some(v);
        self.0.1.notify_all();
    }
    fn wait(&self) -> T {
        let mut g = self.0.0.lock().expect("poisoned");
        loop {
            if let Some(v) = g.as_ref() {
                return v.clone();
            }
            g = self.0.1.wait(g).expect("poisoned");
        }
    }
}

/// A file's chunk list and, for small files, the hash of its whole content.
#[derive(Clone)]
struct FileContent {
    slices: Vec<Slice>,
    hash: Option<ChunkId>,
}

/// None when the file could not be read (the warning says why).
type Content = Option<FileContent>;

struct FileJob {
    path: PathBuf,
    size: u64,
    content: Pending<Content>,
}

struct ChunkJob<'p> {
    bytes: Arc<Pooled<'p>>,
    range: std::ops::Range<usize>,
    source: ChunkSource,
}

impl<'p> ChunkJob<'p> {
    /// A chunk that is a whole buffer of its own.
    fn whole(buf: Vec<u8>, pool: &'p BufferPool, source: ChunkSource) -> Self {
        ChunkJob { range: 0..buf.len(), bytes: Arc::new(Pooled { buf, pool }), source }
    }

    fn data(&self) -> &[u8] {
        &self.bytes.buf[self.range.clone()]
    }
}

/// A buffer that goes back to its pool once the last chunk in it is done.
struct Pooled<'p> {
    buf: Vec<u8>,
    pool: &'p BufferPool,
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

enum ChunkSource {
    /// A packed stream's chunk, already fingerprinted.
    Packed(ChunkId),
    /// Chunk `index` of a large file: the worker fingerprints it.
    File(Arc<LargeFile>, usize),
}

/// A large file's chunk list while its chunks are in the pipeline.
struct LargeFile {
    content: Pending<Content>,
    /// Each chunk's id (once fingerprinted) and length.
    chunks: Mutex<Vec<(Option<ChunkId>, u32)>>,
    /// Chunks not yet fingerprinted, plus one while the reader is still cutting.
    outstanding: AtomicUsize,
    unreadable: AtomicBool,
}

impl LargeFile {
    fn new(content: Pending<Content>) -> Self {
        LargeFile { content, chunks: Mutex::new(Vec::new()), outstanding: AtomicUsize::new(1), unreadable: AtomicBool::new(false) }
    }

    /// Slot for the next chunk, counted as outstanding.
    fn add_chunk(&self, len: usize) -> usize {
        self.outstanding.fetch_add(1, AcqRel);
        let mut chunks = self.chunks.lock().expect("poisoned");
        chunks.push((None, len as u32));
        chunks.len() - 1
    }

    fn set_id(&self, index: usize, id: ChunkId) {
        self.chunks.lock().expect("poisoned")[index].0 = Some(id);
        self.release();
    }

    /// The last release (a chunk fingerprinted, or the reader done) settles the content.
    fn release(&self) {
        if self.outstanding.fetch_sub(1, AcqRel) != 1 {
            return;
        }
        let content = if self.unreadable.load(Acquire) {
            None
        } else {
            let chunks = std::mem::take(&mut *self.chunks.lock().expect("poisoned"));
            let slices = chunks.into_iter().map(|(id, len)| Slice(id.expect("every chunk fingerprinted"), 0, len)).collect();
            Some(FileContent { slices, hash: None })
        };
        self.content.set(content);
    }
}

enum Entry {
    Ready(Node),
    File(Node, Pending<Content>),
    Subdir,
}

struct DirRecord {
    node: Node,
    entries: Vec<Entry>,
}

struct Warnings<'a> {
    list: Mutex<Vec<FileWarning>>,
    sink: WarningSink<'a>,
}

impl Warnings<'_> {
    fn add(&self, path: &Path, error: impl ToString) {
        let w = FileWarning {
            path: path.to_string_lossy().into_owned(),
            error: error.to_string(),
        };
        (self.sink)(&w);
        self.list.lock().expect("poisoned").push(w);
    }
}

/// Chunk buffers passed from readers to workers and back. Megabyte buffers allocated on one
/// thread and freed on another fragment the allocator's per-thread arenas (memory that is
/// never returned) and cost page faults on every fresh allocation; reusing them avoids both.
#[derive(Default)]
struct BufferPool(Mutex<Vec<Vec<u8>>>);

impl BufferPool {
    /// Enough for every buffer that can be in flight at once.
    const KEEP: usize = CHUNK_QUEUE + WORKERS * WORKER_BATCH + READERS;

    fn take(&self) -> Vec<u8> {
        self.0.lock().expect("poisoned").pop().unwrap_or_default()
    }

    fn give(&self, buf: Vec<u8>) {
        let mut free = self.0.lock().expect("poisoned");
        if free.len() < Self::KEEP {
            free.push(buf);
        }
    }
}

/// Chunks stored but not yet durable and registered.
#[derive(Default)]
struct Unsynced {
    entries: Vec<IndexEntry>,
    /// Their stored bytes.
    bytes: u64,
    stopped: bool,
}

/// Where chunks end up: dedup check, store, and registration in the index once durable.
struct Sink<'a> {
    repo: &'a Repository,
    deduper: Deduper,
    dry_run: bool,
    live: &'a LiveStats,
    pending: Mutex<Unsynced>,
    /// Tells the syncer that enough is pending, or that the run is over.
    sync_wanted: Condvar,
    /// Small files packed by this run, registered only once the run's chunks all are.
    pending_files: Mutex<Vec<FileEntry>>,
    /// Packed streams' chunk buffers.
    pool: BufferPool,
    /// The reader's windows, shared by the chunks cut in them.
    windows: BufferPool,
    failure: Mutex<Option<Error>>,
}

impl Sink<'_> {
    fn run_worker(&self, rx: Receiver<ChunkJob<'_>>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            batch.extend(rx.try_iter().take(WORKER_BATCH - 1));
            // Fingerprinted even after a failure, so that every file settles and producers
            // never block on a dead pipeline.
            let ids: Vec<ChunkId> = batch.iter().map(|job| self.fingerprint(job)).collect();
            if self.failure.lock().expect("poisoned").is_none()
                && let Err(e) = self.store_batch(&batch, &ids)
            {
                self.fail(e);
            }
        }
    }

    fn fingerprint(&self, job: &ChunkJob<'_>) -> ChunkId {
        match &job.source {
            ChunkSource::Packed(id) => *id,
            ChunkSource::File(file, index) => {
                let id = self.repo.hash(job.data());
                file.set_id(*index, id);
                id
            }
        }
    }

    fn store_batch(&self, batch: &[ChunkJob<'_>], ids: &[ChunkId]) -> Result<()> {
        let upload = self.deduper.claim_missing(ids)?;
        for ((job, id), _) in batch.iter().zip(ids).zip(upload).filter(|(_, u)| *u) {
            self.store(id, job.data())?;
        }
        Ok(())
    }

    fn store(&self, id: &ChunkId, data: &[u8]) -> Result<()> {
        let (entry, written) = if self.dry_run {
            let stored = object::encode_into(data, self.repo.config().zstd_level, &mut Vec::new()).stored_len() as u64;
            (IndexEntry { id: *id, raw_len: data.len() as u64, stored_len: stored }, true)
        } else {
            self.repo.store_chunk(id, data)?
        };
        if written {
            self.live.new_chunks.fetch_add(1, Relaxed);
            self.live.new_bytes.fetch_add(entry.raw_len, Relaxed);
            self.live.stored_bytes.fetch_add(entry.stored_len, Relaxed);
        }
        if self.dry_run {
            return Ok(());
        }
        let mut p = self.pending.lock().expect("poisoned");
        p.entries.push(entry);
        p.bytes += entry.stored_len;
        if p.bytes >= SYNC_EVERY_BYTES {
            self.sync_wanted.notify_one();
        }
        Ok(())
    }

    fn run_syncer(&self) {
        loop {
            let mut p = self.pending.lock().expect("poisoned");
            while p.bytes < SYNC_EVERY_BYTES && !p.stopped {
                p = self.sync_wanted.wait(p).expect("poisoned");
            }
            if p.stopped {
                return;
            }
            let entries = std::mem::take(&mut p.entries);
            p.bytes = 0;
            drop(p);
            if let Err(e) = self.sync_and_register(&entries) {
                self.fail(e);
                return;
            }
        }
    }

    /// What is still pending when the syncer stops is left to `flush_registrations`.
    fn stop_syncer(&self) {
        self.pending.lock().expect("poisoned").stopped = true;
        self.sync_wanted.notify_one();
    }

    fn flush_registrations(&self) -> Result<()> {
        let entries = std::mem::take(&mut self.pending.lock().expect("poisoned").entries);
        self.sync_and_register(&entries)
    }

    /// Durable first, then registered (invariant 3): only entries taken before the sync
    /// started are known to be covered by it.
    fn sync_and_register(&self, entries: &[IndexEntry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let ids: Vec<ChunkId> = entries.iter().map(|e| e.id).collect();
        self.repo.store().sync(&ids)?;
        self.repo.index().register(entries)
    }

    /// Called once every chunk of the run is stored and registered.
    fn register_files(&self) -> Result<()> {
        let files = std::mem::take(&mut *self.pending_files.lock().expect("poisoned"));
        if files.is_empty() || self.dry_run {
            return Ok(());
        }
        self.repo.index().register_files(&files)
    }

    fn packed_file(&self, entry: FileEntry) {
        let mut files = self.pending_files.lock().expect("poisoned");
        if files.len() < SMALL_DEDUP_CAP {
            files.push(entry);
        }
    }

    fn fail(&self, e: Error) {
        self.failure.lock().expect("poisoned").get_or_insert(e);
    }

    /// A small directory's entries go inline into its parent's tree; a larger one's into a
    /// tree chunk of its own. The choice depends only on the entries, so it is deterministic.
    fn place_tree(&self, dir: &mut Node, tree: Tree) -> Result<()> {
        if inline_depth(&tree.nodes) < MAX_INLINE_DEPTH && tree.to_bytes().len() < INLINE_TREE_BYTES {
            dir.entries = Some(tree.nodes);
        } else {
            dir.subtree = Some(self.store_tree(&tree)?);
        }
        Ok(())
    }

    /// Trees go through the same dedup and store path as file chunks.
    fn store_tree(&self, tree: &Tree) -> Result<ChunkId> {
        let bytes = tree.to_bytes();
        let id = self.repo.hash(&bytes);
        if self.deduper.claim_missing(&[id])?[0] {
            self.store(&id, &bytes)?;
        }
        Ok(id)
    }
}

fn read_large_files<'p>(repo: &Repository, rx: Receiver<FileJob>, tx: Sender<ChunkJob<'p>>, windows: &'p BufferPool, warnings: &Warnings, live: &LiveStats) {
    let cutter = repo.cutter();
    for job in rx {
        let file = Arc::new(LargeFile::new(job.content.clone()));
        let read = (|| -> std::io::Result<u64> {
            let mut cuts = cutter.windows(File::open(&job.path)?);
            let mut total = 0;
            loop {
                let mut buf = windows.take();
                if !cuts.fill(&mut buf)? {
                    windows.give(buf);
                    return Ok(total);
                }
                let window = Arc::new(Pooled { buf, pool: windows });
                let mut at = 0;
                while let Some(len) = cuts.cut(&window.buf, at) {
                    total += len as u64;
                    live.bytes.fetch_add(len as u64, Relaxed);
                    live.read_bytes.fetch_add(len as u64, Relaxed);
                    let index = file.add_chunk(len);
                    let chunk = ChunkJob { bytes: window.clone(), range: at..at + len, source: ChunkSource::File(file.clone(), index) };
                    at += len;
                    if let Err(unsent) = tx.send(chunk) {
                        // The pipeline failed (its error is reported there): settle the file.
                        file.unreadable.store(true, Release);
                        drop(unsent);
                        file.release();
                        return Ok(total);
                    }
                }
            }
        })();
        if !check_read(&job, read, warnings) {
            file.unreadable.store(true, Release);
        }
        file.release();
    }
}

/// Warns about files that could not be read or changed while being read; false if unreadable.
fn check_read(job: &FileJob, read: std::io::Result<u64>, warnings: &Warnings) -> bool {
    match read {
        Ok(n) => {
            if n != job.size {
                warnings.add(&job.path, format!("file changed during backup (size {} -> {n}); stored as read", job.size));
            }
            true
        }
        Err(e) => {
            warnings.add(&job.path, format!("could not read file: {e}"));
            false
        }
    }
}

/// Packs small files into one stream cut by the same chunker, so a tree of many small
/// files makes a few chunk objects rather than one per file (as duplicacy does). A small file
/// whose exact bytes the repository already holds (by whole-content hash: another path,
/// another machine, a touched but unchanged file) is not packed again.
struct Packer<'a> {
    repo: &'a Repository,
    sink: &'a Sink<'a>,
    tx: Sender<ChunkJob<'a>>,
    stream: StreamPacker,
    /// Files waiting for the chunks covering their stream range.
    waiting: VecDeque<Waiting>,
    /// Identical small files within the run share one stream range.
    seen: HashMap<ChunkId, (u64, u64)>,
}

struct Waiting {
    start: u64,
    end: u64,
    hash: ChunkId,
    content: Pending<Content>,
    /// Only the first file with this content is recorded in the index.
    first: bool,
}

/// A small file read whole, with the hash of its bytes.
struct SmallFile {
    job: FileJob,
    /// Where its bytes are in the batch buffer.
    range: std::ops::Range<usize>,
    hash: ChunkId,
}

impl<'a> Packer<'a> {
    fn new(repo: &'a Repository, sink: &'a Sink<'a>, tx: Sender<ChunkJob<'a>>) -> Self {
        let stream = StreamPacker::new(repo.cutter(), repo.config().hash);
        Packer { repo, sink, tx, stream, waiting: VecDeque::new(), seen: HashMap::new() }
    }

    fn run(mut self, rx: Receiver<FileJob>, warnings: &Warnings, live: &LiveStats) {
        let mut batch_bytes = Vec::new();
        while let Ok(first) = rx.recv() {
            let mut bytes = first.size;
            let mut batch = vec![first];
            while batch.len() < PACK_BATCH && bytes < PACK_BATCH_BYTES {
                let Ok(job) = rx.try_recv() else { break };
                bytes += job.size;
                batch.push(job);
            }
            // One buffer holds the whole batch, reused from batch to batch.
            batch_bytes.clear();
            let files: Vec<SmallFile> = batch.into_iter().filter_map(|job| self.read(job, &mut batch_bytes, warnings, live)).collect();
            let known = self.known_content(&files);
            for (file, known) in files.into_iter().zip(known) {
                match known {
                    Some(slices) => file.job.content.set(Some(FileContent { slices, hash: Some(file.hash) })),
                    None => {
                        let data = &batch_bytes[file.range.clone()];
                        self.add(file, data);
                    }
                }
                self.cut(false);
            }
        }
        self.cut(true);
    }

    /// Reads a small file whole; empty and unreadable files are settled here.
    fn read(&self, job: FileJob, batch: &mut Vec<u8>, warnings: &Warnings, live: &LiveStats) -> Option<SmallFile> {
        let max = self.repo.cutter().max_size() as u64;
        let start = batch.len();
        let read = File::open(&job.path).and_then(|f| f.take(max).read_to_end(batch));
        let n = (batch.len() - start) as u64;
        live.bytes.fetch_add(n, Relaxed);
        live.read_bytes.fetch_add(n, Relaxed);
        if !check_read(&job, read.map(|n| n as u64), warnings) {
            batch.truncate(start);
            job.content.set(None);
            return None;
        }
        if n == 0 {
            job.content.set(Some(FileContent { slices: Vec::new(), hash: None }));
            return None;
        }
        let hash = self.repo.hash(&batch[start..]);
        Some(SmallFile { job, range: start..batch.len(), hash })
    }

    /// For each file, the slices of identical content the index already holds. One batched
    /// query; an index that cannot answer fails the run like any store error.
    fn known_content(&self, files: &[SmallFile]) -> Vec<Option<Vec<Slice>>> {
        let ask: Vec<ChunkId> = files.iter().map(|f| f.hash).filter(|h| !self.seen.contains_key(h)).collect();
        let mut answers: HashMap<ChunkId, Vec<Slice>> = HashMap::new();
        if !ask.is_empty() {
            match self.repo.index().lookup_files(&ask) {
                Ok(found) => answers.extend(ask.into_iter().zip(found).filter_map(|(h, f)| Some((h, f?)))),
                Err(e) => self.sink.fail(e),
            }
        }
        files.iter().map(|f| answers.get(&f.hash).cloned()).collect()
    }

    fn add(&mut self, file: SmallFile, data: &[u8]) {
        let (range, first) = match self.seen.get(&file.hash) {
            Some(&r) => (r, false),
            None => {
                let r = self.stream.push(data);
                if self.seen.len() < SMALL_DEDUP_CAP {
                    self.seen.insert(file.hash, r);
                }
                (r, true)
            }
        };
        self.waiting.push_back(Waiting { start: range.0, end: range.1, hash: file.hash, content: file.job.content, first });
    }

    /// Sends every chunk whose boundary is final (all of them when `finish`), then settles
    /// the files those chunks complete.
    fn cut(&mut self, finish: bool) {
        loop {
            let mut data = self.sink.pool.take();
            let Some(id) = self.stream.cut_into(finish, &mut data) else {
                self.sink.pool.give(data);
                break;
            };
            // A closed channel means the pipeline failed; the error is reported there.
            let _ = self.tx.send(ChunkJob::whole(data, &self.sink.pool, ChunkSource::Packed(id)));
        }
        while self.waiting.front().is_some_and(|w| w.end <= self.stream.cut_through()) {
            let w = self.waiting.pop_front().expect("front exists");
            let slices = self.stream.slices(w.start, w.end);
            if w.first {
                self.sink.packed_file(FileEntry { hash: w.hash, content: slices.clone() });
            }
            w.content.set(Some(FileContent { slices, hash: Some(w.hash) }));
        }
    }
}

/// How many levels of inline directories `nodes` holds.
fn inline_depth(nodes: &[Node]) -> usize {
    nodes
        .iter()
        .filter_map(|n| n.entries.as_deref())
        .map(|entries| 1 + inline_depth(entries))
        .max()
        .unwrap_or(0)
}

fn build_trees(sink: &Sink, rx: Receiver<DirRecord>, counts: &Mutex<Summary>) -> Result<Node> {
    let mut done: Vec<Node> = Vec::new();
    let mut failed = None;
    for mut rec in rx {
        if failed.is_some() {
            continue;
        }
        let subdirs = rec.entries.iter().filter(|e| matches!(e, Entry::Subdir)).count();
        let mut subdirs = done.split_off(done.len() - subdirs).into_iter();
        let mut nodes = Vec::with_capacity(rec.entries.len());
        let mut c = Summary::default();
        for entry in rec.entries {
            match entry {
                Entry::Ready(n) => {
                    c.others += 1;
                    nodes.push(n);
                }
                Entry::Subdir => {
                    c.dirs += 1;
                    nodes.push(subdirs.next().expect("subdir built"));
                }
                Entry::File(mut n, content) => {
                    if let Some(FileContent { slices, hash }) = content.wait() {
                        n.size = slices.iter().map(|s| s.len() as u64).sum();
                        n.content = slices;
                        n.hash = hash;
                        c.files += 1;
                        c.total_bytes += n.size;
                        sink.live.files.fetch_add(1, Relaxed);
                        nodes.push(n);
                    }
                }
            }
        }
        {
            let mut t = counts.lock().expect("poisoned");
            t.files += c.files;
            t.dirs += c.dirs;
            t.others += c.others;
            t.total_bytes += c.total_bytes;
        }
        match sink.place_tree(&mut rec.node, Tree::new(nodes)) {
            Ok(()) => done.push(rec.node),
            Err(e) => failed = Some(e),
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let mut root = done.pop().ok_or_else(|| crate::error::invalid("backup", "walk produced no root"))?;
    // The snapshot names its root by id, so the root tree is always a chunk of its own.
    if let Some(nodes) = root.entries.take() {
        root.subtree = Some(sink.store_tree(&Tree::new(nodes))?);
    }
    Ok(root)
}

/// Which source paths lie below a directory: the walk only enters those.
#[derive(Default)]
struct SourceTrie {
    is_source: bool,
    children: std::collections::BTreeMap<std::ffi::OsString, SourceTrie>,
}

impl SourceTrie {
    fn new(sources: &[PathBuf]) -> Self {
        let mut root = SourceTrie::default();
        for s in sources {
            let mut node = &mut root;
            for c in s.components().skip(1) {
                node = node.children.entry(c.as_os_str().to_owned()).or_default();
            }
            node.is_source = true;
        }
        root
    }
}

struct Walker<'a> {
    opts: &'a BackupOptions,
    excludes: &'a Excludes,
    repo: &'a Repository,
    small_limit: u64,
    large_tx: Sender<FileJob>,
    small_tx: Sender<FileJob>,
    dir_tx: Sender<DirRecord>,
    hardlinks: HashMap<(u64, u64), Pending<Content>>,
    warnings: &'a Warnings<'a>,
    live: &'a LiveStats,
}

impl Walker<'_> {
    fn walk_root(&mut self, sources: &[PathBuf], parent: Option<Tree>) -> Result<()> {
        let trie = SourceTrie::new(sources);
        let root = Path::new("/");
        let meta = fs::symlink_metadata(root).at(root)?;
        let node = node_from_metadata(RawBytes(b"/".to_vec()), root, &meta).at(root)?.expect("/ is a directory");
        // `/` itself may be a source path: then its device is the one to stay on.
        let dev = trie.is_source.then(|| meta.dev());
        self.walk_dir(root, node, parent, Some(&trie), dev)
    }

    /// Walks one directory depth-first and emits its record after all of its subdirectories.
    /// `trie` is Some while above the source paths: then only the listed children are entered.
    fn walk_dir(&mut self, path: &Path, node: Node, parent: Option<Tree>, trie: Option<&SourceTrie>, dev: Option<u64>) -> Result<()> {
        let names: Vec<std::ffi::OsString> = match trie {
            Some(t) if !t.is_source => t.children.keys().cloned().collect(),
            _ => match fs::read_dir(path) {
                Ok(rd) => {
                    let mut v: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.file_name())).collect();
                    v.sort();
                    v
                }
                Err(e) => {
                    self.warnings.add(path, format!("could not list directory: {e}"));
                    Vec::new()
                }
            },
        };
        let mut entries = Vec::with_capacity(names.len());
        let in_sources = trie.is_none_or(|t| t.is_source);
        for name in names {
            let child = path.join(&name);
            let below = trie.filter(|t| !t.is_source).and_then(|t| t.children.get(&name));
            if below.is_none_or(|b| b.is_source) && self.excludes.matches(&child) {
                continue;
            }
            let meta = match fs::symlink_metadata(&child) {
                Ok(m) => m,
                Err(e) => {
                    self.warnings.add(&child, format!("could not stat: {e}"));
                    continue;
                }
            };
            let mut node = match node_from_metadata(RawBytes::from_os(&name), &child, &meta) {
                Ok(Some(n)) => n,
                Ok(None) => continue,
                Err(e) => {
                    self.warnings.add(&child, format!("could not read metadata: {e}"));
                    continue;
                }
            };
            let old = parent.as_ref().and_then(|t| {
                t.nodes
                    .binary_search_by(|n| n.name.cmp(&node.name))
                    .ok()
                    .map(|i| &t.nodes[i])
            });
            match node.kind {
                NodeType::Dir => {
                    if self.opts.one_file_system && in_sources && dev.is_some_and(|d| d != meta.dev()) {
                        // Another filesystem's mount point: kept, empty (as restic, tar and
                        // rsync -x do), so a restored system has its /proc, /sys and /dev.
                        self.dir_tx
                            .send(DirRecord { node, entries: Vec::new() })
                            .map_err(|_| crate::error::invalid("backup", "tree builder stopped"))?;
                        entries.push(Entry::Subdir);
                        continue;
                    }
                    // The device of the source path we are in; None above the source paths.
                    let sub_dev = match below {
                        Some(b) if !b.is_source => None,
                        Some(_) => Some(meta.dev()),
                        None => dev,
                    };
                    let old_tree = old
                        .and_then(|o| o.clone().take_subtree())
                        .and_then(|s| self.repo.open_subtree(s).ok())
                        .map(Tree::new);
                    self.walk_dir(&child, node.clone(), old_tree, below, sub_dev)?;
                    entries.push(Entry::Subdir);
                }
                NodeType::File => {
                    let content = self.file_content(&child, &mut node, old)?;
                    entries.push(Entry::File(node, content));
                }
                _ => entries.push(Entry::Ready(node)),
            }
        }
        self.dir_tx
            .send(DirRecord { node, entries })
            .map_err(|_| crate::error::invalid("backup", "tree builder stopped"))
    }

    fn file_content(&mut self, path: &Path, node: &mut Node, old: Option<&Node>) -> Result<Pending<Content>> {
        if let Some((dev, _)) = node.links
            && let Some(p) = self.hardlinks.get(&(dev, node.inode))
        {
            return Ok(p.clone());
        }
        let unchanged = old.is_some_and(|o| {
            o.kind == NodeType::File && o.size == node.size && o.mtime_ns == node.mtime_ns && o.ctime_ns == node.ctime_ns && o.inode == node.inode
        });
        let content = if unchanged && !self.opts.force_rehash {
            self.live.bytes.fetch_add(node.size, Relaxed);
            let old = old.expect("unchanged implies old");
            Pending::ready(Some(FileContent { slices: old.content.clone(), hash: old.hash }))
        } else if node.size == 0 {
            Pending::ready(Some(FileContent { slices: Vec::new(), hash: None }))
        } else {
            let job = FileJob { path: path.to_path_buf(), size: node.size, content: Pending::new() };
            let content = job.content.clone();
            let tx = if node.size < self.small_limit { &self.small_tx } else { &self.large_tx };
            tx.send(job).map_err(|_| crate::error::invalid("backup", "file readers stopped"))?;
            content
        };
        if let Some((dev, _)) = node.links {
            self.hardlinks.insert((dev, node.inode), content.clone());
        }
        Ok(content)
    }
}
