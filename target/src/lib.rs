//! Block exports for tandem.
//!
//! - [`volume`]: the `Volume` trait (anything that can be read, written, flushed, trimmed and
//!   zeroed at byte offsets and can report its allocation) and [`volume::FileVolume`] for plain
//!   files and block devices.
//! - [`nbd`]: the NBD server (fixed newstyle, DESIGN §6): sans-IO codecs, the pure negotiation
//!   state machine and a tokio driver that `replicatord` embeds and `targetd` runs.
//!
//! - [`iscsi`]: the iSCSI target (RFC 7143, SBC-3/SPC-4 disk emulation): sans-IO PDU codec,
//!   pure login and reservation state machines and a tokio driver, embeddable like the NBD server.
//!
//! - [`aligned`]: 4 KiB-aligned buffers, so payloads read off a socket go to O_DIRECT
//!   without a bounce copy.
//!
//! - [`conf`]: tandem's config file (DRBD syntax, `include`, `file:line:column` errors) as a raw
//!   tree, shared with `replicator`, and the `targetd { ... }` block `targetd` serves from.
//!
//! The `targetd` binary serves plain files with no replication (for example the SBD LUN on a
//! storage node) over NBD and iSCSI.

pub mod aligned;
pub mod conf;
pub mod iscsi;
pub mod nbd;
pub mod volume;
