//! Login negotiation (RFC 7143 §6, §13), as a pure state machine.
//!
//! [`Login::step`] takes one Login Request (header fields and data segment) and returns the
//! Login Response to send: its stage bits, status and keys. It knows the target names served and
//! the CHAP credentials; the driver supplies the random challenge when it creates the machine, so
//! nothing here touches a clock, a socket or a random number generator.
//!
//! Security stage: `AuthMethod` is `CHAP` when the target has incoming credentials (as tgt's
//! `incominguser`), else `None`. CHAP (RFC 1994, algorithm 5 = MD5): the target sends `CHAP_I`
//! and `CHAP_C`, the initiator answers `CHAP_N`/`CHAP_R` (and for mutual CHAP its own
//! `CHAP_I`/`CHAP_C`, which the target answers with the outgoing credentials, as tgt's
//! `outgoinguser`). An initiator challenge equal to ours is refused (a reflection attack).
//!
//! Operational stage: every key offered is answered (RFC 7143 §13), the results are kept in
//! [`Params`].

use md5::{Digest as _, Md5};

use super::text;

/// Security negotiation stage.
pub const STAGE_SECURITY: u8 = 0;
/// Login operational negotiation stage.
pub const STAGE_OPERATIONAL: u8 = 1;
/// Full feature phase.
pub const STAGE_FULL_FEATURE: u8 = 3;

/// Our MaxRecvDataSegmentLength: the largest data segment we accept.
pub const MAX_RECV_DATA_SEGMENT_LENGTH: u32 = 262_144;
/// Our MaxBurstLength offer.
pub const MAX_BURST_LENGTH: u32 = 1 << 20;
/// Our FirstBurstLength offer.
pub const FIRST_BURST_LENGTH: u32 = 262_144;
/// The largest data segment an initiator may declare it accepts (RFC: 2^24 - 1).
pub const MAX_DATA_SEGMENT_LIMIT: u32 = (1 << 24) - 1;
/// The smallest (RFC: 512).
pub const MIN_DATA_SEGMENT_LIMIT: u32 = 512;
/// The most bytes of login text accumulated over continued PDUs.
pub const MAX_LOGIN_TEXT_BYTES: usize = 64 << 10;
/// CHAP challenge length in bytes.
pub const CHAP_CHALLENGE_BYTES: usize = 16;
/// The most bytes of a CHAP challenge we accept from an initiator.
pub const MAX_INITIATOR_CHALLENGE_BYTES: usize = 1024;
/// Our portal group tag.
pub const TARGET_PORTAL_GROUP_TAG: u16 = 1;

/// Login status classes and details (RFC 7143 §11.13.5), as (class, detail).
pub mod status {
    /// Success.
    pub const SUCCESS: (u8, u8) = (0, 0);
    /// Initiator error (miscellaneous).
    pub const INITIATOR_ERROR: (u8, u8) = (2, 0);
    /// Authentication failure.
    pub const AUTHENTICATION_FAILURE: (u8, u8) = (2, 1);
    /// Authorization failure.
    pub const AUTHORIZATION_FAILURE: (u8, u8) = (2, 2);
    /// Not found.
    pub const NOT_FOUND: (u8, u8) = (2, 3);
    /// Unsupported version.
    pub const UNSUPPORTED_VERSION: (u8, u8) = (2, 5);
    /// Missing parameter.
    pub const MISSING_PARAMETER: (u8, u8) = (2, 7);
    /// Session does not exist.
    pub const SESSION_DOES_NOT_EXIST: (u8, u8) = (2, 10);
    /// Invalid request during login.
    pub const INVALID_DURING_LOGIN: (u8, u8) = (2, 11);
}

/// A CHAP user name and secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// CHAP_N.
    pub user: String,
    /// The shared secret.
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credentials {{ user: {:?}, secret: <hidden> }}",
            self.user
        )
    }
}

/// Who may log in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Auth {
    /// Initiators must prove these (tgt's `incominguser`); `None`: no authentication.
    pub incoming: Option<Credentials>,
    /// The target proves these when the initiator asks (tgt's `outgoinguser`).
    pub outgoing: Option<Credentials>,
}

