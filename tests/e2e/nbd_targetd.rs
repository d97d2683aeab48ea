//! `targetd` against the real NBD clients from Debian: libnbd's `nbdinfo`, `nbdcopy` and
//! `nbdfuse`, `qemu-img`, `fio --ioengine=nbd`, and ext4 mounted through nbdfuse and a loop
//! device. Every process, mount and loop device is owned by a guard, so a failing test still
//! cleans up.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use tandem_tests::{
    bin, free_port, mount, pattern, run, run_fails, run_ok, tool, wait_for, ChildGuard, FuseMount,
    LoggedDaemon, LoopDevice,
};

const MIB: u64 = 1 << 20;
const MIBZ: usize = 1 << 20;
/// Upper bound for a server or a FUSE mount to come up.
const STARTUP: Duration = Duration::from_secs(20);

/// A running targetd serving files from its own temporary directory.
struct Targetd {
    // Before `dir`, so that targetd is killed (and its log read) before the folder goes.
    _daemon: LoggedDaemon,
    dir: tempfile::TempDir,
    socket: PathBuf,
    port: u16,
}

impl Targetd {
    /// Creates sparse files of the given sizes and serves them on a Unix socket and on TCP.
    fn start(files: &[(&str, u64)]) -> Targetd {
        Targetd::start_with(&[], files)
    }

    /// Like `start`, with extra targetd flags.
    fn start_with(flags: &[&str], files: &[(&str, u64)]) -> Targetd {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut paths = Vec::new();
        for (name, size) in files {
            paths.push(tandem_tests::sparse_file(dir.path(), name, *size));
        }
        Targetd::serve(dir, flags, &paths)
    }

    /// Serves `paths` (files or block devices), with `dir` as its working directory.
    fn serve(dir: tempfile::TempDir, flags: &[&str], paths: &[PathBuf]) -> Targetd {
        let port = free_port();
        let run_dir = dir.path().join("run");
        let daemon = LoggedDaemon::spawn(
            Command::new(bin("targetd"))
                .arg("--run-dir")
                .arg(&run_dir)
                .arg("--nbd")
                .arg(format!("127.0.0.1:{port}"))
                .args(flags)
                .args(paths),
            &dir.path().join("targetd.log"),
        );
        let t = Targetd {
            _daemon: daemon,
            dir,
            socket: run_dir.join("nbd.sock"),
            port,
        };
        wait_for("targetd to listen", STARTUP, || {
            let unix = std::os::unix::net::UnixStream::connect(&t.socket).is_ok();
            let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            (unix && tcp).then_some(())
        });
        t
    }

    fn unix_uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket.display())
    }

    fn tcp_uri(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.port)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn nbdinfo() -> PathBuf {
    tool("nbdinfo", "libnbd-bin")
}

#[test]
fn nbdinfo_shows_exports_size_flags_and_allocation() {
    let t = Targetd::start(&[("a.img", 64 * MIB), ("b.img", 16 * MIB)]);
    let out = run_ok(Command::new(nbdinfo()).arg(t.unix_uri("a.img")));
    for want in [
        "export=\"a.img\"",
        "export-size: 67108864",
        "base:allocation",
        "is_read_only: false",
        "can_flush: true",
        "can_fua: true",
        "can_trim: true",
        "can_zero: true",
        "can_fast_zero: true",
        "can_multi_conn: true",
        "can_df: true",
        "block_size_minimum: 1",
        "block_size_preferred: 4096",
        "block_size_maximum: 33554432",
        "using structured packets",
    ] {
        assert!(out.contains(want), "nbdinfo lacks {want:?}:\n{out}");
    }
    // Every export is listed, over TCP too.
    let list = run_ok(Command::new(nbdinfo()).arg("--list").arg(t.tcp_uri("")));
    for want in [
        "export=\"a.img\"",
        "export=\"b.img\"",
        "export-size: 16777216",
    ] {
        assert!(
            list.contains(want),
            "nbdinfo --list lacks {want:?}:\n{list}"
        );
    }
    // base:allocation: a fresh sparse file is one hole; after a write, data shows up.
    let map = run_ok(
        Command::new(nbdinfo())
            .arg("--map")
            .arg(t.unix_uri("b.img")),
    );
    assert_eq!(
        map.split_whitespace().collect::<Vec<_>>(),
        ["0", "16777216", "3", "hole,zero"],
        "{map}"
    );
    std::fs::write(t.dir.path().join("chunk"), pattern(MIBZ, 1)).unwrap();
    run_ok(
        Command::new(tool("nbdcopy", "libnbd-bin"))
            .arg(t.dir.path().join("chunk"))
            .arg(t.unix_uri("b.img")),
    );
    let map = run_ok(
        Command::new(nbdinfo())
            .arg("--map")
            .arg(t.unix_uri("b.img")),
    );
    assert!(map.lines().next().unwrap_or("").contains("data"), "{map}");
    // A bad export name is refused cleanly, and the server goes on serving.
    let err = run_fails(Command::new(nbdinfo()).arg(t.unix_uri("nope")));
    assert!(err.contains("nope"), "{err}");
    run_ok(
        Command::new(nbdinfo())
            .arg("--size")
            .arg(t.unix_uri("a.img")),
    );
}

