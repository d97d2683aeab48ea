//! `targetd -c CONF` with nothing else on its command line: the config file's `targetd` block
//! (here in an included file, beside a replicated resource) names the exports, the addresses and
//! CHAP. Checked with libiscsi's `iscsi-ls`/`iscsi-inq` and libnbd's `nbdinfo`; a wrong CHAP
//! secret is refused and logged; a bad config exits 1 with `file:line:column` and serves
//! nothing; `replctl dump` prints the block back as a fixed point.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tandem_tests::{bin, free_port, run, run_fails, run_ok, tool, wait_for, LoggedDaemon};

const MIB: u64 = 1 << 20;
/// Upper bound for targetd to come up.
const STARTUP: Duration = Duration::from_secs(20);
const USER: &str = "alice";
const SECRET: &str = "alice-secret-12";

/// The top-level file: a replicated resource (not targetd's) and an include of the block.
const MAIN_CONF: &str = "global { usage-count no; }
resource r0 {
    on alpha { disk /srv/a.img; meta-disk internal; address 127.0.0.1:7788; }
    on beta { disk /srv/b.img; meta-disk internal; address 127.0.0.1:7789; }
}
include \"tandem.d/*.conf\";
";

/// targetd started with only `-c` and `--run-dir`, serving `sbd` (8 MiB) and `data`
/// (16 MiB, read-only) from its config.
struct Targetd {
    // Before `dir`, so that targetd is killed (and its log read) before the folder goes.
    daemon: LoggedDaemon,
    dir: tempfile::TempDir,
    nbd_port: u16,
    iscsi_port: u16,
}

impl Targetd {
    /// `settings` go into the targetd block beside the addresses and the two targets.
    fn start(settings: &str) -> Targetd {
        let dir = tempfile::tempdir().expect("temp dir");
        let (nbd_port, iscsi_port) = (free_port(), free_port());
        let conf = write_config(
            dir.path(),
            &format!(
                "targetd {{\n    nbd 127.0.0.1:{nbd_port};\n    iscsi 127.0.0.1:{iscsi_port};\n    \
                 {settings}\n    target sbd {{ file {}; }}\n    \
                 target data {{ file {}; read-only yes; }}\n}}\n",
                tandem_tests::sparse_file(dir.path(), "sbd.img", 8 * MIB).display(),
                tandem_tests::sparse_file(dir.path(), "data.img", 16 * MIB).display(),
            ),
        );
        let daemon = LoggedDaemon::spawn(
            Command::new(bin("targetd"))
                .arg("-c")
                .arg(&conf)
                .arg("--run-dir")
                .arg(dir.path().join("run")),
            &dir.path().join("targetd.log"),
        );
        let t = Targetd {
            daemon,
            dir,
            nbd_port,
            iscsi_port,
        };
        wait_for("targetd to listen for NBD and iSCSI", STARTUP, || {
            let up = |port| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            (up(nbd_port) && up(iscsi_port)).then_some(())
        });
        t
    }

    fn lun(&self, name: &str, credentials: Option<(&str, &str)>) -> String {
        let auth = credentials
            .map(|(u, s)| format!("{u}%{s}@"))
            .unwrap_or_default();
        format!(
            "iscsi://{auth}127.0.0.1:{}/iqn.2026-11.org.tandem:{name}/0",
            self.iscsi_port
        )
    }
}

/// Writes `tandem.conf` (MAIN_CONF) into `dir` and `block` into the file it includes.
fn write_config(dir: &Path, block: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("tandem.d")).expect("tandem.d");
    std::fs::write(dir.join("tandem.d/targets.conf"), block).expect("write targets.conf");
    let conf = dir.join("tandem.conf");
    std::fs::write(&conf, MAIN_CONF).expect("write tandem.conf");
    conf
}

fn libiscsi(name: &str) -> Command {
    Command::new(tool(name, "libiscsi-bin"))
}

