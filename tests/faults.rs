//! End-to-end fault and bad-input tests: the real `tessera` binary on real files.
//!
//! Every failure case asserts three things: the error names what went wrong and where, the
//! exit code, and that nothing was written (no snapshot, no partial restored file).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Env, ok, restored, run, stderr, tessera};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------
// Helpers (local to this file)
// ---------------------------------------------------------------------------------------

const NOBODY: u32 = 65534;

/// Fast deterministic pseudo-random bytes (xorshift64, eight bytes per step).
fn rand_data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn write(path: &Path, data: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Snapshot ids (file names) in the repository.
fn snapshot_ids(repo: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(repo.join("snapshots"))
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.retain(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()));
    v.sort();
    v
}

fn load_snapshot(repo: &Path, id: &str) -> Value {
    serde_json::from_slice(&fs::read(repo.join("snapshots").join(id)).unwrap()).unwrap()
}

fn object_path(repo: &Path, hex: &str) -> PathBuf {
    repo.join("objects").join(&hex[..2]).join(hex)
}

/// Decodes a chunk object (raw or zstd) without verifying it.
fn read_object(repo: &Path, hex: &str) -> Vec<u8> {
    let bytes = fs::read(object_path(repo, hex)).unwrap();
    assert_eq!(&bytes[..4], b"TSRO", "object {hex} header");
    let raw_len = u64::from_le_bytes(bytes[8..16].try_into().unwrap()) as usize;
    match bytes[5] {
        0 => bytes[16..].to_vec(),
        1 => zstd::bulk::decompress(&bytes[16..], raw_len).unwrap(),
        c => panic!("object {hex}: unknown codec {c}"),
    }
}

/// Writes a raw-codec object holding `payload` (repository must use BLAKE3); returns its id.
fn write_object(repo: &Path, payload: &[u8]) -> String {
    let hex = blake3::hash(payload).to_hex().to_string();
    let mut obj = Vec::with_capacity(16 + payload.len());
    obj.extend_from_slice(b"TSRO");
    obj.extend_from_slice(&[1, 0, 0, 0]);
    obj.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    obj.extend_from_slice(payload);
    let path = object_path(repo, &hex);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, obj).unwrap();
    hex
}

/// Writes a tree chunk in the current tree format (version 2); returns its id.
fn write_tree(repo: &Path, nodes: Vec<Value>) -> String {
    write_tree_v(repo, 2, nodes)
}

fn write_tree_v(repo: &Path, version: u32, nodes: Vec<Value>) -> String {
    write_object(repo, &serde_json::to_vec(&json!({"version": version, "nodes": nodes})).unwrap())
}

/// Writes a snapshot record by hand; its file name is the BLAKE3 of its bytes.
fn write_snapshot(repo: &Path, snap: &Value) -> String {
    let bytes = serde_json::to_vec_pretty(snap).unwrap();
    let id = blake3::hash(&bytes).to_hex().to_string();
    fs::write(repo.join("snapshots").join(&id), bytes).unwrap();
    id
}

fn load_tree(repo: &Path, hex: &str) -> Value {
    serde_json::from_slice(&read_object(repo, hex)).unwrap()
}

/// A directory node's entries: from its own tree chunk (`subtree`) or inline (`entries`).
fn children(repo: &Path, dir: &Value) -> Vec<Value> {
    match (dir["subtree"].as_str(), dir["entries"].as_array()) {
        (Some(t), None) => load_tree(repo, t)["nodes"].as_array().unwrap().clone(),
        (None, Some(entries)) => entries.clone(),
        _ => panic!("not a directory node with exactly one of subtree and entries: {dir}"),
    }
}

/// The tree node at absolute path `abs` in a snapshot, following tree chunks and inline
/// directories alike.
fn node_at(repo: &Path, snap_id: &str, abs: &Path) -> Value {
    let root = load_snapshot(repo, snap_id)["tree"].as_str().unwrap().to_string();
    let mut nodes = load_tree(repo, &root)["nodes"].as_array().unwrap().clone();
    let comps: Vec<String> = abs.components().skip(1).map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    for (i, c) in comps.iter().enumerate() {
        let node = nodes.iter().find(|n| n["name"] == c.as_str()).cloned();
        let node = node.unwrap_or_else(|| panic!("{} not in snapshot {snap_id}", abs.display()));
        if i + 1 == comps.len() {
            return node;
        }
        nodes = children(repo, &node);
    }
    unreachable!()
}

fn content_chunks(node: &Value) -> Vec<String> {
    node["content"].as_array().unwrap().iter().map(|s| s[0].as_str().unwrap().to_string()).collect()
}

/// Every chunk id a snapshot references: its tree chunks (including those reached through
/// inline directories) and its file chunks. Inline directories are no chunks of their own.
fn referenced(repo: &Path, snap_id: &str, out: &mut BTreeSet<String>) {
    let root = load_snapshot(repo, snap_id)["tree"].as_str().unwrap().to_string();
    let mut stack: Vec<Vec<Value>> = Vec::new();
    if out.insert(root.clone()) {
        stack.push(load_tree(repo, &root)["nodes"].as_array().unwrap().clone());
    }
    while let Some(nodes) = stack.pop() {
        for n in nodes {
            if let Some(c) = n["content"].as_array() {
                out.extend(c.iter().map(|s| s[0].as_str().unwrap().to_string()));
            }
            if let Some(s) = n["subtree"].as_str()
                && out.insert(s.to_string())
            {
                stack.push(load_tree(repo, s)["nodes"].as_array().unwrap().clone());
            }
            if let Some(e) = n["entries"].as_array() {
                stack.push(e.clone());
            }
        }
    }
}

fn count_objects(repo: &Path) -> usize {
    let mut n = 0;
    for d in fs::read_dir(repo.join("objects")).unwrap() {
        let d = d.unwrap();
        let name = d.file_name().to_string_lossy().into_owned();
        if name.len() == 2 {
            n += fs::read_dir(d.path()).unwrap().count();
        }
    }
    n
}

/// Every entry below `root` (relative path -> Some(bytes) for files, None otherwise).
fn tree_contents(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if m.is_dir() {
                stack.push(p.clone());
                out.insert(rel, None);
            } else if m.is_file() {
                out.insert(rel, Some(fs::read(&p).unwrap()));
            } else {
                out.insert(rel, None);
            }
        }
    }
    out
}

fn assert_same_tree(src: &Path, copy: &Path) {
    let (a, b) = (tree_contents(src), tree_contents(copy));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "entries of {} vs {}", src.display(), copy.display());
    for (k, v) in &a {
        assert!(v == &b[k], "content of {} differs after restore", k.display());
    }
}

