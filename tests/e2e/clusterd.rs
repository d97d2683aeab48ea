//! clusterd end to end: alpha and beta each run replicatord and clusterd in their own network
//! namespace, plugged into a "switch" namespace (a bridge whose ports swp1 and swp2 are veths
//! to the nodes) where net-snmp's `snmpd` answers IF-MIB for those ports, as a PoE switch.
//!
//! A healthy pair: `clusterctl status` on both shows both nodes online, quorum, r0 Primary on
//! alpha. The pulled plug: alpha's daemons are killed and its link taken down (a power cut);
//! beta loses alpha after `token`, fences it by setting swp1's ifAdminStatus down over SNMP,
//! then promotes r0, and `clusterctl status --json` on beta shows r0 Primary on beta and the
//! fence event. Waits are bounded; nothing asserts on timing.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tandem_tests::{bin, run, run_ok, sparse_file, tool, wait_for, ChildGuard, Netns};

const DISK_BYTES: u64 = 32 << 20;
const NAMES: [&str; 2] = ["alpha", "beta"];
const WAIT: Duration = Duration::from_secs(60);

struct Lab {
    // Fields drop in order: daemons first, then snmpd, then the namespaces, then the files.
    daemons: Vec<(String, ChildGuard)>,
    snmpd: Option<ChildGuard>,
    switch: Netns,
    nodes: [Netns; 2],
    /// A client on the switch's third port.
    client: Netns,
    /// The floating IP of r0.
    vip: String,
    dir: tempfile::TempDir,
    config: PathBuf,
    ips: [String; 2],
    /// Each node's processes are one process group (led by a sleep), as a machine: the SBD
    /// test watchdog kills the whole group.
    pgids: [i32; 2],
    /// The SBD device (`iscsi://` on the storage node's targetd), when the nodes are fenced by
    /// SBD.
    sbd: Option<String>,
    /// The storage node (targetd serving the SBD LUN over iSCSI), on the switch's fourth port.
    _storage: Netns,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.daemons.clear();
        self.snmpd.take();
        if std::thread::panicking() || std::env::var_os("TANDEM_TEST_LOGS").is_some() {
            for f in std::fs::read_dir(self.dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let p = f.path();
                if p.extension().is_some_and(|e| e == "log") {
                    eprintln!(
                        "--- {}:\n{}",
                        p.display(),
                        std::fs::read_to_string(&p).unwrap_or_default()
                    );
                }
            }
        }
    }
}

impl Lab {
    /// A lab whose nodes are fenced by IF-MIB (`sbd` false) or by SBD (true) on a LUN that the
    /// storage node's targetd serves over iSCSI.
    fn new(id: u8, sbd: bool) -> Lab {
        Lab::with_group(id, sbd, "")
    }

