//! The SBD watcher's decisions, pure: reports from the disks and the time go in, actions come
//! out. No clock, sleep or I/O here; [`super::watch`] is the driver that reads the disks, keeps
//! the time and feeds the watchdog.
//!
//! The rules, after sbd 1.5's servant and inquisitor:
//! - Each disk is read every loop timeout (header, own slot, own mailbox). A disk is healthy
//!   while its last good read is younger than `io_timeout + loop`. A read whose header or slot
//!   differs from what the watcher started with is not a good read.
//! - The watchdog is fed while enough disks are healthy: more than half of them when there are
//!   more than two, at least one when there are one or two ([`quorum_read`]). A sender needs more
//!   than half ([`quorum_write`]), so with two disks every pill lands on both.
//! - `reset`, `off` and `crashdump` stop the feeding for good: the watchdog kills the node. `exit`
//!   stops the watcher cleanly (the driver disarms the watchdog). `test` and unknown commands are
//!   acknowledged by clearing the mailbox.
//! - Without quorum for longer than the watchdog timeout the node is fenced: the watchdog has
//!   fired, or should have.
//! - Run inside a cluster manager (clusterd, as sbd with its Pacemaker integration), the
//!   watcher also takes reports of the cluster's health ([`Watcher::on_cluster`]): while too
//!   few disks are healthy it keeps feeding as long as the cluster says, freshly, that this
//!   node is a quorate member that sees a peer ([`may_feed`]). A node that loses its disks and
//!   its peer stops feeding; a poison pill always fences. Standalone (`fencectl sbd watch`)
//!   the disks alone decide.
//!
//! Why the timeout rules ([`check_timeouts`], [`check_watch_timing`]) hold the whole thing
//! together: a sender writes a pill at `Tw` and waits msgwait. The target read its disk at the
//! latest at `Tw + loop + io` (then it stops feeding), or its disk went bad and it stops counting
//! it healthy at `T0 + io + loop` with `T0 < Tw`. Either way its last feed is before
//! `Tw + loop + io`, and the watchdog kills it before `Tw + loop + io + watchdog`. So msgwait must
//! be at least `watchdog + loop + io` ([`check_watch_timing`]); sbd's rule of thumb
//! `msgwait >= 2 * watchdog` ([`check_timeouts`]) gives it when `loop + io <= watchdog`.

use std::time::Duration;

use super::format::{Command, Header, Mailbox, Slot, Timeouts};

/// A timeout setting that would let a fenced node outlive the sender's wait, or make no sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeoutError {
    /// A timeout is zero.
    #[error("the {what} timeout is 0; it must be at least 1 second")]
    Zero {
        /// Which one.
        what: &'static str,
    },
    /// msgwait is shorter than twice the watchdog timeout.
    #[error(
        "msgwait ({msgwait_s} s) must be at least twice the watchdog timeout ({watchdog_s} s)"
    )]
    MsgwaitTooShort {
        /// msgwait.
        msgwait_s: u32,
        /// The watchdog timeout.
        watchdog_s: u32,
    },
    /// msgwait does not cover the watchdog timeout plus one loop and one I/O timeout.
    #[error("msgwait ({msgwait_s} s) must be at least watchdog ({watchdog_s} s) + loop ({loop_s} s) + I/O timeout ({io:?}); lower -I or re-create with a longer msgwait")]
    MsgwaitBelowDetection {
        /// msgwait.
        msgwait_s: u32,
        /// The watchdog timeout.
        watchdog_s: u32,
        /// The loop timeout.
        loop_s: u32,
        /// The I/O timeout.
        io: Duration,
    },
    /// Two devices disagree on their timeouts.
    #[error("{path} has timeouts {found:?} but the first device has {expected:?}")]
    Inconsistent {
        /// The device that differs.
        path: String,
        /// Its timeouts.
        found: Timeouts,
        /// The first device's.
        expected: Timeouts,
    },
}

/// The rules every header's timeouts must keep (checked by `create` and `watch`).
pub fn check_timeouts(t: &Timeouts) -> Result<(), TimeoutError> {
    for (what, v) in [
        ("watchdog", t.watchdog_s),
        ("loop", t.loop_s),
        ("msgwait", t.msgwait_s),
    ] {
        if v == 0 {
            return Err(TimeoutError::Zero { what });
        }
    }
    if u64::from(t.msgwait_s) < 2 * u64::from(t.watchdog_s) {
        return Err(TimeoutError::MsgwaitTooShort {
            msgwait_s: t.msgwait_s,
            watchdog_s: t.watchdog_s,
        });
    }
    Ok(())
}

