//! `replicatord`: the node daemon. It answers `replctl` on `<run-dir>/replicatord.sock`,
//! serves every resource that is up over NBD on `<run-dir>/nbd.sock` (and on TCP where a
//! resource's `export { nbd ADDR; }` asks), and runs one task per resource that owns its
//! replication core.

pub mod backing;
pub mod peer;
pub mod resource;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use target::nbd::server::{self as nbd_server, NbdServer};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::{broadcast, oneshot, Mutex};

use crate::config::{self, BackingDisk, Config, MetaDisk, Protocol};
use crate::control::{self, EventLine, Request, Response};
use crate::core::{Command, NodeConfig};
use crate::md::disk::{self, MdLocation};

/// How the daemon was started.
#[derive(Debug, Clone)]
pub struct Options {
    /// The config file.
    pub config: PathBuf,
    /// This node's name.
    pub node: String,
    /// The run directory.
    pub run_dir: PathBuf,
}

struct Daemon {
    opts: Options,
    nbd: Arc<NbdServer>,
    iscsi: Arc<target::iscsi::server::IscsiServer>,
    resources: Mutex<HashMap<String, resource::Handle>>,
    events: broadcast::Sender<EventLine>,
    tcp_exports: Mutex<HashMap<SocketAddr, tokio::task::JoinHandle<()>>>,
}

