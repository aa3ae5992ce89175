//! Progress display: indicatif bars on a terminal, plain periodic lines with --progress
//! elsewhere. The library only exposes counters; this module polls them.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use tessera::analyze::{AnalyzeLive, AnalyzeOptions};
use tessera::backup::{BackupOptions, LiveStats};
use tessera::restore::RestoreLive;

pub fn bytes(n: u64) -> String {
    HumanBytes(n).to_string()
}

/// What one tick shows: position, total (0 if unknown yet), and a message.
type Render<'a> = dyn Fn() -> (u64, u64, String) + Sync + 'a;

/// Runs `work` while a ticker thread draws `render` every so often.
fn with_ticker<T>(show: bool, in_bytes: bool, render: &Render, work: impl FnOnce() -> T) -> T {
    if !show {
        return work();
    }
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| tick(in_bytes, render, &done));
        let out = work();
        done.store(true, Relaxed);
        out
    })
}

fn tick(in_bytes: bool, render: &Render, done: &AtomicBool) {
    let terminal = std::io::stderr().is_terminal();
    let bar = ProgressBar::new(0);
    let template = if in_bytes {
        "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}"
    } else {
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} ETA {eta} {msg}"
    };
    bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
    let started = Instant::now();
    let mut last_line = Instant::now();
    while !done.load(Relaxed) {
        let (pos, len, msg) = render();
        if terminal {
            bar.set_length(len.max(pos));
            bar.set_position(pos);
            bar.set_message(msg);
        } else if last_line.elapsed() >= Duration::from_secs(1) {
            last_line = Instant::now();
            let (p, l) = if in_bytes { (bytes(pos), bytes(len)) } else { (pos.to_string(), len.to_string()) };
            eprintln!("[{:.0}s] {p} of {l}, {msg}", started.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bar.finish_and_clear();
}

pub fn with_backup_bar<T>(show: bool, opts: &BackupOptions, live: &LiveStats, work: impl FnOnce() -> T) -> T {
    let render = || {
        let (done, new) = (live.bytes.load(Relaxed), live.new_bytes.load(Relaxed));
        // New bytes include trees, so early on they can exceed the file bytes done.
        let dedup = if done > 0 { (100.0 * (1.0 - new as f64 / done as f64)).max(0.0) } else { 0.0 };
        let msg = format!(
            "{}/{} files, {} new ({dedup:.0}% deduplicated)",
            live.files.load(Relaxed),
            live.total_files.load(Relaxed),
            bytes(new)
        );
        (done, live.total_bytes.load(Relaxed), msg)
    };
    if !show {
        return work();
    }
    std::thread::scope(|s| {
        // Totals for the ETA come from a metadata-only walk beside the backup.
        s.spawn(|| tessera::backup::scan(&opts.paths, &opts.excludes, opts.one_file_system, live));
        with_ticker(true, true, &render, work)
    })
}

pub fn with_restore_bar<T>(show: bool, live: &RestoreLive, work: impl FnOnce() -> T) -> T {
    let render = || {
        let msg = format!("{}/{} files", live.files.load(Relaxed), live.total_files.load(Relaxed));
        (live.bytes.load(Relaxed), live.total_bytes.load(Relaxed), msg)
    };
    with_ticker(show, true, &render, work)
}

pub fn with_counter<T>(show: bool, what: &str, counter: &AtomicU64, work: impl FnOnce() -> T) -> T {
    let render = || (counter.load(Relaxed), 0, what.to_string());
    with_ticker(show, false, &render, work)
}

/// Bytes read over all configurations against the data size times the configurations.
pub fn with_analyze_bar<T>(show: bool, opts: &AnalyzeOptions, live: &AnalyzeLive, work: impl FnOnce() -> T) -> T {
    let scanned = LiveStats::default();
    let configs = opts.chunkers.len() as u64;
    let render = || {
        let total = scanned.total_bytes.load(Relaxed) * configs;
        (live.bytes.load(Relaxed), total, format!("{configs} chunker configurations"))
    };
    if !show {
        return work();
    }
    std::thread::scope(|s| {
        s.spawn(|| tessera::backup::scan(&opts.paths, &[], false, &scanned));
        with_ticker(true, true, &render, work)
    })
}
