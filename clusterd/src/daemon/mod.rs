//! clusterd's driver: the thin layer around [`crate::core::Cluster`] that touches sockets,
//! clocks and processes.
//!
//! One thread owns all state (the core, the peers' last heartbeats, the admin state, status
//! history) and takes [`Msg`]s from a channel, ticking the core every [`TICK_MS`]. Around it:
//! - one UDP socket per link (address of this node), each with a receiver thread that decodes
//!   heartbeats and passes on those of this cluster; heartbeats are sent from the owner on
//!   every tick once the heartbeat interval has passed;
//! - a poller thread asking replicatord for `status` every [`POLL_MS`];
//! - a fence thread per [`Action::Fence`], calling the `fencing` crate;
//! - one worker thread running promotions and demotions in order (replicatord `primary`, then
//!   the group's start; the group's stop, then `secondary`);
//! - the control socket `<run-dir>/clusterd.sock`, a thread per client.

pub mod fence;
pub mod group;
pub mod replicatord;
pub mod sbd;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use replicator::config::{self, ClusterResource, Config, FenceMethod};
use replicator::control::ResourceStatus as ReplicaState;

use crate::alert::{exec_status, AlertEvent, Alerter};
use crate::control::{
    self, ClusterStatus, FailedAction, FenceEvent, NodeStatus, ReplicaStatus, Request,
    ResourceStatus, Response,
};
use crate::core::{self, Action, Cluster, Event, NodeId, PeerState};
use crate::heartbeat::{self, Admin, Heartbeat};
use group::Group;

/// The core's clock tick.
pub const TICK_MS: u64 = 100;
/// How often replicatord is asked for the replicas' states.
pub const POLL_MS: u64 = 300;
/// How long a node without a Primary waits before fencing a lost peer when only IF-MIB
/// fencing is configured: the Primary's side fences at once and a switch port goes down in
/// well under this. With SBD, msgwait is added (the Primary's pill takes that long).
pub const PRIORITY_DELAY_MS: u64 = 2000;
/// Pause before a failed fence attempt is reported (and the next method or round tried).
const FENCE_RETRY_PAUSE: Duration = Duration::from_secs(1);
/// How long the worker waits for a job when no group is started (nothing to monitor).
const IDLE_WAIT: Duration = Duration::from_secs(3600);
/// Pause before a failed group is started again.
const RESTART_PAUSE: Duration = Duration::from_secs(2);

/// How clusterd was started.
#[derive(Debug, Clone)]
pub struct Options {
    /// The config file.
    pub config: PathBuf,
    /// This node's name.
    pub node: String,
    /// Run directory: clusterd.sock here, replicatord.sock expected here.
    pub run_dir: PathBuf,
    /// UDP port of the heartbeats.
    pub heartbeat_port: u16,
    /// The watchdog of the SBD watcher instead of the `sbd` section's: a device, or
    /// `test:PGID` for the test watchdog (see [`sbd::open_watchdog`]).
    pub watchdog: Option<String>,
}

/// What the owner thread takes.
pub enum Msg {
    /// A heartbeat of this cluster arrived on one of our links.
    Heartbeat {
        /// It.
        hb: Heartbeat,
        /// Our link it arrived on.
        link: usize,
    },
    /// replicatord's status (or why it could not be had).
    Replicas(Result<Vec<ReplicaState>, String>),
    /// A fence attempt ended.
    FenceDone {
        /// The node.
        node: NodeId,
        /// The method index.
        method: usize,
        /// Ok when confirmed.
        result: Result<(), String>,
    },
    /// A promotion, demotion or restart ended.
    JobDone {
        /// The resource.
        resource: String,
        /// Which.
        kind: JobKind,
        /// Ok, or the failed stage and why.
        result: Result<(), (&'static str, String)>,
    },
    /// A started group's monitor failed.
    MonitorFailed {
        /// The resource.
        resource: String,
        /// Which members failed, and why.
        error: String,
    },
    /// A control request; the answer goes to the sender.
    Control(Request, mpsc::Sender<Response>),
}

/// What the worker thread does for a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// replicatord primary, then the group's start.
    Promote,
    /// The group's stop, then replicatord secondary.
    Demote,
    /// The group's stop and start, after [`RESTART_PAUSE`] (a failed start or monitor).
    Restart,
    /// The group's start alone: the replica is Primary (promoted by hand, or before clusterd
    /// started) and its group is not running.
    Start,
    /// The group's stop alone: the replica is no longer Primary (demoted by hand).
    Stop,
}

/// A job for the worker thread.
pub struct Job {
    resource: String,
    kind: JobKind,
}

#[derive(Default)]
struct PeerInfo {
    last: Option<Heartbeat>,
    link_seen_ms: BTreeMap<usize, u64>,
}

struct FenceWaiter {
    node: NodeId,
    baseline: u64,
    reply: mpsc::Sender<Response>,
}

struct Daemon {
    core: Cluster,
    cluster: config::Cluster,
    me: NodeId,
    key: Vec<u8>,
    port: u16,
    links: Vec<(usize, UdpSocket)>,
    interval_ms: u64,
    last_sent_ms: Option<u64>,
    incarnation: u64,
    seq: u64,
    start: Instant,
    replicas: BTreeMap<String, ReplicaState>,
    replicas_error: Option<String>,
    peers: Vec<PeerInfo>,
    admin: Admin,
    fence_events: VecDeque<FenceEvent>,
    failed: VecDeque<FailedAction>,
    fail_counts: BTreeMap<String, u32>,
    alerter: Alerter,
    in_flight: BTreeSet<String>,
    group_started: BTreeSet<String>,
    waiters: Vec<FenceWaiter>,
    jobs: mpsc::Sender<Job>,
    tx: mpsc::Sender<Msg>,
    send_errors: BTreeMap<SocketAddr, String>,
    run_dir: PathBuf,
    /// With SBD: where the owner reports [`sbd::cluster_healthy`] to the watcher every tick.
    sbd_health: Option<mpsc::Sender<bool>>,
}

fn wall_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(0)
}

