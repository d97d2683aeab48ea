//! The watcher's driver (`fencectl sbd ... watch`, and [`watch_in_cluster`] that clusterd runs):
//! reads the disks, keeps the time, feeds the watchdog; every decision is [`Watcher`]'s.
//!
//! Start-up, as sbd's servant: each device is read, its timeouts checked, and a slot got for
//! this node (allocated if missing); the mailbox is checked against the start mode and cleared.
//! Enough devices to feed the watchdog must start (one of one or two, two of three), with the
//! same timeouts; the others are retried every loop and count once they start. Only then is the watchdog opened (which arms it) and set to the header's watchdog
//! timeout. Then one thread per disk reads header, slot and mailbox every loop timeout (each I/O
//! bounded by the I/O timeout) and reports to the main loop, which ticks the watcher every
//! [`TICK`].

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use super::device::SbdDevice;
use super::format::{Header, Mailbox, NodeName, Slot};
use super::ops::{self, DeviceOptions};
use super::watcher::{
    check_watch_timing, may_start, Action, DiskReport, FenceReason, StartError, StartMode, State,
    Watcher,
};
use super::SbdError;
use crate::watchdog::Watchdog;

/// How often the main loop re-evaluates health and feeds the watchdog.
pub const TICK: Duration = Duration::from_millis(100);
/// After fencing, how many watchdog timeouts to wait for the watchdog before giving up.
pub const FENCE_WAIT_WATCHDOG_TIMEOUTS: u32 = 10;

/// What the watcher needs besides the devices.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// This node's name (its slot).
    pub node: NodeName,
    /// How to open the devices, with the bound on every disk I/O.
    pub device: DeviceOptions,
    /// What to do with a pill found at start-up.
    pub start_mode: StartMode,
}

/// What can stop the watcher with an error.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// A device could not be set up.
    #[error(transparent)]
    Sbd(#[from] SbdError),
    /// The mailbox holds a pill and the start mode forbids starting.
    #[error("{path}: slot {slot} holds '{cmd}' from '{from}'; not starting (start mode 1); clear it with 'message {node} clear'")]
    Pending {
        /// The device.
        path: String,
        /// The slot.
        slot: u8,
        /// The pending command.
        cmd: String,
        /// Its sender.
        from: String,
        /// This node.
        node: String,
    },
    /// The watchdog failed.
    #[error("watchdog: {0}")]
    Watchdog(std::io::Error),
    /// Too few devices started, or their timeouts are unsafe or differ.
    #[error("{error}{}", if failures.is_empty() { String::new() } else { format!(" ({failures})") })]
    Start {
        /// Why.
        error: StartError,
        /// Why the devices that did not start did not.
        failures: String,
    },
    /// A reader thread could not be started.
    #[error("cannot start a disk reader thread: {0}")]
    Thread(std::io::Error),
    /// The node was fenced but the watchdog did not kill it.
    #[error("fenced ({reason}) but the watchdog did not fire within {waited:?}")]
    WatchdogDidNotFire {
        /// Why the node was fenced.
        reason: FenceReason,
        /// How long we waited.
        waited: Duration,
    },
}

struct Started {
    dev: SbdDevice,
    header: Header,
    slot: u8,
    entry: Slot,
}

/// Sets up one device as sbd's servant does at start. A `late` start (a device that was not
/// usable when the watcher started) neither applies the start mode nor clears the mailbox: a
/// pill waiting there is read by the next loop and fences the node.
fn start_disk(path: &Path, opts: &WatchOptions, late: bool) -> Result<Started, WatchError> {
    let dev = opts.device.open(path)?;
    let header = ops::read_header(&dev)?;
    // Refuse unsafe timeouts before writing anything (allocate writes a slot).
    check_watch_timing(&header.timeouts, opts.device.io_timeout).map_err(SbdError::from)?;
    let allocated = ops::allocate(&dev, &opts.node, |_| (), std::thread::sleep)?;
    let slot = allocated.slot();
    let entry = ops::read_slot(&dev, slot)?;
    let uuid = header.uuid().map(|u| u.to_string()).unwrap_or_default();
    tracing::info!("monitoring slot {slot} on {} (uuid {uuid})", dev.path());
    let started = Started {
        dev,
        header,
        slot,
        entry,
    };
    if late {
        return Ok(started);
    }
    let dev = &started.dev;
    let mailbox = ops::read_mailbox(dev, slot)?;
    if let Err(cmd) = may_start(opts.start_mode, &mailbox) {
        return Err(WatchError::Pending {
            path: dev.path().to_string(),
            slot,
            cmd: cmd.to_string(),
            from: mailbox.sender().to_string(),
            node: opts.node.to_string(),
        });
    }
    ops::write_mailbox(dev, slot, &Mailbox::EMPTY)?;
    Ok(started)
}