#[test]
fn block_devices_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let backing = tandem_tests::sparse_file(dir.path(), "backing.img", 32 * MIB);
    let dev = LoopDevice::attach(&backing);
    let name = dev.path.file_name().unwrap().to_str().unwrap().to_string();
    let src = dir.path().join("src.bin");
    let data = pattern(4 * MIBZ, 5);
    std::fs::write(&src, &data).unwrap();
    let t = Targetd::serve(dir, &[], std::slice::from_ref(&dev.path));
    let size = run_ok(Command::new(nbdinfo()).arg("--size").arg(t.unix_uri(&name)));
    assert_eq!(size.trim(), (32 * MIB).to_string());
    // --flush: the loop device's page cache reaches the backing file before the comparison.
    run_ok(
        Command::new(tool("nbdcopy", "libnbd-bin"))
            .arg("--flush")
            .arg(&src)
            .arg(t.unix_uri(&name)),
    );
    let on_disk = std::fs::read(&backing).unwrap();
    assert!(
        on_disk[..data.len()] == data[..],
        "the block device write differs"
    );
    let out = run_ok(
        Command::new(tool("fio", "fio"))
            .args([
                "--name=blk",
                "--ioengine=nbd",
                "--rw=randwrite",
                "--bs=4k",
                "--size=8M",
                "--iodepth=8",
                "--verify=crc32c",
                "--verify_fatal=1",
            ])
            .arg(format!("--uri={}", t.unix_uri(&name))),
    );
    assert!(out.contains("err= 0"), "{out}");
    drop(t);
    drop(dev);
}

#[test]
fn read_only_exports_say_so_and_refuse_writes() {
    let t = Targetd::start_with(&["--read-only"], &[("ro.img", 4 * MIB)]);
    let out = run_ok(Command::new(nbdinfo()).arg(t.unix_uri("ro.img")));
    for want in [
        "is_read_only: true",
        "can_trim: false",
        "can_zero: false",
        "can_flush: true",
    ] {
        assert!(out.contains(want), "nbdinfo lacks {want:?}:\n{out}");
    }
    let src = t.file("src.bin");
    std::fs::write(&src, pattern(MIBZ, 3)).unwrap();
    run_fails(
        Command::new(tool("nbdcopy", "libnbd-bin"))
            .arg(&src)
            .arg(t.unix_uri("ro.img")),
    );
    let backing = std::fs::read(t.file("ro.img")).unwrap();
    assert!(
        backing.iter().all(|&b| b == 0),
        "a read-only export was written"
    );
}

#[test]
fn qemu_img_and_nbdcopy_write_and_read_the_file() {
    let t = Targetd::start(&[("disk.img", 32 * MIB)]);
    let src = t.file("src.bin");
    let data = pattern(24 * MIBZ + 4096 + 17, 7);
    std::fs::write(&src, &data).unwrap();
    // qemu-img writes through TCP...
    run_ok(
        Command::new(tool("qemu-img", "qemu-utils"))
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&src)
            .arg(t.tcp_uri("disk.img")),
    );
    let backing = std::fs::read(t.file("disk.img")).unwrap();
    assert_eq!(backing.len() as u64, 32 * MIB);
    assert!(
        backing[..data.len()] == data[..],
        "qemu-img's write differs"
    );
    // ...and reads back what is there (qemu-img compare reads both sides).
    let out = run_ok(
        Command::new(tool("qemu-img", "qemu-utils"))
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(t.file("disk.img"))
            .arg(t.tcp_uri("disk.img")),
    );
    assert!(out.contains("identical"), "{out}");
    // nbdcopy reads the whole export over the Unix socket, with several connections.
    let copy = t.file("copy.bin");
    run_ok(
        Command::new(tool("nbdcopy", "libnbd-bin"))
            .args(["--connections=4", "--requests=16"])
            .arg(t.unix_uri("disk.img"))
            .arg(&copy),
    );
    assert!(
        std::fs::read(&copy).unwrap() == backing,
        "nbdcopy read differs"
    );
    // nbdcopy writes a different pattern, at a 1 MiB offset through its own subset, then reads it.
    let second = pattern(8 * MIBZ, 99);
    std::fs::write(t.file("second.bin"), &second).unwrap();
    run_ok(
        Command::new(tool("nbdcopy", "libnbd-bin"))
            .arg(t.file("second.bin"))
            .arg(t.unix_uri("disk.img")),
    );
    let backing = std::fs::read(t.file("disk.img")).unwrap();
    assert!(
        backing[..second.len()] == second[..],
        "nbdcopy write differs"
    );
}

