//! The stored format fixture (DESIGN.md invariant 12; docs/FORMAT.md).
//!
//! `tests/fixtures/repo-v1` is a repository written once by the real `tessera` binary
//! (`scripts/make-fixture.sh`) and committed as files. These tests open it with the library
//! and assert the exact decoded values, so any change to the config, chunk object, tree or
//! snapshot format -- or to chunking and hashing, which would break dedup against existing
//! repositories -- fails here. Do not regenerate the fixture to make a test pass: a new format
//! version gets a new fixture directory next to this one, and this one must keep passing.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use tessera::Repository;
use tessera::chunker::ChunkerParams;
use tessera::config::Config;
use tessera::fingerprint::{ChunkId, HashAlgo};
use tessera::manifest::{Node, NodeType, RawBytes, Slice, Snapshot, Tree, Xattr};
use tessera::restore::{self, RestoreLive, RestoreOptions};
use tessera::store::object;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/repo-v1");

const SNAPSHOT_ID: &str = "0d3471f0dcbefacc2fd895196b9df9cda71e71f894632c2084ee27970927fadd";
const ROOT_TREE: &str = "692814b5ceec57ff464da8cb71907237ed02aa29aa26a0effb239c816d9373ba";
const TMP_TREE: &str = "afd21c11b523bd0a2d11aaef9cb80f81ed4d8d349172b84876c319e3088dd9a1";
const FIXTURE_TREE: &str = "3662d2cb333711c10a1d8e6ba8bc4548084c78507f4b7f35467ae7c4440a62df";
const DATA_TREE: &str = "d3268c75235a7902835569eb924da163ee6c99585b6450f383e4ecc2ed505366";
const SUB_TREE: &str = "f52b09db7d59c31dfddcb41b4860e80c2006ffa77171124d698aa52a8f264adb";
/// The small-file stream: "latin-1 name\n" + "hello, tessera\n" + "linked\n", one raw chunk.
const PACKED: &str = "2e61f73b6585457647821464c2de48e86c7c98254e418480278ef337333cced7";
/// lorem.txt: four zstd-compressed chunks.
const LOREM: [(&str, u32); 4] = [
    ("1ac7154d6de56aa80c38366ce4365391c8378b47f459f446d096d706b3aac6cc", 790),
    ("51b8b464aa773aa3e89bfa07c9d4e8cca211c4cff54f46a97d5d6cd70c3fdcba", 355),
    ("8da0c281cd29a021ffc32a833feb6561a52a0d344b949711e64abc5aa20026ac", 4096),
    ("eb918a6acf3492a504027fbebb0a70624155505faccfc06d29df8e1e3936336b", 259),
];
/// random.bin: two raw (incompressible) chunks.
const RANDOM: [(&str, u32); 2] = [
    ("8fa25926ccf19fe92fa10ce2dfc773f27ebefd29139cf0362207f96a46d51d87", 864),
    ("57daba543d261ad2f63e65c1f856a8362fe7f762222e3e8255492bcafece7766", 636),
];
/// 2024-01-02 03:04:05.123456789 UTC, the mtime of every file in the fixture.
const MTIME: i64 = 1_704_164_645_123_456_789;
const NON_UTF8_NAME: &[u8] = b"caf\xe9.txt";

fn id(hex: &str) -> ChunkId {
    ChunkId::from_hex(hex).unwrap()
}

fn hello() -> Vec<u8> {
    b"hello, tessera\n".to_vec()
}

/// Exactly what scripts/make-fixture.sh writes to lorem.txt.
fn lorem() -> Vec<u8> {
    (0..100)
        .map(|i| format!("line {i:04}: the quick brown fox jumps over the lazy dog\n"))
        .collect::<String>()
        .into_bytes()
}

/// Exactly what scripts/make-fixture.sh writes to random.bin (xorshift64).
fn random_bin() -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..1500)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

/// A private copy of the fixture, so opening it (which creates the derived index) never
/// touches the committed files. The copy is exactly what a git checkout holds: no index/, no
/// objects/tmp, and only the fan-out directories that contain objects.
fn fixture_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    copy_dir(Path::new(FIXTURE), &repo);
    (dir, repo)
}

/// The tree at `path` (names from the root) of a snapshot.
fn tree_at(repo: &Repository, root: &ChunkId, path: &[&[u8]]) -> (ChunkId, Tree) {
    let mut id = *root;
    for name in path {
        let tree = repo.load_tree(&id).unwrap();
        let node = tree.nodes.iter().find(|n| n.name.0 == *name).unwrap_or_else(|| panic!("{name:?} missing"));
        id = node.subtree.expect("a directory");
    }
    (id, repo.load_tree(&id).unwrap())
}

