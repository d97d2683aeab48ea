//! Fencing for tandem.
//!
//! This crate will hold the SBD on-disk format (byte-compatible with ClusterLabs sbd), the SBD
//! watcher and its watchdog, SNMP IF-MIB port fencing, and the fence-agent compatible CLIs
//! (`fencectl`, `fence_tandem_sbd`, `fence_tandem_ifmib`). It depends on no other tandem crate.
