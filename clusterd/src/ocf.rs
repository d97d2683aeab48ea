//! OCF resource agents (OCF Resource Agent API 1.1), run the way Pacemaker's executor runs
//! them, so Debian's `resource-agents` work unchanged.
//!
//! A resource `ocf heartbeat:Filesystem device=/dev/nbd0 directory=/srv/r0;` names the agent
//! `$OCF_ROOT/resource.d/heartbeat/Filesystem`. The action is the agent's only argument; the
//! parameters arrive as `OCF_RESKEY_<name>`, the operation's timeout as
//! `OCF_RESKEY_CRM_meta_timeout` in milliseconds, and the answer is the exit status
//! ([`OcfStatus`]). The pure parts ([`AgentType::parse`], [`AgentType::path`],
//! [`environment`], [`OcfStatus::from_code`]) are separate from the one function that runs a
//! process ([`Runner::run`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::exec::{self, Ended};

/// Where OCF agents live when `OCF_ROOT` is not set.
pub const OCF_ROOT_DEFAULT: &str = "/usr/lib/ocf";

/// The OCF RA API version clusterd speaks.
pub const OCF_RA_VERSION: (u32, u32) = (1, 1);

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum OcfError {
    /// The agent name is not `provider:type` or `ocf:provider:type`.
    #[error("bad OCF agent name '{0}': expected PROVIDER:TYPE or ocf:PROVIDER:TYPE")]
    BadAgentName(String),
    /// A parameter name that cannot be an environment variable name.
    #[error("bad OCF parameter name '{0}': letters, digits and '_' only")]
    BadParameter(String),
    /// The agent could not be started at all.
    #[error("cannot run {path}: {source}")]
    Spawn {
        /// The agent.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The agent did not finish within the operation's timeout (its process group was killed).
    #[error("{instance}: {action} timed out after {timeout_ms} ms")]
    TimedOut {
        /// The resource instance.
        instance: String,
        /// The action.
        action: &'static str,
        /// The limit.
        timeout_ms: u64,
    },
    /// The agent was killed by a signal.
    #[error("{instance}: {action} killed by signal {signal}")]
    Signalled {
        /// The resource instance.
        instance: String,
        /// The action.
        action: &'static str,
        /// The signal.
        signal: i32,
    },
    /// The action finished with a status that means failure for it.
    #[error("{instance}: {action} failed: {status}")]
    Failed {
        /// The resource instance.
        instance: String,
        /// The action.
        action: &'static str,
        /// The agent's answer.
        status: OcfStatus,
    },
}

/// An agent's exit status (OCF RA API 1.1, "Return codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OcfStatus {
    /// 0 `OCF_SUCCESS`.
    Success,
    /// 1 `OCF_ERR_GENERIC`.
    ErrGeneric,
    /// 2 `OCF_ERR_ARGS`.
    ErrArgs,
    /// 3 `OCF_ERR_UNIMPLEMENTED`.
    ErrUnimplemented,
    /// 4 `OCF_ERR_PERM`.
    ErrPerm,
    /// 5 `OCF_ERR_INSTALLED`.
    ErrInstalled,
    /// 6 `OCF_ERR_CONFIGURED`.
    ErrConfigured,
    /// 7 `OCF_NOT_RUNNING`.
    NotRunning,
    /// 8 `OCF_RUNNING_PROMOTED` (`OCF_RUNNING_MASTER`).
    RunningPromoted,
    /// 9 `OCF_FAILED_PROMOTED` (`OCF_FAILED_MASTER`).
    FailedPromoted,
    /// Any other status (reserved or agent-specific): a failure.
    Other(i32),
}

impl OcfStatus {
    /// The status for an exit code.
    pub fn from_code(code: i32) -> OcfStatus {
        match code {
            0 => OcfStatus::Success,
            1 => OcfStatus::ErrGeneric,
            2 => OcfStatus::ErrArgs,
            3 => OcfStatus::ErrUnimplemented,
            4 => OcfStatus::ErrPerm,
            5 => OcfStatus::ErrInstalled,
            6 => OcfStatus::ErrConfigured,
            7 => OcfStatus::NotRunning,
            8 => OcfStatus::RunningPromoted,
            9 => OcfStatus::FailedPromoted,
            other => OcfStatus::Other(other),
        }
    }

