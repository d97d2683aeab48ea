//! Option haggling as a pure state machine: a decoded [`ClientOption`] and a view of the exports
//! in, the reply bytes and what happens next out. No sockets, no clocks.
//!
//! Policy, per the protocol document:
//! - unknown options get `NBD_REP_ERR_UNSUP`, malformed known ones `NBD_REP_ERR_INVALID`, and the
//!   session goes on;
//! - an unknown export gets `NBD_REP_ERR_UNKNOWN`; an export that is refused (a Secondary, an
//!   export being stopped) gets `NBD_REP_ERR_POLICY` with the reason, which names the role;
//! - `NBD_OPT_EXPORT_NAME` cannot carry an error, so a bad name there ends the session;
//! - the empty name is the default export when exactly one export is served;
//! - `base:allocation` is the only metadata context; it is used in transmission only if it was
//!   selected for the export that `NBD_OPT_GO`/`NBD_OPT_EXPORT_NAME` finally chose.

use super::handshake::{
    encode_export_name_reply, encode_option_reply, ClientOption, Info, InfoRequest,
    MetaContextRequest, OptionReply,
};
use super::transmission::Session;
use super::{
    client_flags, info, rep, transmission_flags as tf, BASE_ALLOCATION, MAX_PAYLOAD_BYTES,
    MIN_BLOCK_BYTES, PREFERRED_BLOCK_BYTES,
};

/// The id given to `base:allocation` by `NBD_OPT_SET_META_CONTEXT`.
pub const ALLOCATION_CONTEXT_ID: u32 = 1;
/// The most options one connection may send before the server gives up on it.
pub const MAX_OPTIONS_PER_CONNECTION: u32 = 1024;
/// The client flags this server understands (and offers in its handshake flags).
pub const KNOWN_CLIENT_FLAGS: u32 = client_flags::FIXED_NEWSTYLE | client_flags::NO_ZEROES;

/// What the negotiation needs to know about one export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportView {
    /// The canonical name.
    pub name: String,
    /// A description for humans (may be empty).
    pub description: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Transmission flags, without `NBD_FLAG_SEND_DF` (added when structured replies are on).
    pub flags: u16,
    /// `Some(reason)` when the export exists but may not be used now.
    pub refusal: Option<String>,
    /// The minimum block size to advertise (and enforce for writes).
    pub min_block_bytes: u32,
}

/// The exports as the negotiation sees them.
pub trait Exports {
    /// The export called `name`; the empty name is the default export, if any.
    fn lookup(&self, name: &str) -> Option<ExportView>;
    /// Every export, for `NBD_OPT_LIST`.
    fn list(&self) -> Vec<ExportView>;
}

/// Why the session ends during negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent `NBD_OPT_ABORT`.
    Abort,
    /// `NBD_OPT_EXPORT_NAME` named an export that does not exist or is refused.
    ExportNameRefused(String),
    /// The client sent more than [`MAX_OPTIONS_PER_CONNECTION`] options.
    TooManyOptions,
}

/// What happens after the replies of one step are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Read the next option.
    Continue,
    /// Enter the transmission phase on this export.
    Transmission {
        /// The canonical export name.
        export: String,
        /// What was negotiated.
        session: Session,
    },
    /// Close the connection.
    Close(CloseReason),
}

/// One step: bytes to send, then the outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Option replies (or the `NBD_OPT_EXPORT_NAME` reply) to send, in order.
    pub reply: Vec<u8>,
    /// What to do after sending them.
    pub outcome: Outcome,
}

/// The client flags carried an unknown bit: the protocol says drop the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("client flags {flags:#010x} carry bits this server did not offer")]
pub struct UnknownClientFlags {
    /// The flags received.
    pub flags: u32,
}

/// The negotiation state of one connection.
#[derive(Debug, Clone)]
pub struct Negotiation {
    no_zeroes: bool,
    structured: bool,
    /// The export the last `NBD_OPT_SET_META_CONTEXT` selected `base:allocation` for.
    allocation_for: Option<String>,
    options_seen: u32,
}

