//! Text forms of an analysis: a table for people, CSV for spreadsheets.

use std::fmt::Write;

use indicatif::HumanBytes;

use super::{AnalyzeReport, ConfigReport, Figures, VersionReport};

impl AnalyzeReport {
    /// One line per configuration; with versions, what each backup would add below it.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<26} {:>10} {:>10} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>11}",
            "chunker", "logical", "unique", "dedup", "stored", "chunks", "mean", "median", "p99", "objects", "index", "bloom", "throughput"
        );
        for c in &self.configs {
            let _ = writeln!(out, "{}", config_line(c));
            if self.as_versions {
                for (i, v) in c.versions.iter().enumerate() {
                    let _ = writeln!(out, "{}", version_line(i + 1, v));
                }
            }
        }
        let _ = writeln!(out, "hash {}; chunk sizes are of distinct data chunks; objects = data chunks + trees (one per directory, at most)", self.hash);
        out
    }

    /// One row per configuration and backup run; figures in bytes.
    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "chunker,min_size,avg_size,max_size,version,paths,logical_bytes,new_bytes,new_stored_bytes,new_chunks,new_trees,\
             cumulative_logical_bytes,unique_bytes,stored_bytes,unique_chunks,dedup_ratio,compression_ratio,\
             chunk_mean,chunk_median,chunk_p99,small_files,trees,objects,index_bytes,bloom_bytes,seconds,throughput\n",
        );
        for c in &self.configs {
            for (i, v) in c.versions.iter().enumerate() {
                let f = &v.cumulative;
                let _ = writeln!(
                    out,
                    "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.4},{:.4},{:.1},{},{},{},{},{},{},{},{:.3},{:.0}",
                    csv_field(&c.chunker), c.min_size, c.avg_size, c.max_size, i + 1, csv_field(&v.paths.join(" ")),
                    v.logical_bytes, v.new_bytes, v.new_stored_bytes, v.new_chunks, v.new_trees,
                    f.logical_bytes, f.unique_bytes, f.stored_bytes, f.unique_chunks, f.dedup_ratio, f.compression_ratio,
                    f.chunk_sizes.mean, f.chunk_sizes.median, f.chunk_sizes.p99, f.small_files, f.trees, f.objects,
                    f.index_bytes, f.bloom_bytes, c.seconds, c.throughput
                );
            }
        }
        out
    }
}

fn config_line(c: &ConfigReport) -> String {
    let f: &Figures = &c.total;
    format!(
        "{:<26} {:>10} {:>10} {:>6.2}x {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9}/s",
        c.chunker,
        h(f.logical_bytes),
        h(f.unique_bytes),
        f.dedup_ratio,
        h(f.stored_bytes),
        f.unique_chunks,
        h(f.chunk_sizes.mean as u64),
        h(f.chunk_sizes.median),
        h(f.chunk_sizes.p99),
        f.objects,
        h(f.index_bytes),
        h(f.bloom_bytes),
        h(c.throughput as u64)
    )
}

fn version_line(n: usize, v: &VersionReport) -> String {
    let f = &v.cumulative;
    format!(
        "  v{n} {}: {} logical, +{} new in {} chunks (+{} stored); total {} stored, {:.2}x dedup",
        v.paths.join(" "),
        h(v.logical_bytes),
        h(v.new_bytes),
        v.new_chunks,
        h(v.new_stored_bytes),
        h(f.stored_bytes),
        f.dedup_ratio
    )
}

fn h(n: u64) -> String {
    HumanBytes(n).to_string()
}

/// Quotes a field that holds a comma, quote or line break (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
