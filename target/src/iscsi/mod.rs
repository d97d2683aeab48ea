//! The iSCSI target (RFC 7143) serving [`Volume`](crate::volume::Volume)s as SCSI disks
//! (SBC-3/SPC-4), one LUN per target.
//!
//! Layers, bottom up:
//! - [`pdu`] and [`text`]: sans-IO codecs for PDUs (BHS, AHS, digests, padding) and the
//!   key=value text of login and text PDUs; every length is checked against a named limit
//!   before anything is allocated.
//! - [`login`]: the login state machine (security negotiation with CHAP one-way and mutual,
//!   operational negotiation). Pure: the random challenge is passed in.
//! - [`scsi`], [`pr`] and [`disk`]: sense data and the command table, reservations (SPC-2 and
//!   persistent) as a pure state machine, and the block device emulation over a volume.
//! - [`server`]: the tokio driver: listener, login, CmdSN window, Data-Out/R2T, task
//!   management, one task per command, one writer per connection.
//!
//! Error recovery level 0 and one connection per session, which is what open-iscsi and libiscsi
//! use. Integers on the wire are big-endian; digests are CRC32C.

pub mod disk;
pub mod login;
pub mod pdu;
pub mod pr;
pub mod scsi;
pub mod server;
pub mod text;
