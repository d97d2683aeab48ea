//! Meta-data interop with DRBD's own tool: `drbdmeta` (Debian's drbd-utils) must read what
//! `replctl create-md` writes, and `replctl dump-md` must read what `drbdmeta` writes, with the
//! same dump text. Disks are loop devices over sparse files.

use std::path::{Path, PathBuf};
use std::process::Command;

use tandem_tests::{bin, run, run_fails, run_ok, sparse_file, tool, LoopDevice};

/// A drbdmeta minor number of our own, with the side files drbdmeta keeps for it removed
/// before and after.
struct Minor(u32);

impl Minor {
    fn new(n: u32) -> Minor {
        let m = Minor(n);
        m.clean();
        m
    }
    fn clean(&self) {
        let _ = std::fs::remove_file(format!("/var/lib/drbd/drbd-minor-{}.lkbd", self.0));
        let _ = std::fs::remove_file(format!("/var/lock/drbd-147-{}", self.0));
        let _ = std::fs::remove_file(format!("/run/lock/drbd-147-{}", self.0));
    }
}

impl Drop for Minor {
    fn drop(&mut self) {
        self.clean();
    }
}

fn drbdmeta(minor: &Minor, dev: &Path, index: &str, args: &[&str]) -> Command {
    let mut c = Command::new(tool("drbdmeta", "drbd-utils"));
    c.arg(minor.0.to_string())
        .arg("v08")
        .arg(dev)
        .arg(index)
        .args(args);
    c
}

fn write_config(dir: &Path, disk: &Path, meta: &str) -> PathBuf {
    let path = dir.join("tandem.conf");
    std::fs::write(
        &path,
        format!(
            "resource r0 {{
    on alpha {{ disk {}; meta-disk {meta}; address 127.0.0.1:7788; }}
    on beta  {{ disk /nonexistent; meta-disk internal; address 127.0.0.1:7789; }}
}}\n",
            disk.display()
        ),
    )
    .unwrap();
    path
}

fn replctl(config: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin("replctl"));
    c.arg("-c").arg(config).args(["--node", "alpha"]).args(args);
    c
}

