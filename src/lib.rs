//! Tessera: a deduplicating backup library. One module per stage of the data path:
//! walk -> chunker -> fingerprint -> index (dedup) -> store, then manifest; restore reads back.

pub mod analyze;
pub mod backup;
pub mod check;
pub mod chunker;
pub mod config;
pub mod error;
pub mod fingerprint;
pub mod index;
pub mod manifest;
pub mod repo;
pub mod restore;
pub mod stats;
pub mod store;
mod tmpfile;
pub mod walk;

pub use error::{Error, Result};
pub use repo::Repository;
