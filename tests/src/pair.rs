//! Two tandem nodes, `alpha` and `beta`, each in its own network namespace joined by a veth
//! pair, each running its own `replicatord` with its own run directory. Everything is torn
//! down on drop: daemons killed, namespaces deleted, files removed with the temp dir.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{bin, run, run_ok, sparse_file, wait_for, ChildGuard, Netns};

/// Default size of each node's backing file.
pub const DISK_BYTES: u64 = 64 << 20;

/// One node of the pair.
pub struct NodeDir {
    /// `alpha` or `beta`.
    pub name: &'static str,
    /// Its run directory (control and NBD sockets).
    pub run_dir: PathBuf,
    /// Its backing file.
    pub disk: PathBuf,
    /// Its address on the veth.
    pub ip: String,
}

impl NodeDir {
    /// `nbd+unix:///RES?socket=...` for this node's NBD socket.
    pub fn nbd_uri(&self, resource: &str) -> String {
        format!(
            "nbd+unix:///{resource}?socket={}",
            self.run_dir.join("nbd.sock").display()
        )
    }
}

/// A running pair.
pub struct Pair {
    /// Temp dir with config, disks, logs, run dirs.
    pub dir: tempfile::TempDir,
    /// The config file.
    pub config: PathBuf,
    /// alpha and beta.
    pub nodes: [NodeDir; 2],
    daemons: [Option<ChildGuard>; 2],
    veths: [String; 2],
    // Dropped after the daemons (fields drop in order).
    _ns: [Netns; 2],
}

impl Pair {
    /// Creates the namespaces and disks, writes the config (`net_extra` goes into the net
    /// section) and runs `create-md` on both nodes. `id` (1..=250) keeps concurrent tests apart.
    pub fn new(id: u8, protocol: char, net_extra: &str) -> Pair {
        Pair::with_disk(id, protocol, net_extra, "c-plan-ahead 0; resync-rate 1G;")
    }

    /// Like [`Pair::new`] with the resource's whole `disk { }` section given.
    pub fn with_disk(id: u8, protocol: char, net_extra: &str, disk: &str) -> Pair {
        Pair::with_config(id, protocol, net_extra, disk, "")
    }

