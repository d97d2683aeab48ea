//! The tandem cluster daemon.
//!
//! - [`core`]: the pure decision core (membership, quorum, fence-then-promote, standby and
//!   moves): events and time in, actions out;
//! - [`heartbeat`]: the heartbeat datagram, sans-IO;
//! - [`control`]: the JSON-lines protocol of `<run-dir>/clusterd.sock` spoken by `clusterctl`;
//! - [`ocf`], [`group`], [`exec`]: OCF resource agents and ordered resource groups, run with
//!   a timeout that kills the agent's process group;
//! - [`vip`]: the floating IP, added with gratuitous ARP;
//! - [`alert`]: Pacemaker alert agents run with Pacemaker's environment;
//! - `sim` (tests only): the seeded simulator of the core with partitions, crashes and fencing;
//! - [`daemon`]: the driver: UDP heartbeats, the tick, replicatord's control socket, fencing
//!   through the `fencing` crate, resource groups, alerts.

pub mod alert;
pub mod control;
pub mod core;
pub mod daemon;
pub mod exec;
pub mod group;
pub mod heartbeat;
pub mod ocf;
pub mod vip;

#[cfg(test)]
mod sim;
