//! A replicated resource exported over iSCSI by replicatord: the Primary serves LUN 0 (read by
//! libiscsi's tools, written by qemu's iSCSI driver, and the writes reach the peer's disk), the
//! Secondary serves no LUN, and demotion withdraws it.

use tandem_tests::pair::Pair;
use tandem_tests::{run, run_ok, tool};

#[test]
fn the_primary_exports_lun_0_and_demotion_withdraws_it() {
    let mut p = Pair::with_config(
        47,
        'C',
        "",
        "c-plan-ahead 0; resync-rate 1G;",
        "export { iscsi 0.0.0.0:3260; }",
    );
    p.up_synced();
    let url = |i: usize| format!("iscsi://{}:3260/iqn.2026-11.org.tandem:r0/0", p.nodes[i].ip);
    let size = p.size();

    let cap = run_ok(
        p.ns_cmd(0, tool("iscsi-readcapacity16", "libiscsi-bin"))
            .arg(url(0)),
    );
    assert!(cap.contains(&format!("Total size:{size}")), "{cap}");
    let inq = run_ok(p.ns_cmd(0, tool("iscsi-inq", "libiscsi-bin")).arg(url(0)));
    assert!(inq.to_lowercase().contains("tandem"), "{inq}");

    run_ok(
        p.ns_cmd(0, tool("qemu-io", "qemu-utils"))
            .args(["-f", "raw", "-c", "write -P 90 1048576 1M"])
            .arg(url(0)),
    );
    let beta = std::fs::read(&p.nodes[1].disk).unwrap();
    assert!(
        beta[1 << 20..2 << 20].iter().all(|&b| b == 90),
        "the iSCSI write reached the peer"
    );

    // The Secondary has no LUN to offer.
    let out = run(p.ns_cmd(1, tool("iscsi-inq", "libiscsi-bin")).arg(url(1)));
    assert!(
        !out.status.success(),
        "the Secondary must not serve the LUN"
    );

    run_ok(&mut p.replctl(0, &["secondary", "r0"]));
    let out = run(p.ns_cmd(0, tool("iscsi-inq", "libiscsi-bin")).arg(url(0)));
    assert!(!out.status.success(), "demotion withdraws the LUN");
    assert!(p.log(0).contains("iSCSI LUN 0 exported"), "{}", p.log(0));
}
