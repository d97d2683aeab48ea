//! A resource group: members started in order on the Primary after promotion and stopped in
//! reverse before demotion (DESIGN §8; Pacemaker's group semantics).
//!
//! A failed start stops what was started (the failed member too: it may be half up), in
//! reverse. A failed stop ends the stop there and is reported: the members before it stay up,
//! and the caller must not demote under them (Pacemaker fences a node whose stop failed).

use std::time::Duration;

use crate::ocf::{OcfResource, Runner};

/// A member's failure, for the log and the alert.
pub type MemberError = Box<dyn std::error::Error + Send + Sync>;

/// Something a group starts, stops and monitors: an OCF agent, a floating IP, an export.
pub trait Member {
    /// The name in logs and alerts (`CRM_alert_rsc`).
    fn name(&self) -> String;
    /// Starts it; idempotent.
    fn start(&mut self) -> Result<(), MemberError>;
    /// Stops it; idempotent (stopping a stopped member succeeds).
    fn stop(&mut self) -> Result<(), MemberError>;
    /// `Ok(true)` running, `Ok(false)` cleanly stopped, an error when failed.
    fn monitor(&mut self) -> Result<bool, MemberError>;
}

/// A group's members, in start order.
pub type Members = Vec<Box<dyn Member + Send>>;

/// Errors of a group operation.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// A member failed to start; the members started before it were stopped again, unless
    /// `rollback` says a stop failed too.
    #[error("{member}: start failed: {source}{}", rollback.as_ref().map(|e| format!("; and then {e}")).unwrap_or_default())]
    StartFailed {
        /// The member.
        member: String,
        /// Why.
        source: MemberError,
        /// A stop that failed while undoing the start.
        rollback: Option<Box<GroupError>>,
    },
    /// A member failed to stop; it and the members before it may still run.
    #[error("{member}: stop failed: {source}")]
    StopFailed {
        /// The member.
        member: String,
        /// Why.
        source: MemberError,
    },
}

/// Starts `members` in order. On a failure, stops that member and the ones before it in
/// reverse, and returns the start failure.
pub fn start(members: &mut [Box<dyn Member + Send>]) -> Result<(), GroupError> {
    for i in 0..members.len() {
        if let Err(source) = members[i].start() {
            let rollback = stop(&mut members[..=i]).err().map(Box::new);
            return Err(GroupError::StartFailed {
                member: members[i].name(),
                source,
                rollback,
            });
        }
    }
    Ok(())
}

/// Stops `members` in reverse order; the first failure ends the stop.
pub fn stop(members: &mut [Box<dyn Member + Send>]) -> Result<(), GroupError> {
    for m in members.iter_mut().rev() {
        m.stop().map_err(|source| GroupError::StopFailed {
            member: m.name(),
            source,
        })?;
    }
    Ok(())
}

/// Monitors every member; the names of those not running or failed, with why.
pub fn monitor(members: &mut [Box<dyn Member + Send>]) -> Vec<(String, Option<MemberError>)> {
    let mut bad = Vec::new();
    for m in members.iter_mut() {
        match m.monitor() {
            Ok(true) => {}
            Ok(false) => bad.push((m.name(), None)),
            Err(e) => bad.push((m.name(), Some(e))),
        }
    }
    bad
}

/// An OCF agent as a group member, with one timeout per operation.
#[derive(Debug, Clone)]
pub struct OcfMember {
    /// The agent runner.
    pub runner: Runner,
    /// The resource.
    pub resource: OcfResource,
    /// Timeout of start.
    pub start_timeout: Duration,
    /// Timeout of stop.
    pub stop_timeout: Duration,
    /// Timeout of monitor.
    pub monitor_timeout: Duration,
}

