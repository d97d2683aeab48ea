//! `replicatord`: tandem's node daemon (DESIGN §4). Runs in the foreground; systemd runs it.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use replicator::config;
use replicator::daemon::{self, Options};

/// tandem's node daemon: replicates the resources of this node and exports them.
#[derive(Parser)]
#[command(name = "replicatord", version, about)]
struct Cli {
    /// The configuration file.
    #[arg(short = 'c', long = "config", default_value = config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Which `on NAME` section is this host (default: the hostname).
    #[arg(long)]
    node: Option<String>,
    /// Directory of the control socket and the NBD Unix socket.
    #[arg(long = "run-dir", default_value = "/run/tandem")]
    run_dir: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let opts = Options {
        config: cli.config,
        node: cli.node.unwrap_or_else(daemon::hostname),
        run_dir: cli.run_dir,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("replicatord: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon::run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("replicatord: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