    /// The exit code.
    pub fn code(self) -> i32 {
        match self {
            OcfStatus::Success => 0,
            OcfStatus::ErrGeneric => 1,
            OcfStatus::ErrArgs => 2,
            OcfStatus::ErrUnimplemented => 3,
            OcfStatus::ErrPerm => 4,
            OcfStatus::ErrInstalled => 5,
            OcfStatus::ErrConfigured => 6,
            OcfStatus::NotRunning => 7,
            OcfStatus::RunningPromoted => 8,
            OcfStatus::FailedPromoted => 9,
            OcfStatus::Other(c) => c,
        }
    }

    /// The OCF constant's name, as operators grep for it.
    pub fn name(self) -> &'static str {
        match self {
            OcfStatus::Success => "OCF_SUCCESS",
            OcfStatus::ErrGeneric => "OCF_ERR_GENERIC",
            OcfStatus::ErrArgs => "OCF_ERR_ARGS",
            OcfStatus::ErrUnimplemented => "OCF_ERR_UNIMPLEMENTED",
            OcfStatus::ErrPerm => "OCF_ERR_PERM",
            OcfStatus::ErrInstalled => "OCF_ERR_INSTALLED",
            OcfStatus::ErrConfigured => "OCF_ERR_CONFIGURED",
            OcfStatus::NotRunning => "OCF_NOT_RUNNING",
            OcfStatus::RunningPromoted => "OCF_RUNNING_PROMOTED",
            OcfStatus::FailedPromoted => "OCF_FAILED_PROMOTED",
            OcfStatus::Other(_) => "unknown",
        }
    }

    /// Pacemaker's text for the status (`services_ocf_exitcode_str`), used in alerts'
    /// `CRM_alert_desc`.
    pub fn description(self) -> &'static str {
        match self {
            OcfStatus::Success => "ok",
            OcfStatus::ErrGeneric => "error",
            OcfStatus::ErrArgs => "invalid parameter",
            OcfStatus::ErrUnimplemented => "unimplemented feature",
            OcfStatus::ErrPerm => "insufficient privileges",
            OcfStatus::ErrInstalled => "not installed",
            OcfStatus::ErrConfigured => "not configured",
            OcfStatus::NotRunning => "not running",
            OcfStatus::RunningPromoted => "promoted",
            OcfStatus::FailedPromoted => "promoted (failed)",
            OcfStatus::Other(_) => "unknown",
        }
    }
}

impl std::fmt::Display for OcfStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

/// The actions clusterd runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OcfAction {
    /// `start`
    Start,
    /// `stop`
    Stop,
    /// `monitor`
    Monitor,
    /// `meta-data`
    MetaData,
    /// `validate-all`
    ValidateAll,
}

impl OcfAction {
    /// The agent's argument.
    pub fn as_str(self) -> &'static str {
        match self {
            OcfAction::Start => "start",
            OcfAction::Stop => "stop",
            OcfAction::Monitor => "monitor",
            OcfAction::MetaData => "meta-data",
            OcfAction::ValidateAll => "validate-all",
        }
    }
}

/// Which agent: `ocf:PROVIDER:TYPE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentType {
    /// `heartbeat`, `pacemaker`, `linbit`, ...
    pub provider: String,
    /// `Filesystem`, `IPaddr2`, `Dummy`, ...
    pub kind: String,
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl AgentType {
    /// Parses `heartbeat:Filesystem` or `ocf:heartbeat:Filesystem`.
    pub fn parse(spec: &str) -> Result<AgentType, OcfError> {
        let parts: Vec<&str> = spec.split(':').collect();
        let (provider, kind) = match parts.as_slice() {
            [p, t] => (*p, *t),
            ["ocf", p, t] => (*p, *t),
            _ => return Err(OcfError::BadAgentName(spec.into())),
        };
        // The names become a path: no separators, no '..'.
        if !is_name(provider) || !is_name(kind) {
            return Err(OcfError::BadAgentName(spec.into()));
        }
        Ok(AgentType {
            provider: provider.into(),
            kind: kind.into(),
        })
    }

    /// `OCF_ROOT/resource.d/PROVIDER/TYPE`.
    pub fn path(&self, ocf_root: &Path) -> PathBuf {
        ocf_root
            .join("resource.d")
            .join(&self.provider)
            .join(&self.kind)
    }
}

