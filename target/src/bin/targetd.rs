//! `targetd`: serves plain files and block devices as NBD exports with no replication (the SBD
//! LUN on a storage node, scratch disks, tests). Each FILE is an export named after its file
//! name, on `<run-dir>/nbd.sock` always and on TCP with `--nbd ADDR`.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::Parser;
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
    /// tandem configuration file. targetd takes its exports from its arguments and does not
    /// read the configuration yet; the flag is accepted like on every tandem binary.
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
    /// Serve iSCSI on ADDR (not implemented yet).
    #[arg(long, value_name = "ADDR")]
    iscsi: Option<String>,
    /// iSCSI CHAP credentials (not implemented yet).
    #[arg(long, value_name = "USER:SECRET")]
    chap: Option<String>,
    /// Serve every FILE read-only.
    #[arg(long)]
    read_only: bool,
    /// Files or block devices to export; each export is named after its file name.
    #[arg(required = true, value_name = "FILE")]
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

fn run(cli: Cli) -> Result<()> {
    if cli.iscsi.is_some() || cli.chap.is_some() {
        bail!("--iscsi/--chap: the iSCSI target is not implemented yet (issue 5); serve NBD with --nbd ADDR instead");
    }
    if let Some(c) = &cli.config {
        warn!(config = %c.display(), "targetd reads no configuration yet; exports come from the arguments");
    }
    let tcp = cli.nbd.as_deref().map(parse_nbd_addr).transpose()?;
    let mut exports: Vec<(String, FileVolume)> = Vec::new();
    for path in &cli.files {
        let name = export_name(path)?;
        if exports.iter().any(|(n, _)| *n == name) {
            bail!("two files are named {name:?}; export names must be unique (rename or link one)");
        }
        let volume = FileVolume::open(path, cli.read_only)?;
        exports.push((name, volume));
    }
    std::fs::create_dir_all(&cli.run_dir)
        .with_context(|| format!("cannot create the run directory {}", cli.run_dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("targetd")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(cli, tcp, exports))
}

async fn serve(
    cli: Cli,
    tcp: Option<SocketAddr>,
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
    for (name, volume) in exports {
        let description = format!("{} ({} bytes)", volume.path(), volume.size_bytes());
        server.add_export(&name, Arc::new(volume) as Arc<dyn Volume>, &description)?;
    }
    let mut tasks = vec![server.serve_unix(unix)];
    info!(socket = %socket.display(), "serving NBD on the Unix socket");
    if let Some(l) = tcp_listener {
        let addr = l.local_addr().context("TCP listener address")?;
        info!(%addr, "serving NBD on TCP");
        tasks.push(server.serve_tcp(l));
    }
    info!(exports = ?server.export_names(), node = ?cli.node, "targetd ready");
    wait_for_signal().await?;
    info!("shutting down");
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

/// `HOST`, `HOST:PORT`, `IP`, `[V6]`, `[V6]:PORT`; port 10809 when none is given.
fn parse_nbd_addr(s: &str) -> Result<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    let with_port = if s.contains(':') {
        s.to_string()
    } else {
        format!("{s}:{DEFAULT_PORT}")
    };
    with_port
        .to_socket_addrs()
        .with_context(|| format!("--nbd {s}: not an address (HOST, HOST:PORT or [V6]:PORT)"))?
        .next()
        .with_context(|| format!("--nbd {s}: the name resolves to no address"))
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
