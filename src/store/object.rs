//! The chunk object format: a 16-byte header, then the (maybe compressed) payload.
//!
//! ```text
//! magic "TSRO" | format version u8 (=1) | codec u8 (0 raw, 1 zstd) | reserved u16 (=0) | raw length u64 LE
//! ```

use crate::error::{Error, Result};
use crate::fingerprint::{ChunkId, HashAlgo};

pub const MAGIC: &[u8; 4] = b"TSRO";
pub const OBJECT_VERSION: u8 = 1;
pub const HEADER_LEN: usize = 16;
const CODEC_RAW: u8 = 0;
const CODEC_ZSTD: u8 = 1;
/// zstd level of new repositories. On text-like chunks level 2 costs about 25-30% less CPU
/// than level 3 for about 1% more bytes, and level 1 another 5-12% less for 2% more again
/// (docs/benchmarks.md); compression is most of a first backup's CPU time.
pub const DEFAULT_LEVEL: i32 = 2;
pub const MAX_LEVEL: i32 = 19;
/// Compress only when it saves at least this fraction (in 1/64ths) of the chunk.
const MIN_SAVING_64THS: usize = 2;
const PROBE_LEN: usize = 4 << 10;
const PROBES: usize = 8;

/// What the object header says about the chunk inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectHeader {
    pub compressed: bool,
    pub raw_len: u64,
}

pub fn parse_header(id: &ChunkId, bytes: &[u8]) -> Result<ObjectHeader> {
    let damaged = |reason: String| Error::ChunkDamaged { id: *id, reason };
    if bytes.len() < HEADER_LEN || &bytes[..4] != MAGIC {
        return Err(damaged("bad object header".into()));
    }
    if bytes[4] != OBJECT_VERSION {
        return Err(damaged(format!("unknown object format version {}", bytes[4])));
    }
    let compressed = match bytes[5] {
        CODEC_RAW => false,
        CODEC_ZSTD => true,
        c => return Err(damaged(format!("unknown codec {c}"))),
    };
    let raw_len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    Ok(ObjectHeader { compressed, raw_len })
}

thread_local! {
    // A zstd context is megabytes of tables: build one per thread, not one per chunk.
    static COMPRESSOR: std::cell::RefCell<(i32, zstd::bulk::Compressor<'static>)> =
        std::cell::RefCell::new((DEFAULT_LEVEL, zstd::bulk::Compressor::new(DEFAULT_LEVEL).expect("zstd context")));
    // Probes run at level 1, up to eight per chunk: one context for them too.
    static PROBE: std::cell::RefCell<(zstd::bulk::Compressor<'static>, Vec<u8>)> =
        std::cell::RefCell::new((zstd::bulk::Compressor::new(1).expect("zstd context"), Vec::with_capacity(2 * PROBE_LEN)));
}

/// An encoded object: its header, then the payload (compressed, or the chunk itself).
/// Kept in two parts so an incompressible chunk is written as it is, never copied.
pub struct Encoded<'a> {
    header: [u8; HEADER_LEN],
    payload: &'a [u8],
}

impl Encoded<'_> {
    pub fn parts(&self) -> [&[u8]; 2] {
        [&self.header, self.payload]
    }

    /// Header included: what the store holds.
    pub fn stored_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    pub fn to_vec(&self) -> Vec<u8> {
        self.parts().concat()
    }
}

/// Encodes a chunk, compressing it with zstd only when that pays.
pub fn encode(data: &[u8]) -> Vec<u8> {
    encode_into(data, DEFAULT_LEVEL, &mut Vec::new()).to_vec()
}

/// `encode`, compressing into a buffer the caller reuses: no allocation per chunk once it
/// has grown. Level 0 stores every chunk raw.
pub fn encode_into<'a>(data: &'a [u8], level: i32, buf: &'a mut Vec<u8>) -> Encoded<'a> {
    if level > 0 && worth_compressing(data) && compress_into(data, level, buf) {
        return Encoded { header: header(CODEC_ZSTD, data.len()), payload: buf };
    }
    Encoded { header: header(CODEC_RAW, data.len()), payload: data }
}

