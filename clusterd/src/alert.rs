//! Pacemaker alerts: on every node, fencing and resource event clusterd runs each configured
//! alert program (`alert "/usr/local/bin/print-receipt";`) with Pacemaker's alert environment,
//! so existing alert agents (Pacemaker's `alert_file.sh.sample`, `alert_smtp.sh.sample`, a
//! receipt printer) work as they are.
//!
//! The environment follows Pacemaker Explained, "Alert Agents", and Pacemaker's
//! `lib/common/alerts.c`: every variable is set as `CRM_alert_*` and, for agents written for the
//! older `ClusterMon` external-agent interface, as `CRM_notify_*` too. `CRM_alert_node_sequence`
//! grows by one per event on this node (all agents of one event see the same number);
//! `CRM_alert_timestamp` is the local time in the `timestamp-format` (default
//! `%H:%M:%S.%06N`, microseconds), taken once per event before any agent runs.
//!
//! Agents run in threads of their own with a timeout ([`ALERT_TIMEOUT`], Pacemaker's default):
//! [`Alerter::send`] returns at once, so an agent that hangs never holds up a failover.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::exec::{self, Ended};

/// Pacemaker's default alert timeout.
pub const ALERT_TIMEOUT: Duration = Duration::from_secs(30);

/// Pacemaker's default `timestamp-format`.
pub const TIMESTAMP_FORMAT: &str = "%H:%M:%S.%06N";

/// `CRM_alert_version`: the Pacemaker release whose alert interface this follows (agents read
/// it as "the version of Pacemaker sending the alert").
pub const ALERT_VERSION: &str = "2.1.5";

/// Agent runs allowed in flight at once; an event beyond it is not alerted (and the caller
/// told), so a storm of events with hanging agents cannot exhaust processes.
pub const MAX_IN_FLIGHT: usize = 64;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    /// Too many agent runs are still going.
    #[error("{in_flight} alert agents still running: not alerting '{desc}'")]
    TooManyInFlight {
        /// How many.
        in_flight: usize,
        /// The event not alerted.
        desc: String,
    },
    /// The agent could not be started.
    #[error("cannot run alert agent {path}: {source}")]
    Spawn {
        /// The agent.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The agent failed or timed out.
    #[error("alert agent {path} failed ({ended:?}): {stderr}")]
    Failed {
        /// The agent.
        path: PathBuf,
        /// How it ended.
        ended: Ended,
        /// What it said.
        stderr: String,
    },
}

/// `CRM_alert_kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertKind {
    /// A node joined or was lost.
    Node,
    /// A fencing operation finished.
    Fencing,
    /// A resource operation finished.
    Resource,
    /// A node attribute changed.
    Attribute,
}

impl AlertKind {
    /// Pacemaker's name.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Node => "node",
            AlertKind::Fencing => "fencing",
            AlertKind::Resource => "resource",
            AlertKind::Attribute => "attribute",
        }
    }

    /// From Pacemaker's name (the core's `Action::Alert::kind`).
    pub fn parse(s: &str) -> Option<AlertKind> {
        Some(match s {
            "node" => AlertKind::Node,
            "fencing" => AlertKind::Fencing,
            "resource" => AlertKind::Resource,
            "attribute" => AlertKind::Attribute,
            _ => return None,
        })
    }
}

/// Pacemaker's operation execution status (`enum pcmk_exec_status`), `CRM_alert_status`.
pub mod exec_status {
    /// The operation completed (its `rc` says how).
    pub const DONE: i32 = 0;
    /// It was cancelled.
    pub const CANCELLED: i32 = 1;
    /// It timed out.
    pub const TIMEOUT: i32 = 2;
    /// The agent does not support it.
    pub const NOT_SUPPORTED: i32 = 3;
    /// It could not be executed.
    pub const ERROR: i32 = 4;
    /// The agent is not installed.
    pub const NOT_INSTALLED: i32 = 7;
}

/// One event to alert.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AlertEvent {
    /// `CRM_alert_kind`.
    pub kind: Option<AlertKind>,
    /// `CRM_alert_node`: the node concerned.
    pub node: String,
    /// `CRM_alert_nodeid` (node alerts).
    pub nodeid: Option<u32>,
    /// `CRM_alert_desc`.
    pub desc: String,
    /// `CRM_alert_task` (fencing and resource alerts).
    pub task: Option<String>,
    /// `CRM_alert_rc` (fencing and resource alerts).
    pub rc: Option<i32>,
    /// `CRM_alert_rsc` (resource alerts).
    pub rsc: Option<String>,
    /// `CRM_alert_interval` in ms (resource alerts).
    pub interval_ms: Option<u64>,
    /// `CRM_alert_target_rc` (resource alerts).
    pub target_rc: Option<i32>,
    /// `CRM_alert_status` (resource alerts), see [`exec_status`].
    pub status: Option<i32>,
    /// `CRM_alert_attribute_name` and `_value` (attribute alerts).
    pub attribute: Option<(String, String)>,
}

