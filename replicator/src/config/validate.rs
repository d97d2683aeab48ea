//! Turns the raw syntax tree into the typed [`Config`]: checks every keyword, value and range,
//! merges `common` into each resource, and collects warnings for what DRBD knows but tandem
//! does not implement yet.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use super::model::*;
use super::syntax::{Item, Span, Word};
use super::units::{self, KIB, SECTOR};
use super::ConfigError;
use target::conf::check::{flag, no_duplicates, no_duplicates_except, one_arg, section, statement};
use target::conf::{parse_bool, parse_socket_addr};

/// The NBD port when an `export { nbd ADDR; }` names none.
pub const DEFAULT_NBD_PORT: u16 = 10809;
/// The iSCSI port when an `export { iscsi ADDR; }` names none.
pub const DEFAULT_ISCSI_PORT: u16 = 3260;
/// DRBD's limit on `shared-secret`.
pub const SHARED_SECRET_MAX_CHARS: usize = 64;
/// clusterd refuses a `token` below this: heartbeats on a busy Pi jitter by hundreds of ms.
pub const MIN_TOKEN_MS: u32 = 1000;

const GLOBAL_UNIMPLEMENTED: &[&str] = &[
    "minor-count",
    "dialog-refresh",
    "disable-ip-verification",
    "udev-always-use-vnr",
    "cmd-timeout-short",
    "cmd-timeout-medium",
    "cmd-timeout-long",
];
const NET_UNIMPLEMENTED: &[&str] = &[
    "unplug-watermark",
    "tcp-cork",
    "on-congestion",
    "congestion-fill",
    "congestion-extents",
    "csums-after-crash-only",
    "use-rle",
    "socket-check-timeout",
    "transport",
    "allow-remote-read",
    "load-balance-paths",
    "tentative",
    "discard-my-data",
    "rdma-ctrl-rcvbuf-size",
    "rdma-ctrl-sndbuf-size",
];
const DISK_UNIMPLEMENTED: &[&str] = &[
    "disk-barrier",
    "disk-drain",
    "resync-after",
    "al-updates",
    "disk-timeout",
    "discard-zeroes-if-aligned",
    "read-balancing",
    "rs-discard-granularity",
    "max-bio-bvecs",
    "disable-write-same",
    "block-size",
];
const STARTUP_UNIMPLEMENTED: &[&str] = &[
    "wfc-timeout",
    "degr-wfc-timeout",
    "outdated-wfc-timeout",
    "wait-after-sb",
    "become-primary-on",
    "stacked-timeouts",
];
const OPTIONS_UNIMPLEMENTED: &[&str] = &[
    "cpu-mask",
    "on-no-data-accessible",
    "auto-promote",
    "auto-promote-timeout",
    "quorum",
    "on-no-quorum",
    "quorum-minimum-redundancy",
    "peer-ack-window",
    "peer-ack-delay",
    "twopc-timeout",
    "twopc-retry-timeout",
    "max-io-depth",
    "on-suspended-primary-outdated",
];
/// Handlers tandem runs.
pub const HANDLERS_IMPLEMENTED: &[&str] =
    &["fence-peer", "split-brain", "pri-lost-after-sb", "pri-lost"];
const HANDLERS_UNIMPLEMENTED: &[&str] = &[
    "pri-on-incon-degr",
    "pri-lost",
    "unfence-peer",
    "local-io-error",
    "initial-split-brain",
    "before-resync-target",
    "after-resync-target",
    "before-resync-source",
    "after-resync-source",
    "out-of-sync",
    "quorum-lost",
    "disconnected",
    "emergency-shutdown",
];
const RESOURCE_UNIMPLEMENTED: &[&str] = &[
    "connection-mesh",
    "connection",
    "floating",
    "stacked-on-top-of",
    "template-file",
];
const HOST_UNIMPLEMENTED: &[&str] = &["proxy"];

fn err(span: &Span, message: impl Into<String>) -> ConfigError {
    ConfigError::syntax(span, message)
}

struct Ctx {
    warnings: Vec<Warning>,
}

impl Ctx {
    fn unimplemented(&mut self, item: &Item, section: &str) {
        self.warnings.push(Warning {
            span: item.span().clone(),
            message: format!(
                "'{}' in {section} is a DRBD option tandem does not implement yet; ignored",
                item.keyword()
            ),
        });
    }
}

fn keyword<T>(
    w: &Word,
    option: &str,
    parse: impl Fn(&str) -> Option<T>,
    choices: &[&str],
) -> Result<T, ConfigError> {
    parse(&w.text).ok_or_else(|| {
        err(
            &w.span,
            format!(
                "'{}' is not a valid {option} (use {})",
                w.text,
                choices.join(", ")
            ),
        )
    })
}

fn ranged_size(item: &Item, unit: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
    let w = one_arg(item)?;
    let v = units::parse_size(&w.text, unit).map_err(|m| err(&w.span, m))?;
    if v < min || v > max {
        return Err(err(
            &w.span,
            format!(
                "{} {} is out of range ({} to {})",
                item.keyword(),
                w.text,
                units::format_size(min, unit),
                units::format_size(max, unit)
            ),
        ));
    }
    Ok(v)
}

fn ranged_count(item: &Item, min: u64, max: u64) -> Result<u32, ConfigError> {
    let w = one_arg(item)?;
    let v = units::parse_count(&w.text).map_err(|m| err(&w.span, m))?;
    if v < min || v > max {
        return Err(err(
            &w.span,
            format!(
                "{} {} is out of range ({min} to {max})",
                item.keyword(),
                w.text
            ),
        ));
    }
    u32::try_from(v).map_err(|_| err(&w.span, "value too large"))
}

