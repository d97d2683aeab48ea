//! `fence_tandem_ifmib`: a fence agent (fence-agents API) that switches a node's switch port
//! off and on through SNMP IF-MIB ifAdminStatus, as fence-agents' `fence_ifmib` does.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use fencing::agent::{self, AgentDef, FenceDevice, Kind, Options, Outlet, Param, Power};
use fencing::ifmib;
use fencing::snmp::client::{Client, Security};

fn definition() -> AgentDef {
    let mut params = vec![
        Param::string("ip", Some('a'), "IP address or hostname of fencing device")
            .required()
            .alias("ipaddr"),
        Param::string(
            "ipport",
            Some('u'),
            "TCP/UDP port to use for connection with device",
        )
        .kind(Kind::Integer)
        .default("161"),
        Param::string("community", Some('c'), "Set the community string"),
        Param::string("snmp_version", Some('d'), "Specifies SNMP version to use")
            .kind(Kind::Select(&["1", "2c", "3"]))
            .default("2c"),
        Param::string("username", Some('l'), "Login name (SNMPv3 user)").alias("login"),
        Param::string(
            "password",
            Some('p'),
            "Login password (SNMPv3 authentication)",
        )
        .alias("passwd"),
        Param::string("snmp_auth_prot", Some('b'), "Set authentication protocol")
            .kind(Kind::Select(&["MD5", "SHA"])),
        Param::string("snmp_sec_level", Some('E'), "Set security level").kind(Kind::Select(&[
            "noAuthNoPriv",
            "authNoPriv",
            "authPriv",
        ])),
        Param::string("snmp_priv_prot", Some('B'), "Set privacy protocol")
            .kind(Kind::Select(&["DES", "AES"])),
        Param::string(
            "snmp_priv_passwd",
            Some('P'),
            "Set privacy protocol password",
        ),
    ];
    params.extend(agent::common_params());
    AgentDef {
        name: "fence_tandem_ifmib",
        shortdesc: "Fence agent for IF MIB (tandem)",
        longdesc: "fence_tandem_ifmib fences a node by switching its switch port off with \
                   SNMP IF-MIB::ifAdminStatus (v1, v2c, or v3 with USM), as fence_ifmib does. \
                   The plug is an ifIndex or an ifDescr. A PoE port that goes down also cuts \
                   the node's power.",
        vendor_url: "http://www.ietf.org/wg/concluded/ifmib.html",
        params,
    }
}

struct Switch {
    client: Client,
    indexes: HashMap<String, u32>,
}

impl Switch {
    fn index(&mut self, plug: &str) -> anyhow::Result<u32> {
        if let Some(&i) = self.indexes.get(plug) {
            return Ok(i);
        }
        let i = ifmib::port_index(&mut self.client, plug)?;
        self.indexes.insert(plug.to_string(), i);
        Ok(i)
    }
}

impl FenceDevice for Switch {
    fn status(&mut self, plug: &str) -> anyhow::Result<Power> {
        let i = self.index(plug)?;
        Ok(ifmib::status(&mut self.client, i)?)
    }

    fn set(&mut self, plug: &str, want: Power) -> anyhow::Result<()> {
        let i = self.index(plug)?;
        Ok(ifmib::set(&mut self.client, i, want)?)
    }

    fn list(&mut self) -> anyhow::Result<Vec<Outlet>> {
        let statuses = ifmib::statuses(&mut self.client)?;
        Ok(ifmib::list(&mut self.client)?
            .into_iter()
            .map(|p| Outlet {
                status: statuses
                    .iter()
                    .find(|(i, _)| *i == p.index)
                    .map(|(_, s)| *s),
                id: p.descr,
                alias: p.alias,
            })
            .collect())
    }
}

fn connect(opts: &Options) -> anyhow::Result<Box<dyn FenceDevice>> {
    let level = opts.get("snmp_sec_level");
    let auth = opts
        .get("snmp_auth_prot")
        .or(opts.get("password").map(|_| "MD5"))
        .zip(opts.get("password"))
        .filter(|_| level != Some("noAuthNoPriv"));
    let privacy = opts
        .get("snmp_priv_prot")
        .or(opts.get("snmp_priv_passwd").map(|_| "DES"))
        .zip(opts.get("snmp_priv_passwd"))
        .filter(|_| !matches!(level, Some("noAuthNoPriv" | "authNoPriv")));
    let security = Security::from_options(
        opts.get("snmp_version").unwrap_or("2c"),
        opts.get("community"),
        opts.get("username"),
        auth,
        privacy,
    )
    .map_err(anyhow::Error::msg)?;
    let port: u16 = opts
        .get("ipport")
        .unwrap_or("161")
        .parse()
        .context("ipport")?;
    let mut client = Client::new(opts.get("ip").context("ip is required")?, port, security)?;
    client.timeout = Duration::from_secs(1);
    client.tries = 3;
    Ok(Box::new(Switch {
        client,
        indexes: HashMap::new(),
    }))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    agent::run(&definition(), &args, std::io::stdin(), connect)
}
