//! clusterd's own SBD watcher, as sbd does with its Pacemaker integration: with a cluster
//! `sbd { device; watchdog; }` section, clusterd watches this node's slot on the device itself
//! (the `fencing` crate's [`watch_in_cluster`]) and feeds the watchdog while
//! - the slot is readable and carries no poison pill, or
//! - the device is unreadable but this node is a quorate member that sees a peer
//!   ([`cluster_healthy`]; the owner thread reports it every tick).
//!
//! A poison pill (`reset`, `off`, `crashdump`) stops the feeding for good; so does losing the
//! device and the peer (or quorum) for the watchdog timeout: the node dies. The watcher runs in
//! clusterd's process, so a clusterd that crashes or is killed stops feeding too. SIGTERM and
//! SIGINT stop clusterd cleanly with the watchdog disarmed, as sbd does.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use fencing::sbd::format::NodeName;
use fencing::sbd::ops::{self, DeviceOptions};
use fencing::sbd::watch::{watch_in_cluster, WatchOptions};
use fencing::sbd::watcher::StartMode;
use fencing::watchdog::Watchdog;
use replicator::config::ClusterSbd;

/// The longest bound on one SBD I/O of the watcher (fencectl's default `-I`).
pub const MAX_IO_TIMEOUT: Duration = Duration::from_secs(3);
/// The loop timeout the watcher expects of the device's header (sbd's default).
const ASSUMED_LOOP: Duration = Duration::from_secs(1);

/// Whether the cluster keeps a node whose SBD device is unreadable alive: it has quorum and
/// sees at least one peer (`members` counts this node). A two-node survivor that keeps quorum
/// only because it fenced its peer does not: it has lost both its peer and the disk.
pub fn cluster_healthy(quorate: bool, members: usize) -> bool {
    quorate && members >= 2
}

/// The watcher's bound on each device I/O: as long as the timeout rules allow
/// (`msgwait >= watchdog + loop + io`, loop taken as sbd's default 1 s), at most
/// [`MAX_IO_TIMEOUT`]; `None` when the section's timeouts leave no room.
pub fn io_timeout(sbd: &ClusterSbd) -> Option<Duration> {
    let room = Duration::from_secs(u64::from(sbd.msgwait_s))
        .checked_sub(Duration::from_secs(u64::from(sbd.watchdog_timeout_s)))?
        .checked_sub(ASSUMED_LOOP)?;
    (!room.is_zero()).then(|| room.min(MAX_IO_TIMEOUT))
}

/// Set by the SIGTERM/SIGINT handler, polled by the watcher.
static TERMINATION: AtomicBool = AtomicBool::new(false);

extern "C" fn on_termination(_signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    TERMINATION.store(true, Ordering::SeqCst);
}

/// SIGTERM and SIGINT, caught so the watcher stops with the watchdog disarmed. A handler
/// rather than a blocked mask: programs clusterd starts (OCF agents, alerts) inherit a mask but
/// not a handler, so their own SIGTERM keeps working.
pub struct TerminationSignals(());

impl TerminationSignals {
    /// Installs the handler for both signals.
    pub fn install() -> std::io::Result<TerminationSignals> {
        for signal in [libc::SIGTERM, libc::SIGINT] {
            // SAFETY: sigaction is plain data, zero is a valid empty value; sa_mask is then
            // initialised by sigemptyset. The handler only stores to an atomic, which is
            // async-signal-safe, and stays valid for the whole process (a fn item).
            let r = unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_termination as extern "C" fn(libc::c_int) as usize;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(signal, &action, std::ptr::null_mut())
            };
            if r != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(TerminationSignals(()))
    }

    /// Whether one arrived since the last call.
    fn pending(&self) -> bool {
        TERMINATION.swap(false, Ordering::SeqCst)
    }
}

/// Opens the watchdog `spec`: a device path, or `test:PGID` for the test watchdog (a helper
/// process, `clusterd --test-watchdog PGID`, that kills process group PGID when not fed).
pub fn open_watchdog(spec: &str) -> std::io::Result<Box<dyn Watchdog>> {
    fencing::watchdog::open(spec, |pgid| {
        let mut helper = std::process::Command::new(std::env::current_exe()?);
        helper.arg("--test-watchdog").arg(pgid.to_string());
        Ok(helper)
    })
}

