//! The SBD on-disk format of ClusterLabs sbd 1.5, as pure encode/decode (no I/O).
//!
//! An SBD device is a sequence of logical sectors (the device's `BLKSSZGET` size, 512 or 4096
//! bytes), each holding one structure at its start and zeros after it:
//!
//! | sector        | content                                        |
//! |---------------|------------------------------------------------|
//! | 0             | [`Header`]                                     |
//! | `1 + 2 * i`   | [`Slot`] *i*: whether it is in use, node name  |
//! | `2 + 2 * i`   | [`Mailbox`] of slot *i*: command, sender name  |
//!
//! The header's integers are big-endian ("network byte order" in sbd). Names are at most 63
//! bytes, NUL-padded to 64, and compared case-insensitively (sbd uses `strncasecmp`).
//!
//! sbd has no checksums, so a torn or corrupt sector is recognised by what sbd itself never
//! writes: a header with the magic but no slots or a zero sector size, reserved bytes that are
//! not zero, an `in_use` byte other than 0 or 1, a name with no NUL terminator.

use std::fmt;

/// The magic at the start of sector 0.
pub const MAGIC: [u8; 8] = *b"SBD_SBD_";
/// The major format version sbd 1.5 writes and accepts.
pub const VERSION: u8 = 2;
/// The minor version sbd 1.5 writes: 1 adds the UUID.
pub const MINOR_VERSION: u8 = 1;
/// The number of slots sbd creates.
pub const SLOTS: u8 = 255;
/// The longest node name, in bytes (`SECTOR_NAME_MAX`).
pub const NAME_MAX_BYTES: usize = 63;
/// The size of a NUL-padded name field.
const NAME_FIELD_BYTES: usize = NAME_MAX_BYTES + 1;
/// Bytes of the header structure (`struct sector_header_s`, with its two padding bytes).
pub const HEADER_BYTES: usize = 49;
/// Bytes of a slot or mailbox structure.
pub const SLOT_BYTES: usize = 1 + NAME_FIELD_BYTES;

// Header field offsets (struct sector_header_s on every ABI sbd runs on).
const OFF_VERSION: usize = 8;
const OFF_SLOTS: usize = 9;
const OFF_RESERVED: usize = 10;
const OFF_SECTOR_SIZE: usize = 12;
const OFF_WATCHDOG: usize = 16;
const OFF_ALLOCATE: usize = 20;
const OFF_LOOP: usize = 24;
const OFF_MSGWAIT: usize = 28;
const OFF_MINOR: usize = 32;
const OFF_UUID: usize = 33;

/// What is wrong with a sector, or with a value that would go into one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Sector 0 does not start with `SBD_SBD_`.
    #[error("not an SBD device (sector 0 starts with {found:02x?}, not \"SBD_SBD_\"); initialise it with 'create'")]
    NotSbd {
        /// The first eight bytes found.
        found: [u8; 8],
    },
    /// The header has the magic but a major version other than 2.
    #[error("SBD header version {found} is not supported (only version 2)")]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
    },
    /// The header was written for another sector size than the device has.
    #[error("SBD header is for {header}-byte sectors but the device has {device}-byte sectors")]
    SectorSizeMismatch {
        /// The sector size recorded in the header.
        header: u32,
        /// The device's logical sector size.
        device: u32,
    },
    /// A sector holds something sbd never writes: a torn or corrupt write.
    #[error("torn or corrupt {what} sector: {detail}")]
    Torn {
        /// Which structure: "header", "slot", "mailbox".
        what: &'static str,
        /// What is inconsistent.
        detail: String,
    },
    /// A sector buffer of the wrong length was given.
    #[error("{what} sector is {got} bytes, expected {expected}")]
    SectorLength {
        /// Which structure.
        what: &'static str,
        /// The expected length (the sector size).
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// Not a sector size SBD can use.
    #[error("{0}-byte sectors are not supported (a power of two from 512 to 4096)")]
    BadSectorSize(u32),
    /// Not a valid node name.
    #[error("invalid node name {name:?}: {reason}")]
    BadName {
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Not one of sbd's message names.
    #[error("unknown message {0:?} (clear, test, reset, off, exit or crashdump)")]
    BadCommand(String),
}

/// A device's logical sector size: a power of two from 512 to 4096 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SectorSize(u32);

impl SectorSize {
    /// 512-byte sectors.
    pub const S512: SectorSize = SectorSize(512);
    /// 4 KiB sectors.
    pub const S4096: SectorSize = SectorSize(4096);

    /// Validates a sector size in bytes.
    pub fn new(bytes: u32) -> Result<SectorSize, FormatError> {
        if bytes.is_power_of_two() && (512..=4096).contains(&bytes) {
            Ok(SectorSize(bytes))
        } else {
            Err(FormatError::BadSectorSize(bytes))
        }
    }

    /// The size in bytes.
    pub fn bytes(self) -> u32 {
        self.0
    }

    /// The size in bytes, for buffers.
    pub fn bytes_usize(self) -> usize {
        self.0 as usize
    }

    /// Byte offset of sector `sector`.
    pub fn offset(self, sector: u64) -> u64 {
        sector * u64::from(self.0)
    }
}

impl fmt::Display for SectorSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The sector of slot `slot`'s node entry.
pub fn slot_sector(slot: u8) -> u64 {
    1 + 2 * u64::from(slot)
}

/// The sector of slot `slot`'s mailbox.
pub fn mailbox_sector(slot: u8) -> u64 {
    2 + 2 * u64::from(slot)
}

/// Sectors a device with `slots` slots uses: the header and two per slot.
pub fn sectors_used(slots: u8) -> u64 {
    1 + 2 * u64::from(slots)
}

/// The timeouts recorded in the header, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// The watchdog timeout: a node that stops feeding its watchdog is dead this long after.
    pub watchdog_s: u32,
    /// How long `allocate` waits before re-reading the slot it wrote.
    pub allocate_s: u32,
    /// The watcher's loop interval.
    pub loop_s: u32,
    /// How long a sender waits after writing a message before it counts the target as fenced.
    pub msgwait_s: u32,
}

