//! SBD devices on an iSCSI LUN through libiscsi, so a node needs no kernel iSCSI initiator:
//! `iscsi://[USER[%PASSWORD]@]HOST[:PORT]/IQN/LUN` (libiscsi's URL form; USER and PASSWORD
//! turn on CHAP).
//!
//! [`IscsiUrl`] is a pure parser. [`IscsiLun`] is the FFI driver, used only from a device's own
//! I/O thread (see [`super::device`]): libiscsi's synchronous calls block, and the I/O thread's
//! timeout is what bounds them when the target goes away.

use std::ffi::{CStr, CString};
use std::fmt;
use std::ptr::NonNull;

/// The default iSCSI port.
pub const DEFAULT_PORT: u16 = 3260;
/// The URL scheme.
pub const SCHEME: &str = "iscsi://";
/// The most bytes one SCSI command moves here (create zeroes the slots in runs; 1 MiB).
pub const MAX_TRANSFER_BYTES: usize = 1 << 20;

/// A parsed `iscsi://` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct IscsiUrl {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// The target's IQN.
    pub iqn: String,
    /// The LUN.
    pub lun: u16,
    /// CHAP user and secret.
    pub chap: Option<(String, String)>,
}

impl fmt::Debug for IscsiUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for IscsiUrl {
    /// The URL without the CHAP secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let user = self
            .chap
            .as_ref()
            .map_or(String::new(), |(u, _)| format!("{u}@"));
        write!(
            f,
            "{SCHEME}{user}{}:{}/{}/{}",
            self.host, self.port, self.iqn, self.lun
        )
    }
}

impl IscsiUrl {
    /// Whether `text` is an iSCSI URL.
    pub fn is_url(text: &str) -> bool {
        text.starts_with(SCHEME)
    }