/// Starts the watcher for `node`'s slot on a thread and returns once it feeds the watchdog,
/// with the sender the owner thread reports [`cluster_healthy`] on every tick. Fails (and
/// clusterd does not start) when the device or the watchdog cannot be used, as sbd refuses to
/// start. When the watcher ends (SIGTERM or SIGINT, an `exit` message, or an error), the
/// process exits: 0 after a clean stop with the watchdog disarmed, 1 otherwise (the watchdog
/// keeps counting).
pub fn start(
    sbd: &ClusterSbd,
    node: &str,
    watchdog: &str,
    signals: TerminationSignals,
) -> Result<mpsc::Sender<bool>> {
    let io_timeout = io_timeout(sbd).ok_or_else(|| {
        anyhow!(
            "sbd: msgwait {} s leaves no room for an I/O timeout after watchdog-timeout {} s and a 1 s loop",
            sbd.msgwait_s,
            sbd.watchdog_timeout_s
        )
    })?;
    let device = DeviceOptions {
        file_sector_size: None,
        io_timeout,
    };
    let opts = WatchOptions {
        node: NodeName::new(node).map_err(|e| anyhow!("sbd: node {node}: {e}"))?,
        device,
        start_mode: StartMode::Always,
    };
    let path = PathBuf::from(&sbd.device);
    // The header decides the watcher's timeouts; the section's are what clusterd waits for
    // (the priority delay), so a difference is worth a warning.
    let header = device
        .open(&path)
        .and_then(|dev| ops::read_header(&dev))
        .with_context(|| format!("sbd: cannot read the SBD header of {}", sbd.device))?;
    let t = header.timeouts;
    if t.watchdog_s != sbd.watchdog_timeout_s || t.msgwait_s != sbd.msgwait_s {
        tracing::warn!(
            "sbd: {} has watchdog {} s and msgwait {} s but the cluster block says watchdog-timeout {} and msgwait {}; the device's are in force",
            sbd.device,
            t.watchdog_s,
            t.msgwait_s,
            sbd.watchdog_timeout_s,
            sbd.msgwait_s
        );
    }
    let (health_tx, health) = mpsc::channel::<bool>();
    let (started_tx, started) = mpsc::channel::<Result<(), String>>();
    let spec = watchdog.to_string();
    let device_name = sbd.device.clone();
    std::thread::Builder::new()
        .name("sbd-watcher".into())
        .spawn(move || {
            let armed = Arc::new(AtomicBool::new(false));
            let (started_ok, armed_in_open) = (started_tx.clone(), armed.clone());
            let open = move || {
                let wd = open_watchdog(&spec);
                armed_in_open.store(wd.is_ok(), Ordering::SeqCst);
                let _ = started_ok.send(wd.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                wd
            };
            let result = watch_in_cluster(
                &[path],
                &opts,
                open,
                || signals.pending(),
                || health.try_iter().last(),
            );
            match result {
                Ok(()) => {
                    tracing::warn!("SBD watcher stopped, watchdog disarmed: clusterd exits");
                    std::process::exit(0);
                }
                // A start-up failure: `start` reports it and clusterd does not start.
                Err(e) if !armed.load(Ordering::SeqCst) => {
                    let _ = started_tx.send(Err(e.to_string()));
                }
                Err(e) => {
                    tracing::error!("SBD watcher on {device_name}: {e}: clusterd exits");
                    std::process::exit(1);
                }
            }
        })
        .context("cannot start the SBD watcher thread")?;
    match started.recv() {
        Ok(Ok(())) => {
            tracing::info!(
                "SBD: watching this node's slot on {} (I/O timeout {io_timeout:?})",
                sbd.device
            );
            Ok(health_tx)
        }
        Ok(Err(e)) => Err(anyhow!("sbd: {e}")),
        Err(_) => Err(anyhow!("sbd: the watcher thread ended before it started")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(watchdog_timeout_s: u32, msgwait_s: u32) -> ClusterSbd {
        ClusterSbd {
            device: "/tmp/sbd.img".into(),
            watchdog: "/dev/watchdog".into(),
            watchdog_timeout_s,
            msgwait_s,
        }
    }

    #[test]
    fn the_cluster_keeps_a_node_alive_only_quorate_and_with_a_peer() {
        assert!(cluster_healthy(true, 2));
        assert!(cluster_healthy(true, 3));
        assert!(!cluster_healthy(false, 2), "a member without quorum");
        assert!(
            !cluster_healthy(true, 1),
            "a two-node survivor that fenced its peer has lost it"
        );
        assert!(!cluster_healthy(false, 1), "alone and without quorum");
    }

    #[test]
    fn sigterm_is_caught_and_seen_once() {
        let signals = TerminationSignals::install().unwrap();
        // SAFETY: raise(3) sends a signal to this process, whose handler is installed above.
        assert_eq!(unsafe { libc::raise(libc::SIGTERM) }, 0);
        assert!(signals.pending());
        assert!(!signals.pending());
    }

    #[test]
    fn io_timeout_keeps_msgwait_above_watchdog_loop_and_io() {
        assert_eq!(io_timeout(&section(5, 10)), Some(MAX_IO_TIMEOUT));
        assert_eq!(io_timeout(&section(1, 3)), Some(Duration::from_secs(1)));
        assert_eq!(io_timeout(&section(5, 11)), Some(MAX_IO_TIMEOUT));
        assert_eq!(io_timeout(&section(2, 4)), Some(Duration::from_secs(1)));
        assert_eq!(io_timeout(&section(1, 2)), None, "no room left");
        assert_eq!(io_timeout(&section(10, 5)), None);
    }
}