impl Negotiation {
    /// Starts negotiating after the client flags.
    pub fn new(client_flags: u32) -> Result<Negotiation, UnknownClientFlags> {
        if client_flags & !KNOWN_CLIENT_FLAGS != 0 {
            return Err(UnknownClientFlags {
                flags: client_flags,
            });
        }
        Ok(Negotiation {
            no_zeroes: client_flags & client_flags::NO_ZEROES != 0,
            structured: false,
            allocation_for: None,
            options_seen: 0,
        })
    }

    /// Structured replies have been negotiated.
    pub fn structured(&self) -> bool {
        self.structured
    }

    fn session(&self, export: &ExportView) -> Session {
        let mut flags = export.flags | tf::HAS_FLAGS;
        if self.structured {
            flags |= tf::SEND_DF;
        }
        Session {
            min_block_bytes: export.min_block_bytes,
            size_bytes: export.size_bytes,
            flags,
            structured: self.structured,
            allocation_context: (self.structured
                && self.allocation_for.as_deref() == Some(export.name.as_str()))
            .then_some(ALLOCATION_CONTEXT_ID),
        }
    }

    /// Handles one option.
    pub fn handle(&mut self, option: ClientOption, exports: &dyn Exports) -> Step {
        let code = option.code();
        let mut reply = Vec::new();
        let mut send = |r: OptionReply| encode_option_reply(code, &r, &mut reply);
        self.options_seen += 1;
        if self.options_seen > MAX_OPTIONS_PER_CONNECTION {
            return Step {
                reply: Vec::new(),
                outcome: Outcome::Close(CloseReason::TooManyOptions),
            };
        }
        let outcome = match option {
            ClientOption::ExportName(name) => {
                return self.export_name(&name, exports);
            }
            ClientOption::Invalid { option, reason } if option == super::opt::EXPORT_NAME => {
                return Step {
                    reply,
                    outcome: Outcome::Close(CloseReason::ExportNameRefused(reason.to_string())),
                };
            }
            ClientOption::Abort => {
                send(OptionReply::Ack);
                Outcome::Close(CloseReason::Abort)
            }
            ClientOption::List => {
                for e in exports.list() {
                    send(OptionReply::Server {
                        name: e.name,
                        description: e.description,
                    });
                }
                send(OptionReply::Ack);
                Outcome::Continue
            }
            ClientOption::StartTls => {
                send(OptionReply::error(
                    rep::ERR_UNSUP,
                    "TLS is not supported by this server; connect without TLS",
                ));
                Outcome::Continue
            }
            ClientOption::Info(r) => {
                self.info(&r, exports, &mut send);
                Outcome::Continue
            }
            ClientOption::Go(r) => match self.info(&r, exports, &mut send) {
                Some(export) => Outcome::Transmission {
                    session: self.session(&export),
                    export: export.name,
                },
                None => Outcome::Continue,
            },
            ClientOption::StructuredReply => {
                self.structured = true;
                send(OptionReply::Ack);
                Outcome::Continue
            }
            ClientOption::ListMetaContext(r) => {
                self.list_meta(&r, exports, &mut send);
                Outcome::Continue
            }
            ClientOption::SetMetaContext(r) => {
                self.set_meta(&r, exports, &mut send);
                Outcome::Continue
            }
            ClientOption::Invalid { option, reason } => {
                send(OptionReply::error(
                    rep::ERR_INVALID,
                    format!("option {option} is malformed: {reason}"),
                ));
                Outcome::Continue
            }
            ClientOption::Unknown { option } => {
                send(OptionReply::error(
                    rep::ERR_UNSUP,
                    format!("option {option} is not supported by this server"),
                ));
                Outcome::Continue
            }
        };
        Step { reply, outcome }
    }

