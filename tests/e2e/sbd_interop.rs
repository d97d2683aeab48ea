//! SBD interop with ClusterLabs sbd (Debian's `sbd` 1.5): a disk `sbd` created is listed,
//! dumped and messaged by `fencectl`, and a disk `fencectl` created is listed, dumped and
//! messaged by `sbd`, with the same output both ways; several devices follow sbd's majority rule;
//! bad disks get a clear one-line error. Disks are loop devices over sparse files, with 512-byte
//! and 4 KiB logical sectors.

use std::path::{Path, PathBuf};
use std::process::Command;

use tandem_tests::{bin, run_fails, run_ok, sparse_file, tool, LoopDevice};

/// Timeouts small enough to keep the tests short: watchdog 1 s, allocate 1 s, msgwait 2 s.
const QUICK: [&str; 6] = ["-1", "1", "-2", "1", "-4", "2"];

/// A loop device with `sector_size`-byte logical sectors over a new 8 MiB sparse file.
fn disk(dir: &Path, name: &str, sector_size: u32) -> LoopDevice {
    let file = sparse_file(dir, name, 8 << 20);
    attach(&file, sector_size)
}

fn attach(file: &Path, sector_size: u32) -> LoopDevice {
    let out = run_ok(
        Command::new(tool("losetup", "util-linux"))
            .args(["-f", "--show", "--sector-size", &sector_size.to_string()])
            .arg(file),
    );
    LoopDevice {
        path: PathBuf::from(out.trim()),
    }
}

fn sbd(devs: &[&LoopDevice]) -> Command {
    let mut c = Command::new(tool("sbd", "sbd"));
    for d in devs {
        c.arg("-d").arg(&d.path);
    }
    c
}

fn fencectl(devs: &[&LoopDevice]) -> Command {
    let mut c = Command::new(bin("fencectl"));
    c.env("TANDEM_LOG", "warn").arg("sbd");
    for d in devs {
        c.arg("-d").arg(&d.path);
    }
    c
}

/// `fencectl --node NODE sbd -d ...`.
fn fencectl_as(node: &str, devs: &[&LoopDevice]) -> Command {
    let mut c = Command::new(bin("fencectl"));
    c.env("TANDEM_LOG", "warn").args(["--node", node, "sbd"]);
    for d in devs {
        c.arg("-d").arg(&d.path);
    }
    c
}

/// The single error line of a failed command.
fn one_line_error(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.trim().lines().collect();
    assert_eq!(lines.len(), 1, "expected a one-line error, got:\n{stderr}");
    assert!(lines[0].starts_with("fencectl: "), "{stderr}");
    lines[0]
}

fn sbd_created_disk_read_by_fencectl(sector_size: u32) {
    let dir = tempfile::tempdir().unwrap();
    let d = disk(dir.path(), "sbd.img", sector_size);
    run_ok(sbd(&[&d]).args(QUICK).arg("create"));
    run_ok(sbd(&[&d]).args(["-n", "alpha", "allocate", "alpha"]));
    run_ok(sbd(&[&d]).args(["allocate", "beta"]));

    let dump = run_ok(sbd(&[&d]).arg("dump"));
    assert!(
        dump.contains(&format!("Sector size        : {sector_size}\n")),
        "{dump}"
    );
    assert_eq!(run_ok(fencectl(&[&d]).arg("dump")), dump);
    let list = run_ok(sbd(&[&d]).arg("list"));
    assert_eq!(list, "0\talpha\tclear\t\n1\tbeta\tclear\t\n");
    assert_eq!(run_ok(fencectl(&[&d]).arg("list")), list);

    // fencectl's messages land where sbd looks for them; names match case-insensitively.
    run_ok(fencectl_as("gamma", &[&d]).args(["message", "BETA", "reset"]));
    let list = run_ok(sbd(&[&d]).arg("list"));
    assert_eq!(list, "0\talpha\tclear\t\n1\tbeta\treset\tgamma\n");
    assert_eq!(run_ok(fencectl(&[&d]).arg("list")), list);
    // And sbd's messages where fencectl looks.
    run_ok(sbd(&[&d]).args(["-n", "beta", "message", "alpha", "off"]));
    assert_eq!(
        run_ok(fencectl(&[&d]).arg("list")),
        "0\talpha\toff\tbeta\n1\tbeta\treset\tgamma\n"
    );
    // fencectl allocates the next free slot on sbd's disk, and sbd sees it.
    run_ok(fencectl(&[&d]).args(["allocate", "delta"]));
    let list = run_ok(sbd(&[&d]).arg("list"));
    assert!(list.ends_with("2\tdelta\tclear\t\n"), "{list}");
}

