//! The decision core of clusterd: membership, quorum and fence-then-promote, pure.
//!
//! [`Cluster`] takes [`Event`]s (heartbeats per link, fence results, replica states, time)
//! and returns [`Action`]s (fence a node, promote or demote a replica, start or stop a
//! resource group, run alerts). It never sleeps or reads a clock, so the same code runs in
//! clusterd and under a deterministic simulator.
//!
//! The rules (DESIGN §8):
//! - a node is lost after `token` ms without a heartbeat on any of its links;
//! - quorum is a majority of votes; with `two-node`, one node keeps quorum only once it has
//!   fenced the other; with `wait-for-all`, a fresh cluster has no quorum until every node was
//!   seen once;
//! - a lost node that held a Primary is fenced, and the fence confirmed, before any other node
//!   is promoted: never two Primaries;
//! - in a two-node partition both nodes are alive and each wants to fence the other: the node
//!   holding the Primary fences at once, the other waits `priority_delay_ms` first (as
//!   Pacemaker's priority-fencing-delay), so the Primary wins the race;
//! - replicatord's fence-peer handler may ask to fence a peer that still sends heartbeats
//!   (its replication link broke): [`Event::FenceRequest`];
//! - a peer the replication link saw Primary stops a promotion, and when that link drops it
//!   still does until the link sees it Secondary or a fence of it is confirmed
//!   ([`Event::PeerRole`]); a peer that says it does not hear this node is no member
//!   ([`Event::PeerHears`]);
//! - a node in standby holds no Primary; a resource moved to a node is demoted where it runs
//!   once the target is a member, not in standby and UpToDate, and the target then promotes;
//! - when nobody is Primary, the promoter is the move target if it can, else the lowest member
//!   that is not in standby and whose replica is UpToDate.

use std::collections::BTreeMap;

/// Index of a node in the configuration.
pub type NodeId = usize;

/// Static settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node.
    pub me: NodeId,
    /// Node names, by id.
    pub nodes: Vec<String>,
    /// Silence after which a node is lost.
    pub token_ms: u64,
    /// `quorum { two-node yes; }`.
    pub two_node: bool,
    /// `quorum { wait-for-all yes; }`.
    pub wait_for_all: bool,
    /// How long a node that holds no Primary waits before fencing its peer.
    pub priority_delay_ms: u64,
    /// Fence methods each node can be fenced with, tried in order (names for the driver).
    pub fence_methods: usize,
    /// The replicated resources clusterd manages.
    pub resources: Vec<String>,
}

/// What clusterd learns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A heartbeat from `from` arrived on link `link`, saying which resources it is Primary
    /// for.
    Heartbeat {
        /// The sender.
        from: NodeId,
        /// Which of its addresses.
        link: usize,
        /// Resources the sender is Primary for.
        primary_for: Vec<String>,
    },
    /// This node's replica of `resource` is now in this state.
    Replica {
        /// The resource.
        resource: String,
        /// Primary now.
        primary: bool,
        /// UpToDate now.
        up_to_date: bool,
    },
    /// A fence attempt finished.
    FenceResult {
        /// The node.
        node: NodeId,
        /// The method tried (index into the node's methods).
        method: usize,
        /// Confirmed off.
        ok: bool,
    },
    /// Fence `node` now, even though it may still send heartbeats (the fence-peer handler:
    /// the replication link to it broke). Confirmed fences count in [`Cluster::fence_count`].
    FenceRequest {
        /// The node.
        node: NodeId,
    },
    /// Which resources `from`'s replicas are UpToDate for (sent with each heartbeat). Until
    /// this arrives for a peer, its replicas count as UpToDate.
    PeerDisks {
        /// The sender.
        from: NodeId,
        /// Its UpToDate resources.
        up_to_date: Vec<String>,
    },
    /// The administrative state changed (`clusterctl standby`, `move`, `cleanup`).
    Admin {
        /// Nodes in standby.
        standby: Vec<NodeId>,
        /// Resources moved to a node.
        moves: Vec<(String, NodeId)>,
    },
    /// What this node's replica of `resource` knows of `peer`'s role over the replication
    /// link (fresher than the peer's heartbeats; replicatord's `peer-role`). A peer seen
    /// Primary there stops a promotion; when the connection drops ([`LinkRole::Unknown`]) it
    /// may still be Primary, so it goes on stopping one until the link sees it Secondary or a
    /// fence of it is confirmed after it was last seen Primary. A peer whose role stays unknown
    /// while it is the only obstacle to this node's promotion is fenced after
    /// `priority_delay_ms` (DRBD's fence-peer at promotion would fence it too).
    PeerRole {
        /// The resource.
        resource: String,
        /// The peer.
        peer: NodeId,
        /// Its role as the replication link sees it.
        role: LinkRole,
    },
    /// Whether `from` has quorum (sent with each heartbeat). A node with `wait-for-all` that
    /// hears from a quorate peer shares its quorum (corosync: a node joining a quorate
    /// partition); a peer without quorum is not chosen to promote.
    PeerQuorum {
        /// The sender.
        from: NodeId,
        /// It has quorum.
        quorate: bool,
    },
    /// Which nodes `from` hears (sent with each heartbeat, before it; see [`Cluster::hears`]).
    /// A peer that does not hear this node is no member, whatever arrives from it: in a
    /// one-way partition both sides must see the other lost, or the side that is heard would
    /// take the deaf one for a Secondary while it promotes on its own. Until this arrives for a
    /// peer, the peer counts as hearing this node.
    PeerHears {
        /// The sender.
        from: NodeId,
        /// The nodes it hears.
        hears: Vec<NodeId>,
    },
    /// A Promote or Demote of `resource` failed; it is retried after [`RETRY_MS`].
    ActionFailed {
        /// The resource.
        resource: String,
    },
    /// Time passes.
    Tick,
}