fn node<'a>(tree: &'a Tree, name: &[u8]) -> &'a Node {
    tree.nodes.iter().find(|n| n.name.0 == name).unwrap_or_else(|| panic!("{name:?} missing"))
}

/// A file's bytes, assembled from its content slices.
fn content(repo: &Repository, node: &Node) -> Vec<u8> {
    let mut out = Vec::new();
    for s in &node.content {
        let chunk = repo.read_chunk(s.id()).unwrap();
        out.extend_from_slice(&chunk[s.offset()..s.offset() + s.len()]);
    }
    out
}

fn slices(v: &[(&str, u32)]) -> Vec<Slice> {
    v.iter().map(|(h, len)| Slice(id(h), 0, *len)).collect()
}

#[test]
fn config_decodes_to_known_values() {
    let (_dir, repo) = fixture_copy();
    let config = Config::load(&repo).unwrap();
    assert_eq!(
        config,
        Config {
            format: "tessera-repository".into(),
            version: 1,
            id: "87ed2de86a43535bde0e92296ba6b7c3".into(),
            hash: HashAlgo::Blake3,
            chunker: ChunkerParams { min_size: 256, avg_size: 1024, max_size: 4096 },
            index_shards: 16,
        }
    );
    // The writer's bytes: pretty JSON, fields in this order.
    assert_eq!(fs::read(repo.join("config")).unwrap(), config.to_bytes());
}

#[test]
fn snapshot_decodes_to_known_values() {
    let (_dir, root) = fixture_copy();
    let repo = Repository::open(&root).unwrap();
    let snaps = repo.snapshots().unwrap();
    assert_eq!(snaps.len(), 1);
    let (sid, snap) = &snaps[0];
    assert_eq!(sid, SNAPSHOT_ID);
    assert_eq!(snap.version, 1);
    assert_eq!(snap.time.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true), "2026-11-22T23:21:56.560553767Z");
    assert_eq!(snap.host, "fixture-host");
    assert_eq!(snap.paths, vec!["/tmp/tessera-fixture/data".to_string()]);
    assert_eq!(snap.tags, vec!["fixture".to_string()]);
    assert_eq!(snap.parent, None);
    assert_eq!(snap.tree, id(ROOT_TREE));
    let s = &snap.summary;
    assert_eq!((s.files, s.dirs, s.others), (8, 4, 2));
    assert_eq!((s.total_bytes, s.read_bytes), (7057, 7050));
    assert_eq!((s.new_chunks, s.new_bytes, s.stored_bytes), (12, 10520, 3729));
    assert_eq!(s.duration_s, 0.81110303);
    assert!(snap.warnings.is_empty());

    // The file name is the BLAKE3 of the file's bytes, and the writer reproduces those bytes.
    let bytes = fs::read(root.join("snapshots").join(SNAPSHOT_ID)).unwrap();
    assert_eq!(blake3::hash(&bytes).to_hex().as_str(), SNAPSHOT_ID);
    assert_eq!(snap.to_bytes(), bytes);
    assert_eq!(repo.find_snapshot("latest").unwrap().0, SNAPSHOT_ID);
    assert_eq!(repo.find_snapshot("0d3471").unwrap().0, SNAPSHOT_ID);
}