    /// Like [`Lab::new`] with `group` added to the cluster's resource r0 (`@DIR@` stands for
    /// the lab's directory).
    fn with_group(id: u8, sbd: bool, group: &str) -> Lab {
        let pid = std::process::id();
        let switch = Netns::new(&format!("tcl{id}sw-{pid}"));
        let nodes = [
            Netns::new(&format!("tcl{id}a-{pid}")),
            Netns::new(&format!("tcl{id}b-{pid}")),
        ];
        let ip = |args: &[&str]| run_ok(Command::new(tool("ip", "iproute2")).args(args));
        ip(&["-n", &switch.name, "link", "add", "br0", "type", "bridge"]);
        let net = format!("10.198.{id}");
        let switch_ip = format!("{net}.254");
        ip(&[
            "-n",
            &switch.name,
            "addr",
            "add",
            &format!("{switch_ip}/24"),
            "dev",
            "br0",
        ]);
        ip(&["-n", &switch.name, "link", "set", "br0", "up"]);
        let ips = [format!("{net}.1"), format!("{net}.2")];
        let client = Netns::new(&format!("tcl{id}c-{pid}"));
        let client_ip = format!("{net}.3");
        let storage = Netns::new(&format!("tcl{id}s-{pid}"));
        let storage_ip = format!("{net}.20");
        for (i, (node, addr)) in [
            (&nodes[0], &ips[0]),
            (&nodes[1], &ips[1]),
            (&client, &client_ip),
            (&storage, &storage_ip),
        ]
        .into_iter()
        .enumerate()
        {
            let port = format!("swp{}", i + 1);
            ip(&[
                "link",
                "add",
                &port,
                "netns",
                &switch.name,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &node.name,
            ]);
            ip(&["-n", &switch.name, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &switch.name, "link", "set", &port, "up"]);
            ip(&[
                "-n",
                &node.name,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &node.name, "link", "set", "eth0", "up"]);
        }
        // A second heartbeat link: br1, ports lnk1/lnk2 to the nodes' eth1 (no SNMP on it).
        ip(&["-n", &switch.name, "link", "add", "br1", "type", "bridge"]);
        ip(&["-n", &switch.name, "link", "set", "br1", "up"]);
        let ips2 = [format!("10.197.{id}.1"), format!("10.197.{id}.2")];
        for (i, node) in nodes.iter().enumerate() {
            let port = format!("lnk{}", i + 1);
            ip(&[
                "link",
                "add",
                &port,
                "netns",
                &switch.name,
                "type",
                "veth",
                "peer",
                "name",
                "eth1",
                "netns",
                &node.name,
            ]);
            ip(&["-n", &switch.name, "link", "set", &port, "master", "br1"]);
            ip(&["-n", &switch.name, "link", "set", &port, "up"]);
            ip(&[
                "-n",
                &node.name,
                "addr",
                "add",
                &format!("{}/24", ips2[i]),
                "dev",
                "eth1",
            ]);
            ip(&["-n", &node.name, "link", "set", "eth1", "up"]);
        }

        let dir = tempfile::tempdir().expect("temp dir");
        let snmpd_conf = dir.path().join("snmpd.conf");
        std::fs::write(
            &snmpd_conf,
            format!("agentAddress udp:{switch_ip}:161\nrwcommunity private {net}.0/24\n"),
        )
        .expect("write snmpd.conf");
        let snmpd = switch.snmpd(&snmpd_conf, &dir.path().join("snmp-persist"));

        let disks: Vec<PathBuf> = NAMES
            .iter()
            .map(|n| sparse_file(dir.path(), &format!("{n}.img"), DISK_BYTES))
            .collect();
        let handler = format!(
            "{} --run-dir {}/run-$TANDEM_NODE fence-peer",
            bin("clusterctl").display(),
            dir.path().display()
        );
        // An alert agent recording what Pacemaker's alert environment says.
        let alert = dir.path().join("alert.sh");
        std::fs::write(
            &alert,
            format!(
                "#!/bin/sh\necho \"$CRM_alert_kind $CRM_alert_node $CRM_alert_task $CRM_alert_rc $CRM_alert_rsc\" >> {}/alerts.txt\n",
                dir.path().display()
            ),
        )
        .expect("write alert.sh");
        run_ok(Command::new("chmod").arg("755").arg(&alert));
        let mut daemons = Vec::new();
        let sbd_dev = sbd.then(|| {
            let lun = sparse_file(dir.path(), "sbd-lun.img", 8 << 20);
            let conf = dir.path().join("targetd.conf");
            std::fs::write(
                &conf,
                format!(
                    "targetd {{ iscsi {storage_ip}; target sbd {{ file {}; }} }}\n",
                    lun.display()
                ),
            )
            .expect("write targetd.conf");
            let log_path = dir.path().join("storage-targetd.log");
            let log = std::fs::File::create(&log_path).expect("log file");
            let targetd = storage
                .cmd(bin("targetd"))
                .arg("-c")
                .arg(&conf)
                .arg("--run-dir")
                .arg(dir.path().join("run-storage"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("spawn targetd");
            daemons.push(("storage-targetd".to_string(), ChildGuard(targetd)));
            wait_for("targetd to serve the SBD LUN", WAIT, || {
                std::fs::read_to_string(&log_path)
                    .ok()
                    .filter(|l| l.contains("targetd ready"))
            });
            let url = format!("iscsi://{storage_ip}/iqn.2026-11.org.tandem:sbd/0");
            run_ok(
                nodes[1]
                    .cmd(bin("fencectl"))
                    .args(["sbd", "-d", &url])
                    .args(["-1", "1", "-2", "1", "-3", "1", "-4", "3", "create"]),
            );
            url
        });
        let (fence, sbd_section) = match &sbd_dev {
            Some(dev) => (
                ["fence sbd;".to_string(), "fence sbd;".to_string()],
                format!(
                    "sbd {{ device {dev}; watchdog /dev/watchdog; watchdog-timeout 1; msgwait 3; }}"
                ),
            ),
            None => (
                [1, 2].map(|p| {
                    format!("fence ifmib {{ switch {switch_ip}; community private; port swp{p}; }}")
                }),
                String::new(),
            ),
        };
        let vip = format!("{net}.10");
        let group = group.replace("@DIR@", &dir.path().display().to_string());
        let config = dir.path().join("tandem.conf");
        std::fs::write(
            &config,
            format!(
                "resource r0 {{
    net {{ protocol C; cram-hmac-alg sha256; shared-secret \"tandem-test\";
           connect-int 1; ping-int 1; ping-timeout 5; fencing resource-and-stonith; }}
    disk {{ c-plan-ahead 0; resync-rate 1G; }}
    handlers {{ fence-peer \"{handler}\"; }}
    export {{ nbd 0.0.0.0:10809; }}
    on alpha {{ device /dev/nbd0; disk {}; meta-disk internal; address {}:7788; }}
    on beta  {{ device /dev/nbd0; disk {}; meta-disk internal; address {}:7788; }}
}}
cluster t{id} {{
    node alpha {{ address {}; address {}; {} }}
    node beta  {{ address {}; address {}; {} }}
    {sbd_section}
    quorum {{ two-node yes; }}
    token 1000;
    shared-secret \"heartbeat-test\";
    resource r0 {{ export nbd; vip {vip}/24; {group} }}
    alert \"{}\";
}}\n",
                disks[0].display(),
                ips[0],
                disks[1].display(),
                ips[1],
                ips[0],
                ips2[0],
                fence[0],
                ips[1],
                ips2[1],
                fence[1],
                alert.display(),
            ),
        )
        .expect("write config");
        let mut pgids = [0; 2];
        for (i, name) in NAMES.iter().enumerate() {
            let sleeper = Command::new("sleep")
                .arg("3600")
                .process_group(0)
                .spawn()
                .expect("spawn sleep");
            pgids[i] = i32::try_from(sleeper.id()).expect("pid");
            daemons.push((format!("{name}-node"), ChildGuard(sleeper)));
        }
        let lab = Lab {
            daemons,
            pgids,
            sbd: sbd_dev,
            _storage: storage,
            snmpd: Some(ChildGuard(snmpd)),
            switch,
            nodes,
            client,
            vip,
            dir,
            config,
            ips,
        };
        wait_for("snmpd to answer", WAIT, || {
            run(lab.nodes[1]
                .cmd(bin("fencectl"))
                .args(["ifmib", "--ip", &switch_ip, "--community", "private"])
                .args(["--snmp-timeout", "1", "--snmp-retries", "1"])
                .args(["--plug", "swp1", "status"]))
            .status
            .success()
            .then_some(())
        });
        for i in 0..2 {
            run_ok(&mut lab.tool(i, "replctl", &["create-md", "r0"]));
        }
        lab
    }

    fn run_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("run-{}", NAMES[i]))
    }

