//! The control protocol between `replctl` and `replicatord`: one JSON object per line over the
//! Unix socket `<run-dir>/replicatord.sock`. A request gets one response line, except
//! `events`, which streams one [`EventLine`] per state change until the client hangs up.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The control socket's file name inside the run directory.
pub const SOCKET_NAME: &str = "replicatord.sock";
/// The NBD Unix socket's file name inside the run directory.
pub const NBD_SOCKET_NAME: &str = "nbd.sock";
/// Longest request line accepted.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Longest answer line [`ask`] reads.
pub const MAX_ANSWER_BYTES: u64 = 4 << 20;

/// What went wrong talking to a daemon's control socket.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    /// The socket does not accept connections (the daemon is not running).
    #[error("cannot connect to {}: {source}", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Writing the request or reading the answer failed (or timed out).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The daemon hung up without an answer.
    #[error("the daemon closed the connection without answering")]
    Closed,
    /// The answer is not what was expected.
    #[error("the daemon's answer: {0}")]
    Parse(#[from] serde_json::Error),
}

/// Sends one request line on a control socket (`replicatord`'s, `clusterd`'s: the same JSON
/// lines protocol) and reads its one answer line (at most [`MAX_ANSWER_BYTES`]); `timeout`
/// bounds each read and write.
pub fn ask<Q: Serialize, A: DeserializeOwned>(
    path: &Path,
    request: &Q,
    timeout: Option<Duration>,
) -> Result<A, AskError> {
    let stream = UnixStream::connect(path).map_err(|source| AskError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    stream.set_read_timeout(timeout)?;
    stream.set_write_timeout(timeout)?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    (&stream).write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new((&stream).take(MAX_ANSWER_BYTES)).read_line(&mut answer)?;
    if answer.is_empty() {
        return Err(AskError::Closed);
    }
    Ok(serde_json::from_str(&answer)?)
}

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Attach the disk and start connecting.
    Up {
        /// The resource.
        resource: String,
    },
    /// Disconnect and detach.
    Down {
        /// The resource.
        resource: String,
    },
    /// Promote.
    Primary {
        /// The resource.
        resource: String,
        /// `--force`.
        force: bool,
    },
    /// Demote.
    Secondary {
        /// The resource.
        resource: String,
    },
    /// Connect to the peer.
    Connect {
        /// The resource.
        resource: String,
        /// `--discard-my-data`.
        discard_my_data: bool,
    },
    /// Disconnect from the peer.
    Disconnect {
        /// The resource.
        resource: String,
    },
    /// Start a new data generation with a clear bitmap (skip the initial sync).
    NewCurrentUuidClearBitmap {
        /// The resource.
        resource: String,
    },
    /// Mark this Secondary's disk Outdated.
    Outdate {
        /// The resource.
        resource: String,
    },
    /// Online verify against the peer.
    Verify {
        /// The resource.
        resource: String,
    },
    /// Full sync from the peer.
    Invalidate {
        /// The resource.
        resource: String,
    },
    /// Full sync to the peer.
    InvalidateRemote {
        /// The resource.
        resource: String,
    },
    /// Status of one resource or all.
    Status {
        /// Only this one.
        resource: Option<String>,
    },
    /// Stream state changes.
    Events,
}

/// The peer part of a status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PeerStatus {
    /// The peer's node name.
    pub name: String,
    /// StandAlone, Connecting, Connected.
    pub connection: String,
    /// Off, Established, SyncSource, SyncTarget, ...
    pub replication: String,
    /// Primary, Secondary or Unknown.
    pub peer_role: String,
    /// The peer's disk state.
    pub peer_disk: String,
    /// KiB marked out of sync.
    pub out_of_sync_kib: u64,
    /// Resync progress in percent, while syncing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done: Option<f64>,
    /// Resync rate, KiB/s, while syncing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_kib_s: Option<u64>,
    /// Seconds left, while syncing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_s: Option<u64>,
    /// Why the last connection ended, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// KiB the last online verify found out of sync.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_verify_oos_kib: Option<u64>,
    /// The last split brain and which policy decided what.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split_brain: Option<String>,
}

