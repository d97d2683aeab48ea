//! Split brain in real partitions: two nodes in network namespaces, the veth taken down, both
//! promoted and written, the link restored. For each after-sb policy the outcome (who keeps
//! its data, who resyncs, StandAlone) is DRBD's. Plus manual recovery and the fence-peer hook.

use std::time::Duration;

use tandem_tests::pair::Pair;
use tandem_tests::{run_ok, wait_for};

const BLOCK: u64 = 64 << 10;

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    StandAlone,
    Kept(usize),
}

struct Row {
    name: &'static str,
    net: &'static str,
    /// 64 KiB blocks written on alpha and on beta while split.
    writes: (u64, u64),
    /// Primary when the link comes back.
    primary: (bool, bool),
    want: Outcome,
    /// The `pri-lost-after-sb` handler must have run on alpha.
    pri_lost: bool,
}

fn lost(p: &Pair, i: usize) -> bool {
    p.status(i)["peers"][0]["connection"] != "Connected"
}

/// Cuts the link, waits until both sides have noticed, and promotes beta (alpha is Primary).
fn split(p: &Pair) {
    p.partition();
    wait_for(
        "both sides to notice the partition",
        Duration::from_secs(30),
        || (lost(p, 0) && lost(p, 1)).then_some(()),
    );
    run_ok(&mut p.replctl(1, &["primary", "r0"]));
}