/// Options of one section kind from `common`, overridden by the resource's own.
fn merged<'a>(common: Option<&'a Item>, own: Option<&'a Item>) -> Vec<&'a Item> {
    let own_items: &[Item] = own.and_then(|i| i.body.as_deref()).unwrap_or(&[]);
    let mut out: Vec<&Item> = common
        .and_then(|i| i.body.as_deref())
        .unwrap_or(&[])
        .iter()
        .filter(|c| !own_items.iter().any(|o| o.keyword() == c.keyword()))
        .collect();
    out.extend(own_items.iter());
    out
}

/// Validates parsed items into a [`Config`].
pub fn validate(items: &[Item]) -> Result<Config, ConfigError> {
    let mut ctx = Ctx {
        warnings: Vec::new(),
    };
    let mut global: Option<(&Item, Global)> = None;
    let mut common: Option<&Item> = None;
    let mut resources: Vec<&Item> = Vec::new();
    let mut cluster: Option<&Item> = None;
    for item in items {
        match item.keyword() {
            "global" => {
                if let Some((first, _)) = &global {
                    return Err(err(
                        item.span(),
                        format!("duplicate 'global' section (first at {})", first.span()),
                    ));
                }
                global = Some((item, validate_global(item, &mut ctx)?));
            }
            "common" => {
                if let Some(first) = common {
                    return Err(err(
                        item.span(),
                        format!("duplicate 'common' section (first at {})", first.span()),
                    ));
                }
                section(item, 0)?;
                common = Some(item);
            }
            "resource" => {
                section(item, 1)?;
                let name = &item.args()[0].text;
                if let Some(first) = resources.iter().find(|r| &r.args()[0].text == name) {
                    return Err(err(
                        item.span(),
                        format!("duplicate resource '{name}' (first at {})", first.span()),
                    ));
                }
                resources.push(item);
            }
            "cluster" => {
                if let Some(first) = cluster {
                    return Err(err(
                        item.span(),
                        format!("duplicate 'cluster' block (first at {})", first.span()),
                    ));
                }
                section(item, 1)?;
                cluster = Some(item);
            }
            // targetd's exports: validated below by the target crate's own code.
            target::conf::targetd::KEYWORD | "skip" => {}
            other => {
                return Err(err(
                    item.span(),
                    format!(
                        "unknown keyword '{other}' at top level (expected global, common, \
                         resource, cluster, targetd or include)"
                    ),
                ))
            }
        }
    }
    let common_sections = match common {
        Some(item) => resource_sections(item, true)?,
        None => Sections::default(),
    };
    let mut out = Vec::with_capacity(resources.len());
    for item in resources {
        out.push(validate_resource(item, &common_sections, &mut ctx)?);
    }
    let cluster = match cluster {
        Some(item) => Some(validate_cluster(item, &out, &mut ctx)?),
        None => None,
    };
    let targetd = target::conf::targetd::Targetd::from_items(items, &mut ctx.warnings)?;
    Ok(Config {
        global: global.map(|(_, g)| g).unwrap_or_default(),
        resources: out,
        cluster,
        targetd,
        warnings: ctx.warnings,
    })
}

fn validate_global(item: &Item, ctx: &mut Ctx) -> Result<Global, ConfigError> {
    let body = section(item, 0)?;
    no_duplicates(body, "global")?;
    let mut g = Global::default();
    for opt in body {
        match opt.keyword() {
            "usage-count" => {
                let w = one_arg(opt)?;
                if !matches!(w.text.as_str(), "yes" | "no" | "ask") {
                    return Err(err(&w.span, "usage-count takes yes, no or ask"));
                }
                g.usage_count = Some(w.text.clone());
            }
            k if GLOBAL_UNIMPLEMENTED.contains(&k) => {
                ctx.unimplemented(opt, "global");
                g.unimplemented.push(opt.clone());
            }
            k => return Err(err(opt.span(), format!("unknown option '{k}' in global"))),
        }
    }
    Ok(g)
}

/// The option sections of a `common` or `resource` block.
#[derive(Default)]
struct Sections<'a> {
    net: Option<&'a Item>,
    disk: Option<&'a Item>,
    startup: Option<&'a Item>,
    options: Option<&'a Item>,
    handlers: Option<&'a Item>,
}

fn resource_sections(item: &Item, is_common: bool) -> Result<Sections<'_>, ConfigError> {
    let mut s = Sections::default();
    let what = if is_common { "common" } else { "resource" };
    for child in item.body.as_deref().unwrap_or(&[]) {
        let slot = match child.keyword() {
            "net" => &mut s.net,
            "disk" if child.body.is_some() => &mut s.disk,
            "startup" => &mut s.startup,
            "options" => &mut s.options,
            "handlers" => &mut s.handlers,
            k if is_common => {
                return Err(err(
                    child.span(),
                    format!(
                        "'{k}' is not allowed in common (expected net, disk, startup, options \
                         or handlers)"
                    ),
                ))
            }
            _ => continue,
        };
        section(child, 0)?;
        no_duplicates(
            child.body.as_deref().unwrap_or(&[]),
            &format!("{what} {}", child.keyword()),
        )?;
        if let Some(first) = slot {
            return Err(err(
                child.span(),
                format!(
                    "duplicate '{}' section in {what} (first at {})",
                    child.keyword(),
                    first.span()
                ),
            ));
        }
        *slot = Some(child);
    }
    Ok(s)
}

