//! Content-defined chunking: FastCDC 2020 with parameters fixed per repository.

use std::io::Read;

use fastcdc::v2020::{FastCDC, Normalization, StreamCDC};
use serde::{Deserialize, Serialize};

use crate::error::{Result, invalid};
use crate::fingerprint::{ChunkId, HashAlgo};
use crate::manifest::Slice;

/// Chunk size bounds in bytes. Part of the repository config: changing them changes every id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

pub const DEFAULT_AVG: u32 = 512 << 10;
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
        if !(AVERAGE_MIN..=AVERAGE_MAX).contains(&avg) || min < MINIMUM_MIN || max > MAXIMUM_MAX {
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

/// How a byte stream is cut: content-defined (what repositories use) or at fixed offsets
/// (for comparison in `analyze`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cutter {
    FastCdc(ChunkerParams),
    Fixed(u32),
}

impl Cutter {
    /// The longest chunk; a cut needs this many bytes ahead unless the input ends.
    pub fn max_size(&self) -> usize {
        match self {
            Cutter::FastCdc(p) => p.max_size as usize,
            Cutter::Fixed(n) => *n as usize,
        }
    }

    /// Files below this size are packed into a shared stream rather than chunked alone.
    pub fn small_file_limit(&self) -> u64 {
        match self {
            Cutter::FastCdc(p) => u64::from(p.avg_size),
            Cutter::Fixed(n) => u64::from(*n),
        }
    }

    /// Length of the first chunk of `data` (see `ChunkerParams::first_cut`).
    pub fn first_cut(&self, data: &[u8]) -> usize {
        match self {
            Cutter::FastCdc(p) => p.first_cut(data),
            Cutter::Fixed(n) => data.len().min(*n as usize),
        }
    }

    /// Cuts `source` window by window (see `Windows`).
    pub fn windows<R: Read>(&self, source: R) -> Windows<R> {
        Windows { cutter: *self, source, carry: Vec::new(), eof: false }
    }

    /// Streams chunks of `source` without reading it whole, each as a buffer of its own.
    pub fn chunks<R: Read>(&self, source: R) -> Chunks<R> {
        Chunks { windows: self.windows(source), window: Vec::new(), pos: 0 }
    }
}

/// Chunks of a reader, each copied out of its window (see `Windows`), for callers that keep
/// chunks apart from one another.
pub struct Chunks<R> {
    windows: Windows<R>,
    window: Vec<u8>,
    pos: usize,
}

