//! `clusterd`: tandem's cluster daemon (DESIGN §8). Runs in the foreground beside replicatord.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use clusterd::daemon::{self, group::Configured, Options};
use clusterd::heartbeat;
use clusterd::ocf::Runner;
use fencing::watchdog;
use replicator::config;

/// tandem's cluster daemon: membership by heartbeats, quorum, fence-then-promote.
#[derive(Parser)]
#[command(name = "clusterd", version, about)]
struct Cli {
    /// The configuration file.
    #[arg(short = 'c', long = "config", default_value = config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Which node of the cluster block is this host (default: the hostname).
    #[arg(long)]
    node: Option<String>,
    /// Directory of clusterd's control socket, and of replicatord's.
    #[arg(long = "run-dir", default_value = "/run/tandem")]
    run_dir: PathBuf,
    /// UDP port of the heartbeats, on every address of every node.
    #[arg(long = "heartbeat-port", default_value_t = heartbeat::DEFAULT_PORT)]
    heartbeat_port: u16,
    /// The SBD watcher's watchdog instead of the cluster block's `sbd { watchdog ...; }`: a
    /// device, or `test:PGID` for the test watchdog that kills process group PGID (tests).
    #[arg(long)]
    watchdog: Option<String>,
    /// Run as the test watchdog helper on process group PGID (what `--watchdog test:PGID`
    /// starts): read watchdog operations on stdin, kill the group when not fed in time.
    #[arg(long = "test-watchdog", value_name = "PGID", hide = true)]
    test_watchdog: Option<i32>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Some(pgid) = cli.test_watchdog {
        let end = watchdog::run_test_watchdog(std::io::stdin(), 60, || {
            eprintln!("test watchdog: not fed in time, killing process group {pgid}");
            if let Err(e) = watchdog::kill_process_group(pgid) {
                eprintln!("test watchdog: cannot kill process group {pgid}: {e}");
            }
        });
        tracing::debug!("test watchdog ended: {end:?}");
        return ExitCode::SUCCESS;
    }
    let opts = Options {
        config: cli.config,
        node: cli.node.unwrap_or_else(replicator::daemon::hostname),
        run_dir: cli.run_dir,
        heartbeat_port: cli.heartbeat_port,
        watchdog: cli.watchdog,
    };
    let result = daemon::load(&opts.config).and_then(|config| {
        let resources = config
            .cluster
            .as_ref()
            .map(|c| c.resources.clone())
            .unwrap_or_default();
        let group = Configured::new(&resources, Runner::default()).map_err(anyhow::Error::msg)?;
        daemon::run(opts, config, Box::new(group))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("clusterd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
