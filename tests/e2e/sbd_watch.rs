//! The SBD watcher end to end: `fencectl sbd watch` runs as part of a "node" (a process group
//! with a long sleep in it) and feeds the test watchdog, which kills the whole group when it is
//! not fed, as a hardware watchdog resets a machine. A `reset` written from outside (by
//! `fencectl` or by ClusterLabs `sbd`), or the disk going away, kills the node; `exit` stops the
//! watcher cleanly and the node lives on; `test` is acknowledged. The same over iSCSI (libiscsi,
//! CHAP) against the storage node's `targetd` (configured by its config file, as DESIGN §1 has
//! it) and against tgtd, the reference target, including the storage going away.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tandem_tests::tgtd::Tgtd;
use tandem_tests::{
    bin, run_fails, run_ok, run_with_stdin, sparse_file, tool, wait_for, ChildGuard, LoggedDaemon,
    LoopDevice, Netns,
};

/// Watchdog 1 s, loop 1 s, msgwait 3 s: with a 1 s I/O timeout the watcher's rule
/// msgwait >= watchdog + loop + I/O holds.
const QUICK: [&str; 8] = ["-1", "1", "-2", "1", "-3", "1", "-4", "3"];
/// Generous bounds for things that take a few seconds.
const SOON: Duration = Duration::from_secs(20);

fn fencectl(node: &str, dev: &Path) -> Command {
    let mut c = Command::new(bin("fencectl"));
    c.env("TANDEM_LOG", "warn")
        .args(["--node", node, "sbd", "-d"])
        .arg(dev);
    c
}

/// A node: a process group led by a long sleep; its pgid is the sleep's pid.
struct Node {
    sleeper: ChildGuard,
    pgid: i32,
}

impl Node {
    fn new() -> Node {
        let sleeper = Command::new("sleep")
            .arg("600")
            .process_group(0)
            .spawn()
            .expect("spawn sleep");
        let pgid = i32::try_from(sleeper.id()).unwrap();
        Node {
            sleeper: ChildGuard(sleeper),
            pgid,
        }
    }

    /// Starts `base` (`fencectl --node alpha sbd -d DEV`) as the watcher inside the node's
    /// process group with the test watchdog on it, and waits until it has taken its slot (seen
    /// through `list_dev`) and been fed for a few watchdog timeouts.
    fn watch(self, mut base: Command, list_dev: &Path) -> Watched {
        base.args(["-I", "1", "--watchdog", &format!("test:{}", self.pgid)])
            .arg("watch")
            .env("TANDEM_LOG", "info")
            .stdin(Stdio::null())
            .process_group(self.pgid);
        let mut w = Watched {
            watcher: ChildGuard(base.spawn().expect("spawn fencectl watch")),
            node: self,
        };
        wait_for("the watcher to take its slot", SOON, || {
            assert!(
                alive(&mut w.watcher.0),
                "the watcher exited during start-up"
            );
            let list = run_ok(fencectl("beta", list_dev).arg("list"));
            list.contains("alpha\tclear").then_some(())
        });
        std::thread::sleep(Duration::from_secs(3));
        assert!(
            alive(&mut w.watcher.0) && alive(&mut w.node.sleeper.0),
            "a healthy watcher must keep its node alive"
        );
        w
    }
}

/// A node with its watcher running.
struct Watched {
    node: Node,
    watcher: ChildGuard,
}

impl Watched {
    /// Node `alpha` watching the loop device `dev`.
    fn start(dev: &Path) -> Watched {
        Node::new().watch(fencectl("alpha", dev), dev)
    }

    fn alive(&mut self) -> bool {
        alive(&mut self.watcher.0) && alive(&mut self.node.sleeper.0)
    }

    /// The test watchdog must kill the whole node: its sleep and the watcher.
    fn expect_killed(mut self) {
        killed_by_sigkill(&mut self.node.sleeper.0, "the node's sleep to be killed");
        killed_by_sigkill(
            &mut self.watcher.0,
            "the watcher to be killed with its node",
        );
    }