impl Timeouts {
    /// sbd's defaults, with msgwait twice the watchdog timeout.
    pub const DEFAULT: Timeouts = Timeouts {
        watchdog_s: 5,
        allocate_s: 2,
        loop_s: 1,
        msgwait_s: 10,
    };
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts::DEFAULT
    }
}

/// A random (version 4) UUID, as sbd's `uuid_generate` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// A new random UUID.
    pub fn random() -> Uuid {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b).expect("the OS random source works");
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Uuid(b)
    }
}

impl fmt::Display for Uuid {
    /// Lower-case with hyphens, as `uuid_unparse_lower`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Sector 0: `struct sector_header_s`.
///
/// | offset | size | field                                  |
/// |--------|------|----------------------------------------|
/// | 0      | 8    | magic `SBD_SBD_`                       |
/// | 8      | 1    | version (2)                            |
/// | 9      | 1    | slots (255)                            |
/// | 10     | 2    | padding, zero                          |
/// | 12     | 4    | sector size, big-endian                |
/// | 16     | 4    | watchdog timeout (s), big-endian       |
/// | 20     | 4    | allocate timeout (s), big-endian       |
/// | 24     | 4    | loop timeout (s), big-endian           |
/// | 28     | 4    | msgwait timeout (s), big-endian        |
/// | 32     | 1    | minor version (1)                      |
/// | 33     | 16   | UUID (meaningful when minor >= 1)      |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Number of slots.
    pub slots: u8,
    /// The sector size the header was written for.
    pub sector_size: SectorSize,
    /// The timeouts.
    pub timeouts: Timeouts,
    /// Minor version: 0 has no UUID, 1 has one.
    pub minor_version: u8,
    /// The device's UUID (zero and meaningless when `minor_version` is 0).
    pub uuid: Uuid,
}

impl Header {
    /// The header sbd 1.5's `create` writes.
    pub fn new(sector_size: SectorSize, timeouts: Timeouts, uuid: Uuid) -> Header {
        Header {
            slots: SLOTS,
            sector_size,
            timeouts,
            minor_version: MINOR_VERSION,
            uuid,
        }
    }

    /// The UUID when the header has one (minor version 1 and later).
    pub fn uuid(&self) -> Option<Uuid> {
        (self.minor_version > 0).then_some(self.uuid)
    }

    /// Decodes sector 0 of a device whose logical sector size is `device`.
    pub fn decode(sector: &[u8], device: SectorSize) -> Result<Header, FormatError> {
        check_len("header", sector, device)?;
        let header = Header::decode_any(sector)?;
        if header.sector_size != device {
            return Err(FormatError::SectorSizeMismatch {
                header: header.sector_size.bytes(),
                device: device.bytes(),
            });
        }
        Ok(header)
    }

