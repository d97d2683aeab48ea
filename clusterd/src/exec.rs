//! Running a helper program (an OCF resource agent, an alert agent, `ip`, `arping`) with a
//! time limit, as the thin IO edge of clusterd.
//!
//! The program runs in a process group of its own, so a timeout kills everything it started
//! (an agent's `sleep`, a shell's children), not only the shell. Its output is captured up to
//! [`OUTPUT_LIMIT_BYTES`] per stream; an agent that forks a daemon which keeps the pipes open
//! does not hold the caller past the deadline.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Captured output kept per stream; the rest is read and dropped so the child never blocks.
pub const OUTPUT_LIMIT_BYTES: usize = 1 << 20;

/// How often a running child is polled for its exit.
const POLL_MS: u64 = 5;

/// How a program run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this status.
    Exited(i32),
    /// A signal killed it (not ours).
    Signalled(i32),
    /// It outlived its time limit; its process group was killed.
    TimedOut,
}

/// A finished run: how it ended and what it printed.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Exit status, signal or timeout.
    pub ended: Ended,
    /// Standard output (lossy UTF-8, at most [`OUTPUT_LIMIT_BYTES`]).
    pub stdout: String,
    /// Standard error (lossy UTF-8, at most [`OUTPUT_LIMIT_BYTES`]).
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
}

fn drain(mut r: impl Read + Send + 'static, tx: mpsc::Sender<(bool, Vec<u8>)>, is_err: bool) {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = OUTPUT_LIMIT_BYTES.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
        let _ = tx.send((is_err, kept));
    });
}

/// Kills process group `pgid` with SIGKILL.
fn kill_group(pgid: u32) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    // SAFETY: kill(2) with a negative pid signals a process group; it touches no memory of ours.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// Runs `cmd` (stdin from /dev/null) for at most `timeout`; on timeout kills its whole process
/// group. Fails only when the program cannot be started.
pub fn run(mut cmd: Command, timeout: Duration) -> std::io::Result<Finished> {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    let (tx, rx) = mpsc::channel();
    drain(
        child.stdout.take().expect("piped stdout"),
        tx.clone(),
        false,
    );
    drain(child.stderr.take().expect("piped stderr"), tx, true);
    let deadline = started + timeout;
    let ended = loop {
        if let Some(status) = child.try_wait()? {
            break match (status.code(), status.signal()) {
                (Some(code), _) => Ended::Exited(code),
                (None, Some(sig)) => Ended::Signalled(sig),
                (None, None) => Ended::Signalled(0),
            };
        }
        if Instant::now() >= deadline {
            kill_group(child.id());
            let _ = child.wait();
            break Ended::TimedOut;
        }
        std::thread::sleep(Duration::from_millis(POLL_MS));
    };
    // The streams end when every holder of the pipes is gone; a daemon the program left behind
    // may hold them, so wait only a little past the exit (and not at all past the deadline).
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let grace = Instant::now() + Duration::from_millis(200);
    for _ in 0..2 {
        let wait = grace.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok((false, out)) => stdout = out,
            Ok((true, err)) => stderr = err,
            Err(_) => break,
        }
    }
    Ok(Finished {
        ended,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("/bin/sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn exit_status_and_output_are_captured() {
        let f = run(sh("echo out; echo err >&2; exit 7"), Duration::from_secs(5)).unwrap();
        assert_eq!(f.ended, Ended::Exited(7));
        assert_eq!(f.stdout, "out\n");
        assert_eq!(f.stderr, "err\n");
    }

    #[test]
    fn a_timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survivor");
        // The shell starts a child that would write the marker after the timeout.
        let script = format!("(sleep 1; touch {}) & sleep 30", marker.display());
        let f = run(sh(&script), Duration::from_millis(200)).unwrap();
        assert_eq!(f.ended, Ended::TimedOut);
        assert!(f.elapsed < Duration::from_secs(2), "{:?}", f.elapsed);
        std::thread::sleep(Duration::from_millis(1300));
        assert!(
            !marker.exists(),
            "the background child outlived the timeout"
        );
    }

    #[test]
    fn a_missing_program_is_an_error() {
        assert!(run(Command::new("/nonexistent/program"), Duration::from_secs(1)).is_err());
    }
}
