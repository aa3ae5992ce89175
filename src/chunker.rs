//! Content-defined chunking: FastCDC 2020 with parameters fixed per repository.

use std::io::Read;

use fastcdc::v2020::{FastCDC, Normalization, StreamCDC};
use serde::{Deserialize, Serialize};

use crate::error::{Result, invalid};

/// Chunk size bounds in bytes. Part of the repository config: changing them changes every id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

pub const DEFAULT_AVG: u32 = 1 << 20;
const NORMALIZATION: Normalization = Normalization::Level1;

impl Default for ChunkerParams {
    fn default() -> Self {
        ChunkerParams::with_avg(DEFAULT_AVG).expect("default chunk size is valid")
    }
}

impl ChunkerParams {
    /// min = avg/4 and max = avg*4, the spread FastCDC's normalisation is tuned for.
    pub fn with_avg(avg: u32) -> Result<Self> {
        let p = ChunkerParams {
            min_size: avg / 4,
            avg_size: avg,
            max_size: avg.saturating_mul(4),
        };
        p.validate()?;
        Ok(p)
    }

    pub fn validate(&self) -> Result<()> {
        use fastcdc::v2020::{AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MINIMUM_MIN};
        let (min, avg, max) = (
            self.min_size as usize,
            self.avg_size as usize,
            self.max_size as usize,
        );
        if !(min <= avg && avg <= max) {
            return Err(invalid(
                "chunk sizes",
                format!("need min <= avg <= max, got {min} / {avg} / {max}"),
            ));
        }
        if avg < AVERAGE_MIN || avg > AVERAGE_MAX || min < MINIMUM_MIN || max > MAXIMUM_MAX {
            return Err(invalid(
                "chunk sizes",
                format!(
                    "avg must be within {AVERAGE_MIN}..={AVERAGE_MAX}, min >= {MINIMUM_MIN}, max <= {MAXIMUM_MAX}; got {min} / {avg} / {max}"
                ),
            ));
        }
        if min % 2 + avg % 2 + max % 2 != 0 {
            return Err(invalid("chunk sizes", "sizes must be even"));
        }
        Ok(())
    }

    /// Streams chunks of `source` without reading it whole, copying each byte once.
    /// `size_hint` (the expected length) keeps the window small for small inputs.
    pub fn chunks<R: Read>(&self, source: R, size_hint: u64) -> Chunks<R> {
        let window = (2 * u64::from(self.max_size)).min(size_hint + 1) as usize;
        Chunks {
            params: *self,
            source,
            buf: vec![0; window.max(1)],
            start: 0,
            end: 0,
            eof: false,
        }
    }

    /// The `fastcdc` crate's own streaming chunker; `chunks` must cut identically.
    pub fn stream<R: Read>(&self, source: R) -> StreamCDC<R> {
        StreamCDC::with_level(
            source,
            self.min_size as usize,
            self.avg_size as usize,
            self.max_size as usize,
            NORMALIZATION,
        )
    }

    /// Length of the first chunk of `data`. Gives the same cut as `stream` would at this
    /// position as long as `data` holds at least `max_size` bytes or is the end of the input.
    pub fn first_cut(&self, data: &[u8]) -> usize {
        FastCDC::with_level(
            data,
            self.min_size as usize,
            self.avg_size as usize,
            self.max_size as usize,
            NORMALIZATION,
        )
        .next()
        .map_or(0, |c| c.length)
    }
}

/// Chunks of a reader. Keeps a window of twice the maximum chunk size, so each cut sees the
/// `max_size` bytes it needs; unlike `StreamCDC` it does not shift the window per chunk.
pub struct Chunks<R> {
    params: ChunkerParams,
    source: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
}

impl<R: Read> Chunks<R> {
    fn fill(&mut self) -> std::io::Result<()> {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        loop {
            if self.end == self.buf.len() {
                // Longer than the hint said: grow to the full window a cut needs.
                let full = 2 * self.params.max_size as usize;
                if self.buf.len() >= full {
                    break;
                }
                self.buf.resize(full, 0);
            }
            match self.source.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl<R: Read> Iterator for Chunks<R> {
    type Item = std::io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        let max = self.params.max_size as usize;
        if self.end - self.start < max
            && !self.eof
            && let Err(e) = self.fill()
        {
            return Some(Err(e));
        }
        if self.start == self.end {
            return None;
        }
        let window = &self.buf[self.start..self.end.min(self.start + max)];
        let n = self.params.first_cut(window);
        let chunk = window[..n].to_vec();
        self.start += n;
        Some(Ok(chunk))
    }
}

/// Parses sizes such as `1MiB`, `256KiB`, `4096`, `64k`.
pub fn parse_size(s: &str) -> Result<u32> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| invalid("size", format!("{s:?} (expected e.g. 1MiB, 256KiB, 65536)")))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(invalid("size", format!("{s:?}: unknown unit {unit:?}"))),
    };
    u32::try_from(n * mult).map_err(|_| invalid("size", format!("{s:?} is too large")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn params() -> ChunkerParams {
        ChunkerParams::with_avg(4096).unwrap()
    }

    fn stream_lengths(p: &ChunkerParams, data: &[u8]) -> Vec<usize> {
        p.stream(data).map(|c| c.unwrap().length).collect()
    }

    proptest! {
        #[test]
        fn chunks_cover_input_within_bounds(data in proptest::collection::vec(any::<u8>(), 0..60_000)) {
            let p = params();
            let lens = stream_lengths(&p, &data);
            prop_assert_eq!(lens.iter().sum::<usize>(), data.len());
            for (i, l) in lens.iter().enumerate() {
                prop_assert!(*l <= p.max_size as usize);
                if i + 1 < lens.len() {
                    prop_assert!(*l >= p.min_size as usize);
                }
            }
        }

        #[test]
        fn first_cut_agrees_with_stream(data in proptest::collection::vec(any::<u8>(), 1..60_000)) {
            let p = params();
            let mut pos = 0;
            let mut lens = Vec::new();
            while pos < data.len() {
                let end = (pos + p.max_size as usize).min(data.len());
                let n = p.first_cut(&data[pos..end]);
                lens.push(n);
                pos += n;
            }
            prop_assert_eq!(lens, stream_lengths(&p, &data));
        }

        #[test]
        fn chunks_agree_with_stream(data in proptest::collection::vec(any::<u8>(), 0..100_000)) {
            let p = params();
            let theirs: Vec<Vec<u8>> = p.stream(&data[..]).map(|c| c.unwrap().data).collect();
            for hint in [0, data.len() as u64 / 3, data.len() as u64, u64::MAX / 4] {
                let ours: Vec<Vec<u8>> = p.chunks(&data[..], hint).map(|c| c.unwrap()).collect();
                prop_assert_eq!(&ours, &theirs);
            }
        }
    }

    #[test]
    fn rejects_out_of_order_sizes() {
        let p = ChunkerParams { min_size: 8192, avg_size: 4096, max_size: 16384 };
        assert!(p.validate().unwrap_err().to_string().contains("min <= avg <= max"));
    }

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("256KiB").unwrap(), 256 << 10);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12 parsecs").is_err());
    }
}
