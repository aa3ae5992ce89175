//! The stored format fixtures (DESIGN.md invariant 12; docs/FORMAT.md).
//!
//! `tests/fixtures/repo-v1` (tree format version 1: one tree chunk per directory) and
//! `tests/fixtures/repo-v2` (tree format version 2: small directories inline in their
//! parent's tree) are repositories written once by the real `tessera` binary of their time
//! (`scripts/make-fixture.sh`) and committed as files. These tests open them with the library
//! and assert the exact decoded values, so any change to the config, chunk object, tree or
//! snapshot format -- or to chunking and hashing, which would break dedup against existing
//! repositories -- fails here. Do not regenerate a fixture to make a test pass: a new format
//! version gets a new fixture directory next to these, and the old ones must keep passing
//! (repo-v1 is the guarantee that version 1 trees are still read and restored exactly).

mod common;

use std::collections::BTreeMap;
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
use tessera::manifest::{Node, NodeType, RawBytes, Slice, Snapshot, Subtree, TREE_VERSION, Tree, Xattr};
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

/// The v2 fixture: the v1 contents plus `empty-dir/` and `big/` (120 small files and an inline
/// `nested/`), written with tree format version 2. Only two tree chunks: the root (which
/// holds `tmp/tessera-fixture/data`, `sub/` and `empty-dir/` inline) and `big/`.
const FIXTURE_V2: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/repo-v2");
const SNAPSHOT_V2: &str = "2c09c95fc14e71d6850d0449147211a3906199308799d3c10edecc478e4e1d88";
const ROOT_TREE_V2: &str = "ce0beb4349e52029b827985657c1272d368b5a3a154aadc7b0a4723f6af0703b";
const BIG_TREE_V2: &str = "64d85978b68864015a5b97a7d463b91ccf17dd7e4e94ed4d5743334d06d9f4be";
/// The small-file stream of the v2 fixture, in walk order (big/file-000.txt ... big/nested/deep.txt,
/// then the v1 small files): two zstd-compressed chunks.
const PACKED_V2: [(&str, u32); 2] = [
    ("a1f46e4cabd09fac6c7b8dc249f74881f3fa9c8b9e05f305bbd5fc4f8a2c8087", 1068),
    ("588e64c8344b99dc624da5a568aa617b52f4d8a35709e7ed199f616e68d4086c", 532),
];
/// Directories whose serialized tree is smaller than this go inline (src/backup.rs).
const INLINE_TREE_BYTES: usize = 32 << 10;

fn id(hex: &str) -> ChunkId {
    ChunkId::from_hex(hex).unwrap()
}

/// Exactly what scripts/make-fixture.sh writes to big/file-NNN.txt.
fn big_file(i: usize) -> Vec<u8> {
    format!("big file {i:03}\n").into_bytes()
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

/// A restored fixture file: exact bytes, mode and nanosecond mtime.
fn check_file(data: &Path, rel: &Path, bytes: &[u8], mode: u32) {
    let p = data.join(rel);
    assert_eq!(fs::read(&p).unwrap(), bytes, "{}", p.display());
    let m = fs::symlink_metadata(&p).unwrap();
    assert!(m.is_file());
    assert_eq!(m.mode() & 0o7777, mode, "{}", p.display());
    assert_eq!(m.mtime() * 1_000_000_000 + m.mtime_nsec(), MTIME, "{}", p.display());
}

/// The files both fixtures hold, restored below `target`; returns their directory.
fn check_common_files(target: &Path) -> PathBuf {
    let data = target.join("tmp/tessera-fixture/data");
    check_file(&data, Path::new(OsStr::from_bytes(NON_UTF8_NAME)), b"latin-1 name\n", 0o600);
    check_file(&data, Path::new("hello.txt"), &hello(), 0o644);
    check_file(&data, Path::new("copy-of-hello.txt"), &hello(), 0o644);
    check_file(&data, Path::new("empty"), b"", 0o640);
    check_file(&data, Path::new("hardlink-a"), b"linked\n", 0o640);
    check_file(&data, Path::new("sub/hardlink-b"), b"linked\n", 0o640);
    check_file(&data, Path::new("sub/lorem.txt"), &lorem(), 0o644);
    check_file(&data, Path::new("sub/random.bin"), &random_bin(), 0o600);
    data
}

/// Exactly what scripts/make-fixture.sh writes to random.bin: the shared xorshift64 stream
/// with seed 1 (state 0x9E37_79B9_7F4A_7C15).
fn random_bin() -> Vec<u8> {
    common::random_bytes(1, 1500)
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

/// A private copy of the v1 fixture, so opening it (which creates the derived index) never
/// touches the committed files. The copy is exactly what a git checkout holds: no index/, no
/// objects/tmp, and only the fan-out directories that contain objects.
fn fixture_copy() -> (tempfile::TempDir, PathBuf) {
    fixture_copy_of(FIXTURE)
}

fn fixture_copy_of(fixture: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    copy_dir(Path::new(fixture), &repo);
    (dir, repo)
}

/// The tree at `path` (names from the root) of a snapshot whose directories all have tree
/// chunks of their own (always so in version 1 trees).
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
    entry(&tree.nodes, name)
}

fn entry<'a>(nodes: &'a [Node], name: &[u8]) -> &'a Node {
    nodes.iter().find(|n| n.name.0 == name).unwrap_or_else(|| panic!("{name:?} missing"))
}

