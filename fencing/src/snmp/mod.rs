//! SNMP for IF-MIB port fencing: a small sans-IO codec and a UDP client.
//!
//! - [`ber`]: the BER subset SNMP uses (TLVs, integers, OIDs, values).
//! - [`message`]: PDUs, v1/v2c community messages, v3 messages with USM parameters.
//! - [`usm`]: SNMPv3 keys, authentication (MD5/SHA) and privacy (DES/AES).
//! - [`client`]: the thin UDP driver: get, get-next, set, walk, with v3 engine discovery.

pub mod ber;
pub mod client;
pub mod message;
pub mod usm;
