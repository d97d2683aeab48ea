//! Tests of the whole configuration pipeline: fixtures, examples, errors, dump round trips.

use std::path::{Path, PathBuf};

use super::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse_str(text, "t.conf")
}

fn err(text: &str) -> String {
    parse(text)
        .expect_err("config should be refused")
        .to_string()
}

const MINIMAL: &str = "resource r0 {
    on alpha { disk /srv/a.img; meta-disk internal; address 127.0.0.1:7788; }
    on beta { disk /srv/b.img; meta-disk internal; address 127.0.0.1:7789; }
}";

#[test]
fn drbd84_and_drbd9_fixtures_load_with_warnings() {
    let config = Config::load(&repo().join("tests/fixtures/drbd/drbd.conf")).unwrap();
    let names: Vec<&str> = config.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["r0", "r1"]);

    let r0 = config.resource("r0").unwrap();
    assert_eq!(r0.net.protocol, Protocol::B, "common's protocol B applies");
    assert_eq!(r0.net.after_sb_0pri, AfterSb0Pri::DiscardYoungerPrimary);
    assert_eq!(r0.net.after_sb_1pri, AfterSb1Pri::DiscardSecondary);
    assert_eq!(r0.net.verify_alg, Some(DigestAlg::Md5));
    assert_eq!(r0.net.data_integrity_alg, Some(DigestAlg::Md5));
    assert_eq!(r0.net.sndbuf_size_bytes, 2048 * 1024);
    assert_eq!(r0.net.rcvbuf_size_bytes, 1024 * 1024);
    assert_eq!(r0.net.max_buffers, 36 * 1024);
    assert!(!r0.disk.disk_flushes);
    assert!(!r0.disk.md_flushes);
    assert_eq!(r0.disk.al_extents, 3389);
    assert_eq!(r0.disk.c_fill_target_bytes, 100 * units::MIB);
    assert_eq!(r0.disk.c_max_rate_bytes_per_s, 1100 * units::MIB);
    assert_eq!(r0.disk.c_plan_ahead_ms, 2500);
    assert_eq!(r0.disk.c_min_rate_bytes_per_s, 40 * units::MIB);
    let a = r0.host("node-a.example.lan").unwrap();
    assert_eq!(a.address.unwrap().addr, "192.0.2.11:7788".parse().unwrap());
    assert_eq!(a.volumes.len(), 1);
    assert_eq!(
        a.volumes[0].disk,
        BackingDisk::Path("/dev/mmcblk0p2".into())
    );
    assert_eq!(a.volumes[0].meta_disk, Some(MetaDisk::Internal));
    assert_eq!(a.volumes[0].device.as_deref(), Some("/dev/drbd0"));

    let r1 = config.resource("r1").unwrap();
    assert_eq!(r1.net.protocol, Protocol::C);
    assert_eq!(r1.net.cram_hmac_alg, Some(HmacAlg::Sha256));
    assert_eq!(r1.net.fencing, FencingPolicy::ResourceOnly);
    assert_eq!(
        r1.handlers.get("fence-peer"),
        Some("/usr/lib/drbd/crm-fence-peer.9.sh")
    );
    assert_eq!(r1.hosts.len(), 3);
    let witness = r1.host("witness.example.lan").unwrap();
    assert_eq!(witness.node_id, Some(2));
    assert_eq!(witness.volumes[0].disk, BackingDisk::None);
    assert_eq!(witness.volumes[0].meta_disk, None);

    let warned: Vec<String> = config.warnings.iter().map(|w| w.to_string()).collect();
    for option in [
        "'wfc-timeout' in startup",
        "'on-no-data-accessible' in options",
        "'disk-barrier' in disk",
        "'quorum' in options",
        "'connection-mesh' in resource r1",
        "handler 'unfence-peer'",
    ] {
        assert!(
            warned.iter().any(|w| w.contains(option)),
            "no warning for {option}: {warned:#?}"
        );
    }
    // Warnings carry the position of the option in its own file.
    assert!(
        warned
            .iter()
            .any(|w| w.contains("global_common.conf:7:9: warning: 'wfc-timeout'")),
        "{warned:#?}"
    );
    assert!(warned.iter().any(|w| w.contains("r0.res:")), "{warned:#?}");
}