#[test]
fn trees_decode_to_known_values() {
    let (_dir, root) = fixture_copy();
    let repo = Repository::open(&root).unwrap();
    let snap_tree = id(ROOT_TREE);

    // Above the source path: one entry per level, real metadata of /tmp.
    let (rid, rtree) = tree_at(&repo, &snap_tree, &[]);
    assert_eq!(rid, id(ROOT_TREE));
    assert_eq!(rtree.nodes.len(), 1);
    let tmp = &rtree.nodes[0];
    assert_eq!((tmp.name.0.as_slice(), tmp.kind, tmp.mode), (&b"tmp"[..], NodeType::Dir, 0o1777));
    assert_eq!(tmp.subtree, Some(id(TMP_TREE)));
    let (_, t) = tree_at(&repo, &snap_tree, &[b"tmp"]);
    assert_eq!(t.nodes.len(), 1);
    assert_eq!(t.nodes[0].name.0, b"tessera-fixture");
    assert_eq!((t.nodes[0].mode, t.nodes[0].mtime_ns), (0o755, 1_704_164_648_000_000_000));
    assert_eq!(t.nodes[0].subtree, Some(id(FIXTURE_TREE)));
    let (_, t) = tree_at(&repo, &snap_tree, &[b"tmp", b"tessera-fixture"]);
    assert_eq!(t.nodes.len(), 1);
    assert_eq!(t.nodes[0].name.0, b"data");
    assert_eq!((t.nodes[0].mode, t.nodes[0].mtime_ns), (0o755, 1_704_164_647_000_000_000));
    assert_eq!(t.nodes[0].subtree, Some(id(DATA_TREE)));

    // The source directory: names sorted bytewise, the non-UTF-8 one first.
    let (did, data) = tree_at(&repo, &snap_tree, &[b"tmp", b"tessera-fixture", b"data"]);
    assert_eq!(did, id(DATA_TREE));
    let names: Vec<&[u8]> = data.nodes.iter().map(|n| n.name.0.as_slice()).collect();
    assert_eq!(
        names,
        [NON_UTF8_NAME, b"copy-of-hello.txt", b"empty", b"hardlink-a", b"hello.txt", b"link", b"pipe", b"sub"]
    );
    let expect = |name: &[u8], kind, mode, size| {
        let n = node(&data, name);
        assert_eq!((n.kind, n.mode, n.size, n.uid, n.gid), (kind, mode, size, 0, 0), "{name:?}");
        n
    };
    let packed = |off, len| vec![Slice(id(PACKED), off, len)];

    let n = expect(NON_UTF8_NAME, NodeType::File, 0o600, 13);
    assert_eq!(n.mtime_ns, MTIME);
    assert_eq!(n.content, packed(0, 13));
    assert_eq!(content(&repo, n), b"latin-1 name\n");

    // Identical small files share one range of the packed stream.
    let n = expect(b"copy-of-hello.txt", NodeType::File, 0o644, 15);
    assert_eq!(n.content, packed(13, 15));
    assert!(n.xattrs.is_empty());
    let n = expect(b"hello.txt", NodeType::File, 0o644, 15);
    assert_eq!(n.content, packed(13, 15));
    assert_eq!(content(&repo, n), hello());
    assert_eq!(n.xattrs, vec![Xattr { name: RawBytes(b"user.comment".to_vec()), value: RawBytes(b"fixture".to_vec()) }]);
    assert_eq!(n.links, None);

    let n = expect(b"empty", NodeType::File, 0o640, 0);
    assert!(n.content.is_empty());
    assert_eq!(n.mtime_ns, MTIME);

    let n = expect(b"hardlink-a", NodeType::File, 0o640, 7);
    assert_eq!(n.content, packed(28, 7));
    assert_eq!(n.links.map(|(_, count)| count), Some(2));
    assert_eq!(n.inode, 10035223);

    let n = expect(b"link", NodeType::Symlink, 0o777, 0);
    assert_eq!(n.target, Some(RawBytes(b"hello.txt".to_vec())));
    assert_eq!(n.mtime_ns, MTIME);
    assert!(n.content.is_empty() && n.subtree.is_none());

    let n = expect(b"pipe", NodeType::Fifo, 0o620, 0);
    assert_eq!((n.rdev, n.target.as_ref()), (0, None));

    let n = expect(b"sub", NodeType::Dir, 0o750, 0);
    assert_eq!(n.mtime_ns, 1_704_164_646_000_000_000);
    assert_eq!(n.subtree, Some(id(SUB_TREE)));

    let (_, sub) = tree_at(&repo, &snap_tree, &[b"tmp", b"tessera-fixture", b"data", b"sub"]);
    let names: Vec<&[u8]> = sub.nodes.iter().map(|n| n.name.0.as_slice()).collect();
    assert_eq!(names, [&b"hardlink-b"[..], b"lorem.txt", b"random.bin"]);
    let b = node(&sub, b"hardlink-b");
    let a = node(&data, b"hardlink-a");
    assert_eq!((b.inode, b.links, &b.content), (a.inode, a.links, &a.content));
    let n = node(&sub, b"lorem.txt");
    assert_eq!((n.mode, n.size), (0o644, 5500));
    assert_eq!(n.content, slices(&LOREM));
    assert_eq!(content(&repo, n), lorem());
    let n = node(&sub, b"random.bin");
    assert_eq!((n.mode, n.size), (0o600, 1500));
    assert_eq!(n.content, slices(&RANDOM));
    assert_eq!(content(&repo, n), random_bin());

    // The stored bytes: non-UTF-8 names as {"hex": ...}, and the writer reproduces them
    // exactly, so an unchanged directory keeps its tree id (invariant 9).
    let raw = repo.read_chunk(&id(DATA_TREE)).unwrap();
    let text = String::from_utf8(raw.clone()).unwrap();
    assert!(text.starts_with(r#"{"version":1,"nodes":[{"name":{"hex":"636166e92e747874"},"type":"file","mode":384,"#), "{text}");
    assert!(text.contains(r#""content":[["2e61f73b6585457647821464c2de48e86c7c98254e418480278ef337333cced7",13,15]]"#));
    for tid in [ROOT_TREE, TMP_TREE, FIXTURE_TREE, DATA_TREE, SUB_TREE] {
        let bytes = repo.read_chunk(&id(tid)).unwrap();
        assert_eq!(HashAlgo::Blake3.hash(&bytes), id(tid));
        let tree = Tree::from_bytes(&id(tid), &bytes).unwrap();
        assert_eq!(tree.version, 1);
        assert_eq!(Tree::new(tree.nodes.clone()).to_bytes(), bytes, "tree {tid} re-serializes differently");
    }
}

#[test]
fn objects_have_known_headers_and_verify() {
    let raw_ids: Vec<&str> = [PACKED].into_iter().chain(RANDOM.iter().map(|r| r.0)).collect();
    let mut seen = 0;
    for fan in fs::read_dir(Path::new(FIXTURE).join("objects")).unwrap() {
        let fan = fan.unwrap();
        for obj in fs::read_dir(fan.path()).unwrap() {
            let obj = obj.unwrap();
            let hex = obj.file_name().into_string().unwrap();
            assert_eq!(&hex[..2], fan.file_name().to_str().unwrap(), "objects/<first 2 hex>/<64 hex>");
            let cid = id(&hex);
            let bytes = fs::read(obj.path()).unwrap();
            assert_eq!(&bytes[..4], b"TSRO");
            assert_eq!((bytes[4], bytes[6], bytes[7]), (1, 0, 0), "version 1, reserved 0");
            let header = object::parse_header(&cid, &bytes).unwrap();
            assert_eq!(header.compressed, !raw_ids.contains(&hex.as_str()), "{hex}");
            assert_eq!(bytes[5], header.compressed as u8);
            let plain = object::decode(&cid, HashAlgo::Blake3, &bytes).unwrap();
            assert_eq!(plain.len() as u64, header.raw_len);
            if !header.compressed {
                assert_eq!(&bytes[16..], plain.as_slice());
            }
            // The id is the hash of the plaintext, not of the stored object.
            assert_eq!(HashAlgo::Blake3.hash(&plain), cid);
            seen += 1;
        }
    }
    assert_eq!(seen, 12, "5 trees + 1 packed + 4 lorem + 2 random");

    // One raw object byte for byte: the packed small-file stream.
    let packed = fs::read(Path::new(FIXTURE).join("objects/2e").join(PACKED)).unwrap();
    let mut expect = b"TSRO\x01\x00\x00\x00".to_vec();
    expect.extend_from_slice(&35u64.to_le_bytes());
    expect.extend_from_slice(b"latin-1 name\nhello, tessera\nlinked\n");
    assert_eq!(packed, expect);
    // One compressed object's header: the 4096-byte lorem chunk.
    let big = fs::read(Path::new(FIXTURE).join("objects/8d").join(LOREM[2].0)).unwrap();
    assert_eq!(&big[..16], b"TSRO\x01\x01\x00\x00\x00\x10\x00\x00\x00\x00\x00\x00");
    assert_eq!(&big[16..20], &[0x28, 0xb5, 0x2f, 0xfd], "a zstd frame");
}

#[test]
fn restore_reproduces_the_fixture_files() {
    let (dir, root) = fixture_copy();
    let repo = Repository::open(&root).unwrap();
    let (_, snap) = repo.find_snapshot(SNAPSHOT_ID).unwrap();
    let target = dir.path().join("out");
    let opts = RestoreOptions { target: target.clone(), includes: Vec::new(), overwrite: false };
    let report = restore::restore(&repo, &snap, &opts, &RestoreLive::default()).unwrap();
    // Filesystems without user xattrs are tolerated; anything else is a failure.
    let errors: Vec<_> = report.errors.iter().filter(|e| !e.error.starts_with("xattr")).collect();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!((report.files, report.dirs, report.others), (8, 4, 2));
    assert_eq!(report.bytes, 13 + 15 + 15 + 7 + 5500 + 1500);

    let data = target.join("tmp/tessera-fixture/data");
    let name = OsStr::from_bytes(NON_UTF8_NAME);
    let meta = |p: &Path| fs::symlink_metadata(p).unwrap();
    let check_file = |rel: &Path, bytes: &[u8], mode: u32| {
        let p = data.join(rel);
        assert_eq!(fs::read(&p).unwrap(), bytes, "{}", p.display());
        let m = meta(&p);
        assert!(m.is_file());
        assert_eq!(m.mode() & 0o7777, mode, "{}", p.display());
        assert_eq!(m.mtime() * 1_000_000_000 + m.mtime_nsec(), MTIME, "{}", p.display());
    };
    check_file(Path::new(name), b"latin-1 name\n", 0o600);
    check_file(Path::new("hello.txt"), &hello(), 0o644);
    check_file(Path::new("copy-of-hello.txt"), &hello(), 0o644);
    check_file(Path::new("empty"), b"", 0o640);
    check_file(Path::new("hardlink-a"), b"linked\n", 0o640);
    check_file(Path::new("sub/hardlink-b"), b"linked\n", 0o640);
    check_file(Path::new("sub/lorem.txt"), &lorem(), 0o644);
    check_file(Path::new("sub/random.bin"), &random_bin(), 0o600);
    assert_eq!(meta(&data.join("hardlink-a")).ino(), meta(&data.join("sub/hardlink-b")).ino());
    assert_ne!(meta(&data.join("hello.txt")).ino(), meta(&data.join("copy-of-hello.txt")).ino());
    if let Ok(Some(v)) = xattr::get(data.join("hello.txt"), "user.comment") {
        assert_eq!(v, b"fixture");
    }

    let link = meta(&data.join("link"));
    assert!(link.file_type().is_symlink());
    assert_eq!(fs::read_link(data.join("link")).unwrap(), Path::new("hello.txt"));
    assert_eq!(link.mtime() * 1_000_000_000 + link.mtime_nsec(), MTIME);
    let pipe = meta(&data.join("pipe"));
    assert!(pipe.file_type().is_fifo());
    assert_eq!(pipe.mode() & 0o7777, 0o620);

    let sub = meta(&data.join("sub"));
    assert_eq!((sub.mode() & 0o7777, sub.mtime(), sub.mtime_nsec()), (0o750, 1_704_164_646, 0));
    let d = meta(&data);
    assert_eq!((d.mode() & 0o7777, d.mtime()), (0o755, 1_704_164_647));
    assert_eq!(meta(&target.join("tmp/tessera-fixture")).mtime(), 1_704_164_648);

    // Nothing else: no temp files left behind.
    let mut all = Vec::new();
    let mut stack = vec![data.clone()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
            all.push(e.path().strip_prefix(&data).unwrap().to_path_buf());
        }
    }
    all.sort();
    let mut want: Vec<PathBuf> = [
        "copy-of-hello.txt", "empty", "hardlink-a", "hello.txt", "link", "pipe", "sub", "sub/hardlink-b",
        "sub/lorem.txt", "sub/random.bin",
    ]
    .iter()
    .map(PathBuf::from)
    .chain([PathBuf::from(name)])
    .collect();
    want.sort();
    assert_eq!(all, want);
}

#[test]
fn check_and_index_rebuild_on_the_fixture() {
    let (_dir, root) = fixture_copy();
    let repo = Repository::open(&root).unwrap();
    let report = tessera::check::check(&repo, true, &Default::default()).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!((report.snapshots, report.trees, report.objects, report.objects_read), (1, 5, 12, 12));

    assert_eq!(tessera::check::rebuild_index(&repo).unwrap(), (12, 0));
    drop(repo);

    // The derived index: 16 shard files, `shard-%04x.sqlite`.
    for s in 0..16 {
        assert!(root.join(format!("index/shard-{s:04x}.sqlite")).is_file(), "shard {s}");
    }
    // shard = (first two id bytes as big-endian u16 * shard_count) >> 16
    let ids: Vec<String> = [ROOT_TREE, TMP_TREE, FIXTURE_TREE, DATA_TREE, SUB_TREE, PACKED]
        .into_iter()
        .chain(LOREM.iter().map(|l| l.0))
        .chain(RANDOM.iter().map(|r| r.0))
        .map(String::from)
        .collect();
    let mut total = 0;
    for s in 0..16u32 {
        let conn = rusqlite::Connection::open(root.join(format!("index/shard-{s:04x}.sqlite"))).unwrap();
        let mut stmt = conn.prepare("SELECT id, raw_len, stored_len FROM chunks ORDER BY id").unwrap();
        let rows: Vec<(Vec<u8>, i64, i64)> =
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect();
        let want: Vec<&String> = ids
            .iter()
            .filter(|h| (u32::from(u16::from_str_radix(&h[..4], 16).unwrap()) * 16) >> 16 == s)
            .collect();
        assert_eq!(rows.len(), want.len(), "shard {s}");
        for (rid, raw_len, stored_len) in rows {
            let hex = hex::encode(&rid);
            assert!(want.contains(&&hex), "{hex} in shard {s}");
            assert_eq!(id(&hex).shard(16), s);
            let obj = fs::read(root.join("objects").join(&hex[..2]).join(&hex)).unwrap();
            assert_eq!(stored_len as usize, obj.len());
            assert_eq!(raw_len as u64, object::parse_header(&id(&hex), &obj).unwrap().raw_len);
            total += 1;
        }
    }
    assert_eq!(total, 12);

    // The Bloom filter file header: magic, version 1, 3 reserved, generation, capacity, items.
    let bloom = fs::read(root.join("index/bloom")).unwrap();
    let word = |at: usize| u64::from_le_bytes(bloom[at..at + 8].try_into().unwrap());
    assert_eq!(&bloom[..8], b"TSBF\x01\x00\x00\x00");
    assert!(word(8) >= 1, "generation");
    assert_eq!(word(16), 1 << 20, "capacity: at least 2^20, a power of two");
    assert_eq!(word(24), 12, "items");
    let filter = tessera::index::BloomFilter::from_bytes(&bloom).unwrap();
    assert!(ids.iter().all(|h| filter.may_contain(&id(h))));
}

/// Backing up the same bytes today gives the fixture's chunk ids (invariant 1): chunking,
/// small-file packing and hashing are part of the format even though they are not a file.
#[test]
fn same_bytes_give_the_fixture_chunk_ids() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("data");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("hello.txt"), hello()).unwrap();
    fs::write(src.join("copy-of-hello.txt"), hello()).unwrap();
    fs::write(src.join(OsStr::from_bytes(NON_UTF8_NAME)), b"latin-1 name\n").unwrap();
    fs::write(src.join("empty"), b"").unwrap();
    fs::write(src.join("hardlink-a"), b"linked\n").unwrap();
    fs::hard_link(src.join("hardlink-a"), src.join("sub/hardlink-b")).unwrap();
    fs::write(src.join("sub/lorem.txt"), lorem()).unwrap();
    fs::write(src.join("sub/random.bin"), random_bin()).unwrap();

    let repo_dir = dir.path().join("repo");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .env_remove("TESSERA_REPO")
            .arg("--repo")
            .arg(&repo_dir)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&["init", "--chunk-avg", "1KiB"]);
    run(&["backup", "--quiet", "--host", "h", src.to_str().unwrap()]);
    let repo = Repository::open(&repo_dir).unwrap();
    let (_, snap) = repo.find_snapshot("latest").unwrap();
    let comps: Vec<&[u8]> = src
        .components()
        .skip(1)
        .map(|c| c.as_os_str().as_bytes())
        .collect();
    let (_, data) = tree_at(&repo, &snap.tree, &comps);
    let mut sub_path = comps.clone();
    sub_path.push(b"sub");
    let (_, sub) = tree_at(&repo, &snap.tree, &sub_path);

    let packed = |off, len| vec![Slice(id(PACKED), off, len)];
    assert_eq!(node(&data, NON_UTF8_NAME).content, packed(0, 13));
    assert_eq!(node(&data, b"copy-of-hello.txt").content, packed(13, 15));
    assert_eq!(node(&data, b"hello.txt").content, packed(13, 15));
    assert_eq!(node(&data, b"hardlink-a").content, packed(28, 7));
    assert_eq!(node(&sub, b"hardlink-b").content, packed(28, 7));
    assert!(node(&data, b"empty").content.is_empty());
    assert_eq!(node(&sub, b"lorem.txt").content, slices(&LOREM));
    assert_eq!(node(&sub, b"random.bin").content, slices(&RANDOM));
}

