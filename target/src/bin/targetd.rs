//! `targetd`: serves plain files and block devices as NBD exports and iSCSI targets with no
//! replication (the SBD LUN on a storage node, scratch disks, tests). Each FILE is an export
//! named after its file name, on `<run-dir>/nbd.sock` always and on TCP with `--nbd ADDR`; with
//! `--iscsi ADDR` also an iSCSI target `iqn.2026-11.org.tandem:<file name>` with LUN 0.
//!
//! The same can be written in the config file's `targetd { ... }` block
//! ([`target::conf::targetd`]): it is read when `-c FILE` is given, or from the default path
//! when no FILE is. Its targets and the FILEs are served together (a name given twice is an
//! error); a flag given on the command line wins over the block's setting.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use target::conf::targetd::Targetd;
use target::conf::DEFAULT_CONFIG_PATH;
use target::iscsi::login::{Auth, Credentials};
use target::iscsi::server::IscsiServer;
use target::nbd::server::{bind_unix, NbdServer};
use target::nbd::DEFAULT_PORT;
use target::volume::{FileVolume, Volume};
use tracing::{info, warn};

/// How long shutdown waits for connections to finish their requests in flight.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// The NBD Unix socket's name inside the run directory.
const NBD_SOCKET: &str = "nbd.sock";

/// Serve files and block devices over NBD (no replication).
#[derive(Debug, Parser)]
#[command(name = "targetd", version)]
struct Cli {
    /// tandem configuration file whose `targetd { ... }` block names more exports and the
    /// settings below [default: /etc/tandem/tandem.conf, read only when no FILE is given].
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// This node's name (default: the hostname); accepted like on every tandem binary.
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    /// Directory of the control and NBD Unix sockets.
    #[arg(long, value_name = "DIR", default_value = "/run/tandem")]
    run_dir: PathBuf,
    /// Also serve NBD on TCP: HOST, HOST:PORT or [V6]:PORT (port 10809 when absent).
    #[arg(long, value_name = "ADDR")]
    nbd: Option<String>,
    /// Also serve iSCSI on TCP: HOST, HOST:PORT or [V6]:PORT (port 3260 when absent).
    #[arg(long, value_name = "ADDR")]
    iscsi: Option<String>,
    /// iSCSI initiators must authenticate with CHAP as USER with SECRET.
    #[arg(long, value_name = "USER:SECRET")]
    chap: Option<String>,
    /// With CHAP: the target's own credentials for initiators that ask for mutual CHAP.
    #[arg(long, value_name = "USER:SECRET")]
    mutual_chap: Option<String>,
    /// Serve every export read-only (the config's targets too).
    #[arg(long)]
    read_only: bool,
    /// Files or block devices to export; each export is named after its file name.
    #[arg(value_name = "FILE")]
    files: Vec<PathBuf>,
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(cli) {
        eprintln!("targetd: {}", one_line(&e));
        std::process::exit(1);
    }
}

/// The error and its causes on one line, leaving out a cause whose text a message already
/// carries (library errors name their cause in their own message).
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// One export to serve: its name, file and whether writes are refused.
struct Export {
    name: String,
    path: PathBuf,
    read_only: bool,
    /// Where it was asked for, for a name clash: `file:line:column` or "the command line".
    from: String,
}

/// What to serve, from the command line and the config's `targetd` block together.
struct Plan {
    nbd: Option<SocketAddr>,
    iscsi: Option<(SocketAddr, Auth)>,
    exports: Vec<Export>,
}

/// The config file to read: the one named by `-c`, else the default when no FILE is given.
fn config_path(cli: &Cli) -> Option<PathBuf> {
    match &cli.config {
        Some(path) => Some(path.clone()),
        None if cli.files.is_empty() => Some(PathBuf::from(DEFAULT_CONFIG_PATH)),
        None => None,
    }
}

