//! Floating IP (`vip ADDR/PREFIX;`): the address clients reach the Primary's exports at.
//!
//! Start adds the address to the interface whose subnet holds it (or the configured one) with
//! `ip addr add`, then announces it with gratuitous ARP (`arping -U`, iputils) so switches and
//! clients forget the old node's MAC at once instead of after their ARP cache expires. Stop
//! removes it; monitor says whether it is there. Like Pacemaker's `IPaddr2`, minus the agent.
//!
//! IPv6: the address is added with `nodad` (the node that held it is fenced, duplicate address
//! detection would only delay it) and no unsolicited neighbour advertisement is sent (there is
//! no `arping` for IPv6 in iputils; neighbours find the new MAC by neighbour-unreachability
//! detection within seconds).
//!
//! The parsing of `ip -o addr show` and the choice of interface are pure and unit-tested; the
//! network-namespace test is tests/e2e/cluster_resources.rs.

use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use crate::exec::{self, Ended};
use crate::group::{Member, MemberError};

/// Limit for one `ip` command.
const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// Gratuitous ARPs sent after start (one a second, as IPaddr2's default `arp_count` 5 does;
/// three are enough for a switch and a client that drops one).
pub const GARP_COUNT: u32 = 3;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum VipError {
    /// No interface has an address in a subnet that holds the floating IP.
    #[error("no interface has a subnet holding {addr}: name one (vip {addr}/{prefix} dev IF)")]
    NoInterface {
        /// The floating IP.
        addr: IpAddr,
        /// Its prefix length.
        prefix: u8,
    },
    /// A command could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// `ip` or `arping`.
        program: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// A command failed.
    #[error("{command} failed ({ended:?}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// How it ended.
        ended: Ended,
        /// What it said.
        stderr: String,
    },
}

/// One address of one interface, as `ip -o addr show` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfAddr {
    /// Interface name (without an `@peer` suffix).
    pub interface: String,
    /// The address.
    pub addr: IpAddr,
    /// Its prefix length.
    pub prefix: u8,
}

/// Parses the output of `ip -o addr show`: one line per address,
/// `2: eth0    inet 10.0.0.11/24 brd 10.0.0.255 scope global eth0\ ...`.
pub fn parse_ip_addr(output: &str) -> Vec<IfAddr> {
    let mut out = Vec::new();
    for line in output.lines() {
        let mut words = line.split_whitespace();
        let (Some(_index), Some(name), Some(family), Some(cidr)) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            continue;
        };
        if family != "inet" && family != "inet6" {
            continue;
        }
        let name = name.split('@').next().unwrap_or(name);
        let Some((a, p)) = cidr.split_once('/') else {
            continue;
        };
        let (Ok(addr), Ok(prefix)) = (a.parse::<IpAddr>(), p.parse::<u8>()) else {
            continue;
        };
        out.push(IfAddr {
            interface: name.to_string(),
            addr,
            prefix,
        });
    }
    out
}

/// True when `addr` is in the subnet `net/prefix` (same family).
pub fn in_subnet(net: IpAddr, prefix: u8, addr: IpAddr) -> bool {
    match (net, addr) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let p = u32::from(prefix.min(32));
            let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let p = u32::from(prefix.min(128));
            let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// The interface to put `vip` on: the one with the most specific subnet holding it (the
/// floating address itself does not count; loopback never).
pub fn choose_interface(addrs: &[IfAddr], vip: IpAddr) -> Option<String> {
    addrs
        .iter()
        .filter(|a| a.addr != vip && a.interface != "lo" && in_subnet(a.addr, a.prefix, vip))
        .max_by_key(|a| a.prefix)
        .map(|a| a.interface.clone())
}

/// A floating IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vip {
    /// The address.
    pub addr: IpAddr,
    /// Its prefix length.
    pub prefix: u8,
    /// The interface to use; `None`: the one whose subnet holds the address.
    pub interface: Option<String>,
}

fn run_checked(program: &'static str, args: &[String]) -> Result<String, VipError> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let done = exec::run(cmd, IP_TIMEOUT).map_err(|source| VipError::Spawn { program, source })?;
    if done.ended != Ended::Exited(0) {
        return Err(VipError::Command {
            command: format!("{program} {}", args.join(" ")),
            ended: done.ended,
            stderr: done.stderr.trim().to_string(),
        });
    }
    Ok(done.stdout)
}

/// The addresses of this host (this network namespace).
pub fn host_addresses() -> Result<Vec<IfAddr>, VipError> {
    let out = run_checked("ip", &["-o".into(), "addr".into(), "show".into()])?;
    Ok(parse_ip_addr(&out))
}

/// Sends `count` gratuitous ARPs for `addr` out of `interface`, one a second, in a thread of
/// its own so the caller (the failover) does not wait the seconds that takes.
pub fn send_garp(
    interface: &str,
    addr: IpAddr,
    count: u32,
) -> std::thread::JoinHandle<Result<(), VipError>> {
    let args = vec![
        "-U".to_string(),
        "-c".into(),
        count.to_string(),
        "-I".into(),
        interface.to_string(),
        addr.to_string(),
    ];
    std::thread::spawn(move || {
        let mut cmd = Command::new("arping");
        cmd.args(&args);
        let limit = Duration::from_secs(u64::from(count) + 5);
        let done = exec::run(cmd, limit).map_err(|source| VipError::Spawn {
            program: "arping",
            source,
        })?;
        if done.ended != Ended::Exited(0) {
            return Err(VipError::Command {
                command: format!("arping {}", args.join(" ")),
                ended: done.ended,
                stderr: done.stderr.trim().to_string(),
            });
        }
        Ok(())
    })
}