#[test]
fn literal_bytes_decode_to_known_values() {
    // Object header: magic, version 1, codec (0 raw, 1 zstd), reserved u16 0, raw length u64 LE.
    let any = id(PACKED);
    let h = object::parse_header(&any, b"TSRO\x01\x01\x00\x00\x10\x27\x00\x00\x00\x00\x00\x00").unwrap();
    assert!(h.compressed);
    assert_eq!(h.raw_len, 10_000);
    let h = object::parse_header(&any, b"TSRO\x01\x00\x00\x00\x03\x00\x00\x00\x00\x00\x00\x00abc").unwrap();
    assert!(!h.compressed);
    assert_eq!(h.raw_len, 3);
    // Short chunks are stored raw; the writer's bytes exactly.
    assert_eq!(object::encode(b"abc"), b"TSRO\x01\x00\x00\x00\x03\x00\x00\x00\x00\x00\x00\x00abc");
    let abc = HashAlgo::Blake3.hash(b"abc");
    assert_eq!(object::decode(&abc, HashAlgo::Blake3, &object::encode(b"abc")).unwrap(), b"abc");
    // SHA-256 repositories name chunks by the SHA-256 of the plaintext.
    assert_eq!(
        HashAlgo::Sha256.hash(b"abc").to_hex(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert!(object::parse_header(&any, b"TSRX\x01\x00\x00\x00\x03\x00\x00\x00\x00\x00\x00\x00").is_err());
    let err = object::parse_header(&any, b"TSRO\x01\x07\x00\x00\x03\x00\x00\x00\x00\x00\x00\x00").unwrap_err();
    assert!(err.to_string().contains("unknown codec 7"), "{err}");

    // A tree: every field kind, defaults omitted, names sorted bytewise.
    let sub = "11".repeat(32);
    let chunk = "22".repeat(32);
    let tree_json = format!(
        concat!(
            r#"{{"version":1,"nodes":["#,
            r#"{{"name":"a.txt","type":"file","mode":420,"uid":1000,"gid":100,"mtime_ns":-5,"ctime_ns":7,"inode":9,"#,
            r#""size":5,"links":[2049,3],"content":[["{chunk}",10,5]],"#,
            r#""xattrs":[{{"name":"user.k","value":{{"hex":"00ff"}}}}]}},"#,
            r#"{{"name":"dev","type":"chardev","mode":438,"uid":0,"gid":0,"mtime_ns":0,"ctime_ns":0,"inode":2,"rdev":259}},"#,
            r#"{{"name":"dir","type":"dir","mode":493,"uid":0,"gid":0,"mtime_ns":1,"ctime_ns":1,"inode":3,"subtree":"{sub}"}},"#,
            r#"{{"name":{{"hex":"ff"}},"type":"symlink","mode":511,"uid":0,"gid":0,"mtime_ns":1,"ctime_ns":1,"inode":4,"target":{{"hex":"2e2e2f80"}}}}"#,
            r#"]}}"#
        ),
        chunk = chunk,
        sub = sub
    );
    let tid = HashAlgo::Blake3.hash(tree_json.as_bytes());
    let tree = Tree::from_bytes(&tid, tree_json.as_bytes()).unwrap();
    assert_eq!(tree.version, 1);
    let want = vec![
        Node {
            name: RawBytes(b"a.txt".to_vec()),
            kind: NodeType::File,
            mode: 0o644,
            uid: 1000,
            gid: 100,
            mtime_ns: -5,
            ctime_ns: 7,
            inode: 9,
            size: 5,
            hash: None,
            links: Some((2049, 3)),
            content: vec![Slice(id(&chunk), 10, 5)],
            subtree: None,
            entries: None,
            target: None,
            rdev: 0,
            xattrs: vec![Xattr { name: RawBytes(b"user.k".to_vec()), value: RawBytes(vec![0, 0xff]) }],
        },
        Node {
            name: RawBytes(b"dev".to_vec()),
            kind: NodeType::Chardev,
            mode: 0o666,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            inode: 2,
            size: 0,
            hash: None,
            links: None,
            content: vec![],
            subtree: None,
            entries: None,
            target: None,
            rdev: 259,
            xattrs: vec![],
        },
        Node {
            name: RawBytes(b"dir".to_vec()),
            kind: NodeType::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime_ns: 1,
            ctime_ns: 1,
            inode: 3,
            size: 0,
            hash: None,
            links: None,
            content: vec![],
            subtree: Some(id(&sub)),
            entries: None,
            target: None,
            rdev: 0,
            xattrs: vec![],
        },
        Node {
            name: RawBytes(vec![0xff]),
            kind: NodeType::Symlink,
            mode: 0o777,
            uid: 0,
            gid: 0,
            mtime_ns: 1,
            ctime_ns: 1,
            inode: 4,
            size: 0,
            hash: None,
            links: None,
            content: vec![],
            subtree: None,
            entries: None,
            target: Some(RawBytes(b"../\x80".to_vec())),
            rdev: 0,
            xattrs: vec![],
        },
    ];
    assert_eq!(tree.nodes, want);
    // The writer sorts and produces exactly these bytes.
    let mut shuffled = want.clone();
    shuffled.reverse();
    assert_eq!(String::from_utf8(Tree::new(shuffled).to_bytes()).unwrap(), tree_json);

    // A snapshot with a parent and a warning.
    let snap_json = format!(
        r#"{{"version":1,"time":"2024-05-06T07:08:09.5Z","host":"h","paths":["/a","/b"],"tags":[],
        "parent":"{parent}","tree":"{sub}","summary":{{"files":1,"dirs":2,"others":3,"total_bytes":4,
        "read_bytes":5,"new_chunks":6,"new_bytes":7,"stored_bytes":8,"duration_s":9.5}},
        "warnings":[{{"path":"/a/x","error":"could not read file: denied"}}]}}"#,
        parent = "ab".repeat(32),
        sub = sub
    );
    let snap: Snapshot = serde_json::from_str(&snap_json).unwrap();
    assert_eq!(snap.version, 1);
    assert_eq!(snap.time.timestamp_nanos_opt(), Some(1_714_979_289_500_000_000));
    assert_eq!(snap.paths, ["/a", "/b"]);
    assert_eq!(snap.parent.as_deref(), Some("ab".repeat(32).as_str()));
    assert_eq!(snap.tree, id(&sub));
    assert_eq!((snap.summary.files, snap.summary.stored_bytes, snap.summary.duration_s), (1, 8, 9.5));
    assert_eq!(snap.warnings[0].path, "/a/x");
    let back: Snapshot = serde_json::from_slice(&snap.to_bytes()).unwrap();
    assert_eq!(back, snap);
}