fn plan(cli: &Cli) -> Result<Plan> {
    let config = match config_path(cli) {
        Some(path) => {
            let mut warnings = Vec::new();
            let block = match Targetd::load(&path, &mut warnings) {
                Err(target::conf::ConfigError::Io { source, .. })
                    if cli.config.is_none() && source.kind() == std::io::ErrorKind::NotFound =>
                {
                    bail!(
                        "no FILE given and no config at {}: give FILEs to serve, or -c FILE",
                        path.display()
                    )
                }
                r => r?,
            };
            for w in &warnings {
                warn!("{w}");
            }
            if block.is_none() && cli.files.is_empty() {
                bail!(
                    "{} has no 'targetd {{ target NAME {{ file PATH; }} }}' block and no FILE \
                     was given: nothing to serve",
                    path.display()
                );
            }
            block
        }
        None => None,
    };
    let config = config.as_ref();
    let nbd = match &cli.nbd {
        Some(s) => Some(parse_nbd_addr(s)?),
        None => config.and_then(|c| c.nbd),
    };
    let iscsi = match &cli.iscsi {
        Some(s) => Some(parse_addr(
            s,
            "--iscsi",
            target::iscsi::server::DEFAULT_PORT,
        )?),
        None => config.and_then(|c| c.iscsi),
    };
    let incoming = match &cli.chap {
        Some(c) => Some(credentials(c, "--chap")?),
        None => config
            .and_then(|c| c.chap.as_ref())
            .map(|c| c.credentials()),
    };
    let outgoing = match &cli.mutual_chap {
        Some(c) => Some(credentials(c, "--mutual-chap")?),
        None => config
            .and_then(|c| c.mutual_chap.as_ref())
            .map(|c| c.credentials()),
    };
    if incoming.is_some() && iscsi.is_none() {
        bail!("--chap applies to iSCSI; add --iscsi ADDR");
    }
    if outgoing.is_some() && incoming.is_none() {
        bail!("--mutual-chap needs --chap USER:SECRET too: the initiator authenticates first");
    }
    let mut exports: Vec<Export> = Vec::new();
    for t in config.map(|c| c.targets.as_slice()).unwrap_or_default() {
        exports.push(Export {
            name: t.name.clone(),
            path: t.file.clone(),
            read_only: t.read_only || cli.read_only,
            from: format!("target {} at {}", t.name, t.span),
        });
    }
    for path in &cli.files {
        exports.push(Export {
            name: export_name(path)?,
            path: path.clone(),
            read_only: cli.read_only,
            from: format!("the file {}", path.display()),
        });
    }
    if exports.is_empty() {
        bail!(
            "nothing to serve: give FILEs, or 'target NAME {{ file PATH; }}' in the targetd block"
        );
    }
    for (i, e) in exports.iter().enumerate() {
        if let Some(first) = exports[..i].iter().find(|f| f.name == e.name) {
            bail!(
                "two exports are named {:?}: {} and {}; export names must be unique (rename \
                 or link one)",
                e.name,
                first.from,
                e.from
            );
        }
    }
    Ok(Plan {
        nbd,
        iscsi: iscsi.map(|a| (a, Auth { incoming, outgoing })),
        exports,
    })
}

fn run(cli: Cli) -> Result<()> {
    let plan = plan(&cli)?;
    let mut exports: Vec<(String, FileVolume)> = Vec::new();
    for e in &plan.exports {
        exports.push((e.name.clone(), FileVolume::open(&e.path, e.read_only)?));
    }
    std::fs::create_dir_all(&cli.run_dir)
        .with_context(|| format!("cannot create the run directory {}", cli.run_dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("targetd")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(cli, plan.nbd, plan.iscsi, exports))
}

async fn serve(
    cli: Cli,
    tcp: Option<SocketAddr>,
    iscsi: Option<(SocketAddr, Auth)>,
    exports: Vec<(String, FileVolume)>,
) -> Result<()> {
    let server = NbdServer::new();
    let socket = cli.run_dir.join(NBD_SOCKET);
    let unix = bind_unix(&socket)?;
    let tcp_listener = match tcp {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| {
                    format!("cannot listen for NBD on {addr} (is another NBD server there? pick another --nbd ADDR)")
                })?,
        ),
        None => None,
    };
    let iscsi = match iscsi {
        Some((addr, auth)) => {
            let l = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen for iSCSI on {addr} (is another target there? pick another --iscsi ADDR)")
            })?;
            Some((IscsiServer::new(auth), l))
        }
        None => None,
    };
    for (name, volume) in exports {
        let description = format!("{} ({} bytes)", volume.path(), volume.size_bytes());
        let volume = Arc::new(volume) as Arc<dyn Volume>;
        server.add_export(&name, Arc::clone(&volume), &description)?;
        if let Some((s, _)) = &iscsi {
            let iqn = s.add_target(&name, volume)?;
            info!(%iqn, file = %description, "iSCSI target");
        }
    }
    let mut tasks = vec![server.serve_unix(unix)];
    info!(socket = %socket.display(), "serving NBD on the Unix socket");
    if let Some(l) = tcp_listener {
        let addr = l.local_addr().context("TCP listener address")?;
        info!(%addr, "serving NBD on TCP");
        tasks.push(server.serve_tcp(l));
    }
    let iscsi = match iscsi {
        Some((s, l)) => {
            let addr = l.local_addr().context("iSCSI listener address")?;
            info!(%addr, "serving iSCSI on TCP");
            tasks.push(s.serve_tcp(l));
            Some(s)
        }
        None => None,
    };
    info!(exports = ?server.export_names(), node = ?cli.node, "targetd ready");
    wait_for_signal().await?;
    info!("shutting down");
    if let Some(s) = &iscsi {
        s.shutdown(SHUTDOWN_TIMEOUT).await;
    }
    server.shutdown(SHUTDOWN_TIMEOUT).await;
    for t in tasks {
        let _ = t.await;
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

fn export_name(path: &Path) -> Result<String> {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        bail!(
            "{}: cannot name an export after this path (no UTF-8 file name)",
            path.display()
        );
    };
    Ok(name.to_string())
}