/// Restore must never leave its temporary files behind.
fn assert_no_restore_temps(root: &Path) {
    for k in tree_contents(root).keys() {
        let name = k.file_name().unwrap().to_string_lossy();
        assert!(!name.starts_with(".tessera-restore-"), "leftover temp file {}", k.display());
    }
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn chown_r(p: &Path, uid: u32) {
    let st = Command::new("chown").arg("-R").arg(format!("{uid}:{uid}")).arg(p).status().unwrap();
    assert!(st.success());
}

/// A `tessera` command run as the unprivileged user `nobody` (supplementary groups dropped).
fn tessera_as_nobody(repo: &Path) -> Command {
    let mut c = tessera(repo);
    c.uid(NOBODY).gid(NOBODY).env("HOME", "/");
    c
}

fn rchar(pid: u32) -> Option<u64> {
    let io = fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines().find_map(|l| l.strip_prefix("rchar: ")).and_then(|v| v.trim().parse().ok())
}

fn kill(pid: u32, sig: i32) {
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Waits until every thread of `pid` is stopped (state T), so no read is in flight.
fn wait_stopped(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all_stopped = fs::read_dir(format!("/proc/{pid}/task")).map_or(true, |rd| {
            rd.filter_map(|e| e.ok()).all(|t| {
                fs::read_to_string(t.path().join("stat")).map_or(true, |s| {
                    let state = s.rsplit_once(") ").map(|(_, r)| r.chars().next().unwrap_or('?'));
                    matches!(state, Some('T') | Some('t') | Some('Z') | Some('X'))
                })
            })
        });
        if all_stopped {
            return;
        }
        assert!(Instant::now() < deadline, "process {pid} did not stop");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The file offset of `pid`'s open descriptor on `path`, if it has one.
fn open_file_pos(pid: u32, path: &Path) -> Option<u64> {
    for e in fs::read_dir(format!("/proc/{pid}/fd")).ok()?.filter_map(|e| e.ok()) {
        if fs::read_link(e.path()).ok().as_deref() == Some(path) {
            let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", e.file_name().to_string_lossy())).ok()?;
            return info.lines().find_map(|l| l.strip_prefix("pos:")).and_then(|v| v.trim().parse().ok());
        }
    }
    None
}

fn spawn_quiet(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

// ---------------------------------------------------------------------------------------
// 1. Bad input
// ---------------------------------------------------------------------------------------

#[test]
fn backup_of_missing_source_fails_and_writes_no_snapshot() {
    let env = Env::new();
    env.init(&[]);
    let present = env.path("src");
    write(&present.join("a"), b"hello");
    let missing = env.path("no/such/dir");

    for args in [vec![missing.clone()], vec![present.clone(), missing.clone()]] {
        let out = run(tessera(&env.repo()).arg("backup").args(&args));
        let err = stderr(&out);
        assert_eq!(code(&out), Some(1), "{err}");
        assert!(err.contains("does not exist") && err.contains(&missing.display().to_string()), "error must name the missing source: {err}");
        assert!(snapshot_ids(&env.repo()).is_empty(), "no snapshot may be written");
    }
    assert_eq!(count_objects(&env.repo()), 0, "no object may be written");
}

#[test]
fn missing_repository_is_named_and_not_created() {
    let env = Env::new();
    let src = env.path("src");
    write(&src.join("a"), b"x");
    let repo = env.path("nowhere");
    let cmds: Vec<Vec<&str>> = vec![vec!["snapshots"], vec!["check"], vec!["stats"], vec!["restore", "latest", "--target", "/nonexistent-target"]];
    for args in cmds {
        let out = run(tessera(&repo).args(&args));
        let err = stderr(&out);
        assert_eq!(code(&out), Some(1), "{args:?}: {err}");
        assert!(err.contains("not a Tessera repository") && err.contains(&repo.display().to_string()), "{args:?}: {err}");
    }
    let out = run(tessera(&repo).arg("backup").arg(&src));
    assert_eq!(code(&out), Some(1));
    assert!(stderr(&out).contains(&repo.display().to_string()), "{}", stderr(&out));
    assert!(!repo.exists(), "a missing repository must not be created by backup");
    assert!(!Path::new("/nonexistent-target").exists());

    // No --repo at all.
    let out = run(Command::new(common::bin()).env_remove("TESSERA_REPO").arg("snapshots"));
    assert_eq!(code(&out), Some(1));
    assert!(stderr(&out).contains("--repo"), "{}", stderr(&out));
}

#[test]
fn directory_that_is_not_a_repository_is_refused_untouched() {
    let env = Env::new();
    let notrepo = env.path("notrepo");
    write(&notrepo.join("some-file"), b"precious");
    fs::create_dir_all(notrepo.join("objects")).unwrap();
    let src = env.path("src");
    write(&src.join("a"), b"x");
    let before = tree_contents(&notrepo);

    for args in [vec!["snapshots"], vec!["check", "--read-data"], vec!["repair", "index"]] {
        let out = run(tessera(&notrepo).args(&args));
        let err = stderr(&out);
        assert_eq!(code(&out), Some(1), "{args:?}: {err}");
        assert!(err.contains("not a Tessera repository") && err.contains(&notrepo.display().to_string()), "{args:?}: {err}");
    }
    let out = run(tessera(&notrepo).arg("backup").arg(&src));
    assert_eq!(code(&out), Some(1));
    assert!(stderr(&out).contains("not a Tessera repository"), "{}", stderr(&out));
    assert_eq!(tree_contents(&notrepo), before, "nothing may be written into a non-repository");

    // A config file that is not a Tessera config is refused the same way.
    write(&notrepo.join("config"), br#"{"something": "else"}"#);
    let out = run(tessera(&notrepo).arg("backup").arg(&src));
    assert_eq!(code(&out), Some(1));
    assert!(stderr(&out).contains("not a Tessera repository"), "{}", stderr(&out));
    assert!(!notrepo.join("snapshots").exists() && !notrepo.join("index").exists());
}

#[test]
fn init_over_existing_repository_or_files_is_refused() {
    let env = Env::new();
    env.init(&[]);
    let config = fs::read(env.repo().join("config")).unwrap();
    let before = tree_contents(&env.repo());
    for args in [vec![], vec!["--hash", "sha256"], vec!["--chunk-avg", "256KiB"]] {
        let out = run(tessera(&env.repo()).arg("init").args(&args));
        let err = stderr(&out);
        assert_eq!(code(&out), Some(1), "{err}");
        assert!(err.contains("already holds a repository") && err.contains(&env.repo().display().to_string()), "{err}");
    }
    assert_eq!(fs::read(env.repo().join("config")).unwrap(), config, "config must not change");
    assert_eq!(tree_contents(&env.repo()).len(), before.len());

    // A non-empty directory that is not a repository is not initialised over either.
    let other = env.path("other");
    write(&other.join("file"), b"keep me");
    let out = run(tessera(&other).arg("init"));
    assert_eq!(code(&out), Some(1));
    assert!(stderr(&out).contains(&other.display().to_string()), "{}", stderr(&out));
    assert_eq!(tree_contents(&other).len(), 1, "nothing may be added to a non-empty directory");
}

#[test]
fn newer_config_version_asks_for_an_upgrade() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    write(&src.join("a"), b"data");
    let cfg_path = env.repo().join("config");
    let mut cfg: Value = serde_json::from_slice(&fs::read(&cfg_path).unwrap()).unwrap();
    assert_eq!(cfg["version"], 1);
    cfg["version"] = json!(2);
    fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();

    let target = env.path("target");
    let cmds: Vec<Vec<String>> = vec![
        vec!["backup".into(), src.display().to_string()],
        vec!["snapshots".into()],
        vec!["check".into()],
        vec!["restore".into(), "latest".into(), "--target".into(), target.display().to_string()],
    ];
    for args in cmds {
        let out = run(tessera(&env.repo()).args(&args));
        let err = stderr(&out);
        assert_eq!(code(&out), Some(1), "{args:?}: {err}");
        assert!(err.contains("newer") && err.contains("upgrade"), "{args:?}: {err}");
        assert!(err.contains(&cfg_path.display().to_string()) && err.contains('2'), "{args:?} must name the config and version: {err}");
    }
    assert!(snapshot_ids(&env.repo()).is_empty());
    assert_eq!(count_objects(&env.repo()), 0);
    assert!(!target.exists());
}

#[test]
fn unknown_snapshot_id_is_named_and_nothing_restored() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    write(&src.join("a"), b"data");
    let id = env.backup(&src, &[])["snapshot"].as_str().unwrap().to_string();
    let wrong = if id.starts_with('0') { "1234abcd" } else { "0000abcd" };
    let target = env.path("target");

    let out = run(tessera(&env.repo()).args(["restore", wrong, "--target"]).arg(&target));
    assert_eq!(code(&out), Some(1));
    assert!(stderr(&out).contains(wrong) && stderr(&out).contains("no snapshot"), "{}", stderr(&out));
    assert!(!target.exists(), "restore of an unknown snapshot must not create the target");

    for args in [vec!["ls", wrong], vec!["ls", "not-hex-at-all"]] {
        let out = run(tessera(&env.repo()).args(&args));
        assert_eq!(code(&out), Some(1));
        assert!(stderr(&out).contains(args[1]), "{}", stderr(&out));
    }
    // `latest` in an empty repository.
    let empty = Env::new();
    empty.init(&[]);
    let out = run(tessera(&empty.repo()).args(["restore", "latest", "--target"]).arg(&target));
    assert_eq!(code(&out), Some(1));
    assert!(stderr(&out).contains("latest"), "{}", stderr(&out));
    assert!(!target.exists());
}

#[test]
fn ambiguous_snapshot_prefix_is_refused() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    write(&src.join("a"), b"data");
    let id = env.backup(&src, &[])["snapshot"].as_str().unwrap().to_string();
    let base = load_snapshot(&env.repo(), &id);

    // Snapshot records that differ only in a tag; by pigeonhole two of 17 share a first hex digit.
    let mut by_first: BTreeMap<char, Vec<String>> = BTreeMap::new();
    by_first.entry(id.chars().next().unwrap()).or_default().push(id.clone());
    let mut pair = None;
    for i in 0..64 {
        let mut s = base.clone();
        s["tags"] = json!([format!("variant-{i}")]);
        let bytes = serde_json::to_vec_pretty(&s).unwrap();
        let sid = blake3::hash(&bytes).to_hex().to_string();
        let first = sid.chars().next().unwrap();
        let v = by_first.entry(first).or_default();
        v.push(sid.clone());
        fs::write(env.repo().join("snapshots").join(&sid), bytes).unwrap();
        if v.len() >= 2 {
            pair = Some((first, v.clone()));
            break;
        }
    }
    let (prefix, ids) = pair.expect("pigeonhole gives two ids with a shared first digit");
    let prefix = prefix.to_string();
    let target = env.path("target");
    let out = run(tessera(&env.repo()).args(["restore", &prefix, "--target"]).arg(&target));
    let err = stderr(&out);
    assert_eq!(code(&out), Some(1), "{err}");
    assert!(err.contains("ambiguous") && err.contains(&format!("{prefix:?}")), "{err}");
    for sid in &ids {
        assert!(err.contains(&sid[..12]), "error must list match {}: {err}", &sid[..12]);
    }
    assert!(!target.exists(), "an ambiguous restore must not create the target");
    // The full id still works.
    env.restore(&ids[0], &target, &[]);
    assert_same_tree(&src, &restored(&target, &src));
}

#[test]
fn invalid_chunk_avg_is_refused_and_nothing_created() {
    let env = Env::new();
    for (i, bad) in ["abc", "0", "1", "257", "100KB3", "-5", "8MiB", "1GiB", "9999999999", "1.5MiB", "12XB"].iter().enumerate() {
        let repo = env.path(&format!("repo{i}"));
        let out = run(tessera(&repo).arg("init").arg(format!("--chunk-avg={bad}")));
        let err = stderr(&out);
        assert!(matches!(code(&out), Some(1) | Some(2)), "--chunk-avg {bad}: exit {:?}: {err}", code(&out));
        assert!(err.contains("invalid"), "--chunk-avg {bad}: {err}");
        assert!(err.contains(bad) || err.contains("chunk sizes"), "--chunk-avg {bad}: error names neither the value nor the chunk sizes: {err}");
        assert!(!repo.exists(), "--chunk-avg {bad}: repository directory must not be created");
    }
    // The bounds themselves are accepted.
    let out = run(tessera(&env.path("ok-min")).args(["init", "--chunk-avg", "256"]));
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let out = run(tessera(&env.path("ok-max")).args(["init", "--chunk-avg", "4MiB"]));
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
}

#[test]
fn unknown_hash_is_refused_and_nothing_created() {
    let env = Env::new();
    for bad in ["md5", "sha1", "", "blake2"] {
        let repo = env.path("repo");
        let out = run(tessera(&repo).args(["init", "--hash", bad]));
        let err = stderr(&out);
        // Rejected while parsing arguments: clap's usage-error exit code 2 (not 0, not 3).
        assert!(matches!(code(&out), Some(1) | Some(2)), "--hash {bad:?}: exit {:?}: {err}", code(&out));
        assert!(err.contains("--hash") || err.contains("hash"), "{err}");
        if !bad.is_empty() {
            assert!(err.contains(bad) && err.contains("blake3") && err.contains("sha256"), "--hash {bad}: {err}");
        }
        assert!(!repo.exists());
    }
}

// ---------------------------------------------------------------------------------------
// 2. Unreadable files and directories (run as an unprivileged user)
// ---------------------------------------------------------------------------------------

#[test]
fn unreadable_file_and_directory_are_warned_about_and_skipped() {
    let env = Env::new();
    chmod(env.dir.path(), 0o755);
    let src = env.path("src");
    let a = src.join("a.txt");
    let big = src.join("big.bin");
    let secret = src.join("secret.bin");
    let big_secret = src.join("sub/big-secret.bin");
    let c = src.join("sub/c.txt");
    let locked = src.join("locked");
    write(&a, b"readable a");
    write(&big, &rand_data(1, 700 << 10));
    write(&secret, b"you cannot read me");
    write(&big_secret, &rand_data(2, 900 << 10));
    write(&c, b"readable c");
    write(&locked.join("hidden.txt"), b"below a directory nobody may list");
    fs::create_dir_all(env.repo()).unwrap();
    chown_r(env.dir.path(), NOBODY);
    ok(tessera_as_nobody(&env.repo()).args(["init", "--chunk-avg", "256KiB"]));
    chmod(&secret, 0o000);
    chmod(&big_secret, 0o000);
    chmod(&locked, 0o000);

    // Root could read these anyway; the unprivileged user cannot.
    let probe = run(Command::new("cat").arg(&secret).uid(NOBODY).gid(NOBODY));
    assert!(!probe.status.success(), "test setup: nobody must not be able to read {}", secret.display());

    let out = run(tessera_as_nobody(&env.repo()).arg("backup").arg(&src).arg("--json"));
    let err = stderr(&out);
    assert_eq!(code(&out), Some(3), "partial backup exits 3: {err}");
    for p in [&secret, &big_secret, &locked] {
        assert!(err.contains(&format!("warning: {}", p.display())), "stderr must warn about {}: {err}", p.display());
    }
    assert!(err.contains("Permission denied"), "{err}");

    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let id = report["snapshot"].as_str().expect("snapshot written despite warnings").to_string();
    assert_eq!(snapshot_ids(&env.repo()), vec![id.clone()]);
    let snap = load_snapshot(&env.repo(), &id);
    let warned: BTreeSet<String> = snap["warnings"].as_array().unwrap().iter().map(|w| w["path"].as_str().unwrap().to_string()).collect();
    let expect: BTreeSet<String> = [&secret, &big_secret, &locked].iter().map(|p| p.display().to_string()).collect();
    assert_eq!(warned, expect, "the snapshot records every warning");
    assert_eq!(snap["summary"]["files"], 3, "three readable files");

    let target = env.path("target");
    env.restore(&id, &target, &[]);
    let r = restored(&target, &src);
    assert_eq!(fs::read(r.join("a.txt")).unwrap(), b"readable a");
    assert_eq!(fs::read(r.join("big.bin")).unwrap(), fs::read(&big).unwrap());
    assert_eq!(fs::read(r.join("sub/c.txt")).unwrap(), b"readable c");
    assert!(!r.join("secret.bin").exists(), "an unreadable file is not restored as an empty file");
    assert!(!r.join("sub/big-secret.bin").exists());
    assert!(r.join("locked").is_dir(), "the unlistable directory itself is recorded");
    assert!(!r.join("locked/hidden.txt").exists());
    assert_no_restore_temps(&target);
    ok(tessera(&env.repo()).args(["check", "--read-data"]));
}

// ---------------------------------------------------------------------------------------
// 3. A file that changes while it is being read
// ---------------------------------------------------------------------------------------

/// Deterministic: the backup is stopped (SIGSTOP) while it holds the file open with its read
/// offset short of the end, the file is grown, and the backup continued. The precondition
/// (open, offset < stat size) is checked while every thread is stopped; if the poll missed
/// the window the attempt is repeated, so the outcome never depends on timing.
#[test]
fn file_growing_during_backup_is_warned_and_stored_as_read() {
    const SIZE: usize = 48 << 20;
    const EXTRA: usize = 1 << 20;
    for attempt in 0..5 {
        let env = Env::new();
        env.init(&["--chunk-avg", "256KiB"]);
        let src = env.path("src");
        let grow = src.join("grow.bin");
        write(&src.join("steady.txt"), b"unchanged");
        write(&grow, &rand_data(30, SIZE));

        let mut child = spawn_quiet(tessera(&env.repo()).arg("backup").arg(&src).arg("--json"));
        let pid = child.id();
        let mut grown = false;
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if open_file_pos(pid, &grow).is_some() {
                kill(pid, libc::SIGSTOP);
                wait_stopped(pid);
                if let Some(pos) = open_file_pos(pid, &grow)
                    && pos < SIZE as u64
                {
                    let mut f = fs::OpenOptions::new().append(true).open(&grow).unwrap();
                    f.write_all(&rand_data(31, EXTRA)).unwrap();
                    grown = true;
                }
                kill(pid, libc::SIGCONT);
                break;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        let out = child.wait_with_output().unwrap();
        if !grown {
            eprintln!("attempt {attempt}: missed the read window, retrying");
            continue;
        }
        let err = stderr(&out);
        assert_eq!(code(&out), Some(3), "{err}");
        assert!(err.contains(&format!("warning: {}", grow.display())) && err.contains("changed during backup"), "{err}");
        assert!(err.contains(&format!("{SIZE} -> {}", SIZE + EXTRA)), "the warning gives both sizes: {err}");
        let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
        let id = report["snapshot"].as_str().unwrap();
        let snap = load_snapshot(&env.repo(), id);
        assert_eq!(snap["warnings"][0]["path"], grow.display().to_string());
        // Stored as read: the restored file is the grown file, whole.
        let target = env.path("target");
        env.restore(id, &target, &[]);
        assert_same_tree(&src, &restored(&target, &src));
        return;
    }
    panic!("never caught the backup while it was reading the file");
}

// ---------------------------------------------------------------------------------------
// 4. Backup killed with SIGKILL mid-way
// ---------------------------------------------------------------------------------------

#[test]
fn killed_backup_leaves_no_snapshot_and_next_run_reuses_chunks() {
    let env = Env::new();
    env.init(&["--chunk-avg", "256KiB"]);
    let src = env.path("src");
    let mut total = 0u64;
    for i in 0..12u64 {
        let len = (12 << 20) + (i as usize) * 4099;
        write(&src.join(format!("d{}/f{i}.bin", i % 3)), &rand_data(100 + i, len));
        total += len as u64;
    }
    for i in 0..40u64 {
        let data = format!("small file {i}\n").repeat(i as usize * 10 + 1);
        write(&src.join(format!("small/s{i}.txt")), data.as_bytes());
        total += data.len() as u64;
    }

    // Kill points: fractions of the source bytes read, from a fixed seed.
    let mut x = 0x7e55e2a_u64;
    let mut fractions = Vec::new();
    for lo in [0.05, 0.30, 0.60] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        fractions.push(lo + (x % 1000) as f64 / 1000.0 * 0.2);
    }
    // A rerun also re-reads (to verify) the objects an earlier run left unindexed, so a kill
    // meant to land at source fraction f after one at f' waits for (f + f') * total bytes read.
    let mut prev = 0.0;
    for f in fractions {
        let threshold = (total as f64 * (f + prev)) as u64;
        prev = f;
        let mut child = spawn_quiet(tessera(&env.repo()).arg("backup").arg(&src).arg("--json"));
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if rchar(pid).is_some_and(|r| r >= threshold) {
                child.kill().unwrap();
                break;
            }
            assert!(Instant::now() < deadline, "backup did not progress");
            std::thread::sleep(Duration::from_micros(500));
        }
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "kill at {f:.2} of the data must land mid-backup (status {status:?})");
        eprintln!("killed backup at {f:.2} of {total} source bytes; {} objects stored so far", count_objects(&env.repo()));

        let snaps: Value = serde_json::from_str(&ok(tessera(&env.repo()).args(["snapshots", "--json"]))).unwrap();
        assert_eq!(snaps, json!([]), "a killed backup leaves no visible snapshot");
        assert!(snapshot_ids(&env.repo()).is_empty());
        ok(tessera(&env.repo()).arg("check"));
    }
    assert!(count_objects(&env.repo()) > 0, "the killed runs stored some chunks");

    let report = env.backup(&src, &[]);
    let s = &report["summary"];
    assert_eq!(s["total_bytes"], total);
    let new_bytes = s["new_bytes"].as_u64().unwrap();
    assert!(new_bytes < total, "the run after the kills reuses stored chunks: new {new_bytes} of {total}");
    let id = report["snapshot"].as_str().unwrap();
    let target = env.path("target");
    env.restore(id, &target, &[]);
    assert_same_tree(&src, &restored(&target, &src));
    let out = ok(tessera(&env.repo()).args(["check", "--read-data"]));
    assert!(out.contains("no errors"), "{out}");
    let stats: Value = serde_json::from_str(&ok(tessera(&env.repo()).args(["stats", "--json"]))).unwrap();
    let mut refs = BTreeSet::new();
    referenced(&env.repo(), id, &mut refs);
    assert_eq!(stats["objects"].as_u64().unwrap() as usize, refs.len(), "every stored object is referenced once");
}

