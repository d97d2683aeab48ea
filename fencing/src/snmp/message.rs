//! SNMP messages (RFC 1157, RFC 3416, RFC 3412, RFC 3414) as pure encode/decode: the PDUs,
//! the v1/v2c community message, and the v3 message with its USM security parameters and
//! scoped PDU (plain or encrypted).

use super::ber::{self, tag, BerError, Oid, Reader, Value};

/// The largest message we send or accept (the largest UDP payload).
pub const MAX_MESSAGE_BYTES: usize = 65_507;
/// The most varbinds one PDU may carry.
pub const MAX_VARBINDS: usize = 1024;

/// The PDU types tandem speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PduType {
    /// GetRequest.
    Get,
    /// GetNextRequest.
    GetNext,
    /// Response.
    Response,
    /// SetRequest.
    Set,
    /// Report (v3 engine discovery and USM errors).
    Report,
}

impl PduType {
    fn tag(self) -> u8 {
        match self {
            PduType::Get => 0xa0,
            PduType::GetNext => 0xa1,
            PduType::Response => 0xa2,
            PduType::Set => 0xa3,
            PduType::Report => 0xa8,
        }
    }

    fn from_tag(t: u8) -> Result<PduType, BerError> {
        Ok(match t {
            0xa0 => PduType::Get,
            0xa1 => PduType::GetNext,
            0xa2 => PduType::Response,
            0xa3 => PduType::Set,
            0xa8 => PduType::Report,
            _ => return Err(BerError(format!("PDU type {t:#04x} not supported"))),
        })
    }
}

/// A PDU: request id, error status and index, variable bindings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pdu {
    /// The type.
    pub kind: PduType,
    /// Matches a response to its request.
    pub request_id: i32,
    /// 0 noError; see [`error_status_name`].
    pub error_status: i32,
    /// Which varbind (from 1) the error is about.
    pub error_index: i32,
    /// The variable bindings.
    pub varbinds: Vec<(Oid, Value)>,
}

/// RFC 3416's name for an error status.
pub fn error_status_name(status: i32) -> &'static str {
    match status {
        0 => "noError",
        1 => "tooBig",
        2 => "noSuchName",
        3 => "badValue",
        4 => "readOnly",
        5 => "genErr",
        6 => "noAccess",
        7 => "wrongType",
        8 => "wrongLength",
        9 => "wrongEncoding",
        10 => "wrongValue",
        11 => "noCreation",
        12 => "inconsistentValue",
        13 => "resourceUnavailable",
        14 => "commitFailed",
        15 => "undoFailed",
        16 => "authorizationError",
        17 => "notWritable",
        18 => "inconsistentName",
        _ => "unknown error",
    }
}

impl Pdu {
    /// A request with the given varbinds.
    pub fn request(kind: PduType, request_id: i32, varbinds: Vec<(Oid, Value)>) -> Pdu {
        Pdu {
            kind,
            request_id,
            error_status: 0,
            error_index: 0,
            varbinds,
        }
    }

    /// Encodes the PDU's TLV.
    pub fn encode(&self) -> Vec<u8> {
        let binds: Vec<Vec<u8>> = self
            .varbinds
            .iter()
            .map(|(oid, v)| ber::constructed(tag::SEQUENCE, &[&oid.encode(), &v.encode()]))
            .collect();
        let binds = ber::tlv(tag::SEQUENCE, &binds.concat());
        ber::constructed(
            self.kind.tag(),
            &[
                &ber::integer(i64::from(self.request_id)),
                &ber::integer(i64::from(self.error_status)),
                &ber::integer(i64::from(self.error_index)),
                &binds,
            ],
        )
    }

    /// Decodes the next PDU.
    pub fn read(r: &mut Reader<'_>) -> Result<Pdu, BerError> {
        let (t, content) = r.any()?;
        let kind = PduType::from_tag(t)?;
        let mut p = Reader::new(content);
        let request_id = p.integer()?;
        let error_status = p.integer()?;
        let error_index = p.integer()?;
        let mut list = p.sequence(tag::SEQUENCE)?;
        p.end("the PDU")?;
        let mut varbinds = Vec::new();
        while !list.is_empty() {
            if varbinds.len() == MAX_VARBINDS {
                return Err(BerError(format!("more than {MAX_VARBINDS} varbinds")));
            }
            let mut vb = list.sequence(tag::SEQUENCE)?;
            let oid = vb.oid()?;
            let value = Value::read(&mut vb)?;
            vb.end("a varbind")?;
            varbinds.push((oid, value));
        }
        Ok(Pdu {
            kind,
            request_id,
            error_status,
            error_index,
            varbinds,
        })
    }
}