/// A directory's entries at `path` (names from the root tree), following tree chunks and
/// inline directories alike, with the id of the tree chunk that holds them as its own
/// (None for an inline directory).
fn dir_at(repo: &Repository, root: &ChunkId, path: &[&[u8]]) -> (Option<ChunkId>, Vec<Node>) {
    let mut at = (Some(*root), repo.load_tree(root).unwrap().nodes);
    for name in path {
        let mut dir = entry(&at.1, name).clone();
        at = match dir.take_subtree().unwrap_or_else(|| panic!("{name:?} is not a directory")) {
            Subtree::Chunk(id) => (Some(id), repo.open_subtree(Subtree::Chunk(id)).unwrap()),
            Subtree::Inline(nodes) => (None, repo.open_subtree(Subtree::Inline(nodes)).unwrap()),
        };
    }
    at
}

/// Every node below a directory's entries, by path relative to it, directories included (with
/// their `subtree` or `entries` as stored), following tree chunks and inline entries alike.
fn all_nodes(repo: &Repository, nodes: Vec<Node>, prefix: &Path, out: &mut BTreeMap<PathBuf, Node>) {
    for node in nodes {
        let path = prefix.join(node.name.as_os_str());
        if let Some(sub) = node.clone().take_subtree() {
            all_nodes(repo, repo.open_subtree(sub).unwrap(), &path, out);
        }
        out.insert(path, node);
    }
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
            zstd_level: 3,
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
        assert!(tree.nodes.iter().all(|n| n.entries.is_none()), "version 1 trees have no inline entries");
        let v1 = Tree { version: 1, nodes: tree.nodes.clone() };
        assert_eq!(v1.to_bytes(), bytes, "tree {tid} re-serializes differently");
        // Today's writer stamps version 2 and otherwise writes a version 1 tree's nodes
        // byte for byte the same.
        let text = String::from_utf8(bytes).unwrap();
        let v2 = text.replacen(r#"{"version":1,"#, r#"{"version":2,"#, 1);
        assert_eq!(String::from_utf8(Tree::new(tree.nodes).to_bytes()).unwrap(), v2, "tree {tid}");
    }
}

/// Every object of a fixture: file layout, header, codec (raw exactly for `raw_ids`), and
/// that it decodes to plaintext whose hash is its id. Returns how many there are.
fn verify_objects(fixture: &str, raw_ids: &[&str]) -> usize {
    let mut seen = 0;
    for fan in fs::read_dir(Path::new(fixture).join("objects")).unwrap() {
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
    seen
}

#[test]
fn objects_have_known_headers_and_verify() {
    let raw_ids: Vec<&str> = [PACKED].into_iter().chain(RANDOM.iter().map(|r| r.0)).collect();
    assert_eq!(verify_objects(FIXTURE, &raw_ids), 12, "5 trees + 1 packed + 4 lorem + 2 random");

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

    let data = check_common_files(&target);
    let meta = |p: &Path| fs::symlink_metadata(p).unwrap();
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
    .chain([PathBuf::from(OsStr::from_bytes(NON_UTF8_NAME))])
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
    assert_eq!(word(16), 1 << 16, "capacity: at least 2^16, a power of two");
    assert_eq!(word(24), 12, "items");
    let filter = tessera::index::BloomFilter::from_bytes(&bloom).unwrap();
    assert!(ids.iter().all(|h| filter.may_contain(&id(h))));
}

/// The fixture's source files, as scripts/make-fixture.sh writes them (`v2` adds the
/// directories of the v2 fixture). Metadata (modes, times, xattrs) is left as it comes: only
/// content and layout matter to chunk ids and to where a directory's entries go.
fn write_source(src: &Path, v2: bool) {
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("hello.txt"), hello()).unwrap();
    fs::write(src.join("copy-of-hello.txt"), hello()).unwrap();
    fs::write(src.join(OsStr::from_bytes(NON_UTF8_NAME)), b"latin-1 name\n").unwrap();
    fs::write(src.join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("hello.txt", src.join("link")).unwrap();
    let pipe = std::ffi::CString::new(src.join("pipe").as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(pipe.as_ptr(), 0o620) }, 0);
    fs::write(src.join("hardlink-a"), b"linked\n").unwrap();
    fs::hard_link(src.join("hardlink-a"), src.join("sub/hardlink-b")).unwrap();
    fs::write(src.join("sub/lorem.txt"), lorem()).unwrap();
    fs::write(src.join("sub/random.bin"), random_bin()).unwrap();
    if v2 {
        fs::create_dir_all(src.join("empty-dir")).unwrap();
        fs::create_dir_all(src.join("big/nested")).unwrap();
        for i in 0..120 {
            fs::write(src.join(format!("big/file-{i:03}.txt")), big_file(i)).unwrap();
        }
        fs::write(src.join("big/nested/deep.txt"), b"deep\n").unwrap();
    }
}