#[test]
fn sbd_created_disk_read_by_fencectl_512() {
    sbd_created_disk_read_by_fencectl(512);
}

#[test]
fn sbd_created_disk_read_by_fencectl_4096() {
    sbd_created_disk_read_by_fencectl(4096);
}

fn fencectl_created_disk_read_by_sbd(sector_size: u32) {
    let dir = tempfile::tempdir().unwrap();
    let d = disk(dir.path(), "fencectl.img", sector_size);
    let created = run_ok(fencectl(&[&d]).args(QUICK).arg("create"));
    assert!(created.contains("Initializing 255 slots"), "{created}");
    run_ok(fencectl(&[&d]).args(["allocate", "alpha"]));
    run_ok(fencectl(&[&d]).args(["allocate", "beta"]));

    let dump = run_ok(fencectl(&[&d]).arg("dump"));
    assert_eq!(run_ok(sbd(&[&d]).arg("dump")), dump);
    for line in [
        "Header version     : 2.1\n",
        "Number of slots    : 255\n",
        "Timeout (watchdog) : 1\n",
        "Timeout (allocate) : 1\n",
        "Timeout (loop)     : 1\n",
        "Timeout (msgwait)  : 2\n",
    ] {
        assert!(dump.contains(line), "{line:?} missing from\n{dump}");
    }
    assert!(dump.contains(&format!("Sector size        : {sector_size}\n")));
    // The UUID fencectl printed at create is the one sbd reads.
    let uuid = created
        .split("(uuid: ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap();
    assert!(
        dump.contains(&format!("UUID               : {uuid}\n")),
        "{dump}"
    );

    let list = run_ok(fencectl(&[&d]).arg("list"));
    assert_eq!(list, "0\talpha\tclear\t\n1\tbeta\tclear\t\n");
    assert_eq!(run_ok(sbd(&[&d]).arg("list")), list);

    run_ok(sbd(&[&d]).args(["-n", "gamma", "message", "alpha", "test"]));
    let list = run_ok(fencectl(&[&d]).arg("list"));
    assert_eq!(list, "0\talpha\ttest\tgamma\n1\tbeta\tclear\t\n");
    assert_eq!(run_ok(sbd(&[&d]).arg("list")), list);
    // sbd allocates on fencectl's disk too.
    run_ok(sbd(&[&d]).args(["allocate", "delta"]));
    assert!(run_ok(fencectl(&[&d]).arg("list")).ends_with("2\tdelta\tclear\t\n"));
}

#[test]
fn fencectl_created_disk_read_by_sbd_512() {
    fencectl_created_disk_read_by_sbd(512);
}

#[test]
fn fencectl_created_disk_read_by_sbd_4096() {
    fencectl_created_disk_read_by_sbd(4096);
}

/// Three devices: a message needs two of them, for fencectl as for sbd.
#[test]
fn messages_need_a_majority_of_devices() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        disk(dir.path(), "a.img", 512),
        disk(dir.path(), "b.img", 512),
        disk(dir.path(), "c.img", 512),
    );
    let all = [&a, &b, &c];
    run_ok(fencectl(&all).args(QUICK).arg("create"));
    run_ok(fencectl(&all).args(["allocate", "alpha"]));
    let list = run_ok(fencectl(&all).arg("list"));
    assert_eq!(list, "0\talpha\tclear\t\n".repeat(3));
    assert_eq!(run_ok(sbd(&all).arg("list")), list);

    // One device stops being an SBD device: two of three still take the message.
    wipe(&c.path);
    run_ok(fencectl_as("beta", &all).args(["message", "alpha", "test"]));
    for d in [&a, &b] {
        assert_eq!(run_ok(sbd(&[d]).arg("list")), "0\talpha\ttest\tbeta\n");
    }
    // A second one goes: one of three is not a majority, for either tool.
    wipe(&b.path);
    let err = run_fails(fencectl_as("beta", &all).args(["message", "alpha", "reset"]));
    let line = one_line_error(&err);
    assert!(
        line.contains("message delivered to 1 of 3 devices"),
        "{line}"
    );
    assert!(line.contains("not an SBD device"), "{line}");
    run_fails(sbd(&all).args(["-n", "beta", "message", "alpha", "reset"]));
    // list reports the bad devices and still lists the good one, failing overall, as sbd.
    let out = fencectl(&all).arg("list").output().unwrap();
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "0\talpha\treset\tbeta\n"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 2);
}

