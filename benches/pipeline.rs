//! Criterion micro-benchmarks of the backup data path:
//!   chunking (FastCDC 2020 via `ChunkerParams`), fingerprinting (BLAKE3 / SHA-256),
//!   object encoding (zstd-or-raw), and the whole `backup::backup` pipeline on a
//!   generated ~64 MiB tree (first backup into a fresh repository, and a no-change re-backup).
//!
//! Run: `cargo bench --bench pipeline` (a few minutes on 2 cores; sample sizes are small on
//! purpose). Filter with e.g. `cargo bench --bench pipeline -- chunking`.
//! Whole-binary comparisons against restic and borg are in `benches/compare.sh`.

use std::fs;
use std::hint::black_box;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tessera::Repository;
use tessera::backup::{BackupOptions, LiveStats, backup};
use tessera::chunker::ChunkerParams;
use tessera::fingerprint::HashAlgo;
use tessera::store::object;

const MIB: usize = 1 << 20;

/// Deterministic xorshift64* byte generator: incompressible data without a rand dependency.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        out.extend_from_slice(&s.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Text-like, compressible data (log lines built from a small vocabulary), about 3-5x with zstd.
fn text_bytes(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "backup", "chunk", "index", "shard", "bloom", "restore", "snapshot", "tree", "error", "warning",
        "info", "debug", "request", "client", "server", "latency", "bytes", "files", "dedup", "store",
    ];
    let rnd = random_bytes(len / 4 + 64, seed);
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0usize;
    let mut line = 0u64;
    while out.len() < len {
        line += 1;
        out.extend_from_slice(format!("2024-05-{:02}T12:{:02}:{:02}Z ", line % 28 + 1, line % 60, (line * 7) % 60).as_bytes());
        for _ in 0..(4 + rnd[i % rnd.len()] % 8) {
            out.extend_from_slice(WORDS[rnd[(i + 1) % rnd.len()] as usize % WORDS.len()].as_bytes());
            out.push(b' ');
            i += 2;
        }
        out.extend_from_slice(format!("id={}\n", rnd[i % rnd.len()] as u32 * 131 + line as u32).as_bytes());
    }
    out.truncate(len);
    out
}

fn bench_chunking(c: &mut Criterion) {
    let data = random_bytes(64 * MIB, 1);
    let mut g = c.benchmark_group("chunking");
    g.sample_size(10).measurement_time(Duration::from_secs(6)).warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Bytes(data.len() as u64));
    for avg in [256 * 1024u32, 1 << 20, 2 << 20] {
        let p = ChunkerParams::with_avg(avg).unwrap();
        g.bench_with_input(BenchmarkId::new("stream_64MiB", format!("avg{}KiB", avg / 1024)), &p, |b, p| {
            b.iter(|| {
                let mut n = 0usize;
                for chunk in p.stream(Cursor::new(&data[..])) {
                    n += chunk.unwrap().length;
                }
                black_box(n)
            })
        });
        // first_cut over the whole buffer, cut after cut (the in-memory path).
        g.bench_with_input(BenchmarkId::new("first_cut_64MiB", format!("avg{}KiB", avg / 1024)), &p, |b, p| {
            b.iter(|| {
                let mut pos = 0usize;
                let mut cuts = 0usize;
                while pos < data.len() {
                    let n = p.first_cut(&data[pos..]).max(1);
                    pos += n;
                    cuts += 1;
                }
                black_box(cuts)
            })
        });
    }
    g.finish();
}

fn bench_hashing(c: &mut Criterion) {
    let mut g = c.benchmark_group("hashing");
    g.sample_size(20).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    for size in [64 * 1024usize, MIB, 4 * MIB] {
        let data = random_bytes(size, 2);
        g.throughput(Throughput::Bytes(size as u64));
        for algo in [HashAlgo::Blake3, HashAlgo::Sha256] {
            g.bench_with_input(BenchmarkId::new(format!("{algo:?}"), format!("{}KiB", size / 1024)), &data, |b, d| {
                b.iter(|| black_box(algo.hash(black_box(d))))
            });
        }
    }
    g.finish();
}