#[test]
fn examples_load() {
    for name in ["two-node.conf", "external-md.conf", "cluster.conf"] {
        let path = repo().join("replicator/examples").join(name);
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(config.warnings.is_empty(), "{name}: {:?}", config.warnings);
        config
            .node_view(&config.resources[0].name, "alpha")
            .unwrap();
        config.node_view(&config.resources[0].name, "beta").unwrap();
    }
    let c = Config::load(&repo().join("replicator/examples/cluster.conf")).unwrap();
    let cluster = c.cluster.unwrap();
    assert_eq!(cluster.nodes.len(), 2);
    assert_eq!(cluster.nodes[0].addresses.len(), 2);
    assert_eq!(cluster.nodes[0].fence.len(), 2);
    assert!(cluster.two_node && cluster.wait_for_all);
    assert_eq!(cluster.sbd.unwrap().msgwait_s, 10);
    assert_eq!(cluster.shared_secret.as_deref(), Some("change-me-too"));
    assert_eq!(
        cluster.resources[0].vips,
        [("10.0.0.10".parse().unwrap(), 24)]
    );
    let ext = Config::load(&repo().join("replicator/examples/external-md.conf")).unwrap();
    let v = ext
        .node_view("data", "alpha")
        .unwrap()
        .local
        .first_volume()
        .clone();
    assert_eq!(
        v.meta_disk,
        Some(MetaDisk::External {
            path: "/dev/mmcblk0p3".into(),
            index: None
        })
    );
    assert_eq!(
        ext.resources[0].export.nbd,
        Some("127.0.0.1:10809".parse().unwrap())
    );
}

#[test]
fn design_example_values() {
    let c = Config::load(&repo().join("replicator/examples/two-node.conf")).unwrap();
    let r = c.resource("r0").unwrap();
    assert_eq!(r.net.after_sb_0pri, AfterSb0Pri::DiscardZeroChanges);
    assert_eq!(r.net.csums_alg, Some(DigestAlg::Crc32c));
    assert_eq!(r.net.shared_secret.as_deref(), Some("change-me"));
    assert_eq!(r.disk.resync_rate_bytes_per_s, 100 * units::MIB);
    assert_eq!(r.disk.c_fill_target_bytes, units::MIB);
    assert_eq!(r.export.iscsi, Some("0.0.0.0:3260".parse().unwrap()));
    let view = c.node_view("r0", "beta").unwrap();
    assert_eq!(
        view.peers().map(|h| h.name.as_str()).collect::<Vec<_>>(),
        ["alpha"]
    );
}

#[test]
fn defaults_are_drbds() {
    let c = parse(MINIMAL).unwrap();
    let r = &c.resources[0];
    assert_eq!(r.net, NetOptions::default());
    assert_eq!(r.net.protocol, Protocol::C);
    assert_eq!(r.net.timeout_ms, 6000);
    assert_eq!(r.net.ping_timeout_ms, 500);
    assert_eq!(r.disk.resync_rate_bytes_per_s, 250 * 1024);
    assert_eq!(r.disk.al_extents, 1237);
    assert!(c.warnings.is_empty());
}

#[test]
fn resource_options_override_common() {
    let c = parse(&format!(
        "common {{ net {{ protocol A; ko-count 3; }} }}\n{}",
        MINIMAL.replace("resource r0 {", "resource r0 { net { protocol B; }")
    ))
    .unwrap();
    assert_eq!(c.resources[0].net.protocol, Protocol::B);
    assert_eq!(c.resources[0].net.ko_count, 3);
}

#[test]
fn errors_print_file_line_column() {
    let cases: &[(&str, &str)] = &[
        (
            "resource r0 { net { protocol D; } }",
            "t.conf:1:30: 'D' is not a valid protocol (use A, B, C)",
        ),
        (
            "bogus { }",
            "t.conf:1:1: unknown keyword 'bogus' at top level",
        ),
        (
            "resource r0 {\n net { frobnicate yes; }\n}",
            "t.conf:2:8: unknown option 'frobnicate' in net",
        ),
        (
            "resource r0 { disk { resync-rate 5G; } }",
            "t.conf:1:34: resync-rate 5G is out of range (1K to 4G)",
        ),
        (
            "resource r0 { disk { al-extents 3; } }",
            "t.conf:1:33: al-extents 3 is out of range (7 to 6433)",
        ),
        (
            "resource r0 { net { protocol A; protocol B; } }",
            "t.conf:1:33: duplicate 'protocol' in resource net (first given at t.conf:1:21)",
        ),
        (
            "resource r0 { net { } net { } }",
            "t.conf:1:23: duplicate 'net' section in resource (first at t.conf:1:15)",
        ),
        (
            "global { } global { }",
            "t.conf:1:12: duplicate 'global' section (first at t.conf:1:1)",
        ),
        (
            "resource r0 { }",
            "t.conf:1:1: resource r0 has no 'on HOST' section",
        ),
        (
            "resource r0 { on a { disk /x; address 1.2.3.4:1; } }",
            "t.conf:1:15: on a: volume 0 has no meta-disk (use 'meta-disk internal;')",
        ),
        (
            "resource r0 { on a { meta-disk internal; address 1.2.3.4:1; } }",
            "t.conf:1:15: on a: volume 0 has no disk (write 'disk none;' for a diskless node)",
        ),
        (
            "resource r0 { net { max-buffers 36x; } }",
            "t.conf:1:33: '36x' has an unknown suffix 'x' (use k, M or G)",
        ),
        (
            "resource r0 { net { shared-secret; } }",
            "t.conf:1:21: 'shared-secret' needs a value",
        ),
        (
            "resource r0 { on a { disk /x; meta-disk internal; address 1.2.3.4; } }",
            "t.conf:1:59: '1.2.3.4' is not IP:PORT (IPv6 as [addr]:port)",
        ),
    ];
    for (text, want) in cases {
        let got = err(text);
        assert!(
            got.starts_with(want),
            "for {text:?}\n got: {got}\nwant: {want}"
        );
    }
}

