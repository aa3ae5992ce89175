//! Shared helpers for the end-to-end tests: run the real `tessera` binary in temp dirs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tessera")
}

/// A `tessera` command with --repo set and no inherited TESSERA_REPO.
pub fn tessera(repo: &Path) -> Command {
    let mut c = Command::new(bin());
    c.env_remove("TESSERA_REPO").arg("--repo").arg(repo);
    c
}

/// Runs and returns the output, whatever the exit code.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("tessera binary runs")
}

/// Runs and panics with stderr unless the exit code is 0.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "command failed ({:?}): {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        Env { dir: tempfile::tempdir().expect("temp dir") }
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    pub fn repo(&self) -> PathBuf {
        self.path("repo")
    }
    /// `tessera init` with extra args (e.g. ["--chunk-avg", "64KiB"]).
    pub fn init(&self, args: &[&str]) {
        ok(tessera(&self.repo()).arg("init").args(args));
    }
    /// Backs up `src` and returns the parsed `--json` report.
    pub fn backup(&self, src: &Path, args: &[&str]) -> serde_json::Value {
        let out = ok(tessera(&self.repo()).arg("backup").arg(src).arg("--json").args(args));
        serde_json::from_str(&out).expect("backup --json is JSON")
    }
    /// Restores `snapshot` into `target`, panicking on failure.
    pub fn restore(&self, snapshot: &str, target: &Path, args: &[&str]) {
        ok(tessera(&self.repo()).args(["restore", snapshot, "--target"]).arg(target).args(args));
    }
}

/// Where a backed-up absolute path lands below a restore target.
pub fn restored(target: &Path, src: &Path) -> PathBuf {
    target.join(src.strip_prefix("/").expect("absolute source"))
}

/// Deterministic pseudo-random bytes (xorshift), so tests need no data files.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