/// The dump without its 4 header lines (time, host and command differ), and with the flags
/// value blanked: drbd-utils before 9.33 print `flags 0x00000000` for every v08 disk (a bug
/// upstream fixed), tandem prints the real flags.
fn dump_body(dump: &str) -> String {
    assert!(
        dump.starts_with("# DRBD meta data dump\n"),
        "not a dump:\n{dump}"
    );
    dump.lines()
        .skip(4)
        .map(|l| {
            if l.trim_start().starts_with("flags 0x") {
                "    flags <FLAGS>;"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn flags_line(dump: &str) -> String {
    dump.lines()
        .find(|l| l.trim_start().starts_with("flags "))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn drbdmeta_reads_what_create_md_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let file = sparse_file(dir.path(), "disk.img", 100 << 20);
    let dev = LoopDevice::attach(&file);
    let minor = Minor::new(240);
    let config = write_config(dir.path(), &dev.path, "internal");

    let out = run_ok(&mut replctl(&config, &["create-md", "r0"]));
    assert!(
        out.contains("New drbd meta data block successfully created."),
        "{out}"
    );
    assert!(out.contains("104816640 bytes usable"), "{out}");

    let theirs = run_ok(&mut drbdmeta(&minor, &dev.path, "internal", &["dump-md"]));
    let ours = run_ok(&mut replctl(&config, &["dump-md", "r0"]));
    for line in [
        "# md_size_sect 80",
        "# md_offset 104853504",
        "# al_offset 104820736",
        "# bm_offset 104816640",
        "# al-extents 1237;",
        "    0x0000000000000004; 0x0000000000000000; 0x0000000000000000; 0x0000000000000000;",
    ] {
        assert!(
            theirs.lines().any(|l| l == line),
            "drbdmeta's dump lacks {line:?}:\n{theirs}"
        );
    }
    assert_eq!(dump_body(&ours), dump_body(&theirs));
    assert_eq!(
        flags_line(&ours),
        "flags 0x00000080;",
        "AL_CLEAN, as drbdmeta writes it"
    );

    let gi = run_ok(&mut drbdmeta(&minor, &dev.path, "internal", &["get-gi"]));
    assert_eq!(
        gi.trim(),
        "0000000000000004:0000000000000000:0000000000000000:0000000000000000:0:0:0:0:0:0:0"
    );
}

#[test]
fn dump_md_reads_what_drbdmeta_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let file = sparse_file(dir.path(), "disk.img", 256 << 20);
    let dev = LoopDevice::attach(&file);
    let minor = Minor::new(241);
    let config = write_config(dir.path(), &dev.path, "internal");

    run_ok(&mut drbdmeta(
        &minor,
        &dev.path,
        "internal",
        &["--force", "create-md"],
    ));
    let theirs = run_ok(&mut drbdmeta(&minor, &dev.path, "internal", &["dump-md"]));
    let ours = run_ok(&mut replctl(&config, &["dump-md", "r0"]));
    assert_eq!(dump_body(&ours), dump_body(&theirs));
    assert!(
        ours.contains("# al-extents 257;"),
        "drbdmeta's default AL size:\n{ours}"
    );

    // create-md refuses to overwrite drbdmeta's meta-data, writing nothing...
    let before = std::fs::read(&file).unwrap();
    let err = run_fails(&mut replctl(&config, &["create-md", "r0"]));
    assert!(
        err.contains("already has DRBD v08 meta-data") && err.contains("--force"),
        "{err}"
    );
    assert!(
        std::fs::read(&file).unwrap() == before,
        "a refused create-md changed the disk"
    );
    // ...and replaces it with --force; drbdmeta sees ours.
    run_ok(&mut replctl(&config, &["create-md", "--force", "r0"]));
    let theirs = run_ok(&mut drbdmeta(&minor, &dev.path, "internal", &["dump-md"]));
    assert!(theirs.contains("# al-extents 1237;"), "{theirs}");
}

/// A dump with a last agreed size and a bitmap with bits set, restored by drbdmeta; both tools
/// must print the same bitmap and count the same bits.
#[test]
fn bitmaps_dump_identically() {
    let dir = tempfile::tempdir().unwrap();
    let file = sparse_file(dir.path(), "disk.img", 100 << 20);
    let dev = LoopDevice::attach(&file);
    let minor = Minor::new(242);
    let config = write_config(dir.path(), &dev.path, "internal");
    run_ok(&mut drbdmeta(
        &minor,
        &dev.path,
        "internal",
        &["--force", "create-md"],
    ));

    // 204720 sectors is the whole data area of a 100 MiB disk: 512 bitmap words.
    let mut words = vec![0u64; 512];
    words[0] = u64::MAX;
    words[1] = 0x0000_0001_0000_0000;
    words[4..24].fill(0x5555_5555_5555_5555);
    words[100..109].fill(0xAAAA_AAAA_0000_0000);
    words[511] = 0xDEAD_BEEF_CAFE_BABE;
    let mut text = String::from(
        "version \"v08\";\nuuid {\n    0x8D3E5A7C11223345; 0x1B2C3D4E5F607182; 0x0000000000000000; \
         0x0000000000000000;\n    flags 0x00000091;\n}\nla-size-sect 204720;\nbm-byte-per-bit 4096;\n\
         device-uuid 0x00000000CAFEF00D;\nla-peer-max-bio-size 1048576;\nal-stripes 1;\nal-stripe-size-4k 8;\nbm {\n",
    );
    for w in &words {
        text.push_str(&format!("   0x{w:016X};\n"));
    }
    text.push_str("}\n");
    let dump_file = dir.path().join("crafted.dump");
    std::fs::write(&dump_file, text).unwrap();
    run_ok(drbdmeta(&minor, &dev.path, "internal", &["--force", "restore-md"]).arg(&dump_file));

    let theirs = run_ok(&mut drbdmeta(&minor, &dev.path, "internal", &["dump-md"]));
    let ours = run_ok(&mut replctl(&config, &["dump-md", "r0"]));
    assert_eq!(dump_body(&ours), dump_body(&theirs));
    assert!(ours.contains("la-size-sect 204720;"), "{ours}");
    assert!(ours.contains("    20 times 0x5555555555555555;"), "{ours}");
    let bits: u32 = words.iter().map(|w| w.count_ones()).sum();
    assert!(ours.contains(&format!("# bits-set {bits};")), "{ours}");
    assert_eq!(flags_line(&ours), "flags 0x00000091;");
}

#[test]
fn external_meta_disk_interop() {
    let dir = tempfile::tempdir().unwrap();
    let data_file = sparse_file(dir.path(), "data.img", 64 << 20);
    let md_file = sparse_file(dir.path(), "md.img", 8 << 20);
    let data = LoopDevice::attach(&data_file);
    let md = LoopDevice::attach(&md_file);
    let minor = Minor::new(243);
    let config = write_config(dir.path(), &data.path, &md.path.display().to_string());

    let out = run_ok(&mut replctl(&config, &["create-md", "r0"]));
    assert!(
        out.contains("67108864 bytes usable"),
        "the whole data disk: {out}"
    );
    assert!(
        std::fs::read(&data_file).unwrap().iter().all(|&b| b == 0),
        "external meta-data must not touch the data disk"
    );
    let theirs = run_ok(&mut drbdmeta(
        &minor,
        &md.path,
        "flex-external",
        &["dump-md"],
    ));
    assert!(
        theirs.contains("# md_offset 0\n# al_offset 4096\n# bm_offset 36864\n"),
        "{theirs}"
    );
    let ours = run_ok(&mut replctl(&config, &["dump-md", "r0"]));
    assert_eq!(dump_body(&ours), dump_body(&theirs));
}

#[test]
fn a_filesystem_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let file = sparse_file(dir.path(), "disk.img", 64 << 20);
    let dev = LoopDevice::attach(&file);
    run_ok(
        Command::new(tool("mkfs.ext4", "e2fsprogs"))
            .args(["-q", "-F"])
            .arg(&dev.path),
    );
    let config = write_config(dir.path(), &dev.path, "internal");
    let before = std::fs::read(&file).unwrap();

    let err = run_fails(&mut replctl(&config, &["create-md", "r0"]));
    assert!(err.contains("ext4 filesystem of 65536 KiB"), "{err}");
    assert!(
        err.contains("truncating it") && err.contains("--force"),
        "{err}"
    );
    assert!(
        std::fs::read(&file).unwrap() == before,
        "a refused create-md changed the disk"
    );
    let fsck = run(Command::new(tool("e2fsck", "e2fsprogs"))
        .arg("-fn")
        .arg(&dev.path));
    assert!(fsck.status.success(), "the filesystem must still be clean");
}

#[test]
fn too_small_disk_and_bad_config_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = sparse_file(dir.path(), "tiny.img", 64 << 10);
    let config = write_config(dir.path(), &file, "internal");
    let err = run_fails(&mut replctl(&config, &["create-md", "r0"]));
    assert!(
        err.contains("tiny.img is 65536 bytes; internal meta-data does not fit"),
        "{err}"
    );
    assert!(
        std::fs::read(&file).unwrap().iter().all(|&b| b == 0),
        "nothing written"
    );

    let err = run_fails(&mut replctl(&config, &["dump-md", "r0"]));
    assert!(err.contains("does not fit"), "{err}");

    std::fs::write(&config, "resource r0 { on alpha { disk /x; } }").unwrap();
    let err = run_fails(&mut replctl(&config, &["create-md", "r0"]));
    assert!(
        err.contains("tandem.conf:1:15: on alpha: volume 0 has no meta-disk"),
        "{err}"
    );
}
