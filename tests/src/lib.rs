//! Helpers for tandem's end-to-end tests: find the built binaries, run commands with clear
//! failure messages, and own the resources a test creates (loop devices, network namespaces,
//! child processes) so they are cleaned up even when the test fails.
//!
//! The binaries are the ones `cargo build --workspace --bins` put in `build/debug/`
//! (`scripts/test.sh` builds them before running the tests).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

/// Path of a tandem binary; panics with the command to build it when it is missing.
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("TANDEM_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("build/debug"));
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Path of a system tool; panics naming the Debian package when it is missing, so a missing
/// peer fails the test instead of skipping it.
pub fn tool(name: &str, package: &str) -> PathBuf {
    for dir in [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/bin",
        "/usr/local/sbin",
    ] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed: apt-get install -y {package} (scripts/deps.sh installs it)");
}

/// Runs a command to completion and returns its output, whatever the exit status.
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command with `input` on its stdin (as Pacemaker's fencer calls a fence agent) and
/// returns its output, whatever the exit status.
pub fn run_with_stdin(cmd: &mut Command, input: &str) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())
        .unwrap_or_else(|e| panic!("cannot write to the stdin of {cmd:?}: {e}"));
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("cannot wait for {cmd:?}: {e}"))
}

/// Runs a command that must succeed; returns stdout as text.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Runs a command that must fail; returns stderr as text.
pub fn run_fails(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        !out.status.success(),
        "{cmd:?} should have failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stderr).expect("utf-8 output")
}

/// A sparse file of `bytes` in `dir`.
pub fn sparse_file(dir: &Path, name: &str, bytes: u64) -> PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(bytes))
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    path
}

/// A loop device over a file, detached on drop.
pub struct LoopDevice {
    /// `/dev/loopN`.
    pub path: PathBuf,
}

impl LoopDevice {
    /// Attaches `file` to a free loop device.
    pub fn attach(file: &Path) -> LoopDevice {
        let out = run_ok(
            Command::new(tool("losetup", "util-linux"))
                .args(["-f", "--show"])
                .arg(file),
        );
        LoopDevice {
            path: PathBuf::from(out.trim()),
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

/// A network namespace, deleted (with its veths) on drop.
pub struct Netns {
    /// The namespace name.
    pub name: String,
}

impl Netns {
    /// Creates namespace `name` (removing a stale one of that name first) with loopback up.
    pub fn new(name: &str) -> Netns {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        run_ok(Command::new("ip").args(["netns", "add", name]));
        let ns = Netns {
            name: name.to_string(),
        };
        run_ok(ns.cmd("ip").args(["link", "set", "lo", "up"]));
        ns
    }

    /// A command that runs inside the namespace.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// net-snmp's `snmpd` in the foreground inside the namespace, answering with `conf` only
    /// (no MIB files needed), its persistent store in `state_dir`.
    pub fn snmpd(&self, conf: &Path, state_dir: &Path) -> Child {
        self.cmd(tool("snmpd", "snmpd"))
            .args(["-f", "-Lo", "-C", "-c"])
            .arg(conf)
            .env("MIBS", "")
            .env("SNMP_PERSISTENT_DIR", state_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn snmpd")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it), for a server to bind.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local address").port()
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A daemon whose stderr goes to a log file: killed on drop, and its log printed when the test
/// is failing, so the failure shows what the daemon said.
pub struct LoggedDaemon {
    child: Option<ChildGuard>,
    log: PathBuf,
}

impl LoggedDaemon {
    /// Spawns `cmd` with stdin and stdout closed and stderr written to `log`.
    pub fn spawn(cmd: &mut Command, log: &Path) -> LoggedDaemon {
        let file = std::fs::File::create(log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        LoggedDaemon {
            child: Some(ChildGuard(child)),
            log: log.to_path_buf(),
        }
    }

    /// What the daemon has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for LoggedDaemon {
    fn drop(&mut self) {
        self.child.take();
        if std::thread::panicking() {
            eprintln!("{} log:\n{}", self.log.display(), self.log());
        }
    }
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `timeout`; panics with `what`.
pub fn wait_for<T>(
    what: &str,
    timeout: std::time::Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
pub mod pair;
pub mod tgtd;

/// A FUSE mount (nbdfuse's), unmounted on drop.
pub struct FuseMount(pub PathBuf);

impl Drop for FuseMount {
    fn drop(&mut self) {
        // A loop device on the exposed file lets go of it asynchronously after its detach, and
        // until then the unmount fails with "busy" (seen: one dead nbdfuse mount left per run
        // of the ext4 tests). Retry for a while, then detach lazily, so no mount outlives the
        // test.
        for _ in 0..40 {
            if !is_mounted(&self.0) {
                return;
            }
            let unmounted = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.0)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if unmounted {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(&self.0)
            .status();
    }
}

/// True when `dir` is a mount point (listed in /proc/self/mounts).
pub fn is_mounted(dir: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let dir = dir.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(dir.as_ref()))
}

/// A mounted filesystem, unmounted on drop.
pub struct Mount(pub PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Mounts `dev` on `dir`.
pub fn mount(dev: &Path, dir: &Path) -> Mount {
    run_ok(Command::new(tool("mount", "mount")).arg(dev).arg(dir));
    Mount(dir.to_path_buf())
}

/// Exposes an NBD export as the file `<dir>/nbd` through nbdfuse; the returned guards unmount
/// and stop it (drop the mount before the process).
pub fn nbdfuse(dir: &Path, uri: &str, size_bytes: u64) -> (FuseMount, ChildGuard, PathBuf) {
    std::fs::create_dir_all(dir).expect("fuse dir");
    let child = Command::new(tool("nbdfuse", "libnbd-bin"))
        .arg(dir)
        .arg(uri)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nbdfuse");
    let guard = ChildGuard(child);
    let image = dir.join("nbd");
    wait_for(
        "nbdfuse to expose the export",
        std::time::Duration::from_secs(20),
        || {
            std::fs::metadata(&image)
                .ok()
                .filter(|m| m.len() == size_bytes)
        },
    );
    (FuseMount(dir.to_path_buf()), guard, image)
}

/// Deterministic pseudo-random bytes (xorshift), so a test can regenerate what it wrote.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}