/// Negotiated session and connection parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// HeaderDigest=CRC32C.
    pub header_digest: bool,
    /// DataDigest=CRC32C.
    pub data_digest: bool,
    /// The initiator's MaxRecvDataSegmentLength: our Data-In/text segments are at most this.
    pub initiator_max_recv: u32,
    /// MaxBurstLength.
    pub max_burst: u32,
    /// FirstBurstLength.
    pub first_burst: u32,
    /// InitialR2T.
    pub initial_r2t: bool,
    /// ImmediateData.
    pub immediate_data: bool,
    /// MaxOutstandingR2T.
    pub max_outstanding_r2t: u32,
}

impl Default for Params {
    /// RFC 7143 defaults.
    fn default() -> Params {
        Params {
            header_digest: false,
            data_digest: false,
            initiator_max_recv: 8192,
            max_burst: 262_144,
            first_burst: 65_536,
            initial_r2t: true,
            immediate_data: true,
            max_outstanding_r2t: 1,
        }
    }
}

/// Discovery or a normal session on a named target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionType {
    /// SendTargets only.
    Discovery,
    /// I/O on this target.
    Normal(String),
}

/// What a completed login established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Established {
    /// InitiatorName.
    pub initiator_name: String,
    /// ISID.
    pub isid: [u8; 6],
    /// The session type and target.
    pub session_type: SessionType,
    /// Negotiated parameters.
    pub params: Params,
}

/// The header fields of a Login Request that negotiation uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// T.
    pub transit: bool,
    /// C.
    pub cont: bool,
    /// CSG.
    pub csg: u8,
    /// NSG.
    pub nsg: u8,
    /// Version-min.
    pub version_min: u8,
    /// ISID.
    pub isid: [u8; 6],
    /// TSIH.
    pub tsih: u16,
}

impl Request {
    /// The login fields of a Login Request PDU's header; `None` for any other PDU.
    pub fn of(bhs: &super::pdu::Bhs) -> Option<Request> {
        match *bhs {
            super::pdu::Bhs::LoginRequest {
                transit,
                cont,
                csg,
                nsg,
                version_min,
                isid,
                tsih,
                ..
            } => Some(Request {
                transit,
                cont,
                csg,
                nsg,
                version_min,
                isid,
                tsih,
            }),
            _ => None,
        }
    }
}

/// The Login Response to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// T.
    pub transit: bool,
    /// CSG.
    pub csg: u8,
    /// NSG.
    pub nsg: u8,
    /// (Status-Class, Status-Detail).
    pub status: (u8, u8),
    /// Keys to send.
    pub keys: Vec<(String, String)>,
    /// Set when this response ends the login successfully (the driver sets the TSIH).
    pub established: Option<Established>,
    /// Why the login failed (for the log; never sent).
    pub failure: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Chap {
    /// AuthMethod not settled yet.
    Start,
    /// AuthMethod=CHAP agreed; waiting for CHAP_A.
    WaitAlgorithm,
    /// Challenge sent; waiting for CHAP_N/CHAP_R.
    WaitResponse,
    /// Authenticated (or no authentication required).
    Done,
}

/// The login state machine of one connection.
#[derive(Debug)]
pub struct Login {
    targets: Vec<String>,
    auth: Auth,
    challenge: [u8; CHAP_CHALLENGE_BYTES],
    chap_id: u8,
    chap: Chap,
    first: bool,
    pending: Vec<u8>,
    initiator_name: Option<String>,
    session_type: Option<SessionType>,
    params: Params,
    declared_mrdsl: bool,
    failed: bool,
}

impl Login {
    /// A login on a connection to a portal serving `targets`; `challenge` and `chap_id` must be
    /// random.
    pub fn new(
        targets: Vec<String>,
        auth: Auth,
        challenge: [u8; CHAP_CHALLENGE_BYTES],
        chap_id: u8,
    ) -> Login {
        Login {
            targets,
            auth,
            challenge,
            chap_id,
            chap: Chap::Start,
            first: true,
            pending: Vec::new(),
            initiator_name: None,
            session_type: None,
            params: Params::default(),
            declared_mrdsl: false,
            failed: false,
        }
    }

    fn fail(&mut self, req: &Request, status: (u8, u8), why: String) -> Response {
        self.failed = true;
        Response {
            transit: false,
            csg: req.csg,
            nsg: 0,
            status,
            keys: Vec::new(),
            established: None,
            failure: Some(why),
        }
    }