    /// Parses `iscsi://[USER[%PASSWORD]@]HOST[:PORT]/IQN/LUN`; HOST may be `[IPv6]`.
    pub fn parse(text: &str) -> Result<IscsiUrl, String> {
        let bad = |why: &str| format!("bad iSCSI URL {:?}: {why}", redact(text));
        let rest = text
            .strip_prefix(SCHEME)
            .ok_or_else(|| bad("it does not start with iscsi://"))?;
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) => (Some(a), r),
            None => (None, rest),
        };
        let chap = match auth {
            None => None,
            Some(a) => match a.split_once('%') {
                Some((u, p)) if !u.is_empty() && !p.is_empty() => {
                    Some((u.to_string(), p.to_string()))
                }
                _ => return Err(bad("CHAP needs USER%PASSWORD before the @")),
            },
        };
        let mut parts = rest.splitn(3, '/');
        let portal = parts.next().unwrap_or_default();
        let iqn = parts
            .next()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad("no target IQN"))?;
        let lun = parts
            .next()
            .ok_or_else(|| bad("no LUN"))?
            .parse::<u16>()
            .map_err(|_| bad("the LUN is not a number"))?;
        let (host, port) = if let Some(v6) = portal.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed [ in the host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad("bad port"))?,
                None if after.is_empty() => DEFAULT_PORT,
                None => return Err(bad("junk after the host")),
            };
            (h.to_string(), port)
        } else {
            match portal.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad("bad port"))?),
                None => (portal.to_string(), DEFAULT_PORT),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(IscsiUrl {
            host,
            port,
            iqn: iqn.to_string(),
            lun,
            chap,
        })
    }

    /// `HOST:PORT` as libiscsi's portal.
    fn portal(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The URL with any password replaced, for messages.
pub fn redact(text: &str) -> String {
    match (text.find('%'), text.rfind('@')) {
        (Some(p), Some(a)) if p < a => format!("{}%***{}", &text[..p], &text[a..]),
        _ => text.to_string(),
    }
}

#[allow(non_camel_case_types)]
mod ffi {
    use std::os::raw::{c_char, c_int, c_void};

    #[repr(C)]
    pub struct iscsi_context {
        _private: [u8; 0],
    }

    #[repr(C)]
    pub struct scsi_task {
        _private: [u8; 0],
    }

    #[repr(C)]
    pub struct scsi_iovec {
        pub iov_base: *mut c_void,
        pub iov_len: usize,
    }

    #[repr(C)]
    pub struct scsi_readcapacity16 {
        pub returned_lba: u64,
        pub block_length: u32,
        pub p_type: u8,
        pub prot_en: u8,
        pub p_i_exp: u8,
        pub lbppbe: u8,
        pub lbpme: u8,
        pub lbprz: u8,
        pub lalba: u16,
    }

    pub const ISCSI_SESSION_NORMAL: c_int = 2;

    #[link(name = "iscsi")]
    extern "C" {
        pub fn iscsi_create_context(initiator_name: *const c_char) -> *mut iscsi_context;
        pub fn iscsi_destroy_context(iscsi: *mut iscsi_context) -> c_int;
        pub fn iscsi_get_error(iscsi: *mut iscsi_context) -> *const c_char;
        pub fn iscsi_set_targetname(iscsi: *mut iscsi_context, name: *const c_char) -> c_int;
        pub fn iscsi_set_session_type(iscsi: *mut iscsi_context, kind: c_int) -> c_int;
        pub fn iscsi_set_initiator_username_pwd(
            iscsi: *mut iscsi_context,
            user: *const c_char,
            passwd: *const c_char,
        ) -> c_int;
        pub fn iscsi_full_connect_sync(
            iscsi: *mut iscsi_context,
            portal: *const c_char,
            lun: c_int,
        ) -> c_int;
        pub fn iscsi_readcapacity16_sync(iscsi: *mut iscsi_context, lun: c_int) -> *mut scsi_task;
        pub fn iscsi_read16_iov_sync(
            iscsi: *mut iscsi_context,
            lun: c_int,
            lba: u64,
            datalen: u32,
            blocksize: c_int,
            rdprotect: c_int,
            dpo: c_int,
            fua: c_int,
            fua_nv: c_int,
            group_number: c_int,
            iov: *mut scsi_iovec,
            niov: c_int,
        ) -> *mut scsi_task;
        pub fn iscsi_write16_sync(
            iscsi: *mut iscsi_context,
            lun: c_int,
            lba: u64,
            data: *mut u8,
            datalen: u32,
            blocksize: c_int,
            wrprotect: c_int,
            dpo: c_int,
            fua: c_int,
            fua_nv: c_int,
            group_number: c_int,
        ) -> *mut scsi_task;
        pub fn scsi_task_get_status(task: *mut scsi_task, sense: *mut c_void) -> c_int;
        pub fn scsi_datain_unmarshall(task: *mut scsi_task) -> *mut c_void;
        pub fn scsi_free_scsi_task(task: *mut scsi_task);
    }
}

/// A connected iSCSI LUN.
pub struct IscsiLun {
    ctx: NonNull<ffi::iscsi_context>,
    lun: i32,
    /// The LUN's block size.
    pub block_bytes: u32,
    /// The LUN's size.
    pub size_bytes: u64,
}

// SAFETY: libiscsi contexts are not thread-safe, but an IscsiLun is only ever used by the one
// thread that owns it (it is moved into a device's I/O thread and used there only); moving it
// between threads is fine.
unsafe impl Send for IscsiLun {}

/// A SCSI task, freed on drop.
struct Task(NonNull<ffi::scsi_task>);

impl Drop for Task {
    fn drop(&mut self) {
        // SAFETY: the task came from a libiscsi *_sync call and is freed exactly once.
        unsafe { ffi::scsi_free_scsi_task(self.0.as_ptr()) }
    }
}

fn cstring(s: &str) -> std::io::Result<CString> {
    CString::new(s).map_err(|_| std::io::Error::other(format!("{s:?} contains a NUL")))
}

impl IscsiLun {
    /// Logs in to the target (with CHAP when the URL has a user) and reads the LUN's capacity.
    pub fn connect(url: &IscsiUrl, initiator: &str) -> std::io::Result<IscsiLun> {
        let name = cstring(initiator)?;
        // SAFETY: `name` is a valid C string for the call; libiscsi copies it.
        let ctx = NonNull::new(unsafe { ffi::iscsi_create_context(name.as_ptr()) })
            .ok_or_else(|| std::io::Error::other("cannot create an iSCSI context"))?;
        let mut lun = IscsiLun {
            ctx,
            lun: i32::from(url.lun),
            block_bytes: 0,
            size_bytes: 0,
        };
        let iqn = cstring(&url.iqn)?;
        let portal = cstring(&url.portal())?;
        // SAFETY: the context is live and owned by `lun`; every string outlives its call.
        unsafe {
            lun.check(
                ffi::iscsi_set_targetname(ctx.as_ptr(), iqn.as_ptr()),
                "set the target",
            )?;
            lun.check(
                ffi::iscsi_set_session_type(ctx.as_ptr(), ffi::ISCSI_SESSION_NORMAL),
                "set the session type",
            )?;
        }
        if let Some((user, secret)) = &url.chap {
            let (user, secret) = (cstring(user)?, cstring(secret)?);
            // SAFETY: as above.
            let r = unsafe {
                ffi::iscsi_set_initiator_username_pwd(ctx.as_ptr(), user.as_ptr(), secret.as_ptr())
            };
            lun.check(r, "set the CHAP credentials")?;
        }
        // SAFETY: as above.
        let r = unsafe { ffi::iscsi_full_connect_sync(ctx.as_ptr(), portal.as_ptr(), lun.lun) };
        lun.check(r, "log in")?;
        // SAFETY: the context is connected; the task is freed by Task's drop.
        let task = lun.task(
            unsafe { ffi::iscsi_readcapacity16_sync(ctx.as_ptr(), lun.lun) },
            "read the capacity",
        )?;
        // SAFETY: a successful READ CAPACITY(16) task unmarshalls to scsi_readcapacity16, which
        // lives as long as the task; it is copied out before the task is freed.
        let cap = unsafe {
            let p = ffi::scsi_datain_unmarshall(task.0.as_ptr()).cast::<ffi::scsi_readcapacity16>();
            if p.is_null() {
                return Err(std::io::Error::other("cannot decode READ CAPACITY(16)"));
            }
            std::ptr::read(p)
        };
        drop(task);
        lun.block_bytes = cap.block_length;
        lun.size_bytes = (cap.returned_lba + 1) * u64::from(cap.block_length);
        Ok(lun)
    }

    fn error(&self, what: &str) -> std::io::Error {
        // SAFETY: the context is live; libiscsi returns a NUL-terminated string it owns (or null).
        let text = unsafe {
            let p = ffi::iscsi_get_error(self.ctx.as_ptr());
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        std::io::Error::other(format!("iSCSI: cannot {what}: {text}"))
    }

    fn check(&self, r: i32, what: &str) -> std::io::Result<()> {
        if r == 0 {
            Ok(())
        } else {
            Err(self.error(what))
        }
    }

    fn task(&self, t: *mut ffi::scsi_task, what: &str) -> std::io::Result<Task> {
        let task = Task(NonNull::new(t).ok_or_else(|| self.error(what))?);
        // SAFETY: a live task; a null sense pointer is allowed.
        let status = unsafe { ffi::scsi_task_get_status(task.0.as_ptr(), std::ptr::null_mut()) };
        if status != 0 {
            return Err(std::io::Error::other(format!(
                "iSCSI: cannot {what}: SCSI status {status:#x}"
            )));
        }
        Ok(task)
    }

    fn lba(&self, offset: u64, len: usize) -> std::io::Result<(u64, u32)> {
        let bs = u64::from(self.block_bytes);
        let len64 = u64::try_from(len).map_err(std::io::Error::other)?;
        if offset % bs != 0 || len64 % bs != 0 || len > MAX_TRANSFER_BYTES {
            return Err(std::io::Error::other(format!(
                "unaligned or oversized iSCSI I/O ({len} bytes at {offset})"
            )));
        }
        if offset + len64 > self.size_bytes {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "past the end of the LUN",
            ));
        }
        Ok((
            offset / bs,
            u32::try_from(len).map_err(std::io::Error::other)?,
        ))
    }

    /// Reads exactly `buf.len()` bytes (whole blocks) at `offset`.
    pub fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let (lba, len) = self.lba(offset, buf.len())?;
        let bs = i32::try_from(self.block_bytes).map_err(std::io::Error::other)?;
        let mut iov = ffi::scsi_iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: the context is live; the iovec points at `buf`, which is exactly `len` bytes
        // and outlives the synchronous call.
        let t = unsafe {
            ffi::iscsi_read16_iov_sync(
                self.ctx.as_ptr(),
                self.lun,
                lba,
                len,
                bs,
                0,
                0,
                0,
                0,
                0,
                &mut iov,
                1,
            )
        };
        self.task(t, "read").map(drop)
    }

    /// Writes `buf` (whole blocks) at `offset`, with FUA so it is stable when acknowledged.
    pub fn write_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let (lba, len) = self.lba(offset, buf.len())?;
        let bs = i32::try_from(self.block_bytes).map_err(std::io::Error::other)?;
        let mut data = buf.to_vec();
        // SAFETY: the context is live; `data` is `len` bytes and outlives the synchronous call.
        let t = unsafe {
            ffi::iscsi_write16_sync(
                self.ctx.as_ptr(),
                self.lun,
                lba,
                data.as_mut_ptr(),
                len,
                bs,
                0,
                0,
                1,
                0,
                0,
            )
        };
        self.task(t, "write").map(drop)
    }
}