/// A peer's role as this node's replica sees it over the replication link (DRBD's
/// `peer-role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRole {
    /// Connected, and the peer is Primary.
    Primary,
    /// Connected, and the peer is Secondary.
    Secondary,
    /// Not connected: the peer may be anything, including a Primary it was.
    Unknown,
}

/// How long after a failed promote or demote it is tried again.
pub const RETRY_MS: u64 = 2000;

/// What clusterd must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Fence `node` with its method number `method`; answer with [`Event::FenceResult`].
    Fence {
        /// The node.
        node: NodeId,
        /// Which method.
        method: usize,
    },
    /// Promote this node's replica of the resource, then start its group.
    Promote {
        /// The resource.
        resource: String,
    },
    /// Stop the group and demote this node's replica.
    Demote {
        /// The resource.
        resource: String,
    },
    /// Run the alert programs (Pacemaker's alert kinds: node, fencing, resource).
    Alert {
        /// `node`, `fencing` or `resource`.
        kind: &'static str,
        /// The node concerned.
        node: String,
        /// What happened.
        desc: String,
    },
}

#[derive(Debug, Clone, Default)]
struct Peer {
    last_seen_ms: Option<u64>,
    seen_ever: bool,
    lost: bool,
    primary_for: Vec<String>,
    /// Fenced and confirmed since it was lost.
    fenced: bool,
    /// Fencing in progress: the method being tried.
    fencing: Option<usize>,
    /// When fencing may start (the priority delay).
    fence_after_ms: Option<u64>,
    /// Fencing asked for by [`Event::FenceRequest`]: heartbeats do not cancel it.
    fence_requested: bool,
    /// Confirmed fences since start.
    fence_count: u64,
    /// Its UpToDate resources, once it told us.
    up_to_date: Option<Vec<String>>,
    /// Rounds of every fence method failing since it was lost.
    failed_rounds: u32,
    /// Whether it has quorum, once it told us.
    quorate: Option<bool>,
    /// Its last heartbeat, member or not (for [`Cluster::hears`]).
    last_heard_ms: Option<u64>,
    /// It said it does not hear this node: its heartbeats prove no membership.
    deaf: bool,
}

/// How this node sees a peer, for status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// Never seen.
    Unseen,
    /// Heartbeats arrive.
    Online,
    /// Lost and being fenced (or waiting for the priority delay).
    Fencing,
    /// Lost and confirmed fenced.
    Fenced,
    /// Being fenced on request (the fence-peer handler) while it still sends heartbeats.
    Lost,
}

#[derive(Debug, Clone, Default)]
struct Replica {
    primary: bool,
    up_to_date: bool,
    promoting: bool,
    demoting: bool,
    retry_after_ms: u64,
    /// Peers the replication link saw Primary and that may still be: not seen Secondary
    /// since, nor confirmed fenced after that sighting.
    link_primary: BTreeMap<NodeId, LinkPrimary>,
}

/// A peer the replication link saw Primary ([`Event::PeerRole`]).
#[derive(Debug, Clone, Copy)]
struct LinkPrimary {
    /// The peer's confirmed fences when it was last seen Primary: one more ends its role.
    fences_then: u64,
    /// Since when the connection is down (its role unknown).
    unknown_since_ms: Option<u64>,
}

/// The cluster as one node sees it.
#[derive(Debug)]
pub struct Cluster {
    cfg: Config,
    peers: BTreeMap<NodeId, Peer>,
    replicas: BTreeMap<String, Replica>,
    standby: Vec<NodeId>,
    moves: BTreeMap<String, NodeId>,
    /// wait-for-all is satisfied by a quorate peer even though not every node was seen.
    joined_quorate: bool,
    out: Vec<Action>,
    /// The time of the first event: peers unseen `token` ms after it are fenced.
    start_ms: Option<u64>,
}

impl Cluster {
    /// A node that has seen nobody yet.
    pub fn new(cfg: Config) -> Cluster {
        let peers = (0..cfg.nodes.len())
            .filter(|&n| n != cfg.me)
            .map(|n| (n, Peer::default()))
            .collect();
        let replicas = cfg
            .resources
            .iter()
            .map(|r| (r.clone(), Replica::default()))
            .collect();
        Cluster {
            cfg,
            peers,
            replicas,
            standby: Vec::new(),
            moves: BTreeMap::new(),
            joined_quorate: false,
            out: Vec::new(),
            start_ms: None,
        }
    }

    /// True when this node has quorum now.
    pub fn has_quorum(&self) -> bool {
        if self.cfg.wait_for_all
            && !self.joined_quorate
            && self.peers.values().any(|p| !p.seen_ever)
        {
            return false;
        }
        let alive = 1 + self
            .peers
            .values()
            .filter(|p| !p.lost && p.seen_ever)
            .count();
        let total = self.peers.len() + 1;
        if self.cfg.two_node && total == 2 {
            // One of two keeps quorum only once the other is confirmed fenced.
            return alive == 2 || self.peers.values().all(|p| !p.lost || p.fenced);
        }
        alive * 2 > total
    }