impl Vip {
    /// `ADDR/PREFIX` as `ip` takes it.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.addr, self.prefix)
    }

    /// The interface that holds the address now, if any.
    fn holder(&self, addrs: &[IfAddr]) -> Option<String> {
        addrs
            .iter()
            .find(|a| a.addr == self.addr)
            .map(|a| a.interface.clone())
    }

    /// Adds the address (nothing if it is there already) and starts announcing it. Returns the
    /// announcement's thread (`None` for IPv6 or when the address was already there); the
    /// caller may drop it.
    pub fn start(&self) -> Result<Option<std::thread::JoinHandle<Result<(), VipError>>>, VipError> {
        let addrs = host_addresses()?;
        if self.holder(&addrs).is_some() {
            return Ok(None);
        }
        let interface = match &self.interface {
            Some(i) => i.clone(),
            None => choose_interface(&addrs, self.addr).ok_or(VipError::NoInterface {
                addr: self.addr,
                prefix: self.prefix,
            })?,
        };
        let mut args: Vec<String> = vec![
            "addr".into(),
            "add".into(),
            self.cidr(),
            "dev".into(),
            interface.clone(),
        ];
        if self.addr.is_ipv6() {
            args.push("nodad".into());
        }
        run_checked("ip", &args)?;
        Ok(match self.addr {
            IpAddr::V4(_) => Some(send_garp(&interface, self.addr, GARP_COUNT)),
            IpAddr::V6(_) => None,
        })
    }

    /// Removes the address wherever it is (nothing if it is gone).
    pub fn stop(&self) -> Result<(), VipError> {
        let addrs = host_addresses()?;
        let Some(interface) = self.holder(&addrs) else {
            return Ok(());
        };
        let args = vec![
            "addr".into(),
            "del".into(),
            self.cidr(),
            "dev".into(),
            interface,
        ];
        run_checked("ip", &args)?;
        Ok(())
    }

    /// True when the address is on an interface of this host.
    pub fn monitor(&self) -> Result<bool, VipError> {
        Ok(self.holder(&host_addresses()?).is_some())
    }
}

impl Member for Vip {
    fn name(&self) -> String {
        format!("vip {}", self.cidr())
    }
    fn start(&mut self) -> Result<(), MemberError> {
        Vip::start(self)?;
        Ok(())
    }
    fn stop(&mut self) -> Result<(), MemberError> {
        Ok(Vip::stop(self)?)
    }
    fn monitor(&mut self) -> Result<bool, MemberError> {
        Ok(Vip::monitor(self)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP_OUTPUT: &str = "\
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
1: lo    inet6 ::1/128 scope host \\       valid_lft forever preferred_lft forever
2: eth0    inet 10.0.0.11/24 brd 10.0.0.255 scope global eth0\\       valid_lft forever preferred_lft forever
2: eth0    inet 10.0.0.10/24 scope global secondary eth0\\       valid_lft forever preferred_lft forever
3: eth1@if7    inet 192.168.5.2/16 scope global eth1\\       valid_lft forever preferred_lft forever
4: eth2    inet 192.168.5.3/24 scope global eth2\\       valid_lft forever preferred_lft forever
4: eth2    inet6 fd00::2/64 scope global \\       valid_lft forever preferred_lft forever
";

    #[test]
    fn ip_addr_output_parses() {
        let a = parse_ip_addr(IP_OUTPUT);
        assert_eq!(a.len(), 7);
        assert_eq!(
            a[2],
            IfAddr {
                interface: "eth0".into(),
                addr: "10.0.0.11".parse().unwrap(),
                prefix: 24
            }
        );
        assert_eq!(
            a[4].interface, "eth1",
            "the @peer suffix is not part of the name"
        );
        assert_eq!(a[6].addr, "fd00::2".parse::<IpAddr>().unwrap());
        assert!(parse_ip_addr("garbage\n\n1: x link/ether").is_empty());
    }

    #[test]
    fn subnets() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(in_subnet(ip("10.0.0.11"), 24, ip("10.0.0.10")));
        assert!(!in_subnet(ip("10.0.0.11"), 24, ip("10.0.1.10")));
        assert!(in_subnet(ip("10.0.0.11"), 0, ip("192.168.1.1")));
        assert!(in_subnet(ip("10.0.0.11"), 32, ip("10.0.0.11")));
        assert!(!in_subnet(ip("10.0.0.11"), 32, ip("10.0.0.12")));
        assert!(in_subnet(ip("fd00::2"), 64, ip("fd00::ffff")));
        assert!(!in_subnet(ip("fd00::2"), 64, ip("fd01::2")));
        assert!(
            !in_subnet(ip("10.0.0.11"), 0, ip("fd00::2")),
            "families differ"
        );
    }

    #[test]
    fn the_most_specific_subnet_wins_and_loopback_never() {
        let a = parse_ip_addr(IP_OUTPUT);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            choose_interface(&a, ip("10.0.0.20")).as_deref(),
            Some("eth0")
        );
        assert_eq!(
            choose_interface(&a, ip("192.168.5.9")).as_deref(),
            Some("eth2"),
            "a /24 beats a /16"
        );
        assert_eq!(
            choose_interface(&a, ip("192.168.9.9")).as_deref(),
            Some("eth1")
        );
        assert_eq!(
            choose_interface(&a, ip("fd00::10")).as_deref(),
            Some("eth2")
        );
        assert_eq!(choose_interface(&a, ip("127.0.0.5")), None);
        assert_eq!(choose_interface(&a, ip("172.16.0.1")), None);
    }

    #[test]
    fn names_and_cidr() {
        let v = Vip {
            addr: "10.0.0.10".parse().unwrap(),
            prefix: 24,
            interface: None,
        };
        assert_eq!(v.cidr(), "10.0.0.10/24");
        assert_eq!(Member::name(&v), "vip 10.0.0.10/24");
    }
}
