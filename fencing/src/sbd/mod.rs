//! SBD: storage-based death, on-disk compatible with ClusterLabs sbd 1.5.
//!
//! - [`format`]: the sectors (header, slots, mailboxes) as pure encode/decode.
//! - [`device`]: the thin driver doing sector I/O with an I/O timeout, on a file, a block device
//!   or (through [`iscsi`]) an iSCSI LUN.
//! - [`ops`]: what `create`, `dump`, `list`, `allocate` and `message` do on one device, and
//!   the messenger that delivers a message to a majority of several devices.
//! - [`watcher`]: the watcher's decisions (pure, time passed in) and [`watch`], its driver.

pub mod device;
pub mod format;
pub mod iscsi;
pub mod ops;
pub mod watch;
pub mod watcher;

use std::time::Duration;

use format::FormatError;

/// What can go wrong with an SBD device or an SBD operation.
#[derive(Debug, thiserror::Error)]
pub enum SbdError {
    /// An I/O call on the device failed.
    #[error("cannot {op} {path}: {error}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The device.
        path: String,
        /// The OS error.
        error: std::io::Error,
    },
    /// A sector read or write failed.
    #[error("cannot {op} sector {sector} of {path}: {error}")]
    SectorIo {
        /// "read" or "write".
        op: &'static str,
        /// The sector.
        sector: u64,
        /// The device.
        path: String,
        /// The OS error.
        error: std::io::Error,
    },
    /// The device did not answer within the I/O timeout.
    #[error("{path} did not complete a {op} within {timeout:?} (I/O timeout)")]
    Timeout {
        /// What was being done.
        op: &'static str,
        /// The device.
        path: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The path is neither a regular file nor a block device.
    #[error("{path} is not a regular file or block device")]
    NotADevice {
        /// The path.
        path: String,
    },
    /// A sector of the device does not decode.
    #[error("{path}: {error}")]
    Format {
        /// The device.
        path: String,
        /// What is wrong.
        error: FormatError,
    },
    /// A slot or mailbox sector does not decode.
    #[error("{path}: slot {slot}: {error}")]
    Slot {
        /// The device.
        path: String,
        /// The slot.
        slot: u8,
        /// What is wrong.
        error: FormatError,
    },
    /// The device cannot hold the header and all slots.
    #[error("{path} is {size_bytes} bytes; SBD needs {need_bytes} bytes ({sectors} sectors of {sector_size})")]
    TooSmall {
        /// The device.
        path: String,
        /// Its size.
        size_bytes: u64,
        /// What SBD needs.
        need_bytes: u64,
        /// Sectors needed.
        sectors: u64,
        /// The sector size.
        sector_size: u32,
    },
    /// No slot is allocated to the node.
    #[error("no slot for node '{node}' on {path} (allocate one with 'allocate {node}')")]
    NoSlot {
        /// The node.
        node: String,
        /// The device.
        path: String,
    },
    /// Every slot is taken.
    #[error("no free slot on {path}")]
    NoFreeSlot {
        /// The device.
        path: String,
    },
    /// The slot was written but re-reading it found another node's name (a race lost on every
    /// free slot tried).
    #[error("could not allocate a slot for '{node}' on {path}: other nodes took every slot tried")]
    AllocateRaced {
        /// The node.
        node: String,
        /// The device.
        path: String,
    },
    /// A message was written but reading it back gave something else.
    #[error(
        "{path}: the message written to slot {slot} did not read back (write verification failed)"
    )]
    VerifyFailed {
        /// The device.
        path: String,
        /// The slot.
        slot: u8,
    },
    /// Too few devices took a message.
    #[error(
        "message delivered to {delivered} of {devices} devices, needs more than half: {failures}"
    )]
    NoMajority {
        /// Devices that took it.
        delivered: usize,
        /// Devices given.
        devices: usize,
        /// Why the others did not, one per device.
        failures: String,
    },
    /// The header's timeouts break a safety rule.
    #[error(transparent)]
    Timeouts(#[from] watcher::TimeoutError),
}
