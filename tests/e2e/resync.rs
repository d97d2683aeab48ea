//! Resync end to end: after a crash of the Primary only the activity log's hot extents are
//! copied, and the replicas end identical.

use std::process::Command;

use tandem_tests::pair::Pair;
use tandem_tests::{run_ok, tool};

#[test]
fn crashed_primary_resyncs_only_its_activity_log() {
    let mut p = Pair::new(21, 'C', "");
    p.up_synced();
    let uri = p.nodes[0].nbd_uri("r0");
    // Writes into two 4 MiB extents: 0 and 10.
    for (offset, seed) in [(0u64, 1u64), (40 << 20, 2)] {
        run_ok(
            Command::new(tool("qemu-io", "qemu-utils"))
                .args(["-f", "raw", "-c"])
                .arg(format!("write -P {seed} {offset} 1M"))
                .arg(&uri),
        );
    }
    p.kill(0);
    p.start(0);
    run_ok(&mut p.replctl(0, &["up", "r0"]));
    p.wait_status(1, "beta UpToDate again after the resync", |s| {
        s["disk"] == "UpToDate" && s["peers"][0]["replication"] == "Established"
    });
    let log = p.log(0);
    assert!(
        log.contains("the activity log names 2 hot extent(s) (8 MiB)"),
        "{log}"
    );
    assert!(
        log.contains("replication SyncSource (8192 KiB to sync)"),
        "{log}"
    );
    let size = p.size();
    run_ok(&mut p.replctl(0, &["down", "r0"]));
    run_ok(&mut p.replctl(1, &["down", "r0"]));
    assert!(
        p.data(0, size) == p.data(1, size),
        "replicas identical after the resync"
    );
}

#[test]
fn online_verify_then_reconnect_repairs_exactly_the_differences() {
    use std::os::unix::fs::FileExt;
    let mut p = Pair::new(22, 'C', "verify-alg crc32c; csums-alg md5;");
    p.up_synced();
    // Silent corruption of two blocks of beta's replica.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&p.nodes[1].disk)
        .unwrap();
    f.write_all_at(&[0xee; 100], 5 * 4096).unwrap();
    f.write_all_at(&[0xee; 1], 9000 * 4096 + 17).unwrap();
    f.sync_all().unwrap();
    run_ok(&mut p.replctl(0, &["verify", "r0"]));
    p.wait_status(0, "the verify to finish", |s| {
        s["peers"][0]["last-verify-oos-kib"] == 8
    });
    assert_eq!(p.status(0)["peers"][0]["out-of-sync-kib"], 8);
    let log = p.log(0);
    assert!(
        log.contains("online verify done: 8 KiB out of sync"),
        "{log}"
    );
    run_ok(&mut p.replctl(0, &["disconnect", "r0"]));
    run_ok(&mut p.replctl(0, &["connect", "r0"]));
    p.wait_status(0, "the resync of the two blocks", |s| {
        s["peers"][0]["replication"] == "Established" && s["peers"][0]["out-of-sync-kib"] == 0
    });
    assert!(
        p.log(0).contains("replication SyncSource (8 KiB to sync)"),
        "{}",
        p.log(0)
    );
    let size = p.size();
    run_ok(&mut p.replctl(0, &["down", "r0"]));
    run_ok(&mut p.replctl(1, &["down", "r0"]));
    assert!(
        p.data(0, size) == p.data(1, size),
        "replicas identical after the repair"
    );
}