fn validate_net(items: &[&Item], net: &mut NetOptions, ctx: &mut Ctx) -> Result<(), ConfigError> {
    for &opt in items {
        let k = opt.keyword();
        match k {
            "protocol" => {
                let w = one_arg(opt)?;
                net.protocol = keyword(w, k, Protocol::from_keyword, Protocol::KEYWORDS)?;
            }
            "after-sb-0pri" => {
                let w = one_arg(opt)?;
                net.after_sb_0pri =
                    keyword(w, k, AfterSb0Pri::from_keyword, AfterSb0Pri::KEYWORDS)?;
            }
            "after-sb-1pri" => {
                let w = one_arg(opt)?;
                net.after_sb_1pri =
                    keyword(w, k, AfterSb1Pri::from_keyword, AfterSb1Pri::KEYWORDS)?;
            }
            "after-sb-2pri" => {
                let w = one_arg(opt)?;
                net.after_sb_2pri =
                    keyword(w, k, AfterSb2Pri::from_keyword, AfterSb2Pri::KEYWORDS)?;
            }
            "rr-conflict" => {
                let w = one_arg(opt)?;
                net.rr_conflict = keyword(w, k, RrConflict::from_keyword, RrConflict::KEYWORDS)?;
            }
            "always-asbp" => net.always_asbp = flag(opt)?,
            "allow-two-primaries" => net.allow_two_primaries = flag(opt)?,
            "verify-alg" | "csums-alg" | "data-integrity-alg" => {
                let w = one_arg(opt)?;
                let alg = keyword(w, k, DigestAlg::from_keyword, DigestAlg::KEYWORDS)?;
                *match k {
                    "verify-alg" => &mut net.verify_alg,
                    "csums-alg" => &mut net.csums_alg,
                    _ => &mut net.data_integrity_alg,
                } = Some(alg);
            }
            "cram-hmac-alg" => {
                let w = one_arg(opt)?;
                net.cram_hmac_alg = Some(keyword(w, k, HmacAlg::from_keyword, HmacAlg::KEYWORDS)?);
            }
            "shared-secret" => net.shared_secret = Some(shared_secret(opt)?),
            "sndbuf-size" => net.sndbuf_size_bytes = ranged_size(opt, 1, 0, 10 * units::MIB)?,
            "rcvbuf-size" => net.rcvbuf_size_bytes = ranged_size(opt, 1, 0, 10 * units::MIB)?,
            "max-buffers" => net.max_buffers = ranged_count(opt, 32, 131_072)?,
            "max-epoch-size" => net.max_epoch_size = ranged_count(opt, 1, 20_000)?,
            "timeout" => net.timeout_ms = ranged_count(opt, 1, 600)? * 100,
            "connect-int" => net.connect_int_ms = ranged_count(opt, 1, 120)? * 1000,
            "ping-int" => net.ping_int_ms = ranged_count(opt, 1, 120)? * 1000,
            "ping-timeout" => net.ping_timeout_ms = ranged_count(opt, 1, 300)? * 100,
            "ko-count" => net.ko_count = ranged_count(opt, 0, 200)?,
            "fencing" => net.fencing = fencing(opt)?,
            _ if NET_UNIMPLEMENTED.contains(&k) => {
                ctx.unimplemented(opt, "net");
                net.unimplemented.push(opt.clone());
            }
            _ => return Err(err(opt.span(), format!("unknown option '{k}' in net"))),
        }
    }
    Ok(())
}

fn fencing(opt: &Item) -> Result<FencingPolicy, ConfigError> {
    let w = one_arg(opt)?;
    keyword(
        w,
        "fencing",
        FencingPolicy::from_keyword,
        FencingPolicy::KEYWORDS,
    )
}

fn validate_disk(
    items: &[&Item],
    disk: &mut DiskOptions,
    net: &mut NetOptions,
    ctx: &mut Ctx,
) -> Result<(), ConfigError> {
    const MAX_RATE: u64 = 4_194_304 * KIB;
    for &opt in items {
        let k = opt.keyword();
        match k {
            "size" => disk.size_bytes = Some(ranged_size(opt, SECTOR, SECTOR, u64::MAX / 2)?),
            "on-io-error" => {
                let w = one_arg(opt)?;
                disk.on_io_error = keyword(w, k, OnIoError::from_keyword, OnIoError::KEYWORDS)?;
            }
            "disk-flushes" => disk.disk_flushes = flag(opt)?,
            "md-flushes" => disk.md_flushes = flag(opt)?,
            "resync-rate" => disk.resync_rate_bytes_per_s = ranged_size(opt, KIB, KIB, MAX_RATE)?,
            "c-plan-ahead" => disk.c_plan_ahead_ms = ranged_count(opt, 0, 300)? * 100,
            "c-delay-target" => disk.c_delay_target_ms = ranged_count(opt, 1, 100)? * 100,
            "c-fill-target" => {
                disk.c_fill_target_bytes = ranged_size(opt, SECTOR, 0, 1_000_000 * SECTOR)?
            }
            "c-max-rate" => {
                disk.c_max_rate_bytes_per_s = ranged_size(opt, KIB, 250 * KIB, MAX_RATE)?
            }
            "c-min-rate" => disk.c_min_rate_bytes_per_s = ranged_size(opt, KIB, 0, MAX_RATE)?,
            "al-extents" => disk.al_extents = ranged_count(opt, 7, 6433)?,
            // DRBD 8.4 puts fencing in disk, DRBD 9 in net; it means the same.
            "fencing" => net.fencing = fencing(opt)?,
            _ if DISK_UNIMPLEMENTED.contains(&k) => {
                ctx.unimplemented(opt, "disk");
                disk.unimplemented.push(opt.clone());
            }
            _ => return Err(err(opt.span(), format!("unknown option '{k}' in disk"))),
        }
    }
    Ok(())
}

