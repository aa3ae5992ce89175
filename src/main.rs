//! `tessera`: the command-line shell over the library.

mod progress;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use tessera::backup::{BackupOptions, LiveStats};
use tessera::chunker::{ChunkerParams, parse_size};
use tessera::fingerprint::HashAlgo;
use tessera::manifest::{Node, NodeType, RawBytes, Snapshot};
use tessera::restore::{RestoreLive, RestoreOptions};
use tessera::analyze::{self, AnalyzeLive, AnalyzeOptions};
use tessera::config::DEFAULT_SHARDS;
use tessera::{Repository, check, restore, stats};

/// Deduplicating backups: content-defined chunks, stored once, restored anywhere.
#[derive(Parser)]
#[command(name = "tessera", version)]
struct Cli {
    /// Repository directory.
    #[arg(short, long, env = "TESSERA_REPO", global = true)]
    repo: Option<PathBuf>,
    /// Show progress even when stderr is not a terminal.
    #[arg(long, global = true)]
    progress: bool,
    /// No progress bars, even on a terminal.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a repository.
    Init {
        /// Chunk fingerprint: blake3 or sha256.
        #[arg(long, default_value = "blake3")]
        hash: HashAlgo,
        /// Average chunk size (min is a quarter, max four times it), e.g. 1MiB. The default
        /// is the measured best of repository size, memory and object count (docs/chunking.md).
        #[arg(long, default_value = "512KiB")]
        chunk_avg: String,
        /// zstd level for chunks: off, fast (1), default (2), max (19), or a number 1-19.
        #[arg(long, default_value = "default", value_parser = parse_compression)]
        compression: i32,
    },
    /// Back up files and directories.
    Backup {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Host name recorded in the snapshot (default: this machine's).
        #[arg(long)]
        host: Option<String>,
        /// Skip paths matching GLOB (a pattern without / matches names at any depth).
        #[arg(long = "exclude", value_name = "GLOB")]
        excludes: Vec<String>,
        /// Read exclude patterns from a file, one per line.
        #[arg(long = "exclude-file", value_name = "FILE")]
        exclude_files: Vec<PathBuf>,
        /// Do not cross into other filesystems below the given paths (their mount points are
        /// kept as empty directories).
        #[arg(short = 'x', long)]
        one_file_system: bool,
        /// Report what would be stored; write nothing.
        #[arg(short = 'n', long)]
        dry_run: bool,
        /// Read every file even when the parent snapshot says it is unchanged.
        #[arg(long)]
        force_rehash: bool,
        #[arg(long)]
        json: bool,
    },
    /// List snapshots.
    Snapshots {
        #[arg(long)]
        json: bool,
    },
    /// List the files in a snapshot.
    Ls {
        /// Snapshot id (or unique prefix) or `latest`.
        snapshot: String,
        /// Only below this path of the snapshot.
        path: Option<String>,
        /// Show type, mode, size and mtime.
        #[arg(short, long)]
        long: bool,
        #[arg(long)]
        json: bool,
    },
    /// Restore a snapshot.
    Restore {
        snapshot: String,
        #[arg(short, long)]
        target: PathBuf,
        /// Restore only this path of the snapshot (repeatable).
        #[arg(short, long = "include", value_name = "PATH")]
        includes: Vec<String>,
        /// Replace files that already exist in the target.
        #[arg(long)]
        overwrite: bool,
    },
    /// Verify the repository; with --read-data re-hash every chunk.
    Check {
        #[arg(long)]
        read_data: bool,
        #[arg(long)]
        json: bool,
    },
    /// Logical against stored bytes, and the dedup ratio.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Estimate dedup, stored bytes, objects and index size for chunker configurations,
    /// as a backup into a fresh repository would get them; writes no repository.
    Analyze {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Each path is a successive version: report what each backup would add.
        #[arg(long)]
        as_versions: bool,
        /// fastcdc:AVG[,AVG...] (min = avg/4, max = 4·avg), fastcdc:MIN/AVG/MAX or
        /// fixed:SIZE[,SIZE...]; repeatable [default: fastcdc:256KiB,1MiB,4MiB].
        #[arg(long = "chunker", value_name = "SPEC")]
        chunkers: Vec<String>,
        #[arg(long, default_value = "blake3")]
        hash: HashAlgo,
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        #[arg(long)]
        csv: bool,
        /// Also write an SVG plot to FILE.
        #[arg(long, value_name = "FILE")]
        plot: Option<PathBuf>,
    },
    /// Rebuild derived data from the chunk store.
    Repair {
        #[command(subcommand)]
        what: RepairWhat,
    },
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum RepairWhat {
    /// Rebuild the fingerprint index and Bloom filter from the chunk store.
    Index,
}

const EXIT_PARTIAL: u8 = 3;

fn main() -> ExitCode {
    // Like other Unix tools, stop quietly when the reader of our output goes away
    // (`tessera ls latest | head`) instead of reporting a broken pipe.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    // glibc gives each thread its own malloc arena (up to 8 per core); freed chunk buffers
    // then sit in arenas other threads do not reuse. One arena per core keeps peak memory
    // down by about a tenth at no measured cost in speed.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    unsafe { libc::mallopt(libc::M_ARENA_MAX, cores as libc::c_int) };
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, leaving out causes the message above them already quotes.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn run(cli: Cli) -> Result<u8> {
    let show_progress = !cli.quiet && (cli.progress || std::io::stderr().is_terminal());
    let repo_path = || cli.repo.clone().context("no repository given: pass --repo DIR or set TESSERA_REPO");
    let open = || -> Result<Repository> { Ok(Repository::open(&repo_path()?)?) };
    match cli.command {
        Command::Init { hash, chunk_avg, compression } => {
            let params = ChunkerParams::with_avg(parse_size(&chunk_avg)?)?;
            let path = repo_path()?;
            let mut config = tessera::config::Config::new(hash, params);
            config.zstd_level = compression;
            let repo = Repository::create(&path, config)?;
            println!(
                "created repository {} at {} ({hash}, chunks {}/{}/{} bytes, zstd level {})",
                repo.config().id, path.display(), params.min_size, params.avg_size, params.max_size, compression
            );
            Ok(0)
        }
        Command::Backup { paths, tags, host, mut excludes, exclude_files, one_file_system, dry_run, force_rehash, json } => {
            for f in &exclude_files {
                excludes.extend(tessera::walk::read_exclude_file(f)?);
            }
            let repo = open()?;
            let opts = BackupOptions { paths, host: host.unwrap_or_else(hostname), tags, excludes, one_file_system, dry_run, force_rehash };
            cmd_backup(&repo, &opts, show_progress, json)
        }
        Command::Snapshots { json } => cmd_snapshots(&open()?, json),
        Command::Ls { snapshot, path, long, json } => cmd_ls(&open()?, &snapshot, path, long, json),
        Command::Restore { snapshot, target, includes, overwrite } => {
            let repo = open()?;
            let (id, snap) = repo.find_snapshot(&snapshot)?;
            let live = RestoreLive::default();
            let opts = RestoreOptions { target, includes, overwrite };
            let report = progress::with_restore_bar(show_progress, &live, || restore::restore(&repo, &snap, &opts, &live))?;
            for e in &report.errors {
                eprintln!("error: {}: {}", e.path, e.error);
            }
            eprintln!(
                "restored snapshot {} to {}: {} files, {} dirs, {} other, {}",
                &id[..12], opts.target.display(), report.files, report.dirs, report.others, progress::bytes(report.bytes)
            );
            Ok(if report.errors.is_empty() { 0 } else { 1 })
        }
        Command::Check { read_data, json } => {
            let repo = open()?;
            let counter = std::sync::atomic::AtomicU64::new(0);
            let report = progress::with_counter(show_progress && read_data, "chunks verified", &counter, || check::check(&repo, read_data, &counter))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for p in &report.problems {
                    println!("problem: {p}");
                }
                for d in &report.damaged {
                    println!("damaged chunk {}: {}", d.id, d.reason);
                    for (sid, path) in &d.affected {
                        println!("  snapshot {}: {path}", &sid[..12.min(sid.len())]);
                    }
                }
                println!(
                    "checked {} snapshots, {} trees, {} objects{}: {}",
                    report.snapshots, report.trees, report.objects,
                    if read_data { format!(" ({} read and verified)", report.objects_read) } else { String::new() },
                    if report.is_ok() { "no errors" } else { "ERRORS FOUND" }
                );
            }
            Ok(if report.is_ok() { 0 } else { 1 })
        }
        Command::Stats { json } => {
            let s = stats::stats(&open()?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("snapshots:          {}", s.snapshots);
                println!("logical bytes:      {} ({})", s.logical_bytes, progress::bytes(s.logical_bytes));
                println!("unique bytes:       {} ({}) in {} chunks", s.unique_bytes, progress::bytes(s.unique_bytes), s.unique_chunks);
                println!("  file data:        {} ({}) in {} chunks", s.data_bytes, progress::bytes(s.data_bytes), s.data_chunks);
                println!("  trees:            {} ({}) in {} chunks", s.tree_bytes, progress::bytes(s.tree_bytes), s.tree_chunks);
                let c = &s.chunk_sizes;
                println!("data chunk sizes:   mean {}, median {}, p99 {}", progress::bytes(c.mean as u64), progress::bytes(c.median), progress::bytes(c.p99));
                println!("stored bytes:       {} ({}) in {} objects", s.stored_bytes, progress::bytes(s.stored_bytes), s.objects);
                println!("index on disk:      {} shards, {} Bloom filter", progress::bytes(s.index_bytes), progress::bytes(s.bloom_bytes));
                println!("dedup ratio:        {:.2}x", s.dedup_ratio);
                println!("compression ratio:  {:.2}x", s.compression_ratio);
                println!("total ratio:        {:.2}x", s.total_ratio);
            }
            Ok(0)
        }
        Command::Analyze { paths, as_versions, chunkers, hash, json, csv, plot } => {
            cmd_analyze(AnalyzeOptions { paths, chunkers: Vec::new(), hash, as_versions, index_shards: DEFAULT_SHARDS }, &chunkers, json, csv, plot, show_progress)
        }
        Command::Repair { what: RepairWhat::Index } => {
            let (chunks, files) = check::rebuild_index(&open()?)?;
            println!("index rebuilt from the chunk store: {chunks} chunks, {files} small files");
            Ok(0)
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "tessera", &mut std::io::stdout());
            Ok(0)
        }
    }
}

fn cmd_backup(repo: &Repository, opts: &BackupOptions, show_progress: bool, json: bool) -> Result<u8> {
    let live = LiveStats::default();
    let warn = |w: &tessera::manifest::FileWarning| eprintln!("warning: {}: {}", w.path, w.error);
    let report = progress::with_backup_bar(show_progress, opts, &live, || tessera::backup::backup(repo, opts, &live, &warn))?;
    let s = &report.snapshot.summary;
    if json {
        let out = serde_json::json!({ "snapshot": report.snapshot_id, "dry_run": opts.dry_run, "summary": s, "warnings": report.snapshot.warnings });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let what = match &report.snapshot_id {
            Some(id) => format!("snapshot {} saved", &id[..12]),
            None => "dry run, nothing written".to_string(),
        };
        println!(
            "{what}: {} files, {} dirs, {} total, {} read, {} new in {} chunks ({} stored) in {:.2}s",
            s.files, s.dirs, progress::bytes(s.total_bytes), progress::bytes(s.read_bytes),
            progress::bytes(s.new_bytes), s.new_chunks, progress::bytes(s.stored_bytes), s.duration_s
        );
    }
    if !report.snapshot.warnings.is_empty() {
        eprintln!("{} files could not be read completely (see warnings above)", report.snapshot.warnings.len());
        return Ok(EXIT_PARTIAL);
    }
    Ok(0)
}

fn cmd_analyze(mut opts: AnalyzeOptions, specs: &[String], json: bool, csv: bool, plot: Option<PathBuf>, show_progress: bool) -> Result<u8> {
    for spec in specs {
        opts.chunkers.extend(analyze::parse_chunkers(spec)?);
    }
    if specs.is_empty() {
        opts.chunkers = analyze::default_chunkers();
    }
    let live = AnalyzeLive::default();
    let report = progress::with_analyze_bar(show_progress, &opts, &live, || analyze::analyze(&opts, &live))?;
    for w in &report.warnings {
        eprintln!("warning: {}: {}", w.path, w.error);
    }
    if let Some(path) = &plot {
        analyze::write_plot(&report, path)?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if csv {
        print!("{}", report.to_csv());
    } else {
        print!("{}", report.to_table());
    }
    Ok(if report.warnings.is_empty() { 0 } else { EXIT_PARTIAL })
}

fn cmd_snapshots(repo: &Repository, json: bool) -> Result<u8> {
    let snaps = repo.snapshots()?;
    if json {
        let list: Vec<_> = snaps.iter().map(|(id, s)| snapshot_json(id, s)).collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(0);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{:<12}  {:<19}  {:<16}  {:<12}  {:>10}  paths", "id", "time", "host", "tags", "size")?;
    for (id, s) in &snaps {
        writeln!(
            out,
            "{:<12}  {:<19}  {:<16}  {:<12}  {:>10}  {}",
            &id[..12],
            s.time.with_timezone(&chrono::Local).format("%Y-%m-%d %H:%M:%S"),
            s.host,
            s.tags.join(","),
            progress::bytes(s.summary.total_bytes),
            s.paths.join(" ")
        )?;
    }
    writeln!(out, "{} snapshots", snaps.len())?;
    Ok(0)
}

fn snapshot_json(id: &str, s: &Snapshot) -> serde_json::Value {
    let mut v = serde_json::to_value(s).expect("snapshot serializes");
    v["id"] = serde_json::Value::String(id.to_string());
    v
}

fn cmd_ls(repo: &Repository, spec: &str, path: Option<String>, long: bool, json: bool) -> Result<u8> {
    let (id, snap) = repo.find_snapshot(spec)?;
    let includes: Vec<String> = path.into_iter().collect();
    let items = restore::plan(repo, &snap, &includes)?;
    let mut out = std::io::stdout().lock();
    if json {
        let list: Vec<_> = items
            .iter()
            .map(|i| serde_json::json!({"path": RawBytes::from_os(Path::new("/").join(&i.rel).as_os_str()), "type": i.node.kind, "mode": i.node.mode, "size": i.node.size, "uid": i.node.uid, "gid": i.node.gid, "mtime_ns": i.node.mtime_ns}))
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&serde_json::json!({"snapshot": id, "entries": list}))?)?;
        return Ok(0);
    }
    for i in &items {
        let p = Path::new("/").join(&i.rel);
        if long {
            writeln!(out, "{} {:>5} {:>5} {:>12} {} {}", mode_string(&i.node), i.node.uid, i.node.gid, i.node.size, mtime_string(i.node.mtime_ns), p.display())?;
        } else {
            writeln!(out, "{}", p.display())?;
        }
    }
    Ok(0)
}

fn mode_string(n: &Node) -> String {
    let t = match n.kind {
        NodeType::File => '-',
        NodeType::Dir => 'd',
        NodeType::Symlink => 'l',
        NodeType::Fifo => 'p',
        NodeType::Chardev => 'c',
        NodeType::Blockdev => 'b',
    };
    let mut s = String::from(t);
    for (i, c) in "rwxrwxrwx".chars().enumerate() {
        s.push(if n.mode & (0o400 >> i) != 0 { c } else { '-' });
    }
    s
}

fn mtime_string(ns: i64) -> String {
    chrono::DateTime::from_timestamp(ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000) as u32)
        .map(|t| t.with_timezone(&chrono::Local).format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

fn parse_compression(s: &str) -> std::result::Result<i32, String> {
    let level = match s {
        "off" => 0,
        "fast" => 1,
        "default" => tessera::store::object::DEFAULT_LEVEL,
        "max" => tessera::store::object::MAX_LEVEL,
        n => n.parse().map_err(|_| format!("{n:?} is not off, fast, default, max or a level 1-19"))?,
    };
    if !(0..=tessera::store::object::MAX_LEVEL).contains(&level) {
        return Err(format!("level {level} is out of range 1-19"));
    }
    Ok(level)
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
