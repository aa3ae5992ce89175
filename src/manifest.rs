//! Manifests: trees (one per directory, stored as chunks) and snapshot records.
//! Both are JSON with a fixed field order; see docs/FORMAT.md.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::fingerprint::ChunkId;

/// Version 2 added inline `entries` for small directories; version 1 trees are still read.
pub const TREE_VERSION: u32 = 2;
pub const SNAPSHOT_VERSION: u32 = 1;

/// Bytes that are usually text (file names, link targets, xattrs): a JSON string when they
/// are UTF-8, otherwise `{"hex": "..."}`, so no name is ever mangled.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RawBytes(pub Vec<u8>);

impl RawBytes {
    pub fn as_os_str(&self) -> &OsStr {
        OsStr::from_bytes(&self.0)
    }
    pub fn from_os(s: &OsStr) -> Self {
        RawBytes(s.as_bytes().to_vec())
    }
    pub fn into_os_string(self) -> OsString {
        OsString::from_vec(self.0)
    }
    pub fn lossy(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum RawRepr {
    Text(String),
    Hex { hex: String },
}

impl Serialize for RawBytes {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(t) => RawRepr::Text(t.to_owned()),
            Err(_) => RawRepr::Hex {
                hex: hex::encode(&self.0),
            },
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for RawBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(RawBytes(match RawRepr::deserialize(d)? {
            RawRepr::Text(t) => t.into_bytes(),
            RawRepr::Hex { hex } => hex::decode(hex).map_err(serde::de::Error::custom)?,
        }))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeType {
    File,
    Dir,
    Symlink,
    Fifo,
    Chardev,
    Blockdev,
}

/// `len` bytes of chunk `id` starting at `offset`: a file's content is a list of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slice(pub ChunkId, pub u32, pub u32);

impl Slice {
    pub fn id(&self) -> &ChunkId {
        &self.0
    }
    pub fn offset(&self) -> usize {
        self.1 as usize
    }
    pub fn len(&self) -> usize {
        self.2 as usize
    }
    pub fn is_empty(&self) -> bool {
        self.2 == 0
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    pub name: RawBytes,
    pub value: RawBytes,
}

/// One directory entry. Times are nanoseconds since the epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: RawBytes,
    #[serde(rename = "type")]
    pub kind: NodeType,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub inode: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// Hash of the whole content, for small files (those packed into a shared stream): lets
    /// an identical small file anywhere in the repository reuse this one's slices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<ChunkId>,
    /// Set only for files with more than one hard link: (device, link count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub links: Option<(u64, u64)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<Slice>,
    /// A directory's entries: in a tree chunk of their own (`subtree`), or, for a small
    /// directory, inline in its parent (`entries`), so deep trees of small directories do not
    /// make one object per directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<ChunkId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<Vec<Node>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<RawBytes>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rdev: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<Xattr>,
    /// Files that had holes (fewer blocks allocated than their size) when backed up: their
    /// all-zero blocks are restored as holes. Other files are written in full, zeros too, so
    /// a preallocated file (a swap file, a database's reserved space) stays allocated.
    #[serde(default, skip_serializing_if = "is_false")]
    pub sparse: bool,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub version: u32,
    pub nodes: Vec<Node>,
}

impl Tree {
    /// Sorted by name, so the same directory always serializes to the same bytes.
    pub fn new(mut nodes: Vec<Node>) -> Self {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Tree {
            version: TREE_VERSION,
            nodes,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("trees always serialize")
    }

    /// Parses a tree and rejects anything a restore must not trust (invariant 10).
    pub fn from_bytes(id: &ChunkId, bytes: &[u8]) -> Result<Self> {
        let bad = |reason: String| Error::BadTree { id: *id, reason };
        let tree: Tree = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if tree.version > TREE_VERSION {
            return Err(bad(format!("tree format version {} is newer than this tessera's {TREE_VERSION}", tree.version)));
        }
        check_nodes(id, &tree.nodes, tree.version)?;
        Ok(tree)
    }
}

/// Where a directory's entries are.
pub enum Subtree {
    Chunk(ChunkId),
    Inline(Vec<Node>),
}

impl Node {
    /// Takes the directory's entries reference out of the node (None for non-directories).
    pub fn take_subtree(&mut self) -> Option<Subtree> {
        match (self.subtree.take(), self.entries.take()) {
            (Some(id), _) => Some(Subtree::Chunk(id)),
            (None, Some(nodes)) => Some(Subtree::Inline(nodes)),
            (None, None) => None,
        }
    }
}

fn check_nodes(id: &ChunkId, nodes: &[Node], version: u32) -> Result<()> {
    let bad = |reason: String| Error::BadTree { id: *id, reason };
    for (i, node) in nodes.iter().enumerate() {
        check_name(id, &node.name)?;
        if i > 0 && nodes[i - 1].name >= node.name {
            return Err(bad(format!("entries not sorted or duplicated at {:?}", node.name.lossy())));
        }
        let has = u8::from(node.subtree.is_some()) + u8::from(node.entries.is_some());
        if (node.kind == NodeType::Dir && has != 1) || (node.kind != NodeType::Dir && has != 0) {
            return Err(bad(format!("{:?}: subtree does not match type", node.name.lossy())));
        }
        if let Some(entries) = &node.entries {
            if version < 2 {
                return Err(bad("inline entries in a version 1 tree".into()));
            }
            check_nodes(id, entries, version)?;
        }
    }
    Ok(())
}

fn check_name(tree: &ChunkId, name: &RawBytes) -> Result<()> {
    let reason = match name.0.as_slice() {
        [] => "empty name",
        b"." | b".." => "relative path component",
        n if n.contains(&b'/') => "contains a slash",
        n if n.contains(&0) => "contains a NUL byte",
        _ => return Ok(()),
    };
    Err(Error::UnsafeName {
        tree: *tree,
        name: name.lossy(),
        reason,
    })
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub files: u64,
    pub dirs: u64,
    pub others: u64,
    /// Bytes of all files in the snapshot.
    pub total_bytes: u64,
    /// Bytes read from disk (changed or new files).
    pub read_bytes: u64,
    pub new_chunks: u64,
    /// Plaintext bytes of chunks this backup added to the store.
    pub new_bytes: u64,
    /// What those chunks take in the store, after compression.
    pub stored_bytes: u64,
    pub duration_s: f64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileWarning {
    pub path: String,
    pub error: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    pub time: chrono::DateTime<chrono::Utc>,
    pub host: String,
    pub paths: Vec<String>,
    pub tags: Vec<String>,
    pub parent: Option<String>,
    pub tree: ChunkId,
    pub summary: Summary,
    pub warnings: Vec<FileWarning>,
}

impl Snapshot {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("snapshots always serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = RawBytes> {
        // Any bytes a Linux name may hold: no '/', no NUL, not "." or "..", not empty;
        // includes invalid UTF-8 so the {"hex": ...} form is exercised.
        proptest::collection::vec(1u8..=255, 1..12)
            .prop_filter("a name", |b| !b.contains(&b'/') && b != b"." && b != b"..")
            .prop_map(RawBytes)
    }

    fn blank(name: RawBytes, kind: NodeType) -> Node {
        Node {
            name,
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            inode: 0,
            size: 0,
            hash: None,
            links: None,
            content: Vec::new(),
            subtree: None,
            entries: None,
            target: None,
            rdev: 0,
            xattrs: Vec::new(),
            sparse: false,
        }
    }

    fn leaf() -> impl Strategy<Value = Node> {
        let slices = prop::collection::vec((any::<[u8; 32]>(), any::<u32>(), any::<u32>()), 0..3);
        (name(), 0u32..0o10000, any::<u32>(), any::<i64>(), any::<u64>(), prop::option::of(any::<[u8; 32]>()), slices).prop_map(
            |(name, mode, uid, mtime_ns, size, hash, content)| Node {
                mode,
                uid,
                mtime_ns,
                size,
                hash: hash.map(ChunkId),
                content: content.into_iter().map(|(id, off, len)| Slice(ChunkId(id), off, len)).collect(),
                ..blank(name, NodeType::File)
            },
        )
    }

    /// Files, and directories whose entries are inline or in a (named) tree chunk.
    fn node() -> impl Strategy<Value = Node> {
        leaf().prop_recursive(3, 24, 4, |inner| {
            (name(), prop::collection::vec(inner, 0..4), prop::option::of(any::<[u8; 32]>())).prop_map(|(name, children, chunk)| {
                let mut dir = blank(name, NodeType::Dir);
                match chunk {
                    Some(id) => dir.subtree = Some(ChunkId(id)),
                    None => dir.entries = Some(dedup_sorted(children)),
                }
                dir
            })
        })
    }

    fn dedup_sorted(mut nodes: Vec<Node>) -> Vec<Node> {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        nodes.dedup_by(|a, b| a.name == b.name);
        nodes
    }

    proptest! {
        /// Any valid tree survives serialization unchanged, and serializing is deterministic:
        /// the same entries in any order give the same bytes (invariant 9).
        #[test]
        fn trees_round_trip_deterministically(entries in prop::collection::vec(node(), 0..6)) {
            let flat = dedup_sorted(entries);
            let mut shuffled = flat.clone();
            shuffled.reverse();
            let tree = Tree::new(flat);
            let bytes = tree.to_bytes();
            prop_assert_eq!(Tree::new(shuffled).to_bytes(), bytes.clone());
            let id = crate::fingerprint::HashAlgo::Blake3.hash(&bytes);
            prop_assert_eq!(Tree::from_bytes(&id, &bytes).unwrap(), tree);
        }
    }
}
