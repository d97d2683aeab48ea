//! clusterd's resource members against the real system: the floating IP (`clusterd::vip`) in
//! a pair of network namespaces joined by a veth. The address must appear on the interface
//! whose subnet holds it, a gratuitous ARP must reach the peer (seen with tcpdump there), and
//! the address must be gone after stop. The namespaces (and the veth with them) are deleted
//! when the test ends, also when it fails.

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use clusterd::vip::Vip;
use tandem_tests::{run_ok, tool, ChildGuard, Netns};

/// Runs `f` on a thread that has entered network namespace `ns`: the commands it starts (`ip`,
/// `arping`, and the threads it spawns) run there too, as clusterd would inside the namespace.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        use std::os::fd::AsRawFd;
        // SAFETY: setns(2) on an open namespace file descriptor changes only this thread's
        // network namespace; the fd stays open for the duration of the call.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("the thread in the namespace panicked")
}

/// Two namespaces `a` and `b` joined by veth `va`/`vb`, with `a_cidr` and `b_cidr` on them.
fn pair(tag: &str, a_cidr: &str, b_cidr: &str) -> (Netns, Netns) {
    let id = std::process::id();
    let a = Netns::new(&format!("tdm-vipa-{tag}-{id}"));
    let b = Netns::new(&format!("tdm-vipb-{tag}-{id}"));
    // Created inside `a` with its peer moved to `b`: nothing is left in the host namespace
    // whatever happens later.
    run_ok(a.cmd("ip").args([
        "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &b.name,
    ]));
    for (ns, dev, cidr) in [(&a, "va", a_cidr), (&b, "vb", b_cidr)] {
        run_ok(
            ns.cmd("ip")
                .args(["addr", "add", cidr, "dev", dev, "nodad"]),
        );
        run_ok(ns.cmd("ip").args(["link", "set", dev, "up"]));
    }
    (a, b)
}

fn addresses(ns: &Netns) -> String {
    run_ok(ns.cmd("ip").args(["-o", "addr", "show"]))
}

#[test]
fn floating_ipv4_is_added_announced_and_removed() {
    tool("arping", "iputils-arping");
    tool("tcpdump", "tcpdump");
    let (a, b) = pair("v4", "10.213.0.1/24", "10.213.0.2/24");
    let vip = Vip {
        addr: "10.213.0.10".parse().unwrap(),
        prefix: 24,
        interface: None,
    };

    // Listen for ARP on the peer's side first.
    let mut dump = ChildGuard(
        b.cmd("tcpdump")
            .args(["-i", "vb", "-n", "-l", "arp"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tcpdump"),
    );
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = dump.0.stdout.take().expect("stdout");
    let stderr = dump.0.stderr.take().expect("stderr");
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx2.send(line);
        }
    });
    let wait_line = |what: &str, pred: &dyn Fn(&str) -> bool, limit: Duration| -> String {
        let deadline = std::time::Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if pred(&l) => return l,
                Ok(l) => seen.push(l),
                Err(_) => panic!("no {what} within {limit:?}; tcpdump said: {seen:#?}"),
            }
        }
    };
    wait_line(
        "tcpdump ready",
        &|l| l.contains("listening on"),
        Duration::from_secs(10),
    );

    let v = vip.clone();
    let garp = in_netns(&a.name, move || v.start()).expect("start the floating IP");
    let listed = addresses(&a);
    assert!(
        listed
            .lines()
            .any(|l| l.contains(" va ") && l.contains("inet 10.213.0.10/24")),
        "10.213.0.10/24 is not on va (the interface whose subnet holds it):\n{listed}"
    );
    let v = vip.clone();
    assert!(in_netns(&a.name, move || v.monitor()).unwrap());

    // iputils arping -U: an ARP request from the address for the address itself.
    let line = wait_line(
        "gratuitous ARP for 10.213.0.10 on the peer",
        &|l| l.contains("who-has 10.213.0.10") && l.contains("tell 10.213.0.10"),
        Duration::from_secs(10),
    );
    eprintln!("peer saw: {line}");
    garp.expect("an IPv4 address is announced")
        .join()
        .expect("arping thread")
        .expect("arping succeeded");
    // Starting again is a no-op.
    let v = vip.clone();
    assert!(in_netns(&a.name, move || v.start()).unwrap().is_none());

    let v = vip.clone();
    in_netns(&a.name, move || v.stop()).expect("stop the floating IP");
    let listed = addresses(&a);
    assert!(
        !listed.contains("10.213.0.10/"),
        "10.213.0.10 is still there after stop:\n{listed}"
    );
    let v = vip.clone();
    assert!(!in_netns(&a.name, move || v.monitor()).unwrap());
    let v = vip.clone();
    in_netns(&a.name, move || v.stop()).expect("stopping a stopped floating IP succeeds");
}

#[test]
fn floating_ipv6_is_added_without_dad_and_removed() {
    let (a, _b) = pair("v6", "fd77::1/64", "fd77::2/64");
    let vip = Vip {
        addr: "fd77::10".parse::<IpAddr>().unwrap(),
        prefix: 64,
        interface: None,
    };
    let v = vip.clone();
    let garp = in_netns(&a.name, move || v.start()).expect("start");
    assert!(garp.is_none(), "no gratuitous ARP for IPv6");
    let listed = addresses(&a);
    assert!(
        listed.lines().any(|l| l.contains(" va ")
            && l.contains("inet6 fd77::10/64")
            && !l.contains("tentative")),
        "fd77::10/64 is not usable on va:\n{listed}"
    );
    let v = vip.clone();
    in_netns(&a.name, move || v.stop()).expect("stop");
    assert!(!addresses(&a).contains("fd77::10/"));
}

#[test]
fn a_floating_ip_outside_every_subnet_is_refused_with_a_clear_error() {
    let (a, _b) = pair("none", "10.214.0.1/24", "10.214.0.2/24");
    let vip = Vip {
        addr: "172.31.9.9".parse().unwrap(),
        prefix: 24,
        interface: None,
    };
    let err = in_netns(&a.name, move || vip.start()).unwrap_err();
    assert!(err.to_string().contains("no interface"), "{err}");
}