fn run_row(id: u8, row: &Row) {
    let dir = tempfile::tempdir().unwrap();
    let (script, marker) = (dir.path().join("pri-lost.sh"), dir.path().join("pri-lost"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$DRBD_RESOURCE\" >> {}\n",
            marker.display()
        ),
    )
    .unwrap();
    run_ok(std::process::Command::new("chmod").arg("+x").arg(&script));
    let mut p = Pair::with_config(
        id,
        'C',
        row.net,
        "c-plan-ahead 0; resync-rate 1G;",
        &format!("handlers {{ pri-lost-after-sb \"{}\"; }}", script.display()),
    );
    p.up_synced();
    split(&p);
    for k in 0..row.writes.0 {
        p.write(0, 2 * k * BLOCK, BLOCK, 0xaa);
    }
    for k in 0..row.writes.1 {
        p.write(1, (2 * k + 1) * BLOCK, BLOCK, 0xbb);
    }
    for (i, primary) in [row.primary.0, row.primary.1].into_iter().enumerate() {
        if !primary {
            run_ok(&mut p.replctl(i, &["secondary", "r0"]));
        }
    }
    let size = p.size();
    let before = [p.data(0, size), p.data(1, size)];
    p.heal();
    let outcome = wait_for(
        &format!("{}: an outcome", row.name),
        Duration::from_secs(60),
        || {
            let s = [p.status(0), p.status(1)];
            if s.iter()
                .any(|s| s["peers"][0]["connection"] == "StandAlone")
            {
                return Some(Outcome::StandAlone);
            }
            let synced = s
                .iter()
                .all(|s| s["disk"] == "UpToDate" && s["peers"][0]["replication"] == "Established");
            synced.then_some(Outcome::Kept(usize::MAX))
        },
    );
    let said: String = (0..2)
        .map(|i| {
            p.status(i)["peers"][0]["split-brain"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert!(
        said.contains("split-brain"),
        "{}: status must say split-brain: {said}",
        row.name
    );
    let outcome = match outcome {
        Outcome::StandAlone => {
            assert!(
                p.data(0, size) == before[0] && p.data(1, size) == before[1],
                "{}: nothing merged",
                row.name
            );
            Outcome::StandAlone
        }
        Outcome::Kept(_) => {
            let (a, b) = (p.data(0, size), p.data(1, size));
            assert!(a == b, "{}: replicas identical after the resync", row.name);
            Outcome::Kept(if a == before[0] {
                0
            } else {
                assert!(a == before[1], "{}", row.name);
                1
            })
        }
    };
    assert_eq!(outcome, row.want, "{}: {said}", row.name);
    if row.pri_lost {
        wait_for(
            &format!("{}: pri-lost-after-sb to run", row.name),
            Duration::from_secs(10),
            || marker.exists().then_some(()),
        );
        assert_eq!(
            std::fs::read_to_string(&marker).unwrap().lines().next(),
            Some("r0")
        );
    } else {
        assert!(!marker.exists(), "{}: pri-lost-after-sb ran", row.name);
    }
}

#[test]
fn after_split_brain_policies_in_real_partitions() {
    let rows = [
        Row {
            name: "0pri disconnect",
            net: "",
            writes: (2, 1),
            primary: (false, false),
            want: Outcome::StandAlone,
            pri_lost: false,
        },
        Row {
            name: "0pri discard-zero-changes",
            net: "after-sb-0pri discard-zero-changes;",
            writes: (2, 0),
            primary: (false, false),
            want: Outcome::Kept(0),
            pri_lost: false,
        },
        Row {
            name: "0pri discard-least-changes",
            net: "after-sb-0pri discard-least-changes;",
            writes: (1, 3),
            primary: (false, false),
            want: Outcome::Kept(1),
            pri_lost: false,
        },
        Row {
            name: "0pri discard-younger-primary",
            net: "after-sb-0pri discard-younger-primary;",
            writes: (1, 3),
            primary: (false, false),
            want: Outcome::Kept(0),
            pri_lost: false,
        },
        Row {
            name: "0pri discard-older-primary",
            net: "after-sb-0pri discard-older-primary;",
            writes: (3, 1),
            primary: (false, false),
            want: Outcome::Kept(1),
            pri_lost: false,
        },
        Row {
            name: "0pri discard-node-beta",
            net: "after-sb-0pri discard-node-beta;",
            writes: (1, 3),
            primary: (false, false),
            want: Outcome::Kept(0),
            pri_lost: false,
        },
        Row {
            name: "1pri discard-secondary",
            net: "after-sb-1pri discard-secondary;",
            writes: (1, 3),
            primary: (true, false),
            want: Outcome::Kept(0),
            pri_lost: false,
        },
        Row {
            name: "1pri consensus",
            net: "after-sb-0pri discard-zero-changes; after-sb-1pri consensus;",
            writes: (2, 0),
            primary: (true, false),
            want: Outcome::Kept(0),
            pri_lost: false,
        },
        Row {
            name: "2pri disconnect",
            net: "after-sb-0pri discard-least-changes;",
            writes: (2, 1),
            primary: (true, true),
            want: Outcome::StandAlone,
            pri_lost: false,
        },
    ];
    for (k, row) in rows.iter().enumerate() {
        run_row(31 + u8::try_from(k).unwrap(), row);
    }
}

/// The policies that leave a Primary the loser: disconnect, or call-pri-lost-after-sb, which
/// honours after-sb-0pri's verdict and runs `pri-lost-after-sb` on the losing Primary.
#[test]
fn after_split_brain_policies_with_a_losing_primary() {
    let rows = [
        Row {
            name: "1pri disconnect",
            net: "after-sb-0pri discard-least-changes;",
            writes: (1, 3),
            primary: (true, false),
            want: Outcome::StandAlone,
            pri_lost: false,
        },
        Row {
            name: "1pri call-pri-lost-after-sb",
            net: "after-sb-0pri discard-least-changes; after-sb-1pri call-pri-lost-after-sb;",
            writes: (1, 3),
            primary: (true, false),
            want: Outcome::StandAlone,
            pri_lost: true,
        },
        Row {
            name: "2pri call-pri-lost-after-sb",
            net: "after-sb-0pri discard-least-changes; after-sb-2pri call-pri-lost-after-sb;",
            writes: (1, 3),
            primary: (true, true),
            want: Outcome::StandAlone,
            pri_lost: true,
        },
    ];
    for (k, row) in rows.iter().enumerate() {
        run_row(51 + u8::try_from(k).unwrap(), row);
    }
}

/// DRBD's manual recovery: on the victim `disconnect; secondary; connect --discard-my-data`, on
/// the survivor `connect`; only the changed blocks are resynced.
#[test]
fn manual_split_brain_recovery() {
    let mut p = Pair::new(45, 'C', "");
    p.up_synced();
    split(&p);
    p.write(0, 0, BLOCK, 0xaa);
    p.write(1, BLOCK, 2 * BLOCK, 0xbb);
    p.heal();
    // As with DRBD, the node that detects the split brain goes StandAlone; its peer also does
    // when it detected it too, and otherwise (the connection was torn down before it could
    // compare generations) keeps Connecting.
    let connection = |i: usize| p.status(i)["peers"][0]["connection"].clone();
    wait_for(
        "StandAlone after the split brain",
        Duration::from_secs(60),
        || {
            let c = [connection(0), connection(1)];
            (c.iter().any(|c| c == "StandAlone")
                && c.iter().all(|c| c == "StandAlone" || c == "Connecting"))
            .then_some(())
        },
    );
    // Give a node left Connecting time to try again: a StandAlone peer refuses before the
    // handshake and the dialer backs off, so a few attempts at most, not one per millisecond.
    std::thread::sleep(Duration::from_secs(2));
    let connections = (0..2)
        .map(|i| p.log(i).matches("resource: connected ").count())
        .sum::<usize>();
    assert!(
        connections <= 8,
        "{connections} connections: a split-brain pair must not reconnect in a loop\n{}\n{}",
        p.log(0),
        p.log(1)
    );
    run_ok(&mut p.replctl(1, &["disconnect", "r0"]));
    run_ok(&mut p.replctl(1, &["secondary", "r0"]));
    run_ok(&mut p.replctl(1, &["connect", "--discard-my-data", "r0"]));
    // The survivor reconnects by itself unless it is StandAlone (DRBD's manual recovery).
    if connection(0) == "StandAlone" {
        run_ok(&mut p.replctl(0, &["connect", "r0"]));
    }
    p.wait_status(1, "beta resynced from alpha", |s| {
        s["disk"] == "UpToDate" && s["peers"][0]["replication"] == "Established"
    });
    assert!(
        p.log(0)
            .contains("replication SyncSource (192 KiB to sync)"),
        "only the 3 changed blocks: {}",
        p.log(0)
    );
    let size = p.size();
    assert!(p.data(0, size) == p.data(1, size));
}

/// rr-conflict: after a split brain, the Primary (alpha) is told `connect --discard-my-data`
/// while still Primary. With `disconnect` it goes StandAlone and keeps its data; with
/// `retry-connect` it keeps connecting, and once demoted it resyncs from beta.
#[test]
fn rr_conflict_keeps_a_primary_from_being_overwritten() {
    for (id, policy) in [(61, "disconnect"), (62, "retry-connect")] {
        let mut p = Pair::new(id, 'C', &format!("rr-conflict {policy};"));
        p.up_synced();
        split(&p);
        p.write(0, 0, BLOCK, 0xaa);
        p.write(1, BLOCK, BLOCK, 0xbb);
        run_ok(&mut p.replctl(1, &["secondary", "r0"]));
        p.heal();
        let connection = |i: usize| p.status(i)["peers"][0]["connection"].clone();
        wait_for("the split brain", Duration::from_secs(60), || {
            (connection(0) == "StandAlone" || connection(1) == "StandAlone").then_some(())
        });
        let size = p.size();
        let before = [p.data(0, size), p.data(1, size)];
        for i in 0..2 {
            if connection(i) != "StandAlone" {
                run_ok(&mut p.replctl(i, &["disconnect", "r0"]));
            }
        }
        run_ok(&mut p.replctl(0, &["connect", "--discard-my-data", "r0"]));
        run_ok(&mut p.replctl(1, &["connect", "r0"]));
        wait_for(
            &format!("{policy}: alpha refuses to become SyncTarget"),
            Duration::from_secs(60),
            || p.log(0).contains("rr-conflict").then_some(()),
        );
        assert_eq!(p.status(0)["role"], "Primary", "{policy}");
        assert!(
            p.data(0, size) == before[0],
            "{policy}: the Primary's data was not touched"
        );
        if policy == "disconnect" {
            p.wait_status(0, "alpha StandAlone", |s| {
                s["peers"][0]["connection"] == "StandAlone"
            });
            continue;
        }
        // retry-connect: alpha keeps connecting; demoted, it resyncs from beta.
        assert_ne!(connection(0), "StandAlone", "{policy}");
        run_ok(&mut p.replctl(0, &["secondary", "r0"]));
        p.wait_status(0, "alpha resynced from beta", |s| {
            s["disk"] == "UpToDate" && s["peers"][0]["replication"] == "Established"
        });
        assert!(p.data(0, size) == p.data(1, size), "{policy}");
        assert!(
            p.data(1, size) == before[1],
            "{policy}: beta's data survived"
        );
    }
}

/// resource-and-stonith: the Primary that loses its peer freezes IO and runs fence-peer with
/// DRBD's environment; exit 7 (peer fenced) resumes IO.
#[test]
fn fence_peer_handler_freezes_io_until_it_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (marker, release) = (dir.path().join("called"), dir.path().join("release"));
    let script = dir.path().join("fence-peer.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$DRBD_RESOURCE $DRBD_PEER\" > {}\nwhile [ ! -e {} ]; do sleep 0.1; done\nexit 7\n",
            marker.display(),
            release.display()
        ),
    )
    .unwrap();
    run_ok(std::process::Command::new("chmod").arg("+x").arg(&script));
    let mut p = Pair::with_config(
        46,
        'C',
        "fencing resource-and-stonith;",
        "c-plan-ahead 0; resync-rate 1G;",
        &format!("handlers {{ fence-peer \"{}\"; }}", script.display()),
    );
    p.up_synced();
    p.partition();
    wait_for("fence-peer to be called", Duration::from_secs(30), || {
        marker.exists().then_some(())
    });
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "r0 beta");
    p.wait_status(0, "IO suspended", |s| s["io-suspended"] == true);
    let uri = p.nodes[0].nbd_uri("r0");
    let mut writer = tandem_tests::ChildGuard(
        std::process::Command::new("qemu-io")
            .args(["-f", "raw", "-c", "write -P 7 0 65536", &uri])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(
        writer.0.try_wait().unwrap().is_none(),
        "the write waits while the peer is being fenced"
    );
    std::fs::write(&release, "").unwrap();
    let status = wait_for("the write to complete", Duration::from_secs(30), || {
        writer.0.try_wait().unwrap()
    });
    assert!(status.success());
    assert_eq!(p.status(0)["io-suspended"], false);
    assert!(
        p.log(0)
            .contains("fence-peer exit 7: the peer was fenced; IO resumed"),
        "{}",
        p.log(0)
    );
}
