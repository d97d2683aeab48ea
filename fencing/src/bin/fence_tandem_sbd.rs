//! `fence_tandem_sbd`: a fence agent (fence-agents API) that fences a node by writing a poison
//! pill into its SBD slot on a majority of the devices, as fence-agents' `fence_sbd` does with
//! ClusterLabs sbd.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use fencing::agent::{self, AgentDef, FenceDevice, Kind, Options, Outlet, Param, Power};
use fencing::sbd::format::{Command, NodeName};
use fencing::sbd::ops::{self, DeviceOptions};

fn definition() -> AgentDef {
    let mut params = vec![
        Param::string(
            "devices",
            None,
            "SBD devices, comma-separated (at most three)",
        )
        .required(),
        Param::string("method", Some('m'), "Method to fence (onoff|cycle)")
            .kind(Kind::Select(&["onoff", "cycle"]))
            .default("cycle"),
        Param::string("io_timeout", None, "Seconds to wait for each SBD disk I/O")
            .kind(Kind::Second)
            .default("3"),
        Param::string(
            "sender",
            None,
            "The name written as the sender (default: hostname)",
        ),
    ];
    params.extend(agent::common_params());
    AgentDef {
        name: "fence_tandem_sbd",
        shortdesc: "Fence agent for SBD (tandem)",
        longdesc: "fence_tandem_sbd fences a node by writing a poison pill (off, or reset for \
                   reboot) into its slot on SBD devices compatible with ClusterLabs sbd, and \
                   waiting msgwait so the node's watchdog has killed it. The plug is the node's \
                   name. on clears the slot.",
        vendor_url: "https://github.com/ClusterLabs/sbd",
        params,
    }
}

struct Sbd {
    devices: Vec<PathBuf>,
    options: DeviceOptions,
    sender: NodeName,
    method_cycle: bool,
}

impl Sbd {
    fn send(&self, plug: &str, cmd: Command) -> anyhow::Result<()> {
        let target = NodeName::new(plug)?;
        ops::deliver(&self.devices, self.options, &target, cmd, &self.sender)?;
        Ok(())
    }
}

impl FenceDevice for Sbd {
    fn status(&mut self, plug: &str) -> anyhow::Result<Power> {
        let pill = ops::pill_delivered(&self.devices, self.options, &NodeName::new(plug)?)?;
        Ok(if pill { Power::Off } else { Power::On })
    }

    fn set(&mut self, plug: &str, want: Power) -> anyhow::Result<()> {
        self.send(
            plug,
            match want {
                Power::On => Command::Clear,
                Power::Off => Command::Off,
            },
        )
    }

    fn reboot(&mut self, plug: &str) -> Option<anyhow::Result<()>> {
        self.method_cycle.then(|| self.send(plug, Command::Reset))
    }

    fn list(&mut self) -> anyhow::Result<Vec<Outlet>> {
        let mut last = None;
        for path in &self.devices {
            match self.options.open(path).and_then(|dev| ops::list(&dev)) {
                Ok(entries) => {
                    return Ok(entries
                        .into_iter()
                        .map(|e| Outlet {
                            id: e.name.to_string(),
                            alias: e.name.to_string(),
                            status: Some(if e.mailbox.cmd.is_fencing() {
                                Power::Off
                            } else {
                                Power::On
                            }),
                        })
                        .collect())
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or_else(|| anyhow::anyhow!("no devices"), Into::into))
    }
}

fn connect(opts: &Options) -> anyhow::Result<Box<dyn FenceDevice>> {
    let devices: Vec<PathBuf> = opts
        .need("devices")
        .map_err(anyhow::Error::msg)?
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .collect();
    anyhow::ensure!(
        (1..=3).contains(&devices.len()),
        "devices: give one to three SBD devices"
    );
    let sender = match opts.get("sender") {
        Some(s) => s.to_string(),
        None => fencing::hostname()?,
    };
    Ok(Box::new(Sbd {
        devices,
        options: DeviceOptions {
            file_sector_size: None,
            io_timeout: opts
                .seconds("io_timeout")
                .map_err(anyhow::Error::msg)?
                .max(Duration::from_secs(1)),
        },
        sender: NodeName::new(&sender)?,
        method_cycle: opts.get("method") != Some("onoff"),
    }))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    agent::run(&definition(), &args, std::io::stdin(), connect)
}
