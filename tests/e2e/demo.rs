//! The README's first command: `replctl demo` brings up two nodes on loopback, syncs them and
//! prints the status, the NBD URIs and how to mount; it leaves nothing running behind.

use std::process::Command;

use tandem_tests::{bin, run_ok};

#[test]
fn demo_syncs_two_nodes_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    let out = run_ok(
        Command::new(bin("replctl"))
            .args(["demo", "--exit-after-sync", "--dir"])
            .arg(&demo_dir),
    );
    assert!(out.contains("demo: alpha and beta connected"), "{out}");
    assert!(
        out.contains("r0 role:Primary\n  disk:UpToDate\n  beta connection:Connected role:Secondary\n    replication:Established peer-disk:UpToDate"),
        "{out}"
    );
    assert!(
        out.contains(
            "r0 role:Secondary\n  disk:UpToDate\n  alpha connection:Connected role:Primary"
        ),
        "{out}"
    );
    assert!(out.contains("NBD over TCP:   nbd://127.0.0.1:"), "{out}");
    assert!(out.contains("nbdfuse"), "{out}");
    // The daemons are gone: their control sockets were removed on shutdown.
    for node in ["alpha", "beta"] {
        let sock = demo_dir.join(format!("run-{node}/replicatord.sock"));
        assert!(!sock.exists(), "{} is still there", sock.display());
        let log = std::fs::read_to_string(demo_dir.join(format!("{node}.log"))).unwrap();
        assert!(log.contains("shutting down"), "{node}.log:\n{log}");
    }
    let alpha = std::fs::read(demo_dir.join("alpha.img")).unwrap();
    let beta = std::fs::read(demo_dir.join("beta.img")).unwrap();
    let usable = (512 << 20) - (1 << 20);
    assert!(
        alpha[..usable] == beta[..usable],
        "the demo's replicas are identical"
    );
}
