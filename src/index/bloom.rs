//! A versioned Bloom filter over the index's chunk ids.
//!
//! File format: magic "TSBF" | format version u8 (=1) | 3 reserved bytes | generation u64 LE |
//! capacity u64 LE | items u64 LE | the `bloomfilter` crate's serialized bitmap.

use bloomfilter::Bloom;

use crate::error::{Result, invalid};
use crate::fingerprint::ChunkId;

const MAGIC: &[u8; 4] = b"TSBF";
const FORMAT: u8 = 1;
const HEADER: usize = 32;
const FP_RATE: f64 = 0.01;
/// A new repository's filter: 78 KiB. It is rebuilt twice as large whenever it fills, so a
/// small repository does not carry a megabyte-sized filter.
const MIN_CAPACITY: u64 = 1 << 16;
/// The `bloomfilter` crate's bitmap header: version u8, length u64, k u32, seed [u8; 32].
const CRATE_HEADER: u64 = 1 + 8 + 4 + 32;
/// Fixed so that every client and server builds identical filters from the same ids.
const SEED: [u8; 32] = *b"tessera bloom filter seed v1 ...";

pub struct BloomFilter {
    /// Bumped on every publish, so clients can tell whether theirs is current.
    pub generation: u64,
    capacity: u64,
    items: u64,
    bloom: Bloom<[u8]>,
}

impl BloomFilter {
    /// An empty filter sized for at least `expected` ids.
    pub fn with_capacity(expected: u64) -> Self {
        let capacity = expected.max(MIN_CAPACITY).next_power_of_two();
        let bytes = Bloom::<[u8]>::compute_bitmap_size(capacity as usize, FP_RATE);
        BloomFilter {
            generation: 0,
            capacity,
            items: 0,
            bloom: Bloom::new_with_seed(bytes, capacity as usize, &SEED)
                .expect("non-zero bloom size"),
        }
    }

    /// Bytes of the serialized filter a repository holding `ids` ids would keep: capacity
    /// is twice the ids (at least 2^20) rounded up to a power of two, as the index sizes it.
    pub fn serialized_len(ids: u64) -> u64 {
        let capacity = ids.saturating_mul(2).max(MIN_CAPACITY).next_power_of_two();
        let bits = Bloom::<[u8]>::compute_bitmap_size(capacity as usize, FP_RATE) as u64;
        // Our header, then the crate's own bitmap header (version, length, k, seed).
        HEADER as u64 + CRATE_HEADER + bits
    }

    pub fn insert(&mut self, id: &ChunkId) {
        self.bloom.set(&id.0[..]);
        self.items += 1;
    }

    /// False means definitely absent; true means ask the index.
    pub fn may_contain(&self, id: &ChunkId) -> bool {
        self.bloom.check(&id.0[..])
    }

    /// Past capacity the false-positive rate climbs; the owner rebuilds a larger filter.
    pub fn is_overfull(&self) -> bool {
        self.items > self.capacity
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.bloom.as_slice().len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[FORMAT, 0, 0, 0]);
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&self.capacity.to_le_bytes());
        out.extend_from_slice(&self.items.to_le_bytes());
        out.extend_from_slice(self.bloom.as_slice());
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < HEADER || &bytes[..4] != MAGIC || bytes[4] != FORMAT {
            return Err(invalid("bloom filter", "bad header"));
        }
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let bloom = Bloom::from_slice(&bytes[HEADER..])
            .map_err(|e| invalid("bloom filter", e.to_string()))?;
        Ok(BloomFilter {
            generation: word(8),
            capacity: word(16),
            items: word(24),
            bloom,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::HashAlgo;

    #[test]
    fn inserted_ids_are_found_and_survive_serialization() {
        let mut f = BloomFilter::with_capacity(1000);
        let ids: Vec<_> = (0..1000u32).map(|i| HashAlgo::Blake3.hash(&i.to_le_bytes())).collect();
        ids.iter().for_each(|id| f.insert(id));
        f.generation = 7;
        let g = BloomFilter::from_bytes(&f.to_bytes()).unwrap();
        assert_eq!(g.generation, 7);
        assert!(ids.iter().all(|id| g.may_contain(id)));
        let absent = (1000..11000u32)
            .filter(|i| g.may_contain(&HashAlgo::Blake3.hash(&i.to_le_bytes())))
            .count();
        assert!(absent < 200, "false positives: {absent} of 10000");
    }

    #[test]
    fn serialized_len_matches_a_real_filter() {
        for ids in [0u64, 1000, 600_000, 700_000] {
            let f = BloomFilter::with_capacity(ids * 2);
            assert_eq!(BloomFilter::serialized_len(ids), f.to_bytes().len() as u64, "{ids} ids");
        }
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(BloomFilter::from_bytes(b"nope").is_err());
    }
}