#[test]
fn unsafe_tree_entries_are_rejected() {
    let tree = |name: &str| format!(r#"{{"version":1,"nodes":[{{"name":{name},"type":"fifo","mode":420,"uid":0,"gid":0,"mtime_ns":0,"ctime_ns":0,"inode":1}}]}}"#);
    let tid = id(PACKED);
    for (name, why) in [
        (r#"".""#, "relative path component"),
        (r#""..""#, "relative path component"),
        (r#""""#, "empty name"),
        (r#""a/b""#, "contains a slash"),
        (r#""/etc""#, "contains a slash"),
        (r#"{"hex":"2e2e"}"#, "relative path component"),
        (r#"{"hex":"610062"}"#, "contains a NUL byte"),
    ] {
        let err = Tree::from_bytes(&tid, tree(name).as_bytes()).unwrap_err();
        assert!(err.to_string().contains(why), "{name}: {err}");
    }
    // Unsorted or duplicate entries, and a dir without a subtree.
    let two = |a: &str, b: &str| {
        format!(
            r#"{{"version":1,"nodes":[{{"name":"{a}","type":"fifo","mode":0,"uid":0,"gid":0,"mtime_ns":0,"ctime_ns":0,"inode":1}},{{"name":"{b}","type":"fifo","mode":0,"uid":0,"gid":0,"mtime_ns":0,"ctime_ns":0,"inode":2}}]}}"#
        )
    };
    assert!(Tree::from_bytes(&tid, two("b", "a").as_bytes()).unwrap_err().to_string().contains("not sorted"));
    assert!(Tree::from_bytes(&tid, two("a", "a").as_bytes()).unwrap_err().to_string().contains("duplicated"));
    let dir = r#"{"version":1,"nodes":[{"name":"d","type":"dir","mode":0,"uid":0,"gid":0,"mtime_ns":0,"ctime_ns":0,"inode":1}]}"#;
    assert!(Tree::from_bytes(&tid, dir.as_bytes()).unwrap_err().to_string().contains("subtree"));
}

#[test]
fn newer_versions_are_rejected() {
    // Config: version 2 is refused with an error naming the newer version.
    let (_dir, root) = fixture_copy();
    let config = fs::read_to_string(root.join("config")).unwrap();
    assert!(config.contains(r#""version": 1,"#));
    fs::write(root.join("config"), config.replace(r#""version": 1,"#, r#""version": 2,"#)).unwrap();
    let err = Config::load(&root).unwrap_err().to_string();
    assert!(err.contains("version 2") && err.contains("newer"), "{err}");
    let err = Repository::open(&root).err().expect("a version 2 repository is refused").to_string();
    assert!(err.contains("version 2") && err.contains("newer"), "{err}");
    assert!(!root.join("index").exists(), "nothing is written to a newer repository");
    // Not a repository at all.
    fs::write(root.join("config"), br#"{"format":"something-else","version":1}"#).unwrap();
    assert!(Config::load(&root).unwrap_err().to_string().contains("not a Tessera repository"));

    // Chunk object: any version byte other than 1.
    let obj = fs::read(Path::new(FIXTURE).join("objects/2e").join(PACKED)).unwrap();
    let mut v2 = obj.clone();
    v2[4] = 2;
    let err = object::decode(&id(PACKED), HashAlgo::Blake3, &v2).unwrap_err().to_string();
    assert!(err.contains("unknown object format version 2") && err.contains(PACKED), "{err}");

    // Tree.
    let tid = id(DATA_TREE);
    let err = Tree::from_bytes(&tid, br#"{"version":2,"nodes":[]}"#).unwrap_err().to_string();
    assert!(err.contains("version 2") && err.contains("newer"), "{err}");

    // Snapshot: stored under the BLAKE3 of its bytes, like any snapshot.
    let (_dir2, root2) = fixture_copy();
    let bytes = fs::read(root2.join("snapshots").join(SNAPSHOT_ID)).unwrap();
    let newer = String::from_utf8(bytes).unwrap().replacen(r#""version": 1,"#, r#""version": 2,"#, 1);
    let nid = blake3::hash(newer.as_bytes()).to_hex().to_string();
    fs::write(root2.join("snapshots").join(&nid), &newer).unwrap();
    let repo = Repository::open(&root2).unwrap();
    let err = repo.load_snapshot(&nid).unwrap_err().to_string();
    assert!(err.contains("version 2") && err.contains("newer"), "{err}");
    // A snapshot whose bytes do not match its name is refused too.
    fs::write(root2.join("snapshots").join(&nid), newer.replace("fixture-host", "other-host")).unwrap();
    assert!(repo.load_snapshot(&nid).unwrap_err().to_string().contains("does not match its id"));
}
