//! `replctl`: tandem's admin CLI for replicated resources (DESIGN §4).
//!
//! `create-md`, `dump-md` and `dump` work on the disks and the config directly, with no daemon
//! running, as drbdadm does; the others ask `replicatord` over its control socket.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;

use replicator::config::{self, BackingDisk, Config, MetaDisk};
use replicator::control::{self, Request, Response};
use replicator::md::{self, disk::MdLocation};

/// Admin CLI for tandem's replicated resources.
#[derive(Parser)]
#[command(name = "replctl", version, about)]
struct Cli {
    /// The configuration file.
    #[arg(short = 'c', long = "config", global = true, default_value = config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Which `on NAME` section is this host (default: the hostname).
    #[arg(long, global = true)]
    node: Option<String>,
    /// Directory of control sockets and NBD Unix sockets.
    #[arg(long = "run-dir", global = true, default_value = "/run/tandem")]
    run_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write fresh meta-data on the resource's disk(s) of this node.
    #[command(name = "create-md")]
    CreateMd {
        /// The resource.
        resource: String,
        /// Overwrite existing meta-data, a filesystem or other data.
        #[arg(long)]
        force: bool,
    },
    /// Print the meta-data in drbdmeta's dump-md format.
    #[command(name = "dump-md")]
    DumpMd {
        /// The resource.
        resource: String,
        /// Dump unclean meta-data too (the activity log not applied).
        #[arg(long)]
        force: bool,
    },
    /// Print the validated configuration, normalized.
    Dump {
        /// Only this resource.
        resource: Option<String>,
    },
    /// Attach the disk and connect to the peer (replicatord must run).
    Up {
        /// The resource.
        resource: String,
    },
    /// Disconnect and detach.
    Down {
        /// The resource.
        resource: String,
    },
    /// Promote to Primary.
    Primary {
        /// The resource.
        resource: String,
        /// Make a disk that is not UpToDate UpToDate (the initial sync).
        #[arg(long)]
        force: bool,
    },
    /// Demote to Secondary.
    Secondary {
        /// The resource.
        resource: String,
    },
    /// Connect to the peer.
    Connect {
        /// The resource.
        resource: String,
        /// Resolve a split brain by giving up this node's changes.
        #[arg(long = "discard-my-data")]
        discard_my_data: bool,
    },
    /// Disconnect from the peer (StandAlone).
    Disconnect {
        /// The resource.
        resource: String,
    },
    /// Start a new data generation.
    #[command(name = "new-current-uuid")]
    NewCurrentUuid {
        /// The resource.
        resource: String,
        /// Also clear the bitmap: skip the initial sync of two fresh, identical disks.
        #[arg(long = "clear-bitmap", required = true)]
        clear_bitmap: bool,
    },
    /// Compare every block with the peer's (verify-alg); differences are marked out of sync.
    Verify {
        /// The resource.
        resource: String,
    },
    /// Mark this Secondary's disk Outdated so it cannot be promoted.
    Outdate {
        /// The resource.
        resource: String,
    },
    /// Discard this node's data: full sync from the peer.
    Invalidate {
        /// The resource.
        resource: String,
    },
    /// Discard the peer's data: full sync to the peer.
    #[command(name = "invalidate-remote")]
    InvalidateRemote {
        /// The resource.
        resource: String,
    },
    /// Show the state of one resource or all, as drbdadm status does.
    Status {
        /// Only this resource.
        resource: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Stream state changes, one JSON object per line.
    Events,
    /// Two replicated nodes on loopback with file-backed disks, no config needed.
    Demo {
        /// Keep disks, config and logs in this directory (default: a temp dir, removed after).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Stop after the initial sync and the instructions instead of waiting for Ctrl-C.
        #[arg(long = "exit-after-sync")]
        exit_after_sync: bool,
    },
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string())
}

fn load(cli: &Cli) -> Result<Config> {
    let config = Config::load(&cli.config).map_err(|e| match e {
        config::ConfigError::Io { .. } => anyhow::anyhow!("{e} (pass -c FILE)"),
        e => e.into(),
    })?;
    for w in &config.warnings {
        eprintln!("{w}");
    }
    Ok(config)
}

/// The (volume number, data and meta-data location) of every disk of `resource` on this node.
fn locations(cli: &Cli, config: &Config, resource: &str) -> Result<Vec<(u32, MdLocation)>> {
    let node = cli.node.clone().unwrap_or_else(hostname);
    let view = config.node_view(resource, &node)?;
    let mut out = Vec::new();
    for v in &view.local.volumes {
        let BackingDisk::Path(data) = &v.disk else {
            continue;
        };
        let external = match &v.meta_disk {
            Some(MetaDisk::Internal) | None => None,
            Some(MetaDisk::External { path, index }) => Some((path.clone(), *index)),
        };
        out.push((
            v.number,
            MdLocation {
                data: data.clone(),
                external,
            },
        ));
    }
    if out.is_empty() {
        bail!("resource {resource} has no disk on node {node} ('disk none'); nothing to do");
    }
    Ok(out)
}

