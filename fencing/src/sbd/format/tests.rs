use super::*;
use proptest::prelude::*;

/// The first five sectors (header, slot 0, mailbox 0, slot 1, mailbox 1) of disks Debian's
/// sbd 1.5.2 created: `create -1 5 -4 10`, `allocate alpha`, `allocate beta`, and
/// `-n alpha message beta reset` (fencing/tests/fixtures/sbd/make.sh).
const GOLDEN_512: &[u8] = include_bytes!("../../../tests/fixtures/sbd/sbd-1.5.2-512.bin");
const GOLDEN_4096: &[u8] = include_bytes!("../../../tests/fixtures/sbd/sbd-1.5.2-4096.bin");
const UUID_512: &str = include_str!("../../../tests/fixtures/sbd/uuid-512.txt");
const UUID_4096: &str = include_str!("../../../tests/fixtures/sbd/uuid-4096.txt");

fn sector(image: &[u8], size: SectorSize, n: u64) -> &[u8] {
    let start = usize::try_from(size.offset(n)).unwrap();
    &image[start..start + size.bytes_usize()]
}

fn name(s: &str) -> NodeName {
    NodeName::new(s).unwrap()
}

fn golden(image: &[u8], uuid_text: &str, size: SectorSize) {
    let header = Header::decode(sector(image, size, 0), size).unwrap();
    assert_eq!(header.slots, 255);
    assert_eq!(header.sector_size, size);
    assert_eq!(header.minor_version, 1);
    assert_eq!(
        header.timeouts,
        Timeouts {
            watchdog_s: 5,
            allocate_s: 2,
            loop_s: 1,
            msgwait_s: 10
        }
    );
    assert_eq!(header.uuid().unwrap().to_string(), uuid_text.trim());

    let alpha = Slot::decode(sector(image, size, slot_sector(0)), size).unwrap();
    let beta = Slot::decode(sector(image, size, slot_sector(1)), size).unwrap();
    assert_eq!(alpha, Slot::InUse(name("alpha")));
    assert_eq!(beta, Slot::InUse(name("beta")));
    let mbox0 = Mailbox::decode(sector(image, size, mailbox_sector(0)), size).unwrap();
    let mbox1 = Mailbox::decode(sector(image, size, mailbox_sector(1)), size).unwrap();
    assert_eq!(mbox0, Mailbox::EMPTY);
    assert_eq!(mbox1.cmd, Command::Reset);
    assert_eq!(mbox1.sender(), "alpha");

    // What we write is byte for byte what sbd wrote.
    let ours = Header::new(size, Timeouts::DEFAULT, header.uuid).encode();
    assert_eq!(ours, sector(image, size, 0));
    assert_eq!(alpha.encode(size), sector(image, size, 1));
    assert_eq!(Mailbox::EMPTY.encode(size), sector(image, size, 2));
    assert_eq!(beta.encode(size), sector(image, size, 3));
    let reset = Mailbox {
        cmd: Command::Reset,
        from: Some(name("alpha")),
    };
    assert_eq!(reset.encode(size), sector(image, size, 4));
}

#[test]
fn golden_sbd_512() {
    golden(GOLDEN_512, UUID_512, SectorSize::S512);
}

#[test]
fn golden_sbd_4096() {
    golden(GOLDEN_4096, UUID_4096, SectorSize::S4096);
}

#[test]
fn layout_matches_sbd() {
    assert_eq!(slot_sector(0), 1);
    assert_eq!(mailbox_sector(0), 2);
    assert_eq!(slot_sector(254), 509);
    assert_eq!(mailbox_sector(254), 510);
    assert_eq!(sectors_used(SLOTS), 511);
}