impl std::fmt::Display for AgentType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ocf:{}:{}", self.provider, self.kind)
    }
}

/// One configured OCF resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcfResource {
    /// `OCF_RESOURCE_INSTANCE`: unique on the node (e.g. `r0-Filesystem`).
    pub instance: String,
    /// The agent.
    pub agent: AgentType,
    /// Instance parameters, in configuration order.
    pub params: Vec<(String, String)>,
}

impl OcfResource {
    /// A resource from the configuration's `ocf SPEC key=value...` (`ClusterResource::ocf`).
    pub fn new(
        instance: &str,
        spec: &str,
        params: &[(String, String)],
    ) -> Result<OcfResource, OcfError> {
        let agent = AgentType::parse(spec)?;
        for (k, _) in params {
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(OcfError::BadParameter(k.clone()));
            }
        }
        Ok(OcfResource {
            instance: instance.into(),
            agent,
            params: params.to_vec(),
        })
    }
}

/// The environment an agent runs with (besides the inherited one, e.g. `PATH`).
pub fn environment(ocf_root: &Path, res: &OcfResource, timeout: Duration) -> Vec<(String, String)> {
    let mut env = vec![
        ("OCF_ROOT".to_string(), ocf_root.display().to_string()),
        ("OCF_RA_VERSION_MAJOR".into(), OCF_RA_VERSION.0.to_string()),
        ("OCF_RA_VERSION_MINOR".into(), OCF_RA_VERSION.1.to_string()),
        ("OCF_RESOURCE_INSTANCE".into(), res.instance.clone()),
        ("OCF_RESOURCE_TYPE".into(), res.agent.kind.clone()),
        ("OCF_RESOURCE_PROVIDER".into(), res.agent.provider.clone()),
    ];
    for (k, v) in &res.params {
        env.push((format!("OCF_RESKEY_{k}"), v.clone()));
    }
    env.push((
        "OCF_RESKEY_CRM_meta_timeout".into(),
        timeout.as_millis().to_string(),
    ));
    env
}

/// What an action answered.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The exit status.
    pub status: OcfStatus,
    /// Standard output (the XML of `meta-data`).
    pub stdout: String,
    /// Standard error (the agent's complaints, for the log).
    pub stderr: String,
}

/// Runs agents found under one `OCF_ROOT`.
#[derive(Debug, Clone)]
pub struct Runner {
    /// `OCF_ROOT`.
    pub ocf_root: PathBuf,
}

impl Default for Runner {
    /// `$OCF_ROOT`, else [`OCF_ROOT_DEFAULT`].
    fn default() -> Runner {
        Runner {
            ocf_root: std::env::var_os("OCF_ROOT")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(OCF_ROOT_DEFAULT)),
        }
    }
}

impl Runner {
    /// Runs `action` of `res` with a time limit. A missing agent answers
    /// [`OcfStatus::ErrInstalled`] without running anything (as Pacemaker's executor does).
    /// Errors: the agent cannot be started, timed out, or was killed by a signal.
    pub fn run(
        &self,
        res: &OcfResource,
        action: OcfAction,
        timeout: Duration,
    ) -> Result<Outcome, OcfError> {
        let path = res.agent.path(&self.ocf_root);
        if !path.is_file() {
            return Ok(Outcome {
                status: OcfStatus::ErrInstalled,
                stdout: String::new(),
                stderr: format!("{} is not installed", path.display()),
            });
        }
        let mut cmd = Command::new(&path);
        cmd.arg(action.as_str())
            .envs(environment(&self.ocf_root, res, timeout));
        let done = exec::run(cmd, timeout).map_err(|source| OcfError::Spawn {
            path: path.clone(),
            source,
        })?;
        let status = match done.ended {
            Ended::Exited(code) => OcfStatus::from_code(code),
            Ended::TimedOut => {
                return Err(OcfError::TimedOut {
                    instance: res.instance.clone(),
                    action: action.as_str(),
                    timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                })
            }
            Ended::Signalled(signal) => {
                return Err(OcfError::Signalled {
                    instance: res.instance.clone(),
                    action: action.as_str(),
                    signal,
                })
            }
        };
        Ok(Outcome {
            status,
            stdout: done.stdout,
            stderr: done.stderr,
        })
    }