// ---------------------------------------------------------------------------------------
// 5. Two backups into one repository at once
// ---------------------------------------------------------------------------------------

#[test]
fn concurrent_backups_store_shared_chunks_once() {
    let env = Env::new();
    env.init(&["--chunk-avg", "256KiB"]);
    let (a, b) = (env.path("a"), env.path("b"));
    let mut shared = 0u64;
    for i in 0..8u64 {
        let data = rand_data(200 + i, 3 << 20);
        shared += data.len() as u64;
        write(&a.join(format!("shared/f{i}.bin")), &data);
        write(&b.join(format!("shared/f{i}.bin")), &data);
    }
    let unique = 1u64 << 20;
    write(&a.join("only-a.bin"), &rand_data(300, unique as usize));
    write(&b.join("only-b.bin"), &rand_data(301, unique as usize));
    write(&a.join("note.txt"), b"a's note");
    write(&b.join("note.txt"), b"b's note");

    let ca = spawn_quiet(tessera(&env.repo()).arg("backup").arg(&a).arg("--json"));
    let cb = spawn_quiet(tessera(&env.repo()).arg("backup").arg(&b).arg("--json"));
    let (oa, ob) = (ca.wait_with_output().unwrap(), cb.wait_with_output().unwrap());
    assert_eq!(code(&oa), Some(0), "{}", stderr(&oa));
    assert_eq!(code(&ob), Some(0), "{}", stderr(&ob));
    let ia = serde_json::from_str::<Value>(&stdout(&oa)).unwrap()["snapshot"].as_str().unwrap().to_string();
    let ib = serde_json::from_str::<Value>(&stdout(&ob)).unwrap()["snapshot"].as_str().unwrap().to_string();
    assert_eq!(snapshot_ids(&env.repo()).len(), 2);

    for (id, src) in [(&ia, &a), (&ib, &b)] {
        let t = env.path(&format!("t-{}", &id[..8]));
        env.restore(id, &t, &[]);
        assert_same_tree(src, &restored(&t, src));
    }
    let out = ok(tessera(&env.repo()).args(["check", "--read-data"]));
    assert!(out.contains("no errors"), "{out}");

    let stats: Value = serde_json::from_str(&ok(tessera(&env.repo()).args(["stats", "--json"]))).unwrap();
    let mut refs = BTreeSet::new();
    referenced(&env.repo(), &ia, &mut refs);
    referenced(&env.repo(), &ib, &mut refs);
    let objects = stats["objects"].as_u64().unwrap();
    assert_eq!(objects as usize, refs.len(), "one object per distinct chunk: {stats}");
    assert_eq!(stats["unique_chunks"].as_u64().unwrap(), objects, "every object is indexed: {stats}");
    let stored = stats["stored_bytes"].as_u64().unwrap();
    let one_copy = shared + 2 * unique;
    assert!(stored >= one_copy && stored < one_copy + one_copy / 50, "stored {stored} bytes; one copy of the data is {one_copy}");
}

