//! Fencing for tandem.
//!
//! - [`sbd`]: SBD slots byte-compatible with ClusterLabs sbd, the tools that manage them and the
//!   watcher that feeds a watchdog while its slot carries no poison pill.
//!
//! It depends on no other tandem crate.

pub mod sbd;
