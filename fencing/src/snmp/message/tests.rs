use super::*;
use proptest::prelude::*;

fn oid(s: &str) -> Oid {
    Oid::parse(s).unwrap()
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// `snmpget -v2c -c public HOST 1.3.6.1.2.1.1.1.0` as net-snmp sends it (request id fixed).
const GET_SYSDESCR: &str = "30 29 02 01 01 04 06 70 75 62 6c 69 63 a0 1c 02 04 12 34 56 78
    02 01 00 02 01 00 30 0e 30 0c 06 08 2b 06 01 02 01 01 01 00 05 00";

#[test]
fn golden_v2c_get() {
    let m = CommunityMessage {
        version: CommunityVersion::V2c,
        community: b"public".to_vec(),
        pdu: Pdu::request(
            PduType::Get,
            0x1234_5678,
            vec![(oid("1.3.6.1.2.1.1.1.0"), Value::Null)],
        ),
    };
    assert_eq!(m.encode(), hex(GET_SYSDESCR));
    assert_eq!(CommunityMessage::decode(&hex(GET_SYSDESCR)).unwrap(), m);
    assert_eq!(peek_version(&hex(GET_SYSDESCR)), Ok(1));
}

/// `snmpset -v1 -c private HOST 1.3.6.1.2.1.2.2.1.7.3 i 2`: ifAdminStatus.3 = down.
#[test]
fn golden_v1_set_if_admin_status() {
    let bytes = hex(
        "30 2b 02 01 00 04 07 70 72 69 76 61 74 65 a3 1d 02 02 04 d2 02 01 00 02 01 00
         30 11 30 0f 06 0a 2b 06 01 02 01 02 02 01 07 03 02 01 02",
    );
    let m = CommunityMessage::decode(&bytes).unwrap();
    assert_eq!(m.version, CommunityVersion::V1);
    assert_eq!(m.community, b"private");
    assert_eq!(m.pdu.kind, PduType::Set);
    assert_eq!(m.pdu.request_id, 1234);
    assert_eq!(
        m.pdu.varbinds,
        vec![(oid("1.3.6.1.2.1.2.2.1.7.3"), Value::Integer(2))]
    );
    assert_eq!(m.encode(), bytes);
}

#[test]
fn response_with_error_and_exceptions() {
    let pdu = Pdu {
        kind: PduType::Response,
        request_id: -5,
        error_status: 17,
        error_index: 1,
        varbinds: vec![
            (oid("1.3.6.1.2.1.2.2.1.7.99"), Value::NoSuchInstance),
            (
                oid("1.3.6.1.2.1.2.2.1.2.1"),
                Value::OctetString(b"lo".to_vec()),
            ),
            (oid("1.3.6"), Value::EndOfMibView),
            (oid("1.3.6.1.2.1.1.3.0"), Value::TimeTicks(u32::MAX)),
            (oid("1.3.6.1.2.1.31.1.1.1.6.1"), Value::Counter64(u64::MAX)),
        ],
    };
    let m = CommunityMessage {
        version: CommunityVersion::V2c,
        community: b"c".to_vec(),
        pdu,
    };
    assert_eq!(CommunityMessage::decode(&m.encode()).unwrap(), m);
    assert_eq!(error_status_name(17), "notWritable");
}

#[test]
fn oid_encoding() {
    let o = oid(".1.3.6.1.2.1.2.2.1.7");
    assert_eq!(o.encode(), hex("06 09 2b 06 01 02 01 02 02 01 07"));
    let big = oid("2.999.4294967295");
    let enc = big.encode();
    assert_eq!(Reader::new(&enc).oid().unwrap(), big);
    assert!(Oid::parse("1.40").is_err());
    assert!(Oid::parse("3.1").is_err());
    assert!(Oid::parse("1").is_err());
    assert!(Oid::parse("1.3.x").is_err());
    assert!(oid("1.3.6.1.2.1.2.2.1.2.7").starts_with(&oid("1.3.6.1.2.1.2.2.1.2")));
    assert!(!oid("1.3.6.1.2.1.2.2.1.3.7").starts_with(&oid("1.3.6.1.2.1.2.2.1.2")));
}

#[test]
fn malformed_input_is_an_error() {
    let good = hex(GET_SYSDESCR);
    for cut in 0..good.len() {
        assert!(
            CommunityMessage::decode(&good[..cut]).is_err(),
            "cut at {cut}"
        );
    }
    // Indefinite length, a length past the end, trailing bytes, a v3 message.
    assert!(CommunityMessage::decode(&hex("30 80 02 01 01 00 00")).is_err());
    assert!(CommunityMessage::decode(&hex("30 84 ff ff ff ff")).is_err());
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(CommunityMessage::decode(&trailing).is_err());
    let mut v3 = good;
    v3[4] = 3;
    assert!(CommunityMessage::decode(&v3).is_err());
}

#[test]
fn v3_round_trip_and_auth_offset() {
    let scoped = ScopedPdu {
        context_engine_id: b"\x80\x00\x1f\x88\x80engine".to_vec(),
        context_name: Vec::new(),
        pdu: Pdu::request(
            PduType::Get,
            9,
            vec![(oid("1.3.6.1.2.1.1.5.0"), Value::Null)],
        ),
    };
    for data in [
        ScopedData::Plain(scoped.clone()),
        ScopedData::Encrypted(vec![0xab; 300]),
    ] {
        let m = V3Message {
            msg_id: 77,
            max_size: 65507,
            flags: flags::AUTH | flags::PRIV | flags::REPORTABLE,
            usm: UsmParams {
                engine_id: b"\x80\x00\x1f\x88\x80engine".to_vec(),
                engine_boots: 3,
                engine_time: 12345,
                user: b"fencer".to_vec(),
                auth_params: vec![0x5a; 12],
                priv_params: vec![1; 8],
            },
            data,
        };
        let (bytes, offset) = m.encode();
        assert_eq!(&bytes[offset..offset + 12], &[0x5a; 12]);
        assert_eq!(V3Message::decode(&bytes).unwrap(), m);
        assert_eq!(peek_version(&bytes), Ok(3));
    }
}

fn any_oid() -> impl Strategy<Value = Oid> {
    (
        0u32..2,
        0u32..40,
        proptest::collection::vec(any::<u32>(), 0..20),
    )
        .prop_map(|(a, b, rest)| {
            let mut arcs = vec![a, b];
            arcs.extend(rest);
            Oid::new(arcs).unwrap()
        })
}

fn any_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i32>().prop_map(Value::Integer),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Value::OctetString),
        Just(Value::Null),
        any_oid().prop_map(Value::Oid),
        any::<[u8; 4]>().prop_map(Value::IpAddress),
        any::<u32>().prop_map(Value::Counter32),
        any::<u32>().prop_map(Value::Gauge32),
        any::<u32>().prop_map(Value::TimeTicks),
        any::<u64>().prop_map(Value::Counter64),
        Just(Value::NoSuchObject),
        Just(Value::NoSuchInstance),
        Just(Value::EndOfMibView),
    ]
}