// ---------------------------------------------------------------------------------------
// 6. Damaged and missing chunk objects
// ---------------------------------------------------------------------------------------

struct Damaged {
    env: Env,
    src: PathBuf,
    id: String,
}

fn damage_fixture() -> Damaged {
    let env = Env::new();
    env.init(&["--chunk-avg", "256KiB"]);
    let src = env.path("src");
    write(&src.join("victim.bin"), &rand_data(400, 1 << 20));
    write(&src.join("other.bin"), &rand_data(401, 800 << 10));
    write(&src.join("dir/also.bin"), &rand_data(402, 600 << 10));
    write(&src.join("dir/small.txt"), b"small and packed");
    // Enough entries that `dir`'s serialized tree exceeds the inline limit (32 KiB): it gets a
    // tree chunk of its own, while `src` and the directories above it stay inline.
    for i in 0..200 {
        write(&src.join(format!("dir/many-{i:03}.txt")), format!("many {i}\n").as_bytes());
    }
    let id = env.backup(&src, &[])["snapshot"].as_str().unwrap().to_string();
    Damaged { env, src, id }
}

#[test]
fn damaged_chunk_fails_only_its_file_and_check_names_it() {
    let Damaged { env, src, id } = damage_fixture();
    let repo = env.repo();
    let victim = src.join("victim.bin");
    let chunks = content_chunks(&node_at(&repo, &id, &victim));
    assert!(chunks.len() >= 2, "victim spans several chunks");
    let bad = chunks[1].clone();
    let others: BTreeSet<String> = ["other.bin", "dir/also.bin", "dir/small.txt"]
        .iter()
        .flat_map(|p| content_chunks(&node_at(&repo, &id, &src.join(p))))
        .collect();
    assert!(!others.contains(&bad), "the damaged chunk belongs to victim.bin only");

    let obj = object_path(&repo, &bad);
    let mut bytes = fs::read(&obj).unwrap();
    assert_eq!(bytes[5], 0, "random data is stored raw");
    bytes[16 + 1000] ^= 0xff;
    chmod(&obj, 0o644);
    fs::write(&obj, &bytes).unwrap();

    // Restore: the damaged file fails by name, the others come back whole.
    let target = env.path("target");
    let out = run(tessera(&repo).args(["restore", &id, "--target"]).arg(&target));
    let err = stderr(&out);
    assert_eq!(code(&out), Some(1), "{err}");
    let r = restored(&target, &src);
    assert!(err.contains(&r.join("victim.bin").display().to_string()), "restore names the damaged file: {err}");
    assert!(err.contains(&bad), "restore names the damaged chunk: {err}");
    assert!(!r.join("victim.bin").exists(), "no incomplete file at the final name");
    assert_no_restore_temps(&target);
    for p in ["other.bin", "dir/also.bin", "dir/small.txt"] {
        assert_eq!(fs::read(r.join(p)).unwrap(), fs::read(src.join(p)).unwrap(), "{p} restores byte-identical");
    }

    // check without --read-data verifies structure only: it does not read data chunks, so a
    // flipped payload byte is out of its reach and it passes.
    let out = run(tessera(&repo).arg("check"));
    assert_eq!(code(&out), Some(0), "{}{}", stdout(&out), stderr(&out));

    let out = run(tessera(&repo).args(["check", "--read-data"]));
    let text = stdout(&out);
    assert_eq!(code(&out), Some(1), "{text}");
    assert!(text.contains(&format!("damaged chunk {bad}")), "{text}");
    assert!(text.contains(&victim.display().to_string()), "check names the affected file: {text}");
    assert!(text.contains("ERRORS FOUND"), "{text}");
    for p in ["other.bin", "dir/also.bin"] {
        assert!(!text.contains(&src.join(p).display().to_string()), "undamaged {p} is not named: {text}");
    }
    let out = run(tessera(&repo).args(["check", "--read-data", "--json"]));
    assert_eq!(code(&out), Some(1));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let damaged = report["damaged"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{report}");
    assert_eq!(damaged[0]["id"], bad);
    let affected: Vec<&str> = damaged[0]["affected"].as_array().unwrap().iter().map(|a| a[1].as_str().unwrap()).collect();
    assert_eq!(affected, vec![victim.display().to_string().as_str()]);
}

#[test]
fn damaged_tree_object_is_reported_with_its_directory() {
    let Damaged { env, src, id } = damage_fixture();
    let repo = env.repo();
    let dir = node_at(&repo, &id, &src.join("dir"));
    assert!(dir.get("entries").is_none(), "a large directory is not inline");
    let dir_tree = dir["subtree"].as_str().expect("a large directory has a tree chunk of its own").to_string();
    // Its tree chunk is reached through inline directories: `src` is small enough to be inline.
    let src_node = node_at(&repo, &id, &src);
    assert!(src_node.get("subtree").is_none() && src_node["entries"].is_array(), "{src_node}");
    let mut refs = BTreeSet::new();
    referenced(&repo, &id, &mut refs);
    assert!(refs.contains(&dir_tree));
    assert_eq!(count_objects(&repo), refs.len(), "every object is referenced, the tree of `dir` included");
    let obj = object_path(&repo, &dir_tree);
    let mut bytes = fs::read(&obj).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    fs::write(&obj, &bytes).unwrap();

    let target = env.path("target");
    let out = run(tessera(&repo).args(["restore", &id, "--target"]).arg(&target));
    assert_ne!(code(&out), Some(0));
    assert!(stderr(&out).contains(&dir_tree), "{}", stderr(&out));

    let out = run(tessera(&repo).args(["check"]));
    let text = stdout(&out);
    assert_eq!(code(&out), Some(1), "check reads trees, so it sees a damaged one: {text}");
    assert!(text.contains(&dir_tree) && text.contains(&src.join("dir").display().to_string()), "{text}");
    let out = run(tessera(&repo).args(["check", "--read-data"]));
    assert_eq!(code(&out), Some(1));
    assert!(stdout(&out).contains(&format!("damaged chunk {dir_tree}")), "{}", stdout(&out));
}

#[test]
fn missing_chunk_is_reported_naming_the_file() {
    let Damaged { env, src, id } = damage_fixture();
    let repo = env.repo();
    let other = src.join("other.bin");
    let gone = content_chunks(&node_at(&repo, &id, &other))[0].clone();
    fs::remove_file(object_path(&repo, &gone)).unwrap();

    for args in [vec!["check"], vec!["check", "--read-data"]] {
        let out = run(tessera(&repo).args(&args));
        let text = stdout(&out);
        assert_eq!(code(&out), Some(1), "{args:?}: {text}");
        assert!(text.contains(&gone) && text.contains("missing"), "{args:?}: {text}");
        assert!(text.contains(&other.display().to_string()), "{args:?} names the file: {text}");
    }

    let target = env.path("target");
    let out = run(tessera(&repo).args(["restore", &id, "--target"]).arg(&target));
    let err = stderr(&out);
    assert_eq!(code(&out), Some(1), "{err}");
    let r = restored(&target, &src);
    assert!(err.contains(&r.join("other.bin").display().to_string()) && err.contains(&gone), "{err}");
    assert!(!r.join("other.bin").exists());
    assert_no_restore_temps(&target);
    for p in ["victim.bin", "dir/also.bin", "dir/small.txt"] {
        assert_eq!(fs::read(r.join(p)).unwrap(), fs::read(src.join(p)).unwrap(), "{p}");
    }

    // Repairing the index does not invent the chunk, and a new backup re-stores it.
    ok(tessera(&repo).args(["repair", "index"]));
    let report = env.backup(&src, &["--force-rehash"]);
    assert!(report["summary"]["new_chunks"].as_u64().unwrap() >= 1, "{report}");
    ok(tessera(&repo).args(["check", "--read-data"]));
}

// ---------------------------------------------------------------------------------------
// 7. Restore never escapes its target
// ---------------------------------------------------------------------------------------

fn node(name: Value, kind: &str) -> Value {
    json!({"name": name, "type": kind, "mode": if kind == "dir" { 0o755 } else { 0o644 },
           "uid": 0, "gid": 0, "mtime_ns": 1_600_000_000_000_000_000i64, "ctime_ns": 1_600_000_000_000_000_000i64, "inode": 1})
}

fn file_node(name: Value, chunk: &str, len: usize) -> Value {
    let mut n = node(name, "file");
    n["size"] = json!(len);
    n["content"] = json!([[chunk, 0, len]]);
    n
}

fn dir_node(name: Value, subtree: &str) -> Value {
    let mut n = node(name, "dir");
    n["subtree"] = json!(subtree);
    n
}

/// A directory whose entries are inline in its parent's tree (tree format version 2).
fn inline_dir_node(name: Value, entries: Vec<Value>) -> Value {
    let mut n = node(name, "dir");
    n["entries"] = json!(entries);
    n
}

fn symlink_node(name: Value, target: &str) -> Value {
    let mut n = node(name, "symlink");
    n["mode"] = json!(0o777);
    n["target"] = json!(target);
    n
}

#[test]
fn malicious_names_never_escape_the_target() {
    let env = Env::new();
    env.init(&[]);
    let repo = env.repo();
    let src = env.path("src");
    write(&src.join("real.txt"), b"real");
    let real_id = env.backup(&src, &[])["snapshot"].as_str().unwrap().to_string();
    let base = load_snapshot(&repo, &real_id);

    let outside = env.path("outside");
    fs::create_dir_all(&outside).unwrap();
    write(&outside.join("keep.txt"), b"outside the target");
    let payload = b"EVIL PAYLOAD\n";
    let chunk = write_object(&repo, payload);
    let evil_file = |name: Value| file_node(name, &chunk, payload.len());
    let etc_x_existed = Path::new("/etc/x").exists();
    let abs_outside = outside.join("x").display().to_string();

    let inner_ok = write_tree(&repo, vec![evil_file(json!("x"))]);
    let dup_inner = write_tree(&repo, vec![evil_file(json!("f"))]);
    let outside_str = outside.display().to_string();
    // (description, root tree nodes, the name the error must show)
    let cases: Vec<(&str, Vec<Value>, &str)> = vec![
        ("dot-dot dir", vec![dir_node(json!(".."), &inner_ok)], "\"..\""),
        ("dot-dot file", vec![evil_file(json!(".."))], "\"..\""),
        ("dot", vec![dir_node(json!("."), &inner_ok)], "\".\""),
        ("empty", vec![evil_file(json!(""))], "\"\""),
        ("a/../../x", vec![evil_file(json!("a/../../x"))], "a/../../x"),
        ("/etc/x", vec![evil_file(json!("/etc/x"))], "/etc/x"),
        ("absolute into outside", vec![evil_file(json!(abs_outside))], &abs_outside),
        ("hex-encoded ../x", vec![evil_file(json!({"hex": hex::encode("../x")}))], "../x"),
        ("NUL", vec![evil_file(json!("a\u{0}b"))], "NUL"),
        ("dup: symlink then dir", vec![symlink_node(json!("d"), &outside_str), dir_node(json!("d"), &dup_inner)], "\"d\""),
        ("dup: dir then symlink", vec![dir_node(json!("d"), &dup_inner), symlink_node(json!("d"), &outside_str)], "\"d\""),
        ("dup: two files", vec![evil_file(json!("f")), evil_file(json!("f"))], "\"f\""),
    ];
    // The same attacks through inline directories (tree format version 2): as the name of an
    // inline directory, among its entries, deep below inline directories, and nodes that are
    // not one kind of directory or the other.
    let evil_x = || vec![evil_file(json!("x"))];
    let both = {
        let mut d = dir_node(json!("d"), &inner_ok);
        d["entries"] = json!(evil_x());
        d
    };
    let file_with_entries = {
        let mut f = evil_file(json!("f"));
        f["entries"] = json!(evil_x());
        f
    };
    let symlink_with_entries = {
        let mut l = symlink_node(json!("l"), &outside_str);
        l["entries"] = json!(evil_x());
        l
    };
    let inline_cases: Vec<(&str, Vec<Value>, &str)> = vec![
        ("inline dir named ..", vec![inline_dir_node(json!(".."), evil_x())], "\"..\""),
        ("inline dir named .", vec![inline_dir_node(json!("."), evil_x())], "\".\""),
        ("inline dir named a/b", vec![inline_dir_node(json!("a/b"), evil_x())], "a/b"),
        ("inline dir named ../outside", vec![inline_dir_node(json!("../outside"), evil_x())], "../outside"),
        ("inline dir named by absolute path", vec![inline_dir_node(json!(outside_str), evil_x())], &outside_str),
        ("inline dir named hex ..", vec![inline_dir_node(json!({"hex": "2e2e"}), evil_x())], "\"..\""),
        ("inline entry ..", vec![inline_dir_node(json!("d"), vec![evil_file(json!(".."))])], "\"..\""),
        ("inline entry a/b", vec![inline_dir_node(json!("d"), vec![evil_file(json!("a/b"))])], "a/b"),
        ("inline entry a/../../x", vec![inline_dir_node(json!("d"), vec![evil_file(json!("a/../../x"))])], "a/../../x"),
        ("inline entry absolute", vec![inline_dir_node(json!("d"), vec![evil_file(json!(abs_outside))])], &abs_outside),
        ("inline entry empty", vec![inline_dir_node(json!("d"), vec![evil_file(json!(""))])], "\"\""),
        (
            "inline entry .. three levels down",
            vec![inline_dir_node(json!("a"), vec![inline_dir_node(json!("b"), vec![inline_dir_node(json!(".."), evil_x())])])],
            "\"..\"",
        ),
        (
            "inline entry below a subtree below an inline dir",
            vec![inline_dir_node(json!("a"), vec![dir_node(json!("b"), &write_tree(&repo, vec![inline_dir_node(json!("c"), vec![evil_file(json!("../../../x"))])]))])],
            "../../../x",
        ),
        ("inline dup: symlink then dir", vec![inline_dir_node(json!("d"), vec![symlink_node(json!("e"), &outside_str), inline_dir_node(json!("e"), vec![evil_file(json!("f"))])])], "\"e\""),
        ("inline dup: dir then symlink", vec![inline_dir_node(json!("d"), vec![inline_dir_node(json!("e"), vec![evil_file(json!("f"))]), symlink_node(json!("e"), &outside_str)])], "\"e\""),
        ("inline entries unsorted", vec![inline_dir_node(json!("d"), vec![evil_file(json!("b")), evil_file(json!("a"))])], "\"a\""),
        ("dir with both subtree and entries", vec![both], "\"d\""),
        ("file with entries", vec![file_with_entries], "\"f\""),
        ("symlink with entries", vec![symlink_with_entries], "\"l\""),
    ];
    // Each case also buried one level down, below an innocent directory and next to a good
    // file: the directory as a tree chunk of its own, and inline. The original cases are also
    // tried in a version 1 tree, the format older repositories hold.
    let mut all = Vec::new();
    let bury = |what: &str, nodes: &Vec<Value>, shows: &str, all: &mut Vec<(String, String, String)>| {
        all.push((format!("{what} (top)"), write_tree(&repo, nodes.clone()), shows.to_string()));
        let bad_sub = write_tree(&repo, nodes.clone());
        let top = write_tree(&repo, vec![evil_file(json!("aaa-good.txt")), dir_node(json!("inner"), &bad_sub)]);
        all.push((format!("{what} (nested)"), top, shows.to_string()));
        let top = write_tree(&repo, vec![evil_file(json!("aaa-good.txt")), inline_dir_node(json!("inner"), nodes.clone())]);
        all.push((format!("{what} (nested inline)"), top, shows.to_string()));
    };
    for (what, nodes, shows) in &cases {
        bury(what, nodes, shows, &mut all);
        all.push((format!("{what} (version 1 tree)"), write_tree_v(&repo, 1, nodes.clone()), shows.to_string()));
    }
    for (what, nodes, shows) in &inline_cases {
        bury(what, nodes, shows, &mut all);
    }
    // Inline entries are version 2 only: a version 1 tree holding them is refused, even with
    // harmless names.
    let v1_inline = write_tree_v(&repo, 1, vec![inline_dir_node(json!("d"), vec![evil_file(json!("f"))])]);
    all.push(("inline entries in a version 1 tree".into(), v1_inline, "inline entries in a version 1 tree".into()));
    for (what, tree, shows) in all {
        let mut snap = base.clone();
        snap["tree"] = json!(tree);
        snap["tags"] = json!([what.clone()]);
        let id = write_snapshot(&repo, &snap);
        let target = env.path("target");
        let out = run(tessera(&repo).args(["restore", &id, "--target"]).arg(&target));
        let err = stderr(&out);
        assert_eq!(code(&out), Some(1), "{what}: restore must fail: {err}");
        assert!(err.contains(&shows), "{what}: error must name the bad entry {shows}: {err}");
        assert!(err.contains("unsafe name") || err.contains("malformed") || err.contains("duplicated"), "{what}: {err}");
        assert!(tree_contents(&target).is_empty(), "{what}: nothing may be written into the target");
        let _ = fs::remove_dir_all(&target);
        let outside_now = tree_contents(&outside);
        assert_eq!(outside_now.len(), 1, "{what}: nothing written outside: {outside_now:?}");
        assert!(!env.path("x").exists() && !env.dir.path().parent().unwrap().join("x").exists(), "{what}: wrote ../x");
        if !etc_x_existed {
            assert!(!Path::new("/etc/x").exists(), "{what}: wrote /etc/x");
        }
        // `ls` refuses the same snapshot, also naming the entry.
        let out = run(tessera(&repo).args(["ls", &id]));
        assert_eq!(code(&out), Some(1), "{what}: ls");
        assert!(stderr(&out).contains(&shows), "{what}: ls: {}", stderr(&out));
        fs::remove_file(repo.join("snapshots").join(&id)).unwrap();
    }
    // The genuine snapshot still restores, and check is clean once the bad ones are gone.
    let target = env.path("target");
    env.restore(&real_id, &target, &[]);
    assert_same_tree(&src, &restored(&target, &src));
    ok(tessera(&repo).arg("check"));
}

/// A symlink in the snapshot pointing outside, and a file of the same directory written
/// later in the restore, must not meet: the file is written beside the link, never through it.
#[test]
fn restored_symlink_is_never_written_through() {
    let env = Env::new();
    env.init(&[]);
    let repo = env.repo();
    let src = env.path("src");
    write(&src.join("real.txt"), b"real");
    let base = load_snapshot(&repo, env.backup(&src, &[])["snapshot"].as_str().unwrap());
    let outside = env.path("outside");
    write(&outside.join("f"), b"do not touch");
    let payload = b"EVIL";
    let chunk = write_object(&repo, payload);
    // "d" links to a directory outside and "l" to a file outside; "d2/f" is a real file, with
    // "d2" as a tree chunk of its own and as an inline directory.
    let f = file_node(json!("f"), &chunk, payload.len());
    let inner = write_tree(&repo, vec![f.clone()]);
    for (form, d2) in [("subtree", dir_node(json!("d2"), &inner)), ("inline", inline_dir_node(json!("d2"), vec![f]))] {
        let tree = write_tree(&repo, vec![
            symlink_node(json!("d"), &outside.display().to_string()),
            d2,
            symlink_node(json!("l"), &outside.join("f").display().to_string()),
        ]);
        let mut snap = base.clone();
        snap["tree"] = json!(tree);
        snap["tags"] = json!([form]);
        let id = write_snapshot(&repo, &snap);
        let target = env.path(&format!("target-{form}"));
        env.restore(&id, &target, &[]);
        assert_eq!(fs::read(outside.join("f")).unwrap(), b"do not touch", "{form}");
        assert_eq!(fs::read_link(target.join("d")).unwrap(), outside, "{form}");
        assert_eq!(fs::read(target.join("d2/f")).unwrap(), payload, "{form}");
        // Restoring again with --overwrite replaces the links themselves, not what they point at.
        env.restore(&id, &target, &["--overwrite"]);
        assert_eq!(fs::read(outside.join("f")).unwrap(), b"do not touch", "{form}");
        assert_eq!(tree_contents(&outside).len(), 1, "{form}");
    }
}

// ---------------------------------------------------------------------------------------
// 8. Restore over existing files
// ---------------------------------------------------------------------------------------

#[test]
fn restore_over_existing_files_needs_overwrite() {
    let env = Env::new();
    env.init(&["--chunk-avg", "256KiB"]);
    let src = env.path("src");
    write(&src.join("a.txt"), b"original a");
    write(&src.join("b.bin"), &rand_data(500, 700 << 10));
    write(&src.join("sub/c.txt"), b"original c");
    let id = env.backup(&src, &[])["snapshot"].as_str().unwrap().to_string();

    let target = env.path("target");
    env.restore(&id, &target, &[]);
    let r = restored(&target, &src);
    fs::write(r.join("a.txt"), b"local edit").unwrap();
    fs::remove_file(r.join("b.bin")).unwrap();
    fs::remove_file(r.join("sub/c.txt")).unwrap();
    let outside = env.path("outside.txt");
    fs::write(&outside, b"outside").unwrap();
    std::os::unix::fs::symlink(&outside, r.join("sub/c.txt")).unwrap();
    let before = tree_contents(&target);

    let out = run(tessera(&env.repo()).args(["restore", &id, "--target"]).arg(&target));
    let err = stderr(&out);
    assert_eq!(code(&out), Some(1), "{err}");
    assert!(err.contains("--overwrite") && err.contains(&r.join("a.txt").display().to_string()), "names the existing file: {err}");
    assert!(err.contains("2 of the paths"), "both conflicts counted: {err}");
    assert_eq!(tree_contents(&target), before, "a refused restore writes nothing");
    assert_eq!(fs::read(r.join("a.txt")).unwrap(), b"local edit");
    assert!(!r.join("b.bin").exists());

    env.restore(&id, &target, &["--overwrite"]);
    assert_same_tree(&src, &r);
    assert!(fs::symlink_metadata(r.join("sub/c.txt")).unwrap().is_file(), "the symlink is replaced, not followed");
    assert_eq!(fs::read(&outside).unwrap(), b"outside", "nothing written through the old symlink");
    assert_no_restore_temps(&target);

    // A symlink where a directory of the snapshot goes: refused, then replaced by a real directory.
    let elsewhere = env.path("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    fs::remove_dir_all(r.join("sub")).unwrap();
    fs::remove_file(r.join("a.txt")).unwrap();
    fs::remove_file(r.join("b.bin")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, r.join("sub")).unwrap();
    let before = tree_contents(&target);
    let out = run(tessera(&env.repo()).args(["restore", &id, "--target"]).arg(&target));
    assert_eq!(code(&out), Some(1));
    assert!(stderr(&out).contains(&r.join("sub").display().to_string()), "{}", stderr(&out));
    assert_eq!(tree_contents(&target), before, "a refused restore writes nothing");
    assert!(tree_contents(&elsewhere).is_empty());
    env.restore(&id, &target, &["--overwrite"]);
    assert!(fs::symlink_metadata(r.join("sub")).unwrap().is_dir());
    assert!(tree_contents(&elsewhere).is_empty(), "nothing written through the symlinked directory");
    assert_same_tree(&src, &r);
    let m = fs::metadata(r.join("a.txt")).unwrap();
    assert_eq!(m.mode() & 0o777, fs::metadata(src.join("a.txt")).unwrap().mode() & 0o777);
}

// ---------------------------------------------------------------------------------------
// More faults: bad exclude input, read-only repository, full disk, killed restore,
// a missing chunk shared by several files
// ---------------------------------------------------------------------------------------

#[test]
fn bad_exclude_file_and_pattern_are_named() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    write(&src.join("a"), b"x");
    let missing = env.path("no-such-excludes.txt");
    let out = run(tessera(&env.repo()).arg("backup").arg(&src).arg("--exclude-file").arg(&missing));
    assert_eq!(code(&out), Some(1));
    assert!(stderr(&out).contains(&missing.display().to_string()) && stderr(&out).contains("No such file"), "{}", stderr(&out));
    let out = run(tessera(&env.repo()).arg("backup").arg(&src).args(["--exclude", "a["]));
    assert_eq!(code(&out), Some(1));
    assert!(stderr(&out).contains("exclude pattern") && stderr(&out).contains("\"a[\""), "{}", stderr(&out));
    assert!(snapshot_ids(&env.repo()).is_empty());
    assert_eq!(count_objects(&env.repo()), 0);
}

/// An I/O error is printed once: "PATH: REASON", not "PATH: REASON: REASON".
#[test]
fn io_error_text_is_not_repeated() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    write(&src.join("a"), b"x");
    let missing = env.path("no-such-excludes.txt");
    let out = run(tessera(&env.repo()).arg("backup").arg(&src).arg("--exclude-file").arg(&missing));
    let err = stderr(&out);
    assert_eq!(code(&out), Some(1));
    assert_eq!(err.matches("No such file or directory").count(), 1, "the OS error is repeated: {err}");
}

