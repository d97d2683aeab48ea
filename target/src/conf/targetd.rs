//! The `targetd { ... }` block: what `targetd` serves when it reads the config file.
//!
//! ```text
//! targetd {
//!     nbd   0.0.0.0:10809;                    # NBD on TCP too (always on <run-dir>/nbd.sock)
//!     iscsi 0.0.0.0:3260;                     # the iSCSI portal
//!     chap  alice "alice-secret-12";          # initiators log in with CHAP as this user
//!     mutual-chap storage "target-secret-1";  # and the target proves this when asked
//!     target sbd     { file /srv/sbd.img; }               # NBD export sbd, iqn...:sbd LUN 0
//!     target scratch { file /dev/sdb; read-only yes; }
//! }
//! ```
//!
//! These are `targetd`'s command-line options (`--nbd`, `--iscsi`, `--chap`, `--mutual-chap`,
//! `FILE...`) written down. Addresses and CHAP belong to the block, not to each target, as on
//! the command line: one NBD server and one iSCSI portal serve every target, and the portal
//! checks CHAP (discovery included) before an initiator has named a target. Each `target`
//! is one file or block device: an NBD export named NAME and the iSCSI target
//! `iqn.2026-11.org.tandem:NAME` with LUN 0. Targets keep their file order.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::check::{flag, no_duplicates_except, one_arg, section, statement};
use super::syntax::{self, quote, Item, Span};
use super::{parse_socket_addr, ConfigError, Warning};
use crate::iscsi::login::Credentials;
use crate::iscsi::server::check_target_name;

/// The block's keyword at the top level of the file.
pub const KEYWORD: &str = "targetd";
/// RFC 7143 asks CHAP secrets to be at least this long (96 bits); shorter ones get a warning.
pub const MIN_CHAP_SECRET_BYTES: usize = 12;

/// The validated `targetd` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targetd {
    /// Where the block starts.
    pub span: Span,
    /// `nbd ADDR;`: serve NBD on TCP as well (port 10809 when ADDR has none).
    pub nbd: Option<SocketAddr>,
    /// `iscsi ADDR;`: serve iSCSI (port 3260 when ADDR has none).
    pub iscsi: Option<SocketAddr>,
    /// `chap USER SECRET;`: initiators must authenticate.
    pub chap: Option<Chap>,
    /// `mutual-chap USER SECRET;`: the target's own credentials for mutual CHAP.
    pub mutual_chap: Option<Chap>,
    /// The `target NAME { ... }` blocks, in file order.
    pub targets: Vec<Target>,
}

/// A CHAP user and secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chap {
    /// The CHAP name.
    pub user: String,
    /// The shared secret.
    pub secret: String,
}

impl Chap {
    /// The iSCSI login's form.
    pub fn credentials(&self) -> Credentials {
        Credentials {
            user: self.user.clone(),
            secret: self.secret.as_bytes().to_vec(),
        }
    }
}

/// One `target NAME { file PATH; read-only; }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The NBD export name and the IQN's last part.
    pub name: String,
    /// The file or block device served.
    pub file: PathBuf,
    /// `read-only [yes|no];`: refuse writes.
    pub read_only: bool,
    /// Where the block starts.
    pub span: Span,
}

impl Targetd {
    /// Reads the config file at `path` (with its includes) and validates its `targetd` block;
    /// `None` when it has none. Other top-level blocks are `replicatord`'s and `clusterd`'s
    /// and are left to them.
    pub fn load(path: &Path, warnings: &mut Vec<Warning>) -> Result<Option<Targetd>, ConfigError> {
        Targetd::from_items(&syntax::parse_file(path)?, warnings)
    }

    /// The validated `targetd` block among a file's top-level `items`, if there is one.
    pub fn from_items(
        items: &[Item],
        warnings: &mut Vec<Warning>,
    ) -> Result<Option<Targetd>, ConfigError> {
        let mut blocks = items.iter().filter(|i| i.keyword() == KEYWORD);
        let Some(first) = blocks.next() else {
            return Ok(None);
        };
        if let Some(second) = blocks.next() {
            return Err(ConfigError::syntax(
                second.span(),
                format!(
                    "duplicate '{KEYWORD}' block (first at {}); one targetd serves them all",
                    first.span()
                ),
            ));
        }
        validate(first, warnings).map(Some)
    }

