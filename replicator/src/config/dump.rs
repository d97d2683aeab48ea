//! `replctl dump`: the validated configuration printed back in normalized form.
//!
//! Every resource is printed whole, with `common` merged in and every implemented option shown
//! with its effective value (defaults included), in DRBD's syntax and units, so that what is
//! printed parses back to the same configuration. Options tandem does not implement are printed
//! as they were written.

use std::fmt::Write;

use super::model::*;
use super::syntax::{always_quote, quote, Item, Word};
use super::units::{self, format_size, KIB, SECTOR};

fn word(w: &Word) -> String {
    if w.quoted {
        always_quote(&w.text)
    } else {
        quote(&w.text)
    }
}

struct Out {
    text: String,
    depth: usize,
}

impl Out {
    fn line(&mut self, s: impl AsRef<str>) {
        for _ in 0..self.depth {
            self.text.push_str("    ");
        }
        self.text.push_str(s.as_ref());
        self.text.push('\n');
    }
    fn open(&mut self, s: impl AsRef<str>) {
        self.line(format!("{} {{", s.as_ref()));
        self.depth += 1;
    }
    fn close(&mut self) {
        self.depth -= 1;
        self.line("}");
    }
    fn opt(&mut self, name: &str, value: impl std::fmt::Display) {
        self.line(format!("{name:<20} {value};"));
    }
    fn raw(&mut self, item: &Item) {
        let words: Vec<String> = item.words.iter().map(word).collect();
        match &item.body {
            None => self.line(format!("{};", words.join(" "))),
            Some(body) => {
                self.open(words.join(" "));
                for child in body {
                    self.raw(child);
                }
                self.close();
            }
        }
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Prints the whole configuration, or only the resource `only`.
pub fn dump(config: &Config, only: Option<&str>) -> String {
    let mut o = Out {
        text: String::new(),
        depth: 0,
    };
    if only.is_none() {
        o.line("# tandem: validated configuration, normalized (common merged into each resource)");
        o.open("global");
        if let Some(u) = &config.global.usage_count {
            o.opt("usage-count", u);
        }
        for item in &config.global.unimplemented {
            o.raw(item);
        }
        o.close();
        o.line("");
    }
    for r in config
        .resources
        .iter()
        .filter(|r| only.is_none_or(|n| n == r.name))
    {
        resource(&mut o, r);
        o.line("");
    }
    if let (None, Some(c)) = (only, &config.cluster) {
        cluster(&mut o, c);
        o.line("");
    }
    if let (None, Some(t)) = (only, &config.targetd) {
        o.text.push_str(&t.dump());
    }
    while o.text.ends_with("\n\n") {
        o.text.pop();
    }
    o.text
}

fn resource(o: &mut Out, r: &Resource) {
    o.open(format!("resource {}", quote(&r.name)));
    let n = &r.net;
    o.open("net");
    o.opt("protocol", n.protocol);
    o.opt("after-sb-0pri", &n.after_sb_0pri);
    o.opt("after-sb-1pri", n.after_sb_1pri);
    o.opt("after-sb-2pri", n.after_sb_2pri);
    o.opt("rr-conflict", n.rr_conflict);
    o.opt("always-asbp", yes_no(n.always_asbp));
    o.opt("allow-two-primaries", yes_no(n.allow_two_primaries));
    for (name, alg) in [
        ("verify-alg", n.verify_alg),
        ("csums-alg", n.csums_alg),
        ("data-integrity-alg", n.data_integrity_alg),
    ] {
        if let Some(alg) = alg {
            o.opt(name, alg);
        }
    }
    if let Some(alg) = n.cram_hmac_alg {
        o.opt("cram-hmac-alg", alg);
    }
    if let Some(secret) = &n.shared_secret {
        o.opt("shared-secret", always_quote(secret));
    }
    o.opt("sndbuf-size", format_size(n.sndbuf_size_bytes, 1));
    o.opt("rcvbuf-size", format_size(n.rcvbuf_size_bytes, 1));
    o.opt("max-buffers", n.max_buffers);
    o.opt("max-epoch-size", n.max_epoch_size);
    o.opt("timeout", n.timeout_ms / 100);
    o.opt("connect-int", n.connect_int_ms / 1000);
    o.opt("ping-int", n.ping_int_ms / 1000);
    o.opt("ping-timeout", n.ping_timeout_ms / 100);
    o.opt("ko-count", n.ko_count);
    o.opt("fencing", n.fencing);
    for item in &n.unimplemented {
        o.raw(item);
    }
    o.close();

    let d = &r.disk;
    o.open("disk");
    if let Some(size) = d.size_bytes {
        o.opt("size", format_size(size, SECTOR));
    }
    o.opt("on-io-error", d.on_io_error);
    o.opt("disk-flushes", yes_no(d.disk_flushes));
    o.opt("md-flushes", yes_no(d.md_flushes));
    o.opt("resync-rate", format_size(d.resync_rate_bytes_per_s, KIB));
    o.opt("c-plan-ahead", d.c_plan_ahead_ms / 100);
    o.opt("c-fill-target", format_size(d.c_fill_target_bytes, SECTOR));
    o.opt("c-delay-target", d.c_delay_target_ms / 100);
    o.opt("c-max-rate", format_size(d.c_max_rate_bytes_per_s, KIB));
    o.opt("c-min-rate", format_size(d.c_min_rate_bytes_per_s, KIB));
    o.opt("al-extents", d.al_extents);
    for item in &d.unimplemented {
        o.raw(item);
    }
    o.close();

    for (name, other) in [("startup", &r.startup), ("options", &r.options)] {
        if !other.unimplemented.is_empty() {
            o.open(name);
            for item in &other.unimplemented {
                o.raw(item);
            }
            o.close();
        }
    }
    if !r.handlers.commands.is_empty() {
        o.open("handlers");
        for (name, cmd) in &r.handlers.commands {
            o.opt(name, always_quote(cmd));
        }
        o.close();
    }
    exports(o, &r.export);
    for h in &r.hosts {
        o.open(format!("on {}", quote(&h.name)));
        if let Some(id) = h.node_id {
            o.opt("node-id", id);
        }
        if let Some(a) = h.address {
            let family = if a.addr.is_ipv6() { "ipv6" } else { "ipv4" };
            o.opt("address", format!("{family} {}", a.addr));
        }
        if let Some(e) = &h.export {
            exports(o, e);
        }
        for v in &h.volumes {
            o.open(format!("volume {}", v.number));
            if let Some(dev) = &v.device {
                o.opt("device", dev);
            }
            match &v.disk {
                BackingDisk::None => o.opt("disk", "none"),
                BackingDisk::Path(p) => o.opt("disk", quote(&p.display().to_string())),
            }
            match &v.meta_disk {
                None => {}
                Some(MetaDisk::Internal) => o.opt("meta-disk", "internal"),
                Some(MetaDisk::External { path, index }) => {
                    let mut s = quote(&path.display().to_string());
                    if let Some(i) = index {
                        let _ = write!(s, " [{i}]");
                    }
                    o.opt("meta-disk", s);
                }
            }
            o.close();
        }
        o.close();
    }
    for item in &r.unimplemented {
        o.raw(item);
    }
    o.close();
}

fn exports(o: &mut Out, e: &Exports) {
    if e.nbd.is_some() || e.iscsi.is_some() {
        o.open("export");
        if let Some(a) = e.nbd {
            o.opt("nbd", a);
        }
        if let Some(a) = e.iscsi {
            o.opt("iscsi", a);
        }
        o.close();
    }
}

fn cluster(o: &mut Out, c: &Cluster) {
    o.open(format!("cluster {}", quote(&c.name)));
    for n in &c.nodes {
        o.open(format!("node {}", quote(&n.name)));
        for a in &n.addresses {
            o.opt("address", a);
        }
        for f in &n.fence {
            match f {
                FenceMethod::Ifmib {
                    switch,
                    community,
                    port,
                } => {
                    o.open("fence ifmib");
                    o.opt("switch", quote(switch));
                    o.opt("community", quote(community));
                    o.opt("port", quote(port));
                    o.close();
                }
                FenceMethod::Sbd => o.line("fence sbd;"),
            }
        }
        o.close();
    }
    if let Some(s) = &c.sbd {
        o.open("sbd");
        o.opt("device", quote(&s.device));
        o.opt("watchdog", quote(&s.watchdog.display().to_string()));
        o.opt("watchdog-timeout", s.watchdog_timeout_s);
        o.opt("msgwait", s.msgwait_s);
        o.close();
    }
    o.open("quorum");
    o.opt("two-node", yes_no(c.two_node));
    o.opt("wait-for-all", yes_no(c.wait_for_all));
    o.close();
    o.opt("token", c.token_ms);
    if let Some(secret) = &c.shared_secret {
        o.opt("shared-secret", always_quote(secret));
    }
    for r in &c.resources {
        o.open(format!("resource {}", quote(&r.name)));
        if r.export_nbd {
            o.opt("export", "nbd");
        }
        if r.export_iscsi {
            o.opt("export", "iscsi");
        }
        for (agent, params) in &r.ocf {
            let mut s = quote(agent);
            for (k, v) in params {
                let _ = write!(s, " {}", quote(&format!("{k}={v}")));
            }
            o.opt("ocf", s);
        }
        for (ip, prefix) in &r.vips {
            o.opt("vip", format!("{ip}/{prefix}"));
        }
        o.opt("migration-threshold", r.migration_threshold);
        let d = units::format_duration_ms;
        o.opt("op", format!("start timeout={}", d(r.ops.start_timeout_ms)));
        o.opt("op", format!("stop timeout={}", d(r.ops.stop_timeout_ms)));
        o.opt(
            "op",
            format!(
                "monitor interval={} timeout={}",
                d(r.ops.monitor_interval_ms),
                d(r.ops.monitor_timeout_ms)
            ),
        );
        o.close();
    }
    for a in &c.alerts {
        o.opt("alert", always_quote(a));
    }
    o.close();
}