#[test]
fn fio_random_writes_verify_with_many_jobs() {
    let jobs = 4;
    let per_job = 16 * MIB;
    let t = Targetd::start(&[("fio.img", jobs * per_job)]);
    for (engine_uri, bs) in [(t.unix_uri("fio.img"), "4k"), (t.tcp_uri("fio.img"), "64k")] {
        let out = run_ok(
            Command::new(tool("fio", "fio"))
                .args([
                    "--name=verify",
                    "--ioengine=nbd",
                    "--rw=randwrite",
                    "--iodepth=16",
                    "--verify=crc32c",
                    "--do_verify=1",
                    "--verify_fatal=1",
                    "--group_reporting",
                ])
                .arg(format!("--uri={engine_uri}"))
                .arg(format!("--bs={bs}"))
                .arg(format!("--numjobs={jobs}"))
                .arg(format!("--size={per_job}"))
                // Each job owns its region, so verification cannot see another job's blocks.
                .arg(format!("--offset_increment={per_job}")),
        );
        assert!(out.contains("err= 0"), "{out}");
        assert!(!out.contains("verify: bad"), "{out}");
    }
}

#[test]
fn ext4_through_nbdfuse_and_a_loop_device_is_clean() {
    let t = Targetd::start(&[("fs.img", 128 * MIB)]);
    let fuse_dir = t.file("fuse");
    let mnt = t.file("mnt");
    std::fs::create_dir(&fuse_dir).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let nbdfuse = ChildGuard(
        Command::new(tool("nbdfuse", "libnbd-bin"))
            .arg(&fuse_dir)
            .arg(t.unix_uri("fs.img"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nbdfuse"),
    );
    let fuse = FuseMount(fuse_dir.clone());
    let image = fuse_dir.join("nbd");
    wait_for("nbdfuse to expose the export", STARTUP, || {
        std::fs::metadata(&image)
            .ok()
            .filter(|m| m.len() == 128 * MIB)
    });
    let dev = LoopDevice::attach(&image);
    run_ok(
        Command::new(tool("mkfs.ext4", "e2fsprogs"))
            .args(["-q", "-F"])
            .arg(&dev.path),
    );
    let files: Vec<(String, Vec<u8>)> = (0..8usize)
        .map(|i| {
            let len = 4096 * (i + 1) * 37 + 11;
            (format!("file{i}"), pattern(len, 100 + i as u64))
        })
        .collect();
    {
        let _m = mount(&dev.path, &mnt);
        for (name, data) in &files {
            std::fs::write(mnt.join(name), data).unwrap();
        }
        run_ok(&mut Command::new("sync"));
    }
    let fsck = run(Command::new(tool("e2fsck", "e2fsprogs"))
        .arg("-fn")
        .arg(&dev.path));
    assert!(
        fsck.status.success(),
        "e2fsck -fn is not clean:\n{}\n{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    // Mounted again, the files read back as written.
    {
        let _m = mount(&dev.path, &mnt);
        for (name, data) in &files {
            assert!(
                std::fs::read(mnt.join(name)).unwrap() == *data,
                "{name} differs"
            );
        }
    }
    drop(dev);
    drop(fuse);
    drop(nbdfuse);
}

#[test]
fn targetd_rejects_bad_arguments_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = tandem_tests::sparse_file(dir.path(), "x.img", MIB);
    let one_line = |err: &str, want: &str| {
        assert_eq!(err.trim().lines().count(), 1, "not one line:\n{err}");
        assert!(err.contains(want), "{want:?} not in {err:?}");
    };
    let targetd = || {
        let mut c = Command::new(bin("targetd"));
        c.arg("--run-dir").arg(dir.path().join("run"));
        c
    };
    let err = run_fails(targetd().arg(dir.path().join("missing.img")));
    one_line(&err, "missing.img");
    let busy_iscsi = TcpListener::bind("127.0.0.1:0").unwrap();
    let iscsi_addr = busy_iscsi.local_addr().unwrap().to_string();
    let err = run_fails(targetd().args(["--iscsi", &iscsi_addr]).arg(&file));
    one_line(&err, &iscsi_addr);
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let err = run_fails(targetd().args(["--nbd", &addr]).arg(&file));
    one_line(&err, &addr);
    let other = dir.path().join("sub");
    std::fs::create_dir(&other).unwrap();
    let twin = tandem_tests::sparse_file(&other, "x.img", MIB);
    let err = run_fails(targetd().arg(&file).arg(&twin));
    one_line(&err, "x.img");
}