/// Runs the daemon until SIGINT or SIGTERM; then takes every resource down.
pub async fn run(opts: Options) -> Result<()> {
    std::fs::create_dir_all(&opts.run_dir)
        .with_context(|| format!("cannot create the run directory {}", opts.run_dir.display()))?;
    // Fail early on a config that does not load.
    let config = Config::load(&opts.config)?;
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let control_path = opts.run_dir.join(control::SOCKET_NAME);
    let control = bind_unix(&control_path)?;
    let nbd = Arc::new(NbdServer::new());
    let nbd_path = opts.run_dir.join(control::NBD_SOCKET_NAME);
    let nbd_listener = nbd_server::bind_unix(&nbd_path)?;
    let _nbd_task = nbd.serve_unix(nbd_listener);
    let (events, _) = broadcast::channel(1024);
    let daemon = Arc::new(Daemon {
        opts,
        nbd,
        iscsi: Arc::new(target::iscsi::server::IscsiServer::new(Default::default())),
        resources: Mutex::new(HashMap::new()),
        events,
        tcp_exports: Mutex::new(HashMap::new()),
    });
    tracing::info!(
        node = %daemon.opts.node,
        control = %control_path.display(),
        nbd = %nbd_path.display(),
        "replicatord ready"
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = control.accept() => {
                if let Ok((stream, _)) = accepted {
                    let d = daemon.clone();
                    tokio::spawn(async move { d.client(stream).await });
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    tracing::info!("shutting down");
    let names: Vec<String> = daemon.resources.lock().await.keys().cloned().collect();
    for name in names {
        if let Err(e) = daemon.down(&name).await {
            tracing::warn!(resource = %name, "down at shutdown: {e}");
        }
    }
    daemon.nbd.shutdown(Duration::from_secs(2)).await;
    daemon.iscsi.shutdown(Duration::from_secs(2)).await;
    let _ = std::fs::remove_file(&control_path);
    let _ = std::fs::remove_file(&nbd_path);
    Ok(())
}

fn bind_unix(path: &Path) -> Result<UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "{} is in use: another replicatord runs with this --run-dir",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    // Only root (the owner) may drive the daemon.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    Ok(listener)
}

impl Daemon {
    async fn client(self: Arc<Self>, stream: UnixStream) {
        let (r, mut w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.len() > control::MAX_REQUEST_BYTES {
                return;
            }
            let request = match serde_json::from_str::<Request>(&line) {
                Ok(r) => r,
                Err(e) => {
                    let _ = send(&mut w, &Response::error(format!("bad request: {e}"))).await;
                    return;
                }
            };
            if request == Request::Events {
                let mut rx = self.events.subscribe();
                loop {
                    match rx.recv().await {
                        Ok(ev) => {
                            let mut text = serde_json::to_string(&ev).expect("serializable");
                            text.push('\n');
                            if w.write_all(text.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => return,
                    }
                }
            }
            let response = self.request(request).await;
            if send(&mut w, &response).await.is_err() {
                return;
            }
        }
    }

    async fn request(&self, request: Request) -> Response {
        let result = match request {
            Request::Up { resource } => self.up(&resource).await,
            Request::Down { resource } => self.down(&resource).await,
            Request::Primary { resource, force } => {
                self.command(&resource, Command::Primary { force }).await
            }
            Request::Secondary { resource } => self.command(&resource, Command::Secondary).await,
            Request::Connect {
                resource,
                discard_my_data,
            } => {
                self.command(&resource, Command::Connect { discard_my_data })
                    .await
            }
            Request::Disconnect { resource } => self.command(&resource, Command::Disconnect).await,
            Request::NewCurrentUuidClearBitmap { resource } => {
                self.command(&resource, Command::NewCurrentUuidClearBitmap)
                    .await
            }
            Request::Verify { resource } => self.command(&resource, Command::Verify).await,
            Request::Outdate { resource } => self.command(&resource, Command::Outdate).await,
            Request::Invalidate { resource } => self.command(&resource, Command::Invalidate).await,
            Request::InvalidateRemote { resource } => {
                self.command(&resource, Command::InvalidateRemote).await
            }
            Request::Status { resource } => {
                return match self.status(resource.as_deref()).await {
                    Ok(s) => Response {
                        ok: true,
                        error: None,
                        status: Some(s),
                    },
                    Err(e) => Response::error(format!("{e:#}")),
                }
            }
            Request::Events => Ok(()),
        };
        match result {
            Ok(()) => Response::ok(),
            Err(e) => Response::error(format!("{e:#}")),
        }
    }

    async fn tx(&self, name: &str) -> Result<tokio::sync::mpsc::UnboundedSender<resource::Msg>> {
        match self.resources.lock().await.get(name) {
            Some(h) => Ok(h.tx.clone()),
            None => bail!("resource {name} is not up (replctl up {name})"),
        }
    }

    async fn command(&self, name: &str, command: Command) -> Result<()> {
        let tx = self.tx(name).await?;
        let (reply, rx) = oneshot::channel();
        tx.send(resource::Msg::Cmd { command, reply })
            .map_err(|_| anyhow::anyhow!("{name} is shutting down"))?;
        rx.await
            .map_err(|_| anyhow::anyhow!("{name} is shutting down"))?
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))
    }

    async fn status(&self, only: Option<&str>) -> Result<Vec<control::ResourceStatus>> {
        let handles: Vec<(String, tokio::sync::mpsc::UnboundedSender<resource::Msg>)> = {
            let map = self.resources.lock().await;
            if let Some(name) = only {
                if !map.contains_key(name) {
                    bail!("resource {name} is not up (replctl up {name})");
                }
            }
            let mut v: Vec<_> = map
                .iter()
                .filter(|(n, _)| only.is_none_or(|o| o == n.as_str()))
                .map(|(n, h)| (n.clone(), h.tx.clone()))
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let mut out = Vec::new();
        for (_, tx) in handles {
            let (reply, rx) = oneshot::channel();
            if tx.send(resource::Msg::Status { reply }).is_ok() {
                if let Ok(s) = rx.await {
                    out.push(s);
                }
            }
        }
        Ok(out)
    }

    async fn up(&self, name: &str) -> Result<()> {
        let mut map = self.resources.lock().await;
        if map.contains_key(name) {
            bail!("{name} is already up");
        }
        let config = Config::load(&self.opts.config)?;
        let view = config.node_view(name, &self.opts.node)?;
        let r = view.resource;
        let peer_host = view.peers().find(|h| h.address.is_some()).ok_or_else(|| {
            anyhow::anyhow!("resource {name} has no peer with an address; tandem needs two nodes")
        })?;
        let local_addr = view
            .local
            .address
            .ok_or_else(|| anyhow::anyhow!("on {}: no address for replication", self.opts.node))?
            .addr;
        let volume = view.local.first_volume();
        let BackingDisk::Path(data) = &volume.disk else {
            bail!(
                "{name} has no disk on {} ('disk none'); diskless nodes are not supported yet",
                self.opts.node
            );
        };
        let loc = MdLocation {
            data: data.clone(),
            external: match &volume.meta_disk {
                Some(MetaDisk::External { path, index }) => Some((path.clone(), *index)),
                _ => None,
            },
        };
        let attached =
            disk::attach(&loc, r.disk.size_bytes).with_context(|| format!("attach {name}"))?;
        let backing =
            backing::Backing::open(data).with_context(|| format!("open {}", data.display()))?;
        let net = &r.net;
        let node_config = NodeConfig {
            name: self.opts.node.clone(),
            protocol: net.protocol,
            backing_bytes: attached.usable_bytes,
            max_in_flight_bytes: u64::from(net.max_buffers) * 4096 * 8,
            max_epoch_size: net.max_epoch_size,
            max_rx_bytes: u64::from(net.max_buffers) * 4096,
            ping_int_ms: u64::from(net.ping_int_ms),
            ping_timeout_ms: u64::from(net.ping_timeout_ms),
            ack_timeout_ms: u64::from(net.timeout_ms) * u64::from(net.ko_count.max(1)),
            disk_flushes: r.disk.disk_flushes,
            resync_window_bytes: if r.disk.c_plan_ahead_ms == 0 {
                // Fixed rate: keep a few requests in flight.
                4 << 20
            } else {
                r.disk.c_fill_target_bytes
            },
            resync_request_bytes: 1 << 20,
            resync_rate_bytes_per_s: if r.disk.c_plan_ahead_ms == 0 {
                r.disk.resync_rate_bytes_per_s
            } else {
                r.disk.c_max_rate_bytes_per_s
            },
            resync_min_rate_bytes_per_s: if r.disk.c_plan_ahead_ms == 0 {
                0
            } else {
                r.disk.c_min_rate_bytes_per_s
            },
            resync_delay_target_ms: u64::from(r.disk.c_delay_target_ms),
            allow_two_primaries: net.allow_two_primaries,
            integrity: net.data_integrity_alg,
            al_extents: r.disk.al_extents,
            verify_alg: net.verify_alg,
            csums_alg: net.csums_alg,
            peer_name: peer_host.name.clone(),
            after_sb_0pri: net.after_sb_0pri.clone(),
            after_sb_1pri: net.after_sb_1pri,
            after_sb_2pri: net.after_sb_2pri,
            always_asbp: net.always_asbp,
            fencing: net.fencing,
            rr_conflict: net.rr_conflict,
        };
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("random: {e}"))?;
        let spec = resource::Spec {
            name: name.to_string(),
            node_config,
            attached,
            backing,
            peer: peer::PeerParams {
                resource: name.to_string(),
                node: self.opts.node.clone(),
                peer_node: peer_host.name.clone(),
                protocol: match net.protocol {
                    Protocol::A => 0,
                    Protocol::B => 1,
                    Protocol::C => 2,
                },
                secret: net.cram_hmac_alg.zip(net.shared_secret.clone()),
                local_addr,
                peer_addr: peer_host.address.expect("filtered").addr,
            },
            connect_int: Duration::from_millis(u64::from(net.connect_int_ms)),
            handlers: r.handlers.commands.clone(),
            nbd: self.nbd.clone(),
            iscsi: view
                .local
                .export
                .as_ref()
                .unwrap_or(&r.export)
                .iscsi
                .map(|_| self.iscsi.clone()),
            events: self.events.clone(),
            seed: u64::from_le_bytes(seed),
        };
        let handle = resource::spawn(spec)
            .await
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let tx = handle.tx.clone();
        map.insert(name.to_string(), handle);
        drop(map);
        let export = view.local.export.as_ref().unwrap_or(&r.export);
        if let Some(addr) = export.nbd {
            self.serve_tcp(addr).await?;
        }
        if let Some(addr) = export.iscsi {
            self.serve_iscsi(addr).await?;
        }
        let (reply, rx) = oneshot::channel();
        let _ = tx.send(resource::Msg::Cmd {
            command: Command::Connect {
                discard_my_data: false,
            },
            reply,
        });
        let _ = rx.await;
        tracing::info!(resource = %name, "up");
        Ok(())
    }

    async fn serve_tcp(&self, addr: SocketAddr) -> Result<()> {
        let mut map = self.tcp_exports.lock().await;
        if map.contains_key(&addr) {
            return Ok(());
        }
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot serve NBD on {addr}"))?;
        map.insert(addr, self.nbd.serve_tcp(listener));
        tracing::info!(%addr, "serving NBD on TCP");
        Ok(())
    }

    async fn serve_iscsi(&self, addr: SocketAddr) -> Result<()> {
        let mut map = self.tcp_exports.lock().await;
        if map.contains_key(&addr) {
            return Ok(());
        }
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot serve iSCSI on {addr}"))?;
        map.insert(addr, self.iscsi.serve_tcp(listener));
        tracing::info!(%addr, "serving iSCSI on TCP");
        Ok(())
    }

    async fn down(&self, name: &str) -> Result<()> {
        let tx = self.tx(name).await?;
        let (reply, rx) = oneshot::channel();
        tx.send(resource::Msg::Down { reply })
            .map_err(|_| anyhow::anyhow!("{name} is shutting down"))?;
        rx.await
            .map_err(|_| anyhow::anyhow!("{name} stopped"))?
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        if let Some(h) = self.resources.lock().await.remove(name) {
            let _ = h.task.await;
        }
        tracing::info!(resource = %name, "down");
        Ok(())
    }
}

async fn send(w: &mut tokio::net::unix::OwnedWriteHalf, r: &Response) -> std::io::Result<()> {
    let mut text = serde_json::to_string(r).expect("serializable");
    text.push('\n');
    w.write_all(text.as_bytes()).await
}

/// The default node name: the hostname.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string())
}

/// The default config path.
pub fn default_config() -> PathBuf {
    PathBuf::from(config::DEFAULT_CONFIG_PATH)
}