    /// `TOOL -c CONFIG --node NAME --run-dir DIR ARGS` in node `i`'s namespace.
    fn tool(&self, i: usize, name: &str, args: &[&str]) -> Command {
        let mut c = self.nodes[i].cmd(bin(name));
        c.arg("-c")
            .arg(&self.config)
            .args(["--node", NAMES[i], "--run-dir"])
            .arg(self.run_dir(i))
            .args(args);
        c
    }

    /// Starts `daemon` in node `i`'s process group and waits for its `socket`. In an SBD lab
    /// clusterd watches its slot itself, on the test watchdog of the node's process group.
    fn spawn(&mut self, i: usize, daemon: &str, socket: &str) {
        let log_path = self.dir.path().join(format!("{}-{daemon}.log", NAMES[i]));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("log file");
        let watchdog = format!("test:{}", self.pgids[i]);
        let args: &[&str] = if daemon == "clusterd" && self.sbd.is_some() {
            &["--watchdog", &watchdog]
        } else {
            &[]
        };
        let child = self
            .tool(i, daemon, args)
            .process_group(self.pgids[i])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {daemon}: {e}"));
        self.daemons
            .push((format!("{}-{daemon}", NAMES[i]), ChildGuard(child)));
        let sock = self.run_dir(i).join(socket);
        wait_for(&format!("{daemon}'s socket on {}", NAMES[i]), WAIT, || {
            std::os::unix::net::UnixStream::connect(&sock).ok()
        });
    }

    /// Takes node `i`'s link `link` (eth0 or eth1) down or up, on the switch's side.
    fn link(&self, i: usize, link: usize, up: bool) {
        let port = if link == 0 {
            format!("swp{}", i + 1)
        } else {
            format!("lnk{}", i + 1)
        };
        run_ok(
            self.switch
                .cmd("ip")
                .args(["link", "set", &port, if up { "up" } else { "down" }]),
        );
    }

    fn kill(&mut self, i: usize) {
        let prefix = format!("{}-", NAMES[i]);
        self.daemons.retain(|(n, _)| !n.starts_with(&prefix));
    }

    fn replica(&self, i: usize) -> Option<serde_json::Value> {
        let out = run(&mut self.tool(i, "replctl", &["status", "--json", "r0"]));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        Some(v[0].clone())
    }

    fn wait_replica(&self, i: usize, what: &str, f: impl Fn(&serde_json::Value) -> bool) {
        wait_for(what, WAIT, || self.replica(i).filter(|s| f(s)).map(|_| ()));
    }