/// The rule a watcher with I/O timeout `io` must keep on top of [`check_timeouts`].
pub fn check_watch_timing(t: &Timeouts, io: Duration) -> Result<(), TimeoutError> {
    check_timeouts(t)?;
    let detect = secs(t.watchdog_s) + secs(t.loop_s) + io;
    if secs(t.msgwait_s) < detect {
        return Err(TimeoutError::MsgwaitBelowDetection {
            msgwait_s: t.msgwait_s,
            watchdog_s: t.watchdog_s,
            loop_s: t.loop_s,
            io,
        });
    }
    Ok(())
}

/// Every device must carry the first device's timeouts.
pub fn check_consistent(path: &str, first: &Timeouts, this: &Timeouts) -> Result<(), TimeoutError> {
    if first == this {
        Ok(())
    } else {
        Err(TimeoutError::Inconsistent {
            path: path.to_string(),
            found: *this,
            expected: *first,
        })
    }
}

/// Whether `good` healthy disks out of `total` let the watcher feed its watchdog (sbd's
/// `quorum_read`).
pub fn quorum_read(good: usize, total: usize) -> bool {
    if total > 2 {
        good > total / 2
    } else {
        good > 0
    }
}

/// Whether a message written to `ok` disks out of `total` counts as delivered (sbd's
/// `quorum_write`).
pub fn quorum_write(ok: usize, total: usize) -> bool {
    ok > total / 2
}

/// Whether the watchdog may be fed: while enough disks are healthy ([`quorum_read`]), or, for a
/// watcher inside a cluster manager, while the cluster's last fresh report says this node is a
/// quorate member that sees a peer (`cluster_healthy`; always false standalone). A pill is not
/// an input here: it fences for good before this is asked.
pub fn may_feed(disk_quorum: bool, cluster_healthy: bool) -> bool {
    disk_quorum || cluster_healthy
}

/// What to do at start-up with what the node's mailbox holds (sbd's `-S` start mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartMode {
    /// 0: start whatever the mailbox holds, and clear it (sbd's default).
    Always,
    /// 1: start only if the mailbox is empty or holds `exit` (the last stop was clean).
    CleanOnly,
}

/// Whether the watcher may start given its mailbox; `Err` names the pending command.
pub fn may_start(mode: StartMode, mailbox: &Mailbox) -> Result<(), Command> {
    match (mode, mailbox.cmd) {
        (StartMode::Always, _) | (StartMode::CleanOnly, Command::Clear | Command::Exit) => Ok(()),
        (StartMode::CleanOnly, cmd) => Err(cmd),
    }
}

/// What one loop read from one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskReport {
    /// The header, the node's slot and its mailbox were read and decoded.
    Read {
        /// The header.
        header: Header,
        /// The node's slot entry.
        slot: Slot,
        /// The node's mailbox.
        mailbox: Mailbox,
    },
    /// Something failed (I/O error, timeout, undecodable sector).
    Failed(String),
}

/// Why the node must die.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceReason {
    /// A poison pill: reset, off or crashdump.
    Message {
        /// The command.
        cmd: Command,
        /// Who sent it.
        from: String,
        /// The disk it was read from.
        disk: usize,
    },
    /// Too few disks were healthy for longer than the watchdog timeout.
    StorageLost {
        /// Healthy disks.
        healthy: usize,
        /// All disks.
        disks: usize,
    },
    /// Inside a cluster manager: too few disks were healthy and the cluster did not say this
    /// node is a quorate member that sees a peer, for longer than the watchdog timeout.
    StorageAndClusterLost {
        /// Healthy disks.
        healthy: usize,
        /// All disks.
        disks: usize,
    },
}

impl std::fmt::Display for FenceReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FenceReason::Message { cmd, from, disk } => {
                write!(f, "received {cmd} from '{from}' on disk {disk}")
            }
            FenceReason::StorageLost { healthy, disks } => write!(
                f,
                "only {healthy} of {disks} disks readable for longer than the watchdog timeout"
            ),
            FenceReason::StorageAndClusterLost { healthy, disks } => write!(
                f,
                "only {healthy} of {disks} disks readable and the cluster not healthy (no quorum or no peer) for longer than the watchdog timeout"
            ),
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Feed the watchdog.
    Feed,
    /// Write an empty mailbox to this disk (acknowledges `test`, clears an unknown command),
    /// but only if it still holds `seen`: a pill written since the read must not be wiped.
    ClearMailbox {
        /// The disk.
        disk: usize,
        /// What the mailbox held when read.
        seen: Mailbox,
    },
    /// Stop feeding for good: the watchdog will kill the node.
    Fence(FenceReason),
    /// Disarm the watchdog and stop the watcher.
    Exit {
        /// The disk the `exit` was read from.
        disk: usize,
    },
    /// Something the operator should see in the log.
    Warn(String),
}

