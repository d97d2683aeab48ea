//! The replication core: one resource's state machine, pure.
//!
//! [`Node`] takes [`Event`]s (admin commands, client IO, local disk completions, packets from
//! the peer, timer ticks) with the current time, and returns [`Action`]s (local IO to submit,
//! packets to send, replies to complete). It never touches a socket, a file or a clock, so the
//! same code runs under `replicatord`'s drivers and under a deterministic simulator.
//!
//! States and their names are DRBD's (Primary/Secondary; UpToDate, Inconsistent, ...;
//! StandAlone, Connecting, Connected; Established, SyncSource, SyncTarget).

pub mod al;
pub mod bitmap;
mod node;
pub mod uuid;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

pub use node::*;