    /// The watcher must exit 0 and, several watchdog timeouts later, the node still live.
    fn expect_clean_stop(mut self, why: &str) {
        let status = wait_for("the watcher to exit", SOON, || {
            self.watcher.0.try_wait().expect("try_wait")
        });
        assert!(status.success(), "watcher after {why}: {status:?}");
        std::thread::sleep(Duration::from_secs(3));
        assert!(
            alive(&mut self.node.sleeper.0),
            "{why} must disarm the watchdog"
        );
    }
}

fn alive(child: &mut Child) -> bool {
    child.try_wait().expect("try_wait").is_none()
}

fn killed_by_sigkill(child: &mut Child, what: &str) {
    let status = wait_for(what, SOON, || child.try_wait().expect("try_wait"));
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{what}: {status:?}");
}

struct Disk {
    _dir: tempfile::TempDir,
    file: PathBuf,
    dev: LoopDevice,
}

/// A loop device with a fresh SBD (quick timeouts) on which `alpha` has no slot yet.
fn sbd_disk() -> Disk {
    let dir = tempfile::tempdir().unwrap();
    let file = sparse_file(dir.path(), "sbd.img", 8 << 20);
    let dev = LoopDevice::attach(&file);
    run_ok(fencectl("beta", &dev.path).args(QUICK).arg("create"));
    Disk {
        _dir: dir,
        file,
        dev,
    }
}

#[test]
fn reset_from_fencectl_kills_the_node() {
    let disk = sbd_disk();
    let w = Watched::start(&disk.dev.path);
    // msgwait passes inside `message`: by the time it returns the node is meant to be dead.
    run_ok(fencectl("beta", &disk.dev.path).args(["message", "alpha", "reset"]));
    w.expect_killed();
    assert_eq!(
        run_ok(fencectl("beta", &disk.dev.path).arg("list")),
        "0\talpha\treset\tbeta\n"
    );
}

#[test]
fn off_from_clusterlabs_sbd_kills_the_node() {
    let disk = sbd_disk();
    let w = Watched::start(&disk.dev.path);
    run_ok(
        Command::new(tool("sbd", "sbd"))
            .arg("-d")
            .arg(&disk.dev.path)
            .args(["-n", "beta", "message", "alpha", "off"]),
    );
    w.expect_killed();
}

#[test]
fn lost_disk_kills_the_node() {
    let disk = sbd_disk();
    let w = Watched::start(&disk.dev.path);
    // The storage goes away: the backing file shrinks to nothing and the loop device with it,
    // so every read fails.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk.file)
        .and_then(|f| f.set_len(0))
        .unwrap();
    run_ok(
        Command::new(tool("losetup", "util-linux"))
            .arg("-c")
            .arg(&disk.dev.path),
    );
    w.expect_killed();
}

#[test]
fn exit_stops_cleanly_and_the_node_lives() {
    let disk = sbd_disk();
    let w = Watched::start(&disk.dev.path);
    run_ok(fencectl("beta", &disk.dev.path).args(["message", "alpha", "exit"]));
    w.expect_clean_stop("an exit message");
}

#[test]
fn sigterm_stops_cleanly_and_the_node_lives() {
    let disk = sbd_disk();
    let w = Watched::start(&disk.dev.path);
    let pid = i32::try_from(w.watcher.0.id()).unwrap();
    // SAFETY: kill() takes plain integers; the pid is our own live child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    w.expect_clean_stop("SIGTERM");
}

#[test]
fn test_message_is_acknowledged() {
    let disk = sbd_disk();
    let mut w = Watched::start(&disk.dev.path);
    run_ok(fencectl("beta", &disk.dev.path).args(["message", "alpha", "test"]));
    wait_for("the test to be acknowledged", SOON, || {
        let list = run_ok(fencectl("beta", &disk.dev.path).arg("list"));
        (list == "0\talpha\tclear\t\n").then_some(())
    });
    assert!(w.alive());
    run_ok(fencectl("beta", &disk.dev.path).args(["message", "alpha", "exit"]));
    w.expect_clean_stop("an exit message");
}