/// The watcher's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Feeding while healthy.
    Running,
    /// Fenced: never feeds again.
    Fenced,
    /// Exiting cleanly.
    Exiting,
}

/// One disk as the watcher knows it: what it started with (header and the node's slot entry,
/// which later reads must match) once it has started, and its last good read.
#[derive(Debug)]
struct Disk {
    reference: Option<(Header, Slot)>,
    last_good: Option<Duration>,
    healthy: bool,
    /// The last failure logged, so a disk that stays bad is logged once, not every loop.
    last_failure: Option<String>,
}

/// The decision core of `fencectl sbd watch`. Time is a monotonic [`Duration`] since any epoch
/// the driver picks.
#[derive(Debug)]
pub struct Watcher {
    timeouts: Timeouts,
    io_timeout: Duration,
    disks: Vec<Disk>,
    last_feed: Duration,
    state: State,
    /// Inside a cluster manager: when the cluster last said this node is healthy (`None`: it
    /// never did, or its last report said not). `None` standalone, see `integrated`.
    cluster_healthy_at: Option<Duration>,
    /// Whether a cluster manager reports to this watcher ([`Watcher::on_cluster`] was called).
    integrated: bool,
    /// Whether the last tick fed on the cluster's word alone (for the log).
    fed_by_cluster: bool,
}

fn secs(s: u32) -> Duration {
    Duration::from_secs(u64::from(s))
}

/// Why a watcher cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// Too few disks started.
    #[error("only {started} of {disks} SBD devices are usable; the watcher needs {needed}")]
    NoQuorum {
        /// Disks that started.
        started: usize,
        /// All disks.
        disks: usize,
        /// How many it needs.
        needed: usize,
    },
    /// The timeouts break a rule or differ between disks.
    #[error(transparent)]
    Timeouts(#[from] TimeoutError),
}

impl Watcher {
    /// A watcher over `disks`, each `Some` with what start-up read at `now` (its header and the
    /// node's slot entry) or `None` for a disk that could not start yet (it may start later,
    /// [`Watcher::on_started`]). Enough disks must have started to feed the watchdog
    /// ([`quorum_read`]); the caller feeds it at `now`.
    pub fn new(
        disks: Vec<Option<(Header, Slot)>>,
        io_timeout: Duration,
        now: Duration,
    ) -> Result<Watcher, StartError> {
        let started: Vec<&(Header, Slot)> = disks.iter().flatten().collect();
        if started.is_empty() || !quorum_read(started.len(), disks.len()) {
            let needed = (1..=disks.len())
                .find(|&k| quorum_read(k, disks.len()))
                .unwrap_or(1);
            return Err(StartError::NoQuorum {
                started: started.len(),
                disks: disks.len(),
                needed,
            });
        }
        let timeouts = started[0].0.timeouts;
        check_watch_timing(&timeouts, io_timeout)?;
        for (i, d) in disks.iter().enumerate() {
            if let Some((h, _)) = d {
                check_consistent(&format!("disk {i}"), &timeouts, &h.timeouts)?;
            }
        }
        Ok(Watcher {
            timeouts,
            io_timeout,
            disks: disks
                .into_iter()
                .map(|reference| Disk {
                    last_good: reference.is_some().then_some(now),
                    healthy: reference.is_some(),
                    reference,
                    last_failure: None,
                })
                .collect(),
            last_feed: now,
            state: State::Running,
            cluster_healthy_at: None,
            integrated: false,
            fed_by_cluster: false,
        })
    }

