//! The embedded index: one SQLite database (WAL) per shard, plus the Bloom filter file.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior, params};

use crate::error::{Error, IoContext, Result};
use crate::fingerprint::ChunkId;
use crate::index::{BloomFilter, FileEntry, Index, IndexEntry, by_shard};
use crate::manifest::Slice;

const BLOOM_FILE: &str = "bloom";
/// Shard schema version, kept in SQLite's `user_version`.
const SHARD_VERSION: i64 = 1;

pub struct LocalIndex {
    dir: PathBuf,
    /// Opened on first use, so commands that never touch the index work on read-only media.
    shards: Vec<Mutex<Option<Connection>>>,
    /// The filter as loaded plus everything registered through this handle.
    filter: Mutex<Option<BloomFilter>>,
}

impl LocalIndex {
    /// Creates every shard now, while no other client can be using the repository.
    pub fn create(dir: &Path, shard_count: u32) -> Result<Self> {
        let index = Self::open(dir, shard_count)?;
        for s in 0..index.shards.len() {
            index.shard(s)?;
        }
        Ok(index)
    }

    pub fn open(dir: &Path, shard_count: u32) -> Result<Self> {
        if !dir.is_dir() {
            fs::create_dir_all(dir).at(dir)?;
        }
        let shards = (0..shard_count).map(|_| Mutex::new(None)).collect();
        Ok(LocalIndex {
            dir: dir.to_path_buf(),
            shards,
            filter: Mutex::new(None),
        })
    }

    fn shard(&self, s: usize) -> Result<(ShardGuard<'_>, PathBuf)> {
        let path = shard_path(&self.dir, s as u32);
        let mut guard = self.shards[s].lock().expect("shard lock poisoned");
        if guard.is_none() {
            *guard = Some(open_shard(&path)?);
        }
        Ok((ShardGuard(guard), path))
    }

    /// Runs `sql` for each row (`bind` executes it for row `i`), rows grouped by the shard
    /// of their key: one write transaction per shard.
    fn insert_by_shard(
        &self,
        keys: &[ChunkId],
        sql: &str,
        mut bind: impl FnMut(&mut rusqlite::CachedStatement<'_>, usize) -> rusqlite::Result<usize>,
    ) -> Result<()> {
        for (s, group) in by_shard(keys, self.shards.len() as u32).into_iter().enumerate() {
            if group.is_empty() {
                continue;
            }
            let (mut conn, path) = self.shard(s)?;
            let err = |source| Error::Index { path: path.clone(), source };
            // Take the write lock up front: a deferred transaction that upgrades from read to
            // write fails at once with SQLITE_BUSY when another writer got in between,
            // without waiting on the busy timeout.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(err)?;
            {
                let mut stmt = tx.prepare_cached(sql).map_err(err)?;
                for i in group {
                    bind(&mut stmt, i).map_err(err)?;
                }
            }
            tx.commit().map_err(err)?;
        }
        Ok(())
    }

    fn count(&self) -> Result<u64> {
        let mut n = 0u64;
        for s in 0..self.shards.len() {
            let (conn, path) = self.shard(s)?;
            let c: i64 = conn
                .query_row("SELECT count(*) FROM chunks", [], |r| r.get(0))
                .map_err(|source| Error::Index { path, source })?;
            n += c as u64;
        }
        Ok(n)
    }

    /// A filter holding every id in the shards.
    fn build_filter(&self, generation: u64) -> Result<BloomFilter> {
        let mut filter = BloomFilter::with_capacity(self.count()? * 2);
        self.entries(&mut |e| filter.insert(&e.id))?;
        filter.generation = generation;
        Ok(filter)
    }

    fn filter_guard(&self) -> Result<MutexGuard<'_, Option<BloomFilter>>> {
        let mut guard = self.filter.lock().expect("filter lock poisoned");
        if guard.is_none() {
            let path = self.dir.join(BLOOM_FILE);
            // A missing or unreadable filter is rebuilt: it is derived data.
            let loaded = fs::read(&path)
                .ok()
                .and_then(|b| BloomFilter::from_bytes(&b).ok());
            *guard = Some(match loaded {
                Some(f) if !f.is_overfull() => f,
                other => self.build_filter(other.map_or(1, |f| f.generation + 1))?,
            });
        }
        Ok(guard)
    }