/// A repository the user may read but not write (e.g. backups on read-only media, or
/// another user's repository): listing, checking and restoring need no write access; a
/// backup fails naming where it could not write, and writes nothing.
#[test]
fn read_only_repository_lists_checks_and_restores() {
    let env = Env::new();
    chmod(env.dir.path(), 0o755);
    env.init(&["--chunk-avg", "256KiB"]);
    let src = env.path("src");
    write(&src.join("a.txt"), b"readable");
    write(&src.join("big.bin"), &rand_data(600, 600 << 10));
    let id = env.backup(&src, &[])["snapshot"].as_str().unwrap().to_string();
    // The index as its owner sees it: a read-only reader must see the same chunks.
    let owner_stats: Value = serde_json::from_str(&ok(tessera(&env.repo()).args(["stats", "--json"]))).unwrap();
    assert!(owner_stats["unique_chunks"].as_u64().unwrap() > 2, "{owner_stats}");
    let st = Command::new("chmod").args(["-R", "a+rX,go-w"]).arg(env.repo()).status().unwrap();
    assert!(st.success());
    let target = env.path("target");
    fs::create_dir_all(&target).unwrap();
    chown_r(&target, NOBODY);
    let before = tree_contents(&env.repo());

    // Backup: refused, with the place named, and nothing written.
    let out = run(tessera_as_nobody(&env.repo()).arg("backup").arg(&src));
    let err = stderr(&out);
    assert_eq!(code(&out), Some(1), "{err}");
    assert!(err.contains(&env.repo().display().to_string()), "names the repository path: {err}");
    assert_eq!(snapshot_ids(&env.repo()), vec![id.clone()]);

    let out = run(tessera_as_nobody(&env.repo()).args(["snapshots", "--json"]));
    assert_eq!(code(&out), Some(0), "snapshots on a read-only repository: {}", stderr(&out));
    let out = run(tessera_as_nobody(&env.repo()).args(["stats", "--json"]));
    assert_eq!(code(&out), Some(0), "stats on a read-only repository: {}", stderr(&out));
    let stats: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(stats["unique_chunks"], owner_stats["unique_chunks"], "the read-only index misses chunks");
    assert_eq!(stats["unique_bytes"], owner_stats["unique_bytes"]);
    let out = run(tessera_as_nobody(&env.repo()).args(["ls", &id]));
    assert_eq!(code(&out), Some(0), "ls on a read-only repository: {}", stderr(&out));
    let out = run(tessera_as_nobody(&env.repo()).args(["check", "--read-data"]));
    assert_eq!(code(&out), Some(0), "check on a read-only repository: {}{}", stdout(&out), stderr(&out));
    let out = run(tessera_as_nobody(&env.repo()).args(["restore", &id, "--target"]).arg(&target));
    assert_eq!(code(&out), Some(0), "restore from a read-only repository: {}", stderr(&out));
    assert_same_tree(&src, &restored(&target, &src));
    assert_eq!(tree_contents(&env.repo()).keys().collect::<Vec<_>>(), before.keys().collect::<Vec<_>>());
}