    /// A disk that could not start at first has started: it counts from now on if its timeouts
    /// are those in force.
    pub fn on_started(
        &mut self,
        disk: usize,
        now: Duration,
        header: Header,
        slot: Slot,
    ) -> Vec<Action> {
        let d = &mut self.disks[disk];
        if d.reference.is_some() {
            return vec![Action::Warn(format!("disk {disk} started twice; ignored"))];
        }
        if let Err(e) = check_consistent(&format!("disk {disk}"), &self.timeouts, &header.timeouts)
        {
            return vec![Action::Warn(format!("disk {disk} is not used: {e}"))];
        }
        d.reference = Some((header, slot));
        d.last_good = Some(now);
        d.healthy = true;
        vec![Action::Warn(format!("disk {disk} is usable now"))]
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The timeouts in force.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// How long a disk stays healthy after its last good read.
    pub fn health_window(&self) -> Duration {
        self.io_timeout + secs(self.timeouts.loop_s)
    }

    /// Takes a report of the cluster manager the watcher runs in (call it every tick): whether
    /// this node is, now, a quorate member that sees a peer. A report counts for one
    /// [`Watcher::health_window`], so a cluster manager that stops reporting (hung) counts as
    /// unhealthy, as a disk that stops answering does.
    pub fn on_cluster(&mut self, now: Duration, healthy: bool) {
        self.integrated = true;
        self.cluster_healthy_at = healthy.then_some(now);
    }

    /// Takes one disk's loop report.
    pub fn on_report(&mut self, disk: usize, now: Duration, report: DiskReport) -> Vec<Action> {
        if self.state != State::Running {
            return Vec::new();
        }
        let d = &mut self.disks[disk];
        let Some((ref_header, ref_slot)) = &d.reference else {
            return vec![Action::Warn(format!(
                "disk {disk}: a read before it started; ignored"
            ))];
        };
        let (header, slot, mailbox) = match report {
            DiskReport::Failed(why) => {
                if d.last_failure.as_ref() == Some(&why) {
                    return Vec::new();
                }
                let warn = Action::Warn(format!("disk {disk}: {why}"));
                d.last_failure = Some(why);
                return vec![warn];
            }
            DiskReport::Read {
                header,
                slot,
                mailbox,
            } => (header, slot, mailbox),
        };
        if header != *ref_header {
            return vec![Action::Warn(format!(
                "disk {disk}: the header changed since start-up"
            ))];
        }
        if slot != *ref_slot {
            return vec![Action::Warn(format!(
                "disk {disk}: our slot changed since start-up"
            ))];
        }
        d.last_failure = None;
        let from = mailbox.sender().to_string();
        match mailbox.cmd {
            Command::Clear => {
                d.last_good = Some(now);
                Vec::new()
            }
            Command::Test => {
                d.last_good = Some(now);
                vec![
                    Action::Warn(format!("disk {disk}: test message from '{from}'")),
                    Action::ClearMailbox {
                        disk,
                        seen: mailbox,
                    },
                ]
            }
            Command::Undefined(v) => {
                d.last_good = Some(now);
                vec![
                    Action::Warn(format!(
                        "disk {disk}: unknown command {v} from '{from}' (a partial write?), clearing it"
                    )),
                    Action::ClearMailbox {
                        disk,
                        seen: mailbox,
                    },
                ]
            }
            Command::Exit => {
                self.state = State::Exiting;
                vec![Action::Exit { disk }]
            }
            cmd @ (Command::Reset | Command::Off | Command::Crashdump) => {
                self.state = State::Fenced;
                vec![Action::Fence(FenceReason::Message { cmd, from, disk })]
            }
        }
    }

    /// Re-evaluates health at `now`: feed while enough disks are healthy, fence once the
    /// watchdog timeout passed without. Call it often (at least every loop timeout).
    pub fn tick(&mut self, now: Duration) -> Vec<Action> {
        if self.state != State::Running {
            return Vec::new();
        }
        let window = self.health_window();
        let mut actions = Vec::new();
        for (i, d) in self.disks.iter_mut().enumerate() {
            let healthy = d.last_good.is_some_and(|t| now.saturating_sub(t) < window);
            if healthy != d.healthy {
                actions.push(Action::Warn(if healthy {
                    format!("disk {i} is healthy again")
                } else {
                    format!("disk {i} has had no good read for {window:?}")
                }));
                d.healthy = healthy;
            }
        }
        let healthy = self.disks.iter().filter(|d| d.healthy).count();
        let disk_quorum = quorum_read(healthy, self.disks.len());
        let cluster_healthy = self
            .cluster_healthy_at
            .is_some_and(|t| now.saturating_sub(t) < window);
        let by_cluster = !disk_quorum && cluster_healthy;
        if by_cluster != self.fed_by_cluster {
            let disks = self.disks.len();
            actions.push(Action::Warn(match (by_cluster, disk_quorum) {
                (true, _) => format!(
                    "only {healthy} of {disks} disks healthy; the cluster is quorate and sees a peer: still feeding the watchdog"
                ),
                (false, true) => format!("{healthy} of {disks} disks healthy again"),
                (false, false) => format!(
                    "only {healthy} of {disks} disks healthy and the cluster no longer quorate with a peer: not feeding the watchdog"
                ),
            }));
        }
        self.fed_by_cluster = by_cluster;
        if may_feed(disk_quorum, cluster_healthy) {
            self.last_feed = now;
            actions.push(Action::Feed);
        } else if now.saturating_sub(self.last_feed) > secs(self.timeouts.watchdog_s) {
            self.state = State::Fenced;
            let disks = self.disks.len();
            actions.push(Action::Fence(if self.integrated {
                FenceReason::StorageAndClusterLost { healthy, disks }
            } else {
                FenceReason::StorageLost { healthy, disks }
            }));
        }
        actions
    }
}

#[cfg(test)]
mod tests;
