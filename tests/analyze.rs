//! End-to-end tests of `tessera analyze` (and the matching `stats` figures) with the real
//! binary on small generated data: hand-computable cases, agreement with real backups, output
//! formats and bad input.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{Env, bin, ok, random_bytes, run, stderr, tessera};
use serde_json::Value;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

fn analyze_cmd(paths: &[&Path], args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.env_remove("TESSERA_REPO").arg("analyze").args(paths).args(args);
    c
}

/// `analyze --json` over `paths`; panics unless it succeeds.
fn analyze(paths: &[&Path], args: &[&str]) -> Value {
    let out = ok(analyze_cmd(paths, args).arg("--json"));
    serde_json::from_str(&out).expect("analyze --json is JSON")
}

fn write(path: &Path, data: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

/// The single configuration's figures for all paths.
fn total(report: &Value, config: usize) -> &Value {
    &report["configs"][config]["total"]
}

#[test]
fn identical_files_give_dedup_ratio_two() {
    let env = Env::new();
    let data = random_bytes(1, 3 * MIB as usize);
    write(&env.path("d/a"), &data);
    write(&env.path("d/b"), &data);
    let r = analyze(&[&env.path("d")], &["--chunker", "fastcdc:256KiB", "--chunker", "fixed:256KiB"]);
    for c in 0..2 {
        let t = total(&r, c);
        assert_eq!(u(&t["logical_bytes"]), 6 * MIB);
        assert_eq!(u(&t["unique_bytes"]), 3 * MIB);
        assert_eq!(t["dedup_ratio"].as_f64().unwrap(), 2.0);
        assert_eq!(u(&t["files"]), 2);
    }
    assert_eq!(u(&total(&r, 1)["unique_chunks"]), 12, "3 MiB in 256 KiB blocks");
}

#[test]
fn shifted_copy_is_reused_by_fastcdc_not_by_fixed_blocks() {
    let env = Env::new();
    let data = random_bytes(2, 4 * MIB as usize);
    let mut shifted = vec![0x55u8];
    shifted.extend_from_slice(&data);
    write(&env.path("v1/f"), &data);
    write(&env.path("v2/f"), &shifted);
    let r = analyze(&[&env.path("v1"), &env.path("v2")], &["--as-versions", "--chunker", "fastcdc:64KiB", "--chunker", "fixed:64KiB"]);
    let reused = |c: usize| {
        let v2 = &r["configs"][c]["versions"][1];
        1.0 - u(&v2["new_bytes"]) as f64 / shifted.len() as f64
    };
    assert!(reused(0) >= 0.9, "fastcdc reused only {:.3}", reused(0));
    assert!(reused(1) < 0.1, "fixed-size reused {:.3}", reused(1));
}

#[test]
fn all_zero_data_has_one_unique_chunk_per_distinct_size() {
    let env = Env::new();
    write(&env.path("z/ten"), &vec![0u8; 10 * MIB as usize]);
    write(&env.path("z/tail"), &vec![0u8; (10 * MIB + 512 * KIB) as usize]);
    let r = analyze(&[&env.path("z")], &["--chunker", "fixed:1MiB", "--chunker", "fastcdc:1MiB"]);
    let t = total(&r, 0);
    assert_eq!(u(&t["unique_chunks"]), 2, "one 1 MiB block and one 512 KiB tail");
    assert_eq!(u(&t["unique_bytes"]), MIB + 512 * KIB);
    assert_eq!(u(&t["logical_bytes"]), 20 * MIB + 512 * KIB);
    assert!(u(&t["stored_bytes"]) < 20 * KIB, "zeros compress: {}", t["stored_bytes"]);
    // FastCDC finds no boundary in zeros: maximum-size chunks plus distinct tails.
    let t = total(&r, 1);
    assert!(u(&t["unique_chunks"]) <= 3, "{t}");
    assert_eq!(u(&t["chunk_sizes"]["p99"]), 4 * MIB);
}

#[test]
fn empty_files_have_no_bytes_and_no_chunks() {
    let env = Env::new();
    for i in 0..5 {
        write(&env.path(&format!("e/{i}")), b"");
    }
    let r = analyze(&[&env.path("e")], &["--chunker", "fastcdc:64KiB"]);
    let t = total(&r, 0);
    assert_eq!(u(&t["files"]), 5);
    for key in ["logical_bytes", "unique_bytes", "unique_chunks", "stored_bytes", "small_files"] {
        assert_eq!(u(&t[key]), 0, "{key}");
    }
    assert_eq!(t["dedup_ratio"].as_f64().unwrap(), 0.0);
}

#[test]
fn many_tiny_files_are_packed_into_few_chunks() {
    let env = Env::new();
    for i in 0..2000u64 {
        write(&env.path(&format!("t/{:02}/{i}", i % 20)), &random_bytes(100 + i, 100));
    }
    // Copies of small files are packed once (whole-content dedup).
    for i in 0..300u64 {
        write(&env.path(&format!("t/copies/{i}")), &random_bytes(100 + i, 100));
    }
    let r = analyze(&[&env.path("t")], &["--chunker", "fastcdc:64KiB"]);
    let t = total(&r, 0);
    assert_eq!(u(&t["files"]), 2300);
    assert_eq!(u(&t["logical_bytes"]), 230_000);
    assert_eq!(u(&t["unique_bytes"]), 200_000);
    assert_eq!(u(&t["small_files"]), 2000);
    assert!(u(&t["unique_chunks"]) <= 10, "2000 files packed into {} chunks", t["unique_chunks"]);
    assert_eq!(u(&t["dirs"]), 22);
    assert_eq!(u(&t["objects"]), u(&t["unique_chunks"]) + u(&t["trees"]));
}

#[test]
fn as_versions_reports_what_each_backup_adds() {
    let env = Env::new();
    let big = random_bytes(3, 2 * MIB as usize);
    let extra = random_bytes(4, MIB as usize);
    for v in ["v1", "v2", "v3"] {
        write(&env.path(&format!("{v}/big")), &big);
        write(&env.path(&format!("{v}/small/note")), b"a small file, the same in every version");
    }
    write(&env.path("v2/extra"), &extra);
    write(&env.path("v3/extra"), &extra);
    let paths = [env.path("v1"), env.path("v2"), env.path("v3")];
    let paths: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
    let r = analyze(&paths, &["--as-versions", "--chunker", "fixed:64KiB"]);
    let versions = r["configs"][0]["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 3);
    let note = 39;
    assert_eq!(u(&versions[0]["new_bytes"]), 2 * MIB + note);
    assert_eq!(u(&versions[1]["new_bytes"]), MIB, "only the extra file is new");
    assert_eq!(u(&versions[1]["new_chunks"]), 16);
    assert_eq!(u(&versions[2]["new_bytes"]), 0);
    assert_eq!(u(&versions[2]["new_chunks"]), 0);
    assert_eq!(u(&versions[2]["new_stored_bytes"]), 0);
    assert!(u(&versions[2]["new_trees"]) > 0);
    assert_eq!(u(&versions[2]["logical_bytes"]), 3 * MIB + note);
    let cumulative: Vec<u64> = versions.iter().map(|v| u(&v["cumulative"]["logical_bytes"])).collect();
    assert_eq!(cumulative, vec![2 * MIB + note, 5 * MIB + 2 * note, 8 * MIB + 3 * note]);
    assert_eq!(u(&versions[2]["cumulative"]["unique_bytes"]), 3 * MIB + note);
    assert_eq!(versions[2]["cumulative"]["unique_bytes"], total(&r, 0)["unique_bytes"]);
    assert!(versions[2]["paths"][0].as_str().unwrap().ends_with("/v3"));
}

/// A tree with large, shifted, duplicated, small, empty and nested files.
fn mixed_tree(root: &Path, seed: u64) {
    let big = random_bytes(seed, 3 * MIB as usize + 777);
    write(&root.join("big"), &big);
    write(&root.join("sub/big-copy"), &big);
    let mut shifted = b"xyz".to_vec();
    shifted.extend_from_slice(&big[..2 * MIB as usize]);
    write(&root.join("sub/deeper/shifted"), &shifted);
    write(&root.join("zeros"), &vec![0u8; MIB as usize + 5]);
    for i in 0..150u64 {
        let len = 10 + (i * 397) % 30_000;
        write(&root.join(format!("small/{:02}/f{i}", i % 7)), &random_bytes(seed * 1000 + i % 120, len as usize));
    }
    write(&root.join("small/empty"), b"");
    let first = fs::read(root.join("small/00/f0")).unwrap();
    write(&root.join("small/zz-dup"), &first);
    write(&root.join("exactly-avg"), &random_bytes(seed + 7, 64 * KIB as usize));
}

/// Data chunks and bytes of the repository per `stats --json` (trees left out).
fn repo_data(env: &Env) -> (u64, u64, u64) {
    let s: Value = serde_json::from_str(&ok(tessera(&env.repo()).args(["stats", "--json"]))).unwrap();
    assert_eq!(u(&s["data_chunks"]) + u(&s["tree_chunks"]), u(&s["unique_chunks"]));
    (u(&s["data_bytes"]), u(&s["data_chunks"]), u(&s["tree_chunks"]))
}

#[test]
fn analyze_agrees_with_real_backups_version_by_version() {
    for hash in ["blake3", "sha256"] {
        let env = Env::new();
        mixed_tree(&env.path("v1"), 10);
        mixed_tree(&env.path("v2"), 10);
        write(&env.path("v2/new"), &random_bytes(99, 700_000));
        fs::remove_file(env.path("v2/sub/big-copy")).unwrap();
        let r = analyze(&[&env.path("v1"), &env.path("v2")], &["--as-versions", "--chunker", "fastcdc:64KiB", "--hash", hash]);
        env.init(&["--chunk-avg", "64KiB", "--hash", hash]);
        for (i, v) in ["v1", "v2"].into_iter().enumerate() {
            env.backup(&env.path(v), &[]);
            let (bytes, chunks, trees) = repo_data(&env);
            let cum = &r["configs"][0]["versions"][i]["cumulative"];
            assert_eq!(bytes, u(&cum["unique_bytes"]), "{hash} {v}: unique data bytes");
            assert_eq!(chunks, u(&cum["unique_chunks"]), "{hash} {v}: data chunks");
            assert!(trees <= u(&cum["trees"]), "{hash} {v}: trees {trees} > estimate {}", cum["trees"]);
        }
    }
}

#[test]
fn analyze_agrees_with_one_backup_of_several_paths() {
    let env = Env::new();
    mixed_tree(&env.path("b"), 20);
    mixed_tree(&env.path("a"), 21);
    write(&env.path("lone"), &random_bytes(5, 200_000));
    let (a, b, lone) = (env.path("a"), env.path("b"), env.path("lone"));
    let r = analyze(&[&b, &lone, &a, &a.join("sub")], &["--chunker", "fastcdc:256KiB"]);
    env.init(&["--chunk-avg", "256KiB"]);
    ok(tessera(&env.repo()).arg("backup").args([&b, &lone, &a, &a.join("sub")]));
    let (bytes, chunks, _) = repo_data(&env);
    assert_eq!(bytes, u(&total(&r, 0)["unique_bytes"]));
    assert_eq!(chunks, u(&total(&r, 0)["unique_chunks"]));
}

#[test]
fn stats_reports_chunk_sizes_index_and_bloom_sizes() {
    let env = Env::new();
    mixed_tree(&env.path("d"), 30);
    env.init(&["--chunk-avg", "64KiB"]);
    env.backup(&env.path("d"), &[]);
    let s: Value = serde_json::from_str(&ok(tessera(&env.repo()).args(["stats", "--json"]))).unwrap();
    let r = analyze(&[&env.path("d")], &["--chunker", "fastcdc:64KiB"]);
    assert_eq!(s["chunk_sizes"], total(&r, 0)["chunk_sizes"], "same distinct chunks, same distribution");
    let bloom = u(&s["bloom_bytes"]);
    assert_eq!(bloom, u(&total(&r, 0)["bloom_bytes"]));
    let index = u(&s["index_bytes"]);
    assert!(index > 0 && index < MIB, "index {index}");
    let text = ok(tessera(&env.repo()).arg("stats"));
    assert!(text.contains("data chunk sizes:") && text.contains("Bloom filter"), "{text}");
}

#[test]
fn csv_and_json_are_parseable() {
    let env = Env::new();
    mixed_tree(&env.path("v1"), 40);
    mixed_tree(&env.path("v2"), 41);
    let (v1, v2) = (env.path("v1"), env.path("v2"));
    let out = ok(&mut analyze_cmd(&[&v1, &v2], &["--as-versions", "--csv", "--chunker", "fastcdc:64KiB,256KiB", "--chunker", "fixed:128KiB"]));
    let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 1 + 3 * 2, "header + 3 chunkers x 2 versions:\n{out}");
    let col = |name: &str| rows[0].iter().position(|h| *h == name).unwrap_or_else(|| panic!("no column {name}"));
    for row in &rows[1..] {
        assert_eq!(row.len(), rows[0].len(), "{row:?}");
        let ratio: f64 = row[col("dedup_ratio")].parse().unwrap();
        assert!(ratio >= 1.0, "{row:?}");
        let unique: u64 = row[col("unique_bytes")].parse().unwrap();
        assert!(unique > 0);
    }
    assert_eq!(rows[1][col("chunker")], "fastcdc:64KiB");
    assert_eq!(rows[6][col("chunker")], "fixed:128KiB");
    assert_eq!(rows[6][col("version")], "2");
    let r = analyze(&[&v1, &v2], &["--as-versions"]);
    let names: Vec<&str> = r["configs"].as_array().unwrap().iter().map(|c| c["chunker"].as_str().unwrap()).collect();
    assert_eq!(names, ["fastcdc:256KiB", "fastcdc:1MiB", "fastcdc:4MiB"], "default chunkers");
    assert!(r["configs"][0]["throughput"].as_f64().unwrap() > 0.0);
    let table = ok(&mut analyze_cmd(&[&v1], &[]));
    assert!(table.starts_with("chunker") && table.contains("fastcdc:1MiB"), "{table}");
}

#[test]
fn plot_writes_an_svg() {
    let env = Env::new();
    mixed_tree(&env.path("v1"), 50);
    mixed_tree(&env.path("v2"), 51);
    let svg = env.path("out.svg");
    ok(analyze_cmd(&[&env.path("v1"), &env.path("v2")], &["--as-versions", "--chunker", "fastcdc:64KiB,256KiB", "--chunker", "fixed:64KiB", "--plot"]).arg(&svg));
    let text = fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"), "not an SVG");
    assert!(text.contains("dedup ratio vs average chunk size"));
    assert!(text.contains("cumulative stored bytes per version"));
    assert!(text.contains("fastcdc:256KiB"), "legend names the configurations");
}

#[test]
fn bad_input_gives_clear_errors_and_writes_nothing() {
    let env = Env::new();
    write(&env.path("d/f"), b"data");
    let d = env.path("d");
    let svg = env.path("out.svg");
    let cases: [(&[&str], &str); 6] = [
        (&["--chunker", "rabin:1MiB"], "unknown chunker \"rabin\""),
        (&["--chunker", "fastcdc:1MiB/256KiB/4MiB"], "min <= avg <= max"),
        (&["--chunker", "fastcdc:64KiB,12parsecs"], "12parsecs"),
        (&["--chunker", ""], "empty chunker list"),
        (&["--chunker", "fixed:0"], "fixed:0"),
        (&["--chunker", "fastcdc:1GiB"], "fastcdc:1GiB"),
    ];
    for (args, expect) in cases {
        let out = run(analyze_cmd(&[&d], args).arg("--plot").arg(&svg));
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(stderr(&out).contains(expect), "{args:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    let missing = env.path("no-such-dir");
    let out = run(analyze_cmd(&[&d, &missing], &["--plot"]).arg(&svg));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no-such-dir") && stderr(&out).contains("does not exist"), "{}", stderr(&out));
    let out = run(&mut analyze_cmd(&[&d], &["--json", "--csv"]));
    assert_eq!(out.status.code(), Some(2), "clap rejects --json with --csv");
    let out = run(&mut analyze_cmd(&[], &[]));
    assert_eq!(out.status.code(), Some(2), "paths are required");
    assert!(!svg.exists(), "nothing written on bad input");
    assert_eq!(fs::read_dir(env.dir.path()).unwrap().count(), 1, "only the source dir exists");
}

/// Small directories go inline into their parent's tree, so 200 one-file directories make
/// two tree chunks (their parent, too big to inline, and the root), not 201; the estimate
/// must say so, and must stay an upper bound of what a real backup creates.
#[test]
fn small_directories_are_estimated_inline() {
    let env = Env::new();
    for i in 0..200 {
        write(&env.path(&format!("t/d{i:03}/f")), format!("file {i}").as_bytes());
    }
    let r = analyze(&[&env.path("t")], &["--chunker", "fastcdc:64KiB"]);
    let t = &r["configs"][0]["total"];
    assert_eq!(u(&t["dirs"]), 201);
    let estimate = u(&t["trees"]);
    assert!((2..=4).contains(&estimate), "trees estimate {estimate}");

    env.init(&["--chunk-avg", "64KiB"]);
    ok(tessera(&env.repo()).arg("backup").arg(env.path("t")));
    let stats: Value = serde_json::from_str(&ok(tessera(&env.repo()).args(["stats", "--json"]))).unwrap();
    let real = u(&stats["tree_chunks"]);
    assert!(real >= 2 && real <= estimate, "real trees {real}, estimate {estimate}");
}