impl AlertEvent {
    /// A node became a member (`member`) or was lost (`lost`).
    pub fn node(node: &str, nodeid: u32, member: bool) -> AlertEvent {
        AlertEvent {
            kind: Some(AlertKind::Node),
            node: node.into(),
            nodeid: Some(nodeid),
            desc: if member { "member" } else { "lost" }.into(),
            ..AlertEvent::default()
        }
    }

    /// A fencing operation (`task` `off`, `reboot`) of `target` finished with `rc` (0 done).
    pub fn fencing(target: &str, task: &str, rc: i32, desc: &str) -> AlertEvent {
        AlertEvent {
            kind: Some(AlertKind::Fencing),
            node: target.into(),
            desc: desc.into(),
            task: Some(task.into()),
            rc: Some(rc),
            ..AlertEvent::default()
        }
    }

    /// A resource operation on `node` finished: `status` is how it ran ([`exec_status`]),
    /// `rc` the agent's answer, `target_rc` the answer expected. The description is
    /// Pacemaker's: the OCF answer's text when the operation completed, else the status's.
    pub fn resource(
        rsc: &str,
        node: &str,
        task: &str,
        interval_ms: u64,
        status: i32,
        rc: i32,
        target_rc: i32,
    ) -> AlertEvent {
        let desc = if status == exec_status::DONE {
            crate::ocf::OcfStatus::from_code(rc).description()
        } else {
            match status {
                exec_status::CANCELLED => "Cancelled",
                exec_status::TIMEOUT => "Timed Out",
                exec_status::NOT_SUPPORTED => "NOT SUPPORTED",
                exec_status::NOT_INSTALLED => "Not installed",
                _ => "Error",
            }
        };
        AlertEvent {
            kind: Some(AlertKind::Resource),
            node: node.into(),
            desc: desc.into(),
            task: Some(task.into()),
            rc: Some(rc),
            rsc: Some(rsc.into()),
            interval_ms: Some(interval_ms),
            target_rc: Some(target_rc),
            status: Some(status),
            ..AlertEvent::default()
        }
    }
}

/// The moment of an event: seconds and microseconds since the epoch, and the local time of
/// day and date for the formatted stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp {
    /// Seconds since the epoch.
    pub epoch_s: i64,
    /// Microseconds within the second.
    pub usec: u32,
    /// Local year, month 1..=12, day 1..=31, hour, minute, second.
    pub local: (i32, u32, u32, u32, u32, u32),
}

impl Timestamp {
    /// Now, in the local time zone.
    pub fn now() -> Timestamp {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let epoch_s = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        let t: libc::time_t = epoch_s as libc::time_t;
        // SAFETY: an all-zero `tm` is a valid value; localtime_r writes into it and reads `t`;
        // both live on this stack frame for the duration of the call.
        let tm = unsafe {
            let mut tm: libc::tm = std::mem::zeroed();
            libc::localtime_r(&t, &mut tm);
            tm
        };
        let u = |v: libc::c_int| u32::try_from(v).unwrap_or(0);
        Timestamp {
            epoch_s,
            usec: d.subsec_micros(),
            local: (
                tm.tm_year + 1900,
                u(tm.tm_mon) + 1,
                u(tm.tm_mday),
                u(tm.tm_hour),
                u(tm.tm_min),
                u(tm.tm_sec),
            ),
        }
    }
}

