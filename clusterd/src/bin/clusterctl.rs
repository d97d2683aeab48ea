//! `clusterctl`: the admin CLI of clusterd (DESIGN §4, §8), a client of
//! `<run-dir>/clusterd.sock`; also replicatord's `fence-peer` handler.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use clusterd::control::{self, Request, Response};
use replicator::config;
use replicator::control::AskError;

/// Admin CLI of tandem's cluster daemon.
#[derive(Parser)]
#[command(name = "clusterctl", version, about)]
struct Cli {
    /// The configuration file (unused by the commands so far; accepted as by every tandem tool).
    #[arg(short = 'c', long = "config", global = true, default_value = config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Which node is this host (unused so far; the run directory picks the clusterd).
    #[arg(long, global = true)]
    node: Option<String>,
    /// Directory of clusterd's control socket.
    #[arg(long = "run-dir", global = true, default_value = "/run/tandem")]
    run_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Nodes, quorum, where each resource runs, fence events, failed actions (as crm_mon).
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Put a node in standby: it gives up its Primaries and takes none.
    Standby {
        /// The node.
        node: String,
    },
    /// Take a node out of standby.
    Unstandby {
        /// The node.
        node: String,
    },
    /// Move a resource's Primary to a node (refused unless its replica is UpToDate).
    Move {
        /// The resource.
        resource: String,
        /// The node.
        node: String,
    },
    /// Forget a resource's failed actions and its move.
    Cleanup {
        /// The resource.
        resource: String,
    },
    /// replicatord's fence-peer handler: fence the peer through clusterd and exit with DRBD's
    /// code (7: peer fenced, 5: unreachable and not fenceable, 1: failed).
    #[command(name = "fence-peer")]
    FencePeer {
        /// The resource (default: $DRBD_RESOURCE).
        #[arg(long)]
        resource: Option<String>,
        /// The peer (default: $DRBD_PEER).
        #[arg(long)]
        peer: Option<String>,
    },
}

fn ask(cli: &Cli, request: &Request) -> Result<Response> {
    let path = cli.run_dir.join(control::SOCKET_NAME);
    replicator::control::ask(&path, request, None).map_err(|e| match e {
        AskError::Connect { path, .. } => anyhow::anyhow!(
            "clusterd is not running for --run-dir {} (cannot connect to {}); start it with \
             'clusterd --node NAME --run-dir {}'",
            cli.run_dir.display(),
            path.display(),
            cli.run_dir.display()
        ),
        AskError::Closed => anyhow::anyhow!("clusterd closed the connection without answering"),
        e => e.into(),
    })
}

fn simple(cli: &Cli, request: Request) -> Result<u8> {
    let r = ask(cli, &request)?;
    if !r.ok {
        bail!("{}", r.error.unwrap_or_else(|| "failed".into()));
    }
    Ok(0)
}

fn env_or(value: &Option<String>, names: &[&str], what: &str) -> Result<String> {
    if let Some(v) = value {
        return Ok(v.clone());
    }
    for n in names {
        if let Ok(v) = std::env::var(n) {
            if !v.is_empty() {
                return Ok(v);
            }
        }
    }
    bail!(
        "no {what}: pass --{what} or run as replicatord's fence-peer handler (${})",
        names[0]
    )
}

fn run(cli: &Cli) -> Result<u8> {
    match &cli.command {
        Command::Status { json } => {
            let r = ask(cli, &Request::Status)?;
            if !r.ok {
                bail!("{}", r.error.unwrap_or_else(|| "failed".into()));
            }
            let status = r.status.context("clusterd sent no status")?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", control::format_status(&status));
            }
            Ok(0)
        }
        Command::Standby { node } => simple(cli, Request::Standby { node: node.clone() }),
        Command::Unstandby { node } => simple(cli, Request::Unstandby { node: node.clone() }),
        Command::Move { resource, node } => simple(
            cli,
            Request::Move {
                resource: resource.clone(),
                node: node.clone(),
            },
        ),
        Command::Cleanup { resource } => simple(
            cli,
            Request::Cleanup {
                resource: resource.clone(),
            },
        ),
        Command::FencePeer { resource, peer } => {
            let resource = env_or(resource, &["DRBD_RESOURCE", "TANDEM_RESOURCE"], "resource")?;
            let peer = env_or(peer, &["DRBD_PEER", "TANDEM_PEER"], "peer")?;
            let r = ask(
                cli,
                &Request::FencePeer {
                    resource: resource.clone(),
                    peer: peer.clone(),
                },
            )?;
            if !r.ok {
                bail!("{}", r.error.unwrap_or_else(|| "failed".into()));
            }
            let code = r.exit_code.unwrap_or(1);
            eprintln!(
                "clusterctl: fence-peer {resource}: {peer} {}",
                match code {
                    control::FENCE_PEER_FENCED => "fenced".to_string(),
                    control::FENCE_PEER_UNREACHABLE => format!(
                        "unreachable, not fenced{}",
                        r.error.map(|e| format!(" ({e})")).unwrap_or_default()
                    ),
                    c => format!("not fenced (exit {c})"),
                }
            );
            Ok(u8::try_from(code).unwrap_or(1))
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("clusterctl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