    /// `start`: succeeds on `OCF_SUCCESS` only.
    pub fn start(&self, res: &OcfResource, timeout: Duration) -> Result<(), OcfError> {
        self.expect(res, OcfAction::Start, timeout, &[OcfStatus::Success])
    }

    /// `stop`: succeeds on `OCF_SUCCESS` (agents must answer 0 for a stopped resource; a
    /// `OCF_NOT_RUNNING` from a sloppy agent is taken as stopped too, as Pacemaker does).
    pub fn stop(&self, res: &OcfResource, timeout: Duration) -> Result<(), OcfError> {
        self.expect(
            res,
            OcfAction::Stop,
            timeout,
            &[OcfStatus::Success, OcfStatus::NotRunning],
        )
    }

    /// `monitor`: `Ok(true)` running, `Ok(false)` cleanly stopped, an error for a failure.
    pub fn monitor(&self, res: &OcfResource, timeout: Duration) -> Result<bool, OcfError> {
        let out = self.run(res, OcfAction::Monitor, timeout)?;
        match out.status {
            OcfStatus::Success | OcfStatus::RunningPromoted => Ok(true),
            OcfStatus::NotRunning => Ok(false),
            status => Err(OcfError::Failed {
                instance: res.instance.clone(),
                action: OcfAction::Monitor.as_str(),
                status,
            }),
        }
    }