/// Application writes come first: with the dynamic controller, a resync at full speed slows to
/// c-min-rate while the Primary is written, the writes complete and verify, and the resync
/// finishes once they stop.
#[test]
fn application_writes_progress_during_a_full_speed_resync() {
    let mut p = Pair::with_disk(
        23,
        'C',
        "",
        "c-plan-ahead 20; c-fill-target 1M; c-max-rate 50M; c-min-rate 1M;",
    );
    p.up_connected();
    // `replctl events` streams the resync's progress.
    let mut events = tandem_tests::ChildGuard(
        p.replctl(0, &["events"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = events.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    run_ok(&mut p.replctl(0, &["primary", "--force", "r0"]));
    let uri = p.nodes[0].nbd_uri("r0");
    let out = run_ok(
        Command::new(tool("fio", "fio"))
            .current_dir(p.path())
            .args([
                "--name=app",
                "--ioengine=nbd",
                "--rw=randwrite",
                "--bs=4k",
                "--iodepth=8",
            ])
            .args([
                "--size=8M",
                "--verify=crc32c",
                "--do_verify=1",
                "--verify_fatal=1",
            ])
            .args(["--verify_state_save=0"])
            .arg(format!("--uri={uri}")),
    );
    assert!(
        out.contains("err= 0") && !out.contains("verify: bad"),
        "{out}"
    );
    let s = p.status(0);
    assert_eq!(
        s["peers"][0]["replication"], "SyncSource",
        "the resync yielded to the application: still running after the writes: {s}"
    );
    assert!(s["peers"][0]["done"].as_f64().unwrap() < 100.0, "{s}");
    let progress = rx
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(&l).unwrap())
        .find(|e| e["what"].as_str().is_some_and(|w| w.contains("done:")))
        .expect("a progress event");
    assert_eq!(progress["replication"], "SyncSource", "{progress}");
    assert!(
        progress["what"].as_str().unwrap().contains("done:"),
        "{progress}"
    );
    assert!(
        progress.get("rate-kib-s").is_some() && progress.get("eta-s").is_some(),
        "{progress}"
    );
    drop(events);
    p.wait_status(1, "the resync to finish once the writes stop", |s| {
        s["disk"] == "UpToDate" && s["peers"][0]["replication"] == "Established"
    });
    let size = p.size();
    run_ok(&mut p.replctl(0, &["down", "r0"]));
    run_ok(&mut p.replctl(1, &["down", "r0"]));
    assert!(p.data(0, size) == p.data(1, size));
}

/// `new-current-uuid --clear-bitmap` skips the initial sync of two fresh disks;
/// `invalidate-remote` forces a full sync to the peer; a SyncTarget killed with SIGKILL in the
/// middle resumes from its bitmap instead of starting over.
#[test]
fn skip_initial_sync_invalidate_remote_and_resume_after_sigkill() {
    let mut p = Pair::with_disk(24, 'C', "", "c-plan-ahead 0; resync-rate 8M;");
    p.up_connected();
    run_ok(&mut p.replctl(0, &["new-current-uuid", "--clear-bitmap", "r0"]));
    p.wait_status(1, "beta UpToDate without a sync", |s| {
        s["disk"] == "UpToDate"
    });
    assert!(
        !p.log(0).contains("SyncSource"),
        "no sync ran: {}",
        p.log(0)
    );
    run_ok(&mut p.replctl(0, &["primary", "r0"]));

    // A full sync to beta at 8 MiB/s: 64 MiB take about 8 s.
    run_ok(&mut p.replctl(0, &["invalidate-remote", "r0"]));
    p.wait_status(0, "the full sync to get past 40%", |s| {
        s["peers"][0]["done"].as_f64().is_some_and(|d| d > 40.0)
    });
    p.kill(1);
    p.start(1);
    run_ok(&mut p.replctl(1, &["up", "r0"]));
    p.wait_status(1, "beta UpToDate after the resumed sync", |s| {
        s["disk"] == "UpToDate" && s["peers"][0]["replication"] == "Established"
    });
    let log = p.log(0);
    let starts: Vec<u64> = log
        .lines()
        .filter_map(|l| l.split("replication SyncSource (").nth(1))
        .filter_map(|r| r.split(" KiB").next()?.parse().ok())
        .collect();
    assert_eq!(starts.len(), 2, "{log}");
    assert!(starts[0] >= 60_000, "the first sync was full: {starts:?}");
    assert!(
        starts[1] < starts[0] * 3 / 4,
        "the second one resumed: {starts:?}\n{}",
        p.log(1)
    );
    let size = p.size();
    run_ok(&mut p.replctl(0, &["down", "r0"]));
    run_ok(&mut p.replctl(1, &["down", "r0"]));
    assert!(p.data(0, size) == p.data(1, size));
}