    /// Handles one Login Request.
    pub fn step(&mut self, req: &Request, data: &[u8]) -> Response {
        if self.failed {
            return self.fail(req, status::INITIATOR_ERROR, "login already failed".into());
        }
        if req.version_min > 0 {
            return self.fail(
                req,
                status::UNSUPPORTED_VERSION,
                format!("initiator needs version {} or later", req.version_min),
            );
        }
        if req.tsih != 0 {
            return self.fail(
                req,
                status::SESSION_DOES_NOT_EXIST,
                "adding a connection to a session is not supported (MaxConnections=1)".into(),
            );
        }
        if self.pending.len() + data.len() > MAX_LOGIN_TEXT_BYTES {
            return self.fail(req, status::INITIATOR_ERROR, "login text too long".into());
        }
        self.pending.extend_from_slice(data);
        if req.cont {
            // More text follows: acknowledge with an empty response in the same stage.
            return Response {
                transit: false,
                csg: req.csg,
                nsg: 0,
                status: status::SUCCESS,
                keys: Vec::new(),
                established: None,
                failure: None,
            };
        }
        let raw = std::mem::take(&mut self.pending);
        let keys = match text::parse(&raw) {
            Ok(k) => k,
            Err(e) => return self.fail(req, status::INITIATOR_ERROR, e.to_string()),
        };
        if req.csg == 2 || req.csg > STAGE_FULL_FEATURE {
            return self.fail(req, status::INITIATOR_ERROR, format!("bad CSG {}", req.csg));
        }
        if req.csg == STAGE_FULL_FEATURE || (req.transit && (req.nsg == 2 || req.nsg <= req.csg)) {
            return self.fail(
                req,
                status::INITIATOR_ERROR,
                format!("bad stage transition {} -> {}", req.csg, req.nsg),
            );
        }
        let mut out: Vec<(String, String)> = Vec::new();
        let first = std::mem::replace(&mut self.first, false);
        if first {
            let get = |k: &str| keys.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            let Some(name) = get("InitiatorName") else {
                return self.fail(
                    req,
                    status::MISSING_PARAMETER,
                    "no InitiatorName in the first login request".into(),
                );
            };
            self.initiator_name = Some(name);
            match get("SessionType").as_deref() {
                Some("Discovery") => self.session_type = Some(SessionType::Discovery),
                None | Some("Normal") => {
                    let Some(target) = get("TargetName") else {
                        return self.fail(
                            req,
                            status::MISSING_PARAMETER,
                            "no TargetName for a normal session".into(),
                        );
                    };
                    if !self.targets.contains(&target) {
                        return self.fail(
                            req,
                            status::NOT_FOUND,
                            format!("no target named {target:?}"),
                        );
                    }
                    out.push((
                        "TargetPortalGroupTag".into(),
                        TARGET_PORTAL_GROUP_TAG.to_string(),
                    ));
                    self.session_type = Some(SessionType::Normal(target));
                }
                Some(other) => {
                    return self.fail(
                        req,
                        status::INITIATOR_ERROR,
                        format!("unknown SessionType {other:?}"),
                    )
                }
            }
        }
        for (k, v) in &keys {
            match k.as_str() {
                "InitiatorName" | "TargetName" | "SessionType" | "InitiatorAlias" => {}
                "AuthMethod" => {
                    if req.csg != STAGE_SECURITY {
                        out.push((k.clone(), "Reject".into()));
                        continue;
                    }
                    let want = if self.auth.incoming.is_some() {
                        "CHAP"
                    } else {
                        "None"
                    };
                    if v.split(',').any(|m| m == want) {
                        self.chap = if want == "CHAP" {
                            Chap::WaitAlgorithm
                        } else {
                            Chap::Done
                        };
                        out.push((k.clone(), want.into()));
                    } else {
                        return self.fail(
                            req,
                            status::AUTHENTICATION_FAILURE,
                            format!(
                                "the initiator offers AuthMethod={v}, the target requires {want}"
                            ),
                        );
                    }
                }
                "CHAP_A" => {
                    if self.chap != Chap::WaitAlgorithm {
                        return self.fail(
                            req,
                            status::INITIATOR_ERROR,
                            "CHAP_A out of order".into(),
                        );
                    }
                    if !v.split(',').any(|a| a == "5") {
                        return self.fail(
                            req,
                            status::AUTHENTICATION_FAILURE,
                            format!("CHAP_A={v}: only MD5 (5) is supported"),
                        );
                    }
                    out.push(("CHAP_A".into(), "5".into()));
                    out.push(("CHAP_I".into(), self.chap_id.to_string()));
                    out.push(("CHAP_C".into(), text::encode_hex(&self.challenge)));
                    self.chap = Chap::WaitResponse;
                }
                "CHAP_N" | "CHAP_R" | "CHAP_I" | "CHAP_C" => {
                    if self.chap != Chap::WaitResponse {
                        return self.fail(
                            req,
                            status::INITIATOR_ERROR,
                            format!("{k} out of order"),
                        );
                    }
                }
                "HeaderDigest" | "DataDigest" => {
                    let pick = v.split(',').find(|d| *d == "CRC32C" || *d == "None");
                    let Some(pick) = pick else {
                        out.push((k.clone(), "Reject".into()));
                        continue;
                    };
                    let on = pick == "CRC32C";
                    if k == "HeaderDigest" {
                        self.params.header_digest = on;
                    } else {
                        self.params.data_digest = on;
                    }
                    out.push((k.clone(), pick.into()));
                }
                "MaxRecvDataSegmentLength" => match v.parse::<u32>() {
                    Ok(n) if (MIN_DATA_SEGMENT_LIMIT..=MAX_DATA_SEGMENT_LIMIT).contains(&n) => {
                        self.params.initiator_max_recv = n;
                    }
                    _ => out.push((k.clone(), "Reject".into())),
                },
                "MaxBurstLength" | "FirstBurstLength" => match v.parse::<u32>() {
                    Ok(n) if (MIN_DATA_SEGMENT_LIMIT..=MAX_DATA_SEGMENT_LIMIT).contains(&n) => {
                        let r = if k == "MaxBurstLength" {
                            self.params.max_burst = n.min(MAX_BURST_LENGTH);
                            self.params.max_burst
                        } else {
                            self.params.first_burst = n.min(FIRST_BURST_LENGTH);
                            self.params.first_burst
                        };
                        out.push((k.clone(), r.to_string()));
                    }
                    _ => out.push((k.clone(), "Reject".into())),
                },
                "InitialR2T" | "ImmediateData" | "DataPDUInOrder" | "DataSequenceInOrder" => {
                    let theirs = match v.as_str() {
                        "Yes" => true,
                        "No" => false,
                        _ => {
                            out.push((k.clone(), "Reject".into()));
                            continue;
                        }
                    };
                    let r = match k.as_str() {
                        // OR with our No: theirs.
                        "InitialR2T" => {
                            self.params.initial_r2t = theirs;
                            theirs
                        }
                        // AND with our Yes: theirs.
                        "ImmediateData" => {
                            self.params.immediate_data = theirs;
                            theirs
                        }
                        // OR with our Yes.
                        _ => true,
                    };
                    out.push((k.clone(), if r { "Yes" } else { "No" }.into()));
                }
                "MaxOutstandingR2T" | "MaxConnections" | "ErrorRecoveryLevel"
                | "DefaultTime2Retain" => match v.parse::<u32>() {
                    Ok(n) => {
                        let ours = match k.as_str() {
                            "MaxOutstandingR2T" => 1,
                            "MaxConnections" => 1,
                            "DefaultTime2Retain" => 0,
                            _ => 0,
                        };
                        let r = n.min(ours);
                        if k == "MaxOutstandingR2T" {
                            if n == 0 {
                                out.push((k.clone(), "Reject".into()));
                                continue;
                            }
                            self.params.max_outstanding_r2t = r;
                        }
                        if k == "MaxConnections" && n == 0 {
                            out.push((k.clone(), "Reject".into()));
                            continue;
                        }
                        out.push((k.clone(), r.to_string()));
                    }
                    Err(_) => out.push((k.clone(), "Reject".into())),
                },
                "DefaultTime2Wait" => match v.parse::<u32>() {
                    Ok(n) => out.push((k.clone(), n.clamp(2, 3600).to_string())),
                    Err(_) => out.push((k.clone(), "Reject".into())),
                },
                "IFMarker" | "OFMarker" => out.push((k.clone(), "No".into())),
                "IFMarkInt" | "OFMarkInt" => out.push((k.clone(), "Irrelevant".into())),
                _ => out.push((k.clone(), "NotUnderstood".into())),
            }
        }
        // The CHAP response (after the loop: its keys may come in any order).
        if self.chap == Chap::WaitResponse && keys.iter().any(|(k, _)| k == "CHAP_R") {
            match self.verify_chap(&keys) {
                Ok(mutual) => {
                    out.extend(mutual);
                    self.chap = Chap::Done;
                }
                Err(why) => return self.fail(req, status::AUTHENTICATION_FAILURE, why),
            }
        }
        if req.csg == STAGE_SECURITY
            && self.chap == Chap::Start
            && req.transit
            && self.auth.incoming.is_none()
        {
            // No AuthMethod offered and none required.
            self.chap = Chap::Done;
        }
        if req.csg == STAGE_OPERATIONAL && self.chap != Chap::Done {
            if self.auth.incoming.is_some() {
                return self.fail(
                    req,
                    status::AUTHENTICATION_FAILURE,
                    "the initiator skipped authentication; the target requires CHAP".into(),
                );
            }
            self.chap = Chap::Done;
        }
        if (req.csg == STAGE_OPERATIONAL || (req.transit && req.nsg == STAGE_FULL_FEATURE))
            && !self.declared_mrdsl
            && self.session_type.is_some()
        {
            self.declared_mrdsl = true;
            out.push((
                "MaxRecvDataSegmentLength".into(),
                MAX_RECV_DATA_SEGMENT_LENGTH.to_string(),
            ));
        }
        let transit = req.transit && self.chap == Chap::Done;
        let established = (transit && req.nsg == STAGE_FULL_FEATURE).then(|| Established {
            initiator_name: self.initiator_name.clone().unwrap_or_default(),
            isid: req.isid,
            session_type: self.session_type.clone().expect("set at the first request"),
            params: self.params,
        });
        Response {
            transit,
            csg: req.csg,
            nsg: if transit { req.nsg } else { 0 },
            status: status::SUCCESS,
            keys: out,
            established,
            failure: None,
        }
    }