/// Whether a start-up failure stops the watcher (a pill under start mode 1, unsafe timeouts)
/// rather than leaving the device to start later.
fn fatal(e: &WatchError) -> bool {
    matches!(
        e,
        WatchError::Pending { .. } | WatchError::Sbd(SbdError::Timeouts(_))
    )
}

/// What a servant tells the main loop.
enum ServantEvent {
    /// A device that was not usable at start-up has started.
    Started {
        /// Its header.
        header: Header,
        /// The node's slot entry.
        entry: Slot,
    },
    /// One loop's read.
    Read(DiskReport),
}

/// Where a servant begins.
enum ServantStart {
    /// The device started with the watcher.
    Ready(SbdDevice, u8),
    /// The device was not usable; keep trying every loop.
    Pending(PathBuf, WatchOptions),
}

enum ServantCommand {
    /// Clear the mailbox if it still holds this.
    ClearMailbox(Mailbox),
}

/// One disk's reader: every loop timeout, header + slot + mailbox; clears the mailbox on demand.
/// A device that was not usable at start-up is retried every loop until it starts.
fn servant(
    disk: usize,
    start: ServantStart,
    every: Duration,
    commands: Receiver<ServantCommand>,
    reports: Sender<(usize, ServantEvent)>,
) {
    let (dev, slot) = match start {
        ServantStart::Ready(dev, slot) => (dev, slot),
        ServantStart::Pending(path, opts) => loop {
            match commands.recv_timeout(every) {
                Err(RecvTimeoutError::Disconnected) => return,
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            }
            match start_disk(&path, &opts, true) {
                Ok(d) => {
                    let event = ServantEvent::Started {
                        header: d.header,
                        entry: d.entry,
                    };
                    if reports.send((disk, event)).is_err() {
                        return;
                    }
                    break (d.dev, d.slot);
                }
                Err(e) => tracing::debug!("disk {disk} still not usable: {e}"),
            }
        },
    };
    loop {
        match commands.recv_timeout(every) {
            Ok(ServantCommand::ClearMailbox(seen)) => {
                // Re-read first, so a pill written since the watcher's read is not wiped (sbd
                // clears blindly; the window left is one read-to-write gap, not a whole loop).
                let cleared = ops::read_mailbox(&dev, slot).and_then(|now| {
                    if now == seen {
                        ops::write_mailbox(&dev, slot, &Mailbox::EMPTY).map(|()| true)
                    } else {
                        Ok(false)
                    }
                });
                match cleared {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!("the mailbox changed; not clearing it"),
                    Err(e) => tracing::warn!("cannot clear the mailbox: {e}"),
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }
        let read = || -> Result<DiskReport, SbdError> {
            Ok(DiskReport::Read {
                header: ops::read_header(&dev)?,
                slot: ops::read_slot(&dev, slot)?,
                mailbox: ops::read_mailbox(&dev, slot)?,
            })
        };
        let report = read().unwrap_or_else(|e| DiskReport::Failed(e.to_string()));
        if reports.send((disk, ServantEvent::Read(report))).is_err() {
            return;
        }
    }
}

/// Runs the watcher until an `exit` message or `stop` returning true (both `Ok`, with the
/// watchdog disarmed: sbd stops cleanly on SIGTERM too), or an error. When the node is fenced
/// this does not return until the watchdog kills the process; it returns an error only if the
/// watchdog has not done so after [`FENCE_WAIT_WATCHDOG_TIMEOUTS`] timeouts.
/// `open_watchdog` is called once start-up succeeded; `stop` every [`TICK`].
pub fn watch(
    paths: &[PathBuf],
    opts: &WatchOptions,
    open_watchdog: impl FnOnce() -> std::io::Result<Box<dyn Watchdog>>,
    stop: impl FnMut() -> bool,
) -> Result<(), WatchError> {
    watch_in_cluster(paths, opts, open_watchdog, stop, || None)
}

/// [`watch`] inside a cluster manager (clusterd; sbd's Pacemaker integration): `cluster` is
/// asked every [`TICK`] for its report since the last call, `Some(true)` when this node is a
/// quorate member that sees a peer, `Some(false)` when not, `None` when it has nothing new.
/// While too few disks are healthy, a healthy report younger than the disks' health window
/// keeps the watchdog fed ([`Watcher::on_cluster`]); a poison pill still fences.
pub fn watch_in_cluster(
    paths: &[PathBuf],
    opts: &WatchOptions,
    open_watchdog: impl FnOnce() -> std::io::Result<Box<dyn Watchdog>>,
    mut stop: impl FnMut() -> bool,
    mut cluster: impl FnMut() -> Option<bool>,
) -> Result<(), WatchError> {
    assert!(!paths.is_empty(), "watch needs at least one device");
    let mut started = Vec::with_capacity(paths.len());
    let mut failures = Vec::new();
    for path in paths {
        match start_disk(path, opts, false) {
            Ok(d) => started.push(Some(d)),
            Err(e) if fatal(&e) => return Err(e),
            Err(e) => {
                tracing::warn!("{e}; retrying it every loop");
                failures.push(e.to_string());
                started.push(None);
            }
        }
    }
    // The watcher checks quorum and the timeouts (rules, and the same on every disk) before the
    // watchdog is armed. Its clock starts before the first feed, which only makes it fence
    // earlier.
    let epoch = Instant::now();
    let mut watcher = Watcher::new(
        started
            .iter()
            .map(|d| d.as_ref().map(|d| (d.header, d.entry.clone())))
            .collect(),
        opts.device.io_timeout,
        epoch.elapsed(),
    )
    .map_err(|error| WatchError::Start {
        error,
        failures: failures.join("; "),
    })?;
    let timeouts = watcher.timeouts();

    let mut watchdog = open_watchdog().map_err(WatchError::Watchdog)?;
    let set = watchdog
        .set_timeout(timeouts.watchdog_s)
        .map_err(WatchError::Watchdog)?;
    if set != timeouts.watchdog_s {
        tracing::warn!(
            "the watchdog took a timeout of {set} s instead of {} s",
            timeouts.watchdog_s
        );
    }
    watchdog.keepalive().map_err(WatchError::Watchdog)?;

    let every = Duration::from_secs(u64::from(timeouts.loop_s));
    let (report_tx, reports) = mpsc::channel();
    let mut servants = Vec::new();
    for (i, (d, path)) in started.into_iter().zip(paths).enumerate() {
        let (tx, rx) = mpsc::channel();
        let reports = report_tx.clone();
        let start = match d {
            Some(d) => ServantStart::Ready(d.dev, d.slot),
            None => ServantStart::Pending(path.clone(), opts.clone()),
        };
        std::thread::Builder::new()
            .name(format!("sbd-servant {i}"))
            .spawn(move || servant(i, start, every, rx, reports))
            .map_err(WatchError::Thread)?;
        servants.push(tx);
    }
    drop(report_tx);

    loop {
        let mut actions = Vec::new();
        match reports.recv_timeout(TICK) {
            Ok(first) => {
                for (disk, event) in std::iter::once(first).chain(reports.try_iter()) {
                    let now = epoch.elapsed();
                    actions.extend(match event {
                        ServantEvent::Read(report) => watcher.on_report(disk, now, report),
                        ServantEvent::Started { header, entry } => {
                            watcher.on_started(disk, now, header, entry)
                        }
                    });
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => unreachable!("servants run until we drop them"),
        }
        if let Some(healthy) = cluster() {
            watcher.on_cluster(epoch.elapsed(), healthy);
        }
        actions.extend(watcher.tick(epoch.elapsed()));
        if watcher.state() == State::Running && stop() {
            tracing::info!("asked to stop: stopping, watchdog disarmed");
            watchdog.disarm().map_err(WatchError::Watchdog)?;
            return Ok(());
        }
        for action in actions {
            match action {
                Action::Feed => {
                    if let Err(e) = watchdog.keepalive() {
                        tracing::error!("cannot feed the watchdog: {e}");
                    }
                }
                Action::ClearMailbox { disk, seen } => {
                    let _ = servants[disk].send(ServantCommand::ClearMailbox(seen));
                }
                Action::Warn(text) => tracing::warn!("{text}"),
                Action::Exit { disk } => {
                    tracing::info!("exit message on disk {disk}: stopping, watchdog disarmed");
                    watchdog.disarm().map_err(WatchError::Watchdog)?;
                    return Ok(());
                }
                Action::Fence(reason) => {
                    tracing::error!("fencing this node: {reason}; the watchdog is no longer fed");
                    // Keep the watchdog open and unfed; it kills us.
                    let waited = Duration::from_secs(u64::from(timeouts.watchdog_s))
                        * FENCE_WAIT_WATCHDOG_TIMEOUTS;
                    std::thread::sleep(waited);
                    drop(watchdog);
                    return Err(WatchError::WatchdogDidNotFire { reason, waited });
                }
            }
        }
    }
}