#[test]
fn header_field_offsets() {
    let h = Header::new(
        SectorSize::S512,
        Timeouts {
            watchdog_s: 0x0102_0304,
            allocate_s: 0x0506_0708,
            loop_s: 0x090a_0b0c,
            msgwait_s: 0x0d0e_0f10,
        },
        Uuid([0xaa; 16]),
    );
    let b = h.encode();
    assert_eq!(&b[0..12], b"SBD_SBD_\x02\xff\x00\x00");
    assert_eq!(&b[12..16], &[0, 0, 2, 0]);
    assert_eq!(&b[16..32], &(1u8..=16).collect::<Vec<_>>()[..]);
    assert_eq!(b[32], 1);
    assert_eq!(&b[33..49], &[0xaa; 16]);
    assert!(b[49..].iter().all(|&x| x == 0));
}

#[test]
fn not_sbd() {
    let zero = vec![0u8; 512];
    let err = Header::decode(&zero, SectorSize::S512).unwrap_err();
    assert!(matches!(err, FormatError::NotSbd { .. }));
    assert!(err.to_string().starts_with("not an SBD device"), "{err}");
}

#[test]
fn wrong_version() {
    let mut s = sector(GOLDEN_512, SectorSize::S512, 0).to_vec();
    s[8] = 3;
    assert_eq!(
        Header::decode(&s, SectorSize::S512),
        Err(FormatError::UnsupportedVersion { found: 3 })
    );
}

#[test]
fn wrong_sector_size() {
    // A 512-byte header read from a 4 KiB-sector device.
    let mut s = vec![0u8; 4096];
    s[..512].copy_from_slice(sector(GOLDEN_512, SectorSize::S512, 0));
    let err = Header::decode(&s, SectorSize::S4096).unwrap_err();
    assert_eq!(
        err,
        FormatError::SectorSizeMismatch {
            header: 512,
            device: 4096
        }
    );
    assert_eq!(
        err.to_string(),
        "SBD header is for 512-byte sectors but the device has 4096-byte sectors"
    );
    // And a buffer of the wrong length is refused, not read past.
    assert!(matches!(
        Header::decode(&s[..512], SectorSize::S4096),
        Err(FormatError::SectorLength { .. })
    ));
}

#[test]
fn torn_header() {
    // The magic landed but nothing after it: what a torn header write leaves.
    let mut s = vec![0u8; 512];
    s[..9].copy_from_slice(b"SBD_SBD_\x02");
    let err = Header::decode(&s, SectorSize::S512).unwrap_err();
    assert!(
        matches!(err, FormatError::Torn { what: "header", .. }),
        "{err}"
    );
    let mut s = sector(GOLDEN_512, SectorSize::S512, 0).to_vec();
    s[11] = 0x55;
    assert!(matches!(
        Header::decode(&s, SectorSize::S512),
        Err(FormatError::Torn { what: "header", .. })
    ));
    let mut s = sector(GOLDEN_512, SectorSize::S512, 0).to_vec();
    s[12..16].copy_from_slice(&1000u32.to_be_bytes());
    let err = Header::decode(&s, SectorSize::S512).unwrap_err();
    assert_eq!(
        err.to_string(),
        "torn or corrupt header sector: sector size field is 1000"
    );
}

#[test]
fn torn_slot_and_mailbox() {
    let size = SectorSize::S512;
    let mut s = sector(GOLDEN_512, size, 1).to_vec();
    s[0] = 7;
    assert!(matches!(
        Slot::decode(&s, size),
        Err(FormatError::Torn { what: "slot", .. })
    ));
    let mut s = vec![0u8; 512];
    s[0] = 1;
    s[1..65].fill(b'x');
    let err = Slot::decode(&s, size).unwrap_err();
    assert_eq!(
        err.to_string(),
        "torn or corrupt slot sector: name has no NUL terminator"
    );
    let mut s = vec![0u8; 512];
    s[0] = 1;
    assert!(matches!(
        Slot::decode(&s, size),
        Err(FormatError::Torn { .. })
    ));
    let mut s = vec![0u8; 512];
    s[1..65].fill(0xff);
    assert!(matches!(
        Mailbox::decode(&s, size),
        Err(FormatError::Torn {
            what: "mailbox",
            ..
        })
    ));
}