    fn write_filter(&self, filter: &BloomFilter) -> Result<()> {
        let path = self.dir.join(BLOOM_FILE);
        let tmp = self
            .dir
            .join(format!("{BLOOM_FILE}.tmp.{}", std::process::id()));
        fs::write(&tmp, filter.to_bytes()).at(&tmp)?;
        fs::rename(&tmp, &path).at(&path)
    }
}

struct ShardGuard<'a>(MutexGuard<'a, Option<Connection>>);

impl std::ops::Deref for ShardGuard<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.0.as_ref().expect("shard opened")
    }
}

impl std::ops::DerefMut for ShardGuard<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        self.0.as_mut().expect("shard opened")
    }
}

fn shard_path(dir: &Path, shard: u32) -> PathBuf {
    dir.join(format!("shard-{shard:04x}.sqlite"))
}

fn open_shard(path: &Path) -> Result<Connection> {
    match open_shard_writable(path) {
        Ok(conn) => Ok(conn),
        // Someone else's repository or read-only media: reading still works.
        Err(e) if path.exists() => open_shard_read_only(path).map_err(|_| e),
        Err(e) => Err(e),
    }
}

/// The shard's schema version; an error if it is newer than this tessera knows.
fn check_version(conn: &Connection, path: &Path) -> Result<i64> {
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|source| Error::Index { path: path.to_path_buf(), source })?;
    if found > SHARD_VERSION {
        return Err(Error::NewerFormat { path: path.to_path_buf(), found: found as u32, supported: SHARD_VERSION as u32 });
    }
    Ok(found)
}

fn open_shard_read_only(path: &Path) -> Result<Connection> {
    let err = |source| Error::Index {
        path: path.to_path_buf(),
        source,
    };
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI;
    let open = |mode: &str| -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(format!("file:{}?{mode}", path.display()), flags)?;
        conn.query_row("SELECT count(*) FROM chunks", [], |_| Ok(()))?;
        Ok(conn)
    };
    // A writer that died before closing leaves its last commits in the WAL, which a
    // read-only connection reads as long as it can open the WAL files; only when it cannot
    // open them is there no WAL to read, and the database file alone is the whole shard.
    let conn = open("mode=ro").or_else(|_| open("immutable=1")).map_err(err)?;
    check_version(&conn, path)?;
    Ok(conn)
}

fn open_shard_writable(path: &Path) -> Result<Connection> {
    let err = |source| Error::Index {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open(path).map_err(err)?;
    // Many backups may write one repository at once: wait for the writer lock, never fail.
    conn.busy_timeout(Duration::from_secs(600)).map_err(err)?;
    // Lookups are point queries spread over many shards: a small page cache per shard keeps
    // memory flat (SQLite's default is 2 MiB per connection).
    conn.pragma_update(None, "cache_size", -64).map_err(err)?;
    // Set-up writes happen once, when the shard is new (normally at `init`): changing the
    // journal mode is not covered by the busy timeout, so concurrent opens must not do it.
    if check_version(&conn, path)? == 0 {
        conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS chunks (
                id BLOB PRIMARY KEY,
                raw_len INTEGER NOT NULL,
                stored_len INTEGER NOT NULL
            ) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS files (
                hash BLOB PRIMARY KEY,
                content BLOB NOT NULL
            ) WITHOUT ROWID;",
        )
        .map_err(err)?;
        conn.pragma_update(None, "user_version", SHARD_VERSION).map_err(err)?;
    }
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(err)?;
    Ok(conn)
}