    /// The block in normalized form (every option in a fixed order, quoted where needed),
    /// which [`Targetd::from_items`] reads back to the same block.
    pub fn dump(&self) -> String {
        let mut out = format!("{KEYWORD} {{\n");
        let mut opt = |name: &str, value: &str| out.push_str(&format!("    {name:<20} {value};\n"));
        if let Some(a) = self.nbd {
            opt("nbd", &a.to_string());
        }
        if let Some(a) = self.iscsi {
            opt("iscsi", &a.to_string());
        }
        for (name, chap) in [("chap", &self.chap), ("mutual-chap", &self.mutual_chap)] {
            if let Some(c) = chap {
                opt(name, &format!("{} {}", quote(&c.user), quote(&c.secret)));
            }
        }
        for t in &self.targets {
            out.push_str(&format!("    target {} {{\n", quote(&t.name)));
            let file = t.file.to_string_lossy();
            out.push_str(&format!("        {:<16} {};\n", "file", quote(&file)));
            let read_only = if t.read_only { "yes" } else { "no" };
            out.push_str(&format!("        {:<16} {read_only};\n", "read-only"));
            out.push_str("    }\n");
        }
        out.push_str("}\n");
        out
    }
}

fn err(span: &Span, message: impl Into<String>) -> ConfigError {
    ConfigError::syntax(span, message)
}

fn validate(item: &Item, warnings: &mut Vec<Warning>) -> Result<Targetd, ConfigError> {
    let body = section(item, 0)?;
    no_duplicates_except(body, KEYWORD, &["target"])?;
    let mut t = Targetd {
        span: item.span().clone(),
        nbd: None,
        iscsi: None,
        chap: None,
        mutual_chap: None,
        targets: Vec::new(),
    };
    let mut chap_span = None;
    for opt in body {
        match opt.keyword() {
            "nbd" => t.nbd = Some(address(opt, crate::nbd::DEFAULT_PORT)?),
            "iscsi" => t.iscsi = Some(address(opt, crate::iscsi::server::DEFAULT_PORT)?),
            "chap" => {
                t.chap = Some(chap(opt, warnings)?);
                chap_span = Some(opt.span());
            }
            "mutual-chap" => t.mutual_chap = Some(chap(opt, warnings)?),
            "target" => {
                let target = target(opt)?;
                if let Some(first) = t.targets.iter().find(|x| x.name == target.name) {
                    return Err(err(
                        &target.span,
                        format!(
                            "duplicate target '{}' (first at {}); names must be unique",
                            target.name, first.span
                        ),
                    ));
                }
                t.targets.push(target);
            }
            k => {
                return Err(err(
                    opt.span(),
                    format!(
                        "unknown keyword '{k}' in {KEYWORD} (use nbd, iscsi, chap, \
                         mutual-chap or target)"
                    ),
                ))
            }
        }
    }
    if let (Some(span), None) = (chap_span, t.iscsi) {
        return Err(err(span, "chap applies to iSCSI; add 'iscsi ADDR;'"));
    }
    if let (None, Some(m)) = (&t.chap, body.iter().find(|o| o.keyword() == "mutual-chap")) {
        return Err(err(
            m.span(),
            "mutual-chap needs 'chap USER SECRET;' too: the initiator authenticates first",
        ));
    }
    Ok(t)
}

fn address(opt: &Item, default_port: u16) -> Result<SocketAddr, ConfigError> {
    let w = one_arg(opt)?;
    parse_socket_addr(&w.text, default_port).ok_or_else(|| {
        err(
            &w.span,
            format!(
                "'{}' is not an address (use IP, IP:PORT or [V6]:PORT)",
                w.text
            ),
        )
    })
}

fn chap(opt: &Item, warnings: &mut Vec<Warning>) -> Result<Chap, ConfigError> {
    let [user, secret] = statement(opt)? else {
        return Err(err(
            opt.span(),
            format!("'{}' takes a user and a secret", opt.keyword()),
        ));
    };
    for w in [user, secret] {
        if w.text.is_empty() {
            return Err(err(
                &w.span,
                "neither the CHAP user nor the secret may be empty",
            ));
        }
    }
    if secret.text.len() < MIN_CHAP_SECRET_BYTES {
        warnings.push(Warning {
            span: secret.span.clone(),
            message: format!(
                "the {} secret is shorter than {MIN_CHAP_SECRET_BYTES} bytes; RFC 7143 asks \
                 for at least {MIN_CHAP_SECRET_BYTES} (96 bits)",
                opt.keyword()
            ),
        });
    }
    Ok(Chap {
        user: user.text.clone(),
        secret: secret.text.clone(),
    })
}

