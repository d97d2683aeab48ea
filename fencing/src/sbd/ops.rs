//! What sbd's `create`, `dump`, `list`, `allocate` and `message` do, on open devices.
//!
//! Single-device operations follow sbd 1.5's semantics: `create` writes a fresh header and 255
//! empty slots (overwriting whatever was there, as sbd does); `allocate` writes the first free
//! slot, waits the allocate timeout and re-reads to confirm no other node took it; a message is
//! written, read back to verify, and then the sender waits msgwait so the target has certainly
//! read it and died before the sender reports success. Unlike sbd, `create` writes the slots first
//! and the header last, so an interrupted create leaves no valid-looking header over garbage.
//!
//! [`deliver`] runs a message on several devices at once and succeeds when more than half of
//! them took it, as sbd's messenger does.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use super::device::{SbdDevice, MAX_RUN_SECTORS};
use super::format::{
    mailbox_sector, sectors_used, slot_sector, Command, Header, Mailbox, NodeName, SectorSize,
    Slot, Timeouts, Uuid, SLOTS,
};
use super::watcher::{check_timeouts, quorum_write};
use super::SbdError;

/// Writes a fresh SBD header and empty slots; returns the header written.
pub fn create(dev: &SbdDevice, timeouts: Timeouts, uuid: Uuid) -> Result<Header, SbdError> {
    check_timeouts(&timeouts)?;
    let size = dev.sector_size();
    let header = Header::new(size, timeouts, uuid);
    let sectors = sectors_used(header.slots);
    let need_bytes = size.offset(sectors);
    if dev.size_bytes() < need_bytes {
        return Err(SbdError::TooSmall {
            path: dev.path().to_string(),
            size_bytes: dev.size_bytes(),
            need_bytes,
            sectors,
            sector_size: size.bytes(),
        });
    }
    let mut next = 1;
    while next < sectors {
        let run = (sectors - next).min(MAX_RUN_SECTORS);
        let bytes = usize::try_from(size.offset(run)).expect("a run is at most 1 MiB");
        dev.write_sectors(next, vec![0u8; bytes])?;
        next += run;
    }
    dev.write_sectors(0, header.encode())?;
    Ok(header)
}

/// Reads and validates the header (magic, version, sector size).
pub fn read_header(dev: &SbdDevice) -> Result<Header, SbdError> {
    let sector = dev.read_sector(0)?;
    Header::decode(&sector, dev.sector_size()).map_err(|source| SbdError::Format {
        path: dev.path().to_string(),
        error: source,
    })
}

/// Reads slot `slot`'s node entry.
pub fn read_slot(dev: &SbdDevice, slot: u8) -> Result<Slot, SbdError> {
    let sector = dev.read_sector(slot_sector(slot))?;
    Slot::decode(&sector, dev.sector_size()).map_err(|source| slot_error(dev, slot, source))
}

/// Reads slot `slot`'s mailbox.
pub fn read_mailbox(dev: &SbdDevice, slot: u8) -> Result<Mailbox, SbdError> {
    let sector = dev.read_sector(mailbox_sector(slot))?;
    Mailbox::decode(&sector, dev.sector_size()).map_err(|source| slot_error(dev, slot, source))
}

/// Writes slot `slot`'s mailbox.
pub fn write_mailbox(dev: &SbdDevice, slot: u8, mailbox: &Mailbox) -> Result<(), SbdError> {
    dev.write_sectors(mailbox_sector(slot), mailbox.encode(dev.sector_size()))
}

/// Writes slot `slot`'s mailbox and reads it back.
pub fn write_mailbox_verified(
    dev: &SbdDevice,
    slot: u8,
    mailbox: &Mailbox,
) -> Result<(), SbdError> {
    let bytes = mailbox.encode(dev.sector_size());
    dev.write_sectors(mailbox_sector(slot), bytes.clone())?;
    if dev.read_sector(mailbox_sector(slot))? != bytes {
        return Err(SbdError::VerifyFailed {
            path: dev.path().to_string(),
            slot,
        });
    }
    Ok(())
}

fn slot_error(dev: &SbdDevice, slot: u8, source: super::format::FormatError) -> SbdError {
    SbdError::Slot {
        path: dev.path().to_string(),
        slot,
        error: source,
    }
}

/// The slot allocated to `name` (compared case-insensitively), if any.
pub fn lookup(dev: &SbdDevice, header: &Header, name: &NodeName) -> Result<Option<u8>, SbdError> {
    for slot in 0..header.slots {
        if read_slot(dev, slot)?.name() == Some(name) {
            return Ok(Some(slot));
        }
    }
    Ok(None)
}