fn validate_other(
    items: &[&Item],
    known: &[&str],
    what: &str,
    ctx: &mut Ctx,
) -> Result<OtherOptions, ConfigError> {
    let mut out = OtherOptions::default();
    for &opt in items {
        if !known.contains(&opt.keyword()) {
            return Err(err(
                opt.span(),
                format!("unknown option '{}' in {what}", opt.keyword()),
            ));
        }
        statement(opt)?;
        ctx.unimplemented(opt, what);
        out.unimplemented.push(opt.clone());
    }
    Ok(out)
}

fn validate_handlers(items: &[&Item], ctx: &mut Ctx) -> Result<Handlers, ConfigError> {
    let mut h = Handlers::default();
    for &opt in items {
        let k = opt.keyword();
        let implemented = HANDLERS_IMPLEMENTED.contains(&k);
        if !implemented && !HANDLERS_UNIMPLEMENTED.contains(&k) {
            return Err(err(opt.span(), format!("unknown handler '{k}'")));
        }
        let w = one_arg(opt)?;
        if !implemented {
            ctx.warnings.push(Warning {
                span: opt.span().clone(),
                message: format!("handler '{k}' is accepted but tandem does not call it yet"),
            });
        }
        h.commands.push((k.to_string(), w.text.clone()));
    }
    Ok(h)
}

fn parse_export_addr(w: &Word, default_port: u16) -> Result<SocketAddr, ConfigError> {
    parse_socket_addr(&w.text, default_port).ok_or_else(|| {
        err(
            &w.span,
            format!("'{}' is not an address (use IP or IP:PORT)", w.text),
        )
    })
}

fn validate_export(item: &Item) -> Result<Exports, ConfigError> {
    let body = section(item, 0)?;
    no_duplicates(body, "export")?;
    let mut e = Exports::default();
    for opt in body {
        match opt.keyword() {
            "nbd" => e.nbd = Some(parse_export_addr(one_arg(opt)?, DEFAULT_NBD_PORT)?),
            "iscsi" => e.iscsi = Some(parse_export_addr(one_arg(opt)?, DEFAULT_ISCSI_PORT)?),
            k => {
                return Err(err(
                    opt.span(),
                    format!("unknown export '{k}' (use nbd or iscsi)"),
                ))
            }
        }
    }
    Ok(e)
}

/// Volume settings as given at one level (resource defaults or one host), all optional.
#[derive(Default, Clone)]
struct VolumeSpec {
    device: Option<String>,
    disk: Option<BackingDisk>,
    meta_disk: Option<MetaDisk>,
    span: Option<Span>,
}