/// What replicatord's status says of `peer`'s role for one resource: Primary or Secondary
/// while connected, else Unknown (also when replicatord does not answer or does not know the
/// peer): a peer last seen Primary may still be (the core holds it until it is fenced).
fn link_role(status: Option<&ReplicaState>, peer: &str) -> core::LinkRole {
    let Some(p) = status.and_then(|s| s.peers.iter().find(|p| p.name == peer)) else {
        return core::LinkRole::Unknown;
    };
    match (p.connection.as_str(), p.peer_role.as_str()) {
        ("Connected", "Primary") => core::LinkRole::Primary,
        ("Connected", "Secondary") => core::LinkRole::Secondary,
        _ => core::LinkRole::Unknown,
    }
}

/// The heartbeat key of `cluster` in `config` (see [`heartbeat::key`]): the cluster's own
/// `shared-secret` when it has one, else its resources' `shared-secret`s.
pub fn heartbeat_key(config: &Config, cluster: &config::Cluster) -> Vec<u8> {
    if let Some(secret) = &cluster.shared_secret {
        return heartbeat::key(&cluster.name, [secret.as_str()]);
    }
    let secrets: Vec<&str> = cluster
        .resources
        .iter()
        .filter_map(|r| config.resource(&r.name).ok())
        .filter_map(|r| r.net.shared_secret.as_deref())
        .collect();
    heartbeat::key(&cluster.name, secrets)
}

/// The core's settings for `node` in `cluster`.
pub fn core_config(cluster: &config::Cluster, me: NodeId) -> core::Config {
    let uses_sbd = cluster
        .nodes
        .iter()
        .any(|n| n.fence.iter().any(|m| matches!(m, FenceMethod::Sbd)));
    let msgwait_ms = cluster
        .sbd
        .as_ref()
        .map_or(0, |s| u64::from(s.msgwait_s) * 1000);
    core::Config {
        me,
        nodes: cluster.nodes.iter().map(|n| n.name.clone()).collect(),
        token_ms: u64::from(cluster.token_ms),
        two_node: cluster.two_node,
        wait_for_all: cluster.wait_for_all,
        priority_delay_ms: PRIORITY_DELAY_MS + if uses_sbd { msgwait_ms } else { 0 },
        fence_methods: cluster
            .nodes
            .iter()
            .map(|n| n.fence.len())
            .max()
            .unwrap_or(0),
        resources: cluster.resources.iter().map(|r| r.name.clone()).collect(),
    }
}

/// Loads and validates the config file, logging its warnings.
pub fn load(path: &Path) -> Result<Config> {
    let config = Config::load(path).map_err(|e| match e {
        config::ConfigError::Io { .. } => anyhow::anyhow!("{e} (pass -c FILE)"),
        e => e.into(),
    })?;
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    Ok(config)
}

