//! `targetd --iscsi` against Debian's libiscsi tools: `iscsi-ls`, `iscsi-inq` and
//! `iscsi-readcapacity16` with and without CHAP (one-way and mutual; wrong secrets refused and
//! logged), and libiscsi's conformance suite `iscsi-test-cu --dataloss --test=ALL` (with a
//! second path, so the multipath tests run too) against our target and against tgt's `tgtd`
//! serving the same kind of file in the same test, with a floor on our pass count. Every process is owned by a guard, so a failing test cleans up.

use std::process::Command;
use std::time::Duration;

use tandem_tests::tgtd::Tgtd;
use tandem_tests::{bin, free_port, run, run_ok, tool, wait_for, LoggedDaemon};

const MIB: u64 = 1 << 20;
/// Upper bound for a server to come up.
const STARTUP: Duration = Duration::from_secs(20);
/// The conformance suite's tests that must pass against our target; it only rises.
const CONFORMANCE_PASS_FLOOR: usize = 230;
/// Tests the suite has (iscsi-test-cu from libiscsi-bin 1.19).
const CONFORMANCE_TESTS: usize = 230;
const USER: &str = "alice";
const SECRET: &str = "alice-secret-12";
const TARGET_USER: &str = "tandem";
const TARGET_SECRET: &str = "target-secret-12";

/// A running targetd serving one sparse file over iSCSI.
struct Targetd {
    // Before `dir`, so that targetd is killed (and its log read) before the folder goes.
    daemon: LoggedDaemon,
    _dir: tempfile::TempDir,
    port: u16,
}

impl Targetd {
    fn start(flags: &[&str], name: &str, size: u64) -> Targetd {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = tandem_tests::sparse_file(dir.path(), name, size);
        let port = free_port();
        let daemon = LoggedDaemon::spawn(
            Command::new(bin("targetd"))
                .arg("--run-dir")
                .arg(dir.path().join("run"))
                .arg("--iscsi")
                .arg(format!("127.0.0.1:{port}"))
                .args(flags)
                .arg(&path),
            &dir.path().join("targetd.log"),
        );
        let t = Targetd {
            daemon,
            _dir: dir,
            port,
        };
        wait_for("targetd to listen for iSCSI", STARTUP, || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .is_ok()
                .then_some(())
        });
        t
    }

    fn portal(&self, credentials: Option<(&str, &str)>) -> String {
        match credentials {
            Some((u, s)) => format!("iscsi://{u}%{s}@127.0.0.1:{}", self.port),
            None => format!("iscsi://127.0.0.1:{}", self.port),
        }
    }

    fn lun(&self, name: &str, credentials: Option<(&str, &str)>) -> String {
        format!(
            "{}/iqn.2026-11.org.tandem:{name}/0",
            self.portal(credentials)
        )
    }

    fn log(&self) -> String {
        self.daemon.log()
    }
}

fn libiscsi(name: &str) -> Command {
    Command::new(tool(name, "libiscsi-bin"))
}

#[test]
fn ls_inq_and_readcapacity16_without_chap() {
    let t = Targetd::start(&[], "disk.img", 64 * MIB);
    let ls = run_ok(libiscsi("iscsi-ls").arg("-s").arg(t.portal(None)));
    assert!(
        ls.contains(&format!(
            "Target:iqn.2026-11.org.tandem:disk.img Portal:127.0.0.1:{},1",
            t.port
        )),
        "{ls}"
    );
    assert!(ls.contains("Lun:0") && ls.contains("DIRECT_ACCESS"), "{ls}");
    let inq = run_ok(libiscsi("iscsi-inq").arg(t.lun("disk.img", None)));
    assert!(inq.contains("Vendor:TANDEM"), "{inq}");
    assert!(
        inq.contains("Peripheral Device Type:DIRECT_ACCESS"),
        "{inq}"
    );
    let serial = run_ok(
        libiscsi("iscsi-inq")
            .args(["--evpd=1", "--pagecode=128"])
            .arg(t.lun("disk.img", None)),
    );
    assert!(serial.contains("Unit Serial Number:"), "{serial}");
    let cap = run_ok(libiscsi("iscsi-readcapacity16").arg(t.lun("disk.img", None)));
    assert!(cap.contains("Total size:67108864"), "{cap}");
    assert!(cap.contains("LOGICAL BLOCK LENGTH IN BYTES:512"), "{cap}");
    assert!(cap.contains("LBPME:1"), "thin provisioning: {cap}");
    let wrong = run(libiscsi("iscsi-inq").arg(t.lun("nosuch.img", None)));
    assert!(!wrong.status.success(), "an unknown target must be refused");
}