#[test]
fn start_mode_one_refuses_a_pending_pill() {
    let disk = sbd_disk();
    run_ok(fencectl("beta", &disk.dev.path).args(["allocate", "alpha"]));
    run_ok(fencectl("beta", &disk.dev.path).args(["message", "alpha", "reset"]));
    let mut node = Node::new();
    let err = run_fails(
        fencectl("alpha", &disk.dev.path)
            .args(["-I", "1", "-S", "1", "--watchdog"])
            .arg(format!("test:{}", node.pgid))
            .arg("watch"),
    );
    assert!(
        err.contains("slot 0 holds 'reset' from 'beta'; not starting (start mode 1)"),
        "{err}"
    );
    // No watchdog was armed: the node lives.
    std::thread::sleep(Duration::from_secs(2));
    assert!(alive(&mut node.sleeper.0));
}

#[test]
fn watch_refuses_timeouts_that_cannot_fence_in_time() {
    let disk = sbd_disk();
    let node = Node::new();
    // The default I/O timeout of 3 s does not fit in msgwait 3 s with watchdog 1 s and loop 1 s.
    let err = run_fails(
        fencectl("alpha", &disk.dev.path)
            .args(["--watchdog", &format!("test:{}", node.pgid)])
            .arg("watch"),
    );
    assert!(
        err.contains("msgwait (3 s) must be at least watchdog"),
        "{err}"
    );
}

/// `fencectl --node NODE sbd -d A -d B ...`.
fn fencectl_all(node: &str, devs: &[&Path]) -> Command {
    let mut c = Command::new(bin("fencectl"));
    c.env("TANDEM_LOG", "warn").args(["--node", node, "sbd"]);
    for d in devs {
        c.arg("-d").arg(d);
    }
    c
}

/// Zeroes the first 4 KiB of a device: no SBD header any more.
fn wipe(dev: &Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(dev).unwrap();
    f.write_all_at(&[0u8; 4096], 0).unwrap();
    f.sync_all().unwrap();
}

/// Three devices, one unusable at start: the watcher starts on two, takes the third when it
/// becomes an SBD device, survives losing one, and dies when a majority carries a pill.
#[test]
fn three_disks_majority() {
    let disks = [sbd_disk(), sbd_disk(), sbd_disk()];
    let [a, b, c] = [0, 1, 2].map(|i| disks[i].dev.path.as_path());
    wipe(c);
    let w = Node::new().watch(fencectl_all("alpha", &[a, b, c]), a);
    // The third device becomes an SBD device: the watcher takes its slot there too.
    run_ok(fencectl("beta", c).args(QUICK).arg("create"));
    wait_for(
        "the watcher to take its slot on the late device",
        SOON,
        || {
            run_ok(fencectl("beta", c).arg("list"))
                .contains("alpha\t")
                .then_some(())
        },
    );
    // Losing one of three leaves a majority: the node lives.
    wipe(a);
    std::thread::sleep(Duration::from_secs(4));
    let mut w = w;
    assert!(w.alive(), "two of three devices must keep the node alive");
    // A pill on the two that are left is a majority: delivered, and the node dies.
    run_ok(fencectl_all("beta", &[a, b, c]).args(["message", "alpha", "reset"]));
    w.expect_killed();
}