#[test]
fn free_slot_ignores_leftover_name() {
    let mut s = vec![0u8; 512];
    s[1..6].copy_from_slice(b"ghost");
    assert_eq!(Slot::decode(&s, SectorSize::S512), Ok(Slot::Free));
}

#[test]
fn undefined_commands_as_sbd_lists_them() {
    let mut s = Mailbox::EMPTY.encode(SectorSize::S512);
    s[0] = 0x80;
    let m = Mailbox::decode(&s, SectorSize::S512).unwrap();
    assert_eq!(m.cmd, Command::Undefined(-128));
    assert_eq!(m.cmd.name(), "undefined");
    assert_eq!(m.encode(SectorSize::S512), s);
    assert_eq!("reset".parse::<Command>(), Ok(Command::Reset));
    assert!("Reset".parse::<Command>().is_err());
    assert!(Command::Crashdump.is_fencing() && !Command::Exit.is_fencing());
}

#[test]
fn names() {
    assert_eq!(name("Alpha"), name("alpha"));
    assert!(NodeName::new("").is_err());
    assert!(NodeName::new(&"a".repeat(63)).is_ok());
    assert!(NodeName::new(&"a".repeat(64)).is_err());
    assert!(NodeName::new("a\0b").is_err());
}

#[test]
fn sector_sizes() {
    assert!(SectorSize::new(512).is_ok());
    assert!(SectorSize::new(1024).is_ok());
    assert!(SectorSize::new(4096).is_ok());
    for bad in [0, 256, 1000, 8192] {
        assert_eq!(SectorSize::new(bad), Err(FormatError::BadSectorSize(bad)));
    }
}

#[test]
fn uuid_is_v4_and_formatted() {
    let u = Uuid::random();
    let text = u.to_string();
    assert_eq!(text.len(), 36);
    assert_eq!(&text[14..15], "4");
    assert_eq!(
        Uuid([0x0f; 16]).to_string(),
        "0f0f0f0f-0f0f-0f0f-0f0f-0f0f0f0f0f0f"
    );
}

fn any_size() -> impl Strategy<Value = SectorSize> {
    prop_oneof![Just(SectorSize::S512), Just(SectorSize::S4096)]
}

fn any_name() -> impl Strategy<Value = NodeName> {
    "[a-zA-Z0-9._-]{1,63}".prop_map(|s| NodeName::new(&s).unwrap())
}

proptest! {
    #[test]
    fn header_round_trip(size in any_size(), slots in 1u8.., w: u32, a: u32, l: u32, m: u32,
                         minor: u8, uuid: [u8; 16]) {
        let h = Header {
            slots,
            sector_size: size,
            timeouts: Timeouts { watchdog_s: w, allocate_s: a, loop_s: l, msgwait_s: m },
            minor_version: minor,
            uuid: Uuid(uuid),
        };
        let bytes = h.encode();
        prop_assert_eq!(bytes.len(), size.bytes_usize());
        prop_assert_eq!(Header::decode(&bytes, size), Ok(h));
    }

    #[test]
    fn slot_round_trip(size in any_size(), n in proptest::option::of(any_name())) {
        let slot = n.map_or(Slot::Free, Slot::InUse);
        prop_assert_eq!(Slot::decode(&slot.encode(size), size), Ok(slot));
    }

    #[test]
    fn mailbox_round_trip(size in any_size(), cmd: u8, from in proptest::option::of(any_name())) {
        let m = Mailbox { cmd: Command::from_byte(cmd), from };
        prop_assert_eq!(Mailbox::decode(&m.encode(size), size), Ok(m));
    }

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Header::decode_any(&bytes);
        let _ = Header::decode(&bytes, SectorSize::S512);
        let _ = Slot::decode(&bytes, SectorSize::S512);
        let _ = Mailbox::decode(&bytes, SectorSize::S512);
    }
}