    /// Decodes a header without knowing the device's sector size (for regular files, whose
    /// sector size is the one their header records). `bytes` is at least [`HEADER_BYTES`].
    pub fn decode_any(bytes: &[u8]) -> Result<Header, FormatError> {
        if bytes.len() < HEADER_BYTES {
            return Err(FormatError::SectorLength {
                what: "header",
                expected: HEADER_BYTES,
                got: bytes.len(),
            });
        }
        let magic: [u8; 8] = bytes[..8].try_into().expect("8 bytes");
        if magic != MAGIC {
            return Err(FormatError::NotSbd { found: magic });
        }
        if bytes[OFF_VERSION] != VERSION {
            return Err(FormatError::UnsupportedVersion {
                found: bytes[OFF_VERSION],
            });
        }
        let torn = |detail: String| FormatError::Torn {
            what: "header",
            detail,
        };
        let slots = bytes[OFF_SLOTS];
        if slots == 0 {
            return Err(torn("it has no slots".into()));
        }
        if bytes[OFF_RESERVED..OFF_SECTOR_SIZE] != [0, 0] {
            return Err(torn(format!(
                "padding bytes 10..12 are {:02x?}, not zero",
                &bytes[OFF_RESERVED..OFF_SECTOR_SIZE]
            )));
        }
        let raw_sector_size = be32(bytes, OFF_SECTOR_SIZE);
        let sector_size = SectorSize::new(raw_sector_size)
            .map_err(|_| torn(format!("sector size field is {raw_sector_size}")))?;
        let uuid: [u8; 16] = bytes[OFF_UUID..OFF_UUID + 16].try_into().expect("16 bytes");
        Ok(Header {
            slots,
            sector_size,
            timeouts: Timeouts {
                watchdog_s: be32(bytes, OFF_WATCHDOG),
                allocate_s: be32(bytes, OFF_ALLOCATE),
                loop_s: be32(bytes, OFF_LOOP),
                msgwait_s: be32(bytes, OFF_MSGWAIT),
            },
            minor_version: bytes[OFF_MINOR],
            uuid: Uuid(uuid),
        })
    }

    /// Encodes the header into a whole sector of its sector size.
    pub fn encode(&self) -> Vec<u8> {
        let mut s = vec![0u8; self.sector_size.bytes_usize()];
        s[..8].copy_from_slice(&MAGIC);
        s[OFF_VERSION] = VERSION;
        s[OFF_SLOTS] = self.slots;
        let t = &self.timeouts;
        for (off, v) in [
            (OFF_SECTOR_SIZE, self.sector_size.bytes()),
            (OFF_WATCHDOG, t.watchdog_s),
            (OFF_ALLOCATE, t.allocate_s),
            (OFF_LOOP, t.loop_s),
            (OFF_MSGWAIT, t.msgwait_s),
        ] {
            s[off..off + 4].copy_from_slice(&v.to_be_bytes());
        }
        s[OFF_MINOR] = self.minor_version;
        s[OFF_UUID..OFF_UUID + 16].copy_from_slice(&self.uuid.0);
        s
    }
}

fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn check_len(what: &'static str, sector: &[u8], size: SectorSize) -> Result<(), FormatError> {
    if sector.len() == size.bytes_usize() {
        Ok(())
    } else {
        Err(FormatError::SectorLength {
            what,
            expected: size.bytes_usize(),
            got: sector.len(),
        })
    }
}

/// A node name: 1 to 63 bytes of UTF-8 with no NUL, compared case-insensitively (ASCII).
#[derive(Debug, Clone, Eq)]
pub struct NodeName(String);

