//! The thin SNMP driver: one UDP socket to one agent, requests with a timeout and retries,
//! v1/v2c communities or SNMPv3 USM (engine discovery, then authNoPriv or authPriv).
//!
//! An agent that does not like the community says nothing (RFC 3584), so a wrong community and
//! an unreachable switch look the same: no answer after the retries. The error says both.

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

use super::ber::{BerError, Oid, Value};
use super::message::{
    error_status_name, flags, CommunityMessage, CommunityVersion, Pdu, PduType, ScopedData,
    ScopedPdu, UsmParams, V3Message, MAX_MESSAGE_BYTES,
};
use super::usm::{self, AuthProtocol, PrivProtocol, UsmError, AUTH_CODE_BYTES};

/// The most rows a walk returns.
pub const MAX_WALK_ROWS: usize = 10_000;
/// usmStats counters an agent reports errors with (RFC 3414 5), prefix 1.3.6.1.6.3.15.1.1.
const USM_STATS: [u32; 9] = [1, 3, 6, 1, 6, 3, 15, 1, 1];

/// How to authenticate to the agent.
#[derive(Debug, Clone)]
pub enum Security {
    /// v1 or v2c with a community.
    Community {
        /// The version.
        version: CommunityVersion,
        /// The community.
        community: String,
    },
    /// v3 with the User-based Security Model.
    Usm {
        /// The user.
        user: String,
        /// Authentication: protocol and password (None: noAuthNoPriv).
        auth: Option<(AuthProtocol, String)>,
        /// Privacy: protocol and password (needs auth).
        privacy: Option<(PrivProtocol, String)>,
    },
}

impl Security {
    /// Builds the security settings from fence-agent style options: `version` "1", "2c" or
    /// "3"; v1/v2c need a community, v3 a user, and a password for each protocol given.
    pub fn from_options(
        version: &str,
        community: Option<&str>,
        user: Option<&str>,
        auth: Option<(&str, &str)>,
        privacy: Option<(&str, &str)>,
    ) -> Result<Security, String> {
        let community_version = match version {
            "1" => Some(CommunityVersion::V1),
            "2c" | "2" => Some(CommunityVersion::V2c),
            "3" => None,
            other => return Err(format!("SNMP version {other:?}: use 1, 2c or 3")),
        };
        if let Some(version) = community_version {
            let community = community.ok_or("a community is needed for SNMP v1/v2c")?;
            return Ok(Security::Community {
                version,
                community: community.to_string(),
            });
        }
        let user = user.ok_or("a user name is needed for SNMP v3")?;
        let auth = auth
            .map(|(proto, password)| {
                let p = match proto.to_ascii_uppercase().as_str() {
                    "MD5" => AuthProtocol::Md5,
                    "SHA" | "SHA1" => AuthProtocol::Sha,
                    other => {
                        return Err(format!("authentication protocol {other:?}: use MD5 or SHA"))
                    }
                };
                Ok((p, password.to_string()))
            })
            .transpose()?;
        let privacy = privacy
            .map(|(proto, password)| {
                let p = match proto.to_ascii_uppercase().as_str() {
                    "DES" => PrivProtocol::Des,
                    "AES" | "AES128" => PrivProtocol::Aes,
                    other => return Err(format!("privacy protocol {other:?}: use DES or AES")),
                };
                Ok((p, password.to_string()))
            })
            .transpose()?;
        if privacy.is_some() && auth.is_none() {
            return Err("SNMP v3 privacy needs authentication too".into());
        }
        Ok(Security::Usm {
            user: user.to_string(),
            auth,
            privacy,
        })
    }
}

