//! The tandem cluster daemon.
//!
//! This crate will hold clusterd: membership by heartbeats, quorum, the fence-then-promote
//! decision core (pure: events and time in, actions out), resource groups and alerts, and the
//! `clusterctl` client. It arrives with its own issue, after replication and fencing; so far
//! only [`core`], the pure decision core, exists.

pub mod core;