#[test]
fn chap_one_way_and_mutual_and_wrong_secrets_refused() {
    let chap = format!("{USER}:{SECRET}");
    let mutual = format!("{TARGET_USER}:{TARGET_SECRET}");
    let t = Targetd::start(
        &["--chap", &chap, "--mutual-chap", &mutual],
        "sbd.img",
        8 * MIB,
    );
    let good = Some((USER, SECRET));
    let inq = run_ok(libiscsi("iscsi-inq").arg(t.lun("sbd.img", good)));
    assert!(inq.contains("Vendor:TANDEM"), "{inq}");
    let cap = run_ok(libiscsi("iscsi-readcapacity16").arg(t.lun("sbd.img", good)));
    assert!(cap.contains("Total size:8388608"), "{cap}");
    let ls = run_ok(libiscsi("iscsi-ls").arg("-s").arg(t.portal(good)));
    assert!(ls.contains("iqn.2026-11.org.tandem:sbd.img"), "{ls}");

    // Mutual: the initiator checks the target's answer.
    let inq = run_ok(
        libiscsi("iscsi-inq")
            .env("LIBISCSI_CHAP_TARGET_USERNAME", TARGET_USER)
            .env("LIBISCSI_CHAP_TARGET_PASSWORD", TARGET_SECRET)
            .arg(t.lun("sbd.img", good)),
    );
    assert!(inq.contains("Vendor:TANDEM"), "{inq}");
    let fooled = run(libiscsi("iscsi-inq")
        .env("LIBISCSI_CHAP_TARGET_USERNAME", TARGET_USER)
        .env("LIBISCSI_CHAP_TARGET_PASSWORD", "not-the-target-secret")
        .arg(t.lun("sbd.img", good)));
    assert!(
        !fooled.status.success(),
        "the initiator must refuse a target that does not know the mutual secret"
    );

    // Wrong secret, wrong user, no credentials: refused at login and logged.
    for creds in [
        Some((USER, "wrong-secret-123")),
        Some(("mallory", SECRET)),
        None,
    ] {
        let out = run(libiscsi("iscsi-inq").arg(t.lun("sbd.img", creds)));
        assert!(!out.status.success(), "{creds:?} must be refused");
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Authentication failure"), "{creds:?}: {text}");
    }
    let log = t.log();
    assert!(
        log.contains("CHAP authentication of user \"alice\" failed"),
        "{log}"
    );
    assert!(
        log.contains("CHAP authentication of user \"mallory\" failed"),
        "{log}"
    );
    assert!(!log.contains(SECRET), "secrets are never logged");
}

/// CUnit's verdicts from `iscsi-test-cu`, and the tests that passed by skipping (CUnit counts a
/// test that skips an unimplemented command as passed).
#[derive(Debug)]
struct Verdicts {
    passed: usize,
    failed: usize,
    skipped: usize,
    failures: Vec<String>,
}