    fn export_name(&self, name: &str, exports: &dyn Exports) -> Step {
        let refused = |why: String| Step {
            reply: Vec::new(),
            outcome: Outcome::Close(CloseReason::ExportNameRefused(why)),
        };
        let Some(export) = exports.lookup(name) else {
            return refused(format!("no export named {name:?}"));
        };
        if let Some(why) = export.refusal {
            return refused(why);
        }
        let session = self.session(&export);
        let mut reply = Vec::new();
        encode_export_name_reply(
            session.size_bytes,
            session.flags,
            self.no_zeroes,
            &mut reply,
        );
        Step {
            reply,
            outcome: Outcome::Transmission {
                export: export.name,
                session,
            },
        }
    }

    /// Answers INFO/GO; returns the export when the answer ended in ACK.
    fn info(
        &self,
        r: &InfoRequest,
        exports: &dyn Exports,
        send: &mut impl FnMut(OptionReply),
    ) -> Option<ExportView> {
        let export = lookup_or_refuse(&r.name, exports, send)?;
        let session = self.session(&export);
        send(OptionReply::Info(Info::Export {
            size_bytes: session.size_bytes,
            flags: session.flags,
        }));
        for item in dedup(&r.info_requests) {
            match item {
                info::NAME => send(OptionReply::Info(Info::Name(export.name.clone()))),
                info::DESCRIPTION if !export.description.is_empty() => send(OptionReply::Info(
                    Info::Description(export.description.clone()),
                )),
                info::BLOCK_SIZE => send(OptionReply::Info(Info::BlockSize {
                    min: export.min_block_bytes.max(MIN_BLOCK_BYTES),
                    preferred: PREFERRED_BLOCK_BYTES,
                    max_payload: MAX_PAYLOAD_BYTES,
                })),
                _ => {}
            }
        }
        send(OptionReply::Ack);
        Some(export)
    }

    fn list_meta(
        &self,
        r: &MetaContextRequest,
        exports: &dyn Exports,
        send: &mut impl FnMut(OptionReply),
    ) {
        if lookup_or_refuse(&r.name, exports, send).is_none() {
            return;
        }
        let matches = r.queries.is_empty()
            || r.queries
                .iter()
                .any(|q| q == "base:" || q == BASE_ALLOCATION);
        if matches {
            send(OptionReply::MetaContext {
                id: 0,
                name: BASE_ALLOCATION.to_string(),
            });
        }
        send(OptionReply::Ack);
    }

    fn set_meta(
        &mut self,
        r: &MetaContextRequest,
        exports: &dyn Exports,
        send: &mut impl FnMut(OptionReply),
    ) {
        // Replaces the previous selection even when it fails.
        self.allocation_for = None;
        if !self.structured {
            send(OptionReply::error(
                rep::ERR_INVALID,
                "NBD_OPT_SET_META_CONTEXT needs NBD_OPT_STRUCTURED_REPLY first",
            ));
            return;
        }
        let Some(export) = lookup_or_refuse(&r.name, exports, send) else {
            return;
        };
        if r.queries.iter().any(|q| q == BASE_ALLOCATION) {
            send(OptionReply::MetaContext {
                id: ALLOCATION_CONTEXT_ID,
                name: BASE_ALLOCATION.to_string(),
            });
            self.allocation_for = Some(export.name);
        }
        send(OptionReply::Ack);
    }
}

fn lookup_or_refuse(
    name: &str,
    exports: &dyn Exports,
    send: &mut impl FnMut(OptionReply),
) -> Option<ExportView> {
    match exports.lookup(name) {
        None => {
            send(OptionReply::error(
                rep::ERR_UNKNOWN,
                format!(
                    "no export named {name:?}; NBD_OPT_LIST (nbdinfo --list) shows the exports"
                ),
            ));
            None
        }
        Some(e) => match &e.refusal {
            Some(why) => {
                send(OptionReply::error(rep::ERR_POLICY, why.clone()));
                None
            }
            None => Some(e),
        },
    }
}