/// The community-based versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommunityVersion {
    /// SNMPv1 (version 0 on the wire).
    V1,
    /// SNMPv2c (version 1 on the wire).
    V2c,
}

/// A v1 or v2c message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommunityMessage {
    /// The version.
    pub version: CommunityVersion,
    /// The community string.
    pub community: Vec<u8>,
    /// The PDU.
    pub pdu: Pdu,
}

impl CommunityMessage {
    /// Encodes the message.
    pub fn encode(&self) -> Vec<u8> {
        let v = match self.version {
            CommunityVersion::V1 => 0,
            CommunityVersion::V2c => 1,
        };
        ber::constructed(
            tag::SEQUENCE,
            &[
                &ber::integer(v),
                &ber::octets(&self.community),
                &self.pdu.encode(),
            ],
        )
    }

    /// Decodes a message; it must be v1 or v2c.
    pub fn decode(buf: &[u8]) -> Result<CommunityMessage, BerError> {
        let mut outer = Reader::new(buf);
        let mut m = outer.sequence(tag::SEQUENCE)?;
        outer.end("the message")?;
        let version = match m.integer()? {
            0 => CommunityVersion::V1,
            1 => CommunityVersion::V2c,
            v => return Err(BerError(format!("version {v} is not v1 or v2c"))),
        };
        let community = m.octets()?.to_vec();
        let pdu = Pdu::read(&mut m)?;
        m.end("the PDU")?;
        Ok(CommunityMessage {
            version,
            community,
            pdu,
        })
    }
}

/// msgFlags bits.
pub mod flags {
    /// Authenticated.
    pub const AUTH: u8 = 0x01;
    /// Encrypted.
    pub const PRIV: u8 = 0x02;
    /// A Report may be sent back.
    pub const REPORTABLE: u8 = 0x04;
}

/// The User-based Security Model's parameters (RFC 3414 2.4).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UsmParams {
    /// The authoritative engine's ID.
    pub engine_id: Vec<u8>,
    /// Its boot count.
    pub engine_boots: i32,
    /// Seconds since its last boot.
    pub engine_time: i32,
    /// The user.
    pub user: Vec<u8>,
    /// The authentication code (12 bytes when authenticated, else empty).
    pub auth_params: Vec<u8>,
    /// The privacy salt (8 bytes when encrypted, else empty).
    pub priv_params: Vec<u8>,
}

impl UsmParams {
    /// Encodes the SEQUENCE (which goes inside msgSecurityParameters' OCTET STRING).
    pub fn encode(&self) -> Vec<u8> {
        ber::constructed(
            tag::SEQUENCE,
            &[
                &ber::octets(&self.engine_id),
                &ber::integer(i64::from(self.engine_boots)),
                &ber::integer(i64::from(self.engine_time)),
                &ber::octets(&self.user),
                &ber::octets(&self.auth_params),
                &ber::octets(&self.priv_params),
            ],
        )
    }

    /// Decodes the SEQUENCE; also returns where the auth params' content starts in `buf`.
    pub fn decode(buf: &[u8]) -> Result<(UsmParams, usize), BerError> {
        let mut outer = Reader::new(buf);
        let mut r = outer.sequence(tag::SEQUENCE)?;
        outer.end("the USM parameters")?;
        let engine_id = r.octets()?.to_vec();
        let engine_boots = r.integer()?;
        let engine_time = r.integer()?;
        let user = r.octets()?.to_vec();
        let auth = r.octets()?;
        let auth_offset = auth.as_ptr() as usize - buf.as_ptr() as usize;
        let priv_params = r.octets()?.to_vec();
        r.end("the USM parameters")?;
        Ok((
            UsmParams {
                engine_id,
                engine_boots,
                engine_time,
                user,
                auth_params: auth.to_vec(),
                priv_params,
            },
            auth_offset,
        ))
    }
}

/// A scoped PDU (RFC 3412).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopedPdu {
    /// The context engine ID (the agent's engine ID).
    pub context_engine_id: Vec<u8>,
    /// The context name (usually empty).
    pub context_name: Vec<u8>,
    /// The PDU.
    pub pdu: Pdu,
}

impl ScopedPdu {
    /// Encodes the SEQUENCE.
    pub fn encode(&self) -> Vec<u8> {
        ber::constructed(
            tag::SEQUENCE,
            &[
                &ber::octets(&self.context_engine_id),
                &ber::octets(&self.context_name),
                &self.pdu.encode(),
            ],
        )
    }