fn first_free(dev: &SbdDevice, header: &Header) -> Result<Option<u8>, SbdError> {
    for slot in 0..header.slots {
        if read_slot(dev, slot)? == Slot::Free {
            return Ok(Some(slot));
        }
    }
    Ok(None)
}

/// One allocated slot, as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotEntry {
    /// The slot index.
    pub slot: u8,
    /// Its owner.
    pub name: NodeName,
    /// Its mailbox.
    pub mailbox: Mailbox,
}

impl std::fmt::Display for SlotEntry {
    /// sbd's `list` line: `slot<TAB>name<TAB>cmd<TAB>from`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\t{}\t{}\t{}",
            self.slot,
            self.name,
            self.mailbox.cmd,
            self.mailbox.sender()
        )
    }
}

/// The allocated slots with their mailboxes.
pub fn list(dev: &SbdDevice) -> Result<Vec<SlotEntry>, SbdError> {
    let header = read_header(dev)?;
    let mut entries = Vec::new();
    for slot in 0..header.slots {
        if let Slot::InUse(name) = read_slot(dev, slot)? {
            entries.push(SlotEntry {
                slot,
                name,
                mailbox: read_mailbox(dev, slot)?,
            });
        }
    }
    Ok(entries)
}

/// sbd's `dump` lines for a header (without the "==Dumping" frame).
pub fn dump_lines(header: &Header) -> Vec<String> {
    let t = &header.timeouts;
    let mut lines = vec![format!(
        "Header version     : {}.{}",
        super::format::VERSION,
        header.minor_version
    )];
    if let Some(uuid) = header.uuid() {
        lines.push(format!("UUID               : {uuid}"));
    }
    lines.extend([
        format!("Number of slots    : {}", header.slots),
        format!("Sector size        : {}", header.sector_size),
        format!("Timeout (watchdog) : {}", t.watchdog_s),
        format!("Timeout (allocate) : {}", t.allocate_s),
        format!("Timeout (loop)     : {}", t.loop_s),
        format!("Timeout (msgwait)  : {}", t.msgwait_s),
    ]);
    lines
}

/// How an allocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocated {
    /// The node already had this slot.
    Existing(u8),
    /// The node now owns this slot.
    New(u8),
}

impl Allocated {
    /// The slot.
    pub fn slot(self) -> u8 {
        match self {
            Allocated::Existing(s) | Allocated::New(s) => s,
        }
    }
}

/// Allocates a slot for `name` as sbd does: write the first free slot, wait the allocate
/// timeout, and look again; another node writing the same slot meanwhile makes us try the next.
/// `trying` is told each slot tried; `sleep` waits (a parameter so tests need not wait).
pub fn allocate(
    dev: &SbdDevice,
    name: &NodeName,
    mut trying: impl FnMut(u8),
    mut sleep: impl FnMut(Duration),
) -> Result<Allocated, SbdError> {
    let header = read_header(dev)?;
    if let Some(slot) = lookup(dev, &header, name)? {
        return Ok(Allocated::Existing(slot));
    }
    // Every attempt takes one free slot or finds the name, so this bounds the retries.
    for _ in 0..SLOTS {
        let Some(slot) = first_free(dev, &header)? else {
            return Err(SbdError::NoFreeSlot {
                path: dev.path().to_string(),
            });
        };
        trying(slot);
        dev.write_sectors(
            slot_sector(slot),
            Slot::InUse(name.clone()).encode(dev.sector_size()),
        )?;
        sleep(Duration::from_secs(u64::from(header.timeouts.allocate_s)));
        if let Some(slot) = lookup(dev, &header, name)? {
            return Ok(Allocated::New(slot));
        }
    }
    Err(SbdError::AllocateRaced {
        node: name.to_string(),
        path: dev.path().to_string(),
    })
}

/// Writes `cmd` from `from` into `target`'s mailbox and verifies it; returns the slot and the
/// header's msgwait.
pub fn send(
    dev: &SbdDevice,
    target: &NodeName,
    cmd: Command,
    from: &NodeName,
) -> Result<(u8, Duration), SbdError> {
    let header = read_header(dev)?;
    let slot = lookup(dev, &header, target)?.ok_or_else(|| SbdError::NoSlot {
        node: target.to_string(),
        path: dev.path().to_string(),
    })?;
    let mailbox = Mailbox {
        cmd,
        from: Some(from.clone()),
    };
    write_mailbox_verified(dev, slot, &mailbox)?;
    Ok((
        slot,
        Duration::from_secs(u64::from(header.timeouts.msgwait_s)),
    ))
}