/// Runs clusterd with `config` (loaded from `opts.config`) until it fails.
pub fn run(opts: Options, config: Config, group: Box<dyn Group>) -> Result<()> {
    let Some(cluster) = config.cluster.clone() else {
        bail!(
            "{} has no 'cluster NAME {{ ... }}' block: nothing for clusterd to do",
            opts.config.display()
        );
    };
    let me = cluster
        .nodes
        .iter()
        .position(|n| n.name == opts.node)
        .with_context(|| {
            format!(
                "node {} is not in cluster {} (nodes: {}); pass --node NAME",
                opts.node,
                cluster.name,
                cluster
                    .nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
    std::fs::create_dir_all(&opts.run_dir)
        .with_context(|| format!("cannot create the run directory {}", opts.run_dir.display()))?;
    // The SBD watcher first, as sbd starts before the cluster: a node that cannot watch its
    // slot must not join (a pill sent to it would count as delivered and kill nothing).
    let sbd_health = match &cluster.sbd {
        Some(section) => {
            let signals = sbd::TerminationSignals::install()
                .context("cannot install the SIGTERM/SIGINT handler")?;
            let spec = opts
                .watchdog
                .clone()
                .unwrap_or_else(|| section.watchdog.display().to_string());
            Some(sbd::start(section, &opts.node, &spec, signals)?)
        }
        None => None,
    };
    let key = heartbeat_key(&config, &cluster);
    let (tx, rx) = mpsc::channel();

    // Heartbeat links: one socket per address of this node.
    let mut links = Vec::new();
    for (i, addr) in cluster.nodes[me].addresses.iter().enumerate() {
        let at = SocketAddr::new(*addr, opts.heartbeat_port);
        match UdpSocket::bind(at) {
            Ok(s) => {
                let r = s.try_clone().context("cloning a UDP socket")?;
                spawn_receiver(r, i, key.clone(), cluster.clone(), me, tx.clone());
                links.push((i, s));
            }
            Err(e) => tracing::error!(
                "heartbeat link {i}: cannot bind {at}: {e} (is {addr} an address of this host?)"
            ),
        }
    }
    if links.is_empty() {
        bail!(
            "no heartbeat link could be bound (addresses of node {} on UDP port {}); see the errors above",
            opts.node,
            opts.heartbeat_port
        );
    }

    let control_path = opts.run_dir.join(control::SOCKET_NAME);
    if UnixStream::connect(&control_path).is_ok() {
        bail!(
            "another clusterd is running with --run-dir {} ({} answers)",
            opts.run_dir.display(),
            control_path.display()
        );
    }
    let _ = std::fs::remove_file(&control_path);
    let listener = UnixListener::bind(&control_path)
        .with_context(|| format!("cannot listen on {}", control_path.display()))?;
    spawn_control(listener, tx.clone());
    spawn_poller(opts.run_dir.clone(), tx.clone());
    let jobs = spawn_worker(
        opts.run_dir.clone(),
        cluster.resources.clone(),
        group,
        tx.clone(),
    );

    let core = Cluster::new(core_config(&cluster, me));
    let token = u64::from(cluster.token_ms);
    let mut d = Daemon {
        core,
        me,
        key,
        port: opts.heartbeat_port,
        links,
        interval_ms: (token / 5).clamp(50, 500),
        last_sent_ms: None,
        incarnation: wall_ms(),
        seq: 0,
        start: Instant::now(),
        replicas: BTreeMap::new(),
        replicas_error: None,
        peers: cluster.nodes.iter().map(|_| PeerInfo::default()).collect(),
        admin: Admin::default(),
        fence_events: VecDeque::new(),
        failed: VecDeque::new(),
        fail_counts: BTreeMap::new(),
        alerter: Alerter::new(&cluster.alerts),
        in_flight: BTreeSet::new(),
        group_started: BTreeSet::new(),
        waiters: Vec::new(),
        jobs,
        tx,
        send_errors: BTreeMap::new(),
        run_dir: opts.run_dir.clone(),
        sbd_health,
        cluster,
    };
    tracing::info!(
        cluster = %d.cluster.name,
        node = %opts.node,
        port = opts.heartbeat_port,
        token_ms = token,
        "clusterd started; control socket {}",
        control_path.display()
    );
    d.run(rx);
    Ok(())
}

impl Daemon {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn run(&mut self, rx: mpsc::Receiver<Msg>) {
        let mut next_tick = self.now_ms();
        loop {
            let now = self.now_ms();
            if now >= next_tick {
                self.apply(Event::Tick);
                self.send_heartbeats();
                if let Some(health) = &self.sbd_health {
                    let healthy =
                        sbd::cluster_healthy(self.core.has_quorum(), self.core.members().len());
                    let _ = health.send(healthy);
                }
                next_tick = now + TICK_MS;
            }
            let wait = Duration::from_millis(next_tick.saturating_sub(self.now_ms()));
            match rx.recv_timeout(wait) {
                Ok(msg) => self.handle(msg),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    unreachable!("the daemon holds a sender itself")
                }
            }
        }
    }

    fn apply(&mut self, event: Event) {
        let now = self.now_ms();
        let actions = self.core.apply(event, now);
        for a in actions {
            self.execute(a);
        }
        self.answer_waiters();
    }

    fn name(&self, n: NodeId) -> &str {
        &self.cluster.nodes[n].name
    }

    fn execute(&mut self, action: Action) {
        match action {
            Action::Fence { node, method } => {
                let name = self.name(node).to_string();
                let me = self.name(self.me).to_string();
                let m = self.cluster.nodes[node].fence.get(method).cloned();
                let sbd = self.cluster.sbd.clone();
                let tx = self.tx.clone();
                tracing::warn!(
                    "fencing {name} with method {method} ({})",
                    m.as_ref().map_or("none", fence::method_name)
                );
                std::thread::spawn(move || {
                    let result = match &m {
                        Some(m) => fence::fence(&name, &me, m, sbd.as_ref()),
                        None => Err(format!("node {name} has no fence method {method}")),
                    };
                    if result.is_err() {
                        std::thread::sleep(FENCE_RETRY_PAUSE);
                    }
                    let _ = tx.send(Msg::FenceDone {
                        node,
                        method,
                        result,
                    });
                });
            }
            Action::Promote { resource } => {
                tracing::info!(%resource, "promoting: replicatord primary, then the group");
                self.job(resource, JobKind::Promote);
            }
            Action::Demote { resource } => {
                tracing::info!(%resource, "demoting: the group's stop, then replicatord secondary");
                self.job(resource, JobKind::Demote);
            }
            Action::Alert { kind, node, desc } => {
                tracing::info!(kind, %node, "{desc}");
                // Resource alerts go out when the promotion or demotion has ended, with its
                // outcome; node and fencing alerts now.
                let event = match kind {
                    "node" => {
                        let id = self.node_id(&node).ok().and_then(|n| u32::try_from(n).ok());
                        Some(AlertEvent::node(&node, id.unwrap_or(0), desc == "member"))
                    }
                    "fencing" => {
                        let rc = i32::from(!desc.starts_with("fenced"));
                        Some(AlertEvent::fencing(&node, "off", rc, &desc))
                    }
                    _ => None,
                };
                if let Some(e) = event {
                    self.alert(&e);
                }
            }
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Heartbeat { hb, link } => self.heartbeat(hb, link),
            Msg::Replicas(r) => self.replicas(r),
            Msg::FenceDone {
                node,
                method,
                result,
            } => {
                let name = self.name(node).to_string();
                let method_name = self.cluster.nodes[node]
                    .fence
                    .get(method)
                    .map_or("none", fence::method_name);
                match &result {
                    Ok(()) => tracing::warn!("{name} fenced ({method_name}): confirmed off"),
                    Err(e) => tracing::error!("fencing {name} with {method_name} failed: {e}"),
                }
                if self.fence_events.len() == control::MAX_FENCE_EVENTS {
                    self.fence_events.pop_front();
                }
                self.fence_events.push_back(FenceEvent {
                    time_ms: wall_ms(),
                    node: name,
                    method: method_name.to_string(),
                    result: if result.is_ok() { "ok" } else { "failed" }.into(),
                    error: result.as_ref().err().cloned(),
                });
                self.apply(Event::FenceResult {
                    node,
                    method,
                    ok: result.is_ok(),
                });
            }
            Msg::JobDone {
                resource,
                kind,
                result,
            } => {
                self.in_flight.remove(&resource);
                self.job_done(resource, kind, result);
            }
            Msg::MonitorFailed { resource, error } => {
                self.group_failed(&resource, "monitor", error);
            }
            Msg::Control(req, reply) => self.control(req, reply),
        }
    }

    fn job_done(
        &mut self,
        resource: String,
        kind: JobKind,
        result: Result<(), (&'static str, String)>,
    ) {
        match result {
            Ok(()) => {
                tracing::info!(
                    %resource,
                    "{}",
                    match kind {
                        JobKind::Promote => "promoted and group started",
                        JobKind::Demote => "group stopped and demoted",
                        JobKind::Restart => "group restarted",
                        JobKind::Start => "group started",
                        JobKind::Stop => "group stopped",
                    }
                );
                let task = match kind {
                    JobKind::Promote => "promote",
                    JobKind::Demote => "demote",
                    JobKind::Restart | JobKind::Start => "start",
                    JobKind::Stop => "stop",
                };
                self.resource_alert(&resource, task, 0, 0);
                if matches!(kind, JobKind::Demote | JobKind::Stop) {
                    self.group_started.remove(&resource);
                } else {
                    self.group_started.insert(resource);
                }
                self.poll_now();
            }
            Err((stage, error)) => {
                if stage == "stop" || stage == "demote" {
                    self.group_started.remove(&resource);
                }
                if stage == "promote" || stage == "demote" {
                    self.record_failure(&resource, stage, error);
                    self.apply(Event::ActionFailed { resource });
                } else {
                    self.group_failed(&resource, stage, error);
                }
                self.poll_now();
            }
        }
    }

    fn record_failure(&mut self, resource: &str, action: &'static str, error: String) {
        tracing::error!(%resource, "{action} failed: {error}");
        if self.failed.len() == control::MAX_FAILED_ACTIONS {
            self.failed.pop_front();
        }
        self.failed.push_back(FailedAction {
            time_ms: wall_ms(),
            resource: resource.to_string(),
            action: action.to_string(),
            error: error.clone(),
        });
        let interval_ms = if action == "monitor" {
            self.cluster
                .resources
                .iter()
                .find(|r| r.name == resource)
                .map_or(0, |r| r.ops.monitor_interval_ms)
        } else {
            0
        };
        self.resource_alert(resource, action, interval_ms, 1);
    }

    /// Pacemaker's resource alert for `task` on this node, `rc` the OCF answer (0 ok).
    fn resource_alert(&mut self, resource: &str, task: &str, interval_ms: u64, rc: i32) {
        let me = self.name(self.me).to_string();
        let event =
            AlertEvent::resource(resource, &me, task, interval_ms, exec_status::DONE, rc, 0);
        self.alert(&event);
    }

    fn alert(&mut self, event: &AlertEvent) {
        if let Err(e) = self.alerter.send(event) {
            tracing::warn!("alert not sent: {e}");
        }
    }

    /// A group's start or monitor failed: restart it here, or once `migration-threshold`
    /// failures are reached, move the resource to another node that can take it.
    fn group_failed(&mut self, resource: &str, action: &'static str, error: String) {
        self.record_failure(resource, action, error);
        let count = {
            let c = self.fail_counts.entry(resource.to_string()).or_insert(0);
            *c += 1;
            *c
        };
        let threshold = self
            .cluster
            .resources
            .iter()
            .find(|r| r.name == resource)
            .map_or(u32::MAX, |r| r.migration_threshold);
        if count >= threshold {
            let target = (0..self.cluster.nodes.len()).find(|&n| {
                n != self.me && !self.core.is_standby(n) && self.up_to_date(n, resource)
            });
            if let Some(n) = target {
                let name = self.name(n).to_string();
                tracing::warn!(
                    %resource,
                    "{count} failures reach migration-threshold {threshold}: moving to {name}"
                );
                let id = u16::try_from(n).expect("small");
                self.change_admin(|a| {
                    a.moves.retain(|(r, _)| r != resource);
                    a.moves.push((resource.to_string(), id));
                });
                return;
            }
            tracing::warn!(
                %resource,
                "{count} failures reach migration-threshold {threshold}, but no other node can take it; restarting here"
            );
        }
        if self.core.primary_of(resource) == Some(self.me) {
            self.job(resource.to_string(), JobKind::Restart);
        }
    }

    /// Hands a job to the worker; at most one per resource is in flight.
    fn job(&mut self, resource: String, kind: JobKind) {
        self.in_flight.insert(resource.clone());
        let _ = self.jobs.send(Job { resource, kind });
    }

    /// Starts the group of a Primary that has none running, stops the group of a replica that
    /// is no longer Primary (a change made by hand, or before clusterd started).
    fn reconcile_groups(&mut self) {
        let mut todo = Vec::new();
        for r in &self.cluster.resources {
            if self.in_flight.contains(&r.name) {
                continue;
            }
            let primary = self
                .replicas
                .get(&r.name)
                .is_some_and(|s| s.role == "Primary");
            let started = self.group_started.contains(&r.name);
            let stopped_for_failure =
                self.fail_counts.get(&r.name).copied().unwrap_or(0) >= r.migration_threshold;
            if primary && !started && !stopped_for_failure {
                todo.push((r.name.clone(), JobKind::Start));
            } else if !primary && started {
                todo.push((r.name.clone(), JobKind::Stop));
            }
        }
        for (resource, kind) in todo {
            tracing::info!(%resource, "the replica is {}Primary: {} its group", if kind == JobKind::Start { "" } else { "not " }, if kind == JobKind::Start { "starting" } else { "stopping" });
            self.job(resource, kind);
        }
    }

    /// Asks replicatord for the states at once (after a promotion or demotion).
    fn poll_now(&self) {
        let tx = self.tx.clone();
        let run_dir = self.run_dir.clone();
        std::thread::spawn(move || {
            let _ = tx.send(Msg::Replicas(replicatord::status(&run_dir)));
        });
    }

    fn heartbeat(&mut self, hb: Heartbeat, link: usize) {
        let from = usize::from(hb.node_id);
        let now = self.now_ms();
        let info = &mut self.peers[from];
        // An older heartbeat of the same incarnation is a replay or arrived late: it must not
        // make a lost node look alive. (Every link carries the same sequence number, so an
        // equal one is the same round on another link.) Another incarnation is a restart,
        // whatever its clock says.
        if let Some(last) = &info.last {
            if hb.incarnation == last.incarnation && hb.seq < last.seq {
                tracing::debug!(
                    "heartbeat from {} on link {link}: sequence {}/{} older than {}/{}; dropped",
                    hb.node,
                    hb.incarnation,
                    hb.seq,
                    last.incarnation,
                    last.seq
                );
                return;
            }
        }
        info.link_seen_ms.insert(link, now);
        let primary_for = hb
            .resources
            .iter()
            .filter(|r| r.primary)
            .map(|r| r.name.clone())
            .collect();
        let up_to_date = hb
            .resources
            .iter()
            .filter(|r| r.up_to_date)
            .map(|r| r.name.clone())
            .collect();
        let quorate = hb.quorate;
        // Ids beyond the cluster's are ignored (the core knows no such node).
        let hears = hb.hears.as_ref().map(|h| {
            h.iter()
                .map(|&n| usize::from(n))
                .filter(|&n| n < self.cluster.nodes.len())
                .collect::<Vec<NodeId>>()
        });
        let newer = hb.admin.epoch > self.admin.epoch
            || (hb.admin.epoch == self.admin.epoch && hb.admin != self.admin && from < self.me);
        let admin = newer.then(|| hb.admin.clone());
        info.last = Some(hb);
        // Whom it hears, disks and quorum first: the heartbeat's decisions (membership, who
        // promotes) use them. A version 1 heartbeat says nothing of whom it hears.
        if let Some(hears) = hears {
            self.apply(Event::PeerHears { from, hears });
        }
        self.apply(Event::PeerDisks { from, up_to_date });
        self.apply(Event::PeerQuorum { from, quorate });
        self.apply(Event::Heartbeat {
            from,
            link,
            primary_for,
        });
        if let Some(admin) = admin {
            tracing::info!(
                "admin state epoch {} from {}: standby {:?}, moves {:?}",
                admin.epoch,
                self.name(from),
                admin.standby,
                admin.moves
            );
            self.set_admin(admin);
        }
    }

    fn set_admin(&mut self, admin: Admin) {
        let n = self.cluster.nodes.len();
        let standby = admin
            .standby
            .iter()
            .map(|&i| usize::from(i))
            .filter(|&i| i < n)
            .collect();
        let moves = admin
            .moves
            .iter()
            .map(|(r, i)| (r.clone(), usize::from(*i)))
            .filter(|&(_, i)| i < n)
            .collect();
        self.admin = admin;
        self.apply(Event::Admin { standby, moves });
    }

    fn replicas(&mut self, r: Result<Vec<ReplicaState>, String>) {
        match r {
            Ok(list) => {
                if self.replicas_error.take().is_some() {
                    tracing::info!("replicatord answers again");
                }
                self.replicas = list.into_iter().map(|s| (s.name.clone(), s)).collect();
            }
            Err(e) => {
                if self.replicas_error.as_ref() != Some(&e) {
                    tracing::warn!("cannot read the replicas' states: {e}");
                }
                self.replicas_error = Some(e);
                self.replicas.clear();
            }
        }
        let mut events = Vec::new();
        for r in &self.cluster.resources {
            let s = self.replicas.get(&r.name);
            for (peer, node) in self.cluster.nodes.iter().enumerate() {
                if peer == self.me {
                    continue;
                }
                events.push(Event::PeerRole {
                    resource: r.name.clone(),
                    peer,
                    role: link_role(s, &node.name),
                });
            }
            events.push(Event::Replica {
                resource: r.name.clone(),
                primary: s.is_some_and(|s| s.role == "Primary"),
                up_to_date: s.is_some_and(|s| s.disk == "UpToDate"),
            });
        }
        for e in events {
            self.apply(e);
        }
        if self.replicas_error.is_none() {
            self.reconcile_groups();
        }
    }

    fn send_heartbeats(&mut self) {
        let now = self.now_ms();
        if self
            .last_sent_ms
            .is_some_and(|t| now.saturating_sub(t) < self.interval_ms)
        {
            return;
        }
        self.last_sent_ms = Some(now);
        let resources: Vec<heartbeat::ResourceState> = self
            .cluster
            .resources
            .iter()
            .map(|r| {
                let s = self.replicas.get(&r.name);
                heartbeat::ResourceState {
                    name: r.name.clone(),
                    primary: s.is_some_and(|s| s.role == "Primary"),
                    up_to_date: s.is_some_and(|s| s.disk == "UpToDate"),
                }
            })
            .collect();
        let mut hb = Heartbeat {
            node_id: u16::try_from(self.me).expect("config limits the node count"),
            incarnation: self.incarnation,
            seq: self.seq,
            link: 0,
            quorate: self.core.has_quorum(),
            hears: Some(
                self.core
                    .hears(now)
                    .into_iter()
                    .map(|n| u16::try_from(n).expect("config limits the node count"))
                    .collect(),
            ),
            cluster: self.cluster.name.clone(),
            node: self.name(self.me).to_string(),
            resources,
            admin: self.admin.clone(),
        };
        self.seq += 1;
        for (link, socket) in &self.links {
            hb.link = u8::try_from(*link).unwrap_or(u8::MAX);
            let bytes = match hb.encode(&self.key) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!("cannot encode a heartbeat: {e}");
                    return;
                }
            };
            for (n, node) in self.cluster.nodes.iter().enumerate() {
                if n == self.me {
                    continue;
                }
                let Some(addr) = node.addresses.get(*link) else {
                    continue;
                };
                let to = SocketAddr::new(*addr, self.port);
                match socket.send_to(&bytes, to) {
                    Ok(_) => {
                        if self.send_errors.remove(&to).is_some() {
                            tracing::info!("heartbeats to {to} go out again");
                        }
                    }
                    Err(e) => {
                        let e = e.to_string();
                        if self.send_errors.get(&to) != Some(&e) {
                            tracing::warn!("heartbeat to {} on link {link} ({to}): {e}", node.name);
                            self.send_errors.insert(to, e);
                        }
                    }
                }
            }
        }
    }

    fn answer_waiters(&mut self) {
        let mut i = 0;
        while i < self.waiters.len() {
            let w = &self.waiters[i];
            if self.core.fence_count(w.node) > w.baseline {
                let w = self.waiters.swap_remove(i);
                let _ = w.reply.send(Response {
                    exit_code: Some(control::FENCE_PEER_FENCED),
                    ..Response::ok()
                });
            } else {
                i += 1;
            }
        }
    }

    fn node_id(&self, name: &str) -> Result<NodeId, String> {
        self.cluster
            .nodes
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| format!("no node {name} in cluster {}", self.cluster.name))
    }

    fn resource(&self, name: &str) -> Result<&ClusterResource, String> {
        self.cluster
            .resources
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| format!("no resource {name} in cluster {}", self.cluster.name))
    }

    /// Whether `node`'s replica of `resource` is UpToDate, as far as this node knows.
    fn up_to_date(&self, node: NodeId, resource: &str) -> bool {
        if node == self.me {
            return self
                .replicas
                .get(resource)
                .is_some_and(|s| s.disk == "UpToDate");
        }
        if self.core.peer_state(node) != Some(PeerState::Online) {
            return false;
        }
        // The peer's heartbeat says so, or this node's replica, connected to it, does (the
        // fresher of the two after a resync).
        let by_heartbeat = self.peers[node].last.as_ref().is_some_and(|hb| {
            hb.resources
                .iter()
                .any(|r| r.name == resource && r.up_to_date)
        });
        let name = self.name(node);
        let by_replica = self.replicas.get(resource).is_some_and(|s| {
            s.peers
                .iter()
                .any(|p| p.name == name && p.connection == "Connected" && p.peer_disk == "UpToDate")
        });
        by_heartbeat || by_replica
    }

    fn change_admin(&mut self, f: impl FnOnce(&mut Admin)) {
        let mut admin = self.admin.clone();
        f(&mut admin);
        admin.epoch = self.admin.epoch + 1;
        self.set_admin(admin);
        // Tell the others now rather than at the next interval.
        self.last_sent_ms = None;
        self.send_heartbeats();
    }

    fn control(&mut self, req: Request, reply: mpsc::Sender<Response>) {
        let answer = match req {
            Request::Status => Ok(Response {
                status: Some(self.status()),
                ..Response::ok()
            }),
            Request::Standby { node } => self.node_id(&node).map(|n| {
                let id = u16::try_from(n).expect("small");
                tracing::info!("standby {node}");
                self.change_admin(|a| {
                    if !a.standby.contains(&id) {
                        a.standby.push(id);
                    }
                });
                Response::ok()
            }),
            Request::Unstandby { node } => self.node_id(&node).map(|n| {
                let id = u16::try_from(n).expect("small");
                tracing::info!("unstandby {node}");
                self.change_admin(|a| a.standby.retain(|&x| x != id));
                Response::ok()
            }),
            Request::Move { resource, node } => self.move_to(&resource, &node),
            Request::Cleanup { resource } => self.resource(&resource).map(|_| ()).map(|()| {
                tracing::info!(%resource, "cleanup: failed actions and the move forgotten");
                self.failed.retain(|f| f.resource != resource);
                self.fail_counts.remove(&resource);
                if self.admin.moves.iter().any(|(r, _)| *r == resource) {
                    self.change_admin(|a| a.moves.retain(|(r, _)| *r != resource));
                }
                Response::ok()
            }),
            Request::FencePeer { resource, peer } => {
                return self.fence_peer(&resource, &peer, reply);
            }
        };
        let _ = reply.send(answer.unwrap_or_else(Response::error));
    }

    fn move_to(&mut self, resource: &str, node: &str) -> Result<Response, String> {
        self.resource(resource)?;
        let n = self.node_id(node)?;
        if self.core.is_standby(n) {
            return Err(format!(
                "node {node} is in standby; 'clusterctl unstandby {node}' first"
            ));
        }
        if n != self.me && self.core.peer_state(n) != Some(PeerState::Online) {
            return Err(format!(
                "node {node} is not online; refusing to move {resource} there"
            ));
        }
        if !self.up_to_date(n, resource) {
            return Err(format!(
                "{node}'s replica of {resource} is not UpToDate; refusing to move it there (it would lose data); wait for the resync"
            ));
        }
        let id = u16::try_from(n).expect("small");
        tracing::info!(%resource, "move to {node}");
        self.change_admin(|a| {
            a.moves.retain(|(r, _)| r != resource);
            a.moves.push((resource.to_string(), id));
        });
        Ok(Response::ok())
    }

    fn fence_peer(&mut self, resource: &str, peer: &str, reply: mpsc::Sender<Response>) {
        let node = match self.node_id(peer) {
            Ok(n) if n != self.me => n,
            Ok(_) => {
                let _ = reply.send(Response::error(format!(
                    "fence-peer for {resource}: {peer} is this node"
                )));
                return;
            }
            Err(e) => {
                let _ = reply.send(Response::error(format!("fence-peer for {resource}: {e}")));
                return;
            }
        };
        let state = self.core.peer_state(node);
        tracing::warn!(%resource, "fence-peer: replicatord asks to fence {peer} ({state:?})");
        if state == Some(PeerState::Fenced) {
            let _ = reply.send(Response {
                exit_code: Some(control::FENCE_PEER_FENCED),
                ..Response::ok()
            });
            return;
        }
        if self.cluster.nodes[node].fence.is_empty() {
            let _ = reply.send(Response {
                exit_code: Some(control::FENCE_PEER_UNREACHABLE),
                error: Some(format!("node {peer} has no fence method")),
                ..Response::ok()
            });
            return;
        }
        self.waiters.push(FenceWaiter {
            node,
            baseline: self.core.fence_count(node),
            reply,
        });
        if matches!(state, Some(PeerState::Online | PeerState::Unseen)) {
            self.apply(Event::FenceRequest { node });
        }
    }

    fn status(&self) -> ClusterStatus {
        let now = self.now_ms();
        let token = u64::from(self.cluster.token_ms);
        let nodes = (0..self.cluster.nodes.len())
            .map(|n| {
                let local = n == self.me;
                let state = if local {
                    "online"
                } else {
                    match self.core.peer_state(n) {
                        Some(PeerState::Online) => "online",
                        Some(PeerState::Unseen) | None => "offline",
                        Some(PeerState::Fencing | PeerState::Lost) => "fencing",
                        Some(PeerState::Fenced) => "fenced",
                    }
                };
                NodeStatus {
                    name: self.name(n).to_string(),
                    state: state.into(),
                    standby: self.core.is_standby(n),
                    local,
                    links_up: self.peers[n]
                        .link_seen_ms
                        .iter()
                        .filter(|(_, &t)| !local && now.saturating_sub(t) <= token)
                        .map(|(&l, _)| l)
                        .collect(),
                }
            })
            .collect();
        let resources = self
            .cluster
            .resources
            .iter()
            .map(|r| {
                let replicas = (0..self.cluster.nodes.len())
                    .map(|n| {
                        let (role, disk) = if n == self.me {
                            match self.replicas.get(&r.name) {
                                Some(s) => (s.role.clone(), s.disk.clone()),
                                None => ("Unknown".into(), "Unknown".into()),
                            }
                        } else {
                            match (&self.peers[n].last, self.core.peer_state(n)) {
                                (Some(hb), Some(PeerState::Online)) => {
                                    match hb.resources.iter().find(|x| x.name == r.name) {
                                        Some(x) => (
                                            if x.primary { "Primary" } else { "Secondary" }.into(),
                                            if x.up_to_date {
                                                "UpToDate"
                                            } else {
                                                "not-UpToDate"
                                            }
                                            .into(),
                                        ),
                                        None => ("Unknown".into(), "Unknown".into()),
                                    }
                                }
                                _ => ("Unknown".into(), "Unknown".into()),
                            }
                        };
                        ReplicaStatus {
                            node: self.name(n).to_string(),
                            role,
                            disk,
                        }
                    })
                    .collect();
                ResourceStatus {
                    name: r.name.clone(),
                    primary: self
                        .core
                        .primary_of(&r.name)
                        .map(|n| self.name(n).to_string()),
                    replicas,
                    group_started: self.group_started.contains(&r.name),
                    fail_count: self.fail_counts.get(&r.name).copied().unwrap_or(0),
                    moved_to: self
                        .core
                        .moved_to(&r.name)
                        .map(|n| self.name(n).to_string()),
                }
            })
            .collect();
        ClusterStatus {
            cluster: self.cluster.name.clone(),
            node: self.name(self.me).to_string(),
            quorum: self.core.has_quorum(),
            nodes,
            resources,
            fence_events: self.fence_events.iter().cloned().collect(),
            failed_actions: self.failed.iter().cloned().collect(),
        }
    }
}