/// Status of one resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ResourceStatus {
    /// The resource.
    pub name: String,
    /// Primary or Secondary.
    pub role: String,
    /// The local disk state.
    pub disk: String,
    /// Exported size.
    pub size_bytes: u64,
    /// Generation UUIDs, hex.
    pub uuids: Vec<String>,
    /// NBD clients connected.
    pub nbd_clients: usize,
    /// New application IO is held until the peer is fenced (resource-and-stonith).
    pub io_suspended: bool,
    /// The peers (one with tandem).
    pub peers: Vec<PeerStatus>,
}

/// A response line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Response {
    /// Success.
    pub ok: bool,
    /// The one-line error when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For `status`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Vec<ResourceStatus>>,
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
            status: None,
        }
    }
}

/// One line of `events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EventLine {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The resource.
    pub resource: String,
    /// What happened.
    pub what: String,
    /// Role after it.
    pub role: String,
    /// Disk after it.
    pub disk: String,
    /// Connection after it.
    pub connection: String,
    /// Replication after it.
    pub replication: String,
    /// Peer disk after it.
    pub peer_disk: String,
    /// Resync or verify progress in percent, while one runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done: Option<f64>,
    /// Its rate, KiB/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_kib_s: Option<u64>,
    /// Seconds left.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_s: Option<u64>,
}

/// Formats statuses the way `drbdadm status` does.
pub fn format_status(all: &[ResourceStatus]) -> String {
    let mut out = String::new();
    for r in all {
        out.push_str(&format!(
            "{} role:{}{}\n  disk:{}\n",
            r.name,
            r.role,
            if r.io_suspended {
                " suspended:fencing"
            } else {
                ""
            },
            r.disk
        ));
        for p in &r.peers {
            out.push_str(&format!("  {} connection:{}", p.name, p.connection));
            if p.connection == "Connected" {
                out.push_str(&format!(" role:{}", p.peer_role));
            }
            out.push('\n');
            if p.connection == "Connected" {
                out.push_str(&format!(
                    "    replication:{} peer-disk:{}",
                    p.replication, p.peer_disk
                ));
                if let (Some(done), Some(rate), Some(eta)) = (p.done, p.rate_kib_s, p.eta_s) {
                    out.push_str(&format!(" done:{done:.2} rate:{rate}KiB/s eta:{eta}s"));
                }
                out.push('\n');
            }
            if p.out_of_sync_kib > 0 {
                out.push_str(&format!("    out-of-sync:{}KiB\n", p.out_of_sync_kib));
            }
            if let (Some(e), false) = (&p.last_error, p.connection == "Connected") {
                out.push_str(&format!("    last-error:{e}\n"));
            }
            if let Some(sb) = &p.split_brain {
                out.push_str(&format!("    {sb}\n"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_kebab_case_json() {
        let r = Request::Primary {
            resource: "r0".into(),
            force: true,
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"cmd":"primary","resource":"r0","force":true}"#);
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"explode"}"#).is_err());
    }

    #[test]
    fn status_text_and_json_fields() {
        let st = ResourceStatus {
            name: "r0".into(),
            role: "Primary".into(),
            disk: "UpToDate".into(),
            size_bytes: 1 << 20,
            uuids: vec![],
            nbd_clients: 0,
            io_suspended: false,
            peers: vec![PeerStatus {
                name: "beta".into(),
                connection: "Connected".into(),
                replication: "SyncSource".into(),
                peer_role: "Secondary".into(),
                peer_disk: "Inconsistent".into(),
                out_of_sync_kib: 2048,
                done: Some(42.5),
                rate_kib_s: Some(1000),
                eta_s: Some(3),
                last_error: None,
                last_verify_oos_kib: None,
                split_brain: None,
            }],
        };
        let text = format_status(std::slice::from_ref(&st));
        assert_eq!(
            text,
            "r0 role:Primary\n  disk:UpToDate\n  beta connection:Connected role:Secondary\n    \
             replication:SyncSource peer-disk:Inconsistent done:42.50 rate:1000KiB/s eta:3s\n    \
             out-of-sync:2048KiB\n"
        );
        let json = serde_json::to_value(&st).unwrap();
        for key in [
            "connection",
            "replication",
            "peer-role",
            "peer-disk",
            "out-of-sync-kib",
            "done",
            "rate-kib-s",
            "eta-s",
        ] {
            assert!(json["peers"][0].get(key).is_some(), "{key}");
        }
    }
}