#[test]
fn one_of_three_disks_is_not_enough_to_start() {
    let disks = [sbd_disk(), sbd_disk(), sbd_disk()];
    let [a, b, c] = [0, 1, 2].map(|i| disks[i].dev.path.as_path());
    wipe(b);
    wipe(c);
    let mut node = Node::new();
    let err = run_fails(
        fencectl_all("alpha", &[a, b, c])
            .args(["-I", "1", "--watchdog", &format!("test:{}", node.pgid)])
            .arg("watch"),
    );
    assert!(
        err.contains("only 1 of 3 SBD devices are usable; the watcher needs 2"),
        "{err}"
    );
    assert!(err.contains("not an SBD device"), "{err}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(alive(&mut node.sleeper.0), "no watchdog was armed");
}

/// Runs `fence_tandem_sbd` with `input` on stdin, as Pacemaker's fencer calls it.
fn fence_tandem_sbd(input: &str) -> std::process::Output {
    run_with_stdin(&mut Command::new(bin("fence_tandem_sbd")), input)
}

fn agent_ok(input: &str, code: i32, stdout: &str) {
    let out = fence_tandem_sbd(input);
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).as_ref()
        ),
        (Some(code), stdout),
        "fence_tandem_sbd {input:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn fence_tandem_sbd_off_status_on_list() {
    let disk = sbd_disk();
    let w = Watched::start(&disk.dev.path);
    let base = format!(
        "# as stonithd sends it\nnodename=alpha\nport=alpha\ndevices={}\nsender=beta\n",
        disk.dev.path.display()
    );
    agent_ok(&format!("{base}action=status\n"), 0, "Status: ON\n");
    agent_ok(&format!("{base}action=list\n"), 0, "alpha,alpha\n");
    agent_ok(
        &format!("{base}action=list-status\n"),
        0,
        "alpha,alpha,ON\n",
    );
    agent_ok(&format!("{base}action=monitor\n"), 0, "");
    agent_ok(&format!("{base}action=off\n"), 0, "Success: Powered OFF\n");
    w.expect_killed();
    agent_ok(&format!("{base}action=status\n"), 2, "Status: OFF\n");
    agent_ok(&format!("{base}action=off\n"), 0, "Success: Already OFF\n");
    // ClusterLabs sbd sees what the agent wrote.
    let list = run_ok(
        Command::new(tool("sbd", "sbd"))
            .arg("-d")
            .arg(&disk.dev.path)
            .arg("list"),
    );
    assert_eq!(list, "0\talpha\toff\tbeta\n");
    agent_ok(&format!("{base}action=on\n"), 0, "Success: Powered ON\n");
    agent_ok(&format!("{base}action=status\n"), 0, "Status: ON\n");
    // An unknown node is a failure.
    let out = fence_tandem_sbd(&format!("{base}action=off\nport=gamma\n"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no slot for node 'gamma'"));
}

#[test]
fn fence_tandem_sbd_reboot_resets_the_node() {
    let disk = sbd_disk();
    let w = Watched::start(&disk.dev.path);
    // Flags instead of stdin this time.
    let out = run_ok(Command::new(bin("fence_tandem_sbd")).args([
        "-o",
        "reboot",
        "-n",
        "alpha",
        "--sender",
        "beta",
        &format!("--devices={}", disk.dev.path.display()),
    ]));
    assert_eq!(out, "Success: Rebooted\n");
    w.expect_killed();
    assert_eq!(
        run_ok(fencectl("beta", &disk.dev.path).arg("list")),
        "0\talpha\treset\tbeta\n"
    );
}

// --- SBD over iSCSI (libiscsi, no kernel initiator), against targetd and tgtd ---

const IQN: &str = "iqn.2026-11.org.tandem:sbd";
const CHAP_USER: &str = "fencer";
const CHAP_SECRET: &str = "secretpass12";

/// The iSCSI target serving the SBD LUN.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// tandem's own, from a config file's `targetd` block: LUN 0.
    Targetd,
    /// Debian's tgtd, configured with tgtadm: LUN 1.
    Tgtd,
}

/// The running target process, held to be killed on drop.
enum Server {
    Targetd { _daemon: LoggedDaemon },
    Tgtd { _tgtd: Tgtd },
}

/// An iSCSI target serving an 8 MiB sparse file with CHAP, in its own network namespace (so
/// it listens on that namespace's 127.0.0.1:3260 only). Killed on drop.
struct Storage {
    server: Option<Server>,
    lun: u32,
    ns: Netns,
    dir: tempfile::TempDir,
}

impl Drop for Storage {
    fn drop(&mut self) {
        self.server.take();
    }
}

