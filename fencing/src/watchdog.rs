//! Watchdogs: the Linux API behind a trait, and a test watchdog that kills a process group.
//!
//! The Linux watchdog API (`Documentation/watchdog/watchdog-api.rst`): open `/dev/watchdog`,
//! set the timeout with `WDIOC_SETTIMEOUT`, write anything to keep it alive, and on a clean stop
//! disable it with `WDIOC_SETOPTIONS(WDIOS_DISABLECARD)` and write the magic character `V` before
//! closing. Closing without `V` leaves it running, so the machine resets: what a crashed or
//! fenced watcher must do.
//!
//! [`TestWatchdog`] stands in for the device on machines without one (this project's CI): a
//! helper process ([`run_test_watchdog`], `fencectl test-watchdog`) reads the same operations as
//! lines on a pipe and, when not fed in time, kills a process group with SIGKILL, which is how a
//! test "resets" a node. It follows the device's rules: end of input without `V` or `disable`
//! keeps it counting.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

/// A hardware (or emulated) watchdog.
pub trait Watchdog: Send {
    /// Sets the timeout in seconds; returns the timeout now in force.
    fn set_timeout(&mut self, timeout_s: u32) -> std::io::Result<u32>;
    /// Feeds it.
    fn keepalive(&mut self) -> std::io::Result<()>;
    /// Disables it and closes it with the magic close: a clean stop.
    fn disarm(self: Box<Self>) -> std::io::Result<()>;
}

// ioctl numbers from <linux/watchdog.h>: _IOR('W', 4, int), _IOWR('W', 6, int).
const WDIOC_SETOPTIONS: libc::c_ulong = 0x8004_5704;
const WDIOC_SETTIMEOUT: libc::c_ulong = 0xc004_5706;
const WDIOS_DISABLECARD: libc::c_int = 0x0001;

/// `/dev/watchdog` or another watchdog character device.
#[derive(Debug)]
pub struct LinuxWatchdog {
    file: File,
}