    fn verify_chap(&self, keys: &[(String, String)]) -> Result<Vec<(String, String)>, String> {
        let get = |k: &str| keys.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let incoming = self
            .auth
            .incoming
            .as_ref()
            .expect("CHAP only with credentials");
        let user = get("CHAP_N").ok_or("CHAP_R without CHAP_N")?;
        let response = get("CHAP_R")
            .and_then(text::decode_binary)
            .ok_or("CHAP_R is not a binary value")?;
        let expected = chap_response(self.chap_id, &incoming.secret, &self.challenge);
        if user != incoming.user || response != expected {
            return Err(format!(
                "CHAP authentication of user {user:?} failed (wrong user or secret)"
            ));
        }
        let (Some(id), Some(challenge)) = (get("CHAP_I"), get("CHAP_C")) else {
            return Ok(Vec::new());
        };
        let Some(outgoing) = &self.auth.outgoing else {
            return Err(
                "the initiator asks for mutual CHAP; the target has no outgoing credentials".into(),
            );
        };
        let id: u8 = id
            .parse()
            .map_err(|_| format!("CHAP_I={id} is not 0..255"))?;
        let challenge = text::decode_binary(challenge).ok_or("CHAP_C is not a binary value")?;
        if challenge.len() > MAX_INITIATOR_CHALLENGE_BYTES {
            return Err("the initiator's CHAP_C is too long".into());
        }
        if challenge == self.challenge {
            return Err("the initiator's CHAP challenge equals the target's (reflection)".into());
        }
        Ok(vec![
            ("CHAP_N".into(), outgoing.user.clone()),
            (
                "CHAP_R".into(),
                text::encode_hex(&chap_response(id, &outgoing.secret, &challenge)),
            ),
        ])
    }
}