fn bench_object_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("object_encode");
    g.sample_size(20).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    let inputs = [("text_1MiB", text_bytes(MIB, 3)), ("random_1MiB", random_bytes(MIB, 4))];
    for (name, data) in &inputs {
        let encoded = object::encode(data);
        eprintln!("object_encode/{name}: {} -> {} bytes", data.len(), encoded.len());
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_with_input(BenchmarkId::new("encode", name), data, |b, d| b.iter(|| black_box(object::encode(black_box(d)))));
    }
    // The default level's trade: CPU per byte against bytes stored, on text-like data.
    let text = &inputs[0].1;
    let mut out = Vec::new();
    for level in [1, 2, 3] {
        let stored = object::encode_into(text, level, &mut out).stored_len();
        eprintln!("object_encode/text_1MiB level {level}: {} -> {stored} bytes", text.len());
        g.bench_with_input(BenchmarkId::new("encode_text_1MiB_level", level), text, |b, d| {
            b.iter(|| object::encode_into(black_box(d), level, &mut out).stored_len())
        });
    }
    g.finish();
}

/// A ~64 MiB tree: 6 random 6 MiB files (incompressible, chunked), one 8 MiB log file
/// (compressible, chunked), and 1500 small files (~12 KiB each: source-like text and a few
/// random blobs, some duplicated) in nested directories.
fn make_tree(root: &Path) -> u64 {
    let mut total = 0u64;
    let big = root.join("big");
    fs::create_dir_all(&big).unwrap();
    for i in 0..6 {
        let d = random_bytes(6 * MIB, 100 + i);
        total += d.len() as u64;
        fs::write(big.join(format!("blob{i}.bin")), d).unwrap();
    }
    let log = text_bytes(8 * MIB, 200);
    total += log.len() as u64;
    fs::write(big.join("app.log"), log).unwrap();
    for i in 0..1500u64 {
        let dir = root.join(format!("src/d{:02}/e{:02}", i % 20, (i / 20) % 8));
        fs::create_dir_all(&dir).unwrap();
        let size = 2048 + (i as usize * 7919) % (20 * 1024);
        let d = if i % 10 == 0 { random_bytes(size, 300 + i) } else { text_bytes(size, 300 + i % 400) };
        total += d.len() as u64;
        fs::write(dir.join(format!("f{i:04}.txt")), d).unwrap();
    }
    total
}

fn opts(src: &Path) -> BackupOptions {
    BackupOptions {
        paths: vec![src.to_path_buf()],
        host: "bench".into(),
        tags: vec![],
        excludes: vec![],
        one_file_system: false,
        dry_run: false,
        force_rehash: false,
    }
}

fn run_backup(repo: &Repository, src: &Path) {
    let live = LiveStats::default();
    backup(repo, &opts(src), &live, &|_w| {}).expect("backup");
}

fn bench_backup(c: &mut Criterion) {
    let tmp = tempfile::Builder::new().prefix("tessera-bench-").tempdir().unwrap();
    let src = tmp.path().join("src-tree");
    let bytes = make_tree(&src);
    eprintln!("backup bench tree: {bytes} bytes");
    let mut g = c.benchmark_group("backup_pipeline");
    g.sample_size(10).measurement_time(Duration::from_secs(20)).warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Bytes(bytes));
    let counter = std::cell::Cell::new(0u32);
    let fresh_repo = |algo: HashAlgo| -> (PathBuf, Repository) {
        counter.set(counter.get() + 1);
        let p = tmp.path().join(format!("repo-{}", counter.get()));
        let r = Repository::init(&p, algo, ChunkerParams::default()).unwrap();
        (p, r)
    };
    for algo in [HashAlgo::Blake3, HashAlgo::Sha256] {
        // First backup into a fresh repository; repository creation and removal are not timed.
        g.bench_function(BenchmarkId::new("first_backup_64MiB", format!("{algo:?}")), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (p, repo) = fresh_repo(algo);
                    let t = Instant::now();
                    run_backup(&repo, &src);
                    total += t.elapsed();
                    drop(repo);
                    fs::remove_dir_all(&p).unwrap();
                }
                total
            })
        });
    }
    // No-change re-backup: parent snapshot exists, nothing changed.
    let (_p, repo) = fresh_repo(HashAlgo::Blake3);
    run_backup(&repo, &src);
    g.bench_function("nochange_backup_64MiB", |b| b.iter(|| run_backup(&repo, &src)));
    g.finish();
}

criterion_group!(benches, bench_chunking, bench_hashing, bench_object_encode, bench_backup);
criterion_main!(benches);
