//! Fencing for tandem.
//!
//! - [`sbd`]: SBD slots byte-compatible with ClusterLabs sbd, the tools that manage them and the
//!   watcher that feeds a watchdog while its slot carries no poison pill.
//! - [`watchdog`]: the Linux watchdog API behind a trait, and the test watchdog that kills a
//!   process group.
//!
//! It depends on no other tandem crate.

pub mod sbd;
pub mod watchdog;
