//! IF-MIB port fencing against net-snmp's `snmpd` acting as a switch: `snmpd` runs in a
//! "switch" network namespace whose port `swp1` is a veth to the "node" namespace; `fencectl
//! ifmib` runs in a third, "fencer" namespace and reaches the switch over a management veth.
//! `off` must really take the node's link down and `on` bring it back, over v2c and v3 authPriv
//! (SHA/AES and MD5/DES); a wrong community, wrong v3 credentials or an unreachable switch fail
//! with exit status 1 and a one-line error.

use std::process::{Command, Output};
use std::time::Duration;

use tandem_tests::{bin, run, run_ok, run_with_stdin, tool, wait_for, ChildGuard, Netns};

const SWITCH_IP: &str = "10.99.0.1";
const AUTH_PASSWORD: &str = "authpass123";
const PRIV_PASSWORD: &str = "privpass123";

/// The three namespaces, snmpd, and its files; all removed on drop (snmpd first).
struct Lab {
    snmpd: Option<ChildGuard>,
    switch: Netns,
    node: Netns,
    fencer: Netns,
    _dir: tempfile::TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.snmpd.take();
    }
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let id = std::process::id();
        let switch = Netns::new(&format!("tdm-sw-{tag}-{id}"));
        let node = Netns::new(&format!("tdm-nd-{tag}-{id}"));
        let fencer = Netns::new(&format!("tdm-fc-{tag}-{id}"));
        let ip = |args: &[&str]| run_ok(Command::new(tool("ip", "iproute2")).args(args));
        ip(&[
            "link",
            "add",
            "swp1",
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
        ip(&[
            "link",
            "add",
            "mgmt",
            "netns",
            &switch.name,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &fencer.name,
        ]);
        ip(&[
            "-n",
            &switch.name,
            "addr",
            "add",
            "10.99.0.1/24",
            "dev",
            "mgmt",
        ]);
        ip(&[
            "-n",
            &fencer.name,
            "addr",
            "add",
            "10.99.0.2/24",
            "dev",
            "eth0",
        ]);
        for (ns, dev) in [
            (&switch.name, "mgmt"),
            (&switch.name, "swp1"),
            (&node.name, "eth0"),
            (&fencer.name, "eth0"),
        ] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }

        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("snmpd.conf");
        std::fs::write(
            &conf,
            format!(
                "agentAddress udp:{SWITCH_IP}:161\n\
                 rwcommunity private 10.99.0.0/24\n\
                 rocommunity public 10.99.0.0/24\n\
                 createUser fencer SHA \"{AUTH_PASSWORD}\" AES \"{PRIV_PASSWORD}\"\n\
                 createUser fencemd5 MD5 \"{AUTH_PASSWORD}\" DES \"{PRIV_PASSWORD}\"\n\
                 rwuser fencer priv\n\
                 rwuser fencemd5 priv\n"
            ),
        )
        .unwrap();
        let snmpd = switch.snmpd(&conf, &dir.path().join("persist"));
        let lab = Lab {
            snmpd: Some(ChildGuard(snmpd)),
            switch,
            node,
            fencer,
            _dir: dir,
        };
        wait_for("snmpd to answer", Duration::from_secs(20), || {
            lab.ifmib(&[
                "--community",
                "public",
                "--snmp-timeout",
                "1",
                "--snmp-retries",
                "1",
                "list",
            ])
            .status
            .success()
            .then_some(())
        });
        lab
    }

    /// Runs `fencectl ifmib --ip SWITCH ARGS...` in the fencer's namespace.
    fn ifmib(&self, args: &[&str]) -> Output {
        run(self
            .fencer
            .cmd(bin("fencectl"))
            .args(["ifmib", "--ip", SWITCH_IP])
            .args(args))
    }

    fn ifmib_ok(&self, args: &[&str]) -> String {
        let out = self.ifmib(args);
        assert!(
            out.status.success(),
            "fencectl ifmib {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Whether the node's link is up, as the node sees it (carrier from the switch port).
    fn node_link_up(&self) -> bool {
        let out = run_ok(self.node.cmd("ip").args(["link", "show", "eth0"]));
        let flags = out
            .split('<')
            .nth(1)
            .and_then(|s| s.split('>').next())
            .unwrap();
        flags.split(',').any(|f| f == "LOWER_UP")
    }

    /// Whether the switch port is administratively up.
    fn port_admin_up(&self) -> bool {
        let out = run_ok(self.switch.cmd("ip").args(["link", "show", "swp1"]));
        let flags = out
            .split('<')
            .nth(1)
            .and_then(|s| s.split('>').next())
            .unwrap();
        flags.split(',').any(|f| f == "UP")
    }
}

fn one_line_failure(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "one-line error expected: {err}");
    assert!(err.starts_with("fencectl: "), "{err}");
    err
}