fn spawn_receiver(
    socket: UdpSocket,
    link: usize,
    key: Vec<u8>,
    cluster: config::Cluster,
    me: NodeId,
    tx: mpsc::Sender<Msg>,
) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; heartbeat::MAX_HEARTBEAT_BYTES + 1];
        // Log lines a remote sender can trigger are limited: one per source and error kind.
        let mut complained: BTreeSet<(IpAddr, String)> = BTreeSet::new();
        loop {
            let (n, from) = match socket.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!("heartbeat link {link}: receive failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let hb = match Heartbeat::decode(&buf[..n], &key) {
                Ok(hb) => hb,
                Err(e) => {
                    if complained.len() < 64 && complained.insert((from.ip(), e.to_string())) {
                        tracing::warn!("heartbeat link {link}: from {from}: {e}");
                    }
                    continue;
                }
            };
            let id = usize::from(hb.node_id);
            let known = hb.cluster == cluster.name
                && id != me
                && cluster.nodes.get(id).is_some_and(|n| n.name == hb.node);
            if !known {
                let why = format!("node {} id {} is not a peer", hb.node, hb.node_id);
                if complained.len() < 64 && complained.insert((from.ip(), why.clone())) {
                    tracing::warn!("heartbeat link {link}: from {from}: {why}");
                }
                continue;
            }
            if tx.send(Msg::Heartbeat { hb, link }).is_err() {
                return;
            }
        }
    });
}

