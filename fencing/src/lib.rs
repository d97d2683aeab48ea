//! Fencing for tandem.
//!
//! - [`sbd`]: SBD slots byte-compatible with ClusterLabs sbd, the tools that manage them and the
//!   watcher that feeds a watchdog while its slot carries no poison pill.
//! - [`agent`]: the fence-agents API (options on stdin or as flags, actions, exit codes,
//!   metadata) for `fence_tandem_sbd` and `fence_tandem_ifmib`.
//! - [`snmp`] and [`ifmib`]: a small SNMP (v1, v2c, v3 USM) codec and client, and IF-MIB port
//!   fencing as fence-agents' `fence_ifmib` does it.
//! - [`watchdog`]: the Linux watchdog API behind a trait, and the test watchdog that kills a
//!   process group.
//!
//! It depends on no other tandem crate.

pub mod agent;
pub mod ifmib;
pub mod sbd;
pub mod snmp;
pub mod watchdog;
