//! `fencectl`: SBD slot management and the SBD watcher (options and output as ClusterLabs sbd's),
//! and the test watchdog helper.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use fencing::ifmib;
use fencing::sbd::format::{Command, NodeName, SectorSize, Timeouts, Uuid};
use fencing::sbd::ops::{self, Allocated, DeviceOptions};
use fencing::sbd::watch::{watch, WatchOptions};
use fencing::sbd::watcher::StartMode;
use fencing::snmp::client::{Client, Security};
use fencing::watchdog::{self, Watchdog};
use fencing::Power;

/// The most devices sbd accepts, and so do we.
const MAX_DEVICES: usize = 3;
/// How often the port status is polled after a set (as fence agents: every second).
const POWER_POLL: Duration = Duration::from_secs(1);

#[derive(Parser)]
#[command(
    name = "fencectl",
    version,
    about = "tandem fencing: SBD slots, the SBD watcher"
)]
struct Cli {
    /// The tandem configuration file.
    #[arg(
        short = 'c',
        long,
        global = true,
        default_value = "/etc/tandem/tandem.conf"
    )]
    config: PathBuf,
    /// This node's name (default: the hostname); the sender of SBD messages, the slot `watch` uses.
    #[arg(long, global = true)]
    node: Option<String>,
    /// Control sockets directory.
    #[arg(long, global = true, default_value = "/run/tandem")]
    run_dir: PathBuf,
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand)]
enum Top {
    /// SBD: shared-disk slots and poison pills, compatible with ClusterLabs sbd.
    Sbd(SbdArgs),
    /// SNMP IF-MIB port fencing: switch a node's switch port off and on (ifAdminStatus).
    Ifmib(IfmibArgs),
    /// The test watchdog helper (`--watchdog test:PGID` starts it): reads watchdog operations
    /// on stdin and kills process group PGID when not fed in time.
    #[command(hide = true)]
    TestWatchdog {
        /// The process group to kill.
        pgid: i32,
        /// The initial timeout in seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
}

#[derive(clap::Args)]
struct SbdArgs {
    /// An SBD device: a block device, a file, or iscsi://[USER%PASSWORD@]HOST[:PORT]/IQN/LUN;
    /// up to three, messages need more than half.
    #[arg(short = 'd', value_name = "DEV", required = true)]
    devices: Vec<PathBuf>,
    /// Watchdog timeout in seconds (create).
    #[arg(short = '1', value_name = "N")]
    watchdog_timeout: Option<u32>,
    /// Slot allocation timeout in seconds (create).
    #[arg(short = '2', value_name = "N")]
    allocate_timeout: Option<u32>,
    /// Loop timeout in seconds (create).
    #[arg(short = '3', value_name = "N")]
    loop_timeout: Option<u32>,
    /// msgwait in seconds (create; default twice the watchdog timeout).
    #[arg(short = '4', value_name = "N")]
    msgwait_timeout: Option<u32>,
    /// I/O timeout in seconds for every disk read and write.
    #[arg(short = 'I', value_name = "N", default_value_t = 3)]
    io_timeout: u64,
    /// Start mode for watch: 0 start always and clear the mailbox, 1 only if the mailbox is
    /// empty or holds exit.
    #[arg(short = 'S', value_name = "0|1", default_value_t = 0)]
    start_mode: u8,
    /// Sector size for regular files that have no SBD header yet (create); block devices use
    /// their own.
    #[arg(long, value_name = "BYTES")]
    sector_size: Option<u32>,
    /// The watchdog for watch: a watchdog device, or `test:PGID` for the test watchdog that
    /// kills process group PGID when not fed.
    #[arg(
        short = 'w',
        long,
        value_name = "DEV|test:PGID",
        default_value = "/dev/watchdog"
    )]
    watchdog: String,
    #[command(subcommand)]
    action: SbdAction,
}

