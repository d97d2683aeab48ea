//! A blocking client of replicatord's control socket (`<run-dir>/replicatord.sock`): the
//! replica states clusterd polls, and promote/demote.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use replicator::control::{self, Request, ResourceStatus, Response};

/// The bound on one request (a promotion writes meta-data, which may take a moment).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest answer read.
const MAX_ANSWER_BYTES: u64 = 4 << 20;

/// Sends one request and reads its answer.
pub fn ask(run_dir: &Path, request: &Request) -> Result<Response, String> {
    let path = run_dir.join(control::SOCKET_NAME);
    let stream = UnixStream::connect(&path)
        .map_err(|e| format!("replicatord is not reachable at {}: {e}", path.display()))?;
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(REQUEST_TIMEOUT)))
        .map_err(|e| format!("replicatord socket: {e}"))?;
    let mut line = serde_json::to_string(request).expect("serializable");
    line.push('\n');
    (&stream)
        .write_all(line.as_bytes())
        .map_err(|e| format!("writing to replicatord: {e}"))?;
    let mut reader = BufReader::new((&stream).take(MAX_ANSWER_BYTES));
    let mut answer = String::new();
    reader
        .read_line(&mut answer)
        .map_err(|e| format!("reading replicatord's answer: {e}"))?;
    if answer.is_empty() {
        return Err("replicatord closed the connection without answering".into());
    }
    serde_json::from_str(&answer).map_err(|e| format!("replicatord's answer: {e}"))
}

fn simple(run_dir: &Path, request: &Request) -> Result<(), String> {
    let r = ask(run_dir, request)?;
    if r.ok {
        Ok(())
    } else {
        Err(r.error.unwrap_or_else(|| "failed".into()))
    }
}

/// Every resource's status.
pub fn status(run_dir: &Path) -> Result<Vec<ResourceStatus>, String> {
    let r = ask(run_dir, &Request::Status { resource: None })?;
    if !r.ok {
        return Err(r.error.unwrap_or_else(|| "status failed".into()));
    }
    Ok(r.status.unwrap_or_default())
}

/// `replctl primary RES`.
pub fn primary(run_dir: &Path, resource: &str) -> Result<(), String> {
    simple(
        run_dir,
        &Request::Primary {
            resource: resource.to_string(),
            force: false,
        },
    )
}

/// `replctl secondary RES`.
pub fn secondary(run_dir: &Path, resource: &str) -> Result<(), String> {
    simple(
        run_dir,
        &Request::Secondary {
            resource: resource.to_string(),
        },
    )
}
