//! The replicated data path end to end: two replicatords in network namespaces joined by a
//! veth pair, the resource exported over NBD on the Primary, and real clients (nbdinfo,
//! qemu-img, nbdcopy, fio, mkfs.ext4 through nbdfuse) writing to it. After `down` on both, the
//! two backing files must be identical in the data area.

use std::process::Command;

use tandem_tests::pair::Pair;
use tandem_tests::{mount, nbdfuse, pattern, run, run_fails, run_ok, tool, LoopDevice};

fn down_both_and_compare(p: &Pair) {
    let size = p.size();
    run_ok(&mut p.replctl(0, &["down", "r0"]));
    run_ok(&mut p.replctl(1, &["down", "r0"]));
    let (a, b) = (p.data(0, size), p.data(1, size));
    let first_diff = a.iter().zip(&b).position(|(x, y)| x != y);
    assert_eq!(first_diff, None, "the replicas differ in the data area");
}

#[test]
fn real_nbd_clients_on_the_primary_and_identical_replicas() {
    let mut p = Pair::new(11, 'C', "");
    p.up_synced();
    let size = p.size();
    let uri = p.nodes[0].nbd_uri("r0");

    let info = run_ok(
        Command::new(tool("nbdinfo", "libnbd-bin"))
            .arg("--json")
            .arg(&uri),
    );
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    let export = &info["exports"][0];
    assert_eq!(export["export-size"].as_u64(), Some(size), "{info}");
    for flag in ["can_flush", "can_fua", "can_multi_conn"] {
        assert_eq!(export[flag], true, "{flag}: {info}");
    }
    assert_eq!(export["is_read_only"], false);

    // The Secondary refuses, saying why.
    let err = run_fails(
        Command::new(tool("qemu-img", "qemu-utils")).args(["info", &p.nodes[1].nbd_uri("r0")]),
    );
    assert!(err.contains("Secondary"), "{err}");

    // qemu-img writes and reads.
    let src = p.path().join("src.raw");
    std::fs::write(&src, pattern(8 << 20, 1)).unwrap();
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&src)
            .arg(&uri),
    );
    let back = p.path().join("back.raw");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw", &uri])
            .arg(&back),
    );
    assert!(
        std::fs::read(&back).unwrap()[..8 << 20] == pattern(8 << 20, 1)[..],
        "qemu-img read back"
    );

    // nbdcopy writes at an offset (through a sub-range) and reads.
    let src2 = p.path().join("src2.raw");
    std::fs::write(&src2, pattern(16 << 20, 2)).unwrap();
    run_ok(
        Command::new(tool("nbdcopy", "libnbd-bin"))
            .arg(&src2)
            .arg(&uri),
    );
    let back2 = p.path().join("back2.raw");
    run_ok(Command::new("nbdcopy").arg(&uri).arg(&back2));
    assert!(
        std::fs::read(&back2).unwrap()[..16 << 20] == pattern(16 << 20, 2)[..],
        "nbdcopy read back"
    );

    // fio: random writes from several jobs, verified.
    let per_job = 8 << 20;
    let out = run_ok(
        Command::new(tool("fio", "fio"))
            .current_dir(p.path())
            .args([
                "--name=verify",
                "--ioengine=nbd",
                "--rw=randwrite",
                "--bs=4k",
                "--iodepth=16",
            ])
            .args([
                "--numjobs=4",
                "--verify=crc32c",
                "--do_verify=1",
                "--verify_fatal=1",
            ])
            .args(["--verify_state_save=0", "--group_reporting"])
            .arg(format!("--uri={uri}"))
            .arg(format!("--size={per_job}"))
            .arg(format!("--offset_increment={per_job}")),
    );
    assert!(out.contains("err= 0"), "{out}");
    assert!(!out.contains("verify: bad"), "{out}");

    // Wrong use gets DRBD-like refusals.
    let err = run_fails(&mut p.replctl(1, &["primary", "r0"]));
    assert!(err.contains("the peer is Primary"), "{err}");
    let err = run_fails(&mut p.replctl(1, &["down", "r9"]));
    assert!(err.contains("r9 is not up"), "{err}");
    let err = run_fails(&mut p.replctl(0, &["up", "r0"]));
    assert!(err.contains("already up"), "{err}");

    down_both_and_compare(&p);
}

