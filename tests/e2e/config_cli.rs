//! `replctl dump` and config errors as a user sees them: the DRBD fixtures load with warnings,
//! the normalized dump parses back to itself, mistakes exit 1 with `file:line:column`.

use std::process::Command;

use tandem_tests::{bin, run, run_fails, run_ok, workspace};

#[test]
fn drbd_fixtures_dump_with_warnings() {
    let out = run(Command::new(bin("replctl"))
        .arg("-c")
        .arg(workspace().join("tests/fixtures/drbd/drbd.conf"))
        .arg("dump"));
    assert!(out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("global_common.conf:7:9: warning: 'wfc-timeout' in startup"),
        "{stderr}"
    );
    assert!(stderr.contains("r1-drbd9.res:"), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("resource r0 {") && stdout.contains("resource r1 {"),
        "{stdout}"
    );
    assert!(
        stdout.contains("protocol             B;"),
        "common merged into r0:\n{stdout}"
    );
}

#[test]
fn dump_is_a_fixed_point() {
    let dir = tempfile::tempdir().unwrap();
    for example in ["two-node.conf", "external-md.conf", "cluster.conf"] {
        let first = run_ok(
            Command::new(bin("replctl"))
                .arg("-c")
                .arg(workspace().join("replicator/examples").join(example))
                .arg("dump"),
        );
        let path = dir.path().join(example);
        std::fs::write(&path, &first).unwrap();
        let second = run_ok(
            Command::new(bin("replctl"))
                .arg("-c")
                .arg(&path)
                .arg("dump"),
        );
        assert_eq!(first, second, "{example}");
    }
}

#[test]
fn config_errors_exit_1_with_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.conf");
    std::fs::write(&path, "resource r0 {\n    net { protocol D; }\n}\n").unwrap();
    let err = run_fails(
        Command::new(bin("replctl"))
            .arg("-c")
            .arg(&path)
            .arg("dump"),
    );
    assert_eq!(
        err.trim(),
        format!(
            "replctl: error: {}:2:20: 'D' is not a valid protocol (use A, B, C)",
            path.display()
        )
    );
    let err = run_fails(
        Command::new(bin("replctl"))
            .arg("-c")
            .arg(&path)
            .args(["dump", "r9"]),
    );
    assert!(err.contains("error"), "{err}");

    let two = workspace().join("replicator/examples/two-node.conf");
    let err = run_fails(
        Command::new(bin("replctl"))
            .arg("-c")
            .arg(&two)
            .args(["dump", "r9"]),
    );
    assert!(
        err.contains("no resource 'r9' in the config (it has: r0)"),
        "{err}"
    );
    let err = run_fails(
        Command::new(bin("replctl"))
            .arg("-c")
            .arg(&two)
            .args(["--node", "gamma", "dump-md", "r0"]),
    );
    assert!(err.contains("has no 'on gamma' section"), "{err}");
}