/// `USER:SECRET` for CHAP.
fn credentials(s: &str, flag: &str) -> Result<Credentials> {
    let Some((user, secret)) = s.split_once(':') else {
        bail!("{flag}: expected USER:SECRET");
    };
    if user.is_empty() || secret.is_empty() {
        bail!("{flag}: neither the user nor the secret may be empty");
    }
    if secret.len() < 12 {
        warn!(
            "{flag}: the secret is shorter than 12 bytes; RFC 7143 asks for at least 12 (96 bits)"
        );
    }
    Ok(Credentials {
        user: user.to_string(),
        secret: secret.as_bytes().to_vec(),
    })
}

/// `HOST`, `HOST:PORT`, `IP`, `[V6]`, `[V6]:PORT`; port 10809 when none is given.
fn parse_nbd_addr(s: &str) -> Result<SocketAddr> {
    parse_addr(s, "--nbd", DEFAULT_PORT)
}

/// `HOST`, `HOST:PORT`, `IP`, `[V6]`, `[V6]:PORT`; `default_port` when none is given.
fn parse_addr(s: &str, flag: &str, default_port: u16) -> Result<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(SocketAddr::new(ip, default_port));
    }
    let with_port = if s.contains(':') {
        s.to_string()
    } else {
        format!("{s}:{default_port}")
    };
    with_port
        .to_socket_addrs()
        .with_context(|| format!("{flag} {s}: not an address (HOST, HOST:PORT or [V6]:PORT)"))?
        .next()
        .with_context(|| format!("{flag} {s}: the name resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_print_each_cause_once() {
        let io = std::io::Error::from_raw_os_error(libc_enoent());
        let e = anyhow::Error::new(target::volume::VolumeError::Open {
            path: "/x.img".into(),
            source: io,
        });
        let line = one_line(&e);
        assert_eq!(line.matches("os error 2").count(), 1, "{line}");
        let e = anyhow::Error::new(std::io::Error::from_raw_os_error(98)).context("cannot listen");
        assert!(
            one_line(&e).starts_with("cannot listen: "),
            "{}",
            one_line(&e)
        );
    }

    fn libc_enoent() -> i32 {
        2
    }

    #[test]
    fn nbd_addresses() {
        let p = |s| parse_nbd_addr(s).unwrap().to_string();
        assert_eq!(p("127.0.0.1"), "127.0.0.1:10809");
        assert_eq!(p("127.0.0.1:1234"), "127.0.0.1:1234");
        assert_eq!(p("[::1]"), "[::1]:10809");
        assert_eq!(p("::1"), "[::1]:10809");
        assert_eq!(p("[::1]:99"), "[::1]:99");
        assert_eq!(
            p("localhost:7"),
            parse_nbd_addr("localhost:7").unwrap().to_string()
        );
        assert!(parse_nbd_addr("no such host..invalid").is_err());
    }
}