fn off_and_on(lab: &Lab, creds: &[&str], plug: &str) {
    let call = |action: &str| {
        let mut args = creds.to_vec();
        args.extend(["--plug", plug, action]);
        lab.ifmib(&args)
    };

    assert!(lab.node_link_up() && lab.port_admin_up());
    let status = call("status");
    assert_eq!(status.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&status.stdout), "Status: ON\n");

    assert!(call("off").status.success());
    assert!(!lab.port_admin_up(), "off must set the switch port down");
    assert!(!lab.node_link_up(), "off must take the node's link down");
    let status = call("status");
    assert_eq!(
        status.status.code(),
        Some(2),
        "status of an off port exits 2"
    );
    assert_eq!(String::from_utf8_lossy(&status.stdout), "Status: OFF\n");

    assert!(call("on").status.success());
    assert!(lab.port_admin_up(), "on must set the switch port up");
    wait_for(
        "the node's link to come back",
        Duration::from_secs(10),
        || lab.node_link_up().then_some(()),
    );

    // reboot: off then on; the port ends up on.
    assert!(call("reboot").status.success());
    assert!(lab.port_admin_up());
}

#[test]
fn v2c_off_takes_the_node_down_and_on_brings_it_back() {
    let lab = Lab::new("v2c");
    let list = lab.ifmib_ok(&["--community", "public", "list"]);
    assert!(list.lines().any(|l| l.starts_with("2\tswp1")), "{list}");
    off_and_on(&lab, &["--community", "private"], "swp1");
    // By ifIndex as well (swp1 is ifIndex 2: created after lo).
    off_and_on(
        &lab,
        &["--community", "private", "--snmp-version", "2c"],
        "2",
    );
}

#[test]
fn v1_works_too() {
    let lab = Lab::new("v1");
    off_and_on(
        &lab,
        &["--community", "private", "--snmp-version", "1"],
        "swp1",
    );
}

#[test]
fn v3_auth_priv() {
    let lab = Lab::new("v3");
    for (user, auth, privacy) in [("fencer", "SHA", "AES"), ("fencemd5", "MD5", "DES")] {
        off_and_on(
            &lab,
            &[
                "--snmp-version",
                "3",
                "--username",
                user,
                "--auth-protocol",
                auth,
                "--auth-password",
                AUTH_PASSWORD,
                "--priv-protocol",
                privacy,
                "--priv-password",
                PRIV_PASSWORD,
            ],
            "swp1",
        );
    }
}

#[test]
fn failures_are_clear_and_exit_1() {
    let lab = Lab::new("fail");
    let quick = ["--snmp-timeout", "1", "--snmp-retries", "2"];
    // A wrong community: snmpd says nothing.
    let mut args = vec!["--community", "wrong", "--plug", "swp1", "status"];
    args.splice(0..0, quick);
    let err = one_line_failure(&lab.ifmib(&args));
    assert!(err.contains("no answer from 10.99.0.1:161"), "{err}");
    // The read-only community cannot set: the agent refuses.
    let mut args = vec!["--community", "public", "--plug", "swp1", "off"];
    args.splice(0..0, quick);
    let err = one_line_failure(&lab.ifmib(&args));
    assert!(err.contains("refused the request"), "{err}");
    assert!(lab.port_admin_up());
    // No switch at that address.
    let out = run(lab
        .fencer
        .cmd(bin("fencectl"))
        .args(["ifmib", "--ip", "10.99.0.99"])
        .args(quick)
        .args(["--community", "private", "--plug", "swp1", "off"]));
    let err = one_line_failure(&out);
    assert!(err.contains("no answer from 10.99.0.99:161"), "{err}");
    // A wrong v3 password.
    let mut args = vec![
        "--snmp-version",
        "3",
        "--username",
        "fencer",
        "--auth-protocol",
        "SHA",
        "--auth-password",
        "not-the-password",
        "--priv-protocol",
        "AES",
        "--priv-password",
        PRIV_PASSWORD,
        "--plug",
        "swp1",
        "off",
    ];
    args.splice(0..0, quick);
    let err = one_line_failure(&lab.ifmib(&args));
    assert!(err.contains("wrong authentication password"), "{err}");
    // An unknown port.
    let mut args = vec!["--community", "private", "--plug", "swp9", "off"];
    args.splice(0..0, quick);
    let err = one_line_failure(&lab.ifmib(&args));
    assert!(err.contains("no port named \"swp9\""), "{err}");
    assert!(lab.port_admin_up() && lab.node_link_up());
}

