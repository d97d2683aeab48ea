//! `replctl demo`: the embedded default. Two nodes on loopback (alpha on 127.0.0.1, beta on
//! 127.0.0.2), file-backed disks in a temp dir, no config to write: create the meta-data,
//! start both daemons, bring the resource up, promote alpha and show the initial sync, then
//! print the status, the NBD URIs and how to mount. Ctrl-C tears everything down.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::config::Config;
use crate::control::{self, Request, Response};
use crate::md::disk::{self, MdLocation};

/// Size of each demo disk.
pub const DISK_BYTES: u64 = 512 << 20;
/// Give up waiting for a step after this long.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// Options of the demo.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where to put disks, config and sockets (a new temp dir if None).
    pub dir: Option<PathBuf>,
    /// Exit after printing the instructions instead of waiting for Ctrl-C.
    pub exit_after_sync: bool,
}

struct Daemons(Vec<Child>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SIGTERM lets replicatord take its resources down cleanly.
            // SAFETY: kill(2) with a pid we own (our child) has no memory-safety preconditions.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        for c in &mut self.0 {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port(ip: Ipv4Addr) -> Result<u16> {
    Ok(TcpListener::bind(SocketAddr::from((ip, 0)))?
        .local_addr()?
        .port())
}

fn ask(run_dir: &Path, request: &Request) -> Result<Response> {
    let r: Response = control::ask(&run_dir.join(control::SOCKET_NAME), request, None)?;
    if !r.ok {
        bail!("{}", r.error.clone().unwrap_or_default());
    }
    Ok(r)
}

fn status(run_dir: &Path) -> Result<control::ResourceStatus> {
    let r = ask(
        run_dir,
        &Request::Status {
            resource: Some("r0".into()),
        },
    )?;
    r.status.and_then(|mut v| v.pop()).context("no status")
}