fn spawn_poller(run_dir: PathBuf, tx: mpsc::Sender<Msg>) {
    std::thread::spawn(move || loop {
        if tx
            .send(Msg::Replicas(replicatord::status(&run_dir)))
            .is_err()
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(POLL_MS));
    });
}

fn spawn_worker(
    run_dir: PathBuf,
    resources: Vec<ClusterResource>,
    mut group: Box<dyn Group>,
    tx: mpsc::Sender<Msg>,
) -> mpsc::Sender<Job> {
    let (jobs, rx) = mpsc::channel::<Job>();
    std::thread::spawn(move || {
        // Each started group with the time of its next monitor (its `op monitor interval=`).
        let mut started: BTreeMap<String, Instant> = BTreeMap::new();
        let next =
            |r: &ClusterResource| Instant::now() + Duration::from_millis(r.ops.monitor_interval_ms);
        loop {
            let wait = started
                .values()
                .min()
                .map_or(IDLE_WAIT, |t| t.saturating_duration_since(Instant::now()));
            let job = match rx.recv_timeout(wait) {
                Ok(job) => job,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let now = Instant::now();
                    let due: Vec<&ClusterResource> = resources
                        .iter()
                        .filter(|r| started.get(&r.name).is_some_and(|t| *t <= now))
                        .collect();
                    for r in due {
                        if let Err(error) = group.monitor(r) {
                            started.remove(&r.name);
                            let failed = Msg::MonitorFailed {
                                resource: r.name.clone(),
                                error,
                            };
                            if tx.send(failed).is_err() {
                                return;
                            }
                        } else {
                            started.insert(r.name.clone(), next(r));
                        }
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let Some(r) = resources.iter().find(|r| r.name == job.resource) else {
                continue;
            };
            let result = match job.kind {
                JobKind::Promote => replicatord::primary(&run_dir, &r.name)
                    .map_err(|e| ("promote", format!("replicatord primary {}: {e}", r.name)))
                    .and_then(|()| group.start(r).map_err(|e| ("start", e))),
                JobKind::Demote => {
                    let stopped = group.stop(r).map_err(|e| ("stop", e));
                    started.remove(&r.name);
                    replicatord::secondary(&run_dir, &r.name)
                        .map_err(|e| ("demote", format!("replicatord secondary {}: {e}", r.name)))
                        .and(stopped)
                }
                JobKind::Start => group.start(r).map_err(|e| ("start", e)),
                JobKind::Stop => {
                    started.remove(&r.name);
                    group.stop(r).map_err(|e| ("stop", e))
                }
                JobKind::Restart => {
                    std::thread::sleep(RESTART_PAUSE);
                    group
                        .stop(r)
                        .map_err(|e| ("stop", e))
                        .and_then(|()| group.start(r).map_err(|e| ("start", e)))
                }
            };
            if result.is_ok() && !matches!(job.kind, JobKind::Demote | JobKind::Stop) {
                started.insert(r.name.clone(), next(r));
            }
            let done = Msg::JobDone {
                resource: job.resource,
                kind: job.kind,
                result,
            };
            if tx.send(done).is_err() {
                return;
            }
        }
    });
    jobs
}

fn spawn_control(listener: UnixListener, tx: mpsc::Sender<Msg>) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || serve_client(conn, &tx));
        }
    });
}