#[test]
fn config_alone_serves_its_targets_over_iscsi_and_nbd() {
    let t = Targetd::start("");
    let ls = run_ok(
        libiscsi("iscsi-ls")
            .arg("-s")
            .arg(format!("iscsi://127.0.0.1:{}", t.iscsi_port)),
    );
    for name in ["sbd", "data"] {
        assert!(
            ls.contains(&format!("Target:iqn.2026-11.org.tandem:{name} Portal:")),
            "{ls}"
        );
    }
    let inq = run_ok(libiscsi("iscsi-inq").arg(t.lun("sbd", None)));
    assert!(inq.contains("Vendor:TANDEM"), "{inq}");
    let cap = run_ok(libiscsi("iscsi-readcapacity16").arg(t.lun("data", None)));
    assert!(cap.contains("Total size:16777216"), "{cap}");

    let nbdinfo = || Command::new(tool("nbdinfo", "libnbd-bin"));
    let list = run_ok(
        nbdinfo()
            .arg("--list")
            .arg(format!("nbd://127.0.0.1:{}", t.nbd_port)),
    );
    assert!(list.contains("export=\"sbd\""), "{list}");
    assert!(list.contains("export=\"data\""), "{list}");
    let data = run_ok(nbdinfo().arg(format!("nbd://127.0.0.1:{}/data", t.nbd_port)));
    assert!(data.contains("export-size: 16777216"), "{data}");
    assert!(data.contains("is_read_only: true"), "read-only yes: {data}");
    let sbd = run_ok(nbdinfo().arg(format!(
        "nbd+unix:///sbd?socket={}",
        t.dir.path().join("run/nbd.sock").display()
    )));
    assert!(sbd.contains("export-size: 8388608"), "{sbd}");
    assert!(sbd.contains("is_read_only: false"), "{sbd}");
}

#[test]
fn chap_from_the_config_refuses_a_wrong_secret() {
    let t = Targetd::start(&format!("chap {USER} \"{SECRET}\";"));
    let inq = run_ok(libiscsi("iscsi-inq").arg(t.lun("sbd", Some((USER, SECRET)))));
    assert!(inq.contains("Vendor:TANDEM"), "{inq}");
    for creds in [Some((USER, "wrong-secret-123")), None] {
        let out = run(libiscsi("iscsi-inq").arg(t.lun("sbd", creds)));
        assert!(!out.status.success(), "{creds:?} must be refused");
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Authentication failure"), "{creds:?}: {text}");
    }
    let log = t.daemon.log();
    assert!(
        log.contains("CHAP authentication of user \"alice\" failed"),
        "{log}"
    );
    assert!(!log.contains(SECRET), "secrets are never logged");
}

#[test]
fn bad_config_exits_1_with_file_line_column_and_serves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let image = tandem_tests::sparse_file(dir.path(), "x.img", MIB);
    let targetd = |conf: &Path| {
        let mut c = Command::new(bin("targetd"));
        c.arg("-c")
            .arg(conf)
            .arg("--run-dir")
            .arg(dir.path().join("run"));
        c
    };
    let one_line = |err: &str, want: &str| {
        assert_eq!(err.trim().lines().count(), 1, "not one line:\n{err}");
        assert!(err.contains(want), "{want:?} not in {err:?}");
    };
    let conf = write_config(
        dir.path(),
        &format!(
            "targetd {{\n    iscsi 127.0.0.1:{port};\n    target x {{ file {}; size 1G; }}\n}}\n",
            image.display()
        ),
    );
    let err = run_fails(&mut targetd(&conf));
    let where_ = format!("{}:3:", dir.path().join("tandem.d/targets.conf").display());
    one_line(&err, &where_);
    one_line(&err, "unknown keyword 'size' in target");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "a bad config serves nothing"
    );
    // replctl reads the same file and names the same place.
    let err = run_fails(
        Command::new(bin("replctl"))
            .arg("-c")
            .arg(&conf)
            .arg("dump"),
    );
    one_line(&err, &where_);

    // A config target and a FILE with the same name.
    let conf = write_config(
        dir.path(),
        &format!(
            "targetd {{ target x.img {{ file {}; }} }}\n",
            image.display()
        ),
    );
    let err = run_fails(targetd(&conf).arg(&image));
    one_line(&err, "two exports are named \"x.img\"");

    // A file with no targetd block and no FILE: nothing to serve.
    std::fs::remove_file(dir.path().join("tandem.d/targets.conf")).unwrap();
    let err = run_fails(&mut targetd(&conf));
    one_line(&err, "nothing to serve");
}

#[test]
fn replctl_dump_prints_the_block_back_as_a_fixed_point() {
    let dir = tempfile::tempdir().unwrap();
    let conf = write_config(
        dir.path(),
        "targetd { iscsi 0.0.0.0; chap alice \"a secret, quoted\";\n\
         target sbd { file \"/srv/sbd disk.img\"; } }\n",
    );
    let dump = |conf: &Path| run_ok(Command::new(bin("replctl")).arg("-c").arg(conf).arg("dump"));
    let first = dump(&conf);
    assert!(first.contains("    target sbd {\n"), "{first}");
    assert!(first.contains("\"/srv/sbd disk.img\""), "{first}");
    let again = dir.path().join("dumped.conf");
    std::fs::write(&again, &first).unwrap();
    assert_eq!(dump(&again), first);
}