/// What can go wrong talking to an agent.
#[derive(Debug, thiserror::Error)]
pub enum SnmpError {
    /// No answer.
    #[error("no answer from {peer} after {tries} tries of {timeout:?}: the switch is unreachable or refuses the community/credentials")]
    Timeout {
        /// The agent.
        peer: SocketAddr,
        /// Requests sent.
        tries: u32,
        /// Wait per request.
        timeout: Duration,
    },
    /// A socket error.
    #[error("SNMP to {peer}: {error}")]
    Io {
        /// The agent.
        peer: String,
        /// The error.
        error: std::io::Error,
    },
    /// The agent's answer does not decode.
    #[error("bad answer from {peer}: {error}")]
    Malformed {
        /// The agent.
        peer: SocketAddr,
        /// What is wrong.
        error: BerError,
    },
    /// The agent answered with an error status.
    #[error("{peer} refused the request: {name} ({status}) on {oid}")]
    Status {
        /// The agent.
        peer: SocketAddr,
        /// The error status.
        status: i32,
        /// Its name.
        name: &'static str,
        /// The varbind it is about.
        oid: String,
    },
    /// A v3 security failure.
    #[error("SNMPv3 with {peer}: {reason}")]
    Security {
        /// The agent.
        peer: SocketAddr,
        /// What failed.
        reason: String,
    },
    /// Bad v3 settings.
    #[error(transparent)]
    Usm(#[from] UsmError),
}

/// The v3 state learnt by discovery.
struct Engine {
    id: Vec<u8>,
    boots: i32,
    time: i32,
    learnt_at: Instant,
    auth_key: Option<Vec<u8>>,
    priv_key: Option<Vec<u8>>,
}

/// A client of one agent.
pub struct Client {
    socket: UdpSocket,
    peer: SocketAddr,
    security: Security,
    /// Wait per try.
    pub timeout: Duration,
    /// Tries per request.
    pub tries: u32,
    next_id: i32,
    salt: u64,
    engine: Option<Engine>,
}

impl Client {
    /// A client for the agent at `host:port`.
    pub fn new(host: &str, port: u16, security: Security) -> Result<Client, SnmpError> {
        let io = |source| SnmpError::Io {
            peer: format!("{host}:{port}"),
            error: source,
        };
        let peer = (host, port)
            .to_socket_addrs()
            .map_err(io)?
            .next()
            .ok_or_else(|| io(std::io::Error::other("no address")))?;
        let bind: SocketAddr = if peer.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal")
        } else {
            "[::]:0".parse().expect("literal")
        };
        let socket = UdpSocket::bind(bind).map_err(io)?;
        socket.connect(peer).map_err(io)?;
        let mut seed = [0u8; 12];
        getrandom::fill(&mut seed).expect("the OS random source works");
        let id = i32::from_be_bytes(seed[..4].try_into().expect("4")) & 0x3fff_ffff;
        Ok(Client {
            socket,
            peer,
            security,
            timeout: Duration::from_secs(1),
            tries: 3,
            next_id: id,
            salt: u64::from_be_bytes(seed[4..].try_into().expect("8")),
            engine: None,
        })
    }

    /// GET of some OIDs.
    pub fn get(&mut self, oids: &[Oid]) -> Result<Vec<(Oid, Value)>, SnmpError> {
        let binds = oids.iter().map(|o| (o.clone(), Value::Null)).collect();
        self.request(PduType::Get, binds).map(|p| p.varbinds)
    }

    /// SET of some values.
    pub fn set(&mut self, binds: Vec<(Oid, Value)>) -> Result<Vec<(Oid, Value)>, SnmpError> {
        self.request(PduType::Set, binds).map(|p| p.varbinds)
    }

    /// GETNEXT of one OID.
    pub fn get_next(&mut self, oid: &Oid) -> Result<(Oid, Value), SnmpError> {
        let pdu = self.request(PduType::GetNext, vec![(oid.clone(), Value::Null)])?;
        pdu.varbinds
            .into_iter()
            .next()
            .ok_or_else(|| SnmpError::Malformed {
                peer: self.peer,
                error: BerError("GETNEXT response without a varbind".into()),
            })
    }