impl NodeName {
    /// Validates a name.
    pub fn new(name: &str) -> Result<NodeName, FormatError> {
        let bad = |reason| FormatError::BadName {
            name: name.to_string(),
            reason,
        };
        if name.is_empty() {
            return Err(bad("it is empty"));
        }
        if name.len() > NAME_MAX_BYTES {
            return Err(bad("longer than 63 bytes"));
        }
        if name.contains('\0') {
            return Err(bad("it contains a NUL byte"));
        }
        Ok(NodeName(name.to_string()))
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PartialEq for NodeName {
    fn eq(&self, other: &NodeName) -> bool {
        self.0.eq_ignore_ascii_case(&other.0)
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Decodes a NUL-padded 64-byte name field; `None` when empty.
fn decode_name(what: &'static str, field: &[u8]) -> Result<Option<NodeName>, FormatError> {
    let torn = |detail: String| FormatError::Torn { what, detail };
    let Some(end) = field.iter().position(|&b| b == 0) else {
        return Err(torn("name has no NUL terminator".into()));
    };
    if end == 0 {
        return Ok(None);
    }
    let text = std::str::from_utf8(&field[..end])
        .map_err(|_| torn(format!("name {:02x?} is not UTF-8", &field[..end])))?;
    NodeName::new(text).map(Some)
}

fn encode_name(field: &mut [u8], name: Option<&NodeName>) {
    if let Some(n) = name {
        field[..n.0.len()].copy_from_slice(n.0.as_bytes());
    }
}

/// A slot's node entry (`struct sector_node_s`): byte 0 `in_use`, bytes 1..65 the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// Not allocated (`in_use` 0); whatever name bytes follow are ignored, as sbd does.
    Free,
    /// Allocated to a node (`in_use` 1).
    InUse(NodeName),
}

impl Slot {
    /// Decodes a slot sector.
    pub fn decode(sector: &[u8], size: SectorSize) -> Result<Slot, FormatError> {
        check_len("slot", sector, size)?;
        match sector[0] {
            0 => Ok(Slot::Free),
            1 => match decode_name("slot", &sector[1..SLOT_BYTES])? {
                Some(name) => Ok(Slot::InUse(name)),
                None => Err(FormatError::Torn {
                    what: "slot",
                    detail: "slot is in use but has no name".into(),
                }),
            },
            b => Err(FormatError::Torn {
                what: "slot",
                detail: format!("in_use byte is {b:#04x}, not 0 or 1"),
            }),
        }
    }

    /// Encodes into a whole sector.
    pub fn encode(&self, size: SectorSize) -> Vec<u8> {
        let mut s = vec![0u8; size.bytes_usize()];
        if let Slot::InUse(name) = self {
            s[0] = 1;
            encode_name(&mut s[1..SLOT_BYTES], Some(name));
        }
        s
    }

    /// The owner's name, if allocated.
    pub fn name(&self) -> Option<&NodeName> {
        match self {
            Slot::Free => None,
            Slot::InUse(n) => Some(n),
        }
    }
}

/// A mailbox command (`cmd`, a signed byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// 0: no message.
    Clear,
    /// 1: a test; the watcher acknowledges it by clearing the mailbox.
    Test,
    /// 2: reboot.
    Reset,
    /// 3: power off.
    Off,
    /// 4: stop the watcher cleanly.
    Exit,
    /// 5: crash dump.
    Crashdump,
    /// Any other value, which sbd lists as "undefined" (likely a partial write).
    Undefined(i8),
}

impl Command {
    /// The wire byte.
    pub fn to_byte(self) -> u8 {
        let v: i8 = match self {
            Command::Clear => 0,
            Command::Test => 1,
            Command::Reset => 2,
            Command::Off => 3,
            Command::Exit => 4,
            Command::Crashdump => 5,
            Command::Undefined(v) => v,
        };
        v.to_ne_bytes()[0]
    }

    /// From the wire byte.
    pub fn from_byte(b: u8) -> Command {
        match b {
            0 => Command::Clear,
            1 => Command::Test,
            2 => Command::Reset,
            3 => Command::Off,
            4 => Command::Exit,
            5 => Command::Crashdump,
            _ => Command::Undefined(i8::from_ne_bytes([b])),
        }
    }

    /// sbd's name for it (`char2cmd`).
    pub fn name(self) -> &'static str {
        match self {
            Command::Clear => "clear",
            Command::Test => "test",
            Command::Reset => "reset",
            Command::Off => "off",
            Command::Exit => "exit",
            Command::Crashdump => "crashdump",
            Command::Undefined(_) => "undefined",
        }
    }

    /// Whether the command fences the node (reset, off, crashdump).
    pub fn is_fencing(self) -> bool {
        matches!(self, Command::Reset | Command::Off | Command::Crashdump)
    }
}

impl std::str::FromStr for Command {
    type Err = FormatError;

    /// sbd's names, case-sensitive as its `cmd2char`.
    fn from_str(s: &str) -> Result<Command, FormatError> {
        Ok(match s {
            "clear" => Command::Clear,
            "test" => Command::Test,
            "reset" => Command::Reset,
            "off" => Command::Off,
            "exit" => Command::Exit,
            "crashdump" => Command::Crashdump,
            _ => return Err(FormatError::BadCommand(s.to_string())),
        })
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A slot's mailbox (`struct sector_mbox_s`): byte 0 `cmd`, bytes 1..65 the sender's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// The command.
    pub cmd: Command,
    /// Who wrote it (empty after create or an acknowledgement).
    pub from: Option<NodeName>,
}

impl Mailbox {
    /// An empty mailbox, as create and the watcher's acknowledgement write it.
    pub const EMPTY: Mailbox = Mailbox {
        cmd: Command::Clear,
        from: None,
    };

    /// Decodes a mailbox sector.
    pub fn decode(sector: &[u8], size: SectorSize) -> Result<Mailbox, FormatError> {
        check_len("mailbox", sector, size)?;
        Ok(Mailbox {
            cmd: Command::from_byte(sector[0]),
            from: decode_name("mailbox", &sector[1..SLOT_BYTES])?,
        })
    }

    /// Encodes into a whole sector.
    pub fn encode(&self, size: SectorSize) -> Vec<u8> {
        let mut s = vec![0u8; size.bytes_usize()];
        s[0] = self.cmd.to_byte();
        encode_name(&mut s[1..SLOT_BYTES], self.from.as_ref());
        s
    }

    /// The sender's name, or "" (as sbd's `list` prints it).
    pub fn sender(&self) -> &str {
        self.from.as_ref().map_or("", NodeName::as_str)
    }
}

#[cfg(test)]
mod tests;
