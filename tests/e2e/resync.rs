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
