//! `replctl`: tandem's admin CLI for replicated resources (DESIGN §4).
//!
//! `create-md`, `dump-md` and `dump` work on the disks and the config directly, with no daemon
//! running, as drbdadm does. The commands that talk to `replicatord` arrive with it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use replicator::config::{self, BackingDisk, Config, MetaDisk};
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

fn run(cli: &Cli) -> Result<()> {
    match &cli.command {
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
    let _ = &cli.run_dir;
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("replctl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
