//! The fence agents' interface as Pacemaker's fencer uses it: `metadata` validates against
//! fence-agents' own schema (Debian's fence-agents ships `metadata.rng`), `validate-all` and bad
//! input give the documented exit statuses. The agents' actions against real devices are tested
//! beside the devices: `sbd_watch` (SBD) and `ifmib_snmpd` (snmpd).

use std::process::{Command, Output};

use tandem_tests::{bin, run_ok, run_with_stdin, tool};

const SCHEMA: &str = "/usr/share/cluster/relaxng/metadata.rng";
const AGENTS: [&str; 2] = ["fence_tandem_sbd", "fence_tandem_ifmib"];

/// Runs an agent with `input` on stdin and no arguments, as the fencer does.
fn with_stdin(agent: &str, input: &str) -> Output {
    run_with_stdin(&mut Command::new(bin(agent)), input)
}

#[test]
fn metadata_validates_against_fence_agents_schema() {
    // The schema comes with Debian's fence-agents; missing it must fail, not skip.
    tool("fence_ifmib", "fence-agents");
    assert!(
        std::path::Path::new(SCHEMA).exists(),
        "{SCHEMA} is missing: apt-get install -y fence-agents"
    );
    let dir = tempfile::tempdir().unwrap();
    for agent in AGENTS {
        // Both ways of asking: a flag, and stdin.
        let by_flag = run_ok(Command::new(bin(agent)).args(["-o", "metadata"]));
        let by_stdin = with_stdin(agent, "action=metadata\n");
        assert!(by_stdin.status.success());
        assert_eq!(String::from_utf8(by_stdin.stdout).unwrap(), by_flag);
        assert!(by_flag.contains(&format!("<resource-agent name=\"{agent}\"")));
        for action in [
            "on",
            "off",
            "reboot",
            "status",
            "list",
            "list-status",
            "monitor",
            "metadata",
            "validate-all",
        ] {
            assert!(
                by_flag.contains(&format!("<action name=\"{action}\"")),
                "{agent}: {action}"
            );
        }
        let file = dir.path().join(format!("{agent}.xml"));
        std::fs::write(&file, &by_flag).unwrap();
        let out = Command::new(tool("xmllint", "libxml2-utils"))
            .args(["--noout", "--relaxng", SCHEMA])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{agent} metadata does not validate:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn validate_all_and_bad_input() {
    let ok = with_stdin(
        "fence_tandem_ifmib",
        "action=validate-all\nip=10.0.0.1\ncommunity=private\nport=3\n",
    );
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    let ok = with_stdin(
        "fence_tandem_sbd",
        "action=validate-all\ndevices=/dev/null\nplug=alpha\nnodename=alpha\n",
    );
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    for (agent, input, want) in [
        (
            "fence_tandem_ifmib",
            "action=off\nport=3\n",
            "'ip' is required",
        ),
        (
            "fence_tandem_ifmib",
            "action=off\nip=x\n",
            "'plug' is required",
        ),
        (
            "fence_tandem_ifmib",
            "action=off\nip=x\nport=1\nsnmp_version=5\n",
            "not one of",
        ),
        (
            "fence_tandem_sbd",
            "action=fly\ndevices=/dev/null\nport=a\n",
            "unknown action",
        ),
        (
            "fence_tandem_sbd",
            "action=off\nport=alpha\n",
            "'devices' is required",
        ),
    ] {
        let out = with_stdin(agent, input);
        assert_eq!(out.status.code(), Some(1), "{agent} {input:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{agent} {input:?}: {err}");
    }
    // Flags: an unknown one is an error too.
    let out = Command::new(bin("fence_tandem_sbd"))
        .args(["--bogus", "-o", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}
