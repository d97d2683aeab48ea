//! The tandem cluster daemon.
//!
//! This crate will hold clusterd: membership by heartbeats, quorum, the fence-then-promote
//! decision core (pure: events and time in, actions out), resource groups and alerts, and the
//! `clusterctl` client. It arrives with its own issue, after replication and fencing; so far
//! [`core`], the pure decision core, exists, and the pieces the daemon will drive:
//! - [`ocf`], [`group`], [`exec`]: OCF resource agents and ordered resource groups, run with
//!   a timeout that kills the agent's process group;
//! - [`vip`]: the floating IP, added with gratuitous ARP.

pub mod core;
pub mod exec;
pub mod group;
pub mod ocf;
pub mod vip;
