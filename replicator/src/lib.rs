//! tandem's replication engine: the DRBD-style core of `replicatord` and `replctl`.
//!
//! - [`config`]: DRBD's configuration syntax, parsed into a raw tree and validated into types.
//! - [`md`]: DRBD v08 meta-data (superblock, activity log, bitmap) as pure encode/decode, its
//!   layout math, and the thin disk driver that creates and reads it.
//!
//! Replication, the daemon and the exports arrive with later issues.

pub mod config;
pub mod control;
pub mod core;
pub mod daemon;
pub mod demo;
pub mod digest;
pub mod md;
pub mod wire;