/// Formats `ts` in Pacemaker's `timestamp-format`: strftime's `%Y %m %d %H %M %S %s %%`, and
/// Pacemaker's `%<digits>N`, the fraction of the second with that many digits (the last digit
/// counts: `%06N` and `%6N` give microseconds, `%3N` milliseconds). Others are kept as they
/// are.
pub fn format_timestamp(fmt: &str, ts: &Timestamp) -> String {
    let (year, month, day, hour, min, sec) = ts.local;
    let mut out = String::new();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut digits = String::new();
        while let Some(&d) = chars.peek() {
            if d.is_ascii_digit() {
                digits.push(d);
                chars.next();
            } else {
                break;
            }
        }
        match chars.next() {
            Some('N') => {
                let width = digits
                    .chars()
                    .last()
                    .and_then(|d| d.to_digit(10))
                    .unwrap_or(9) as usize;
                let nanos = format!("{:09}", u64::from(ts.usec) * 1000);
                out.push_str(&nanos[..width.min(9)]);
            }
            Some('Y') => out.push_str(&year.to_string()),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('H') => out.push_str(&format!("{hour:02}")),
            Some('M') => out.push_str(&format!("{min:02}")),
            Some('S') => out.push_str(&format!("{sec:02}")),
            Some('s') => out.push_str(&ts.epoch_s.to_string()),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push_str(&digits);
                out.push(other);
            }
            None => {
                out.push('%');
                out.push_str(&digits);
            }
        }
    }
    out
}

/// The environment of one agent run for `event`, alert number `sequence` on this node.
pub fn environment(
    event: &AlertEvent,
    sequence: u64,
    recipient: Option<&str>,
    ts: &Timestamp,
    timestamp_format: &str,
) -> Vec<(String, String)> {
    let stamp = format_timestamp(timestamp_format, ts);
    let mut vars: Vec<(&str, String)> = vec![
        (
            "kind",
            event.kind.map(AlertKind::as_str).unwrap_or("").to_string(),
        ),
        ("version", ALERT_VERSION.into()),
        ("node_sequence", sequence.to_string()),
        ("timestamp", stamp.clone()),
        ("timestamp_epoch", ts.epoch_s.to_string()),
        ("timestamp_usec", ts.usec.to_string()),
        // The agent is started right after the stamp is taken.
        ("exec_time", stamp),
        ("node", event.node.clone()),
        ("desc", event.desc.clone()),
    ];
    if let Some(r) = recipient {
        vars.push(("recipient", r.into()));
    }
    if let Some(id) = event.nodeid {
        vars.push(("nodeid", id.to_string()));
    }
    if let Some(t) = &event.task {
        vars.push(("task", t.clone()));
    }
    if let Some(rc) = event.rc {
        vars.push(("rc", rc.to_string()));
    }
    if let Some(rsc) = &event.rsc {
        vars.push(("rsc", rsc.clone()));
    }
    if let Some(i) = event.interval_ms {
        vars.push(("interval", i.to_string()));
    }
    if let Some(t) = event.target_rc {
        vars.push(("target_rc", t.to_string()));
    }
    if let Some(s) = event.status {
        vars.push(("status", s.to_string()));
    }
    if let Some((name, value)) = &event.attribute {
        vars.push(("attribute_name", name.clone()));
        vars.push(("attribute_value", value.clone()));
    }
    let mut env = Vec::with_capacity(vars.len() * 2);
    for (k, v) in vars {
        env.push((format!("CRM_alert_{k}"), v.clone()));
        env.push((format!("CRM_notify_{k}"), v));
    }
    env
}

/// One configured alert program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertAgent {
    /// The program.
    pub path: PathBuf,
    /// `CRM_alert_recipient`, if one is configured.
    pub recipient: Option<String>,
    /// `timestamp-format`.
    pub timestamp_format: String,
    /// How long it may run.
    pub timeout: Duration,
}

impl AlertAgent {
    /// An agent with Pacemaker's defaults.
    pub fn new(path: impl Into<PathBuf>) -> AlertAgent {
        AlertAgent {
            path: path.into(),
            recipient: None,
            timestamp_format: TIMESTAMP_FORMAT.into(),
            timeout: ALERT_TIMEOUT,
        }
    }
}

/// Runs the alert agents of this node, numbering the events.
#[derive(Debug)]
pub struct Alerter {
    agents: Vec<AlertAgent>,
    sequence: u64,
    in_flight: Arc<AtomicUsize>,
}