impl Index for LocalIndex {
    fn lookup(&self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        let mut found = vec![false; ids.len()];
        for (s, group) in by_shard(ids, self.shards.len() as u32).into_iter().enumerate() {
            if group.is_empty() {
                continue;
            }
            let (conn, path) = self.shard(s)?;
            let err = |source| Error::Index { path: path.clone(), source };
            let mut stmt = conn
                .prepare_cached("SELECT 1 FROM chunks WHERE id = ?1")
                .map_err(err)?;
            for i in group {
                found[i] = stmt.exists(params![&ids[i].0[..]]).map_err(err)?;
            }
        }
        Ok(found)
    }

    fn register(&self, entries: &[IndexEntry]) -> Result<()> {
        let ids: Vec<ChunkId> = entries.iter().map(|e| e.id).collect();
        let sql = "INSERT OR IGNORE INTO chunks (id, raw_len, stored_len) VALUES (?1, ?2, ?3)";
        self.insert_by_shard(&ids, sql, |stmt, i| {
            let e = &entries[i];
            stmt.execute(params![&e.id.0[..], e.raw_len as i64, e.stored_len as i64])
        })?;
        let mut filter = self.filter_guard()?;
        let filter = filter.as_mut().expect("filter loaded");
        entries.iter().for_each(|e| filter.insert(&e.id));
        Ok(())
    }

    fn filter(&self) -> Result<BloomFilter> {
        let guard = self.filter_guard()?;
        let f = guard.as_ref().expect("filter loaded");
        BloomFilter::from_bytes(&f.to_bytes())
    }

    fn flush_filter(&self) -> Result<()> {
        let mut guard = self.filter_guard()?;
        let filter = guard.as_mut().expect("filter loaded");
        filter.generation += 1;
        if filter.is_overfull() {
            *filter = self.build_filter(filter.generation)?;
        }
        self.write_filter(filter)
    }

    fn lookup_files(&self, hashes: &[ChunkId]) -> Result<Vec<Option<Vec<Slice>>>> {
        let mut found = vec![None; hashes.len()];
        for (s, group) in by_shard(hashes, self.shards.len() as u32).into_iter().enumerate() {
            if group.is_empty() {
                continue;
            }
            let (conn, path) = self.shard(s)?;
            let err = |source| Error::Index { path: path.clone(), source };
            let mut stmt = conn
                .prepare_cached("SELECT content FROM files WHERE hash = ?1")
                .map_err(err)?;
            for i in group {
                let mut rows = stmt.query(params![&hashes[i].0[..]]).map_err(err)?;
                if let Some(row) = rows.next().map_err(err)? {
                    found[i] = decode_slices(&row.get::<_, Vec<u8>>(0).map_err(err)?);
                }
            }
        }
        Ok(found)
    }

    fn register_files(&self, files: &[FileEntry]) -> Result<()> {
        let hashes: Vec<ChunkId> = files.iter().map(|f| f.hash).collect();
        let sql = "INSERT OR IGNORE INTO files (hash, content) VALUES (?1, ?2)";
        self.insert_by_shard(&hashes, sql, |stmt, i| {
            stmt.execute(params![&files[i].hash.0[..], encode_slices(&files[i].content)])
        })
    }

    fn rebuild(&self, chunks: &[IndexEntry], files: &[FileEntry]) -> Result<()> {
        for s in 0..self.shards.len() {
            let (conn, path) = self.shard(s)?;
            conn.execute_batch("DELETE FROM chunks; DELETE FROM files;")
                .map_err(|source| Error::Index { path, source })?;
        }
        self.register(chunks)?;
        self.register_files(files)?;
        let generation = self.filter_guard()?.as_ref().map_or(0, |f| f.generation);
        let fresh = self.build_filter(generation + 1)?;
        self.write_filter(&fresh)?;
        *self.filter.lock().expect("filter lock poisoned") = Some(fresh);
        Ok(())
    }

