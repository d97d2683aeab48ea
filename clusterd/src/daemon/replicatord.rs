//! A blocking client of replicatord's control socket (`<run-dir>/replicatord.sock`): the
//! replica states clusterd polls, and promote/demote.

use std::path::Path;
use std::time::Duration;

use replicator::control::{self, AskError, Request, ResourceStatus, Response};

/// The bound on one request (a promotion writes meta-data, which may take a moment).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Sends one request and reads its answer.
pub fn ask(run_dir: &Path, request: &Request) -> Result<Response, String> {
    control::ask(
        &run_dir.join(control::SOCKET_NAME),
        request,
        Some(REQUEST_TIMEOUT),
    )
    .map_err(|e| match e {
        AskError::Connect { path, source } => {
            format!(
                "replicatord is not reachable at {}: {source}",
                path.display()
            )
        }
        AskError::Io(e) => format!("talking to replicatord: {e}"),
        AskError::Closed => "replicatord closed the connection without answering".into(),
        AskError::Parse(e) => format!("replicatord's answer: {e}"),
    })
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