impl<R: Read> Iterator for Chunks<R> {
    type Item = std::io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(n) = self.windows.cut(&self.window, self.pos) {
                let chunk = self.window[self.pos..self.pos + n].to_vec();
                self.pos += n;
                return Some(Ok(chunk));
            }
            match self.windows.fill(&mut self.window) {
                Ok(true) => self.pos = 0,
                Ok(false) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// Chunks of a reader that stay in the buffer they were read into: each window holds whole
/// chunks, and only the unfinished chunk at its end is carried over to the next one. The
/// backup reader hands windows to the workers as they are, so most bytes are never copied.
pub struct Windows<R> {
    cutter: Cutter,
    source: R,
    carry: Vec<u8>,
    eof: bool,
}

impl<R: Read> Windows<R> {
    /// Room for a carried-over unfinished chunk plus the `max_size` bytes a cut may need.
    fn window_size(&self) -> usize {
        2 * self.cutter.max_size()
    }

    /// Fills `window` (replacing its contents, reusing its allocation) with the unfinished
    /// chunk carried over from the last window, then fresh input. False at the end of input.
    pub fn fill(&mut self, window: &mut Vec<u8>) -> std::io::Result<bool> {
        let size = self.window_size();
        window.clear();
        window.reserve_exact(size);
        window.extend_from_slice(&self.carry);
        self.carry.clear();
        if !self.eof {
            let want = size - window.len();
            // `take` keeps the read within the reserved room: no reallocation.
            let n = (&mut self.source).take(want as u64).read_to_end(window)?;
            self.eof = n < want;
        }
        Ok(!window.is_empty())
    }

    /// Length of the chunk at `pos` of the window just filled, if it is whole. Chunks are
    /// cut one at a time, so each can be handed on before the next is found. Once this is
    /// None, the bytes from `pos` on are carried over to the next window.
    pub fn cut(&mut self, window: &[u8], pos: usize) -> Option<usize> {
        let max = self.cutter.max_size();
        let rest = &window[pos..];
        if rest.is_empty() {
            return None;
        }
        let n = self.cutter.first_cut(&rest[..rest.len().min(max)]);
        // A cut found before the end of the bytes at hand is final; running out of bytes
        // short of `max_size` is not, unless the input ends there.
        if n == rest.len() && rest.len() < max && !self.eof {
            self.carry.extend_from_slice(rest);
            return None;
        }
        Some(n)
    }
}

/// Concatenates small inputs into one stream and cuts it with a `Cutter`, so many small
/// files make a few chunks; each input is then a list of slices of those chunks.
pub struct StreamPacker {
    cutter: Cutter,
    algo: HashAlgo,
    /// Stream bytes not yet cut; `base` is the stream offset of `buf[0]`.
    buf: Vec<u8>,
    base: u64,
    /// Every chunk cut so far: (stream offset, length, id).
    cuts: Vec<(u64, u32, ChunkId)>,
}

impl StreamPacker {
    pub fn new(cutter: Cutter, algo: HashAlgo) -> Self {
        StreamPacker { cutter, algo, buf: Vec::new(), base: 0, cuts: Vec::new() }
    }

    /// Appends `data` and returns its stream range.
    pub fn push(&mut self, data: &[u8]) -> (u64, u64) {
        let start = self.base + self.buf.len() as u64;
        self.buf.extend_from_slice(data);
        (start, start + data.len() as u64)
    }

    /// Cuts the next chunk if its boundary is final (or if `finish`, whatever is left).
    /// Cuts are the same as one `Chunks` pass over the whole stream.
    pub fn cut(&mut self, finish: bool) -> Option<(ChunkId, Vec<u8>)> {
        let mut data = Vec::new();
        self.cut_into(finish, &mut data).map(|id| (id, data))
    }

    /// `cut`, putting the chunk's bytes in `out` (replacing its contents) to reuse buffers.
    pub fn cut_into(&mut self, finish: bool, out: &mut Vec<u8>) -> Option<ChunkId> {
        let max = self.cutter.max_size();
        if self.buf.is_empty() || (self.buf.len() < max && !finish) {
            return None;
        }
        let n = self.cutter.first_cut(&self.buf[..self.buf.len().min(max)]);
        out.clear();
        out.extend_from_slice(&self.buf[..n]);
        self.buf.drain(..n);
        let id = self.algo.hash(out);
        self.cuts.push((self.base, n as u32, id));
        self.base += n as u64;
        Some(id)
    }

    /// Everything before this stream offset is in cut chunks.
    pub fn cut_through(&self) -> u64 {
        self.base
    }

    /// The slices covering a range that is already cut.
    pub fn slices(&self, start: u64, end: u64) -> Vec<Slice> {
        let first = self.cuts.partition_point(|&(off, len, _)| off + u64::from(len) <= start);
        let mut out = Vec::new();
        for &(off, len, id) in &self.cuts[first..] {
            if off >= end {
                break;
            }
            let from = start.max(off) - off;
            let to = end.min(off + u64::from(len)) - off;
            out.push(Slice(id, from as u32, (to - from) as u32));
        }
        out
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
    }

    /// Reads at most `step` bytes per call, as pipes and network filesystems may.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.1).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn chunks(cutter: Cutter, source: impl Read) -> Vec<Vec<u8>> {
        cutter.chunks(source).map(|c| c.unwrap()).collect()
    }

    proptest! {
        #[test]
        fn chunks_agree_with_stream(data in proptest::collection::vec(any::<u8>(), 0..100_000), step in 1usize..40_000) {
            let p = params();
            let theirs: Vec<Vec<u8>> = p.stream(&data[..]).map(|c| c.unwrap().data).collect();
            prop_assert_eq!(&chunks(Cutter::FastCdc(p), &data[..]), &theirs);
            prop_assert_eq!(&chunks(Cutter::FastCdc(p), Trickle(&data, step)), &theirs);
        }

        #[test]
        fn windows_hold_whole_chunks_within_their_size(data in proptest::collection::vec(any::<u8>(), 0..100_000), step in 1usize..40_000) {
            let mut windows = Cutter::FastCdc(params()).windows(Trickle(&data, step));
            let (mut window, mut total) = (Vec::new(), 0);
            while windows.fill(&mut window).unwrap() {
                prop_assert!(window.len() <= windows.window_size());
                let mut at = 0;
                while let Some(n) = windows.cut(&window, at) {
                    at += n;
                }
                total += at;
            }
            prop_assert_eq!(total, data.len());
        }
    }

    #[test]
    fn zeros_cut_at_max_size() {
        let p = params();
        let data = vec![0u8; 5 * p.max_size as usize + 100];
        let lens: Vec<usize> = chunks(Cutter::FastCdc(p), &data[..]).iter().map(Vec::len).collect();
        assert_eq!(lens, [vec![p.max_size as usize; 5], vec![100]].concat());
    }

    #[test]
    fn packed_stream_cuts_like_one_pass_and_slices_cover_inputs() {
        let p = params();
        let cutter = Cutter::FastCdc(p);
        let files: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 100 + 37 * i as usize]).collect();
        let mut packer = StreamPacker::new(cutter, HashAlgo::Blake3);
        let mut chunks = Vec::new();
        let ranges: Vec<_> = files
            .iter()
            .map(|f| {
                let r = packer.push(f);
                while let Some(c) = packer.cut(false) {
                    chunks.push(c);
                }
                r
            })
            .collect();
        while let Some(c) = packer.cut(true) {
            chunks.push(c);
        }
        let whole: Vec<u8> = files.concat();
        let one_pass: Vec<Vec<u8>> = cutter.chunks(&whole[..]).map(|c| c.unwrap()).collect();
        assert_eq!(chunks.iter().map(|c| c.1.clone()).collect::<Vec<_>>(), one_pass);
        let by_id: std::collections::HashMap<_, _> = chunks.into_iter().collect();
        for ((start, end), file) in ranges.into_iter().zip(&files) {
            let bytes: Vec<u8> = packer
                .slices(start, end)
                .iter()
                .flat_map(|s| by_id[s.id()][s.offset()..s.offset() + s.len()].to_vec())
                .collect();
            assert_eq!(&bytes, file);
        }
    }

    #[test]
    fn fixed_cutter_cuts_at_fixed_offsets() {
        let data = vec![7u8; 10_000];
        let lens: Vec<usize> = Cutter::Fixed(4096).chunks(&data[..]).map(|c| c.unwrap().len()).collect();
        assert_eq!(lens, vec![4096, 4096, 1808]);
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