    fn cluster(&self, i: usize) -> Option<serde_json::Value> {
        let out = run(&mut self.tool(i, "clusterctl", &["status", "--json"]));
        serde_json::from_slice(&out.stdout).ok()
    }

    fn wait_cluster(
        &self,
        i: usize,
        what: &str,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_for(what, WAIT, || self.cluster(i).filter(|s| f(s)))
    }

    /// Isolates the switch's ports from each other on both links (bridge port isolation): the
    /// nodes no longer reach each other, but each still reaches the switch's own address
    /// (SNMP).
    fn partition(&self) {
        for port in ["swp1", "swp2", "lnk1", "lnk2"] {
            run_ok(
                self.switch
                    .cmd(tool("bridge", "iproute2"))
                    .args(["link", "set", "dev", port, "isolated", "on"]),
            );
        }
    }

    /// Loses node `i`'s heartbeats to the other node, one way: a policy-routing blackhole in
    /// `i`'s namespace for UDP to port 5405 of the other's addresses (both links). Replication
    /// (TCP) and the other node's heartbeats to `i` go on.
    fn drop_heartbeats_from(&self, i: usize) {
        let other = 1 - i;
        let link1 = self.ips[other].replace("10.198.", "10.197.");
        for to in [self.ips[other].as_str(), link1.as_str()] {
            run_ok(self.nodes[i].cmd(tool("ip", "iproute2")).args([
                "rule",
                "add",
                "to",
                to,
                "ipproto",
                "udp",
                "dport",
                "5405",
                "blackhole",
            ]));
        }
    }

    /// Writes 64 KiB of `pattern` at block `n` through the VIP over NBD from the client, with
    /// a bound; true when acknowledged.
    fn client_write(&self, n: u64, pattern: u8) -> bool {
        run(self
            .client
            .cmd("timeout")
            .arg("5")
            .arg(tool("qemu-io", "qemu-utils"))
            .args(["-f", "raw", "-c"])
            .arg(format!("write -P {pattern} {} 64k", n * 65536))
            .arg(format!("nbd://{}:10809/r0", self.vip)))
        .status
        .success()
    }

    /// Reads block `n` through the VIP and checks it holds `pattern`.
    fn client_check(&self, n: u64, pattern: u8) -> bool {
        let out = run(self
            .client
            .cmd("timeout")
            .arg("10")
            .arg(tool("qemu-io", "qemu-utils"))
            .args(["-f", "raw", "-c"])
            .arg(format!("read -P {pattern} {} 64k", n * 65536))
            .arg(format!("nbd://{}:10809/r0", self.vip)));
        out.status.success()
            && !String::from_utf8_lossy(&out.stdout).contains("Pattern verification failed")
    }