/// RFC 1994: MD5(identifier || secret || challenge).
pub fn chap_response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: &str = "iqn.2026-11.org.tandem:disk";

    fn kv(pairs: &[(&str, &str)]) -> Vec<u8> {
        text::encode(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>(),
        )
    }

    fn req(csg: u8, nsg: u8, transit: bool) -> Request {
        Request {
            transit,
            cont: false,
            csg,
            nsg,
            version_min: 0,
            isid: [0x80, 0, 0, 0, 0, 1],
            tsih: 0,
        }
    }

    fn creds(user: &str, secret: &str) -> Credentials {
        Credentials {
            user: user.into(),
            secret: secret.as_bytes().to_vec(),
        }
    }

    fn key<'a>(r: &'a Response, k: &str) -> Option<&'a str> {
        r.keys.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn login_without_auth_negotiates_every_key() {
        let mut l = Login::new(vec![TARGET.into()], Auth::default(), [7; 16], 1);
        let r = l.step(
            &req(0, 1, true),
            &kv(&[
                ("InitiatorName", "iqn.x:init"),
                ("TargetName", TARGET),
                ("SessionType", "Normal"),
                ("AuthMethod", "None"),
            ]),
        );
        assert_eq!(r.status, status::SUCCESS);
        assert!(r.transit);
        assert_eq!(key(&r, "AuthMethod"), Some("None"));
        assert_eq!(key(&r, "TargetPortalGroupTag"), Some("1"));
        let r = l.step(
            &req(1, 3, true),
            &kv(&[
                ("HeaderDigest", "CRC32C,None"),
                ("DataDigest", "None"),
                ("InitialR2T", "No"),
                ("ImmediateData", "Yes"),
                ("MaxBurstLength", "16776192"),
                ("FirstBurstLength", "262144"),
                ("MaxRecvDataSegmentLength", "131072"),
                ("MaxOutstandingR2T", "8"),
                ("ErrorRecoveryLevel", "2"),
                ("IFMarker", "No"),
                ("X-com.example.foo", "1"),
            ]),
        );
        assert!(r.transit);
        assert_eq!(key(&r, "HeaderDigest"), Some("CRC32C"));
        assert_eq!(key(&r, "InitialR2T"), Some("No"));
        assert_eq!(key(&r, "MaxBurstLength"), Some("1048576"));
        assert_eq!(key(&r, "MaxOutstandingR2T"), Some("1"));
        assert_eq!(key(&r, "ErrorRecoveryLevel"), Some("0"));
        assert_eq!(key(&r, "IFMarker"), Some("No"));
        assert_eq!(key(&r, "X-com.example.foo"), Some("NotUnderstood"));
        assert_eq!(key(&r, "MaxRecvDataSegmentLength"), Some("262144"));
        let e = r.established.unwrap();
        assert_eq!(e.session_type, SessionType::Normal(TARGET.into()));
        assert!(e.params.header_digest && !e.params.data_digest && !e.params.initial_r2t);
        assert_eq!(e.params.initiator_max_recv, 131072);
    }

    #[test]
    fn unknown_target_and_missing_name_are_refused() {
        let mut l = Login::new(vec![TARGET.into()], Auth::default(), [7; 16], 1);
        let r = l.step(
            &req(0, 1, true),
            &kv(&[("InitiatorName", "i"), ("TargetName", "iqn.nope")]),
        );
        assert_eq!(r.status, status::NOT_FOUND);
        let mut l = Login::new(vec![TARGET.into()], Auth::default(), [7; 16], 1);
        let r = l.step(&req(0, 1, true), &kv(&[("TargetName", TARGET)]));
        assert_eq!(r.status, status::MISSING_PARAMETER);
    }

    fn chap_login(l: &mut Login, secret: &str, mutual: Option<(u8, [u8; 16])>) -> Response {
        let r = l.step(
            &req(0, 1, true),
            &kv(&[
                ("InitiatorName", "iqn.x:init"),
                ("TargetName", TARGET),
                ("AuthMethod", "CHAP,None"),
            ]),
        );
        assert_eq!(key(&r, "AuthMethod"), Some("CHAP"));
        assert!(!r.transit, "no transit before authentication");
        let r = l.step(&req(0, 1, true), &kv(&[("CHAP_A", "7,5")]));
        assert!(!r.transit);
        let id: u8 = key(&r, "CHAP_I").unwrap().parse().unwrap();
        let c = text::decode_binary(key(&r, "CHAP_C").unwrap()).unwrap();
        let resp = text::encode_hex(&chap_response(id, secret.as_bytes(), &c));
        let mut keys = vec![("CHAP_N", "alice"), ("CHAP_R", resp.as_str())];
        let (i, ch);
        if let Some((mid, mc)) = mutual {
            i = mid.to_string();
            ch = text::encode_hex(&mc);
            keys.push(("CHAP_I", &i));
            keys.push(("CHAP_C", &ch));
        }
        l.step(&req(0, 1, true), &kv(&keys))
    }

    #[test]
    fn chap_one_way_accepts_the_right_secret_only() {
        let auth = Auth {
            incoming: Some(creds("alice", "s3cret-s3cret")),
            outgoing: None,
        };
        let mut l = Login::new(vec![TARGET.into()], auth.clone(), [9; 16], 3);
        let r = chap_login(&mut l, "s3cret-s3cret", None);
        assert_eq!(r.status, status::SUCCESS);
        assert!(r.transit);
        let mut l = Login::new(vec![TARGET.into()], auth, [9; 16], 3);
        let r = chap_login(&mut l, "wrong", None);
        assert_eq!(r.status, status::AUTHENTICATION_FAILURE);
        assert!(r.failure.unwrap().contains("alice"));
    }

    #[test]
    fn chap_required_cannot_be_skipped() {
        let auth = Auth {
            incoming: Some(creds("alice", "s")),
            outgoing: None,
        };
        let mut l = Login::new(vec![TARGET.into()], auth.clone(), [9; 16], 3);
        let r = l.step(
            &req(0, 1, true),
            &kv(&[
                ("InitiatorName", "i"),
                ("TargetName", TARGET),
                ("AuthMethod", "None"),
            ]),
        );
        assert_eq!(r.status, status::AUTHENTICATION_FAILURE);
        let mut l = Login::new(vec![TARGET.into()], auth, [9; 16], 3);
        let r = l.step(
            &req(1, 3, true),
            &kv(&[("InitiatorName", "i"), ("TargetName", TARGET)]),
        );
        assert_eq!(r.status, status::AUTHENTICATION_FAILURE);
    }

    #[test]
    fn mutual_chap_answers_the_initiator_and_refuses_reflection() {
        let auth = Auth {
            incoming: Some(creds("alice", "in-secret")),
            outgoing: Some(creds("target", "out-secret")),
        };
        let mut l = Login::new(vec![TARGET.into()], auth.clone(), [9; 16], 3);
        let r = chap_login(&mut l, "in-secret", Some((42, [5; 16])));
        assert_eq!(r.status, status::SUCCESS);
        assert_eq!(key(&r, "CHAP_N"), Some("target"));
        let want = text::encode_hex(&chap_response(42, b"out-secret", &[5; 16]));
        assert_eq!(key(&r, "CHAP_R"), Some(want.as_str()));
        let mut l = Login::new(vec![TARGET.into()], auth, [9; 16], 3);
        let r = chap_login(&mut l, "in-secret", Some((42, [9; 16])));
        assert_eq!(r.status, status::AUTHENTICATION_FAILURE);
    }

    #[test]
    fn rfc1994_md5_vector() {
        // MD5(0x01 || "secret" || 16 bytes 0x00..0x0f), computed independently with Python's hashlib.
        let c: Vec<u8> = (0..16).collect();
        assert_eq!(
            text::encode_hex(&chap_response(1, b"secret", &c)),
            "0x740e86463bda3a4d7017d6e0fba0699d"
        );
    }

    #[test]
    fn discovery_session_needs_no_target() {
        let mut l = Login::new(vec![TARGET.into()], Auth::default(), [7; 16], 1);
        let r = l.step(
            &req(1, 3, true),
            &kv(&[("InitiatorName", "i"), ("SessionType", "Discovery")]),
        );
        assert_eq!(r.established.unwrap().session_type, SessionType::Discovery);
    }

    #[test]
    fn continued_text_is_accumulated() {
        let mut l = Login::new(vec![TARGET.into()], Auth::default(), [7; 16], 1);
        let all = kv(&[("InitiatorName", "i"), ("TargetName", TARGET)]);
        let mut r1 = req(1, 3, false);
        r1.cont = true;
        let r = l.step(&r1, &all[..5]);
        assert!(r.keys.is_empty() && r.status == status::SUCCESS);
        let r = l.step(&req(1, 3, true), &all[5..]);
        assert!(r.established.is_some());
    }
}