/// Decrements the in-flight count when a run ends, also when its thread panics.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Alerter {
    /// Agents from the configuration's `alert PATH;` lines, with Pacemaker's defaults.
    pub fn new(paths: &[String]) -> Alerter {
        Alerter::with_agents(paths.iter().map(AlertAgent::new).collect())
    }

    /// Agents as given.
    pub fn with_agents(agents: Vec<AlertAgent>) -> Alerter {
        Alerter {
            agents,
            sequence: 0,
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The number the next event will carry.
    pub fn next_sequence(&self) -> u64 {
        self.sequence + 1
    }

    /// Starts every agent for `event` in a thread of its own and returns at once; the handles
    /// say how each run went (the daemon may drop them, the runs go on).
    pub fn send(
        &mut self,
        event: &AlertEvent,
    ) -> Result<Vec<JoinHandle<Result<(), AlertError>>>, AlertError> {
        self.sequence += 1;
        let in_flight = self.in_flight.load(Ordering::SeqCst);
        if in_flight + self.agents.len() > MAX_IN_FLIGHT {
            return Err(AlertError::TooManyInFlight {
                in_flight,
                desc: event.desc.clone(),
            });
        }
        let ts = Timestamp::now();
        let mut handles = Vec::with_capacity(self.agents.len());
        for agent in &self.agents {
            let env = environment(
                event,
                self.sequence,
                agent.recipient.as_deref(),
                &ts,
                &agent.timestamp_format,
            );
            let agent = agent.clone();
            self.in_flight.fetch_add(1, Ordering::SeqCst);
            let guard = InFlight(self.in_flight.clone());
            handles.push(std::thread::spawn(move || {
                let _guard = guard;
                run_agent(&agent, env)
            }));
        }
        Ok(handles)
    }
}

fn run_agent(agent: &AlertAgent, env: Vec<(String, String)>) -> Result<(), AlertError> {
    let mut cmd = Command::new(&agent.path);
    // Pacemaker passes the recipient as the environment only; no arguments.
    cmd.envs(env);
    let done = exec::run(cmd, agent.timeout).map_err(|source| AlertError::Spawn {
        path: agent.path.clone(),
        source,
    })?;
    if done.ended != Ended::Exited(0) {
        return Err(AlertError::Failed {
            path: agent.path.clone(),
            ended: done.ended,
            stderr: done.stderr.trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn ts() -> Timestamp {
        Timestamp {
            epoch_s: 1_795_395_723,
            usec: 4_567,
            local: (2026, 11, 23, 1, 2, 3),
        }
    }

    #[test]
    fn pacemakers_default_timestamp_has_microseconds() {
        assert_eq!(format_timestamp(TIMESTAMP_FORMAT, &ts()), "01:02:03.004567");
        assert_eq!(format_timestamp("%3N", &ts()), "004");
        assert_eq!(format_timestamp("%6N", &ts()), "004567");
        assert_eq!(format_timestamp("%N", &ts()), "004567000");
        assert_eq!(
            format_timestamp("%Y-%m-%d %s %% %q", &ts()),
            "2026-11-23 1795395723 % %q"
        );
    }

    fn env_map(env: Vec<(String, String)>) -> BTreeMap<String, String> {
        env.into_iter().collect()
    }

    #[test]
    fn a_node_alert_has_the_node_fields_and_both_prefixes() {
        let e = env_map(environment(
            &AlertEvent::node("beta", 2, false),
            7,
            Some("ops@example.com"),
            &ts(),
            TIMESTAMP_FORMAT,
        ));
        assert_eq!(e["CRM_alert_kind"], "node");
        assert_eq!(e["CRM_alert_node"], "beta");
        assert_eq!(e["CRM_alert_nodeid"], "2");
        assert_eq!(e["CRM_alert_desc"], "lost");
        assert_eq!(e["CRM_alert_node_sequence"], "7");
        assert_eq!(e["CRM_alert_recipient"], "ops@example.com");
        assert_eq!(e["CRM_alert_timestamp"], "01:02:03.004567");
        assert_eq!(e["CRM_alert_timestamp_epoch"], "1795395723");
        assert_eq!(e["CRM_alert_timestamp_usec"], "4567");
        assert_eq!(e["CRM_alert_version"], ALERT_VERSION);
        assert_eq!(e["CRM_notify_desc"], "lost");
        assert!(
            !e.contains_key("CRM_alert_rsc"),
            "node alerts carry no resource"
        );
        assert!(!e.contains_key("CRM_alert_task"));
    }

    #[test]
    fn fencing_and_resource_alerts_carry_task_and_rc() {
        let e = env_map(environment(
            &AlertEvent::fencing("alpha", "off", 0, "Operation off of alpha by beta: OK"),
            1,
            None,
            &ts(),
            TIMESTAMP_FORMAT,
        ));
        assert_eq!(e["CRM_alert_kind"], "fencing");
        assert_eq!(e["CRM_alert_task"], "off");
        assert_eq!(e["CRM_alert_rc"], "0");
        assert!(!e.contains_key("CRM_alert_recipient"));
        let e = env_map(environment(
            &AlertEvent::resource("r0-fs", "beta", "monitor", 10_000, exec_status::DONE, 7, 0),
            2,
            None,
            &ts(),
            TIMESTAMP_FORMAT,
        ));
        assert_eq!(e["CRM_alert_kind"], "resource");
        assert_eq!(e["CRM_alert_rsc"], "r0-fs");
        assert_eq!(e["CRM_alert_task"], "monitor");
        assert_eq!(e["CRM_alert_interval"], "10000");
        assert_eq!(e["CRM_alert_rc"], "7");
        assert_eq!(e["CRM_alert_target_rc"], "0");
        assert_eq!(e["CRM_alert_status"], "0");
        assert_eq!(e["CRM_alert_desc"], "not running");
        let t = AlertEvent::resource("r0-fs", "beta", "start", 0, exec_status::TIMEOUT, 1, 0);
        assert_eq!(t.desc, "Timed Out");
    }

    fn script(dir: &std::path::Path, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn read_env(path: &std::path::Path) -> BTreeMap<String, String> {
        std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .lines()
            .filter_map(|l| l.split_once('='))
            .filter(|(k, _)| k.starts_with("CRM_"))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_agent_runs_with_the_environment_and_the_sequence_grows_per_event() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().display().to_string();
        let a = script(
            dir.path(),
            "a.sh",
            &format!("env > {out}/a.$CRM_alert_node_sequence"),
        );
        let b = script(
            dir.path(),
            "b.sh",
            &format!("env > {out}/b.$CRM_alert_node_sequence"),
        );
        let mut alerter = Alerter::new(&[a.display().to_string(), b.display().to_string()]);
        assert_eq!(alerter.next_sequence(), 1);
        for h in alerter.send(&AlertEvent::node("alpha", 1, true)).unwrap() {
            h.join().unwrap().unwrap();
        }
        let event = AlertEvent::fencing("beta", "reboot", 0, "beta was fenced");
        for h in alerter.send(&event).unwrap() {
            h.join().unwrap().unwrap();
        }
        let a1 = read_env(&dir.path().join("a.1"));
        let b1 = read_env(&dir.path().join("b.1"));
        assert_eq!(a1, b1, "both agents of one event see the same environment");
        assert_eq!(a1["CRM_alert_kind"], "node");
        assert_eq!(a1["CRM_alert_desc"], "member");
        assert_eq!(a1["CRM_alert_node"], "alpha");
        let stamp = &a1["CRM_alert_timestamp"];
        assert_eq!(stamp.len(), "HH:MM:SS.uuuuuu".len(), "{stamp}");
        assert_eq!(&stamp[2..3], ":");
        assert_eq!(&stamp[8..9], ".");
        let a2 = read_env(&dir.path().join("a.2"));
        assert_eq!(a2["CRM_alert_node_sequence"], "2");
        assert_eq!(a2["CRM_alert_kind"], "fencing");
        assert_eq!(a2["CRM_alert_task"], "reboot");
        assert_eq!(a2["CRM_notify_node"], "beta");
        assert!(
            a2["CRM_alert_timestamp_epoch"].parse::<i64>().unwrap()
                >= a1["CRM_alert_timestamp_epoch"].parse::<i64>().unwrap()
        );
    }

    #[test]
    fn a_hanging_agent_does_not_hold_the_caller_and_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let hang = script(dir.path(), "hang.sh", "sleep 30");
        let fail = script(dir.path(), "fail.sh", "echo no paper >&2; exit 3");
        let mut hang = AlertAgent::new(hang);
        hang.timeout = Duration::from_millis(300);
        let mut alerter = Alerter::with_agents(vec![hang, AlertAgent::new(fail)]);
        let t = std::time::Instant::now();
        let handles = alerter.send(&AlertEvent::node("alpha", 1, false)).unwrap();
        assert!(t.elapsed() < Duration::from_millis(200), "send blocked");
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(
            matches!(
                &results[0],
                Err(AlertError::Failed {
                    ended: Ended::TimedOut,
                    ..
                })
            ),
            "{results:?}"
        );
        assert!(
            matches!(&results[1], Err(AlertError::Failed { ended: Ended::Exited(3), stderr, .. }) if stderr == "no paper"),
            "{results:?}"
        );
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(alerter.in_flight.load(Ordering::SeqCst), 0);
    }
}
