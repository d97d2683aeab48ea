//! Block exports for tandem.
//!
//! This crate will hold the `Volume` trait (anything that can be read, written, flushed and
//! trimmed at byte offsets), the NBD server (fixed newstyle, DESIGN §6) and the iSCSI target
//! (RFC 7143, SBC/SPC), each as a sans-IO codec plus a thin driver, and the `targetd` binary that
//! serves plain files with no replication (for example the SBD LUN on a storage node).
//!
//! The NBD server arrives with the data-path issue and the iSCSI target with its own issue.
