//! Fencing a node with one of its configured methods, through the `fencing` crate (blocking;
//! run on a thread of its own).

use std::path::PathBuf;
use std::time::Duration;

use fencing::sbd::format::{Command, NodeName};
use fencing::sbd::ops::{self, DeviceOptions};
use fencing::snmp::client::{Client, Security};
use fencing::snmp::message::CommunityVersion;
use fencing::{ifmib, Power};
use replicator::config::{ClusterSbd, FenceMethod};

/// The SNMP port when `switch` names none.
const SNMP_PORT: u16 = 161;
/// Wait per SNMP request.
const SNMP_TIMEOUT: Duration = Duration::from_secs(1);
/// SNMP tries per request.
const SNMP_TRIES: u32 = 3;
/// How long a port may take to report down (fence-agents' power_timeout).
const POWER_TIMEOUT: Duration = Duration::from_secs(20);
/// Status polls while waiting for it.
const POWER_POLL: Duration = Duration::from_millis(250);
/// Bound on each SBD device I/O.
const SBD_IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The method's short name, for logs and status.
pub fn method_name(m: &FenceMethod) -> &'static str {
    match m {
        FenceMethod::Ifmib { .. } => "ifmib",
        FenceMethod::Sbd => "sbd",
    }
}

/// Splits `host` or `host:port` (IPv6 in brackets).
fn host_port(switch: &str) -> (String, u16) {
    if let Some(rest) = switch.strip_prefix('[') {
        if let Some((h, p)) = rest.split_once("]:") {
            if let Ok(p) = p.parse() {
                return (h.to_string(), p);
            }
        }
        return (rest.trim_end_matches(']').to_string(), SNMP_PORT);
    }
    match switch.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(p) => (h.to_string(), p),
            Err(_) => (switch.to_string(), SNMP_PORT),
        },
        _ => (switch.to_string(), SNMP_PORT),
    }
}

/// Fences `node` with `method`; Ok once confirmed off (ifmib: the port reports down; sbd: the
/// poison pill was written on a majority of devices and msgwait has passed).
pub fn fence(
    node: &str,
    me: &str,
    method: &FenceMethod,
    sbd: Option<&ClusterSbd>,
) -> Result<(), String> {
    match method {
        FenceMethod::Ifmib {
            switch,
            community,
            port,
        } => {
            let (host, snmp_port) = host_port(switch);
            let security = Security::Community {
                version: CommunityVersion::V2c,
                community: community.clone(),
            };
            let mut client = Client::new(&host, snmp_port, security)
                .map_err(|e| format!("ifmib: switch {switch}: {e}"))?;
            client.timeout = SNMP_TIMEOUT;
            client.tries = SNMP_TRIES;
            let index = ifmib::port_index(&mut client, port)
                .map_err(|e| format!("ifmib: switch {switch} port {port}: {e}"))?;
            ifmib::set_power(&mut client, index, Power::Off, POWER_TIMEOUT, POWER_POLL)
                .map_err(|e| format!("ifmib: switch {switch} port {port}: {e}"))
        }
        FenceMethod::Sbd => {
            let sbd = sbd.ok_or("sbd: the cluster has no 'sbd { device ...; }' section")?;
            let target = NodeName::new(node).map_err(|e| format!("sbd: node {node}: {e}"))?;
            let from = NodeName::new(me).map_err(|e| format!("sbd: node {me}: {e}"))?;
            let options = DeviceOptions {
                file_sector_size: None,
                io_timeout: SBD_IO_TIMEOUT,
            };
            let devices = [PathBuf::from(&sbd.device)];
            ops::deliver(&devices, options, &target, Command::Reset, &from)
                .map(|_| ())
                .map_err(|e| format!("sbd: reset to {node} on {}: {e}", sbd.device))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_addresses() {
        assert_eq!(host_port("10.0.0.1"), ("10.0.0.1".into(), 161));
        assert_eq!(host_port("10.0.0.1:1161"), ("10.0.0.1".into(), 1161));
        assert_eq!(host_port("switch.lan"), ("switch.lan".into(), 161));
        assert_eq!(host_port("[fe80::1]:162"), ("fe80::1".into(), 162));
        assert_eq!(host_port("fe80::1"), ("fe80::1".into(), 161));
    }
}