/// Whether `target` holds a poison pill (reset, off, crashdump) on more than half of the
/// devices, i.e. whether a fencing message to it was delivered. Devices that cannot be read or
/// have no slot for it do not count; an error when none can be read.
pub fn pill_delivered(
    paths: &[PathBuf],
    options: DeviceOptions,
    target: &NodeName,
) -> Result<bool, SbdError> {
    let mut pills = 0;
    let mut last_error = None;
    let mut read = 0;
    for path in paths {
        let found = options.open(path).and_then(|dev| {
            let header = read_header(&dev)?;
            let slot = lookup(&dev, &header, target)?.ok_or_else(|| SbdError::NoSlot {
                node: target.to_string(),
                path: dev.path().to_string(),
            })?;
            read_mailbox(&dev, slot)
        });
        match found {
            Ok(mailbox) => {
                read += 1;
                if mailbox.cmd.is_fencing() {
                    pills += 1;
                }
            }
            Err(e) => last_error = Some(e),
        }
    }
    match (read, last_error) {
        (0, Some(e)) => Err(e),
        _ => Ok(quorum_write(pills, paths.len())),
    }
}

/// The outcome of [`deliver`].
#[derive(Debug)]
pub struct Delivery {
    /// Devices that took the message.
    pub delivered: usize,
    /// Why the others did not (each error names its device).
    pub failures: Vec<SbdError>,
}

/// How to open devices.
#[derive(Debug, Clone, Copy)]
pub struct DeviceOptions {
    /// The sector size of regular files without a header (see [`SbdDevice::open`]).
    pub file_sector_size: Option<SectorSize>,
    /// The bound on every I/O.
    pub io_timeout: Duration,
}

impl DeviceOptions {
    /// Opens `path`.
    pub fn open(&self, path: &Path) -> Result<SbdDevice, SbdError> {
        SbdDevice::open(path, self.file_sector_size, self.io_timeout)
    }
}