#[test]
fn semantic_errors() {
    let two_hosts =
        |net: &str| MINIMAL.replace("resource r0 {", &format!("resource r0 {{ net {{ {net} }}"));
    assert!(err(&two_hosts("cram-hmac-alg sha256;")).contains("shared-secret is not"));
    assert!(err(&two_hosts("shared-secret x;")).contains("cram-hmac-alg is not"));
    assert!(err(&two_hosts("after-sb-0pri discard-node-gamma;")).contains("no host named gamma"));
    parse(&two_hosts("after-sb-0pri discard-node-beta;")).unwrap();
    assert!(err(&two_hosts("shared-secret \"\"; cram-hmac-alg md5;")).contains("1 to 64"));
    assert!(err(&two_hosts("verify-alg crct10dif;")).contains("not a valid verify-alg"));
    let dup_addr = MINIMAL.replace("7789", "7788");
    assert!(err(&dup_addr).contains("uses address 127.0.0.1:7788 which on alpha uses too"));
    let dup_host = MINIMAL.replace("on beta", "on alpha");
    assert!(err(&dup_host).contains("duplicate 'on alpha'"));
    let no_addr = MINIMAL.replace(" address 127.0.0.1:7789;", "");
    assert!(err(&no_addr).contains("on beta: no address"));
    let family = MINIMAL.replace("address 127.0.0.1:7789", "address ipv6 127.0.0.1:7789");
    assert!(err(&family).contains("is not an ipv6 address"));
    let sdp = MINIMAL.replace("address 127.0.0.1:7789", "address sdp 127.0.0.1:7789");
    assert!(err(&sdp).contains("not supported by tandem"));
}

#[test]
fn node_view_requires_an_on_section() {
    let c = parse(MINIMAL).unwrap();
    let e = c.node_view("r0", "gamma").unwrap_err().to_string();
    assert_eq!(
        e,
        "t.conf:1:1: resource r0 has no 'on gamma' section for this node (it has: alpha, beta); \
         pass --node NAME to choose one"
    );
    let e = c.node_view("r9", "alpha").unwrap_err().to_string();
    assert_eq!(e, "no resource 'r9' in the config (it has: r0)");
}

#[test]
fn volumes_meta_disk_forms_and_resource_level_defaults() {
    let c = parse(
        "resource r0 {
            device /dev/nbd3; meta-disk internal;
            on a { disk /a; address 10.0.0.1:7788; }
            on b { disk none; address 10.0.0.2:7788; }
            on c { address [fd00::3]:7788; volume 0 { disk /c; meta-disk /md [2]; } }
            on d { address ipv4 10.0.0.4:7788; volume 0 { disk /d; flexible-meta-disk /md4; } }
        }",
    )
    .unwrap();
    let r = &c.resources[0];
    assert_eq!(
        r.host("a").unwrap().volumes[0].device.as_deref(),
        Some("/dev/nbd3")
    );
    assert_eq!(
        r.host("a").unwrap().volumes[0].meta_disk,
        Some(MetaDisk::Internal)
    );
    assert_eq!(r.host("b").unwrap().volumes[0].disk, BackingDisk::None);
    assert_eq!(
        r.host("c").unwrap().volumes[0].meta_disk,
        Some(MetaDisk::External {
            path: "/md".into(),
            index: Some(2)
        })
    );
    assert_eq!(
        r.host("d").unwrap().volumes[0].meta_disk,
        Some(MetaDisk::External {
            path: "/md4".into(),
            index: None
        })
    );
    assert!(c
        .warnings
        .iter()
        .any(|w| w.message.contains("more than two hosts")));
}