impl LinuxWatchdog {
    /// Opens the device. Opening arms it.
    pub fn open(path: &Path) -> std::io::Result<LinuxWatchdog> {
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)?;
        Ok(LinuxWatchdog { file })
    }

    fn ioctl_int(&self, request: libc::c_ulong, value: &mut libc::c_int) -> std::io::Result<()> {
        // SAFETY: both watchdog ioctls used here read and may write one c_int through the
        // pointer, which points at a live, exclusively borrowed c_int.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), request, value as *mut libc::c_int) };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

impl Watchdog for LinuxWatchdog {
    fn set_timeout(&mut self, timeout_s: u32) -> std::io::Result<u32> {
        let mut t = libc::c_int::try_from(timeout_s)
            .map_err(|_| std::io::Error::other(format!("timeout {timeout_s} s is too long")))?;
        self.ioctl_int(WDIOC_SETTIMEOUT, &mut t)?;
        u32::try_from(t).map_err(|_| std::io::Error::other(format!("driver set timeout {t}")))
    }

    fn keepalive(&mut self) -> std::io::Result<()> {
        // As sbd: one NUL byte.
        self.file.write_all(b"\0")
    }

    fn disarm(self: Box<Self>) -> std::io::Result<()> {
        let mut flags = WDIOS_DISABLECARD;
        let disabled = self.ioctl_int(WDIOC_SETOPTIONS, &mut flags);
        let mut file = &self.file;
        // The magic close as well, for drivers without WDIOS_DISABLECARD.
        file.write_all(b"V")?;
        disabled
    }
}

/// Opens the watchdog a `--watchdog` option names: a device path, or `test:PGID` for a
/// [`TestWatchdog`] on process group PGID, whose helper command `helper(pgid)` gives (one that
/// runs [`run_test_watchdog`], such as `fencectl test-watchdog PGID`).
pub fn open(
    spec: &str,
    helper: impl FnOnce(i32) -> std::io::Result<Command>,
) -> std::io::Result<Box<dyn Watchdog>> {
    if let Some(pgid) = spec.strip_prefix("test:") {
        let pgid: i32 = pgid
            .parse()
            .map_err(|_| std::io::Error::other(format!("test:{pgid}: not a process group id")))?;
        let watchdog = TestWatchdog::spawn(helper(pgid)?)?;
        tracing::info!("using the test watchdog on process group {pgid}");
        Ok(Box::new(watchdog))
    } else {
        let watchdog = LinuxWatchdog::open(Path::new(spec))
            .map_err(|e| std::io::Error::other(format!("cannot open {spec}: {e}")))?;
        tracing::info!("using watchdog device {spec}");
        Ok(Box::new(watchdog))
    }
}

/// The emulated watchdog: a helper process that kills a process group when not fed.
pub struct TestWatchdog {
    child: Child,
    pipe: ChildStdin,
}

impl TestWatchdog {
    /// Starts the helper: `helper` is a command running [`run_test_watchdog`] on its stdin
    /// (`fencectl test-watchdog PGID`). It gets its own process group, so killing the watched
    /// group leaves it alive to do the killing.
    pub fn spawn(mut helper: Command) -> std::io::Result<TestWatchdog> {
        use std::os::unix::process::CommandExt;
        let mut child = helper
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()?;
        let pipe = child.stdin.take().expect("stdin was piped");
        Ok(TestWatchdog { child, pipe })
    }

    fn send(&mut self, line: &str) -> std::io::Result<()> {
        writeln!(self.pipe, "{line}")?;
        self.pipe.flush()
    }
}

impl Watchdog for TestWatchdog {
    fn set_timeout(&mut self, timeout_s: u32) -> std::io::Result<u32> {
        self.send(&format!("timeout {timeout_s}"))?;
        Ok(timeout_s)
    }

    fn keepalive(&mut self) -> std::io::Result<()> {
        self.send("keepalive")
    }

    fn disarm(mut self: Box<Self>) -> std::io::Result<()> {
        self.send("disable")?;
        self.send("V")?;
        let TestWatchdog { mut child, pipe } = *self;
        drop(pipe);
        child.wait()?;
        Ok(())
    }
}

/// The longest a test watchdog may be set to.
pub const TEST_WATCHDOG_MAX_TIMEOUT_S: u64 = 3600;

/// How [`run_test_watchdog`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestWatchdogEnd {
    /// Disarmed (disable or magic close) and its input closed.
    Disarmed,
    /// Not fed in time: the process group was killed.
    Fired,
}

enum Op {
    Keepalive,
    Timeout(u64),
    Disable,
    Magic,
    Closed,
}

fn parse(line: &str) -> Option<Op> {
    match line.trim() {
        "keepalive" => Some(Op::Keepalive),
        "disable" => Some(Op::Disable),
        "V" => Some(Op::Magic),
        other => other
            .strip_prefix("timeout ")
            .and_then(|t| t.parse().ok())
            .map(Op::Timeout),
    }
}

/// The helper's loop: reads operations from `input`, and when `timeout_s` passes with no
/// keepalive while armed, calls `fire` (which kills the process group). The timer starts armed,
/// as opening `/dev/watchdog` does; `disable` stops it until the next keepalive; `V` followed by
/// the end of input stops it for good; the end of input without `V` leaves it counting.
pub fn run_test_watchdog(
    input: impl Read + Send + 'static,
    timeout_s: u64,
    fire: impl FnOnce(),
) -> TestWatchdogEnd {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(input).lines() {
            let Ok(line) = line else { break };
            if let Some(op) = parse(&line) {
                if tx.send(op).is_err() {
                    return;
                }
            }
        }
        let _ = tx.send(Op::Closed);
    });
    let mut timeout = Duration::from_secs(timeout_s.min(TEST_WATCHDOG_MAX_TIMEOUT_S));
    let mut armed = true;
    let mut magic = false;
    let mut fed = Instant::now();
    loop {
        let op = if armed {
            let left = timeout.saturating_sub(fed.elapsed());
            match rx.recv_timeout(left) {
                Ok(op) => op,
                Err(RecvTimeoutError::Timeout) => {
                    fire();
                    return TestWatchdogEnd::Fired;
                }
                Err(RecvTimeoutError::Disconnected) => Op::Closed,
            }
        } else {
            rx.recv().unwrap_or(Op::Closed)
        };
        match op {
            // A disabled watchdog stays disabled (the kernel ignores pings then); any write
            // that is not the magic character cancels a pending magic close.
            Op::Keepalive => {
                magic = false;
                fed = Instant::now();
            }
            Op::Timeout(t) => {
                timeout = Duration::from_secs(t.min(TEST_WATCHDOG_MAX_TIMEOUT_S));
                fed = Instant::now();
            }
            Op::Disable => armed = false,
            Op::Magic => magic = true,
            Op::Closed => {
                if magic {
                    armed = false;
                }
                if !armed {
                    return TestWatchdogEnd::Disarmed;
                }
                // Input gone without the magic close: keep counting, as the device does.
                let left = timeout.saturating_sub(fed.elapsed());
                std::thread::sleep(left);
                fire();
                return TestWatchdogEnd::Fired;
            }
        }
    }
}