    /// Every row under `prefix`, by GETNEXT, in order.
    pub fn walk(&mut self, prefix: &Oid) -> Result<Vec<(Oid, Value)>, SnmpError> {
        let mut rows = Vec::new();
        let mut at = prefix.clone();
        while rows.len() < MAX_WALK_ROWS {
            let next = self.get_next(&at);
            let (oid, value) = match next {
                // v1 agents end a walk with noSuchName.
                Err(SnmpError::Status { status: 2, .. }) => break,
                other => other?,
            };
            if !oid.starts_with(prefix) || value == Value::EndOfMibView || oid <= at {
                break;
            }
            at = oid.clone();
            rows.push((oid, value));
        }
        Ok(rows)
    }

    fn next_request_id(&mut self) -> i32 {
        self.next_id = (self.next_id + 1) & 0x3fff_ffff;
        self.next_id
    }

    /// Sends a request and returns the response PDU (error status checked).
    fn request(&mut self, kind: PduType, binds: Vec<(Oid, Value)>) -> Result<Pdu, SnmpError> {
        let pdu = match self.security.clone() {
            Security::Community { version, community } => {
                let id = self.next_request_id();
                let msg = CommunityMessage {
                    version,
                    community: community.into_bytes(),
                    pdu: Pdu::request(kind, id, binds),
                };
                self.exchange(&msg.encode(), |buf| {
                    let m = CommunityMessage::decode(buf)?;
                    Ok((m.pdu.request_id == id).then_some(m.pdu))
                })?
            }
            Security::Usm { .. } => self.v3_request(kind, binds, true)?,
        };
        if pdu.error_status != 0 {
            let index = usize::try_from(pdu.error_index).unwrap_or(0);
            let oid = index
                .checked_sub(1)
                .and_then(|i| pdu.varbinds.get(i))
                .map(|(o, _)| o.to_string())
                .unwrap_or_default();
            return Err(SnmpError::Status {
                peer: self.peer,
                status: pdu.error_status,
                name: error_status_name(pdu.error_status),
                oid,
            });
        }
        Ok(pdu)
    }