    fn port_admin_up(&self, port: &str) -> bool {
        let out = run_ok(self.switch.cmd("ip").args(["link", "show", port]));
        let flags = out
            .split('<')
            .nth(1)
            .and_then(|s| s.split('>').next())
            .unwrap_or("");
        flags.split(',').any(|f| f == "UP")
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn node_state(status: &serde_json::Value, name: &str) -> String {
    status["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["name"] == name)
        .map(|n| n["state"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

/// True when the status lists a successful fence of `node` by `method`.
fn fenced_by(status: &serde_json::Value, node: &str, method: &str) -> bool {
    status["fence-events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["node"] == node && f["method"] == method && f["result"] == "ok")
}

fn primary_of_r0(status: &serde_json::Value) -> Option<String> {
    status["resources"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == "r0")?["primary"]
        .as_str()
        .map(str::to_string)
}

/// Starts replicatord and clusterd on both nodes, `primary --force` on alpha, and waits for the
/// initial sync.
fn healthy(lab: &mut Lab) {
    for i in 0..2 {
        lab.spawn(i, "replicatord", "replicatord.sock");
    }
    for i in 0..2 {
        run_ok(&mut lab.tool(i, "replctl", &["up", "r0"]));
    }
    lab.wait_replica(0, "alpha connected", |s| {
        s["peers"][0]["connection"] == "Connected"
    });
    // clusterd first, then the initial sync: a Primary clusterd found without quorum (before
    // it has seen beta) would be demoted.
    for i in 0..2 {
        lab.spawn(i, "clusterd", "clusterd.sock");
    }
    for i in 0..2 {
        lab.wait_cluster(i, "both nodes online with quorum", |s| {
            s["quorum"] == true
                && node_state(s, "alpha") == "online"
                && node_state(s, "beta") == "online"
        });
    }
    run_ok(&mut lab.tool(0, "replctl", &["primary", "--force", "r0"]));
    lab.wait_replica(1, "beta UpToDate after the initial sync", |s| {
        s["disk"] == "UpToDate" && s["peers"][0]["replication"] == "Established"
    });
}

#[test]
fn healthy_pair_then_pulled_plug_fences_then_promotes() {
    let mut lab = Lab::new(41, false);
    healthy(&mut lab);
    for i in 0..2 {
        let s = lab.wait_cluster(i, "r0 Primary on alpha in clusterctl status", |s| {
            primary_of_r0(s).as_deref() == Some("alpha")
        });
        assert_eq!(s["quorum"], true, "{s}");
        assert!(s["fence-events"].as_array().unwrap().is_empty(), "{s}");
        assert!(s["failed-actions"].as_array().unwrap().is_empty(), "{s}");
    }
    let text = run_ok(&mut lab.tool(1, "clusterctl", &["status"]));
    assert!(text.contains("partition with quorum"), "{text}");
    assert!(text.contains("* r0: Primary on alpha"), "{text}");
    let out = run(&mut lab.tool(1, "clusterctl", &["move", "r0", "gamma"]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no node gamma"));

    // A clean switchover: move r0 to beta (asked on alpha), then cleanup forgets the move
    // and r0 stays; standby beta brings it back to alpha; unstandby leaves it there.
    lab.wait_cluster(0, "alpha to see beta's replica UpToDate", |s| {
        s["resources"][0]["replicas"][1]["disk"] == "UpToDate"
    });
    run_ok(&mut lab.tool(0, "clusterctl", &["move", "r0", "beta"]));
    for i in 0..2 {
        let s = lab.wait_cluster(i, "r0 moved to beta", |s| {
            primary_of_r0(s).as_deref() == Some("beta")
        });
        assert!(s["fence-events"].as_array().unwrap().is_empty(), "{s}");
        assert!(s["failed-actions"].as_array().unwrap().is_empty(), "{s}");
    }
    lab.wait_replica(0, "alpha Secondary after the move", |s| {
        s["role"] == "Secondary"
    });
    lab.wait_replica(1, "beta Primary after the move", |s| s["role"] == "Primary");
    run_ok(&mut lab.tool(1, "clusterctl", &["cleanup", "r0"]));
    lab.wait_cluster(0, "the move forgotten on alpha", |s| {
        s["resources"][0]["moved-to"].is_null()
    });
    run_ok(&mut lab.tool(1, "clusterctl", &["standby", "beta"]));
    for i in 0..2 {
        lab.wait_cluster(i, "r0 back on alpha with beta in standby", |s| {
            primary_of_r0(s).as_deref() == Some("alpha") && s["nodes"][1]["standby"] == true
        });
    }
    let text = run_ok(&mut lab.tool(0, "clusterctl", &["status"]));
    assert!(text.contains("* Node beta: standby"), "{text}");
    run_ok(&mut lab.tool(0, "clusterctl", &["unstandby", "beta"]));
    lab.wait_cluster(1, "beta out of standby", |s| {
        s["nodes"][1]["standby"] == false
    });
    lab.wait_replica(0, "alpha Primary", |s| s["role"] == "Primary");
    lab.wait_replica(1, "beta connected and UpToDate", |s| {
        s["disk"] == "UpToDate" && s["peers"][0]["replication"] == "Established"
    });

    // Redundant links: with alpha's second link down for several tokens, nobody is lost.
    lab.link(0, 1, false);
    lab.wait_cluster(1, "beta to hear alpha on link 0 only", |s| {
        s["nodes"][0]["links-up"] == serde_json::json!([0])
    });
    std::thread::sleep(Duration::from_secs(3));
    let s = lab.cluster(1).unwrap();
    assert_eq!(node_state(&s, "alpha"), "online", "{s}");
    assert!(s["fence-events"].as_array().unwrap().is_empty(), "{s}");
    lab.link(0, 1, true);
    lab.wait_cluster(1, "beta to hear alpha on both links", |s| {
        s["nodes"][0]["links-up"] == serde_json::json!([0, 1])
    });

    // The power cut: alpha's processes die, its links go down.
    lab.kill(0);
    run_ok(lab.nodes[0].cmd("ip").args(["link", "set", "eth0", "down"]));
    run_ok(lab.nodes[0].cmd("ip").args(["link", "set", "eth1", "down"]));
    let out = run(&mut lab.tool(0, "clusterctl", &["status"]));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("clusterd is not running"),
        "{out:?}"
    );

    let s = lab.wait_cluster(1, "beta to fence alpha and promote r0", |s| {
        primary_of_r0(s).as_deref() == Some("beta")
    });
    assert_eq!(node_state(&s, "alpha"), "fenced", "{s}");
    assert_eq!(s["quorum"], true, "{s}");
    assert!(fenced_by(&s, "alpha", "ifmib"), "{s}");
    assert!(
        !lab.port_admin_up("swp1"),
        "beta's fence set alpha's switch port down"
    );
    assert!(lab.port_admin_up("swp2"));
    lab.wait_replica(1, "beta's replicatord Primary", |s| s["role"] == "Primary");
    let text = run_ok(&mut lab.tool(1, "clusterctl", &["status"]));
    assert!(text.contains("* Node alpha: fenced"), "{text}");
    // The alert agent ran with Pacemaker's environment for each step.
    let alerts = wait_for("the alerts of the failover", WAIT, || {
        std::fs::read_to_string(lab.path().join("alerts.txt"))
            .ok()
            .filter(|a| a.contains("resource beta promote 0 r0"))
    });
    for line in [
        "node alpha",
        "fencing alpha off 0",
        "resource beta promote 0 r0",
    ] {
        assert!(
            alerts.lines().any(|l| l.starts_with(line)),
            "{line}: {alerts}"
        );
    }
    assert!(text.contains("off of alpha by ifmib: ok"), "{text}");
    let _ = lab.path();
}

#[test]
fn partition_the_primary_fences_the_other_through_the_fence_peer_handler() {
    let mut lab = Lab::new(42, false);
    healthy(&mut lab);
    for i in 0..2 {
        lab.wait_cluster(i, "r0 Primary on alpha", |s| {
            primary_of_r0(s).as_deref() == Some("alpha")
        });
    }
    lab.partition();
    // alpha's replicatord loses beta, freezes IO and runs `clusterctl fence-peer`; alpha's
    // clusterd fences beta at once (it holds the Primary), beta waits its priority delay and
    // by then cannot reach the switch any more.
    let s = lab.wait_cluster(0, "alpha to fence beta", |s| {
        node_state(s, "beta") == "fenced"
    });
    assert!(fenced_by(&s, "beta", "ifmib"), "{s}");
    assert!(
        !lab.port_admin_up("swp2"),
        "alpha's fence set beta's port down"
    );
    assert!(lab.port_admin_up("swp1"), "alpha was not fenced");
    wait_for(
        "alpha's replicatord to run the fence-peer handler (exit 7)",
        WAIT,
        || {
            std::fs::read_to_string(lab.path().join("alpha-replicatord.log"))
                .ok()
                .filter(|log| log.contains("fence-peer exit 7"))
        },
    );
    lab.wait_replica(0, "alpha Primary with IO resumed", |s| {
        s["role"] == "Primary" && s["io-suspended"] == false
    });
    // Exactly one Primary: beta's clusterd, without quorum, promotes nothing.
    let b = lab.cluster(1).expect("beta's clusterctl answers");
    assert_eq!(b["quorum"], false, "{b}");
    assert_ne!(primary_of_r0(&b).as_deref(), Some("beta"), "{b}");
    assert_eq!(lab.replica(1).unwrap()["role"], "Secondary");
    let a = lab.cluster(0).unwrap();
    assert_eq!(primary_of_r0(&a).as_deref(), Some("alpha"), "{a}");
    assert_eq!(a["quorum"], true, "{a}");
    let out = run(&mut lab.tool(0, "clusterctl", &["move", "r0", "beta"]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("node beta is not online; refusing to move r0"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// A one-way partition: alpha's heartbeats to beta are lost, beta's still reach alpha. beta
/// loses alpha after `token`; alpha still hears beta, but beta's heartbeats soon say it no
/// longer hears alpha, so alpha loses beta too and, holding the Primary, fences it at once
/// (beta, without a Primary, waits its priority delay and by then cannot reach the switch).
/// Before heartbeats carried whom their sender hears, alpha kept beta as a member and beta
/// fenced the Primary (the simulator's seed 3603 found two Primaries that way with three
/// nodes).
#[test]
fn one_way_partition_the_primary_fences_the_node_that_does_not_hear_it() {
    let mut lab = Lab::new(46, false);
    healthy(&mut lab);
    for i in 0..2 {
        lab.wait_cluster(i, "r0 Primary on alpha", |s| {
            primary_of_r0(s).as_deref() == Some("alpha")
        });
    }
    lab.drop_heartbeats_from(0);
    let s = lab.wait_cluster(0, "alpha to fence beta, which does not hear it", |s| {
        node_state(s, "beta") == "fenced"
    });
    assert!(fenced_by(&s, "beta", "ifmib"), "{s}");
    assert!(!lab.port_admin_up("swp2"), "alpha fenced beta");
    assert!(lab.port_admin_up("swp1"), "alpha was not fenced");
    lab.wait_replica(0, "alpha Primary with IO resumed", |s| {
        s["role"] == "Primary" && s["io-suspended"] == false
    });
    // Exactly one Primary.
    assert_eq!(lab.replica(1).unwrap()["role"], "Secondary");
    let a = lab.cluster(0).unwrap();
    assert_eq!(primary_of_r0(&a).as_deref(), Some("alpha"), "{a}");
    assert_eq!(a["quorum"], true, "{a}");
    let b = lab.cluster(1).expect("beta's clusterctl answers");
    assert_ne!(primary_of_r0(&b).as_deref(), Some("beta"), "{b}");
}

#[test]
fn sbd_poison_pill_kills_alpha_and_beta_fences_then_promotes() {
    let mut lab = Lab::new(43, true);
    // clusterd runs each node's SBD watcher.
    healthy(&mut lab);
    for i in 0..2 {
        lab.wait_cluster(i, "r0 Primary on alpha", |s| {
            primary_of_r0(s).as_deref() == Some("alpha")
        });
    }
    let dev = lab.sbd.clone().unwrap();
    run_ok(
        lab.nodes[1]
            .cmd(bin("fencectl"))
            .args(["--node", "beta", "sbd", "-d", &dev])
            .args(["message", "alpha", "reset"]),
    );
    // The watcher stops feeding; the test watchdog kills alpha's process group.
    wait_for("alpha's clusterd to die with its node", WAIT, || {
        std::os::unix::net::UnixStream::connect(lab.run_dir(0).join("clusterd.sock"))
            .is_err()
            .then_some(())
    });
    let died = std::time::Instant::now();
    let s = lab.wait_cluster(1, "beta to fence alpha by SBD and promote r0", |s| {
        primary_of_r0(s).as_deref() == Some("beta")
    });
    assert_eq!(node_state(&s, "alpha"), "fenced", "{s}");
    assert!(fenced_by(&s, "alpha", "sbd"), "{s}");
    lab.wait_replica(1, "beta's replicatord Primary", |s| s["role"] == "Primary");
    eprintln!(
        "sbd: beta Primary {:?} after alpha died (token, priority delay, msgwait)",
        died.elapsed()
    );

    // SIGTERM stops beta's clusterd cleanly, its watchdog disarmed: the node lives on.
    let pid = lab
        .daemons
        .iter()
        .find(|(n, _)| n == "beta-clusterd")
        .map(|(_, c)| c.0.id())
        .expect("beta's clusterd");
    run_ok(Command::new("kill").args(["-TERM", &pid.to_string()]));
    wait_for("beta's clusterd to stop on SIGTERM", WAIT, || {
        std::fs::read_to_string(lab.path().join("beta-clusterd.log"))
            .ok()
            .filter(|l| l.contains("watchdog disarmed: clusterd exits"))
    });
    // Several watchdog timeouts (1 s): nothing kills beta's process group.
    std::thread::sleep(Duration::from_secs(3));
    lab.wait_replica(
        1,
        "beta's replicatord alive after clusterd's clean stop",
        |s| s["role"] == "Primary",
    );
}

#[test]
fn sbd_storage_lost_the_peer_keeps_a_node_alive_and_without_its_peer_its_watchdog_fires() {
    let mut lab = Lab::new(45, true);
    healthy(&mut lab);
    for i in 0..2 {
        lab.wait_cluster(i, "r0 Primary on alpha", |s| {
            primary_of_r0(s).as_deref() == Some("alpha")
        });
    }
    // The storage node's switch port goes down: neither node reads the SBD LUN any more.
    run_ok(lab.switch.cmd("ip").args(["link", "set", "swp4", "down"]));
    for name in NAMES {
        wait_for(
            &format!("{name}'s watcher to keep feeding on the cluster's word"),
            WAIT,
            || {
                std::fs::read_to_string(lab.path().join(format!("{name}-clusterd.log")))
                    .ok()
                    .filter(|l| l.contains("still feeding the watchdog"))
            },
        );
    }
    // Several watchdog timeouts (1 s) later both nodes live, with quorum, r0 still on alpha.
    std::thread::sleep(Duration::from_secs(4));
    for i in 0..2 {
        let s = lab
            .cluster(i)
            .expect("clusterd alive with the SBD LUN gone");
        assert_eq!(s["quorum"], true, "{s}");
        assert_eq!(primary_of_r0(&s).as_deref(), Some("alpha"), "{s}");
        assert!(s["fence-events"].as_array().unwrap().is_empty(), "{s}");
    }
    // beta's power cut: alpha, its disk already gone, now loses its peer (and with two-node,
    // its quorum, since it cannot fence beta through the lost LUN): it stops feeding.
    lab.kill(1);
    for eth in ["eth0", "eth1"] {
        run_ok(lab.nodes[1].cmd("ip").args(["link", "set", eth, "down"]));
    }
    wait_for("alpha's watchdog to kill its node", WAIT, || {
        std::os::unix::net::UnixStream::connect(lab.run_dir(0).join("clusterd.sock"))
            .is_err()
            .then_some(())
    });
    let log = wait_for("the test watchdog's kill in alpha's log", WAIT, || {
        std::fs::read_to_string(lab.path().join("alpha-clusterd.log"))
            .ok()
            .filter(|l| l.contains("test watchdog: not fed in time"))
    });
    // The watcher said why it stopped feeding (the watchdog may kill the node before the
    // watcher's own fence decision, which comes at the same watchdog timeout).
    assert!(
        log.contains("the cluster no longer quorate with a peer: not feeding the watchdog"),
        "{log}"
    );
}

#[test]
fn pulled_plug_the_client_writes_through_the_vip_again_on_beta_and_loses_no_acknowledged_write() {
    let mut lab = Lab::new(44, false);
    healthy(&mut lab);
    lab.wait_cluster(0, "r0's group (the VIP) started on alpha", |s| {
        s["resources"][0]["group-started"] == true
    });
    let mut acked: Vec<(u64, u8)> = Vec::new();
    let pattern = |n: u64| u8::try_from(n % 250).unwrap() + 1;
    for n in 0..10 {
        assert!(
            lab.client_write(n, pattern(n)),
            "write {n} through the VIP on alpha"
        );
        acked.push((n, pattern(n)));
    }
    // The power cut: alpha's port goes dark and its processes die.
    let cut = std::time::Instant::now();
    lab.link(0, 0, false);
    lab.link(0, 1, false);
    lab.kill(0);
    let mut n = 10;
    let first_on_beta = loop {
        if lab.client_write(n, pattern(n)) {
            acked.push((n, pattern(n)));
            n += 1;
            break cut.elapsed();
        }
        assert!(
            cut.elapsed() < WAIT,
            "no write succeeded through the VIP within {WAIT:?}"
        );
        n += 1;
    };
    eprintln!(
        "pulled plug: first acknowledged write through the VIP {first_on_beta:?} after the cut"
    );
    for _ in 0..5 {
        assert!(
            lab.client_write(n, pattern(n)),
            "write {n} through the VIP on beta"
        );
        acked.push((n, pattern(n)));
        n += 1;
    }
    let s = lab.cluster(1).expect("beta's status");
    assert_eq!(primary_of_r0(&s).as_deref(), Some("beta"), "{s}");
    assert_eq!(node_state(&s, "alpha"), "fenced", "{s}");
    assert_eq!(s["resources"][0]["group-started"], true, "{s}");
    for (n, p) in &acked {
        assert!(
            lab.client_check(*n, *p),
            "acknowledged write {n} (pattern {p}) is on beta"
        );
    }
}

#[test]
fn a_failed_monitor_moves_the_resource_at_migration_threshold() {
    let mut lab = Lab::with_group(
        47,
        false,
        "ocf heartbeat:Dummy state=@DIR@/dummy.state; migration-threshold 1;
         op monitor interval=1s timeout=10s; op start timeout=20s; op stop timeout=20s;",
    );
    healthy(&mut lab);
    lab.wait_cluster(0, "r0's group (Dummy, VIP) started on alpha", |s| {
        primary_of_r0(s).as_deref() == Some("alpha") && s["resources"][0]["group-started"] == true
    });
    let state = lab.path().join("dummy.state");
    assert!(state.exists(), "Dummy's start wrote its state file");
    // The agent's resource dies behind clusterd's back: its next monitor fails.
    std::fs::remove_file(&state).unwrap();
    let b = lab.wait_cluster(1, "r0 moved to beta after the failed monitor", |s| {
        primary_of_r0(s).as_deref() == Some("beta") && s["resources"][0]["group-started"] == true
    });
    assert_eq!(b["resources"][0]["moved-to"], "beta", "{b}");
    let a = lab.wait_cluster(0, "alpha to see r0 on beta", |s| {
        primary_of_r0(s).as_deref() == Some("beta")
    });
    let failed = a["failed-actions"].as_array().unwrap();
    assert!(
        failed
            .iter()
            .any(|f| f["resource"] == "r0" && f["action"] == "monitor"),
        "{a}"
    );
    assert_eq!(a["resources"][0]["fail-count"], 1, "{a}");
    assert!(state.exists(), "Dummy started again on beta");
    assert!(
        a["fence-events"].as_array().unwrap().is_empty(),
        "a clean move: {a}"
    );
    run_ok(&mut lab.tool(0, "clusterctl", &["cleanup", "r0"]));
    let a = lab.wait_cluster(0, "cleanup to forget the failure and the move", |s| {
        s["resources"][0]["moved-to"].is_null()
    });
    assert!(a["failed-actions"].as_array().unwrap().is_empty(), "{a}");
    assert_eq!(a["resources"][0]["fail-count"], 0, "{a}");
    assert_eq!(
        primary_of_r0(&a).as_deref(),
        Some("beta"),
        "r0 stays where it is: {a}"
    );
}