/// Zeroes the first 4 KiB: no SBD header any more.
fn wipe(dev: &Path) {
    write_at(dev, 0, &[0u8; 4096]);
}

#[test]
fn not_an_sbd_disk() {
    let dir = tempfile::tempdir().unwrap();
    let d = disk(dir.path(), "blank.img", 512);
    for action in ["list", "dump"] {
        let err = run_fails(fencectl(&[&d]).arg(action));
        let line = one_line_error(&err);
        assert!(line.contains("not an SBD device"), "{line}");
        assert!(line.contains(&d.path.display().to_string()), "{line}");
    }
    let err = run_fails(fencectl_as("a", &[&d]).args(["message", "alpha", "test"]));
    assert!(one_line_error(&err).contains("not an SBD device"));
}

#[test]
fn wrong_sector_size() {
    let dir = tempfile::tempdir().unwrap();
    let d = disk(dir.path(), "ss.img", 512);
    run_ok(fencectl(&[&d]).args(QUICK).arg("create"));
    drop(d);
    // The same image seen through 4 KiB sectors: refused by both tools.
    let d = attach(&dir.path().join("ss.img"), 4096);
    let err = run_fails(fencectl(&[&d]).arg("list"));
    assert!(
        one_line_error(&err)
            .contains("SBD header is for 512-byte sectors but the device has 4096-byte sectors"),
        "{err}"
    );
    run_fails(sbd(&[&d]).arg("list"));
}

#[test]
fn unknown_node_and_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = disk(dir.path(), "u.img", 512);
    run_ok(fencectl(&[&d]).args(QUICK).arg("create"));
    run_ok(fencectl(&[&d]).args(["allocate", "alpha"]));
    let err = run_fails(fencectl_as("a", &[&d]).args(["message", "gamma", "reset"]));
    assert!(
        one_line_error(&err).contains("no slot for node 'gamma'"),
        "{err}"
    );
    run_fails(sbd(&[&d]).args(["message", "gamma", "reset"]));
    let err = run_fails(fencectl_as("a", &[&d]).args(["message", "alpha", "explode"]));
    assert!(one_line_error(&err).contains("unknown message \"explode\""));
    let err = run_fails(fencectl(&[&d]).args(["allocate", &"x".repeat(64)]));
    assert!(one_line_error(&err).contains("longer than 63 bytes"));
}

#[test]
fn torn_sectors() {
    let dir = tempfile::tempdir().unwrap();
    let d = disk(dir.path(), "t.img", 512);
    run_ok(fencectl(&[&d]).args(QUICK).arg("create"));
    run_ok(fencectl(&[&d]).args(["allocate", "alpha"]));
    // Slot 0's sector (1) with a name that runs off its field: what sbd never writes.
    let mut garbage = vec![0u8; 512];
    garbage[0] = 1;
    garbage[1..200].fill(b'z');
    write_at(&d.path, 512, &garbage);
    let err = run_fails(fencectl(&[&d]).arg("list"));
    let line = one_line_error(&err);
    assert!(
        line.contains("slot 0: torn or corrupt slot sector: name has no NUL terminator"),
        "{line}"
    );
    // A header whose magic landed but nothing else.
    let mut header = vec![0u8; 512];
    header[..9].copy_from_slice(b"SBD_SBD_\x02");
    write_at(&d.path, 0, &header);
    let err = run_fails(fencectl(&[&d]).arg("dump"));
    assert!(
        one_line_error(&err).contains("torn or corrupt header sector"),
        "{err}"
    );
}

fn write_at(dev: &Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(dev).unwrap();
    f.write_all_at(data, offset).unwrap();
    f.sync_all().unwrap();
}