fn wait(what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    while Instant::now() < deadline {
        if f()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out waiting for {what}")
}

/// Runs the demo.
pub fn run(opts: Options) -> Result<()> {
    let temp;
    let dir = match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            temp = TempDir::new()?;
            temp.0.clone()
        }
    };
    let replicatord = std::env::current_exe()?.with_file_name("replicatord");
    if !replicatord.exists() {
        bail!(
            "{} is missing; build it (cargo build --bins)",
            replicatord.display()
        );
    }
    let (a_ip, b_ip) = (Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2));
    let (a_port, b_port, nbd_port) = (free_port(a_ip)?, free_port(b_ip)?, free_port(a_ip)?);
    let disks = ["alpha", "beta"].map(|n| dir.join(format!("{n}.img")));
    for d in &disks {
        std::fs::File::create(d)?.set_len(DISK_BYTES)?;
    }
    let config = dir.join("tandem.conf");
    std::fs::write(
        &config,
        format!(
            "# Written by 'replctl demo'.
resource r0 {{
    net {{ protocol C; cram-hmac-alg sha256; shared-secret \"demo\"; connect-int 1; }}
    disk {{ c-plan-ahead 0; resync-rate 100M; }}
    on alpha {{ device /dev/nbd0; disk {}; meta-disk internal; address {a_ip}:{a_port};
               export {{ nbd 127.0.0.1:{nbd_port}; }} }}
    on beta  {{ device /dev/nbd0; disk {}; meta-disk internal; address {b_ip}:{b_port};
               export {{ nbd 127.0.0.2:{nbd_port}; }} }}
}}\n",
            disks[0].display(),
            disks[1].display()
        ),
    )?;
    let cfg = Config::load(&config)?;
    let r = cfg.resource("r0")?;
    for d in &disks {
        disk::create(
            &MdLocation {
                data: d.clone(),
                external: None,
            },
            r.disk.al_extents,
            None,
            false,
        )
        .with_context(|| format!("create-md on {}", d.display()))?;
    }
    println!(
        "demo: two nodes on loopback, disks of {} MiB in {}",
        DISK_BYTES >> 20,
        dir.display()
    );
    let run_dirs = ["alpha", "beta"].map(|n| dir.join(format!("run-{n}")));
    let mut daemons = Daemons(Vec::new());
    for (i, node) in ["alpha", "beta"].iter().enumerate() {
        let log = std::fs::File::create(dir.join(format!("{node}.log")))?;
        let child = Command::new(&replicatord)
            .arg("-c")
            .arg(&config)
            .args(["--node", node, "--run-dir"])
            .arg(&run_dirs[i])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: Ctrl-C reaches the demo, which stops the nodes in order.
            .process_group(0)
            .spawn()
            .with_context(|| format!("start {}", replicatord.display()))?;
        daemons.0.push(child);
    }
    for rd in &run_dirs {
        wait("replicatord to start", || {
            Ok(UnixStream::connect(rd.join(control::SOCKET_NAME)).is_ok())
        })?;
        ask(
            rd,
            &Request::Up {
                resource: "r0".into(),
            },
        )?;
    }
    wait("the nodes to connect", || {
        Ok(status(&run_dirs[0])?.peers[0].connection == "Connected")
    })?;
    println!(
        "demo: alpha and beta connected; promoting alpha (primary --force starts the initial sync)"
    );
    ask(
        &run_dirs[0],
        &Request::Primary {
            resource: "r0".into(),
            force: true,
        },
    )?;
    let mut last = Instant::now() - Duration::from_secs(1);
    wait("the initial sync", || {
        let s = status(&run_dirs[0])?;
        let p = &s.peers[0];
        if last.elapsed() >= Duration::from_millis(500) {
            last = Instant::now();
            if let (Some(done), Some(rate), Some(eta)) = (p.done, p.rate_kib_s, p.eta_s) {
                println!(
                    "  {} done:{done:.1}% rate:{}MiB/s eta:{eta}s",
                    p.replication,
                    rate / 1024
                );
            }
        }
        Ok(p.replication == "Established" && p.peer_disk == "UpToDate")
    })?;
    let all = vec![status(&run_dirs[0])?, status(&run_dirs[1])?];
    println!("\n$ replctl status (alpha, then beta)");
    print!("{}", control::format_status(&all));
    let unix = format!(
        "nbd+unix:///r0?socket={}",
        run_dirs[0].join(control::NBD_SOCKET_NAME).display()
    );
    println!(
        "
The replicated volume r0 is served by alpha (Primary):
  NBD over TCP:   nbd://127.0.0.1:{nbd_port}/r0
  NBD over Unix:  {unix}

Mount it on a real machine with the kernel NBD client:
  nbd-client -N r0 127.0.0.1 {nbd_port} /dev/nbd0 && mkfs.ext4 /dev/nbd0 && mount /dev/nbd0 /mnt
Here (no nbd kernel module), through FUSE and a loop device:
  mkdir -p /tmp/r0-fuse /mnt/r0 && nbdfuse /tmp/r0-fuse '{unix}' &
  dev=$(losetup -f --show /tmp/r0-fuse/nbd) && mkfs.ext4 -q $dev && mount $dev /mnt/r0

Watch it:  replctl --run-dir {} status      replctl --run-dir {} events
Logs:      {}/alpha.log  {}/beta.log
",
        run_dirs[0].display(),
        run_dirs[0].display(),
        dir.display(),
        dir.display()
    );
    if opts.exit_after_sync {
        for rd in &run_dirs {
            let _ = ask(
                rd,
                &Request::Down {
                    resource: "r0".into(),
                },
            );
        }
        return Ok(());
    }
    println!("Press Ctrl-C to stop both nodes and remove everything.");
    wait_for_sigint()?;
    println!("\ndemo: stopping");
    for rd in &run_dirs {
        if let Err(e) = ask(
            rd,
            &Request::Down {
                resource: "r0".into(),
            },
        ) {
            eprintln!("demo: down: {e:#}");
        }
    }
    drop(daemons);
    Ok(())
}

fn wait_for_sigint() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    })?;
    Ok(())
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir> {
        let mut rnd = [0u8; 6];
        getrandom::fill(&mut rnd).map_err(|e| anyhow::anyhow!("random: {e}"))?;
        let name: String = rnd.iter().map(|b| format!("{b:02x}")).collect();
        let path = std::env::temp_dir().join(format!("tandem-demo-{name}"));
        std::fs::create_dir(&path)?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