    /// Members this node considers alive (itself included).
    pub fn members(&self) -> Vec<NodeId> {
        let mut m: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.lost && p.seen_ever)
            .map(|(&n, _)| n)
            .collect();
        m.push(self.cfg.me);
        m.sort_unstable();
        m
    }

    /// The peers this node has heard within `token` ms, members or not: what its heartbeats
    /// tell the others ([`Event::PeerHears`]).
    pub fn hears(&self, now_ms: u64) -> Vec<NodeId> {
        self.peers
            .iter()
            .filter(|(_, p)| {
                p.last_heard_ms
                    .is_some_and(|t| now_ms.saturating_sub(t) <= self.cfg.token_ms)
            })
            .map(|(&n, _)| n)
            .collect()
    }

    /// How this node sees `node` (None for itself or an unknown id).
    pub fn peer_state(&self, node: NodeId) -> Option<PeerState> {
        let p = self.peers.get(&node)?;
        Some(if !p.seen_ever {
            if p.fenced {
                PeerState::Fenced
            } else {
                PeerState::Unseen
            }
        } else if p.fenced {
            // Lost and fenced, or fenced on request and not heard from since.
            PeerState::Fenced
        } else if p.lost {
            PeerState::Fencing
        } else if p.fencing.is_some() {
            PeerState::Lost
        } else {
            PeerState::Online
        })
    }

    /// Confirmed fences of `node` since start (0 for itself).
    pub fn fence_count(&self, node: NodeId) -> u64 {
        self.peers.get(&node).map_or(0, |p| p.fence_count)
    }

    /// Whether `node` is in standby.
    pub fn is_standby(&self, node: NodeId) -> bool {
        self.standby.contains(&node)
    }

    /// The node `resource` was moved to, if any.
    pub fn moved_to(&self, resource: &str) -> Option<NodeId> {
        self.moves.get(resource).copied()
    }

    /// The peer believed Primary for `resource`, or this node.
    pub fn primary_of(&self, resource: &str) -> Option<NodeId> {
        if self.replicas.get(resource).is_some_and(|r| r.primary) {
            return Some(self.cfg.me);
        }
        self.peers
            .iter()
            .find(|(_, p)| !p.lost && p.primary_for.iter().any(|r| r == resource))
            .map(|(&n, _)| n)
    }

    fn name(&self, n: NodeId) -> String {
        self.cfg.nodes[n].clone()
    }

    /// Handles one event at `now_ms`.
    pub fn apply(&mut self, event: Event, now_ms: u64) -> Vec<Action> {
        match event {
            Event::Heartbeat {
                from, primary_for, ..
            } => {
                let name = self.name(from);
                let Some(p) = self.peers.get_mut(&from) else {
                    return Vec::new();
                };
                p.last_heard_ms = Some(now_ms);
                if p.deaf {
                    // Not a member while it does not hear us; what it says of its roles
                    // still counts.
                    p.primary_for = primary_for;
                    self.check(now_ms);
                    return std::mem::take(&mut self.out);
                }
                let back = p.lost;
                p.last_seen_ms = Some(now_ms);
                p.seen_ever = true;
                p.lost = false;
                p.primary_for = primary_for;
                // A fence asked for by the fence-peer handler goes on while the node still
                // talks; otherwise a node that talks again is a member, unfenced.
                if !p.fence_requested {
                    p.fenced = false;
                    p.fencing = None;
                    p.fence_after_ms = None;
                    p.failed_rounds = 0;
                }
                if back {
                    self.out.push(Action::Alert {
                        kind: "node",
                        node: name,
                        desc: "member".into(),
                    });
                }
            }
            Event::Replica {
                resource,
                primary,
                up_to_date,
            } => {
                if let Some(r) = self.replicas.get_mut(&resource) {
                    r.primary = primary;
                    r.up_to_date = up_to_date;
                    r.promoting &= !primary;
                    r.demoting &= primary;
                }
            }
            Event::FenceRequest { node } => {
                if let Some(p) = self.peers.get_mut(&node) {
                    if p.fencing.is_none() {
                        p.fence_requested = true;
                        p.fenced = false;
                        p.fencing = Some(0);
                        if self.cfg.fence_methods > 0 {
                            self.out.push(Action::Fence { node, method: 0 });
                        }
                    }
                }
            }
            Event::PeerDisks { from, up_to_date } => {
                if let Some(p) = self.peers.get_mut(&from) {
                    p.up_to_date = Some(up_to_date);
                }
            }
            Event::Admin { standby, moves } => {
                self.standby = standby;
                self.moves = moves.into_iter().collect();
            }
            Event::PeerQuorum { from, quorate } => {
                if let Some(p) = self.peers.get_mut(&from) {
                    p.quorate = Some(quorate);
                    self.joined_quorate |= quorate && !p.lost && p.seen_ever;
                }
            }
            Event::PeerRole {
                resource,
                peer,
                role,
            } => {
                let fences = self.fence_count(peer);
                if let (Some(r), true) = (self.replicas.get_mut(&resource), peer != self.cfg.me) {
                    match role {
                        LinkRole::Primary => {
                            r.link_primary.insert(
                                peer,
                                LinkPrimary {
                                    fences_then: fences,
                                    unknown_since_ms: None,
                                },
                            );
                        }
                        LinkRole::Secondary => {
                            r.link_primary.remove(&peer);
                        }
                        LinkRole::Unknown => {
                            // The connection dropped: the peer may still be Primary (seed 1880).
                            if let Some(l) = r.link_primary.get_mut(&peer) {
                                l.unknown_since_ms.get_or_insert(now_ms);
                            }
                        }
                    }
                }
            }
            Event::PeerHears { from, hears } => {
                let me = self.cfg.me;
                if let Some(p) = self.peers.get_mut(&from) {
                    p.deaf = !hears.contains(&me);
                }
            }
            Event::ActionFailed { resource } => {
                if let Some(r) = self.replicas.get_mut(&resource) {
                    r.promoting = false;
                    r.demoting = false;
                    r.retry_after_ms = now_ms + RETRY_MS;
                }
            }
            Event::FenceResult { node, method, ok } => self.fence_result(node, method, ok, now_ms),
            Event::Tick => {}
        }
        self.check(now_ms);
        std::mem::take(&mut self.out)
    }

    fn fence_result(&mut self, node: NodeId, method: usize, ok: bool, _now_ms: u64) {
        let name = self.name(node);
        let methods = self.cfg.fence_methods;
        let Some(p) = self.peers.get_mut(&node) else {
            return;
        };
        if p.fencing != Some(method) {
            return;
        }
        if ok {
            p.fencing = None;
            p.fenced = true;
            p.fence_requested = false;
            p.fence_count += 1;
            p.failed_rounds = 0;
            self.out.push(Action::Alert {
                kind: "fencing",
                node: name,
                desc: format!("fenced with method {method}"),
            });
        } else if method + 1 < methods {
            p.fencing = Some(method + 1);
            self.out.push(Action::Fence {
                node,
                method: method + 1,
            });
        } else {
            // Every method failed: try again from the first (the node must not come back
            // unfenced while we would promote).
            p.fencing = Some(0);
            p.failed_rounds += 1;
            self.out.push(Action::Alert {
                kind: "fencing",
                node: name,
                desc: "every fence method failed; retrying".into(),
            });
            self.out.push(Action::Fence { node, method: 0 });
        }
    }

    fn check(&mut self, now: u64) {
        let token = self.cfg.token_ms;
        let i_hold_primary = self.replicas.values().any(|r| r.primary);
        let start = *self.start_ms.get_or_insert(now);
        // Startup fencing (Pacemaker's startup-fencing): a peer not seen `token` ms after this
        // node started may be Primary somewhere this node cannot hear; with quorum, it is lost
        // and fenced like any other (without wait-for-all, quorum does not wait for it).
        let startup_fencing = now.saturating_sub(start) > token && self.has_quorum();
        let mut lost_now = Vec::new();
        for (&n, p) in &mut self.peers {
            if !p.seen_ever && !p.lost && !p.fenced && startup_fencing {
                p.lost = true;
                let delay = if i_hold_primary {
                    0
                } else {
                    self.cfg.priority_delay_ms
                };
                p.fence_after_ms = Some(now + delay);
                lost_now.push(n);
                continue;
            }
            if p.lost || !p.seen_ever {
                continue;
            }
            if p.last_seen_ms
                .is_some_and(|t| now.saturating_sub(t) > token)
            {
                p.lost = true;
                // The node holding a Primary fences at once; the other gives it the head start.
                let delay = if i_hold_primary {
                    0
                } else {
                    self.cfg.priority_delay_ms
                };
                p.fence_after_ms = Some(now + delay);
                lost_now.push(n);
            }
        }
        for n in lost_now {
            let name = self.name(n);
            self.out.push(Action::Alert {
                kind: "node",
                node: name,
                desc: "lost".into(),
            });
        }
        // Fence lost nodes once their delay has passed.
        for (&n, p) in &mut self.peers {
            if p.lost
                && !p.fenced
                && p.fencing.is_none()
                && p.fence_after_ms.is_some_and(|t| now >= t)
                && self.cfg.fence_methods > 0
            {
                p.fencing = Some(0);
                self.out.push(Action::Fence { node: n, method: 0 });
            }
        }
        // A peer the replication link saw Primary has ended that role once a fence of it was
        // confirmed since.
        for r in self.replicas.values_mut() {
            r.link_primary.retain(|n, l| {
                self.peers
                    .get(n)
                    .is_some_and(|p| p.fence_count <= l.fences_then)
            });
        }
        let quorum = self.has_quorum();
        let me = self.cfg.me;
        let resources: Vec<String> = self.replicas.keys().cloned().collect();
        for res in resources {
            let r = &self.replicas[&res];
            if r.promoting || r.demoting || now < r.retry_after_ms {
                continue;
            }
            let link_says_primary = !r.link_primary.is_empty();
            let heartbeat_says_primary = self
                .peers
                .values()
                .any(|p| !p.lost && p.primary_for.contains(&res));
            let someone_else_primary = link_says_primary || heartbeat_says_primary;
            // A lost node that was Primary (or may be) must be confirmed fenced first; so must a
            // node never seen since this one started (it may be Primary where we cannot hear).
            let unfenced_lost = self
                .peers
                .values()
                .any(|p| (p.lost || p.fence_requested || !p.seen_ever) && !p.fenced);
            // Two nodes: the Primary's node keeps its Primary while it fences the lost other
            // (it fences at once and wins the race; nobody can promote before its fence is
            // confirmed), until a whole round of fence methods has failed.
            let fencing_the_other = self.cfg.two_node
                && self.peers.values().all(|p| {
                    !p.lost || p.fenced || (p.failed_rounds == 0 && p.fence_after_ms.is_some())
                });
            if r.primary {
                let why = if !quorum && !fencing_the_other {
                    Some("lost quorum".to_string())
                } else if self.standby.contains(&me) {
                    Some("node in standby".to_string())
                } else {
                    match self.moves.get(&res) {
                        Some(&t) if t != me && self.can_run(t, &res) => {
                            Some(format!("moving to {}", self.name(t)))
                        }
                        _ => None,
                    }
                };
                if let Some(why) = why {
                    self.replicas.get_mut(&res).expect("exists").demoting = true;
                    self.out.push(Action::Demote {
                        resource: res.clone(),
                    });
                    self.out.push(Action::Alert {
                        kind: "resource",
                        node: self.name(me),
                        desc: format!("{res}: {why}, demoting"),
                    });
                }
                continue;
            }
            let may_promote = r.up_to_date
                && quorum
                && !unfenced_lost
                && !heartbeat_says_primary
                && self.promoter(&res) == Some(me);
            if may_promote && link_says_primary {
                self.fence_unknown_link_primaries(&res, now);
                continue;
            }
            if may_promote && !someone_else_primary {
                self.replicas.get_mut(&res).expect("exists").promoting = true;
                self.out.push(Action::Promote {
                    resource: res.clone(),
                });
                self.out.push(Action::Alert {
                    kind: "resource",
                    node: self.name(me),
                    desc: format!("{res}: promoting"),
                });
            }
        }
    }

    /// This node would promote `res` but for peers the replication link saw Primary before it
    /// dropped: fence each whose role has been unknown for `priority_delay_ms` (long enough
    /// for a heartbeat saying it is Primary to arrive, and for a Primary's own fence-peer to
    /// win), as replicatord's fence-peer at the promotion would.
    fn fence_unknown_link_primaries(&mut self, res: &str, now: u64) {
        let delay = self.cfg.priority_delay_ms;
        let due: Vec<NodeId> = self.replicas[res]
            .link_primary
            .iter()
            .filter(|(_, l)| l.unknown_since_ms.is_some_and(|t| now >= t + delay))
            .map(|(&n, _)| n)
            .collect();
        for node in due {
            let p = self
                .peers
                .get_mut(&node)
                .expect("link_primary holds peers only");
            if p.fencing.is_some() || self.cfg.fence_methods == 0 {
                continue;
            }
            p.fence_requested = true;
            p.fenced = false;
            p.fencing = Some(0);
            self.out.push(Action::Fence { node, method: 0 });
            self.out.push(Action::Alert {
                kind: "node",
                node: self.cfg.nodes[node].clone(),
                desc: format!(
                    "{res}: Primary when the replication link dropped, role unknown since; fencing"
                ),
            });
        }
    }

    /// Whether `node` may hold `res`'s Primary: a member, not in standby, UpToDate.
    fn can_run(&self, node: NodeId, res: &str) -> bool {
        if self.standby.contains(&node) {
            return false;
        }
        if node == self.cfg.me {
            return self.replicas.get(res).is_some_and(|r| r.up_to_date);
        }
        self.peers.get(&node).is_some_and(|p| {
            p.seen_ever
                && !p.lost
                && p.fencing.is_none()
                && p.quorate != Some(false)
                && p.up_to_date
                    .as_ref()
                    .is_none_or(|u| u.iter().any(|x| x == res))
        })
    }

    /// Who promotes `res` when nobody is Primary: the move target if it can, else the lowest
    /// member that can (one decider, no race).
    fn promoter(&self, res: &str) -> Option<NodeId> {
        if let Some(&t) = self.moves.get(res) {
            if self.can_run(t, res) {
                return Some(t);
            }
        }
        self.members().into_iter().find(|&n| self.can_run(n, res))
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(me: NodeId) -> Config {
        Config {
            me,
            nodes: vec!["alpha".into(), "beta".into()],
            token_ms: 1000,
            two_node: true,
            wait_for_all: true,
            priority_delay_ms: 5000,
            fence_methods: 2,
            resources: vec!["r0".into()],
        }
    }

    fn hb(from: NodeId, primary: bool) -> Event {
        Event::Heartbeat {
            from,
            link: 0,
            primary_for: if primary { vec!["r0".into()] } else { vec![] },
        }
    }

    fn replica(primary: bool) -> Event {
        Event::Replica {
            resource: "r0".into(),
            primary,
            up_to_date: true,
        }
    }

    #[test]
    fn wait_for_all_then_the_lowest_member_promotes() {
        let mut a = Cluster::new(cfg(0));
        assert!(
            a.apply(replica(false), 0)
                .iter()
                .all(|x| !matches!(x, Action::Promote { .. })),
            "no quorum before beta was seen"
        );
        assert!(!a.has_quorum());
        let acts = a.apply(hb(1, false), 10);
        assert!(a.has_quorum());
        assert!(acts.contains(&Action::Promote {
            resource: "r0".into()
        }));
        let mut b = Cluster::new(cfg(1));
        b.apply(replica(false), 0);
        let acts = b.apply(hb(0, false), 10);
        assert!(
            !acts.iter().any(|x| matches!(x, Action::Promote { .. })),
            "beta is not the promoter"
        );
    }

    #[test]
    fn lost_primary_is_fenced_before_the_survivor_promotes() {
        let mut b = Cluster::new(cfg(1));
        b.apply(replica(false), 0);
        b.apply(hb(0, true), 0);
        // alpha goes silent; beta holds no Primary, so it waits the priority delay.
        let acts = b.apply(Event::Tick, 1500);
        assert!(
            !acts
                .iter()
                .any(|x| matches!(x, Action::Fence { .. } | Action::Promote { .. })),
            "{acts:?}"
        );
        assert!(
            !b.has_quorum(),
            "one of two has no quorum until the other is fenced"
        );
        let acts = b.apply(Event::Tick, 6600);
        assert_eq!(acts, vec![Action::Fence { node: 0, method: 0 }]);
        // The first method fails, the second is tried; nothing is promoted meanwhile.
        let acts = b.apply(
            Event::FenceResult {
                node: 0,
                method: 0,
                ok: false,
            },
            6700,
        );
        assert_eq!(acts, vec![Action::Fence { node: 0, method: 1 }]);
        let acts = b.apply(
            Event::FenceResult {
                node: 0,
                method: 1,
                ok: true,
            },
            6800,
        );
        assert!(b.has_quorum());
        assert!(
            acts.contains(&Action::Promote {
                resource: "r0".into()
            }),
            "{acts:?}"
        );
    }

    #[test]
    fn in_a_partition_the_primary_fences_first_and_the_other_demotes_or_waits() {
        let mut a = Cluster::new(cfg(0));
        // Seen first: a Primary without quorum (wait-for-all) would be demoted.
        a.apply(hb(1, false), 0);
        a.apply(replica(true), 0);
        let acts = a.apply(Event::Tick, 1500);
        assert!(
            acts.contains(&Action::Fence { node: 1, method: 0 }),
            "the Primary's node fences at once: {acts:?}"
        );
        assert!(
            !acts.iter().any(|x| matches!(x, Action::Demote { .. })),
            "two nodes: it keeps its Primary while it fences the other: {acts:?}"
        );
        assert!(!a.has_quorum());
        let acts = a.apply(
            Event::FenceResult {
                node: 1,
                method: 0,
                ok: true,
            },
            1600,
        );
        assert!(a.has_quorum());
        assert!(acts.iter().all(|x| !matches!(x, Action::Demote { .. })));
        let mut b = Cluster::new(cfg(1));
        b.apply(replica(false), 0);
        b.apply(hb(0, true), 0);
        let acts = b.apply(Event::Tick, 1500);
        assert!(
            acts.iter().all(|x| !matches!(x, Action::Fence { .. })),
            "beta gives alpha the head start"
        );
    }

    #[test]
    fn a_returning_node_is_a_member_again() {
        let mut b = Cluster::new(cfg(1));
        b.apply(hb(0, false), 0);
        b.apply(Event::Tick, 2000);
        assert_eq!(b.members(), vec![1]);
        let acts = b.apply(hb(0, false), 2100);
        assert_eq!(b.members(), vec![0, 1]);
        assert!(acts.contains(&Action::Alert {
            kind: "node",
            node: "alpha".into(),
            desc: "member".into()
        }));
    }

    #[test]
    fn a_fence_request_fences_a_talking_peer_and_heartbeats_do_not_cancel_it() {
        let mut a = Cluster::new(cfg(0));
        // Seen first: a Primary without quorum (wait-for-all) would be demoted.
        a.apply(hb(1, false), 0);
        a.apply(replica(true), 0);
        let acts = a.apply(Event::FenceRequest { node: 1 }, 100);
        assert_eq!(acts, vec![Action::Fence { node: 1, method: 0 }]);
        a.apply(hb(1, false), 150);
        assert_eq!(a.peer_state(1), Some(PeerState::Lost));
        assert_eq!(a.fence_count(1), 0);
        a.apply(
            Event::FenceResult {
                node: 1,
                method: 0,
                ok: true,
            },
            200,
        );
        assert_eq!(a.fence_count(1), 1);
        // Fenced, it goes silent: no second fence, alpha keeps its Primary and quorum.
        let acts = a.apply(Event::Tick, 2000);
        assert!(
            !acts
                .iter()
                .any(|x| matches!(x, Action::Fence { .. } | Action::Demote { .. })),
            "{acts:?}"
        );
        assert_eq!(a.peer_state(1), Some(PeerState::Fenced));
    }

    #[test]
    fn a_demote_is_asked_once_and_retried_after_a_failure() {
        let mut a = Cluster::new(cfg(0));
        // Seen first: a Primary without quorum (wait-for-all) would be demoted.
        a.apply(hb(1, false), 0);
        a.apply(replica(true), 0);
        a.apply(
            Event::Admin {
                standby: vec![0],
                moves: vec![],
            },
            10,
        );
        let demotes = |acts: &[Action]| {
            acts.iter()
                .filter(|x| matches!(x, Action::Demote { .. }))
                .count()
        };
        assert_eq!(
            demotes(&a.apply(Event::Tick, 20)),
            0,
            "asked at the Admin event"
        );
        assert_eq!(demotes(&a.apply(hb(1, false), 30)), 0);
        a.apply(
            Event::ActionFailed {
                resource: "r0".into(),
            },
            40,
        );
        assert_eq!(
            demotes(&a.apply(hb(1, false), 100)),
            0,
            "not before the retry"
        );
        assert_eq!(demotes(&a.apply(hb(1, false), 40 + RETRY_MS)), 1);
    }

    #[test]
    fn standby_moves_the_primary_to_the_other_node() {
        let mut a = Cluster::new(cfg(0));
        let mut b = Cluster::new(cfg(1));
        // Seen first: a Primary without quorum (wait-for-all) would be demoted.
        a.apply(hb(1, false), 0);
        a.apply(replica(true), 0);
        b.apply(replica(false), 0);
        b.apply(hb(0, true), 0);
        let admin = Event::Admin {
            standby: vec![0],
            moves: vec![],
        };
        let acts = a.apply(admin.clone(), 10);
        assert!(acts.contains(&Action::Demote {
            resource: "r0".into()
        }));
        assert!(b
            .apply(admin, 10)
            .iter()
            .all(|x| !matches!(x, Action::Promote { .. })));
        a.apply(replica(false), 20);
        let acts = b.apply(hb(0, false), 30);
        assert!(
            acts.contains(&Action::Promote {
                resource: "r0".into()
            }),
            "alpha in standby: beta is the promoter: {acts:?}"
        );
        let acts = a.apply(hb(1, true), 40);
        assert!(acts.iter().all(|x| !matches!(x, Action::Promote { .. })));
    }

    #[test]
    fn a_move_waits_for_an_up_to_date_target() {
        let mut a = Cluster::new(cfg(0));
        // Seen first: a Primary without quorum (wait-for-all) would be demoted.
        a.apply(hb(1, false), 0);
        a.apply(replica(true), 0);
        a.apply(
            Event::PeerDisks {
                from: 1,
                up_to_date: vec![],
            },
            0,
        );
        let mv = Event::Admin {
            standby: vec![],
            moves: vec![("r0".into(), 1)],
        };
        let acts = a.apply(mv, 10);
        assert!(
            acts.iter().all(|x| !matches!(x, Action::Demote { .. })),
            "beta is not UpToDate: {acts:?}"
        );
        let acts = a.apply(
            Event::PeerDisks {
                from: 1,
                up_to_date: vec!["r0".into()],
            },
            20,
        );
        assert!(acts.contains(&Action::Demote {
            resource: "r0".into()
        }));
        assert_eq!(a.moved_to("r0"), Some(1));
        assert_eq!(a.primary_of("r0"), Some(0));
    }

    #[test]
    fn the_promoter_skips_a_member_that_is_not_up_to_date() {
        let mut b = Cluster::new(cfg(1));
        b.apply(replica(false), 0);
        b.apply(
            Event::PeerDisks {
                from: 0,
                up_to_date: vec![],
            },
            0,
        );
        let acts = b.apply(hb(0, false), 10);
        assert!(acts.contains(&Action::Promote {
            resource: "r0".into()
        }));
    }

    #[test]
    fn the_replication_link_saying_the_peer_is_primary_stops_a_promotion() {
        // alpha's heartbeat is older than its promotion; beta's replica already knows.
        let mut b = Cluster::new(cfg(1));
        b.apply(hb(0, false), 0);
        b.apply(
            Event::PeerDisks {
                from: 0,
                up_to_date: vec![],
            },
            0,
        );
        b.apply(link_role(0, LinkRole::Primary), 10);
        let acts = b.apply(replica(false), 20);
        assert!(
            acts.iter().all(|x| !matches!(x, Action::Promote { .. })),
            "{acts:?}"
        );
    }

    fn link_role(peer: NodeId, role: LinkRole) -> Event {
        Event::PeerRole {
            resource: "r0".into(),
            peer,
            role,
        }
    }

    fn promotes(acts: &[Action]) -> bool {
        acts.iter().any(|x| matches!(x, Action::Promote { .. }))
    }

    fn three(me: NodeId) -> Cluster {
        let mut c = cfg(me);
        c.nodes.push("gamma".into());
        c.two_node = false;
        c.wait_for_all = false;
        Cluster::new(c)
    }

    /// Seed 1880 of three nodes: beta became Primary and lost its power before any heartbeat
    /// of its said so; alpha's replica had seen it Primary until the connection dropped with
    /// the power. The dropped connection must not read as "beta demoted": alpha decides
    /// nothing until beta is fenced (here: lost, then fenced as any lost node).
    #[test]
    fn a_primary_seen_only_over_the_replication_link_is_not_forgotten_when_the_link_drops() {
        let mut a = three(0);
        a.apply(link_role(1, LinkRole::Primary), 0);
        a.apply(replica(false), 0);
        for t in [0, 100] {
            // beta's heartbeats still say Secondary; the replication link says Primary.
            assert!(!promotes(&a.apply(hb(1, false), t)));
            assert!(!promotes(&a.apply(hb(2, false), t)));
        }
        let acts = a.apply(link_role(1, LinkRole::Unknown), 200);
        assert!(!promotes(&acts), "beta may still be Primary: {acts:?}");
        let mut fenced = false;
        for t in (300..=7000).step_by(100) {
            let mut acts = a.apply(hb(2, false), t);
            acts.extend(a.apply(link_role(1, LinkRole::Unknown), t));
            assert!(!promotes(&acts), "promoted at {t} with beta unfenced");
            if acts.contains(&Action::Fence { node: 1, method: 0 }) {
                fenced = true;
                let acts = a.apply(
                    Event::FenceResult {
                        node: 1,
                        method: 0,
                        ok: true,
                    },
                    t + 50,
                );
                assert!(promotes(&acts), "beta fenced: alpha promotes: {acts:?}");
                break;
            }
        }
        assert!(fenced, "beta, silent, is lost and fenced");
    }

    /// The link seeing the peer Secondary again ends it; so does a fence confirmed after the
    /// peer was last seen Primary (not one from before).
    #[test]
    fn the_link_seeing_the_peer_secondary_or_a_later_fence_ends_its_primary_role() {
        let mut a = three(0);
        let members = |a: &mut Cluster, t| {
            let mut acts = a.apply(hb(1, false), t);
            acts.extend(a.apply(hb(2, false), t));
            acts
        };
        a.apply(link_role(1, LinkRole::Primary), 0);
        a.apply(replica(false), 0);
        assert!(!promotes(&members(&mut a, 0)));
        a.apply(link_role(1, LinkRole::Unknown), 20);
        assert!(!promotes(&members(&mut a, 30)));
        let acts = a.apply(link_role(1, LinkRole::Secondary), 40);
        assert!(promotes(&acts), "reconnected, beta is Secondary: {acts:?}");

        // A fence confirmed before the sighting does not count; one after does.
        let mut a = three(0);
        // Not UpToDate yet: nothing to promote while the history is set up.
        a.apply(
            Event::Replica {
                resource: "r0".into(),
                primary: false,
                up_to_date: false,
            },
            0,
        );
        members(&mut a, 0);
        a.apply(Event::FenceRequest { node: 1 }, 10);
        a.apply(
            Event::FenceResult {
                node: 1,
                method: 0,
                ok: true,
            },
            20,
        );
        a.apply(link_role(1, LinkRole::Primary), 30);
        a.apply(link_role(1, LinkRole::Unknown), 40);
        a.apply(replica(false), 45);
        assert!(!promotes(&members(&mut a, 50)), "beta came back Primary");
        a.apply(Event::FenceRequest { node: 1 }, 60);
        let acts = a.apply(
            Event::FenceResult {
                node: 1,
                method: 0,
                ok: true,
            },
            70,
        );
        assert!(promotes(&acts), "fenced since: {acts:?}");
    }

    /// A peer that still sends heartbeats saying Secondary but whose replication link stays
    /// down would block the promoter for ever: after the priority delay it is fenced, as
    /// replicatord's fence-peer would at the promotion; never while its heartbeats say Primary.
    #[test]
    fn a_talking_peer_whose_role_stays_unknown_is_fenced_after_the_priority_delay() {
        let mut a = three(0);
        a.apply(replica(false), 0);
        a.apply(link_role(1, LinkRole::Primary), 0);
        a.apply(link_role(1, LinkRole::Unknown), 100);
        let mut fence_at = None;
        for t in (100..=6000).step_by(100) {
            let primary = t < 2000;
            let mut acts = a.apply(hb(1, primary), t);
            acts.extend(a.apply(hb(2, false), t));
            assert!(!promotes(&acts), "promoted at {t}: {acts:?}");
            if acts.contains(&Action::Fence { node: 1, method: 0 }) {
                fence_at = Some(t);
                break;
            }
        }
        let t = fence_at.expect("beta is fenced");
        assert!(t >= 100 + 5000, "not before the priority delay ({t})");
        let acts = a.apply(
            Event::FenceResult {
                node: 1,
                method: 0,
                ok: true,
            },
            t + 10,
        );
        assert!(promotes(&acts), "{acts:?}");
    }

    #[test]
    fn a_primary_whose_fencing_fails_a_whole_round_demotes() {
        let mut a = Cluster::new(cfg(0));
        a.apply(hb(1, false), 0);
        a.apply(replica(true), 0);
        a.apply(Event::Tick, 1500);
        let fail = |m| Event::FenceResult {
            node: 1,
            method: m,
            ok: false,
        };
        let acts = a.apply(fail(0), 1600);
        assert!(!acts.iter().any(|x| matches!(x, Action::Demote { .. })));
        let acts = a.apply(fail(1), 1700);
        assert!(
            acts.contains(&Action::Demote {
                resource: "r0".into()
            }),
            "isolated, it cannot fence: stop serving: {acts:?}"
        );
        assert!(acts.contains(&Action::Fence { node: 1, method: 0 }));
    }

    #[test]
    fn a_node_joining_a_quorate_partition_shares_its_quorum() {
        let mut c = cfg(2);
        c.nodes.push("gamma".into());
        c.two_node = false;
        let mut g = Cluster::new(c);
        g.apply(replica(false), 0);
        g.apply(hb(0, false), 10);
        assert!(!g.has_quorum(), "wait-for-all: beta never seen");
        g.apply(
            Event::PeerQuorum {
                from: 0,
                quorate: true,
            },
            20,
        );
        g.apply(hb(0, false), 20);
        assert!(
            g.has_quorum(),
            "alpha is quorate: gamma joins its partition"
        );
    }

    #[test]
    fn a_peer_without_quorum_is_not_the_promoter() {
        let mut c = cfg(2);
        c.nodes.push("gamma".into());
        c.two_node = false;
        c.wait_for_all = false;
        let mut g = Cluster::new(c);
        let not_quorate = Event::PeerQuorum {
            from: 0,
            quorate: false,
        };
        g.apply(not_quorate.clone(), 0);
        g.apply(hb(0, false), 0);
        g.apply(replica(false), 10);
        // beta, never seen, is startup-fenced first.
        for t in [900, 1800, 2700, 3600, 4500, 5400, 6300, 7200] {
            g.apply(not_quorate.clone(), t);
            g.apply(hb(0, false), t);
        }
        let acts = g.apply(
            Event::FenceResult {
                node: 1,
                method: 0,
                ok: true,
            },
            7300,
        );
        assert!(
            acts.contains(&Action::Promote {
                resource: "r0".into()
            }),
            "alpha (lowest) has no quorum: gamma promotes: {acts:?}"
        );
    }
}