    /// Decodes a SEQUENCE from the start of `buf`; bytes after it (cipher padding) are ignored.
    pub fn decode(buf: &[u8]) -> Result<ScopedPdu, BerError> {
        let mut outer = Reader::new(buf);
        let mut r = outer.sequence(tag::SEQUENCE)?;
        let context_engine_id = r.octets()?.to_vec();
        let context_name = r.octets()?.to_vec();
        let pdu = Pdu::read(&mut r)?;
        r.end("the scoped PDU")?;
        Ok(ScopedPdu {
            context_engine_id,
            context_name,
            pdu,
        })
    }
}

/// A v3 message's data: plain or encrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopedData {
    /// Not encrypted.
    Plain(ScopedPdu),
    /// Encrypted (the ciphertext of an encoded [`ScopedPdu`]).
    Encrypted(Vec<u8>),
}

/// An SNMPv3 message with the USM security model (3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V3Message {
    /// Matches a response to its request.
    pub msg_id: i32,
    /// The largest message the sender accepts.
    pub max_size: i32,
    /// [`flags`].
    pub flags: u8,
    /// The USM parameters.
    pub usm: UsmParams,
    /// The scoped PDU.
    pub data: ScopedData,
}

/// The USM security model number.
pub const SECURITY_MODEL_USM: i32 = 3;

impl V3Message {
    /// Encodes the message; returns it and the offset of the auth params' content (to sign it).
    pub fn encode(&self) -> (Vec<u8>, usize) {
        let global = ber::constructed(
            tag::SEQUENCE,
            &[
                &ber::integer(i64::from(self.msg_id)),
                &ber::integer(i64::from(self.max_size)),
                &ber::octets(&[self.flags]),
                &ber::integer(i64::from(SECURITY_MODEL_USM)),
            ],
        );
        let version = ber::integer(3);
        let usm = self.usm.encode();
        let security = ber::octets(&usm);
        let data = match &self.data {
            ScopedData::Plain(s) => s.encode(),
            ScopedData::Encrypted(c) => ber::octets(c),
        };
        let message = ber::constructed(tag::SEQUENCE, &[&version, &global, &security, &data]);
        // Where the auth params sit: found by decoding what we just built (the layout depends
        // on length encodings, so this is simpler than computing it).
        let (_, offset) =
            V3Message::decode_with_offset(&message).expect("what we encode decodes again");
        (message, offset)
    }

    /// Decodes a v3 message.
    pub fn decode(buf: &[u8]) -> Result<V3Message, BerError> {
        V3Message::decode_with_offset(buf).map(|(m, _)| m)
    }

    /// Decodes a v3 message and the offset of its auth params' content in `buf`.
    pub fn decode_with_offset(buf: &[u8]) -> Result<(V3Message, usize), BerError> {
        let mut outer = Reader::new(buf);
        let mut m = outer.sequence(tag::SEQUENCE)?;
        outer.end("the message")?;
        let version = m.integer()?;
        if version != 3 {
            return Err(BerError(format!("version {version} is not v3")));
        }
        let mut g = m.sequence(tag::SEQUENCE)?;
        let msg_id = g.integer()?;
        let max_size = g.integer()?;
        let flags = match g.octets()? {
            [f] => *f,
            other => return Err(BerError(format!("msgFlags of {} bytes", other.len()))),
        };
        let model = g.integer()?;
        g.end("msgGlobalData")?;
        if model != SECURITY_MODEL_USM {
            return Err(BerError(format!("security model {model} is not USM")));
        }
        let security = m.octets()?;
        let (usm, inner) = UsmParams::decode(security)?;
        let offset = security.as_ptr() as usize - buf.as_ptr() as usize + inner;
        let data = match m.peek_tag() {
            Some(tag::OCTET_STRING) => ScopedData::Encrypted(m.octets()?.to_vec()),
            _ => {
                let (_, _, whole) = m.any_raw()?;
                ScopedData::Plain(ScopedPdu::decode(whole)?)
            }
        };
        m.end("the message")?;
        Ok((
            V3Message {
                msg_id,
                max_size,
                flags,
                usm,
                data,
            },
            offset,
        ))
    }
}

/// The version field of any SNMP message (0 v1, 1 v2c, 3 v3).
pub fn peek_version(buf: &[u8]) -> Result<i32, BerError> {
    let mut outer = Reader::new(buf);
    let mut m = outer.sequence(tag::SEQUENCE)?;
    m.integer()
}

#[cfg(test)]
mod tests;