fn parse_meta_disk(item: &Item) -> Result<MetaDisk, ConfigError> {
    let args = statement(item)?;
    let Some(first) = args.first() else {
        return Err(err(item.span(), "meta-disk needs 'internal' or a path"));
    };
    if item.keyword() == "meta-disk" && first.text == "internal" {
        if let Some(extra) = args.get(1) {
            return Err(err(&extra.span, "meta-disk internal takes no index"));
        }
        return Ok(MetaDisk::Internal);
    }
    // `PATH`, `PATH [N]`, `PATH[N]` or `PATH N`.
    let joined: String = args
        .iter()
        .map(|w| w.text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let (path, index) = match joined.find(['[', ' ']) {
        None => (joined.as_str(), None),
        Some(i) => {
            let idx = joined[i..]
                .trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .trim();
            let n: u32 = idx.parse().map_err(|_| {
                err(
                    &first.span,
                    format!("'{joined}': the meta-disk index must be a number"),
                )
            })?;
            (joined[..i].trim(), Some(n))
        }
    };
    if item.keyword() == "flexible-meta-disk" && index.is_some() {
        return Err(err(&first.span, "flexible-meta-disk takes no index"));
    }
    Ok(MetaDisk::External {
        path: PathBuf::from(path),
        index,
    })
}

fn volume_statement(item: &Item, spec: &mut VolumeSpec) -> Result<bool, ConfigError> {
    match item.keyword() {
        "device" => {
            let args = statement(item)?;
            if args.is_empty() {
                return Err(err(item.span(), "device needs a name"));
            }
            spec.device = Some(
                args.iter()
                    .map(|w| w.text.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
            );
        }
        "disk" => {
            if item.body.is_some() {
                return Err(err(
                    item.span(),
                    "disk options belong in the resource's (or common's) disk section",
                ));
            }
            let w = one_arg(item)?;
            spec.disk = Some(if w.text == "none" {
                BackingDisk::None
            } else {
                BackingDisk::Path(PathBuf::from(&w.text))
            });
        }
        "meta-disk" | "flexible-meta-disk" => spec.meta_disk = Some(parse_meta_disk(item)?),
        _ => return Ok(false),
    }
    spec.span.get_or_insert_with(|| item.span().clone());
    Ok(true)
}

fn volume_block(item: &Item, into: &mut BTreeMap<u32, VolumeSpec>) -> Result<(), ConfigError> {
    let body = section(item, 1)?;
    let w = &item.args()[0];
    let n: u32 = w
        .text
        .parse()
        .ok()
        .filter(|n| *n <= 65_535)
        .ok_or_else(|| err(&w.span, format!("'{}' is not a volume number", w.text)))?;
    if into.contains_key(&n) {
        return Err(err(item.span(), format!("duplicate volume {n}")));
    }
    no_duplicates(body, &format!("volume {n}"))?;
    let mut spec = VolumeSpec {
        span: Some(item.span().clone()),
        ..Default::default()
    };
    for child in body {
        if !volume_statement(child, &mut spec)? {
            return Err(err(
                child.span(),
                format!(
                    "unknown keyword '{}' in volume (use device, disk, meta-disk)",
                    child.keyword()
                ),
            ));
        }
    }
    into.insert(n, spec);
    Ok(())
}

fn parse_address(item: &Item) -> Result<Address, ConfigError> {
    let args = statement(item)?;
    let (family, addr) = match args {
        [addr] => (None, addr),
        [family, addr] => (Some(family), addr),
        _ => return Err(err(item.span(), "address takes [ipv4|ipv6] IP:PORT")),
    };
    let parsed: SocketAddr = addr.text.parse().map_err(|_| {
        err(
            &addr.span,
            format!("'{}' is not IP:PORT (IPv6 as [addr]:port)", addr.text),
        )
    })?;
    if let Some(f) = family {
        let ok = match f.text.as_str() {
            "ipv4" => parsed.is_ipv4(),
            "ipv6" => parsed.is_ipv6(),
            "ssocks" | "sdp" | "sci" => {
                return Err(err(
                    &f.span,
                    format!(
                        "address family '{}' is not supported by tandem (use ipv4 or ipv6)",
                        f.text
                    ),
                ))
            }
            _ => return Err(err(&f.span, format!("unknown address family '{}'", f.text))),
        };
        if !ok {
            return Err(err(
                &addr.span,
                format!("'{}' is not an {} address", addr.text, f.text),
            ));
        }
    }
    if parsed.port() == 0 {
        return Err(err(
            &addr.span,
            "the replication address needs a port (DRBD uses 7788 and up)",
        ));
    }
    Ok(Address { addr: parsed })
}

fn validate_host(
    item: &Item,
    defaults: &BTreeMap<u32, VolumeSpec>,
    ctx: &mut Ctx,
) -> Result<Host, ConfigError> {
    let body = section(item, 1)?;
    let name = item.args()[0].text.clone();
    no_duplicates_except(body, &format!("on {name}"), &["volume"])?;
    let mut own: BTreeMap<u32, VolumeSpec> = BTreeMap::new();
    let mut direct = VolumeSpec::default();
    let mut node_id = None;
    let mut address = None;
    let mut export = None;
    for child in body {
        match child.keyword() {
            "address" => address = Some(parse_address(child)?),
            "node-id" => node_id = Some(ranged_count(child, 0, 31)?),
            "export" => export = Some(validate_export(child)?),
            "volume" => volume_block(child, &mut own)?,
            k if HOST_UNIMPLEMENTED.contains(&k) => ctx.unimplemented(child, &format!("on {name}")),
            k => {
                if !volume_statement(child, &mut direct)? {
                    return Err(err(
                        child.span(),
                        format!(
                            "unknown keyword '{k}' in on {name} (use device, disk, meta-disk, \
                             address, node-id or volume)"
                        ),
                    ));
                }
            }
        }
    }
    if let Some(span) = &direct.span {
        if own.contains_key(&0) {
            return Err(err(
                span,
                "device/disk/meta-disk given both directly and in 'volume 0'",
            ));
        }
        // Errors about the implicit volume 0 point at the `on` section.
        own.insert(
            0,
            VolumeSpec {
                span: Some(item.span().clone()),
                ..direct
            },
        );
    }
    let mut numbers: Vec<u32> = own.keys().chain(defaults.keys()).copied().collect();
    numbers.sort_unstable();
    numbers.dedup();
    if numbers.is_empty() {
        return Err(err(
            item.span(),
            format!("on {name} names no disk (add disk and meta-disk)"),
        ));
    }
    let mut volumes = Vec::new();
    for n in numbers {
        let mine = own.get(&n).cloned().unwrap_or_default();
        let base = defaults.get(&n).cloned().unwrap_or_default();
        let where_ = mine
            .span
            .as_ref()
            .or(base.span.as_ref())
            .unwrap_or(item.span())
            .clone();
        let disk = mine.disk.or(base.disk).ok_or_else(|| {
            err(
                &where_,
                format!(
                    "on {name}: volume {n} has no disk (write 'disk none;' for a diskless node)"
                ),
            )
        })?;
        let meta_disk = mine.meta_disk.or(base.meta_disk);
        if disk != BackingDisk::None && meta_disk.is_none() {
            return Err(err(
                &where_,
                format!("on {name}: volume {n} has no meta-disk (use 'meta-disk internal;')"),
            ));
        }
        volumes.push(Volume {
            number: n,
            device: mine.device.or(base.device),
            disk,
            meta_disk,
        });
    }
    Ok(Host {
        name,
        span: item.span().clone(),
        node_id,
        address,
        volumes,
        export,
    })
}

fn validate_resource(
    item: &Item,
    common: &Sections<'_>,
    ctx: &mut Ctx,
) -> Result<Resource, ConfigError> {
    let name = item.args()[0].text.clone();
    let own = resource_sections(item, false)?;
    let mut net = NetOptions::default();
    let mut disk = DiskOptions::default();
    // Resource-level protocol (DRBD 8.3 style) counts like a net option.
    let body = item.body.as_deref().unwrap_or(&[]);
    no_duplicates_except(
        body,
        &format!("resource {name}"),
        &["on", "volume", "connection"],
    )?;
    let mut net_items = merged(common.net, own.net);
    if let Some(p) = body.iter().find(|i| i.keyword() == "protocol") {
        if own
            .net
            .and_then(|n| n.body.as_deref())
            .is_some_and(|b| b.iter().any(|i| i.keyword() == "protocol"))
        {
            return Err(err(
                p.span(),
                "protocol given both in the resource and in its net section",
            ));
        }
        net_items.retain(|i| i.keyword() != "protocol");
        net_items.push(p);
    }
    validate_net(&net_items, &mut net, ctx)?;
    validate_disk(&merged(common.disk, own.disk), &mut disk, &mut net, ctx)?;
    let startup = validate_other(
        &merged(common.startup, own.startup),
        STARTUP_UNIMPLEMENTED,
        "startup",
        ctx,
    )?;
    let options = validate_other(
        &merged(common.options, own.options),
        OPTIONS_UNIMPLEMENTED,
        "options",
        ctx,
    )?;
    let handlers = validate_handlers(&merged(common.handlers, own.handlers), ctx)?;

    let mut export = Exports::default();
    let mut defaults: BTreeMap<u32, VolumeSpec> = BTreeMap::new();
    let mut direct = VolumeSpec::default();
    let mut host_items = Vec::new();
    let mut unimplemented = Vec::new();
    for child in body {
        match child.keyword() {
            "net" | "startup" | "options" | "handlers" | "protocol" => {}
            "disk" if child.body.is_some() => {}
            "export" => export = validate_export(child)?,
            "on" => host_items.push(child),
            "volume" => volume_block(child, &mut defaults)?,
            k if RESOURCE_UNIMPLEMENTED.contains(&k) => {
                ctx.unimplemented(child, &format!("resource {name}"));
                unimplemented.push(child.clone());
            }
            k => {
                if !volume_statement(child, &mut direct)? {
                    return Err(err(
                        child.span(),
                        format!("unknown keyword '{k}' in resource {name}"),
                    ));
                }
            }
        }
    }
    if direct.span.is_some() {
        defaults.entry(0).or_default();
        let d = defaults.get_mut(&0).expect("inserted");
        d.device = d.device.take().or(direct.device);
        d.disk = d.disk.take().or(direct.disk);
        d.meta_disk = d.meta_disk.take().or(direct.meta_disk);
        d.span = d.span.take().or(direct.span);
    }
    if host_items.is_empty() {
        return Err(err(
            item.span(),
            format!("resource {name} has no 'on HOST' section"),
        ));
    }
    let mut hosts: Vec<Host> = Vec::new();
    for h in host_items {
        let host = validate_host(h, &defaults, ctx)?;
        if let Some(first) = hosts.iter().find(|o| o.name == host.name) {
            return Err(err(
                &host.span,
                format!(
                    "duplicate 'on {}' in resource {name} (first at {})",
                    host.name, first.span
                ),
            ));
        }
        if let Some(a) = host.address {
            if let Some(other) = hosts.iter().find(|o| o.address == Some(a)) {
                return Err(err(
                    &host.span,
                    format!(
                        "on {} uses address {} which on {} uses too",
                        host.name, a.addr, other.name
                    ),
                ));
            }
        }
        hosts.push(host);
    }
    if hosts.len() > 1 {
        if let Some(h) = hosts.iter().find(|h| h.address.is_none()) {
            return Err(err(
                &h.span,
                format!("on {}: no address; peers need one to connect", h.name),
            ));
        }
    }
    let disk_hosts = hosts
        .iter()
        .filter(|h| h.volumes.iter().any(|v| v.disk != BackingDisk::None));
    if disk_hosts.count() > 2 {
        ctx.warnings.push(Warning {
            span: item.span().clone(),
            message: format!(
                "resource {name} has more than two hosts with a disk; tandem replicates between \
                 two and ignores the others"
            ),
        });
    }
    if let AfterSb0Pri::DiscardNode(n) = &net.after_sb_0pri {
        if !hosts.iter().any(|h| &h.name == n) {
            return Err(err(
                item.span(),
                format!("after-sb-0pri discard-node-{n}: resource {name} has no host named {n}"),
            ));
        }
    }
    match (&net.cram_hmac_alg, &net.shared_secret) {
        (Some(_), None) => {
            return Err(err(item.span(), format!("resource {name}: cram-hmac-alg is set but shared-secret is not")))
        }
        (None, Some(_)) => {
            return Err(err(
                item.span(),
                format!("resource {name}: shared-secret is set but cram-hmac-alg is not; peers would not authenticate"),
            ))
        }
        _ => {}
    }
    if net.fencing != FencingPolicy::DontCare && handlers.get("fence-peer").is_none() {
        ctx.warnings.push(Warning {
            span: item.span().clone(),
            message: format!(
                "resource {name}: fencing {} without a fence-peer handler; the peer cannot be fenced",
                net.fencing
            ),
        });
    }
    if disk.c_min_rate_bytes_per_s > disk.c_max_rate_bytes_per_s {
        return Err(err(
            item.span(),
            format!("resource {name}: c-min-rate is above c-max-rate"),
        ));
    }
    Ok(Resource {
        name,
        span: item.span().clone(),
        net,
        disk,
        startup,
        options,
        handlers,
        export,
        hosts,
        unimplemented,
    })
}

/// A `shared-secret` (a resource's `net` option or the cluster's): 1 to 64 characters.
fn shared_secret(item: &Item) -> Result<String, ConfigError> {
    let w = one_arg(item)?;
    if w.text.is_empty() || w.text.chars().count() > SHARED_SECRET_MAX_CHARS {
        return Err(err(
            &w.span,
            format!("shared-secret must be 1 to {SHARED_SECRET_MAX_CHARS} characters"),
        ));
    }
    Ok(w.text.clone())
}

fn yes_no(item: &Item) -> Result<bool, ConfigError> {
    let w = one_arg(item)?;
    parse_bool(&w.text).map_err(|m| err(&w.span, m))
}

fn validate_cluster(
    item: &Item,
    resources: &[Resource],
    ctx: &mut Ctx,
) -> Result<Cluster, ConfigError> {
    let body = section(item, 1)?;
    no_duplicates_except(body, "cluster", &["node", "resource", "alert"])?;
    let mut c = Cluster {
        name: item.args()[0].text.clone(),
        nodes: Vec::new(),
        sbd: None,
        two_node: false,
        wait_for_all: false,
        token_ms: 3000,
        shared_secret: None,
        resources: Vec::new(),
        alerts: Vec::new(),
    };
    let mut wait_for_all = None;
    for child in body {
        match child.keyword() {
            "node" => {
                let node = cluster_node(child)?;
                if c.nodes.iter().any(|n| n.name == node.name) {
                    return Err(err(child.span(), format!("duplicate node '{}'", node.name)));
                }
                c.nodes.push(node);
            }
            "sbd" => {
                let b = section(child, 0)?;
                no_duplicates(b, "sbd")?;
                let mut device = None;
                let mut watchdog = PathBuf::from("/dev/watchdog");
                let (mut wd, mut msgwait) = (5u32, None);
                let mut msgwait_span = child.span();
                for o in b {
                    match o.keyword() {
                        "device" => device = Some(one_arg(o)?.text.clone()),
                        "watchdog" => watchdog = PathBuf::from(&one_arg(o)?.text),
                        "watchdog-timeout" => wd = ranged_count(o, 1, 255)?,
                        "msgwait" => {
                            msgwait = Some(ranged_count(o, 1, 255)?);
                            msgwait_span = o.span();
                        }
                        k => return Err(err(o.span(), format!("unknown option '{k}' in sbd (use device, watchdog, watchdog-timeout, msgwait)"))),
                    }
                }
                let device = device.ok_or_else(|| err(child.span(), "sbd needs a device"))?;
                let msgwait_s = msgwait.unwrap_or(2 * wd);
                if msgwait_s < 2 * wd {
                    return Err(err(
                        msgwait_span,
                        format!("msgwait {msgwait_s} must be at least twice watchdog-timeout {wd}"),
                    ));
                }
                c.sbd = Some(ClusterSbd { device, watchdog, watchdog_timeout_s: wd, msgwait_s });
            }
            "quorum" => {
                let b = section(child, 0)?;
                no_duplicates(b, "quorum")?;
                for o in b {
                    match o.keyword() {
                        "two-node" => c.two_node = yes_no(o)?,
                        "wait-for-all" => wait_for_all = Some(yes_no(o)?),
                        k => return Err(err(o.span(), format!("unknown option '{k}' in quorum (use two-node, wait-for-all)"))),
                    }
                }
            }
            "token" => {
                let w = one_arg(child)?;
                let ms = units::parse_count(&w.text).map_err(|m| err(&w.span, m))?;
                if ms < u64::from(MIN_TOKEN_MS) || ms > 600_000 {
                    return Err(err(
                        &w.span,
                        format!("token {ms} ms is out of range ({MIN_TOKEN_MS} to 600000)"),
                    ));
                }
                c.token_ms = u32::try_from(ms).expect("range checked");
            }
            "resource" => {
                let r = cluster_resource(child)?;
                if !resources.iter().any(|x| x.name == r.name) {
                    return Err(err(
                        child.span(),
                        format!("cluster resource '{}' is not a replicated resource in this config", r.name),
                    ));
                }
                c.resources.push(r);
            }
            "alert" => c.alerts.push(one_arg(child)?.text.clone()),
            "shared-secret" => c.shared_secret = Some(shared_secret(child)?),
            k => {
                return Err(err(
                    child.span(),
                    format!("unknown keyword '{k}' in cluster (use node, sbd, quorum, token, shared-secret, resource, alert)"),
                ))
            }
        }
    }
    if c.nodes.is_empty() {
        return Err(err(item.span(), "cluster has no nodes"));
    }
    // The heartbeats' key falls back to the cluster's resources' secrets (clusterd's
    // heartbeat_key); with none at all they are not authenticated.
    let resource_secret = c.resources.iter().any(|cr| {
        resources
            .iter()
            .any(|r| r.name == cr.name && r.net.shared_secret.is_some())
    });
    if c.shared_secret.is_none() && !resource_secret {
        ctx.warnings.push(Warning {
            span: item.span().clone(),
            message: format!(
                "cluster {} has no shared-secret (and none of its resources has one): its \
                 heartbeats are not authenticated, anyone on the heartbeat network can forge \
                 them; add shared-secret \"...\"; to the cluster block",
                c.name
            ),
        });
    }
    c.wait_for_all = wait_for_all.unwrap_or(c.two_node);
    Ok(c)
}

fn cluster_node(item: &Item) -> Result<ClusterNode, ConfigError> {
    let body = section(item, 1)?;
    let name = item.args()[0].text.clone();
    let mut node = ClusterNode {
        name,
        addresses: Vec::new(),
        fence: Vec::new(),
    };
    for o in body {
        match o.keyword() {
            "address" => {
                let w = one_arg(o)?;
                let ip: IpAddr = w
                    .text
                    .parse()
                    .map_err(|_| err(&w.span, format!("'{}' is not an IP address", w.text)))?;
                node.addresses.push(ip);
            }
            "fence" => {
                let kind = o
                    .args()
                    .first()
                    .ok_or_else(|| err(o.span(), "fence needs a method (ifmib or sbd)"))?;
                if o.args().len() != 1 {
                    return Err(err(o.span(), "fence takes one method name"));
                }
                match kind.text.as_str() {
                    "ifmib" => {
                        let b = section(o, 1)?;
                        no_duplicates(b, "fence ifmib")?;
                        let (mut switch, mut community, mut port) = (None, None, None);
                        for f in b {
                            let v = one_arg(f)?.text.clone();
                            match f.keyword() {
                                "switch" => switch = Some(v),
                                "community" => community = Some(v),
                                "port" => port = Some(v),
                                k => return Err(err(f.span(), format!("unknown option '{k}' in fence ifmib (use switch, community, port)"))),
                            }
                        }
                        let need = |v: Option<String>, what: &str| {
                            v.ok_or_else(|| err(o.span(), format!("fence ifmib needs {what}")))
                        };
                        node.fence.push(FenceMethod::Ifmib {
                            switch: need(switch, "switch")?,
                            community: need(community, "community")?,
                            port: need(port, "port")?,
                        });
                    }
                    "sbd" => node.fence.push(FenceMethod::Sbd),
                    other => {
                        return Err(err(
                            &kind.span,
                            format!("unknown fence method '{other}' (use ifmib or sbd)"),
                        ))
                    }
                }
            }
            k => {
                return Err(err(
                    o.span(),
                    format!("unknown keyword '{k}' in node (use address, fence)"),
                ))
            }
        }
    }
    if node.addresses.is_empty() {
        return Err(err(
            item.span(),
            format!("node {} has no address", node.name),
        ));
    }
    Ok(node)
}

fn cluster_resource(item: &Item) -> Result<ClusterResource, ConfigError> {
    let body = section(item, 1)?;
    let mut r = ClusterResource {
        name: item.args()[0].text.clone(),
        export_nbd: false,
        export_iscsi: false,
        ocf: Vec::new(),
        vips: Vec::new(),
        migration_threshold: 3,
        ops: OcfOps::DEFAULT,
    };
    let mut ops_seen: Vec<String> = Vec::new();
    for o in body {
        match o.keyword() {
            "export" => match one_arg(o)?.text.as_str() {
                "nbd" => r.export_nbd = true,
                "iscsi" => r.export_iscsi = true,
                other => return Err(err(o.span(), format!("unknown export '{other}' (use nbd or iscsi)"))),
            },
            "ocf" => {
                let args = statement(o)?;
                let Some((agent, params)) = args.split_first() else {
                    return Err(err(o.span(), "ocf needs an agent, e.g. heartbeat:Filesystem"));
                };
                if !agent.text.contains(':') {
                    return Err(err(&agent.span, format!("'{}' is not PROVIDER:TYPE (e.g. heartbeat:Filesystem)", agent.text)));
                }
                let mut kv = Vec::new();
                for p in params {
                    let Some((k, v)) = p.text.split_once('=') else {
                        return Err(err(&p.span, format!("'{}' is not name=value", p.text)));
                    };
                    kv.push((k.to_string(), v.to_string()));
                }
                r.ocf.push((agent.text.clone(), kv));
            }
            "vip" => {
                let w = one_arg(o)?;
                let bad = || err(&w.span, format!("'{}' is not IP/PREFIX (e.g. 10.0.0.10/24)", w.text));
                let (ip, prefix) = w.text.split_once('/').ok_or_else(bad)?;
                let ip: IpAddr = ip.parse().map_err(|_| bad())?;
                let prefix: u8 = prefix.parse().map_err(|_| bad())?;
                if prefix > if ip.is_ipv4() { 32 } else { 128 } {
                    return Err(bad());
                }
                r.vips.push((ip, prefix));
            }
            "migration-threshold" => r.migration_threshold = ranged_count(o, 1, 1_000_000)?,
            "op" => {
                let args = statement(o)?;
                let Some((op, settings)) = args.split_first() else {
                    return Err(err(o.span(), "op needs an operation: start, stop or monitor"));
                };
                let keys: &[&str] = match op.text.as_str() {
                    "start" | "stop" => &["timeout"],
                    "monitor" => &["interval", "timeout"],
                    other => return Err(err(&op.span, format!("unknown operation '{other}' (use start, stop or monitor)"))),
                };
                if ops_seen.contains(&op.text) {
                    return Err(err(&op.span, format!("duplicate 'op {}'", op.text)));
                }
                ops_seen.push(op.text.clone());
                for w in settings {
                    let Some((k, v)) = w.text.split_once('=') else {
                        return Err(err(&w.span, format!("'{}' is not name=value (e.g. timeout=20s)", w.text)));
                    };
                    if !keys.contains(&k) {
                        return Err(err(&w.span, format!("op {} takes {} (not '{k}')", op.text, keys.join(" and "))));
                    }
                    let ms = units::parse_duration_ms(v).map_err(|m| err(&w.span, m))?;
                    if !(OcfOps::MIN_MS..=OcfOps::MAX_MS).contains(&ms) {
                        return Err(err(&w.span, format!("{k} {} is out of range (1s to 24h)", units::format_duration_ms(ms))));
                    }
                    match (op.text.as_str(), k) {
                        ("start", _) => r.ops.start_timeout_ms = ms,
                        ("stop", _) => r.ops.stop_timeout_ms = ms,
                        (_, "interval") => r.ops.monitor_interval_ms = ms,
                        _ => r.ops.monitor_timeout_ms = ms,
                    }
                }
            }
            k => return Err(err(o.span(), format!("unknown keyword '{k}' in cluster resource (use export, ocf, vip, migration-threshold, op)"))),
        }
    }
    Ok(r)
}