    /// Like [`Pair::with_disk`], with `resource_extra` (e.g. a `handlers` section) added to
    /// the resource.
    pub fn with_config(
        id: u8,
        protocol: char,
        net_extra: &str,
        disk: &str,
        resource_extra: &str,
    ) -> Pair {
        let dir = tempfile::tempdir().expect("temp dir");
        // The pid keeps two runs of the same test binary apart; interface names stay within
        // 15 bytes ("tnd255va999999").
        let pid = std::process::id() % 1_000_000;
        let ns = [
            Netns::new(&format!("tnd{id}a{pid}")),
            Netns::new(&format!("tnd{id}b{pid}")),
        ];
        let (va, vb) = (format!("tnd{id}va{pid}"), format!("tnd{id}vb{pid}"));
        run_ok(Command::new("ip").args(["link", "add", &va, "type", "veth", "peer", "name", &vb]));
        run_ok(Command::new("ip").args(["link", "set", &va, "netns", &ns[0].name]));
        run_ok(Command::new("ip").args(["link", "set", &vb, "netns", &ns[1].name]));
        let ips = [format!("10.199.{id}.1"), format!("10.199.{id}.2")];
        for (i, dev) in [&va, &vb].into_iter().enumerate() {
            run_ok(
                ns[i]
                    .cmd("ip")
                    .args(["addr", "add", &format!("{}/24", ips[i]), "dev", dev]),
            );
            run_ok(ns[i].cmd("ip").args(["link", "set", dev, "up"]));
        }
        let names = ["alpha", "beta"];
        let nodes = [0, 1].map(|i| NodeDir {
            name: names[i],
            run_dir: dir.path().join(format!("run-{}", names[i])),
            disk: sparse_file(dir.path(), &format!("{}.img", names[i]), DISK_BYTES),
            ip: ips[i].clone(),
        });
        let config = dir.path().join("tandem.conf");
        std::fs::write(
            &config,
            format!(
                "resource r0 {{
    net {{ protocol {protocol}; cram-hmac-alg sha256; shared-secret \"tandem-test\";
           connect-int 1; ping-int 1; ping-timeout 10; {net_extra} }}
    disk {{ {disk} }}
    {resource_extra}
    on alpha {{ device /dev/nbd0; disk {}; meta-disk internal; address {}:7788; }}
    on beta  {{ device /dev/nbd0; disk {}; meta-disk internal; address {}:7788; }}
}}\n",
                nodes[0].disk.display(),
                nodes[0].ip,
                nodes[1].disk.display(),
                nodes[1].ip
            ),
        )
        .expect("write config");
        let pair = Pair {
            dir,
            config,
            nodes,
            daemons: [None, None],
            veths: [va, vb],
            _ns: ns,
        };
        for i in 0..2 {
            run_ok(&mut pair.replctl(i, &["create-md", "r0"]));
        }
        pair
    }

    /// `replctl -c CONFIG --node NAME --run-dir DIR ARGS`.
    pub fn replctl(&self, i: usize, args: &[&str]) -> Command {
        let mut c = Command::new(bin("replctl"));
        c.arg("-c")
            .arg(&self.config)
            .args(["--node", self.nodes[i].name, "--run-dir"]);
        c.arg(&self.nodes[i].run_dir).args(args);
        c
    }

    /// Starts node `i`'s replicatord in its namespace (logging to `<name>.log`) and waits for
    /// its control socket.
    pub fn start(&mut self, i: usize) {
        let config = self.config.clone();
        self.start_with(i, &config);
    }

    /// Like [`Pair::start`] with another config file.
    pub fn start_with(&mut self, i: usize, config: &Path) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .expect("log file");
        let mut c = self._ns[i].cmd(bin("replicatord"));
        c.arg("-c")
            .arg(config)
            .args(["--node", self.nodes[i].name, "--run-dir"]);
        c.arg(&self.nodes[i].run_dir);
        c.stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        let child = c.spawn().expect("spawn replicatord");
        self.daemons[i] = Some(ChildGuard(child));
        let sock = self.nodes[i].run_dir.join("replicatord.sock");
        wait_for(
            "replicatord's control socket",
            Duration::from_secs(20),
            || std::os::unix::net::UnixStream::connect(&sock).ok(),
        );
    }

    /// A command that runs in node `i`'s network namespace.
    pub fn ns_cmd(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self._ns[i].cmd(program)
    }

    /// Cuts the link between the nodes (both ends of the veth down).
    pub fn partition(&self) {
        for i in 0..2 {
            run_ok(
                self._ns[i]
                    .cmd("ip")
                    .args(["link", "set", &self.veths[i], "down"]),
            );
        }
    }

    /// Restores the link.
    pub fn heal(&self) {
        for i in 0..2 {
            run_ok(
                self._ns[i]
                    .cmd("ip")
                    .args(["link", "set", &self.veths[i], "up"]),
            );
        }
    }

    /// Writes `len` bytes of `pattern` at `offset` through node `i`'s NBD export (qemu-io).
    pub fn write(&self, i: usize, offset: u64, len: u64, pattern: u8) {
        run_ok(
            Command::new(crate::tool("qemu-io", "qemu-utils"))
                .args(["-f", "raw", "-c"])
                .arg(format!("write -P {pattern} {offset} {len}"))
                .arg(self.nodes[i].nbd_uri("r0")),
        );
    }

    /// Kills node `i`'s replicatord with SIGKILL (a crash).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut g) = self.daemons[i].take() {
            let _ = g.0.kill();
            let _ = g.0.wait();
        }
    }

    /// Node `i`'s daemon log.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.nodes[i].name))
    }

    /// Node `i`'s daemon log, as text.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    /// `replctl status --json` of node `i`, resource r0.
    pub fn status(&self, i: usize) -> serde_json::Value {
        let out = run_ok(&mut self.replctl(i, &["status", "--json", "r0"]));
        let v: serde_json::Value = serde_json::from_str(&out).expect("status --json is JSON");
        v[0].clone()
    }

    /// Waits until `f(status)` holds on node `i`.
    pub fn wait_status(&self, i: usize, what: &str, f: impl Fn(&serde_json::Value) -> bool) {
        wait_for(what, Duration::from_secs(60), || {
            let out = run(&mut self.replctl(i, &["status", "--json", "r0"]));
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            f(&v[0]).then_some(())
        });
    }

    /// Starts both daemons, `up` on both, and waits until they are connected and both have
    /// finished the handshake (a promotion during it is refused, as DRBD refuses one in
    /// WFReportParams).
    pub fn up_connected(&mut self) {
        self.start(0);
        self.start(1);
        run_ok(&mut self.replctl(0, &["up", "r0"]));
        run_ok(&mut self.replctl(1, &["up", "r0"]));
        for (i, what) in [(0, "alpha connected"), (1, "beta connected")] {
            self.wait_status(i, what, |s| {
                let p = &s["peers"][0];
                p["connection"] == "Connected"
                    && !matches!(
                        p["replication"].as_str(),
                        None | Some("Off" | "WFReportParams" | "WFBitMap")
                    )
            });
        }
    }

    /// Starts both daemons, `up` on both, `primary --force` on alpha, and waits for the
    /// initial full sync to finish.
    pub fn up_synced(&mut self) {
        self.up_connected();
        run_ok(&mut self.replctl(0, &["primary", "--force", "r0"]));
        self.wait_status(1, "beta UpToDate after the initial sync", |s| {
            s["disk"] == "UpToDate" && s["peers"][0]["replication"] == "Established"
        });
    }

    /// The data area of node `i`'s disk (everything before the internal meta-data).
    pub fn data(&self, i: usize, usable: u64) -> Vec<u8> {
        let mut d = std::fs::read(&self.nodes[i].disk).expect("read disk");
        d.truncate(usize::try_from(usable).expect("small disk"));
        d
    }

    /// The exported size (bytes).
    pub fn size(&self) -> u64 {
        self.status(0)["size-bytes"].as_u64().expect("size-bytes")
    }

    /// The temp dir.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for d in &mut self.daemons {
            d.take();
        }
        // A failing test takes its temporary directory with it: show the daemons' logs first.
        if std::thread::panicking() {
            for i in 0..self.nodes.len() {
                eprintln!("--- {} log:\n{}", self.nodes[i].name, self.log(i));
            }
        }
    }
}
