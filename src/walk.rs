//! Reading the source side: exclusion rules and one node's metadata from the filesystem.

use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

use crate::error::{IoContext, Result, invalid};
use crate::manifest::{Node, NodeType, RawBytes, Xattr};

/// `--exclude` patterns. A pattern with a `/` matches the whole path; one without matches
/// a file or directory name at any depth (as in restic and rsync).
pub struct Excludes {
    paths: GlobSet,
    names: GlobSet,
}

impl Excludes {
    pub fn new(patterns: &[String]) -> Result<Self> {
        let mut paths = GlobSetBuilder::new();
        let mut names = GlobSetBuilder::new();
        for p in patterns {
            let bad = |e: globset::Error| invalid("exclude pattern", format!("{p:?}: {e}"));
            if p.contains('/') {
                let glob = GlobBuilder::new(p.trim_end_matches('/'))
                    .literal_separator(true)
                    .build()
                    .map_err(bad)?;
                paths.add(glob);
            } else {
                names.add(Glob::new(p).map_err(bad)?);
            }
        }
        let build = |b: GlobSetBuilder| b.build().map_err(|e| invalid("exclude pattern", e.to_string()));
        Ok(Excludes {
            paths: build(paths)?,
            names: build(names)?,
        })
    }

    pub fn matches(&self, path: &Path) -> bool {
        self.paths.is_match(path) || path.file_name().is_some_and(|n| self.names.is_match(n))
    }
}

/// `p` made absolute against `cwd` without resolving symlinks (`..` drops a component, as
/// the user typed it, not as the filesystem would resolve it).
pub fn absolute(cwd: &Path, p: &Path) -> PathBuf {
    let mut abs = PathBuf::from("/");
    for c in cwd.join(p).components() {
        match c {
            Component::ParentDir => {
                abs.pop();
            }
            Component::Normal(n) => abs.push(n),
            _ => {}
        }
    }
    abs
}

/// Patterns from an exclude file: one per line, blank lines and `#` comments skipped.
pub fn read_exclude_file(path: &Path) -> Result<Vec<String>> {
    let text = fs::read_to_string(path).at(path)?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect())
}

/// The node for `path` as lstat saw it, without content or subtree; None for sockets,
/// which cannot be restored meaningfully.
pub fn node_from_metadata(name: RawBytes, path: &Path, meta: &Metadata) -> io::Result<Option<Node>> {
    let ft = meta.file_type();
    let kind = if ft.is_file() {
        NodeType::File
    } else if ft.is_dir() {
        NodeType::Dir
    } else if ft.is_symlink() {
        NodeType::Symlink
    } else if ft.is_fifo() {
        NodeType::Fifo
    } else if ft.is_char_device() {
        NodeType::Chardev
    } else if ft.is_block_device() {
        NodeType::Blockdev
    } else {
        return Ok(None);
    };
    let target = match kind {
        NodeType::Symlink => Some(RawBytes::from_os(fs::read_link(path)?.as_os_str())),
        _ => None,
    };
    let links = (kind == NodeType::File && meta.nlink() > 1).then(|| (meta.dev(), meta.nlink()));
    Ok(Some(Node {
        name,
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        inode: meta.ino(),
        size: if kind == NodeType::File { meta.len() } else { 0 },
        hash: None,
        links,
        content: Vec::new(),
        subtree: None,
        entries: None,
        target,
        rdev: if matches!(kind, NodeType::Chardev | NodeType::Blockdev) { meta.rdev() } else { 0 },
        xattrs: read_xattrs(path)?,
        sparse: kind == NodeType::File && meta.blocks() * 512 < meta.len(),
    }))
}

fn read_xattrs(path: &Path) -> io::Result<Vec<Xattr>> {
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names {
        if let Some(value) = xattr::get(path, &name)? {
            out.push(Xattr {
                name: RawBytes::from_os(&name),
                value: RawBytes(value),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_and_path_patterns() {
        let ex = Excludes::new(&["*.tmp".into(), "/data/cache/*".into(), "node_modules".into()]).unwrap();
        assert!(ex.matches(Path::new("/home/a/x.tmp")));
        assert!(ex.matches(Path::new("/data/cache/blob")));
        assert!(!ex.matches(Path::new("/data/cache/blob/deeper")));
        assert!(ex.matches(Path::new("/src/web/node_modules")));
        assert!(!ex.matches(Path::new("/home/a/x.tmpl")));
    }

    #[test]
    fn bad_glob_is_named() {
        let err = Excludes::new(&["a[".into()]).err().unwrap();
        assert!(err.to_string().contains("a["), "{err}");
    }
}