/// Backs `src` up into a new repository (1 KiB chunks, like the fixtures) with the real
/// binary; returns the repository and the entries of `src` in the snapshot, with the id of
/// their tree chunk (None if inline).
fn backup_source(dir: &Path, src: &Path) -> (Repository, Snapshot, Option<ChunkId>, Vec<Node>) {
    let repo_dir = dir.join("repo");
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
    let comps: Vec<&[u8]> = src.components().skip(1).map(|c| c.as_os_str().as_bytes()).collect();
    let (tree, nodes) = dir_at(&repo, &snap.tree, &comps);
    (repo, snap, tree, nodes)
}

/// Backing up the same bytes today gives the fixture's chunk ids (invariant 1): chunking,
/// small-file packing and hashing are part of the format even though they are not a file.
/// Data chunking did not change with tree format 2, so the v1 fixture's ids still hold.
#[test]
fn same_bytes_give_the_fixture_chunk_ids() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("data");
    write_source(&src, false);
    let (repo, snap, data_tree, data) = backup_source(dir.path(), &src);
    let mut sub_path: Vec<&[u8]> = src.components().skip(1).map(|c| c.as_os_str().as_bytes()).collect();
    sub_path.push(b"sub");
    let (sub_tree, sub) = dir_at(&repo, &snap.tree, &sub_path);

    let packed = |off, len| vec![Slice(id(PACKED), off, len)];
    assert_eq!(entry(&data, NON_UTF8_NAME).content, packed(0, 13));
    assert_eq!(entry(&data, b"copy-of-hello.txt").content, packed(13, 15));
    assert_eq!(entry(&data, b"hello.txt").content, packed(13, 15));
    assert_eq!(entry(&data, b"hardlink-a").content, packed(28, 7));
    assert_eq!(entry(&sub, b"hardlink-b").content, packed(28, 7));
    assert!(entry(&data, b"empty").content.is_empty());
    assert_eq!(entry(&sub, b"lorem.txt").content, slices(&LOREM));
    assert_eq!(entry(&sub, b"random.bin").content, slices(&RANDOM));
    // Today's trees are version 2: these small directories are inline, the root is a chunk.
    assert_eq!((data_tree, sub_tree), (None, None), "small directories are inline");
    assert_eq!(repo.load_tree(&snap.tree).unwrap().version, 2);
}