    /// Sends `packet` until `accept` takes an answer or the tries run out.
    fn exchange<T>(
        &mut self,
        packet: &[u8],
        mut accept: impl FnMut(&[u8]) -> Result<Option<T>, BerError>,
    ) -> Result<T, SnmpError> {
        let io = |peer: SocketAddr| {
            move |source| SnmpError::Io {
                peer: peer.to_string(),
                error: source,
            }
        };
        let mut buf = vec![0u8; MAX_MESSAGE_BYTES];
        for _ in 0..self.tries {
            self.socket.send(packet).map_err(io(self.peer))?;
            let deadline = Instant::now() + self.timeout;
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                self.socket
                    .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                    .map_err(io(self.peer))?;
                let n = match self.socket.recv(&mut buf) {
                    Ok(n) => n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        break
                    }
                    // ICMP port unreachable: nothing listens there; keep trying like a timeout.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        std::thread::sleep(left.min(Duration::from_millis(100)));
                        break;
                    }
                    Err(e) => return Err(io(self.peer)(e)),
                };
                match accept(&buf[..n]) {
                    Ok(Some(v)) => return Ok(v),
                    // A stale answer to an earlier try: keep listening.
                    Ok(None) => {}
                    Err(source) => {
                        return Err(SnmpError::Malformed {
                            peer: self.peer,
                            error: source,
                        })
                    }
                }
            }
        }
        Err(SnmpError::Timeout {
            peer: self.peer,
            tries: self.tries,
            timeout: self.timeout,
        })
    }

    fn security_error(&self, reason: impl Into<String>) -> SnmpError {
        SnmpError::Security {
            peer: self.peer,
            reason: reason.into(),
        }
    }

    /// Learns the agent's engine ID, boots and time (RFC 3414 4), and localizes the keys.
    fn discover(&mut self) -> Result<(), SnmpError> {
        let Security::Usm { auth, privacy, .. } = self.security.clone() else {
            unreachable!("discovery is for v3")
        };
        let msg_id = self.next_request_id();
        let probe = V3Message {
            msg_id,
            max_size: i32::try_from(MAX_MESSAGE_BYTES).expect("fits"),
            flags: flags::REPORTABLE,
            usm: UsmParams::default(),
            data: ScopedData::Plain(ScopedPdu {
                context_engine_id: Vec::new(),
                context_name: Vec::new(),
                pdu: Pdu::request(PduType::Get, msg_id, Vec::new()),
            }),
        };
        let report = self.exchange(&probe.encode().0, |buf| {
            let m = V3Message::decode(buf)?;
            Ok((m.msg_id == msg_id).then_some(m))
        })?;
        if report.usm.engine_id.is_empty() {
            return Err(self.security_error("the agent reported no engine ID"));
        }
        let id = report.usm.engine_id;
        let auth_key = match &auth {
            Some((proto, password)) => Some(usm::localize_key(
                *proto,
                &usm::password_to_key(*proto, password.as_bytes())?,
                &id,
            )),
            None => None,
        };
        let priv_key = match (&auth, &privacy) {
            (Some((auth_proto, _)), Some((_, password))) => Some(usm::localize_key(
                *auth_proto,
                &usm::password_to_key(*auth_proto, password.as_bytes())?,
                &id,
            )),
            (None, Some(_)) => {
                return Err(self.security_error("privacy needs authentication"));
            }
            _ => None,
        };
        self.engine = Some(Engine {
            id,
            boots: report.usm.engine_boots,
            time: report.usm.engine_time,
            learnt_at: Instant::now(),
            auth_key,
            priv_key,
        });
        Ok(())
    }

    fn v3_request(
        &mut self,
        kind: PduType,
        binds: Vec<(Oid, Value)>,
        may_resync: bool,
    ) -> Result<Pdu, SnmpError> {
        if self.engine.is_none() {
            self.discover()?;
        }
        let Security::Usm {
            user,
            auth,
            privacy,
        } = self.security.clone()
        else {
            unreachable!("v3 request")
        };
        let msg_id = self.next_request_id();
        self.salt = self.salt.wrapping_add(1);
        let engine = self.engine.as_ref().expect("discovered");
        let elapsed = i32::try_from(engine.learnt_at.elapsed().as_secs()).unwrap_or(i32::MAX);
        let (boots, time) = (engine.boots, engine.time.saturating_add(elapsed));
        let scoped = ScopedPdu {
            context_engine_id: engine.id.clone(),
            context_name: Vec::new(),
            pdu: Pdu::request(kind, msg_id, binds.clone()),
        };
        let mut msg_flags = flags::REPORTABLE;
        let mut usm_params = UsmParams {
            engine_id: engine.id.clone(),
            engine_boots: boots,
            engine_time: time,
            user: user.clone().into_bytes(),
            auth_params: Vec::new(),
            priv_params: Vec::new(),
        };
        let data = match (&privacy, &engine.priv_key) {
            (Some((proto, _)), Some(key)) => {
                msg_flags |= flags::PRIV;
                let salt = match proto {
                    // RFC 3414 8.1.1.1: the DES salt is engine boots and a local counter.
                    PrivProtocol::Des => {
                        let mut s = [0u8; 8];
                        s[..4].copy_from_slice(&boots.to_be_bytes());
                        s[4..].copy_from_slice(&self.salt.to_be_bytes()[4..]);
                        s
                    }
                    PrivProtocol::Aes => self.salt.to_be_bytes(),
                };
                usm_params.priv_params = salt.to_vec();
                ScopedData::Encrypted(usm::encrypt(
                    *proto,
                    key,
                    boots,
                    time,
                    &salt,
                    &scoped.encode(),
                ))
            }
            _ => ScopedData::Plain(scoped),
        };
        if auth.is_some() {
            msg_flags |= flags::AUTH;
            usm_params.auth_params = vec![0; AUTH_CODE_BYTES];
        }
        let msg = V3Message {
            msg_id,
            max_size: i32::try_from(MAX_MESSAGE_BYTES).expect("fits"),
            flags: msg_flags,
            usm: usm_params,
            data,
        };
        let (mut packet, offset) = msg.encode();
        let auth_proto = auth.as_ref().map(|(p, _)| *p);
        let auth_key = engine.auth_key.clone();
        let priv_key = engine.priv_key.clone();
        if let (Some(proto), Some(key)) = (auth_proto, &auth_key) {
            let code = usm::auth_code(proto, key, &packet);
            packet[offset..offset + AUTH_CODE_BYTES].copy_from_slice(&code);
        }
        let peer = self.peer;
        let reply = self.exchange(&packet, |buf| {
            let (m, off) = V3Message::decode_with_offset(buf)?;
            Ok((m.msg_id == msg_id).then(|| (m, off, buf.to_vec())))
        })?;
        let (reply, auth_offset, raw) = reply;
        let security = |reason: String| SnmpError::Security { peer, reason };
        // Authenticate the answer when it says it is authenticated (a Report about our own
        // bad credentials is not).
        if reply.flags & flags::AUTH != 0 {
            let (Some(proto), Some(key)) = (auth_proto, &auth_key) else {
                return Err(security(
                    "an authenticated answer to an unauthenticated request".into(),
                ));
            };
            if reply.usm.auth_params.len() != AUTH_CODE_BYTES {
                return Err(security("answer's auth parameters are not 12 bytes".into()));
            }
            let mut zeroed = raw.clone();
            zeroed[auth_offset..auth_offset + AUTH_CODE_BYTES].fill(0);
            if usm::auth_code(proto, key, &zeroed)[..] != reply.usm.auth_params[..] {
                return Err(security("the answer fails authentication".into()));
            }
        }
        let authenticated = reply.flags & flags::AUTH != 0;
        let encrypted = reply.flags & flags::PRIV != 0;
        let scoped = match reply.data {
            ScopedData::Plain(s) => s,
            ScopedData::Encrypted(cipher) => {
                let (Some((proto, _)), Some(key)) = (&privacy, &priv_key) else {
                    return Err(security("an encrypted answer to a plain request".into()));
                };
                let plain = usm::decrypt(
                    *proto,
                    key,
                    reply.usm.engine_boots,
                    reply.usm.engine_time,
                    &reply.usm.priv_params,
                    &cipher,
                )?;
                ScopedPdu::decode(&plain).map_err(|e| {
                    security(format!(
                        "cannot decode the decrypted answer ({e}): wrong privacy password?"
                    ))
                })?
            }
        };
        if scoped.pdu.kind == PduType::Report {
            let stat = scoped
                .pdu
                .varbinds
                .first()
                .map(|(o, _)| o.arcs().to_vec())
                .unwrap_or_default();
            let which = stat
                .strip_prefix(&USM_STATS[..])
                .and_then(|rest| rest.first().copied());
            // Only an authenticated report may move our clock (RFC 3414 3.2 step 7): an
            // unauthenticated one could be forged.
            if which == Some(2) && may_resync && reply.flags & flags::AUTH != 0 {
                // notInTimeWindows: the report carries the agent's boots and time.
                if let Some(e) = self.engine.as_mut() {
                    e.boots = reply.usm.engine_boots;
                    e.time = reply.usm.engine_time;
                    e.learnt_at = Instant::now();
                }
                return self.v3_request(kind, binds, false);
            }
            let reason = match which {
                Some(1) => "unsupported security level (usmStatsUnsupportedSecLevels)",
                Some(2) => "not in time window (usmStatsNotInTimeWindows)",
                Some(3) => "unknown user name (usmStatsUnknownUserNames)",
                Some(4) => "unknown engine ID (usmStatsUnknownEngineIDs)",
                Some(5) => "wrong authentication password or protocol (usmStatsWrongDigests)",
                Some(6) => "wrong privacy password or protocol (usmStatsDecryptionErrors)",
                _ => "the agent reported an error",
            };
            return Err(security(reason.to_string()));
        }
        // A response must come at the security level we asked for, or anyone on the path
        // could forge "the port is off".
        if (auth_proto.is_some() && !authenticated) || (privacy.is_some() && !encrypted) {
            return Err(security(
                "the answer is below the requested security level".into(),
            ));
        }
        Ok(scoped.pdu)
    }
}
