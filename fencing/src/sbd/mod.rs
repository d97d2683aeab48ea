//! SBD: storage-based death, on-disk compatible with ClusterLabs sbd 1.5.
//!
//! - [`format`]: the sectors (header, slots, mailboxes) as pure encode/decode.

pub mod format;