#[test]
fn ext4_through_nbdfuse_on_the_primary_and_secondary_is_refused_while_mounted() {
    let mut p = Pair::new(12, 'C', "");
    p.up_synced();
    let size = p.size();
    let (fuse, nbd, image) = nbdfuse(&p.path().join("fuse"), &p.nodes[0].nbd_uri("r0"), size);
    let dev = LoopDevice::attach(&image);
    run_ok(
        Command::new(tool("mkfs.ext4", "e2fsprogs"))
            .args(["-q", "-F"])
            .arg(&dev.path),
    );
    let mnt = p.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    {
        let _m = mount(&dev.path, &mnt);
        for i in 0..6usize {
            std::fs::write(
                mnt.join(format!("f{i}")),
                pattern(100_000 * (i + 1), i as u64),
            )
            .unwrap();
        }
        run_ok(&mut Command::new("sync"));
        let err = run_fails(&mut p.replctl(0, &["secondary", "r0"]));
        assert!(err.contains("in use by"), "{err}");
    }
    let fsck = run(Command::new(tool("e2fsck", "e2fsprogs"))
        .arg("-fn")
        .arg(&dev.path));
    assert!(
        fsck.status.success(),
        "e2fsck: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    drop(dev);
    drop(fuse);
    drop(nbd);
    down_both_and_compare(&p);
    // beta's copy holds the same, clean filesystem.
    let beta = LoopDevice::attach(&p.nodes[1].disk);
    let fsck = run(Command::new("e2fsck").arg("-fn").arg(&beta.path));
    assert!(
        fsck.status.success(),
        "beta's replica: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

fn same_workload(id: u8, protocol: char, net_extra: &str) {
    let mut p = Pair::new(id, protocol, net_extra);
    p.up_synced();
    let uri = p.nodes[0].nbd_uri("r0");
    let src = p.path().join("src.raw");
    std::fs::write(&src, pattern(24 << 20, u64::from(id))).unwrap();
    run_ok(
        Command::new(tool("nbdcopy", "libnbd-bin"))
            .arg(&src)
            .arg(&uri),
    );
    down_both_and_compare(&p);
}

/// With the smallest `max-buffers` (32 x 4 KiB) the Secondary's receive queue fills under
/// nbdcopy's large writes, so its reader pauses and TCP pushes back on the Primary.
#[test]
fn protocol_a_replicates() {
    same_workload(13, 'A', "max-buffers 32;");
}

#[test]
fn protocol_b_replicates() {
    same_workload(14, 'B', "data-integrity-alg md5;");
}

#[test]
fn protocol_c_replicates() {
    same_workload(15, 'C', "data-integrity-alg crc32c;");
}

/// Protocol C: a write the client saw acknowledged is on the peer's disk, even when the
/// Primary dies (SIGKILL) right after the acknowledgement.
#[test]
fn protocol_c_acknowledged_write_survives_sigkill_of_the_primary() {
    let mut p = Pair::new(16, 'C', "");
    p.up_synced();
    let uri = p.nodes[0].nbd_uri("r0");
    let data = pattern(4 << 20, 16);
    let src = p.path().join("src.raw");
    std::fs::write(&src, &data).unwrap();
    // nbdcopy exits only after every write was acknowledged (and flushed).
    run_ok(
        Command::new(tool("nbdcopy", "libnbd-bin"))
            .arg("--flush")
            .arg(&src)
            .arg(&uri),
    );
    p.kill(0);
    let beta = std::fs::read(&p.nodes[1].disk).unwrap();
    assert!(
        beta[..data.len()] == data[..],
        "an acknowledged write is missing on the peer"
    );
}

#[test]
fn a_peer_with_the_wrong_secret_is_refused() {
    let mut p = Pair::new(17, 'C', "");
    let bad = p.path().join("bad.conf");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&p.config)
            .unwrap()
            .replace("tandem-test", "wrong-secret"),
    )
    .unwrap();
    p.start(0);
    p.start_with(1, &bad);
    run_ok(&mut p.replctl(0, &["up", "r0"]));
    run_ok(&mut p.replctl(1, &["up", "r0"]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !(p.log(0).contains("authentication failed")
        && p.log(1).contains("authentication failed"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no authentication failure in both logs:\n{}\n{}",
            p.log(0),
            p.log(1)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for i in 0..2 {
        assert_eq!(
            p.status(i)["peers"][0]["connection"],
            "Connecting",
            "never connected"
        );
    }
    // Nothing is replicated to a peer that did not authenticate.
    run_ok(&mut p.replctl(0, &["primary", "--force", "r0"]));
    let src = p.path().join("src.raw");
    std::fs::write(&src, pattern(1 << 20, 17)).unwrap();
    run_ok(
        Command::new(tool("nbdcopy", "libnbd-bin"))
            .arg(&src)
            .arg(p.nodes[0].nbd_uri("r0")),
    );
    assert!(std::fs::read(&p.nodes[1].disk).unwrap()[..1 << 20]
        .iter()
        .all(|&b| b == 0));
    assert_eq!(
        p.status(0)["peers"][0]["out-of-sync-kib"],
        1024,
        "{}",
        p.status(0)
    );
}