fn dedup(items: &[u16]) -> Vec<u16> {
    let mut v = items.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::super::handshake::{decode_export_name_reply, decode_option_reply};
    use super::super::{opt, Decoded};
    use super::*;

    struct Two;

    fn view(name: &str) -> ExportView {
        ExportView {
            name: name.into(),
            description: String::new(),
            size_bytes: 1 << 20,
            flags: tf::HAS_FLAGS | tf::SEND_FLUSH,
            refusal: (name == "r0").then(|| "r0 is Secondary; only the Primary serves it".into()),
            min_block_bytes: 1,
        }
    }

    impl Exports for Two {
        fn lookup(&self, name: &str) -> Option<ExportView> {
            ["a.img", "r0"].contains(&name).then(|| view(name))
        }
        fn list(&self) -> Vec<ExportView> {
            vec![view("a.img"), view("r0")]
        }
    }

    fn replies(mut b: &[u8]) -> Vec<(u32, OptionReply)> {
        let mut out = Vec::new();
        while !b.is_empty() {
            match decode_option_reply(b).unwrap() {
                Decoded::Frame(r, n) => {
                    out.push(r);
                    b = &b[n..];
                }
                Decoded::NeedMore(_) => panic!("partial reply"),
            }
        }
        out
    }

    fn go(name: &str) -> ClientOption {
        ClientOption::Go(InfoRequest {
            name: name.into(),
            info_requests: vec![info::BLOCK_SIZE, info::NAME, info::BLOCK_SIZE, 999],
        })
    }

    fn meta(name: &str, q: &[&str]) -> MetaContextRequest {
        MetaContextRequest {
            name: name.into(),
            queries: q.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn unknown_client_flags_are_refused() {
        assert!(Negotiation::new(4).is_err());
        assert!(Negotiation::new(3).is_ok());
    }

    #[test]
    fn go_with_structured_replies_and_allocation() {
        let mut n = Negotiation::new(1).unwrap();
        let s = n.handle(ClientOption::StructuredReply, &Two);
        assert_eq!(
            replies(&s.reply),
            vec![(opt::STRUCTURED_REPLY, OptionReply::Ack)]
        );
        let s = n.handle(
            ClientOption::SetMetaContext(meta("a.img", &["base:allocation", "qemu:x", "base:"])),
            &Two,
        );
        assert_eq!(
            replies(&s.reply),
            vec![
                (
                    opt::SET_META_CONTEXT,
                    OptionReply::MetaContext {
                        id: ALLOCATION_CONTEXT_ID,
                        name: BASE_ALLOCATION.into()
                    }
                ),
                (opt::SET_META_CONTEXT, OptionReply::Ack)
            ]
        );
        let s = n.handle(go("a.img"), &Two);
        let want_flags = tf::HAS_FLAGS | tf::SEND_FLUSH | tf::SEND_DF;
        assert_eq!(
            replies(&s.reply),
            vec![
                (
                    opt::GO,
                    OptionReply::Info(Info::Export {
                        size_bytes: 1 << 20,
                        flags: want_flags
                    })
                ),
                (opt::GO, OptionReply::Info(Info::Name("a.img".into()))),
                (
                    opt::GO,
                    OptionReply::Info(Info::BlockSize {
                        min: 1,
                        preferred: 4096,
                        max_payload: 32 << 20
                    })
                ),
                (opt::GO, OptionReply::Ack),
            ]
        );
        assert_eq!(
            s.outcome,
            Outcome::Transmission {
                export: "a.img".into(),
                session: Session {
                    min_block_bytes: 1,
                    size_bytes: 1 << 20,
                    flags: want_flags,
                    structured: true,
                    allocation_context: Some(ALLOCATION_CONTEXT_ID),
                }
            }
        );
    }

    #[test]
    fn allocation_selected_for_another_export_is_not_used() {
        let mut n = Negotiation::new(1).unwrap();
        n.handle(ClientOption::StructuredReply, &Two);
        n.handle(
            ClientOption::SetMetaContext(meta("a.img", &["base:allocation"])),
            &Two,
        );
        n.handle(
            ClientOption::SetMetaContext(meta("nope", &["base:allocation"])),
            &Two,
        );
        let s = n.handle(go("a.img"), &Two);
        assert!(matches!(
            s.outcome,
            Outcome::Transmission {
                session: Session {
                    min_block_bytes: 1,
                    allocation_context: None,
                    ..
                },
                ..
            }
        ));
    }

    #[test]
    fn set_meta_context_needs_structured_replies() {
        let mut n = Negotiation::new(1).unwrap();
        let s = n.handle(
            ClientOption::SetMetaContext(meta("a.img", &["base:allocation"])),
            &Two,
        );
        assert!(matches!(
            replies(&s.reply)[..],
            [(
                _,
                OptionReply::Error {
                    code: rep::ERR_INVALID,
                    ..
                }
            )]
        ));
    }

    #[test]
    fn list_meta_context_wildcards() {
        let mut n = Negotiation::new(1).unwrap();
        for q in [&[][..], &["base:"][..], &["base:allocation"][..]] {
            let s = n.handle(ClientOption::ListMetaContext(meta("a.img", q)), &Two);
            assert_eq!(replies(&s.reply).len(), 2, "{q:?}");
        }
        let s = n.handle(
            ClientOption::ListMetaContext(meta("a.img", &["qemu:"])),
            &Two,
        );
        assert_eq!(
            replies(&s.reply),
            vec![(opt::LIST_META_CONTEXT, OptionReply::Ack)]
        );
    }

    #[test]
    fn errors_keep_the_session_going() {
        let mut n = Negotiation::new(1).unwrap();
        for (o, code) in [
            (go("missing"), rep::ERR_UNKNOWN),
            (go("r0"), rep::ERR_POLICY),
            (ClientOption::Unknown { option: 77 }, rep::ERR_UNSUP),
            (ClientOption::StartTls, rep::ERR_UNSUP),
            (
                ClientOption::Invalid {
                    option: opt::LIST,
                    reason: "x",
                },
                rep::ERR_INVALID,
            ),
        ] {
            let s = n.handle(o, &Two);
            assert_eq!(s.outcome, Outcome::Continue);
            let r = replies(&s.reply);
            assert!(matches!(r[..], [(_, OptionReply::Error { code: c, .. })] if c == code));
        }
        let s = n.handle(go("r0"), &Two);
        let r = replies(&s.reply);
        assert!(
            matches!(&r[..], [(_, OptionReply::Error { message, .. })] if message.contains("Secondary"))
        );
        let s = n.handle(ClientOption::List, &Two);
        assert_eq!(replies(&s.reply).len(), 3);
        let s = n.handle(ClientOption::Abort, &Two);
        assert_eq!(s.outcome, Outcome::Close(CloseReason::Abort));
        assert_eq!(replies(&s.reply), vec![(opt::ABORT, OptionReply::Ack)]);
    }

    #[test]
    fn export_name_answers_or_closes() {
        let n = Negotiation::new(3).unwrap();
        let mut m = n.clone();
        let s = m.handle(ClientOption::ExportName("a.img".into()), &Two);
        assert_eq!(
            decode_export_name_reply(&s.reply, true),
            Decoded::Frame((1 << 20, tf::HAS_FLAGS | tf::SEND_FLUSH), 10)
        );
        assert_eq!(s.reply.len(), 10);
        for name in ["nope", "r0"] {
            let mut m = n.clone();
            let s = m.handle(ClientOption::ExportName(name.into()), &Two);
            assert!(s.reply.is_empty());
            assert!(matches!(
                s.outcome,
                Outcome::Close(CloseReason::ExportNameRefused(_))
            ));
        }
    }

    #[test]
    fn option_flood_is_cut_off() {
        let mut n = Negotiation::new(1).unwrap();
        for _ in 0..MAX_OPTIONS_PER_CONNECTION {
            assert_eq!(
                n.handle(ClientOption::List, &Two).outcome,
                Outcome::Continue
            );
        }
        assert_eq!(
            n.handle(ClientOption::List, &Two).outcome,
            Outcome::Close(CloseReason::TooManyOptions)
        );
    }
}