fn create_md(cli: &Cli, resource: &str, force: bool) -> Result<()> {
    let config = load(cli)?;
    let r = config.resource(resource)?;
    for (number, loc) in locations(cli, &config, resource)? {
        let created = md::disk::create(&loc, r.disk.al_extents, r.disk.size_bytes, force)
            .with_context(|| format!("create-md {resource}/{number}"))?;
        if let Some(what) = &created.overrode {
            eprintln!("{resource}/{number}: --force: overwriting {what}");
        }
        println!("initializing activity log");
        println!(
            "initializing bitmap ({} KB) to all zero",
            created.layout.bm_area_bytes().div_ceil(1024)
        );
        println!("Writing meta data...");
        println!("New drbd meta data block successfully created.");
        println!(
            "{resource}/{number}: meta-data on {} at byte {}; {} bytes usable for data",
            created.md_path, created.layout.md_offset, created.usable_bytes
        );
    }
    Ok(())
}

fn dump_md(cli: &Cli, resource: &str, force: bool) -> Result<()> {
    let config = load(cli)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let header = format!("{}> replctl {}", hostname(), args.join(" "));
    for (number, loc) in locations(cli, &config, resource)? {
        let read =
            md::disk::read(&loc, force).with_context(|| format!("dump-md {resource}/{number}"))?;
        if !read.sb.al_is_clean() {
            eprintln!("{resource}/{number}: meta-data is unclean (activity log not applied); dumping it because of --force");
        }
        print!(
            "{}",
            md::dump::format(&read.sb, &read.layout, &read.bitmap, &header, now)
        );
    }
    Ok(())
}

/// Sends one request to replicatord and returns its response.
fn ask(cli: &Cli, request: &Request) -> Result<Response> {
    control::ask(&cli.run_dir.join(control::SOCKET_NAME), request, None).map_err(|e| match e {
        control::AskError::Connect { path, .. } => anyhow::anyhow!(
            "replicatord is not running for --run-dir {} (cannot connect to {}); start it with \
             'replicatord --node NAME --run-dir {}'",
            cli.run_dir.display(),
            path.display(),
            cli.run_dir.display()
        ),
        control::AskError::Closed => {
            anyhow::anyhow!("replicatord closed the connection without answering")
        }
        e => e.into(),
    })
}

fn simple(cli: &Cli, request: Request) -> Result<()> {
    let r = ask(cli, &request)?;
    if !r.ok {
        bail!("{}", r.error.unwrap_or_else(|| "failed".into()));
    }
    Ok(())
}

fn run(cli: &Cli) -> Result<()> {
    let res = |r: &String| r.clone();
    match &cli.command {
        Command::Demo {
            dir,
            exit_after_sync,
        } => replicator::demo::run(replicator::demo::Options {
            dir: dir.clone(),
            exit_after_sync: *exit_after_sync,
        }),
        Command::Up { resource } => simple(
            cli,
            Request::Up {
                resource: res(resource),
            },
        ),
        Command::Down { resource } => simple(
            cli,
            Request::Down {
                resource: res(resource),
            },
        ),
        Command::Primary { resource, force } => simple(
            cli,
            Request::Primary {
                resource: res(resource),
                force: *force,
            },
        ),
        Command::Secondary { resource } => simple(
            cli,
            Request::Secondary {
                resource: res(resource),
            },
        ),
        Command::Connect {
            resource,
            discard_my_data,
        } => simple(
            cli,
            Request::Connect {
                resource: res(resource),
                discard_my_data: *discard_my_data,
            },
        ),
        Command::Disconnect { resource } => simple(
            cli,
            Request::Disconnect {
                resource: res(resource),
            },
        ),
        Command::Verify { resource } => simple(
            cli,
            Request::Verify {
                resource: res(resource),
            },
        ),
        Command::Outdate { resource } => simple(
            cli,
            Request::Outdate {
                resource: res(resource),
            },
        ),
        Command::Invalidate { resource } => simple(
            cli,
            Request::Invalidate {
                resource: res(resource),
            },
        ),
        Command::InvalidateRemote { resource } => simple(
            cli,
            Request::InvalidateRemote {
                resource: res(resource),
            },
        ),
        Command::NewCurrentUuid { resource, .. } => simple(
            cli,
            Request::NewCurrentUuidClearBitmap {
                resource: res(resource),
            },
        ),
        Command::Status { resource, json } => {
            let r = ask(
                cli,
                &Request::Status {
                    resource: resource.clone(),
                },
            )?;
            if !r.ok {
                bail!("{}", r.error.unwrap_or_else(|| "failed".into()));
            }
            let all = r.status.unwrap_or_default();
            if *json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print!("{}", control::format_status(&all));
            }
            Ok(())
        }
        Command::Events => {
            let path = cli.run_dir.join(control::SOCKET_NAME);
            let mut stream = UnixStream::connect(&path).with_context(|| {
                format!(
                    "replicatord is not running (cannot connect to {})",
                    path.display()
                )
            })?;
            stream.write_all(b"{\"cmd\":\"events\"}\n")?;
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            let stdout = std::io::stdout();
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 {
                    return Ok(());
                }
                let mut out = stdout.lock();
                out.write_all(line.as_bytes())?;
                out.flush()?;
            }
        }
        Command::CreateMd { resource, force } => create_md(cli, resource, *force),
        Command::DumpMd { resource, force } => dump_md(cli, resource, *force),
        Command::Dump { resource } => {
            let config = load(cli)?;
            if let Some(name) = resource {
                config.resource(name)?;
            }
            print!("{}", config::dump::dump(&config, resource.as_deref()));
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("replctl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
