//! Any bytes a client sends during NBD option haggling must decode to options or a clean
//! error, never a panic; every option is answered by the negotiation state machine with replies
//! that decode again; and well-formed options re-encode to the bytes they came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use target::nbd::handshake::{decode_option, decode_option_reply, ClientOption};
use target::nbd::negotiate::{ExportView, Exports, Negotiation, Outcome};
use target::nbd::Decoded;

struct Fixed;

fn view(name: &str) -> ExportView {
    ExportView {
        name: name.to_string(),
        description: "fuzz".to_string(),
        size_bytes: 1 << 30,
        flags: 0x0d6d,
        refusal: (name == "r0").then(|| "r0 is Secondary".to_string()),
        min_block_bytes: if name == "r0" { 512 } else { 1 },
    }
}

impl Exports for Fixed {
    fn lookup(&self, name: &str) -> Option<ExportView> {
        ["a", "r0"].contains(&name).then(|| view(name))
    }
    fn list(&self) -> Vec<ExportView> {
        vec![view("a"), view("r0")]
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let Ok(mut negotiation) = Negotiation::new(u32::from(flags & 7)) else {
        return;
    };
    while let Ok(Decoded::Frame(option, used)) = decode_option(rest) {
        if !matches!(
            option,
            ClientOption::Invalid { .. } | ClientOption::Unknown { .. }
        ) {
            let mut again = Vec::new();
            option.encode(&mut again);
            // ABORT ignores its data, so only its header is canonical.
            if !matches!(option, ClientOption::Abort) {
                assert_eq!(again, rest[..used], "{option:?} does not re-encode");
            }
        }
        // NBD_OPT_EXPORT_NAME is answered with size and flags, not with option replies.
        let export_name = matches!(option, ClientOption::ExportName(_));
        let step = negotiation.handle(option, &Fixed);
        if !export_name {
            let mut r = &step.reply[..];
            while !r.is_empty() {
                match decode_option_reply(r) {
                    Ok(Decoded::Frame(_, n)) => r = &r[n..],
                    other => panic!("server reply does not decode: {other:?}"),
                }
            }
        }
        if !matches!(step.outcome, Outcome::Continue) {
            return;
        }
        rest = &rest[used..];
    }
});
