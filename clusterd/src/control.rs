//! The control protocol between `clusterctl` and `clusterd`: one JSON object per line over the
//! Unix socket `<run-dir>/clusterd.sock`, one response line per request.

use serde::{Deserialize, Serialize};

/// The control socket's file name inside the run directory.
pub const SOCKET_NAME: &str = "clusterd.sock";
/// Longest request line accepted.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Fence events kept for `status`.
pub const MAX_FENCE_EVENTS: usize = 16;
/// Failed actions kept for `status`.
pub const MAX_FAILED_ACTIONS: usize = 32;

/// DRBD's fence-peer exit code: the peer was fenced (STONITH).
pub const FENCE_PEER_FENCED: i32 = 7;
/// DRBD's fence-peer exit code: the peer is unreachable (nothing done).
pub const FENCE_PEER_UNREACHABLE: i32 = 5;

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// The cluster as this node sees it.
    Status,
    /// Put a node in standby: it holds no Primary.
    Standby {
        /// The node.
        node: String,
    },
    /// Take a node out of standby.
    Unstandby {
        /// The node.
        node: String,
    },
    /// Move a resource's Primary to a node.
    Move {
        /// The resource.
        resource: String,
        /// The node.
        node: String,
    },
    /// Forget a resource's failed actions and its move.
    Cleanup {
        /// The resource.
        resource: String,
    },
    /// replicatord's fence-peer handler: fence the peer of `resource` and answer once it is
    /// confirmed fenced.
    FencePeer {
        /// The resource.
        resource: String,
        /// The peer node.
        peer: String,
    },
}

/// A node in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NodeStatus {
    /// The node's name.
    pub name: String,
    /// online, offline, fenced or fencing.
    pub state: String,
    /// In standby.
    pub standby: bool,
    /// This is the node answering.
    pub local: bool,
    /// Links (addresses) a heartbeat arrived on recently, by index (peers only).
    pub links_up: Vec<usize>,
}

/// A resource in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ResourceStatus {
    /// The resource.
    pub name: String,
    /// The node holding its Primary, if any is known.
    pub primary: Option<String>,
    /// Per node: (node, role: Primary/Secondary/Unknown, disk UpToDate or not).
    pub replicas: Vec<ReplicaStatus>,
    /// Whether the group (VIPs, OCF agents) is started on this node.
    pub group_started: bool,
    /// Failed starts and monitors on this node since the last `cleanup`.
    pub fail_count: u32,
    /// The node `move` asked for, if any.
    pub moved_to: Option<String>,
}

/// One node's replica of a resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ReplicaStatus {
    /// The node.
    pub node: String,
    /// Primary, Secondary or Unknown.
    pub role: String,
    /// UpToDate, or what the node's disk is (or Unknown).
    pub disk: String,
}

/// A fence event in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct FenceEvent {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The fenced node.
    pub node: String,
    /// The method (`ifmib`, `sbd`).
    pub method: String,
    /// ok or failed.
    pub result: String,
    /// The error, when failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A failed action in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct FailedAction {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The resource.
    pub resource: String,
    /// promote, demote, start, stop.
    pub action: String,
    /// What went wrong.
    pub error: String,
}

/// `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ClusterStatus {
    /// The cluster name.
    pub cluster: String,
    /// The answering node.
    pub node: String,
    /// Whether this node has quorum.
    pub quorum: bool,
    /// The nodes.
    pub nodes: Vec<NodeStatus>,
    /// The resources.
    pub resources: Vec<ResourceStatus>,
    /// The last fence events, oldest first.
    pub fence_events: Vec<FenceEvent>,
    /// Failed actions, oldest first.
    pub failed_actions: Vec<FailedAction>,
}

/// A response line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Response {
    /// Success.
    pub ok: bool,
    /// The one-line error when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For `status`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<ClusterStatus>,
    /// For `fence-peer`: DRBD's handler exit code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