/// Unmounts (lazily) when dropped, also when the test panics.
struct TmpfsMount(PathBuf);

impl TmpfsMount {
    fn new(at: &Path, size: &str) -> Option<Self> {
        fs::create_dir_all(at).unwrap();
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(at).output().ok()?;
        out.status.success().then(|| TmpfsMount(at.to_path_buf()))
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The repository's filesystem fills up mid-backup: the error names the path and the cause,
/// no snapshot appears, the index lists nothing that is not stored, and no half-written
/// object is left behind taking space.
#[test]
fn full_disk_fails_cleanly() {
    let env = Env::new();
    let Some(_mount) = TmpfsMount::new(&env.path("small"), "8m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)");
        return;
    };
    let repo = env.path("small/repo");
    ok(tessera(&repo).args(["init", "--chunk-avg", "256KiB"]));
    let src = env.path("src");
    for i in 0..4u64 {
        write(&src.join(format!("f{i}.bin")), &rand_data(700 + i, 6 << 20));
    }
    let out = run(tessera(&repo).arg("backup").arg(&src));
    let err = stderr(&out);
    assert_eq!(code(&out), Some(1), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains(&repo.display().to_string()), "names where it could not write: {err}");
    assert!(snapshot_ids(&repo).is_empty(), "no snapshot after a failed backup");
    let out = run(tessera(&repo).args(["check", "--read-data"]));
    assert_eq!(code(&out), Some(0), "{}{}", stdout(&out), stderr(&out));
    let leftovers: Vec<_> = fs::read_dir(repo.join("objects/tmp")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(leftovers.is_empty(), "a failed object write leaves its temp file behind, still taking space: {leftovers:?}");
}

/// A restore killed part-way leaves no incomplete file under its final name; running it again
/// (with --overwrite, as some files are already there) completes it.
#[test]
fn killed_restore_leaves_no_incomplete_file() {
    let env = Env::new();
    env.init(&["--chunk-avg", "256KiB"]);
    let src = env.path("src");
    let mut total = 0u64;
    for i in 0..10u64 {
        let len = (6 << 20) + i as usize * 977;
        write(&src.join(format!("f{i}.bin")), &rand_data(800 + i, len));
        total += len as u64;
    }
    let id = env.backup(&src, &[])["snapshot"].as_str().unwrap().to_string();
    let target = env.path("target");
    let mut child = spawn_quiet(tessera(&env.repo()).args(["restore", &id, "--target"]).arg(&target));
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if rchar(pid).is_some_and(|r| r >= total * 2 / 5) {
            child.kill().unwrap();
            break;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_micros(300));
    }
    assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL), "kill must land mid-restore");
    let r = restored(&target, &src);
    let mut complete = 0;
    for (rel, content) in tree_contents(&r) {
        let name = rel.file_name().unwrap().to_string_lossy().into_owned();
        if let Some(bytes) = content
            && !name.starts_with(".tessera-restore-")
        {
            assert_eq!(bytes, fs::read(src.join(&rel)).unwrap(), "{} is at its final name but incomplete", rel.display());
            complete += 1;
        }
    }
    assert!(complete < 10, "the kill landed before every file was done");
    env.restore(&id, &target, &["--overwrite"]);
    assert_same_tree(&src, &r);
    assert_no_restore_temps(&target);
}