#[derive(clap::Args)]
struct IfmibArgs {
    /// The switch's address.
    #[arg(long, value_name = "SWITCH")]
    ip: String,
    /// The switch's SNMP port.
    #[arg(long, default_value_t = 161)]
    port: u16,
    /// The community (v1, v2c).
    #[arg(long)]
    community: Option<String>,
    /// SNMP version: 1, 2c or 3.
    #[arg(long, default_value = "2c")]
    snmp_version: String,
    /// v3 user.
    #[arg(long)]
    username: Option<String>,
    /// v3 authentication protocol: MD5 or SHA.
    #[arg(long, requires = "auth_password")]
    auth_protocol: Option<String>,
    /// v3 authentication password.
    #[arg(long)]
    auth_password: Option<String>,
    /// v3 privacy protocol: DES or AES.
    #[arg(long, requires = "priv_password")]
    priv_protocol: Option<String>,
    /// v3 privacy password.
    #[arg(long)]
    priv_password: Option<String>,
    /// The port: an ifIndex or an ifDescr (needed except for list).
    #[arg(long)]
    plug: Option<String>,
    /// Seconds to wait for the port to reach the new state after on/off.
    #[arg(long, default_value_t = 20)]
    power_timeout: u64,
    /// Seconds to wait for each SNMP answer.
    #[arg(long, default_value_t = 1)]
    snmp_timeout: u64,
    /// SNMP tries per request.
    #[arg(long, default_value_t = 3)]
    snmp_retries: u32,
    /// on, off, reboot, status or list.
    action: IfmibAction,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum IfmibAction {
    On,
    Off,
    Reboot,
    Status,
    List,
}

#[derive(Subcommand)]
enum SbdAction {
    /// Initialise the devices: header and 255 empty slots (overwrites them, as sbd create).
    Create,
    /// Print each device's header.
    Dump,
    /// Print the allocated slots: slot, name, message, sender.
    List,
    /// Allocate a slot for NAME.
    Allocate {
        /// The node.
        name: String,
    },
    /// Write MSG (test, reset, off, exit, crashdump, clear) to NAME's slot and wait msgwait.
    Message {
        /// The node (LOCAL for this one).
        name: String,
        /// The message.
        msg: String,
    },
    /// Watch this node's slot and feed the watchdog while healthy.
    Watch,
}

fn node_name(cli_node: &Option<String>) -> anyhow::Result<NodeName> {
    let name = match cli_node {
        Some(n) => n.clone(),
        None => fencing::hostname().context("cannot read the hostname; give --node NAME")?,
    };
    Ok(NodeName::new(&name)?)
}

fn sbd(args: SbdArgs, node: &Option<String>) -> anyhow::Result<ExitCode> {
    if args.devices.len() > MAX_DEVICES {
        bail!("at most {MAX_DEVICES} devices (-d) are supported");
    }
    let file_sector_size = args.sector_size.map(SectorSize::new).transpose()?;
    let options = DeviceOptions {
        file_sector_size,
        io_timeout: Duration::from_secs(args.io_timeout.max(1)),
    };
    let mut out = std::io::stdout().lock();
    match args.action {
        SbdAction::Create => {
            let watchdog_s = args
                .watchdog_timeout
                .unwrap_or(Timeouts::DEFAULT.watchdog_s);
            let timeouts = Timeouts {
                watchdog_s,
                allocate_s: args
                    .allocate_timeout
                    .unwrap_or(Timeouts::DEFAULT.allocate_s),
                loop_s: args.loop_timeout.unwrap_or(Timeouts::DEFAULT.loop_s),
                msgwait_s: args
                    .msgwait_timeout
                    .unwrap_or_else(|| watchdog_s.saturating_mul(2)),
            };
            for path in &args.devices {
                writeln!(out, "Initializing device {}", shown(path))?;
                let dev = options.open(path)?;
                let uuid = Uuid::random();
                writeln!(
                    out,
                    "Creating version 2.1 header on device {} (uuid: {uuid})",
                    dev.path()
                )?;
                let header = ops::create(&dev, timeouts, uuid)?;
                writeln!(
                    out,
                    "Initializing {} slots on device {}",
                    header.slots,
                    dev.path()
                )?;
                writeln!(out, "Device {} is initialized.", dev.path())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        SbdAction::Dump => per_device(&args.devices, |path| {
            let header = ops::read_header(&options.open(path)?)?;
            writeln!(out, "==Dumping header on disk {}", shown(path))?;
            for line in ops::dump_lines(&header) {
                writeln!(out, "{line}")?;
            }
            writeln!(out, "==Header on disk {} is dumped", shown(path))?;
            Ok(())
        }),
        SbdAction::List => per_device(&args.devices, |path| {
            for entry in ops::list(&options.open(path)?)? {
                writeln!(out, "{entry}")?;
            }
            Ok(())
        }),
        SbdAction::Allocate { name } => {
            let name = NodeName::new(&name)?;
            for path in &args.devices {
                writeln!(
                    out,
                    "Trying to allocate slot for {name} on device {}.",
                    shown(path)
                )?;
                let dev = options.open(path)?;
                let allocated = ops::allocate(
                    &dev,
                    &name,
                    |slot| {
                        let _ = writeln!(out, "slot {slot} is unused - trying to own");
                    },
                    std::thread::sleep,
                )?;
                if let Allocated::Existing(slot) = allocated {
                    tracing::info!("{name} already owns slot {slot} on {}", dev.path());
                }
                writeln!(
                    out,
                    "Slot for {name} has been allocated on {}.",
                    shown(path)
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        SbdAction::Message { name, msg } => {
            let from = node_name(node)?;
            let target = if name == "LOCAL" {
                from.clone()
            } else {
                NodeName::new(&name)?
            };
            let cmd: Command = msg.parse()?;
            let delivery = ops::deliver(&args.devices, options, &target, cmd, &from)?;
            for failure in &delivery.failures {
                tracing::warn!("{failure}");
            }
            tracing::info!(
                "{cmd} delivered to {target} on {} of {} devices",
                delivery.delivered,
                args.devices.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        SbdAction::Watch => {
            let opts = WatchOptions {
                node: node_name(node)?,
                device: options,
                start_mode: match args.start_mode {
                    0 => StartMode::Always,
                    1 => StartMode::CleanOnly,
                    other => bail!("start mode -S {other}: use 0 or 1"),
                },
            };
            let spec = args.watchdog.clone();
            let termination = TerminationSignals::block();
            watch(
                &args.devices,
                &opts,
                || open_watchdog(&spec),
                || termination.pending(),
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn ifmib(args: IfmibArgs) -> anyhow::Result<ExitCode> {
    let security = Security::from_options(
        &args.snmp_version,
        args.community.as_deref(),
        args.username.as_deref(),
        args.auth_protocol
            .as_deref()
            .zip(args.auth_password.as_deref()),
        args.priv_protocol
            .as_deref()
            .zip(args.priv_password.as_deref()),
    )
    .map_err(anyhow::Error::msg)?;
    let mut client = Client::new(&args.ip, args.port, security)?;
    client.timeout = Duration::from_secs(args.snmp_timeout.max(1));
    client.tries = args.snmp_retries.max(1);
    let power_timeout = Duration::from_secs(args.power_timeout);
    if let IfmibAction::List = args.action {
        for port in ifmib::list(&mut client)? {
            println!("{}\t{}\t{}", port.index, port.descr, port.alias);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let plug = args.plug.context("--plug PORT is needed")?;
    let index = ifmib::port_index(&mut client, &plug)?;
    let set = |client: &mut Client, want| {
        ifmib::set_power(client, index, want, power_timeout, POWER_POLL)
    };
    match args.action {
        IfmibAction::On => set(&mut client, Power::On)?,
        IfmibAction::Off => set(&mut client, Power::Off)?,
        IfmibAction::Reboot => {
            set(&mut client, Power::Off)?;
            set(&mut client, Power::On)?;
        }
        IfmibAction::Status => {
            let power = ifmib::status(&mut client, index)?;
            println!("Status: {}", power.upper());
            // As fence agents: 2 means "off".
            return Ok(if power == Power::On {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            });
        }
        IfmibAction::List => unreachable!("handled above"),
    }
    Ok(ExitCode::SUCCESS)
}

/// A device path for output: an iSCSI URL without its CHAP secret.
fn shown(path: &Path) -> String {
    fencing::sbd::iscsi::redact(&path.display().to_string())
}

/// Runs `f` on each device; a failing device is reported on stderr in one line and makes the
/// exit status 1, the others still run (as sbd's list and dump).
fn per_device(
    devices: &[PathBuf],
    mut f: impl FnMut(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<ExitCode> {
    let mut status = ExitCode::SUCCESS;
    for path in devices {
        if let Err(e) = f(path) {
            eprintln!("fencectl: {e:#}");
            status = ExitCode::FAILURE;
        }
    }
    Ok(status)
}

/// SIGTERM and SIGINT, blocked in every thread so the watcher can poll for them and stop
/// cleanly (disarming the watchdog), as sbd does on SIGTERM.
struct TerminationSignals(libc::sigset_t);

impl TerminationSignals {
    /// Blocks the signals; call before any thread starts, so every thread inherits the mask.
    fn block() -> TerminationSignals {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid, exclusively borrowed sigset_t; the signal numbers are valid;
        // pthread_sigmask only reads `set` and accepts a null old-mask pointer.
        unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        }
        TerminationSignals(set)
    }

    /// Whether one arrived (consumes it), without waiting.
    fn pending(&self) -> bool {
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: the set and the timespec are valid for the call; a null siginfo pointer is
        // allowed.
        unsafe { libc::sigtimedwait(&self.0, std::ptr::null_mut(), &zero) > 0 }
    }
}

fn open_watchdog(spec: &str) -> std::io::Result<Box<dyn Watchdog>> {
    watchdog::open(spec, |pgid| {
        let mut helper = std::process::Command::new(std::env::current_exe()?);
        helper.arg("test-watchdog").arg(pgid.to_string());
        Ok(helper)
    })
}

fn test_watchdog(pgid: i32, timeout: u64) -> anyhow::Result<ExitCode> {
    let end = watchdog::run_test_watchdog(std::io::stdin(), timeout, || {
        eprintln!("test watchdog: not fed in time, killing process group {pgid}");
        if let Err(e) = watchdog::kill_process_group(pgid) {
            eprintln!("test watchdog: cannot kill process group {pgid}: {e}");
        }
    });
    tracing::debug!("test watchdog ended: {end:?}");
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TANDEM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    // The configuration is read by the commands that need it (none of the SBD ones do).
    let _ = (&cli.config, &cli.run_dir);
    let result = match cli.command {
        Top::Sbd(args) => sbd(args, &cli.node),
        Top::Ifmib(args) => ifmib(args),
        Top::TestWatchdog { pgid, timeout } => test_watchdog(pgid, timeout),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fencectl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