impl Response {
    /// Success.
    pub fn ok() -> Response {
        Response {
            ok: true,
            ..Default::default()
        }
    }
    /// Failure.
    pub fn error(e: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(e.into()),
            ..Default::default()
        }
    }
}

/// Formats `status` the way `crm_mon -1` reads.
pub fn format_status(s: &ClusterStatus) -> String {
    let mut out = format!(
        "Cluster {} (seen from {}): {}\n\nNode List:\n",
        s.cluster,
        s.node,
        if s.quorum {
            "partition with quorum"
        } else {
            "partition WITHOUT quorum"
        }
    );
    for n in &s.nodes {
        let state = if n.standby && n.state == "online" {
            "standby".to_string()
        } else {
            n.state.clone()
        };
        out.push_str(&format!("  * Node {}: {state}", n.name));
        if n.local {
            out.push_str(" (this node)");
        } else if n.state == "online" {
            let links: Vec<String> = n.links_up.iter().map(ToString::to_string).collect();
            out.push_str(&format!(" links:{}", links.join(",")));
        }
        out.push('\n');
    }
    out.push_str("\nFull List of Resources:\n");
    for r in &s.resources {
        out.push_str(&format!(
            "  * {}: Primary on {}",
            r.name,
            r.primary.as_deref().unwrap_or("(none)")
        ));
        if let Some(m) = &r.moved_to {
            out.push_str(&format!(" (moved to {m})"));
        }
        if r.fail_count > 0 {
            out.push_str(&format!(" fail-count:{}", r.fail_count));
        }
        out.push('\n');
        for rep in &r.replicas {
            out.push_str(&format!("    * {}: {} {}\n", rep.node, rep.role, rep.disk));
        }
    }
    if !s.fence_events.is_empty() {
        out.push_str("\nFencing History:\n");
        for f in &s.fence_events {
            out.push_str(&format!(
                "  * {} of {} by {}: {}{}\n",
                "off",
                f.node,
                f.method,
                f.result,
                f.error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ));
        }
    }
    if !s.failed_actions.is_empty() {
        out.push_str("\nFailed Resource Actions:\n");
        for a in &s.failed_actions {
            out.push_str(&format!("  * {} {}: {}\n", a.resource, a.action, a.error));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_kebab_case_json() {
        let r = Request::FencePeer {
            resource: "r0".into(),
            peer: "beta".into(),
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"cmd":"fence-peer","resource":"r0","peer":"beta"}"#);
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"status"}"#).unwrap(),
            Request::Status
        );
    }

    #[test]
    fn status_text() {
        let s = ClusterStatus {
            cluster: "pi".into(),
            node: "beta".into(),
            quorum: true,
            nodes: vec![
                NodeStatus {
                    name: "alpha".into(),
                    state: "fenced".into(),
                    standby: false,
                    local: false,
                    links_up: vec![],
                },
                NodeStatus {
                    name: "beta".into(),
                    state: "online".into(),
                    standby: false,
                    local: true,
                    links_up: vec![],
                },
            ],
            resources: vec![ResourceStatus {
                name: "r0".into(),
                primary: Some("beta".into()),
                replicas: vec![ReplicaStatus {
                    node: "beta".into(),
                    role: "Primary".into(),
                    disk: "UpToDate".into(),
                }],
                group_started: true,
                fail_count: 0,
                moved_to: None,
            }],
            fence_events: vec![FenceEvent {
                time_ms: 1,
                node: "alpha".into(),
                method: "ifmib".into(),
                result: "ok".into(),
                error: None,
            }],
            failed_actions: vec![],
        };
        let text = format_status(&s);
        assert!(text.contains("partition with quorum"), "{text}");
        assert!(text.contains("* Node alpha: fenced\n"), "{text}");
        assert!(text.contains("* r0: Primary on beta\n"), "{text}");
        assert!(text.contains("off of alpha by ifmib: ok"), "{text}");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["resources"][0]["primary"], "beta");
        assert_eq!(json["fence-events"][0]["node"], "alpha");
    }
}
