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

/// A node's (or a switch port's) power state, as fence agents report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    /// On.
    On,
    /// Off.
    Off,
}

impl Power {
    /// "on" or "off".
    pub fn name(self) -> &'static str {
        match self {
            Power::On => "on",
            Power::Off => "off",
        }
    }

    /// "ON" or "OFF", as fence agents print it.
    pub fn upper(self) -> &'static str {
        match self {
            Power::On => "ON",
            Power::Off => "OFF",
        }
    }
}

/// This host's name (the default node name, as sbd's `uname -n`).
pub fn hostname() -> std::io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/hostname")?
        .trim()
        .to_string())
}