impl Drop for IscsiLun {
    fn drop(&mut self) {
        // SAFETY: the context is live and destroyed exactly once (this also logs out).
        unsafe {
            ffi::iscsi_destroy_context(self.ctx.as_ptr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = IscsiUrl::parse("iscsi://10.0.0.20/iqn.2026-11.org.tandem:sbd/1").unwrap();
        assert_eq!(
            (
                u.host.as_str(),
                u.port,
                u.iqn.as_str(),
                u.lun,
                u.chap.is_none()
            ),
            ("10.0.0.20", 3260, "iqn.2026-11.org.tandem:sbd", 1, true)
        );
        let u = IscsiUrl::parse("iscsi://fencer%s3cret@storage:3261/iqn.x:y/0").unwrap();
        assert_eq!(u.chap, Some(("fencer".into(), "s3cret".into())));
        assert_eq!((u.host.as_str(), u.port, u.lun), ("storage", 3261, 0));
        assert_eq!(u.to_string(), "iscsi://fencer@storage:3261/iqn.x:y/0");
        assert_eq!(u.portal(), "storage:3261");
        let u = IscsiUrl::parse("iscsi://[fd00::20]:3260/iqn.x:y/2").unwrap();
        assert_eq!(
            (u.host.as_str(), u.portal()),
            ("fd00::20", "[fd00::20]:3260".into())
        );
        for bad in [
            "iscsi://host/iqn",
            "iscsi://host/iqn/x",
            "iscsi:///iqn/1",
            "iscsi://user@host/iqn/1",
            "iscsi://host:99999/iqn/1",
            "http://host/iqn/1",
        ] {
            assert!(IscsiUrl::parse(bad).is_err(), "{bad}");
        }
        let err = IscsiUrl::parse("iscsi://u%secret@host/iqn").unwrap_err();
        assert!(!err.contains("secret"), "{err}");
        assert_eq!(redact("iscsi://u%pw@h/i/1"), "iscsi://u%***@h/i/1");
    }
}
