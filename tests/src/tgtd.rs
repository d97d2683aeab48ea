//! Debian's tgtd as the reference iSCSI target: started on a file, configured with tgtadm,
//! killed and its control socket removed on drop.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::{run, tool, wait_for, ChildGuard};

/// How long tgtd may take to answer its first tgtadm command.
const STARTUP: Duration = Duration::from_secs(20);

/// A running tgtd serving one file as LUN 1 of target 1, open to every initiator.
pub struct Tgtd {
    child: Option<ChildGuard>,
    control: u32,
}

impl Tgtd {
    /// Spawns `cmd` (tgtd, possibly inside a namespace or with `--iscsi portal=...`) with control
    /// socket `control` (tgtd's sockets are global, /var/run/tgtd/socket.N with N below 32768:
    /// one per test), then creates target `iqn` with `file` as LUN 1 and, with `chap`, binds a
    /// CHAP account (user, secret) to it.
    pub fn start(
        mut cmd: Command,
        control: u32,
        iqn: &str,
        file: &Path,
        chap: Option<(&str, &str)>,
    ) -> Tgtd {
        let child = cmd
            .args(["-f", "-C", &control.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tgtd");
        let t = Tgtd {
            child: Some(ChildGuard(child)),
            control,
        };
        wait_for("tgtd to take commands", STARTUP, || {
            t.tgtadm(&["--op", "show", "--mode", "sys"])
                .status
                .success()
                .then_some(())
        });
        let lun = file.to_str().expect("UTF-8 path");
        let mut steps = vec![
            vec!["--op", "new", "--mode", "target", "--tid", "1", "-T", iqn],
            vec![
                "--op",
                "new",
                "--mode",
                "logicalunit",
                "--tid",
                "1",
                "--lun",
                "1",
                "-b",
                lun,
            ],
            vec![
                "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL",
            ],
        ];
        if let Some((user, secret)) = chap {
            steps.push(vec![
                "--op",
                "new",
                "--mode",
                "account",
                "--user",
                user,
                "--password",
                secret,
            ]);
            steps.push(vec![
                "--op", "bind", "--mode", "account", "--tid", "1", "--user", user,
            ]);
        }
        for args in steps {
            let out = t.tgtadm(&args);
            assert!(out.status.success(), "tgtadm {args:?}: {out:?}");
        }
        t
    }

    /// `tgtadm` on this tgtd's control socket.
    pub fn tgtadm(&self, args: &[&str]) -> Output {
        run(Command::new(tool("tgtadm", "tgt"))
            .args(["-C", &self.control.to_string(), "--lld", "iscsi"])
            .args(args))
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        self.child.take();
        for f in ["", ".lock"] {
            let _ = std::fs::remove_file(format!("/var/run/tgtd/socket.{}{f}", self.control));
        }
    }
}
