//! The repository config: fixed at `init`, read by every client (see docs/FORMAT.md).

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::chunker::ChunkerParams;
use crate::error::{Error, IoContext, Result};
use crate::fingerprint::HashAlgo;

pub const CONFIG_FILE: &str = "config";
pub const REPO_VERSION: u32 = 1;
pub const DEFAULT_SHARDS: u32 = 16;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub format: String,
    pub version: u32,
    pub id: String,
    pub hash: HashAlgo,
    pub chunker: ChunkerParams,
    pub index_shards: u32,
    /// zstd level for new chunks, 0 for none. Not part of chunk ids: repositories written
    /// with different levels deduplicate against each other.
    /// Configs written before the field existed meant level 3, so an absent field still does,
    /// and level 3 is still written without it (such configs read the same as before).
    #[serde(default = "unwritten_level", skip_serializing_if = "is_unwritten_level")]
    pub zstd_level: i32,
}

const UNWRITTEN_LEVEL: i32 = 3;

fn unwritten_level() -> i32 {
    UNWRITTEN_LEVEL
}

fn is_unwritten_level(level: &i32) -> bool {
    *level == UNWRITTEN_LEVEL
}

impl Config {
    pub fn new(hash: HashAlgo, chunker: ChunkerParams) -> Self {
        let nonce = format!(
            "{:?} {} {:?}",
            std::time::SystemTime::now(),
            std::process::id(),
            std::thread::current().id()
        );
        Config {
            format: "tessera-repository".into(),
            version: REPO_VERSION,
            id: blake3::hash(nonce.as_bytes()).to_hex()[..32].to_string(),
            hash,
            chunker,
            index_shards: DEFAULT_SHARDS,
            zstd_level: crate::store::object::DEFAULT_LEVEL,
        }
    }

    pub fn load(repo: &Path) -> Result<Self> {
        let path = repo.join(CONFIG_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotARepository(repo.to_path_buf()));
            }
            Err(e) => return Err(e).at(&path),
        };
        let malformed = |reason: String| Error::Malformed {
            what: "repository config",
            path: path.clone(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| malformed(e.to_string()))?;
        if value.get("format").and_then(|f| f.as_str()) != Some("tessera-repository") {
            return Err(Error::NotARepository(repo.to_path_buf()));
        }
        let found = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
        if found > REPO_VERSION {
            return Err(Error::NewerFormat {
                path,
                found,
                supported: REPO_VERSION,
            });
        }
        let config: Config = serde_json::from_value(value).map_err(|e| malformed(e.to_string()))?;
        config.chunker.validate()?;
        if !(0..=crate::store::object::MAX_LEVEL).contains(&config.zstd_level) {
            return Err(malformed(format!("zstd_level {} out of range", config.zstd_level)));
        }
        if config.index_shards == 0 || config.index_shards > 1 << 16 {
            return Err(malformed(format!("index_shards {} out of range", config.index_shards)));
        }
        Ok(config)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("config always serializes")
    }
}
