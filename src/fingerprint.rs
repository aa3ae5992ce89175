//! Chunk ids: the hash of a chunk's plaintext, with the algorithm fixed per repository.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest;

use crate::error::{Result, invalid};

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Result<Self> {
        let mut id = [0u8; 32];
        hex::decode_to_slice(s, &mut id)
            .map_err(|e| invalid("chunk id", format!("{s:?}: {e}")))?;
        Ok(ChunkId(id))
    }

    /// The index shard that owns this id: shards split the id space by its 16-bit prefix.
    pub fn shard(&self, shard_count: u32) -> u32 {
        let prefix = u32::from(u16::from_be_bytes([self.0[0], self.0[1]]));
        (prefix * shard_count) >> 16
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

impl Serialize for ChunkId {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ChunkId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ChunkId::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HashAlgo {
    Blake3,
    Sha256,
}

impl HashAlgo {
    pub fn hash(self, data: &[u8]) -> ChunkId {
        match self {
            HashAlgo::Blake3 => ChunkId(*blake3::hash(data).as_bytes()),
            HashAlgo::Sha256 => ChunkId(sha2::Sha256::digest(data).into()),
        }
    }
}

impl FromStr for HashAlgo {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "blake3" => Ok(HashAlgo::Blake3),
            "sha256" | "sha-256" => Ok(HashAlgo::Sha256),
            _ => Err(invalid("hash", format!("{s:?} (expected blake3 or sha256)"))),
        }
    }
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HashAlgo::Blake3 => "blake3",
            HashAlgo::Sha256 => "sha256",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        assert_eq!(
            HashAlgo::Sha256.hash(b"abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            HashAlgo::Blake3.hash(b"").to_hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }

    #[test]
    fn shards_cover_prefix_space_in_order() {
        let mut lo = ChunkId([0; 32]);
        let mut hi = ChunkId([0xff; 32]);
        assert_eq!(lo.shard(16), 0);
        assert_eq!(hi.shard(16), 15);
        lo.0[0] = 0x10;
        hi.0[0] = 0x0f;
        assert_eq!(lo.shard(16), 1);
        assert_eq!(hi.shard(16), 0);
    }

    #[test]
    fn hex_round_trip_and_rejects_garbage() {
        let id = HashAlgo::Blake3.hash(b"x");
        assert_eq!(ChunkId::from_hex(&id.to_hex()).unwrap(), id);
        assert!(ChunkId::from_hex("zz").is_err());
    }
}