/// Compresses into `out`; false if that does not pay.
fn compress_into(data: &[u8], level: i32, out: &mut Vec<u8>) -> bool {
    out.clear();
    out.reserve(zstd::zstd_safe::compress_bound(data.len()));
    COMPRESSOR
        .with_borrow_mut(|(at, c)| {
            if *at != level {
                c.set_compression_level(level)?;
                *at = level;
            }
            c.compress_to_buffer(data, out)
        })
        .is_ok_and(|n| n + data.len() * MIN_SAVING_64THS / 64 < data.len())
}

fn header(codec: u8, raw_len: usize) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(MAGIC);
    h[4] = OBJECT_VERSION;
    h[5] = codec;
    h[8..].copy_from_slice(&(raw_len as u64).to_le_bytes());
    h
}

/// Random and already-compressed data costs zstd time for nothing. Probe a few spread-out
/// samples, since one chunk can mix compressible and incompressible regions.
fn worth_compressing(data: &[u8]) -> bool {
    if data.len() < 64 {
        return false;
    }
    if data.len() <= PROBES * PROBE_LEN * 2 {
        return true;
    }
    let step = data.len() / PROBES;
    (0..PROBES).any(|i| {
        let at = i * step + step / 2 - PROBE_LEN / 2;
        let probe = &data[at..at + PROBE_LEN];
        PROBE.with_borrow_mut(|(c, out)| {
            out.clear();
            c.compress_to_buffer(probe, out).is_ok_and(|n| n < PROBE_LEN * 62 / 64)
        })
    })
}

/// Decodes an object and checks that its plaintext hashes to `id` (invariant 2).
pub fn decode(id: &ChunkId, algo: HashAlgo, bytes: &[u8]) -> Result<Vec<u8>> {
    let header = parse_header(id, bytes)?;
    let damaged = |reason: String| Error::ChunkDamaged { id: *id, reason };
    let payload = &bytes[HEADER_LEN..];
    let data = if header.compressed {
        zstd::bulk::decompress(payload, header.raw_len as usize)
            .map_err(|e| damaged(format!("zstd: {e}")))?
    } else {
        payload.to_vec()
    };
    if data.len() as u64 != header.raw_len {
        return Err(damaged(format!(
            "length {} differs from header's {}",
            data.len(),
            header.raw_len
        )));
    }
    let actual = algo.hash(&data);
    if actual != *id {
        return Err(damaged(format!("content hashes to {actual}")));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_compressed_random_is_not() {
        let text = "the quick brown fox ".repeat(10_000).into_bytes();
        let enc = encode(&text);
        assert_eq!(enc[5], CODEC_ZSTD);
        assert!(enc.len() < text.len() / 10);
        let id = HashAlgo::Blake3.hash(&text);
        assert_eq!(decode(&id, HashAlgo::Blake3, &enc).unwrap(), text);

        let mut x = 0x9e3779b97f4a7c15u64;
        let random: Vec<u8> = (0..200_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let enc = encode(&random);
        assert_eq!(enc[5], CODEC_RAW);
        assert_eq!(enc.len(), random.len() + HEADER_LEN);
        let mut buf = Vec::new();
        let raw = encode_into(&random, DEFAULT_LEVEL, &mut buf);
        assert!(std::ptr::eq(raw.parts()[1], &random[..]), "a raw payload is the chunk itself, not a copy");
        assert_eq!(raw.stored_len(), enc.len());
    }

    #[test]
    fn flipped_bit_is_reported_with_the_id() {
        let data = b"hello world".repeat(100);
        let id = HashAlgo::Sha256.hash(&data);
        let mut enc = encode(&data);
        let last = enc.len() - 1;
        enc[last] ^= 1;
        let err = decode(&id, HashAlgo::Sha256, &enc).unwrap_err();
        assert!(err.to_string().contains(&id.to_hex()), "{err}");
    }
}