    fn entries(&self, visit: &mut dyn FnMut(IndexEntry)) -> Result<()> {
        for s in 0..self.shards.len() {
            let (conn, path) = self.shard(s)?;
            let err = |source| Error::Index { path: path.clone(), source };
            let mut stmt = conn
                .prepare_cached("SELECT id, raw_len, stored_len FROM chunks")
                .map_err(err)?;
            let mut rows = stmt.query([]).map_err(err)?;
            while let Some(row) = rows.next().map_err(err)? {
                let id: Vec<u8> = row.get(0).map_err(err)?;
                let Ok(id) = <[u8; 32]>::try_from(id.as_slice()) else {
                    continue;
                };
                visit(IndexEntry {
                    id: ChunkId(id),
                    raw_len: row.get::<_, i64>(1).map_err(err)? as u64,
                    stored_len: row.get::<_, i64>(2).map_err(err)? as u64,
                });
            }
        }
        Ok(())
    }
}

/// Slices as 40-byte records: chunk id, offset (u32 LE), length (u32 LE).
fn encode_slices(slices: &[Slice]) -> Vec<u8> {
    let mut out = Vec::with_capacity(slices.len() * 40);
    for s in slices {
        out.extend_from_slice(&s.0.0);
        out.extend_from_slice(&s.1.to_le_bytes());
        out.extend_from_slice(&s.2.to_le_bytes());
    }
    out
}

/// None for a malformed record: the entry is then treated as absent, which is always safe.
fn decode_slices(bytes: &[u8]) -> Option<Vec<Slice>> {
    if !bytes.len().is_multiple_of(40) {
        return None;
    }
    let word = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
    Some(
        bytes
            .chunks_exact(40)
            .map(|r| Slice(ChunkId(r[..32].try_into().expect("32 bytes")), word(&r[32..36]), word(&r[36..40])))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::HashAlgo;

    fn entry(i: u32) -> IndexEntry {
        IndexEntry {
            id: HashAlgo::Blake3.hash(&i.to_le_bytes()),
            raw_len: u64::from(i),
            stored_len: u64::from(i) + 16,
        }
    }

    #[test]
    fn register_lookup_rebuild_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let idx = LocalIndex::open(dir.path(), 8).unwrap();
        let entries: Vec<_> = (0..100).map(entry).collect();
        idx.register(&entries[..50]).unwrap();
        idx.flush_filter().unwrap();
        let ids: Vec<_> = entries.iter().map(|e| e.id).collect();
        let found = idx.lookup(&ids).unwrap();
        assert_eq!(found.iter().filter(|&&f| f).count(), 50);
        assert!(found[..50].iter().all(|&f| f));

        drop(idx);
        let idx = LocalIndex::open(dir.path(), 8).unwrap();
        let filter = idx.filter().unwrap();
        assert!(ids[..50].iter().all(|id| filter.may_contain(id)));
        assert!(filter.generation >= 1);

        let file = FileEntry { hash: ids[0], content: vec![Slice(ids[1], 7, 9), Slice(ids[2], 0, 3)] };
        idx.register_files(std::slice::from_ref(&file)).unwrap();
        assert_eq!(idx.lookup_files(&[ids[0], ids[3]]).unwrap(), vec![Some(file.content.clone()), None]);

        idx.rebuild(&entries[50..], &[]).unwrap();
        {
            let (conn, _) = idx.shard(0).unwrap();
            assert_eq!(conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0)).unwrap(), SHARD_VERSION);
        }
        assert_eq!(idx.lookup_files(&[ids[0]]).unwrap(), vec![None]);
        let found = idx.lookup(&ids).unwrap();
        assert!(found[..50].iter().all(|&f| !f));
        assert!(found[50..].iter().all(|&f| f));
        let mut n = 0;
        idx.entries(&mut |_| n += 1).unwrap();
        assert_eq!(n, 50);
    }

    #[test]
    fn newer_shard_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let idx = LocalIndex::open(dir.path(), 1).unwrap();
        idx.register(&[entry(1)]).unwrap();
        drop(idx);
        let conn = Connection::open(shard_path(dir.path(), 0)).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let idx = LocalIndex::open(dir.path(), 1).unwrap();
        let err = idx.lookup(&[entry(1).id]).unwrap_err().to_string();
        assert!(err.contains("version 99") && err.contains("shard-0000"), "{err}");
    }
}