/// Runs `fence_tandem_ifmib` in the fencer's namespace with `input` on stdin, as Pacemaker's
/// fencer calls it.
fn fence_tandem_ifmib(lab: &Lab, input: &str) -> Output {
    run_with_stdin(&mut lab.fencer.cmd(bin("fence_tandem_ifmib")), input)
}

fn agent_run(lab: &Lab, input: &str) -> (Option<i32>, String) {
    let out = fence_tandem_ifmib(lab, input);
    if !matches!(out.status.code(), Some(0 | 2)) {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    (out.status.code(), String::from_utf8(out.stdout).unwrap())
}

#[test]
fn fence_tandem_ifmib_as_pacemaker_calls_it() {
    let lab = Lab::new("agent");
    let v2c = format!("nodename=n1\nport=swp1\nip={SWITCH_IP}\ncommunity=private\n");
    let v3 = format!(
        "nodename=n1\nplug=swp1\nipaddr={SWITCH_IP}\nsnmp_version=3\nusername=fencer\n\
         password={AUTH_PASSWORD}\nsnmp_auth_prot=SHA\nsnmp_sec_level=authPriv\n\
         snmp_priv_prot=AES\nsnmp_priv_passwd={PRIV_PASSWORD}\n"
    );
    for base in [v2c.as_str(), v3.as_str()] {
        assert_eq!(
            agent_run(&lab, &format!("{base}action=status\n")),
            (Some(0), "Status: ON\n".into())
        );
        assert_eq!(
            agent_run(&lab, &format!("{base}action=off\n")),
            (Some(0), "Success: Powered OFF\n".into())
        );
        assert!(!lab.port_admin_up() && !lab.node_link_up());
        assert_eq!(
            agent_run(&lab, &format!("{base}action=status\n")),
            (Some(2), "Status: OFF\n".into())
        );
        assert_eq!(
            agent_run(&lab, &format!("{base}action=on\n")),
            (Some(0), "Success: Powered ON\n".into())
        );
        assert!(lab.port_admin_up());
        assert_eq!(
            agent_run(&lab, &format!("{base}action=reboot\n")),
            (Some(0), "Success: Rebooted\n".into())
        );
        assert!(lab.port_admin_up());
        let (code, list) = agent_run(&lab, &format!("{base}action=list\n"));
        assert_eq!(code, Some(0));
        assert!(list.lines().any(|l| l == "swp1,"), "{list}");
        let (code, list) = agent_run(&lab, &format!("{base}action=list-status\n"));
        assert_eq!(code, Some(0));
        assert!(list.lines().any(|l| l == "swp1,,ON"), "{list}");
        assert_eq!(
            agent_run(&lab, &format!("{base}action=monitor\n")),
            (Some(0), String::new())
        );
    }
    wait_for(
        "the node's link to come back",
        Duration::from_secs(10),
        || lab.node_link_up().then_some(()),
    );
    // A wrong community: failure, exit 1, port untouched.
    let out = fence_tandem_ifmib(
        &lab,
        &format!("action=off\nport=swp1\nip={SWITCH_IP}\ncommunity=nope\n"),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no answer"));
    assert!(lab.port_admin_up());
}