fn target(item: &Item) -> Result<Target, ConfigError> {
    let body = section(item, 1)?;
    let name = &item.args()[0];
    check_target_name(&name.text).map_err(|why| {
        err(
            &name.span,
            format!("bad target name '{}': {why}", name.text),
        )
    })?;
    no_duplicates_except(body, "target", &[])?;
    let mut file = None;
    let mut read_only = false;
    for opt in body {
        match opt.keyword() {
            "file" => {
                let w = one_arg(opt)?;
                if !Path::new(&w.text).is_absolute() {
                    return Err(err(
                        &w.span,
                        format!("'{}' is not an absolute path; write it from /", w.text),
                    ));
                }
                file = Some(PathBuf::from(&w.text));
            }
            "read-only" => read_only = flag(opt)?,
            k => {
                return Err(err(
                    opt.span(),
                    format!("unknown keyword '{k}' in target (use file or read-only)"),
                ))
            }
        }
    }
    let file = file.ok_or_else(|| {
        err(
            item.span(),
            format!(
                "target {} needs 'file PATH;' (the file or block device to serve)",
                name.text
            ),
        )
    })?;
    Ok(Target {
        name: name.text.clone(),
        file,
        read_only,
        span: item.span().clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<(Option<Targetd>, Vec<Warning>), ConfigError> {
        let items = syntax::parse_text(text, "t.conf".into(), Path::new("."), 0)?;
        let mut warnings = Vec::new();
        let t = Targetd::from_items(&items, &mut warnings)?;
        Ok((t, warnings))
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    const FULL: &str = "resource r0 { }\n\
        targetd {\n\
        \x20   nbd 127.0.0.1:10900;\n\
        \x20   iscsi [::1];\n\
        \x20   chap alice \"alice secret 12\";\n\
        \x20   mutual-chap storage target-secret-12;\n\
        \x20   target sbd { file /srv/sbd.img; }\n\
        \x20   target scratch { file \"/dev/disk/by-id/a b\"; read-only; }\n\
        }\n";

    #[test]
    fn full_block() {
        let (t, warnings) = parse(FULL).unwrap();
        let t = t.unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(t.span.to_string(), "t.conf:2:1");
        assert_eq!(t.nbd.unwrap().to_string(), "127.0.0.1:10900");
        assert_eq!(t.iscsi.unwrap().to_string(), "[::1]:3260");
        let chap = t.chap.as_ref().unwrap();
        assert_eq!(
            (chap.user.as_str(), chap.secret.as_str()),
            ("alice", "alice secret 12")
        );
        assert_eq!(chap.credentials().secret, b"alice secret 12");
        assert_eq!(t.mutual_chap.as_ref().unwrap().user, "storage");
        let names: Vec<&str> = t.targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["sbd", "scratch"], "file order");
        assert_eq!(t.targets[0].file, Path::new("/srv/sbd.img"));
        assert!(!t.targets[0].read_only);
        assert_eq!(t.targets[1].file, Path::new("/dev/disk/by-id/a b"));
        assert!(t.targets[1].read_only);
        assert_eq!(t.targets[1].span.to_string(), "t.conf:8:5");
    }

    #[test]
    fn no_block_is_none_and_defaults_are_empty() {
        assert_eq!(parse("resource r0 { }").unwrap().0, None);
        let (t, _) = parse("targetd { target a { file /a.img; } }").unwrap();
        let t = t.unwrap();
        assert_eq!((t.nbd, t.iscsi, t.chap), (None, None, None));
        assert_eq!(t.targets.len(), 1);
    }

    #[test]
    fn dump_reads_back_to_the_same_block() {
        let t = parse(FULL).unwrap().0.unwrap();
        let text = t.dump();
        let again = parse(&text).unwrap().0.unwrap();
        assert_eq!(again.dump(), text);
        assert_eq!(
            Targetd {
                span: t.span.clone(),
                targets: again
                    .targets
                    .iter()
                    .zip(&t.targets)
                    .map(|(a, b)| Target {
                        span: b.span.clone(),
                        ..a.clone()
                    })
                    .collect(),
                ..again
            },
            t
        );
    }

    #[test]
    fn short_secret_warns_at_the_secret() {
        let (_, warnings) =
            parse("targetd { iscsi 127.0.0.1; chap alice short; target a { file /a; } }").unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0]
                .to_string()
                .starts_with("t.conf:1:39: warning: the chap secret is shorter"),
            "{}",
            warnings[0]
        );
    }

    #[test]
    fn errors_name_the_place() {
        let cases = [
            (
                "targetd { } targetd { }",
                "t.conf:1:13: duplicate 'targetd' block (first at t.conf:1:1); one targetd \
                 serves them all",
            ),
            (
                "targetd x { }",
                "t.conf:1:1: 'targetd' takes no name before its block",
            ),
            ("targetd;", "t.conf:1:1: 'targetd' needs a { ... } block"),
            (
                "targetd {\n  nbd nowhere;\n}",
                "t.conf:2:7: 'nowhere' is not an address (use IP, IP:PORT or [V6]:PORT)",
            ),
            (
                "targetd { iscsi 1.2.3.4; iscsi 1.2.3.5; }",
                "t.conf:1:26: duplicate 'iscsi' in targetd (first given at t.conf:1:11)",
            ),
            (
                "targetd { chap alice alice-secret-12; }",
                "t.conf:1:11: chap applies to iSCSI; add 'iscsi ADDR;'",
            ),
            (
                "targetd { iscsi 1.2.3.4; chap alice; }",
                "t.conf:1:26: 'chap' takes a user and a secret",
            ),
            (
                "targetd { iscsi 1.2.3.4; chap alice \"\"; }",
                "t.conf:1:37: neither the CHAP user nor the secret may be empty",
            ),
            (
                "targetd { iscsi 1.2.3.4; mutual-chap t target-secret-12; }",
                "t.conf:1:26: mutual-chap needs 'chap USER SECRET;' too: the initiator \
                 authenticates first",
            ),
            (
                "targetd { listen 1.2.3.4; }",
                "t.conf:1:11: unknown keyword 'listen' in targetd (use nbd, iscsi, chap, \
                 mutual-chap or target)",
            ),
            (
                "targetd {\n  target a { file /a; }\n  target a { file /b; }\n}",
                "t.conf:3:3: duplicate target 'a' (first at t.conf:2:3); names must be unique",
            ),
            (
                "targetd { target { file /a; } }",
                "t.conf:1:11: 'target' takes one name before its block",
            ),
            (
                "targetd { target \"a b\" { file /a; } }",
                "t.conf:1:18: bad target name 'a b': an IQN allows only letters, digits, \
                 '.', '-', ':' and '_'",
            ),
            (
                "targetd { target a { } }",
                "t.conf:1:11: target a needs 'file PATH;' (the file or block device to serve)",
            ),
            (
                "targetd { target a { file /a; file /b; } }",
                "t.conf:1:31: duplicate 'file' in target (first given at t.conf:1:22)",
            ),
            (
                "targetd { target a { file /a; read-only maybe; } }",
                "t.conf:1:41: 'maybe' is not a boolean (use yes or no)",
            ),
            (
                "targetd { target a { file /a; size 1G; } }",
                "t.conf:1:31: unknown keyword 'size' in target (use file or read-only)",
            ),
            (
                "targetd { target a { file /a b; } }",
                "t.conf:1:30: 'file' takes one value; 'b' is one too many",
            ),
            (
                "targetd { target a { file a.img; } }",
                "t.conf:1:27: 'a.img' is not an absolute path; write it from /",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(error(text), want, "for {text:?}");
        }
    }

    #[test]
    fn load_follows_includes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("main.conf"),
            "include \"targets.d/*.conf\";\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("targets.d")).unwrap();
        std::fs::write(
            dir.path().join("targets.d/sbd.conf"),
            "targetd {\n  target sbd { file /sbd.img; read-only nope; }\n}\n",
        )
        .unwrap();
        let err = Targetd::load(&dir.path().join("main.conf"), &mut Vec::new()).unwrap_err();
        let want = format!(
            "{}:2:41: 'nope' is not a boolean (use yes or no)",
            dir.path().join("targets.d/sbd.conf").display()
        );
        assert_eq!(err.to_string(), want);
        let err = Targetd::load(&dir.path().join("missing.conf"), &mut Vec::new()).unwrap_err();
        assert!(matches!(err, ConfigError::Io { .. }), "{err}");
    }
}