fn serve_client(conn: UnixStream, tx: &mpsc::Sender<Msg>) {
    let Ok(write) = conn.try_clone() else { return };
    let mut write = write;
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        let limit = u64::try_from(control::MAX_REQUEST_BYTES).expect("small");
        match (&mut reader).take(limit).read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let answer = match serde_json::from_str::<Request>(&line) {
            Ok(req) => {
                let (reply, rx) = mpsc::channel();
                if tx.send(Msg::Control(req, reply)).is_err() {
                    return;
                }
                rx.recv()
                    .unwrap_or_else(|_| Response::error("clusterd dropped the request"))
            }
            Err(e) => Response::error(format!("bad request: {e}")),
        };
        let mut text = serde_json::to_string(&answer).expect("serializable");
        text.push('\n');
        if write.write_all(text.as_bytes()).is_err() {
            return;
        }
    }
}

/// `run_dir`'s control socket path.
pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join(control::SOCKET_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// replicatord's status of r0 with one peer (beta) in `connection` with `peer_role`.
    fn replica_status(connection: &str, peer_role: &str) -> ReplicaState {
        serde_json::from_value(serde_json::json!({
            "name": "r0", "role": "Secondary", "disk": "UpToDate", "size-bytes": 0,
            "uuids": [], "nbd-clients": 0, "io-suspended": false,
            "peers": [{
                "name": "beta", "connection": connection, "replication": "Established",
                "peer-role": peer_role, "peer-disk": "UpToDate", "out-of-sync-kib": 0,
            }],
        }))
        .unwrap()
    }

    /// Seed 1880: a dropped connection must not read as "the peer is Secondary".
    #[test]
    fn the_replication_link_role_is_unknown_unless_connected() {
        use crate::core::LinkRole;
        let role = |c: &str, r: &str| link_role(Some(&replica_status(c, r)), "beta");
        assert_eq!(role("Connected", "Primary"), LinkRole::Primary);
        assert_eq!(role("Connected", "Secondary"), LinkRole::Secondary);
        assert_eq!(role("Connecting", "Unknown"), LinkRole::Unknown);
        assert_eq!(role("StandAlone", "Secondary"), LinkRole::Unknown);
        assert_eq!(
            link_role(Some(&replica_status("Connected", "Primary")), "gamma"),
            LinkRole::Unknown,
            "not a peer of this resource"
        );
        assert_eq!(
            link_role(None, "beta"),
            LinkRole::Unknown,
            "replicatord does not answer"
        );
    }

    fn config(fence: &str, secret: &str) -> Config {
        let text = format!(
            "resource r0 {{
    net {{ {secret} }}
    on alpha {{ device /dev/nbd0; disk /tmp/a.img; meta-disk internal; address 10.0.0.1:7788; }}
    on beta  {{ device /dev/nbd0; disk /tmp/b.img; meta-disk internal; address 10.0.0.2:7788; }}
}}
cluster pi {{
    node alpha {{ address 10.0.0.1; address 10.1.0.1; {fence} }}
    node beta  {{ address 10.0.0.2; {fence} }}
    sbd {{ device /tmp/sbd.img; watchdog /dev/watchdog; watchdog-timeout 5; msgwait 10; }}
    quorum {{ two-node yes; }}
    token 1500;
    resource r0 {{ export nbd; }}
}}\n"
        );
        Config::parse_str(&text, "test.conf").unwrap()
    }

    #[test]
    fn the_core_gets_the_cluster_block() {
        let c = config(
            "fence ifmib { switch 10.0.0.254; community private; port 2; }",
            "",
        );
        let cluster = c.cluster.clone().unwrap();
        let core = core_config(&cluster, 1);
        assert_eq!(core.me, 1);
        assert_eq!(core.nodes, vec!["alpha".to_string(), "beta".to_string()]);
        assert_eq!(core.token_ms, 1500);
        assert!(core.two_node && core.wait_for_all);
        assert_eq!(core.fence_methods, 1);
        assert_eq!(
            core.priority_delay_ms, PRIORITY_DELAY_MS,
            "no SBD method: no msgwait"
        );
        assert_eq!(core.resources, vec!["r0".to_string()]);
        let c = config(
            "fence ifmib { switch 10.0.0.254; community private; port 2; } fence sbd;",
            "",
        );
        let core = core_config(&c.cluster.clone().unwrap(), 0);
        assert_eq!(core.fence_methods, 2);
        assert_eq!(
            core.priority_delay_ms,
            PRIORITY_DELAY_MS + 10_000,
            "the Primary's SBD fence takes msgwait"
        );
    }

    #[test]
    fn the_heartbeat_key_takes_the_resources_shared_secrets() {
        let plain = config("", "");
        let with = config("", "cram-hmac-alg sha256; shared-secret \"s3cret\";");
        let other = config("", "cram-hmac-alg sha256; shared-secret \"other\";");
        let key = |c: &Config| heartbeat_key(c, c.cluster.as_ref().unwrap());
        assert_eq!(key(&plain), heartbeat::key("pi", []));
        assert_eq!(key(&with), heartbeat::key("pi", ["s3cret"]));
        assert_ne!(key(&with), key(&other));
    }

    #[test]
    fn the_clusters_own_secret_is_the_heartbeat_key() {
        let key = |resource_secret: &str, cluster_secret: Option<&str>| {
            let mut c = config("", resource_secret);
            let mut cluster = c.cluster.take().unwrap();
            cluster.shared_secret = cluster_secret.map(str::to_string);
            heartbeat_key(&c, &cluster)
        };
        let resource = "cram-hmac-alg sha256; shared-secret \"s3cret\";";
        assert_eq!(
            key("", Some("cluster-key")),
            heartbeat::key("pi", ["cluster-key"])
        );
        assert_eq!(
            key(resource, Some("cluster-key")),
            key("", Some("cluster-key")),
            "the resources' secrets do not count beside the cluster's"
        );
        assert_ne!(key("", Some("cluster-key")), key("", None));
        assert_ne!(key("", Some("cluster-key")), key(resource, None));
    }
}