/// Kills process group `pgid` with SIGKILL.
pub fn kill_process_group(pgid: i32) -> std::io::Result<()> {
    if pgid <= 1 {
        return Err(std::io::Error::other(format!(
            "refusing to kill process group {pgid}"
        )));
    }
    // SAFETY: kill() takes plain integers and has no memory effects.
    let r = unsafe { libc::kill(-pgid, libc::SIGKILL) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::sync::{Arc, Mutex};

    type Helper = std::thread::JoinHandle<(TestWatchdogEnd, bool)>;

    /// Runs the helper loop on a socket whose other end the test writes.
    fn run(timeout_s: u64) -> (UnixStream, Helper) {
        let (r, w) = UnixStream::pair().unwrap();
        let fired = Arc::new(Mutex::new(false));
        let f = fired.clone();
        let h = std::thread::spawn(move || {
            let end = run_test_watchdog(r, timeout_s, || *f.lock().unwrap() = true);
            (end, *fired.lock().unwrap())
        });
        (w, h)
    }

    #[test]
    fn fires_when_not_fed() {
        let (mut w, h) = run(1);
        writeln!(w, "keepalive").unwrap();
        assert_eq!(h.join().unwrap(), (TestWatchdogEnd::Fired, true));
    }

    #[test]
    fn magic_close_disarms() {
        let (mut w, h) = run(1);
        writeln!(w, "keepalive\ndisable\nV").unwrap();
        drop(w);
        assert_eq!(h.join().unwrap(), (TestWatchdogEnd::Disarmed, false));
    }

    #[test]
    fn close_without_magic_still_fires() {
        let (mut w, h) = run(1);
        writeln!(w, "keepalive").unwrap();
        drop(w);
        assert_eq!(h.join().unwrap(), (TestWatchdogEnd::Fired, true));
    }

    #[test]
    fn disabled_stays_disabled() {
        let (mut w, h) = run(1);
        writeln!(w, "disable\nkeepalive").unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        drop(w);
        assert_eq!(h.join().unwrap(), (TestWatchdogEnd::Disarmed, false));
    }

    #[test]
    fn keepalive_cancels_the_magic_close() {
        let (mut w, h) = run(1);
        writeln!(w, "V\nkeepalive").unwrap();
        drop(w);
        assert_eq!(h.join().unwrap(), (TestWatchdogEnd::Fired, true));
    }

    #[test]
    fn feeding_keeps_it_quiet() {
        let (mut w, h) = run(1);
        writeln!(w, "timeout 2").unwrap();
        for _ in 0..8 {
            writeln!(w, "keepalive").unwrap();
            std::thread::sleep(Duration::from_millis(250));
        }
        writeln!(w, "V").unwrap();
        drop(w);
        assert_eq!(h.join().unwrap(), (TestWatchdogEnd::Disarmed, false));
    }

    #[test]
    fn linux_watchdog_refuses_what_is_not_one() {
        assert!(LinuxWatchdog::open(Path::new("/nonexistent/watchdog")).is_err());
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut wd = LinuxWatchdog::open(f.path()).unwrap();
        // A regular file has no watchdog ioctls.
        let err = wd.set_timeout(5).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTTY));
    }

    #[test]
    fn refuses_to_kill_init_or_everything() {
        assert!(kill_process_group(1).is_err());
        assert!(kill_process_group(0).is_err());
        assert!(kill_process_group(-5).is_err());
    }
}