impl Member for OcfMember {
    fn name(&self) -> String {
        self.resource.instance.clone()
    }
    fn start(&mut self) -> Result<(), MemberError> {
        Ok(self.runner.start(&self.resource, self.start_timeout)?)
    }
    fn stop(&mut self) -> Result<(), MemberError> {
        Ok(self.runner.stop(&self.resource, self.stop_timeout)?)
    }
    fn monitor(&mut self) -> Result<bool, MemberError> {
        Ok(self.runner.monitor(&self.resource, self.monitor_timeout)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records every call in a shared log; fails the operations it is told to.
    struct Fake {
        name: &'static str,
        log: Arc<Mutex<Vec<String>>>,
        fail_start: bool,
        fail_stop: bool,
    }

    impl Member for Fake {
        fn name(&self) -> String {
            self.name.into()
        }
        fn start(&mut self) -> Result<(), MemberError> {
            self.log
                .lock()
                .unwrap()
                .push(format!("start {}", self.name));
            if self.fail_start {
                return Err("boom".into());
            }
            Ok(())
        }
        fn stop(&mut self) -> Result<(), MemberError> {
            self.log.lock().unwrap().push(format!("stop {}", self.name));
            if self.fail_stop {
                return Err("stuck".into());
            }
            Ok(())
        }
        fn monitor(&mut self) -> Result<bool, MemberError> {
            Ok(true)
        }
    }

    fn group(specs: &[(&'static str, bool, bool)]) -> (Members, Arc<Mutex<Vec<String>>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let members = specs
            .iter()
            .map(|&(name, fail_start, fail_stop)| {
                Box::new(Fake {
                    name,
                    log: log.clone(),
                    fail_start,
                    fail_stop,
                }) as Box<dyn Member + Send>
            })
            .collect();
        (members, log)
    }

    #[test]
    fn starts_in_order_and_stops_in_reverse() {
        let (mut g, log) = group(&[
            ("nbd", false, false),
            ("fs", false, false),
            ("vip", false, false),
        ]);
        start(&mut g).unwrap();
        stop(&mut g).unwrap();
        assert_eq!(
            *log.lock().unwrap(),
            [
                "start nbd",
                "start fs",
                "start vip",
                "stop vip",
                "stop fs",
                "stop nbd"
            ]
        );
        assert!(monitor(&mut g).is_empty());
    }

    #[test]
    fn a_failed_start_stops_what_was_started() {
        let (mut g, log) = group(&[
            ("nbd", false, false),
            ("fs", true, false),
            ("vip", false, false),
        ]);
        let err = start(&mut g).unwrap_err();
        assert!(
            matches!(&err, GroupError::StartFailed { member, rollback: None, .. } if member == "fs"),
            "{err}"
        );
        assert_eq!(
            *log.lock().unwrap(),
            ["start nbd", "start fs", "stop fs", "stop nbd"]
        );
    }

    #[test]
    fn a_failed_stop_while_undoing_a_start_is_reported() {
        let (mut g, log) = group(&[("nbd", false, true), ("fs", true, false)]);
        let err = start(&mut g).unwrap_err();
        assert!(err.to_string().contains("nbd: stop failed: stuck"), "{err}");
        assert_eq!(
            *log.lock().unwrap(),
            ["start nbd", "start fs", "stop fs", "stop nbd"]
        );
    }

    #[test]
    fn a_failed_stop_leaves_the_earlier_members_running() {
        let (mut g, log) = group(&[
            ("nbd", false, false),
            ("fs", false, true),
            ("vip", false, false),
        ]);
        start(&mut g).unwrap();
        let err = stop(&mut g).unwrap_err();
        assert!(matches!(&err, GroupError::StopFailed { member, .. } if member == "fs"));
        assert_eq!(log.lock().unwrap()[3..], ["stop vip", "stop fs"]);
    }

    /// A group of two real Debian `Dummy` agents, the second one misconfigured so its start
    /// fails: the first is stopped again.
    #[test]
    fn a_group_of_debian_dummies_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let runner = Runner {
            ocf_root: crate::ocf::OCF_ROOT_DEFAULT.into(),
        };
        let member = |name: &str, state: std::path::PathBuf| -> Box<dyn Member + Send> {
            Box::new(OcfMember {
                runner: runner.clone(),
                resource: OcfResource::new(
                    name,
                    "heartbeat:Dummy",
                    &[("state".into(), state.display().to_string())],
                )
                .unwrap(),
                start_timeout: Duration::from_secs(20),
                stop_timeout: Duration::from_secs(20),
                monitor_timeout: Duration::from_secs(20),
            })
        };
        let ok_state = dir.path().join("one.state");
        // Dummy's start writes its state file: a directory that does not exist makes it fail.
        let bad_state = dir.path().join("missing/dir/two.state");
        let mut g = vec![member("one", ok_state.clone()), member("two", bad_state)];
        let err = start(&mut g).unwrap_err();
        assert!(
            matches!(&err, GroupError::StartFailed { member, rollback: None, .. } if member == "two"),
            "{err}"
        );
        assert!(!ok_state.exists(), "the first Dummy was stopped again");
        assert_eq!(g.len(), 2);
    }
}
