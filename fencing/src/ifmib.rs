//! IF-MIB port fencing, as fence-agents' `fence_ifmib`: a switch port is "on" when its
//! `ifAdminStatus` is up(1); off sets it to down(2). A port is named by its ifIndex (a number) or
//! by its `ifDescr`; `list` shows `ifDescr` and `ifAlias`. After a set, the status is polled until
//! the port reports the new state or the power timeout passes.

use std::time::{Duration, Instant};

use crate::snmp::ber::{Oid, Value};
use crate::snmp::client::{Client, SnmpError};
pub use crate::Power;

/// IF-MIB::ifDescr.
pub const IF_DESCR: &str = "1.3.6.1.2.1.2.2.1.2";
/// IF-MIB::ifAdminStatus.
pub const IF_ADMIN_STATUS: &str = "1.3.6.1.2.1.2.2.1.7";
/// IF-MIB::ifAlias.
pub const IF_ALIAS: &str = "1.3.6.1.2.1.31.1.1.1.18";
/// ifAdminStatus up.
pub const STATUS_UP: i32 = 1;
/// ifAdminStatus down.
pub const STATUS_DOWN: i32 = 2;

fn admin_status(power: Power) -> i32 {
    match power {
        Power::On => STATUS_UP,
        Power::Off => STATUS_DOWN,
    }
}

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum IfMibError {
    /// SNMP failed.
    #[error(transparent)]
    Snmp(#[from] SnmpError),
    /// No port of that name.
    #[error("no port named {0:?} on the switch (see 'list')")]
    NoSuchPort(String),
    /// The agent returned something that is not an ifAdminStatus.
    #[error("port {index}: ifAdminStatus is {value}, not an integer")]
    BadStatus {
        /// The ifIndex.
        index: u32,
        /// What came back.
        value: String,
    },
    /// The port did not reach the state in time.
    #[error("port {index} did not turn {want} within {timeout:?}")]
    PowerTimeout {
        /// The ifIndex.
        index: u32,
        /// The state wanted.
        want: &'static str,
        /// The timeout.
        timeout: Duration,
    },
}

fn oid(text: &str) -> Oid {
    Oid::parse(text).expect("IF-MIB constants parse")
}

/// A row of `list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// ifIndex.
    pub index: u32,
    /// ifDescr.
    pub descr: String,
    /// ifAlias ("" when the agent has none).
    pub alias: String,
}

/// The index a walk row is for (the last arc).
fn row_index(o: &Oid) -> u32 {
    *o.arcs().last().expect("OIDs have at least two arcs")
}

/// Finds `plug` among ifDescr rows: a number is an ifIndex, else an exact ifDescr.
pub fn find_port(plug: &str, descrs: &[(Oid, Value)]) -> Option<u32> {
    if let Ok(n) = plug.parse::<u32>() {
        return Some(n);
    }
    descrs
        .iter()
        .find(|(_, v)| v.to_text().trim_matches('"') == plug)
        .map(|(o, _)| row_index(o))
}

/// Maps a port name to its ifIndex.
pub fn port_index(client: &mut Client, plug: &str) -> Result<u32, IfMibError> {
    if let Ok(n) = plug.parse::<u32>() {
        return Ok(n);
    }
    let rows = client.walk(&oid(IF_DESCR))?;
    find_port(plug, &rows).ok_or_else(|| IfMibError::NoSuchPort(plug.to_string()))
}

/// Reads a port's state.
pub fn status(client: &mut Client, index: u32) -> Result<Power, IfMibError> {
    let target = oid(IF_ADMIN_STATUS).child(index);
    let rows = client.get(std::slice::from_ref(&target))?;
    match rows.first().map(|(_, v)| v) {
        Some(Value::Integer(STATUS_UP)) => Ok(Power::On),
        Some(Value::Integer(_)) => Ok(Power::Off),
        Some(other) => Err(IfMibError::BadStatus {
            index,
            value: other.to_text(),
        }),
        None => Err(IfMibError::BadStatus {
            index,
            value: "missing".into(),
        }),
    }
}

/// Sets a port's ifAdminStatus.
pub fn set(client: &mut Client, index: u32, want: Power) -> Result<(), IfMibError> {
    let target = oid(IF_ADMIN_STATUS).child(index);
    client.set(vec![(target, Value::Integer(admin_status(want)))])?;
    Ok(())
}

/// Every port's state, by ifIndex.
pub fn statuses(client: &mut Client) -> Result<Vec<(u32, Power)>, IfMibError> {
    Ok(client
        .walk(&oid(IF_ADMIN_STATUS))?
        .iter()
        .map(|(o, v)| {
            let power = if *v == Value::Integer(STATUS_UP) {
                Power::On
            } else {
                Power::Off
            };
            (row_index(o), power)
        })
        .collect())
}

/// Sets a port's state and polls until it reports it, at most `timeout`.
pub fn set_power(
    client: &mut Client,
    index: u32,
    want: Power,
    timeout: Duration,
    poll: Duration,
) -> Result<(), IfMibError> {
    set(client, index, want)?;
    let start = Instant::now();
    loop {
        if status(client, index)? == want {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(IfMibError::PowerTimeout {
                index,
                want: want.name(),
                timeout,
            });
        }
        std::thread::sleep(poll);
    }
}

/// The ports: ifDescr with ifAlias.
pub fn list(client: &mut Client) -> Result<Vec<Port>, IfMibError> {
    let descrs = client.walk(&oid(IF_DESCR))?;
    // ifAlias is in IF-MIB's ifXTable, which some agents lack: then no aliases.
    let aliases = client.walk(&oid(IF_ALIAS)).unwrap_or_default();
    Ok(descrs
        .iter()
        .map(|(o, v)| {
            let index = row_index(o);
            let alias = aliases
                .iter()
                .find(|(a, _)| row_index(a) == index)
                .map(|(_, v)| v.to_text())
                .unwrap_or_default();
            Port {
                index,
                descr: v.to_text(),
                alias,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_by_number_or_descr() {
        let rows = vec![
            (
                oid("1.3.6.1.2.1.2.2.1.2.1"),
                Value::OctetString(b"lo".to_vec()),
            ),
            (
                oid("1.3.6.1.2.1.2.2.1.2.7"),
                Value::OctetString(b"node0".to_vec()),
            ),
        ];
        assert_eq!(find_port("node0", &rows), Some(7));
        assert_eq!(find_port("3", &rows), Some(3));
        assert_eq!(find_port("node", &rows), None);
        assert_eq!(admin_status(Power::On), 1);
        assert_eq!(admin_status(Power::Off), 2);
    }
}