impl Storage {
    fn new(tag: u32, target: Target) -> Storage {
        let pid = std::process::id();
        let ns = Netns::new(&format!("tdm-st{tag}-{pid}"));
        let dir = tempfile::tempdir().unwrap();
        let lun = sparse_file(dir.path(), "lun.img", 8 << 20);
        let (server, lun) = match target {
            Target::Targetd => {
                let conf = dir.path().join("tandem.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "targetd {{\n    iscsi 127.0.0.1;\n    chap {CHAP_USER} {CHAP_SECRET};\n    \
                         target sbd {{ file {}; }}\n}}\n",
                        lun.display()
                    ),
                )
                .unwrap();
                let mut cmd = ns.cmd(bin("targetd"));
                cmd.arg("-c")
                    .arg(&conf)
                    .arg("--run-dir")
                    .arg(dir.path().join("run"));
                let daemon = LoggedDaemon::spawn(&mut cmd, &dir.path().join("targetd.log"));
                wait_for("targetd to serve the SBD LUN", SOON, || {
                    daemon.log().contains("targetd ready").then_some(())
                });
                (Server::Targetd { _daemon: daemon }, 0)
            }
            Target::Tgtd => {
                let tgtd = Tgtd::start(
                    ns.cmd(tool("tgtd", "tgt")),
                    1000 + (pid % 7_000) * 4 + tag,
                    IQN,
                    &lun,
                    Some((CHAP_USER, CHAP_SECRET)),
                );
                (Server::Tgtd { _tgtd: tgtd }, 1)
            }
        };
        Storage {
            server: Some(server),
            lun,
            ns,
            dir,
        }
    }

    fn url(&self) -> String {
        format!(
            "iscsi://{CHAP_USER}%{CHAP_SECRET}@127.0.0.1/{IQN}/{}",
            self.lun
        )
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("lun.img")
    }

    /// `fencectl --node NODE sbd -d URL ...` inside the storage namespace.
    fn fencectl(&self, node: &str, url: &str) -> Command {
        let mut c = self.ns.cmd(bin("fencectl"));
        c.env("TANDEM_LOG", "warn")
            .args(["--node", node, "sbd", "-d", url]);
        c
    }
}

#[test]
fn sbd_over_iscsi_with_chap_on_targetd() {
    sbd_over_iscsi_with_chap(Storage::new(1, Target::Targetd));
}

#[test]
fn sbd_over_iscsi_with_chap_on_tgtd() {
    sbd_over_iscsi_with_chap(Storage::new(3, Target::Tgtd));
}

fn sbd_over_iscsi_with_chap(st: Storage) {
    let url = st.url();
    run_ok(st.fencectl("beta", &url).args(QUICK).arg("create"));
    run_ok(st.fencectl("beta", &url).args(["allocate", "alpha"]));
    run_ok(st.fencectl("beta", &url).args(["message", "alpha", "test"]));
    let list = run_ok(st.fencectl("beta", &url).arg("list"));
    assert_eq!(list, "0\talpha\ttest\tbeta\n");
    // What went over iSCSI is on the LUN's backing file, where ClusterLabs sbd reads it too.
    let file = st.file();
    assert_eq!(run_ok(fencectl("beta", &file).arg("list")), list);
    let dev = LoopDevice::attach(&file);
    assert_eq!(
        run_ok(
            Command::new(tool("sbd", "sbd"))
                .arg("-d")
                .arg(&dev.path)
                .arg("list")
        ),
        list
    );
    let dump = run_ok(st.fencectl("beta", &url).arg("dump"));
    assert!(dump.contains("Sector size        : 512\n"), "{dump}");
    assert!(
        !dump.contains(CHAP_SECRET),
        "the CHAP secret must not be printed"
    );
    // A wrong secret: one clear line, exit 1, and no secret in it.
    let bad = format!(
        "iscsi://{CHAP_USER}%wrongsecret99@127.0.0.1/{IQN}/{}",
        st.lun
    );
    let err = run_fails(st.fencectl("beta", &bad).arg("list"));
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("Authentication failure"), "{err}");
    assert!(!err.contains("wrongsecret99"), "{err}");
}

#[test]
fn watcher_over_iscsi_dies_when_the_lun_goes_away() {
    let mut st = Storage::new(2, Target::Targetd);
    let url = st.url();
    run_ok(st.fencectl("beta", &url).args(QUICK).arg("create"));
    let w = Node::new().watch(st.fencectl("alpha", &url), &st.file());
    // The storage node dies: the watcher's reads hang or fail, and the node is reset.
    st.server.take();
    w.expect_killed();
}