/// The v2 fixture's contents backed up today give the same data chunks, small-file hashes
/// and the same choice, directory by directory, between inline entries and a tree chunk.
#[test]
fn same_bytes_give_the_v2_fixture_chunks_and_tree_layout() {
    let (_fdir, froot) = fixture_copy_of(FIXTURE_V2);
    let frepo = Repository::open(&froot).unwrap();
    let (_, fsnap) = frepo.find_snapshot(SNAPSHOT_V2).unwrap();
    let (fdata_tree, fdata) = dir_at(&frepo, &fsnap.tree, &[b"tmp", b"tessera-fixture", b"data"]);
    let mut want = BTreeMap::new();
    all_nodes(&frepo, fdata, Path::new(""), &mut want);

    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("data");
    write_source(&src, true);
    let (repo, snap, data_tree, data) = backup_source(dir.path(), &src);
    let mut got = BTreeMap::new();
    all_nodes(&repo, data, Path::new(""), &mut got);

    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    assert_eq!((data_tree, fdata_tree), (None, None), "the source directory is inline in both");
    for (path, w) in &want {
        let g = &got[path];
        let p = path.display();
        assert_eq!((g.kind, g.size, &g.content, g.hash), (w.kind, w.size, &w.content, w.hash), "{p}");
        assert_eq!(g.target, w.target, "{p}");
        assert_eq!((g.subtree.is_some(), g.entries.is_some()), (w.subtree.is_some(), w.entries.is_some()), "{p}: inline or not");
    }
    assert!(got[Path::new("big")].subtree.is_some() && got[Path::new("sub")].entries.is_some());
    assert_eq!(repo.load_tree(&snap.tree).unwrap().version, 2);
    // Exactly the fixture's data chunks were stored (the trees differ: times and inodes).
    let report = tessera::check::check(&repo, true, &Default::default()).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!((report.trees, report.objects), (2, 10), "the root tree, big/'s tree and the 8 data chunks");
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
            sparse: false,
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
            sparse: false,
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
            sparse: false,
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
            sparse: false,
        },
    ];
    assert_eq!(tree.nodes, want);
    // The writer sorts and produces exactly these bytes, stamped with today's version 2.
    let mut shuffled = want.clone();
    shuffled.reverse();
    assert_eq!(TREE_VERSION, 2);
    assert_eq!(
        String::from_utf8(Tree::new(shuffled).to_bytes()).unwrap(),
        tree_json.replacen(r#"{"version":1,"#, r#"{"version":2,"#, 1)
    );
    assert_eq!(Tree { version: 1, nodes: want }.to_bytes(), tree_json.as_bytes());

    // A version 2 tree: directories inline (`entries`, nested, empty) next to one with a tree
    // chunk of its own (`subtree`).
    let hash = "33".repeat(32);
    let v2_json = format!(
        concat!(
            r#"{{"version":2,"nodes":["#,
            r#"{{"name":"d","type":"dir","mode":493,"uid":0,"gid":0,"mtime_ns":1,"ctime_ns":2,"inode":3,"entries":["#,
            r#"{{"name":"e","type":"dir","mode":448,"uid":5,"gid":6,"mtime_ns":4,"ctime_ns":5,"inode":6,"entries":[]}},"#,
            r#"{{"name":"f.txt","type":"file","mode":420,"uid":1,"gid":2,"mtime_ns":7,"ctime_ns":8,"inode":9,"#,
            r#""size":3,"hash":"{hash}","content":[["{chunk}",4,3]]}},"#,
            r#"{{"name":{{"hex":"ff"}},"type":"dir","mode":320,"uid":0,"gid":0,"mtime_ns":10,"ctime_ns":11,"inode":12,"subtree":"{sub}"}}"#,
            r#"]}},"#,
            r#"{{"name":"z","type":"dir","mode":365,"uid":0,"gid":0,"mtime_ns":13,"ctime_ns":14,"inode":15,"subtree":"{sub}"}}"#,
            r#"]}}"#
        ),
        hash = hash,
        chunk = chunk,
        sub = sub
    );
    let tid = HashAlgo::Blake3.hash(v2_json.as_bytes());
    let tree = Tree::from_bytes(&tid, v2_json.as_bytes()).unwrap();
    assert_eq!(tree.version, 2);
    let dir = |name: &[u8], mode, ids: (i64, i64, u64), owner: (u32, u32), subtree, entries| Node {
        name: RawBytes(name.to_vec()),
        kind: NodeType::Dir,
        mode,
        uid: owner.0,
        gid: owner.1,
        mtime_ns: ids.0,
        ctime_ns: ids.1,
        inode: ids.2,
        size: 0,
        hash: None,
        links: None,
        content: vec![],
        subtree,
        entries,
        target: None,
        rdev: 0,
        xattrs: vec![],
        sparse: false,
    };
    let f = Node {
        name: RawBytes(b"f.txt".to_vec()),
        kind: NodeType::File,
        mode: 0o644,
        uid: 1,
        gid: 2,
        mtime_ns: 7,
        ctime_ns: 8,
        inode: 9,
        size: 3,
        hash: Some(id(&hash)),
        links: None,
        content: vec![Slice(id(&chunk), 4, 3)],
        subtree: None,
        entries: None,
        target: None,
        rdev: 0,
        xattrs: vec![],
        sparse: false,
    };
    let want = vec![
        dir(
            b"d",
            0o755,
            (1, 2, 3),
            (0, 0),
            None,
            Some(vec![
                dir(b"e", 0o700, (4, 5, 6), (5, 6), None, Some(vec![])),
                f,
                dir(&[0xff], 0o500, (10, 11, 12), (0, 0), Some(id(&sub)), None),
            ]),
        ),
        dir(b"z", 0o555, (13, 14, 15), (0, 0), Some(id(&sub)), None),
    ];
    assert_eq!(tree.nodes, want);
    let mut shuffled = want.clone();
    shuffled.reverse();
    assert_eq!(String::from_utf8(Tree::new(shuffled).to_bytes()).unwrap(), v2_json);
    // Where each directory's entries are.
    let mut nodes = tree.nodes;
    let Some(Subtree::Inline(inner)) = nodes[0].take_subtree() else { panic!("d is inline") };
    assert_eq!(inner.len(), 3);
    assert!(nodes[0].subtree.is_none() && nodes[0].entries.is_none(), "take_subtree takes it");
    assert!(matches!(nodes[1].take_subtree(), Some(Subtree::Chunk(c)) if c == id(&sub)));
    assert!(inner[1].clone().take_subtree().is_none(), "a file has no entries");
    assert!(matches!(inner[0].clone().take_subtree(), Some(Subtree::Inline(e)) if e.is_empty()));

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

    // Version 2: inline entries get the same checks at every depth, and the error names the
    // tree chunk that holds them.
    let head = |name: &str, kind: &str| {
        format!(r#""name":{name},"type":"{kind}","mode":0,"uid":0,"gid":0,"mtime_ns":0,"ctime_ns":0,"inode":1"#)
    };
    let fifo = |name: &str| format!("{{{}}}", head(name, "fifo"));
    let inline = |name: &str, entries: &[String]| format!(r#"{{{},"entries":[{}]}}"#, head(name, "dir"), entries.join(","));
    let v = |version: u32, nodes: &[String]| format!(r#"{{"version":{version},"nodes":[{}]}}"#, nodes.join(","));
    let refused = |json: String, why: &str| {
        let tid = HashAlgo::Blake3.hash(json.as_bytes());
        let err = Tree::from_bytes(&tid, json.as_bytes()).unwrap_err().to_string();
        assert!(err.contains(why), "{json}: {err}");
        assert!(err.contains(&tid.to_hex()), "{json}: the error names the tree: {err}");
    };
    for (name, why) in [
        (r#"".""#, "relative path component"),
        (r#""..""#, "relative path component"),
        (r#""""#, "empty name"),
        (r#""a/b""#, "contains a slash"),
        (r#""/etc""#, "contains a slash"),
        (r#"{"hex":"2e2e"}"#, "relative path component"),
        (r#"{"hex":"610062"}"#, "contains a NUL byte"),
    ] {
        // As the name of an inline directory, of an entry inside one, and two levels down.
        refused(v(2, &[inline(name, &[fifo(r#""x""#)])]), why);
        refused(v(2, &[inline(r#""d""#, &[fifo(name)])]), why);
        refused(v(2, &[inline(r#""d""#, &[fifo(r#""a""#), inline(r#""e""#, &[inline(name, &[])])])]), why);
    }
    refused(v(2, &[inline(r#""d""#, &[fifo(r#""b""#), fifo(r#""a""#)])]), "not sorted");
    refused(v(2, &[inline(r#""d""#, &[fifo(r#""a""#), inline(r#""a""#, &[])])]), "duplicated");
    // A directory is exactly one of the two; nothing else has either.
    let sub = format!(r#""subtree":"{}""#, "11".repeat(32));
    let both = format!(r#"{{{},{sub},"entries":[]}}"#, head(r#""d""#, "dir"));
    refused(v(2, &[both]), "subtree does not match type");
    refused(v(2, &[format!("{{{}}}", head(r#""d""#, "dir"))]), "subtree does not match type");
    refused(v(2, &[format!(r#"{{{},"entries":[]}}"#, head(r#""f""#, "file"))]), "subtree does not match type");
    refused(v(2, &[format!(r#"{{{},"entries":[]}}"#, head(r#""l""#, "symlink"))]), "subtree does not match type");
    refused(v(2, &[inline(r#""d""#, &[format!(r#"{{{},{sub}}}"#, head(r#""f""#, "fifo"))])]), "subtree does not match type");
    // Inline entries exist from version 2 on: a version 1 tree holding them is refused.
    refused(v(1, &[inline(r#""d""#, &[fifo(r#""x""#)])]), "inline entries in a version 1 tree");
    refused(v(1, &[inline(r#""d""#, &[])]), "inline entries in a version 1 tree");
    // The same shapes with safe names are accepted.
    let ok = v(2, &[inline(r#""d""#, &[fifo(r#""a""#), inline(r#""e""#, &[fifo(r#""x""#)])])]);
    Tree::from_bytes(&HashAlgo::Blake3.hash(ok.as_bytes()), ok.as_bytes()).unwrap();
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

    // Tree: versions 1 and 2 are read, 3 is refused as newer.
    let tid = id(DATA_TREE);
    assert_eq!(Tree::from_bytes(&tid, br#"{"version":1,"nodes":[]}"#).unwrap().version, 1);
    assert_eq!(Tree::from_bytes(&tid, br#"{"version":2,"nodes":[]}"#).unwrap().version, 2);
    let err = Tree::from_bytes(&tid, br#"{"version":3,"nodes":[]}"#).unwrap_err().to_string();
    assert!(err.contains("version 3") && err.contains("newer") && err.contains(DATA_TREE), "{err}");
    assert!(err.contains("tessera's 2"), "{err}");

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

// ---------------------------------------------------------------------------------------
// The v2 fixture: tree format version 2 (small directories inline)
// ---------------------------------------------------------------------------------------

#[test]
fn v2_config_and_snapshot_decode_to_known_values() {
    let (_dir, root) = fixture_copy_of(FIXTURE_V2);
    let config = Config::load(&root).unwrap();
    assert_eq!(
        config,
        Config {
            format: "tessera-repository".into(),
            version: 1,
            id: "4b7959006d61618eb9fb59312b67d11e".into(),
            hash: HashAlgo::Blake3,
            chunker: ChunkerParams { min_size: 256, avg_size: 1024, max_size: 4096 },
            index_shards: 16,
            zstd_level: 3,
        }
    );
    assert_eq!(fs::read(root.join("config")).unwrap(), config.to_bytes());

    let repo = Repository::open(&root).unwrap();
    let snaps = repo.snapshots().unwrap();
    assert_eq!(snaps.len(), 1);
    let (sid, snap) = &snaps[0];
    assert_eq!(sid, SNAPSHOT_V2);
    assert_eq!(snap.version, 1, "the snapshot format did not change");
    assert_eq!(snap.time.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true), "2026-11-22T23:58:11.405438276Z");
    assert_eq!(snap.host, "fixture-host");
    assert_eq!(snap.paths, vec!["/tmp/tessera-fixture/data".to_string()]);
    assert_eq!(snap.tags, vec!["fixture".to_string()]);
    assert_eq!(snap.parent, None);
    assert_eq!(snap.tree, id(ROOT_TREE_V2));
    let s = &snap.summary;
    assert_eq!((s.files, s.dirs, s.others), (129, 7, 2));
    assert_eq!((s.total_bytes, s.read_bytes), (8622, 8615));
    // Two tree chunks (38465 + 3873 bytes) and eight data chunks.
    assert_eq!((s.new_chunks, s.new_bytes, s.stored_bytes), (10, 50938, 8980));
    assert_eq!(s.duration_s, 2.754069002);
    assert!(snap.warnings.is_empty());
    let bytes = fs::read(root.join("snapshots").join(SNAPSHOT_V2)).unwrap();
    assert_eq!(blake3::hash(&bytes).to_hex().as_str(), SNAPSHOT_V2);
    assert_eq!(snap.to_bytes(), bytes);
}

#[test]
fn v2_trees_decode_to_known_values() {
    let (_dir, root) = fixture_copy_of(FIXTURE_V2);
    let repo = Repository::open(&root).unwrap();
    let snap_tree = id(ROOT_TREE_V2);

    // The root tree is a chunk; everything down to the source directory is inline in it.
    let rtree = repo.load_tree(&snap_tree).unwrap();
    assert_eq!(rtree.version, 2);
    assert_eq!(rtree.nodes.len(), 1);
    let tmp = &rtree.nodes[0];
    assert_eq!((tmp.name.0.as_slice(), tmp.kind, tmp.mode, tmp.subtree), (&b"tmp"[..], NodeType::Dir, 0o1777, None));
    let (at, t) = dir_at(&repo, &snap_tree, &[b"tmp"]);
    assert_eq!((at, t.len(), t[0].name.0.as_slice()), (None, 1, &b"tessera-fixture"[..]));
    assert_eq!((t[0].mode, t[0].mtime_ns, t[0].subtree), (0o755, 1_704_164_648_000_000_000, None));
    let (at, t) = dir_at(&repo, &snap_tree, &[b"tmp", b"tessera-fixture"]);
    assert_eq!((at, t.len(), t[0].name.0.as_slice()), (None, 1, &b"data"[..]));
    assert_eq!((t[0].mode, t[0].mtime_ns, t[0].subtree), (0o755, 1_704_164_647_000_000_000, None));

    let (at, data) = dir_at(&repo, &snap_tree, &[b"tmp", b"tessera-fixture", b"data"]);
    assert_eq!(at, None, "data/ is inline");
    let names: Vec<&[u8]> = data.iter().map(|n| n.name.0.as_slice()).collect();
    assert_eq!(
        names,
        [
            &b"big"[..], NON_UTF8_NAME, b"copy-of-hello.txt", b"empty", b"empty-dir", b"hardlink-a", b"hello.txt",
            b"link", b"pipe", b"sub"
        ]
    );
    let (p0, p1) = (id(PACKED_V2[0].0), id(PACKED_V2[1].0));
    let expect = |nodes: &[Node], name: &[u8], kind, mode, size| {
        let n = entry(nodes, name).clone();
        assert_eq!((n.kind, n.mode, n.size, n.uid, n.gid), (kind, mode, size, 0, 0), "{name:?}");
        n
    };
    let n = expect(&data, NON_UTF8_NAME, NodeType::File, 0o600, 13);
    assert_eq!((n.mtime_ns, n.content.clone()), (MTIME, vec![Slice(p1, 497, 13)]));
    assert_eq!(n.hash, Some(HashAlgo::Blake3.hash(b"latin-1 name\n")));
    assert_eq!(content(&repo, &n), b"latin-1 name\n");
    let n = expect(&data, b"copy-of-hello.txt", NodeType::File, 0o644, 15);
    assert_eq!((n.content.clone(), n.hash), (vec![Slice(p1, 510, 15)], Some(HashAlgo::Blake3.hash(&hello()))));
    let n = expect(&data, b"hello.txt", NodeType::File, 0o644, 15);
    assert_eq!(n.content, vec![Slice(p1, 510, 15)]);
    assert_eq!(n.xattrs, vec![Xattr { name: RawBytes(b"user.comment".to_vec()), value: RawBytes(b"fixture".to_vec()) }]);
    let n = expect(&data, b"empty", NodeType::File, 0o640, 0);
    assert!(n.content.is_empty() && n.hash.is_none());
    let n = expect(&data, b"hardlink-a", NodeType::File, 0o640, 7);
    assert_eq!(n.content, vec![Slice(p1, 525, 7)]);
    assert_eq!((n.inode, n.links.map(|(_, c)| c)), (10011816, Some(2)));
    let a = n;
    let n = expect(&data, b"link", NodeType::Symlink, 0o777, 0);
    assert_eq!(n.target, Some(RawBytes(b"hello.txt".to_vec())));
    expect(&data, b"pipe", NodeType::Fifo, 0o620, 0);

    // An empty directory is inline with no entries: `"entries":[]`.
    let n = expect(&data, b"empty-dir", NodeType::Dir, 0o700, 0);
    assert_eq!((n.mtime_ns, n.subtree, n.entries), (1_704_164_646_000_000_000, None, Some(vec![])));

    // sub/ is small: inline, with the same data chunks as in the v1 fixture.
    let n = expect(&data, b"sub", NodeType::Dir, 0o750, 0);
    assert_eq!((n.mtime_ns, n.subtree), (1_704_164_646_000_000_000, None));
    let sub = n.entries.expect("sub/ is inline");
    assert_eq!(dir_at(&repo, &snap_tree, &[b"tmp", b"tessera-fixture", b"data", b"sub"]), (None, sub.clone()));
    let names: Vec<&[u8]> = sub.iter().map(|n| n.name.0.as_slice()).collect();
    assert_eq!(names, [&b"hardlink-b"[..], b"lorem.txt", b"random.bin"]);
    let b = entry(&sub, b"hardlink-b");
    assert_eq!((b.inode, b.links, &b.content), (a.inode, a.links, &a.content));
    let n = expect(&sub, b"lorem.txt", NodeType::File, 0o644, 5500);
    assert_eq!((n.content.clone(), n.hash), (slices(&LOREM), None), "large files: whole chunks, no hash");
    assert_eq!(content(&repo, &n), lorem());
    let n = expect(&sub, b"random.bin", NodeType::File, 0o600, 1500);
    assert_eq!(n.content, slices(&RANDOM));
    assert_eq!(content(&repo, &n), random_bin());

    // big/ is large: a tree chunk of its own, holding the inline nested/.
    let n = expect(&data, b"big", NodeType::Dir, 0o755, 0);
    assert_eq!((n.mtime_ns, n.subtree, n.entries), (1_704_164_646_000_000_000, Some(id(BIG_TREE_V2)), None));
    let (at, big) = dir_at(&repo, &snap_tree, &[b"tmp", b"tessera-fixture", b"data", b"big"]);
    assert_eq!(at, Some(id(BIG_TREE_V2)));
    assert_eq!(big.len(), 121);
    for (i, n) in big[..120].iter().enumerate() {
        assert_eq!(n.name.0, format!("file-{i:03}.txt").into_bytes());
        assert_eq!((n.kind, n.mode, n.size, n.mtime_ns), (NodeType::File, 0o644, 13, MTIME));
        assert_eq!(n.hash, Some(HashAlgo::Blake3.hash(&big_file(i))));
        assert_eq!(content(&repo, n), big_file(i));
    }
    // The packed stream starts with big/'s files; file-082.txt straddles the two chunks.
    assert_eq!(big[0].content, vec![Slice(p0, 0, 13)]);
    assert_eq!(big[82].content, vec![Slice(p0, 1066, 2), Slice(p1, 0, 11)]);
    assert_eq!(big[119].content, vec![Slice(p1, 479, 13)]);
    let nested = &big[120];
    assert_eq!((nested.name.0.as_slice(), nested.kind, nested.mode), (&b"nested"[..], NodeType::Dir, 0o755));
    assert_eq!((nested.mtime_ns, nested.subtree), (1_704_164_646_500_000_000, None));
    let deep = nested.entries.as_ref().expect("nested/ is inline in big/'s tree");
    assert_eq!(deep.len(), 1);
    assert_eq!((deep[0].name.0.as_slice(), deep[0].size), (&b"deep.txt"[..], 5));
    assert_eq!(deep[0].content, vec![Slice(p1, 492, 5)]);
    assert_eq!(content(&repo, &deep[0]), b"deep\n");

    // The stored bytes: compact JSON, inline directories as `entries` arrays in place, and
    // the writer reproduces both tree chunks exactly (invariant 9).
    let raw = String::from_utf8(repo.read_chunk(&snap_tree).unwrap()).unwrap();
    assert!(raw.starts_with(r#"{"version":2,"nodes":[{"name":"tmp","type":"dir","mode":1023,"#), "{raw}");
    assert!(raw.contains(&format!(r#""inode":10011820,"subtree":"{BIG_TREE_V2}"}},"#)), "{raw}");
    assert!(raw.contains(r#""inode":10011819,"entries":[]},"#), "{raw}");
    assert!(raw.contains(r#""inode":10011660,"entries":[{"name":"hardlink-b","#), "{raw}");
    for (tid, len) in [(ROOT_TREE_V2, 3873), (BIG_TREE_V2, 38465)] {
        let bytes = repo.read_chunk(&id(tid)).unwrap();
        assert_eq!(bytes.len(), len);
        assert_eq!(HashAlgo::Blake3.hash(&bytes), id(tid));
        let tree = Tree::from_bytes(&id(tid), &bytes).unwrap();
        assert_eq!(tree.version, 2);
        assert_eq!(Tree::new(tree.nodes).to_bytes(), bytes, "tree {tid} re-serializes differently");
    }

    // The inline rule: below the root, a directory is inline exactly when its own tree would
    // serialize to fewer than 32 KiB.
    let mut all = BTreeMap::new();
    all_nodes(&repo, rtree.nodes, Path::new("/"), &mut all);
    let dirs: Vec<_> = all.iter().filter(|(_, n)| n.kind == NodeType::Dir).collect();
    assert_eq!(dirs.len(), 7);
    for (path, n) in dirs {
        let own = Tree::new(n.clone().take_subtree().map(|s| repo.open_subtree(s).unwrap()).unwrap());
        assert_eq!(n.entries.is_some(), own.to_bytes().len() < INLINE_TREE_BYTES, "{}", path.display());
    }
}

#[test]
fn v2_objects_have_known_headers_and_verify() {
    let raw_ids: Vec<&str> = RANDOM.iter().map(|r| r.0).collect();
    assert_eq!(verify_objects(FIXTURE_V2, &raw_ids), 10, "2 trees + 2 packed + 4 lorem + 2 random");
    // The same data chunks as the v1 fixture, byte for byte: data chunking did not change.
    for (h, _) in LOREM.iter().chain(RANDOM.iter()) {
        let v1 = fs::read(Path::new(FIXTURE).join("objects").join(&h[..2]).join(h)).unwrap();
        let v2 = fs::read(Path::new(FIXTURE_V2).join("objects").join(&h[..2]).join(h)).unwrap();
        assert_eq!(v1, v2, "{h}");
    }
}

#[test]
fn v2_check_and_index_rebuild() {
    let (_dir, root) = fixture_copy_of(FIXTURE_V2);
    let repo = Repository::open(&root).unwrap();
    let report = tessera::check::check(&repo, true, &Default::default()).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!((report.snapshots, report.trees, report.objects, report.objects_read), (1, 2, 10, 10));
    // 10 chunks, and one small-file entry per distinct small content, found in inline
    // directories and in big/'s tree alike: 120 big files, deep.txt, and the v1 fixture's
    // three (hello.txt and its copy share one; the v1 fixture predates the node hash).
    assert_eq!(tessera::check::rebuild_index(&repo).unwrap(), (10, 124));
    // Only tree chunks count as trees: inline directories are part of their parent's bytes.
    let stats = tessera::stats::stats(&repo).unwrap();
    assert_eq!((stats.objects, stats.unique_chunks, stats.tree_chunks, stats.data_chunks), (10, 10, 2, 8));
    assert_eq!(stats.tree_bytes, 3873 + 38465);
}

#[test]
fn v2_restore_reproduces_the_fixture_files() {
    let (dir, root) = fixture_copy_of(FIXTURE_V2);
    let repo = Repository::open(&root).unwrap();
    let (_, snap) = repo.find_snapshot(SNAPSHOT_V2).unwrap();
    let target = dir.path().join("out");
    let opts = RestoreOptions { target: target.clone(), includes: Vec::new(), overwrite: false };
    let report = restore::restore(&repo, &snap, &opts, &RestoreLive::default()).unwrap();
    let errors: Vec<_> = report.errors.iter().filter(|e| !e.error.starts_with("xattr")).collect();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!((report.files, report.dirs, report.others), (129, 7, 2));
    assert_eq!(report.bytes, 13 + 15 + 15 + 7 + 5500 + 1500 + 120 * 13 + 5);

    let data = check_common_files(&target);
    let meta = |p: &Path| fs::symlink_metadata(p).unwrap();
    for i in 0..120 {
        check_file(&data, &PathBuf::from(format!("big/file-{i:03}.txt")), &big_file(i), 0o644);
    }
    check_file(&data, Path::new("big/nested/deep.txt"), b"deep\n", 0o644);
    assert_eq!(meta(&data.join("hardlink-a")).ino(), meta(&data.join("sub/hardlink-b")).ino());
    assert_eq!(fs::read_link(data.join("link")).unwrap(), Path::new("hello.txt"));
    assert!(meta(&data.join("pipe")).file_type().is_fifo());
    if let Ok(Some(v)) = xattr::get(data.join("hello.txt"), "user.comment") {
        assert_eq!(v, b"fixture");
    }

    // Directories, inline or not, come back with their metadata.
    let dir_meta = |rel: &str| {
        let m = meta(&data.join(rel));
        assert!(m.is_dir(), "{rel}");
        (m.mode() & 0o7777, m.mtime(), m.mtime_nsec())
    };
    assert_eq!(dir_meta("sub"), (0o750, 1_704_164_646, 0));
    assert_eq!(dir_meta("empty-dir"), (0o700, 1_704_164_646, 0));
    assert_eq!(dir_meta("big"), (0o755, 1_704_164_646, 0));
    assert_eq!(dir_meta("big/nested"), (0o755, 1_704_164_646, 500_000_000));
    assert_eq!(dir_meta("."), (0o755, 1_704_164_647, 0));
    assert_eq!(meta(&target.join("tmp/tessera-fixture")).mtime(), 1_704_164_648);

    // Nothing else.
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
        "big", "big/nested", "big/nested/deep.txt", "copy-of-hello.txt", "empty", "empty-dir", "hardlink-a",
        "hello.txt", "link", "pipe", "sub", "sub/hardlink-b", "sub/lorem.txt", "sub/random.bin",
    ]
    .iter()
    .map(PathBuf::from)
    .chain((0..120).map(|i| PathBuf::from(format!("big/file-{i:03}.txt"))))
    .chain([PathBuf::from(OsStr::from_bytes(NON_UTF8_NAME))])
    .collect();
    want.sort();
    assert_eq!(all, want);
}