    fn expect(
        &self,
        res: &OcfResource,
        action: OcfAction,
        timeout: Duration,
        ok: &[OcfStatus],
    ) -> Result<(), OcfError> {
        let out = self.run(res, action, timeout)?;
        if ok.contains(&out.status) {
            Ok(())
        } else {
            Err(OcfError::Failed {
                instance: res.instance.clone(),
                action: action.as_str(),
                status: out.status,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_names_resolve_under_ocf_root() {
        let a = AgentType::parse("heartbeat:Filesystem").unwrap();
        assert_eq!(a, AgentType::parse("ocf:heartbeat:Filesystem").unwrap());
        assert_eq!(
            a.path(Path::new(OCF_ROOT_DEFAULT)),
            PathBuf::from("/usr/lib/ocf/resource.d/heartbeat/Filesystem")
        );
        assert_eq!(a.to_string(), "ocf:heartbeat:Filesystem");
        for bad in [
            "Filesystem",
            "lsb:heartbeat:Filesystem",
            "heartbeat:",
            "../../bin:sh",
            "heartbeat:../x",
            "a:b:c:d",
        ] {
            assert!(AgentType::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exit_codes_map_both_ways() {
        for code in 0..12 {
            assert_eq!(OcfStatus::from_code(code).code(), code);
        }
        assert_eq!(OcfStatus::from_code(7), OcfStatus::NotRunning);
        assert_eq!(OcfStatus::from_code(8), OcfStatus::RunningPromoted);
        assert_eq!(OcfStatus::from_code(9), OcfStatus::FailedPromoted);
        assert_eq!(OcfStatus::from_code(5).name(), "OCF_ERR_INSTALLED");
        assert_eq!(OcfStatus::from_code(42), OcfStatus::Other(42));
        assert_eq!(OcfStatus::NotRunning.to_string(), "OCF_NOT_RUNNING (7)");
    }

    #[test]
    fn environment_carries_instance_type_params_and_timeout() {
        let res = OcfResource::new(
            "r0-fs",
            "heartbeat:Filesystem",
            &[
                ("device".into(), "/dev/nbd0".into()),
                ("directory".into(), "/srv/r0".into()),
            ],
        )
        .unwrap();
        let env = environment(Path::new("/opt/ocf"), &res, Duration::from_secs(20));
        let get = |k: &str| {
            env.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .unwrap_or_else(|| panic!("{k} missing"))
        };
        assert_eq!(get("OCF_ROOT"), "/opt/ocf");
        assert_eq!(get("OCF_RA_VERSION_MAJOR"), "1");
        assert_eq!(get("OCF_RA_VERSION_MINOR"), "1");
        assert_eq!(get("OCF_RESOURCE_INSTANCE"), "r0-fs");
        assert_eq!(get("OCF_RESOURCE_TYPE"), "Filesystem");
        assert_eq!(get("OCF_RESOURCE_PROVIDER"), "heartbeat");
        assert_eq!(get("OCF_RESKEY_device"), "/dev/nbd0");
        assert_eq!(get("OCF_RESKEY_directory"), "/srv/r0");
        assert_eq!(get("OCF_RESKEY_CRM_meta_timeout"), "20000");
        assert!(
            OcfResource::new("x", "heartbeat:Dummy", &[("a b".into(), "1".into())]).is_err(),
            "a parameter name with a space cannot be an environment variable"
        );
    }

    /// A fake OCF_ROOT with one agent script `test:Fake`.
    fn fake_root(script: &str) -> (tempfile::TempDir, Runner, OcfResource) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let agent_dir = dir.path().join("resource.d/test");
        std::fs::create_dir_all(&agent_dir).unwrap();
        let agent = agent_dir.join("Fake");
        std::fs::write(&agent, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
        let runner = Runner {
            ocf_root: dir.path().to_path_buf(),
        };
        let res =
            OcfResource::new("fake1", "test:Fake", &[("color".into(), "blue".into())]).unwrap();
        (dir, runner, res)
    }

    #[test]
    fn the_agent_gets_the_action_as_its_argument_and_the_environment() {
        let (_dir, runner, res) = fake_root(
            "echo \"$1 $OCF_RESOURCE_INSTANCE $OCF_RESKEY_color $OCF_RESKEY_CRM_meta_timeout\"; exit 7",
        );
        let out = runner
            .run(&res, OcfAction::Monitor, Duration::from_secs(3))
            .unwrap();
        assert_eq!(out.status, OcfStatus::NotRunning);
        assert_eq!(out.stdout, "monitor fake1 blue 3000\n");
        assert!(!runner.monitor(&res, Duration::from_secs(3)).unwrap());
    }

    #[test]
    fn a_hanging_agent_times_out() {
        let (_dir, runner, res) = fake_root("sleep 30");
        let err = runner.start(&res, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, OcfError::TimedOut { .. }), "{err}");
    }

    #[test]
    fn a_missing_agent_is_not_installed() {
        let runner = Runner {
            ocf_root: PathBuf::from("/nonexistent"),
        };
        let res = OcfResource::new("x", "heartbeat:Dummy", &[]).unwrap();
        let out = runner
            .run(&res, OcfAction::Start, Duration::from_secs(1))
            .unwrap();
        assert_eq!(out.status, OcfStatus::ErrInstalled);
    }

    /// Debian's real `ocf:heartbeat:Dummy` (package resource-agents) through its life cycle.
    #[test]
    fn debian_dummy_agent_start_monitor_stop() {
        let runner = Runner {
            ocf_root: PathBuf::from(OCF_ROOT_DEFAULT),
        };
        let dummy = AgentType::parse("ocf:heartbeat:Dummy")
            .unwrap()
            .path(&runner.ocf_root);
        assert!(
            dummy.is_file(),
            "{} is missing: apt-get install -y resource-agents (scripts/deps.sh installs it)",
            dummy.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("dummy.state");
        let res = OcfResource::new(
            "clusterd-test-dummy",
            "heartbeat:Dummy",
            &[("state".into(), state.display().to_string())],
        )
        .unwrap();
        let t = Duration::from_secs(20);
        let meta = runner.run(&res, OcfAction::MetaData, t).unwrap();
        assert_eq!(meta.status, OcfStatus::Success);
        assert!(meta.stdout.contains("<resource-agent"), "{}", meta.stdout);
        assert_eq!(
            runner.run(&res, OcfAction::ValidateAll, t).unwrap().status,
            OcfStatus::Success
        );
        assert!(!runner.monitor(&res, t).unwrap(), "stopped before start");
        runner.start(&res, t).unwrap();
        assert!(state.exists());
        assert!(runner.monitor(&res, t).unwrap(), "running after start");
        runner.start(&res, t).unwrap();
        runner.stop(&res, t).unwrap();
        assert_eq!(
            runner.run(&res, OcfAction::Monitor, t).unwrap().status,
            OcfStatus::NotRunning
        );
        runner.stop(&res, t).unwrap();
    }
}