fn parse_verdicts(output: &str) -> Verdicts {
    let mut tests: Vec<(String, String)> = Vec::new();
    let mut suite = String::new();
    let mut in_test = false;
    for line in output.lines() {
        if let Some(s) = line.strip_prefix("Suite: ") {
            suite = s.trim().to_string();
            in_test = false;
        } else if let Some(rest) = line.trim_start().strip_prefix("Test: ") {
            let (name, text) = rest.split_once(" ...").unwrap_or((rest, ""));
            tests.push((format!("{suite}.{name}"), text.to_string()));
            in_test = true;
        } else if line.starts_with("Run Summary") {
            in_test = false;
        } else if in_test {
            let last = tests.last_mut().expect("in a test");
            last.1.push('\n');
            last.1.push_str(line);
        }
    }
    let summary = output
        .lines()
        .find(|l| l.trim_start().starts_with("tests "))
        .unwrap_or_else(|| panic!("no CUnit summary in:\n{output}"));
    let n: Vec<usize> = summary
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    // tests  Total  Ran  Passed  Failed  Inactive
    assert!(n.len() >= 4, "unexpected summary {summary:?}");
    let failures = tests
        .iter()
        .filter(|(_, t)| {
            t.lines()
                .any(|l| l.trim() == "FAILED" || l.trim_end().ends_with("...FAILED"))
                || t.starts_with("FAILED")
        })
        .map(|(n, _)| n.clone())
        .collect();
    Verdicts {
        passed: n[2],
        failed: n[3],
        skipped: tests
            .iter()
            .filter(|(_, t)| t.contains("[SKIPPED]"))
            .count(),
        failures,
    }
}

/// The whole suite, with the LUN given twice so the MultipathIO tests run over two sessions
/// instead of skipping.
fn conformance(url: &str) -> (Verdicts, String) {
    let out = run(libiscsi("iscsi-test-cu")
        .args(["--dataloss", "--test=ALL"])
        .arg(url)
        .arg(url));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (parse_verdicts(&text), text)
}

#[test]
fn conformance_suite_passes_more_than_tgt() {
    let t = Targetd::start(&[], "disk.img", 64 * MIB);
    let (ours, ours_text) = conformance(&t.lun("disk.img", None));

    let tgt_port = free_port();
    let tgt_iqn = "iqn.2026-11.org.tandem:tgt";
    let tgt_dir = tempfile::tempdir().expect("temp dir");
    let mut tgtd_cmd = Command::new(tool("tgtd", "tgt"));
    tgtd_cmd
        .arg("--iscsi")
        .arg(format!("portal=127.0.0.1:{tgt_port}"));
    let tgtd = Tgtd::start(
        tgtd_cmd,
        20_000 + std::process::id() % 10_000,
        tgt_iqn,
        &tandem_tests::sparse_file(tgt_dir.path(), "tgt.img", 64 * MIB),
        None,
    );
    let (theirs, _) = conformance(&format!("iscsi://127.0.0.1:{tgt_port}/{tgt_iqn}/1"));
    drop(tgtd);

    eprintln!("iscsi-test-cu --dataloss --test=ALL URL URL ({CONFORMANCE_TESTS} tests)");
    eprintln!("target          passed  failed  skipped(of passed)");
    eprintln!(
        "tandem targetd  {:6}  {:6}  {:6}",
        ours.passed, ours.failed, ours.skipped
    );
    eprintln!(
        "tgt 1.0.85      {:6}  {:6}  {:6}",
        theirs.passed, theirs.failed, theirs.skipped
    );
    eprintln!("tandem failures: {:?}", ours.failures);
    eprintln!("tgt failures: {:?}", theirs.failures);
    assert_eq!(
        ours.passed + ours.failed,
        CONFORMANCE_TESTS,
        "the whole suite ran:\n{ours_text}"
    );
    assert!(
        ours.passed >= CONFORMANCE_PASS_FLOOR,
        "{} passed, the floor is {CONFORMANCE_PASS_FLOOR}; failures: {:?}\n{ours_text}",
        ours.passed,
        ours.failures
    );
    assert!(
        ours.passed >= theirs.passed && ours.failed <= theirs.failed,
        "tgt did better: ours {ours:?}, tgt {theirs:?}"
    );
}

#[test]
fn verdict_parser_counts_failures_and_skips() {
    let text = "Suite: A\n  Test: One ...passed\n  Test: Two ...    [SKIPPED] x is not implemented.\npassed\n  Test: Three ...FAILED\n    1. a.c:1 - CU_FAIL\nRun Summary:    Type  Total    Ran Passed Failed Inactive\n              suites      1      1    n/a      0        0\n               tests      3      3      2      1        0\n";
    let v = parse_verdicts(text);
    assert_eq!((v.passed, v.failed, v.skipped), (2, 1, 1));
    assert_eq!(v.failures, vec!["A.Three".to_string()]);
}