/// Delivers `cmd` to `target` on every device at once, as sbd's messenger: each device is
/// opened, gets the message written and verified, then (except for `exit`) waits its msgwait; the
/// message counts as delivered once more than half of the devices have done so. Every step is
/// bounded by the device I/O timeout, so a hung device fails instead of hanging the sender.
pub fn deliver(
    paths: &[PathBuf],
    options: DeviceOptions,
    target: &NodeName,
    cmd: Command,
    from: &NodeName,
) -> Result<Delivery, SbdError> {
    let total = paths.len();
    let (done_tx, done_rx) = mpsc::channel();
    for path in paths {
        let done = done_tx.clone();
        let (path, target, from) = (path.clone(), target.clone(), from.clone());
        std::thread::spawn(move || {
            let r = options.open(&path).and_then(|dev| {
                let (_, msgwait) = send(&dev, &target, cmd, &from)?;
                if cmd != Command::Exit {
                    tracing::info!(
                        "{}: {cmd} written to {target}; waiting msgwait {} s",
                        dev.path(),
                        msgwait.as_secs()
                    );
                    std::thread::sleep(msgwait);
                }
                Ok(())
            });
            let _ = done.send(r);
        });
    }
    drop(done_tx);
    let mut delivered = 0;
    let mut failures = Vec::new();
    while !quorum_write(delivered, total) && delivered + failures.len() < total {
        match done_rx.recv() {
            Ok(Ok(())) => delivered += 1,
            Ok(Err(e)) => failures.push(e),
            Err(_) => unreachable!("each sender thread answers once"),
        }
    }
    if quorum_write(delivered, total) {
        Ok(Delivery {
            delivered,
            failures,
        })
    } else {
        Err(SbdError::NoMajority {
            delivered,
            devices: total,
            failures: failures
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(dir: &tempfile::TempDir, name: &str, bytes: u64) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::File::create(&p).unwrap().set_len(bytes).unwrap();
        p
    }

    fn open(p: &Path, size: Option<SectorSize>) -> SbdDevice {
        SbdDevice::open(p, size, Duration::from_secs(5)).unwrap()
    }

    fn node(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    const FAST: Timeouts = Timeouts {
        watchdog_s: 1,
        allocate_s: 0,
        loop_s: 1,
        msgwait_s: 2,
    };

    #[test]
    fn create_allocate_send_list() {
        let dir = tempfile::tempdir().unwrap();
        for size in [SectorSize::S512, SectorSize::S4096] {
            let p = image(&dir, &format!("d{size}"), 4 << 20);
            let dev = open(&p, Some(size));
            let h = create(&dev, FAST, Uuid::random()).unwrap();
            // Reopened without a size hint, the file's header gives the sector size.
            let dev = open(&p, None);
            assert_eq!(dev.sector_size(), size);
            assert_eq!(read_header(&dev).unwrap(), h);
            let mut tried = Vec::new();
            let a = allocate(&dev, &node("alpha"), |s| tried.push(s), |_| ()).unwrap();
            assert_eq!((a, tried), (Allocated::New(0), vec![0]));
            assert_eq!(
                allocate(&dev, &node("ALPHA"), |_| (), |_| ()).unwrap(),
                Allocated::Existing(0)
            );
            assert_eq!(
                allocate(&dev, &node("beta"), |_| (), |_| ()).unwrap(),
                Allocated::New(1)
            );
            let (slot, msgwait) =
                send(&dev, &node("Beta"), Command::Reset, &node("alpha")).unwrap();
            assert_eq!((slot, msgwait), (1, Duration::from_secs(2)));
            let lines: Vec<String> = list(&dev).unwrap().iter().map(|e| e.to_string()).collect();
            assert_eq!(lines, ["0\talpha\tclear\t", "1\tbeta\treset\talpha"]);
            let err = send(&dev, &node("gamma"), Command::Test, &node("alpha")).unwrap_err();
            assert!(matches!(err, SbdError::NoSlot { .. }), "{err}");
        }
    }

    #[test]
    fn create_refuses_small_devices_and_unsafe_timeouts() {
        let dir = tempfile::tempdir().unwrap();
        let p = image(&dir, "small", 511 * 512 - 1);
        let err = create(&open(&p, None), FAST, Uuid::random()).unwrap_err();
        assert!(matches!(err, SbdError::TooSmall { .. }), "{err}");
        let p = image(&dir, "exact", 511 * 512);
        create(&open(&p, None), FAST, Uuid::random()).unwrap();
        let bad = Timeouts {
            msgwait_s: 1,
            ..FAST
        };
        let err = create(&open(&p, None), bad, Uuid::random()).unwrap_err();
        assert!(matches!(err, SbdError::Timeouts(_)), "{err}");
    }

    #[test]
    fn allocate_retries_when_another_node_takes_the_slot() {
        let dir = tempfile::tempdir().unwrap();
        let p = image(&dir, "race", 1 << 20);
        let dev = open(&p, None);
        create(&dev, FAST, Uuid::random()).unwrap();
        let other = open(&p, None);
        let mut first = true;
        let a = allocate(
            &dev,
            &node("alpha"),
            |_| (),
            |_| {
                if first {
                    // While we wait, gamma overwrites the slot we just wrote.
                    first = false;
                    other
                        .write_sectors(
                            slot_sector(0),
                            Slot::InUse(node("gamma")).encode(other.sector_size()),
                        )
                        .unwrap();
                }
            },
        )
        .unwrap();
        assert_eq!(a, Allocated::New(1));
        assert_eq!(
            lookup(&dev, &read_header(&dev).unwrap(), &node("gamma")).unwrap(),
            Some(0)
        );
    }

    #[test]
    fn deliver_needs_a_majority() {
        let dir = tempfile::tempdir().unwrap();
        let quick = Timeouts {
            watchdog_s: 0,
            msgwait_s: 0,
            ..FAST
        };
        let mut paths = Vec::new();
        for i in 0..3 {
            let p = image(&dir, &format!("m{i}"), 1 << 20);
            let dev = open(&p, None);
            // Written directly: create refuses a zero watchdog timeout, tests want no waiting.
            dev.write_sectors(
                0,
                Header::new(dev.sector_size(), quick, Uuid::random()).encode(),
            )
            .unwrap();
            allocate(&dev, &node("beta"), |_| (), |_| ()).unwrap();
            paths.push(p);
        }
        let options = DeviceOptions {
            file_sector_size: None,
            io_timeout: Duration::from_secs(5),
        };
        let d = deliver(&paths, options, &node("beta"), Command::Off, &node("a")).unwrap();
        assert!(d.delivered >= 2);
        // Make the third device not an SBD device: two of three still deliver.
        std::fs::write(&paths[2], vec![0u8; 1 << 20]).unwrap();
        let d = deliver(&paths, options, &node("beta"), Command::Test, &node("a")).unwrap();
        assert_eq!(d.delivered, 2);
        // And with two devices, one failure is not a majority.
        let two = [paths[0].clone(), paths[2].clone()];
        let err = deliver(&two, options, &node("beta"), Command::Test, &node("a")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("message delivered to 1 of 2 devices"),
            "{err}"
        );
        assert!(err.to_string().contains("not an SBD device"), "{err}");
    }
}