#[test]
fn cluster_block_validation() {
    let base = |cluster: &str| {
        format!("{MINIMAL}\ncluster pi {{ node alpha {{ address 10.0.0.1; }} {cluster} }}")
    };
    parse(&base("token 1000;")).unwrap();
    assert!(err(&base("token 500;")).contains("token 500 ms is out of range"));
    assert!(err(&base(
        "sbd { device /dev/sdb; watchdog-timeout 5; msgwait 9; }"
    ))
    .contains("msgwait 9 must be at least twice watchdog-timeout 5"));
    assert!(err(&base("resource r9 { export nbd; }")).contains("'r9' is not a replicated resource"));
    assert!(err(&base("resource r0 { vip 10.0.0.10/33; }")).contains("is not IP/PREFIX"));
    assert!(err(&base("resource r0 { ocf Filesystem; }")).contains("PROVIDER:TYPE"));
    assert!(err("cluster pi { }").contains("cluster has no nodes"));
    let c = parse(&base("quorum { two-node yes; wait-for-all no; }"))
        .unwrap()
        .cluster
        .unwrap();
    assert!(c.two_node && !c.wait_for_all);
}

#[test]
fn cluster_shared_secret_is_validated_dumped_and_its_absence_warned() {
    let cluster = |inside: &str| {
        format!("{MINIMAL}\ncluster pi {{ node alpha {{ address 10.0.0.1; }} {inside} }}")
    };
    let c = parse(&cluster("shared-secret \"hb #key\";")).unwrap();
    assert_eq!(
        c.cluster.as_ref().unwrap().shared_secret.as_deref(),
        Some("hb #key")
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let printed = dump::dump(&c, None);
    assert!(
        printed
            .lines()
            .any(|l| l.trim_start().starts_with("shared-secret ") && l.ends_with(" \"hb #key\";")),
        "{printed}"
    );
    assert_dump_round_trips(&c);

    // Errors name the place.
    assert_eq!(
        err(&cluster("shared-secret \"\";")),
        "t.conf:5:61: shared-secret must be 1 to 64 characters"
    );
    assert!(err(&cluster(&format!("shared-secret {};", "x".repeat(65)))).contains("1 to 64"));
    assert!(err(&cluster("shared-secret a; shared-secret b;")).contains("duplicate"));
    assert!(err(&cluster("shared-secret;")).contains("'shared-secret' needs a value"));

    // No secret at all: warned, with the cluster's position.
    let c = parse(&cluster("")).unwrap();
    assert_eq!(c.cluster.as_ref().unwrap().shared_secret, None);
    let w: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        w.iter().any(|w| w.starts_with("t.conf:5:1: ")
            && w.contains("cluster pi has no shared-secret")),
        "{w:?}"
    );
    // A secret of one of the cluster's resources keys the heartbeats: no warning.
    let text = cluster("resource r0 { export nbd; }").replace(
        "resource r0 {\n",
        "resource r0 {\n    net { cram-hmac-alg sha256; shared-secret r0-secret; }\n",
    );
    let c = parse(&text).unwrap();
    assert!(
        !c.warnings
            .iter()
            .any(|w| w.message.contains("no shared-secret")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn cluster_resource_ops_set_timeouts_and_the_monitor_interval() {
    let cluster = |inside: &str| {
        format!(
            "{MINIMAL}\ncluster pi {{ node alpha {{ address 10.0.0.1; }} shared-secret k; resource r0 {{ ocf heartbeat:Dummy; {inside} }} }}"
        )
    };
    let ops = |inside: &str| parse(&cluster(inside)).unwrap().cluster.unwrap().resources[0].ops;
    assert_eq!(ops(""), OcfOps::DEFAULT);
    assert_eq!(
        ops("op monitor interval=10s timeout=20s; op start timeout=2m; op stop timeout=1500ms;"),
        OcfOps {
            start_timeout_ms: 120_000,
            stop_timeout_ms: 1_500,
            monitor_interval_ms: 10_000,
            monitor_timeout_ms: 20_000,
        }
    );
    assert_eq!(
        ops("op monitor interval=30;").monitor_interval_ms,
        30_000,
        "a bare number is seconds, as in Pacemaker"
    );
    let c = parse(&cluster(
        "op monitor interval=10s timeout=1500ms; op start timeout=1h;",
    ))
    .unwrap();
    let printed = dump::dump(&c, None);
    for line in [
        "op                   start timeout=3600s;",
        "op                   stop timeout=60s;",
        "op                   monitor interval=10s timeout=1500ms;",
    ] {
        assert!(printed.contains(line), "{line}\n{printed}");
    }
    assert_dump_round_trips(&c);

    // Errors name the place (line 5: the cluster block; the setting at column 110).
    assert_eq!(
        err(&cluster("op monitor interval=0s;")),
        "t.conf:5:110: interval 0s is out of range (1s to 24h)"
    );
    assert!(err(&cluster("op monitor interval=2d;")).contains("unknown unit 'd'"));
    assert!(
        err(&cluster("op start interval=10s;")).contains("op start takes timeout (not 'interval')")
    );
    assert!(err(&cluster("op promote timeout=10s;")).contains("unknown operation 'promote'"));
    assert!(err(&cluster("op monitor interval;")).contains("not name=value"));
    assert!(
        err(&cluster("op stop timeout=5s; op stop timeout=9s;")).contains("duplicate 'op stop'")
    );
    assert!(err(&cluster("op;")).contains("op needs an operation"));
    assert!(err(&cluster("op monitor timeout=25h;")).contains("out of range"));
}

fn assert_dump_round_trips(config: &Config) {
    let first = dump::dump(config, None);
    let reparsed =
        parse(&first).unwrap_or_else(|e| panic!("dump does not parse back: {e}\n{first}"));
    let second = dump::dump(&reparsed, None);
    assert_eq!(first, second);
    assert_eq!(config.resources.len(), reparsed.resources.len());
    for (a, b) in config.resources.iter().zip(&reparsed.resources) {
        assert_eq!(a.net.protocol, b.net.protocol);
        assert_eq!(a.disk.c_fill_target_bytes, b.disk.c_fill_target_bytes);
        assert_eq!(a.net.shared_secret, b.net.shared_secret);
        assert_eq!(a.hosts.len(), b.hosts.len());
        for (x, y) in a.hosts.iter().zip(&b.hosts) {
            assert_eq!(
                (&x.name, x.address, &x.volumes),
                (&y.name, y.address, &y.volumes)
            );
        }
    }
    assert_eq!(config.cluster, reparsed.cluster);
    assert_eq!(
        config.targetd.as_ref().map(|t| t.dump()),
        reparsed.targetd.as_ref().map(|t| t.dump())
    );
}

#[test]
fn targetd_block_is_validated_and_dumped() {
    let text = format!(
        "{MINIMAL}\ntargetd {{\n    iscsi 0.0.0.0;\n    chap alice alice-secret-12;\n    \
         target sbd {{ file /srv/sbd.img; }}\n}}\n"
    );
    let c = parse(&text).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let t = c.targetd.as_ref().unwrap();
    assert_eq!(t.iscsi, Some("0.0.0.0:3260".parse().unwrap()));
    assert_eq!(t.targets[0].name, "sbd");
    let printed = dump::dump(&c, None);
    assert!(printed.contains("targetd {\n"), "{printed}");
    assert!(printed.contains("    target sbd {\n"), "{printed}");
    assert!(!dump::dump(&c, Some("r0")).contains("targetd"));
    assert_dump_round_trips(&c);
    // The block is checked by every binary that reads the file, with its position.
    let bad = text.replace("file /srv/sbd.img;", "file /srv/sbd.img; size 1G;");
    assert_eq!(
        err(&bad),
        "t.conf:8:37: unknown keyword 'size' in target (use file or read-only)"
    );
    assert!(err(&format!("{text}targetd {{ }}")).contains("duplicate 'targetd' block"));
}

#[test]
fn dump_round_trips_fixtures_and_examples() {
    assert_dump_round_trips(&Config::load(&repo().join("tests/fixtures/drbd/drbd.conf")).unwrap());
    for name in ["two-node.conf", "external-md.conf", "cluster.conf"] {
        assert_dump_round_trips(
            &Config::load(&repo().join("replicator/examples").join(name)).unwrap(),
        );
    }
    let tricky = MINIMAL.replace(
        "resource r0 {",
        "resource r0 { net { cram-hmac-alg sha1; shared-secret \"a \\\"quoted\\\" #secret\"; } disk { c-fill-target 3s; size 1G; }",
    );
    let c = parse(&tricky).unwrap();
    assert_eq!(
        c.resources[0].net.shared_secret.as_deref(),
        Some("a \"quoted\" #secret")
    );
    assert_dump_round_trips(&c);
}

#[test]
fn dump_one_resource() {
    let c = Config::load(&repo().join("tests/fixtures/drbd/drbd.conf")).unwrap();
    let text = dump::dump(&c, Some("r1"));
    assert!(text.starts_with("resource r1 {"), "{text}");
    assert!(!text.contains("resource r0"));
    assert!(text.contains("    on witness.example.lan {"));
    assert!(text.contains("disk                 none;"), "{text}");
}