/// A missing chunk is reported with every file that needs it, in every snapshot, as a
/// damaged one is (invariant 2: the error names the chunk and the files it affects).
#[test]
fn missing_chunk_names_every_affected_file() {
    let env = Env::new();
    env.init(&["--chunk-avg", "256KiB"]);
    let data = rand_data(900, 700 << 10);
    let (a, b) = (env.path("one"), env.path("two"));
    write(&a.join("copy1.bin"), &data);
    write(&a.join("copy2.bin"), &data);
    write(&b.join("copy3.bin"), &data);
    let ia = env.backup(&a, &[])["snapshot"].as_str().unwrap().to_string();
    env.backup(&b, &[]);
    let gone = content_chunks(&node_at(&env.repo(), &ia, &a.join("copy1.bin")))[0].clone();
    fs::remove_file(object_path(&env.repo(), &gone)).unwrap();
    let out = run(tessera(&env.repo()).arg("check"));
    let text = stdout(&out);
    assert_eq!(code(&out), Some(1), "{text}");
    for p in [a.join("copy1.bin"), a.join("copy2.bin"), b.join("copy3.bin")] {
        assert!(text.contains(&p.display().to_string()), "check must name {} (uses missing chunk {gone}): {text}", p.display());
    }
}

#[test]
fn restore_include_outside_the_snapshot_is_refused() {
    let env = Env::new();
    env.init(&[]);
    let src = env.path("src");
    write(&src.join("a.txt"), b"a");
    let id = env.backup(&src, &[])["snapshot"].as_str().unwrap().to_string();
    let target = env.path("target");
    let not_there = format!("{}/nope.txt", src.display());
    for (inc, shows) in [("../../etc", ".."), ("tmp/../../etc/passwd", ".."), (not_there.as_str(), "nope.txt")] {
        let out = run(tessera(&env.repo()).args(["restore", &id, "--target"]).arg(&target).args(["--include", inc]));
        let err = stderr(&out);
        assert_eq!(code(&out), Some(1), "--include {inc}: {err}");
        assert!(err.contains(shows), "--include {inc}: {err}");
        assert!(!target.exists(), "--include {inc}: nothing may be written");
        let out = run(tessera(&env.repo()).args(["ls", &id, inc]));
        assert_eq!(code(&out), Some(1), "ls {inc}");
    }
}