proptest! {
    #[test]
    fn pdu_round_trip(id: i32, status: i32, index: i32,
                      binds in proptest::collection::vec((any_oid(), any_value()), 0..10)) {
        let m = CommunityMessage {
            version: CommunityVersion::V1,
            community: b"private".to_vec(),
            pdu: Pdu { kind: PduType::Response, request_id: id, error_status: status,
                       error_index: index, varbinds: binds },
        };
        prop_assert_eq!(CommunityMessage::decode(&m.encode()), Ok(m));
    }

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = CommunityMessage::decode(&bytes);
        let _ = V3Message::decode(&bytes);
        let _ = UsmParams::decode(&bytes);
        let _ = ScopedPdu::decode(&bytes);
    }
}

/// net-snmp 5.9's `snmpget -v3 -l authPriv` engine-discovery probe, captured off the wire.
const NET_SNMP_V3_PROBE: &[u8] =
    include_bytes!("../../../tests/fixtures/snmp/net-snmp-5.9-v3-probe.bin");

#[test]
fn golden_net_snmp_v3_discovery_probe() {
    let m = V3Message::decode(NET_SNMP_V3_PROBE).unwrap();
    assert_eq!(m.max_size, 65507);
    assert_eq!(m.flags, flags::REPORTABLE);
    assert_eq!(m.usm, UsmParams::default());
    let ScopedData::Plain(scoped) = &m.data else {
        panic!("the probe is not encrypted")
    };
    assert!(scoped.context_engine_id.is_empty());
    assert_eq!(scoped.pdu.kind, PduType::Get);
    assert!(scoped.pdu.varbinds.is_empty());
    // Our encoder writes the same bytes.
    assert_eq!(m.encode().0, NET_SNMP_V3_PROBE);
}
