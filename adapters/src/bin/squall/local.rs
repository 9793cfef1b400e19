//! `squall up` and `squall demo`: a local cluster of `squall node` processes on loopback,
//! and the supervisor that keeps it whole while it runs.
//!
//! A node stops without being asked when it crashes, is killed, or is evicted by its
//! group (it then exits with an error: see `node::RunError::Stopped`). `squall up` starts
//! it again, as systemd's `Restart=on-failure` would: the new start joins the running
//! group and recovers from its data directory. A node that keeps dying right after its
//! start is left stopped, with a line saying so, rather than restarted forever. A node
//! whose `squall up` is gone without stopping it (SIGKILL) leaves its group by itself.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use squall_adapters::client::{Client, Policy};
use squall_adapters::config::{self, Config};

/// How often the supervisor looks at its nodes, and a node at its supervisor.
const SUPERVISE_INTERVAL: Duration = Duration::from_millis(250);
/// Names, in a node's environment, the `squall up` process that started it.
const SUPERVISOR_PID_ENV: &str = "SQUALL_UP_PID";

/// Resolves once the `squall up` that started this node is gone (killed with SIGKILL,
/// say, which leaves it no chance to stop its nodes): the node then leaves its group
/// rather than live on as an orphan holding the cluster's ports. Never resolves for a
/// node started otherwise.
pub(crate) async fn supervisor_gone() {
    let supervisor = std::env::var(SUPERVISOR_PID_ENV)
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok());
    let Some(supervisor) = supervisor else {
        return std::future::pending().await;
    };
    loop {
        if std::os::unix::process::parent_id() != supervisor {
            return;
        }
        tokio::time::sleep(SUPERVISE_INTERVAL).await;
    }
}
/// A life shorter than this counts as a failed start.
const LIFE_SHORT: Duration = Duration::from_secs(10);
/// Failed starts in a row after which a node is left stopped.
const SHORT_LIVES_MAX: u32 = 5;
/// The wait before a restart after a long life; it doubles with each failed start.
const RESTART_DELAY_MIN: Duration = Duration::from_millis(500);

/// When the supervisor starts a node again, from how long its lives lasted.
#[derive(Debug, Default)]
struct Restarts {
    /// Lives in a row shorter than `LIFE_SHORT`.
    short_lives: u32,
    /// Restarts so far.
    count: u32,
}

impl Restarts {
    /// The wait before the next start of a node whose life lasted `life`; `None`: leave
    /// it stopped.
    fn after_exit(&mut self, life: Duration) -> Option<Duration> {
        if life >= LIFE_SHORT {
            self.short_lives = 0;
        } else {
            self.short_lives += 1;
        }
        if self.short_lives >= SHORT_LIVES_MAX {
            return None;
        }
        self.count += 1;
        Some(RESTART_DELAY_MIN * 2u32.pow(self.short_lives))
    }
}

/// One node process and what the supervisor knows of it.
struct NodeProc {
    id: u32,
    config_path: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    started: Instant,
    restarts: Restarts,
    /// When a restart is due; `None` with no child: left stopped.
    restart_at: Option<Instant>,
}

impl NodeProc {
    fn spawn(&mut self, exe: &Path, append_log: bool) -> Result<()> {
        let mut log = if append_log {
            OpenOptions::new()
                .append(true)
                .create(true)
                .open(&self.log_path)?
        } else {
            File::create(&self.log_path)?
        };
        if append_log {
            writeln!(
                log,
                "--- squall up: start {} of node {} ---",
                self.restarts.count + 1,
                self.id
            )?;
        }
        let child = Command::new(exe)
            .args(["node", "--config"])
            .arg(&self.config_path)
            .env(SUPERVISOR_PID_ENV, std::process::id().to_string())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting a node process")?;
        self.child = Some(child);
        self.started = Instant::now();
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Looks at the process; restarts it when it stopped unasked and its wait is over.
    fn supervise(&mut self, exe: &Path, now: Instant) {
        if let Some(child) = &mut self.child {
            let Ok(Some(status)) = child.try_wait() else {
                return;
            };
            self.child = None;
            self.exited(status, now);
            return;
        }
        if self.restart_at.is_some_and(|at| at <= now) {
            self.restart_at = None;
            match self.spawn(exe, true) {
                Ok(()) => println!(
                    "squall: node {} started again (pid {})",
                    self.id,
                    self.pid().unwrap_or(0)
                ),
                Err(e) => {
                    println!(
                        "squall: node {} could not be started again: {}",
                        self.id,
                        crate::error_line(&e)
                    );
                    self.schedule(Duration::ZERO, now);
                }
            }
        }
    }

    fn exited(&mut self, status: ExitStatus, now: Instant) {
        let life = now.saturating_duration_since(self.started);
        if status.success() {
            // Only a stop it was asked for (a signal to the node itself) ends in success.
            println!(
                "squall: node {} stopped as asked ({status}); not starting it again",
                self.id
            );
            return;
        }
        println!(
            "squall: node {} exited ({status}) after {:.1} s; its log: {}",
            self.id,
            life.as_secs_f64(),
            self.log_path.display()
        );
        self.schedule(life, now);
    }

    fn schedule(&mut self, life: Duration, now: Instant) {
        match self.restarts.after_exit(life) {
            Some(wait) => {
                println!(
                    "squall: starting node {} again in {:.1} s",
                    self.id,
                    wait.as_secs_f64()
                );
                self.restart_at = Some(now + wait);
            }
            None => println!(
                "squall: node {} failed {SHORT_LIVES_MAX} starts in a row (each under {} s); \
                 leaving it stopped: see {}",
                self.id,
                LIFE_SHORT.as_secs(),
                self.log_path.display()
            ),
        }
    }
}

/// Node processes on loopback, each `squall node` with a generated config.
pub(crate) struct LocalCluster {
    nodes: Vec<NodeProc>,
    configs: Vec<Config>,
    exe: PathBuf,
}

impl LocalCluster {
    /// `ports`: the peer, client and HTTP ports of node 0 (node i adds i).
    pub(crate) fn start(
        nodes: u32,
        data: &Path,
        ports: (u16, u16, Option<u16>),
        overlay: Option<&str>,
    ) -> Result<LocalCluster> {
        std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
        let mut configs = config::try_local_cluster(nodes, ports.0, ports.1, data)?;
        if let Some(base) = ports.2 {
            for c in &mut configs {
                let port = u16::try_from(u32::from(base) + c.node.id)
                    .context("--http-port + node id is beyond the last port")?;
                c.node.http_addr = Some(std::net::SocketAddr::new(c.node.client_addr.ip(), port));
            }
        }
        if let Some(overlay) = overlay {
            for c in &mut configs {
                *c = c.with_overlay(overlay).context("--overlay")?;
            }
        }
        let token = configs
            .first()
            .and_then(|c| c.auth.tokens.iter().max_by_key(|t| t.role))
            .map(|t| t.token.clone());
        let mut cluster = LocalCluster {
            nodes: Vec::new(),
            configs: configs.clone(),
            exe: std::env::current_exe()?,
        };
        for cfg in &configs {
            let config_path = data.join(format!("n{}.toml", cfg.node.id));
            std::fs::write(&config_path, cfg.to_toml_string())?;
            let mut node = NodeProc {
                id: cfg.node.id,
                config_path,
                log_path: data.join(format!("n{}.log", cfg.node.id)),
                child: None,
                started: Instant::now(),
                restarts: Restarts::default(),
                restart_at: None,
            };
            node.spawn(&cluster.exe, false)?;
            cluster.nodes.push(node);
        }
        // Ready once every node accepts clients and answers `members` with all of them.
        let deadline = Instant::now() + Duration::from_secs(30);
        let addrs = cluster.client_addrs();
        let rt = tokio::runtime::Runtime::new()?;
        loop {
            let up = addrs.iter().all(|a| TcpStream::connect(a).is_ok());
            if up {
                let ready = rt.block_on(async {
                    let client = Client::connect(&addrs[..1], token.clone(), Policy::default())
                        .await
                        .ok()?;
                    let (_, members) = client.members().await.ok()?;
                    Some(members.len() == addrs.len())
                });
                if ready == Some(true) {
                    break;
                }
            }
            if Instant::now() > deadline {
                cluster.stop();
                bail!(
                    "the local cluster did not come up in 30 s; see the node logs in {}",
                    data.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(cluster)
    }

    pub(crate) fn client_addrs(&self) -> Vec<String> {
        self.configs
            .iter()
            .map(|c| c.node.client_addr.to_string())
            .collect()
    }

    pub(crate) fn print(&self) {
        println!(
            "squall: local cluster of {} nodes is up",
            self.configs.len()
        );
        for (c, node) in self.configs.iter().zip(&self.nodes) {
            println!(
                "  node {}: pid {}  clients {}  data {}",
                c.node.id,
                node.pid().unwrap_or(0),
                c.node.client_addr,
                c.node.data_dir.display()
            );
        }
        if let Some(http) = self.configs.first().and_then(|c| c.node.http_addr) {
            println!(
                "dashboard: {}  (REST API {}api/v1, metrics {}metrics)",
                squall_adapters::http::dashboard_url(http),
                squall_adapters::http::dashboard_url(http),
                squall_adapters::http::dashboard_url(http)
            );
        }
        if let Some(site) = self.configs.first().and_then(|c| c.site.as_ref()) {
            println!("site: {} ({})", site.name, site.kind);
        }
        for remote in self.configs.first().map_or(&[][..], |c| &c.remotes[..]) {
            println!("remote: {} at {}", remote.name, remote.addresses.join(", "));
        }
        println!("pools: /demo (persistent), /cache (volatile)");
        println!("try:   squall put /demo/hello world && squall get /demo/hello");
    }

    /// Keeps the nodes running (see the module comment) until Ctrl-C or SIGTERM.
    pub(crate) fn run_until_stopped(&mut self) -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            let ctrl_c = tokio::signal::ctrl_c();
            tokio::pin!(ctrl_c);
            let mut tick = tokio::time::interval(SUPERVISE_INTERVAL);
            loop {
                tokio::select! {
                    r = &mut ctrl_c => return r,
                    _ = term.recv() => return Ok(()),
                    _ = tick.tick() => {
                        let now = Instant::now();
                        for node in &mut self.nodes {
                            node.supervise(&self.exe, now);
                        }
                    }
                }
            }
        })?;
        Ok(())
    }

    pub(crate) fn stop(&mut self) {
        for child in self.nodes.iter().filter_map(|n| n.child.as_ref()) {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for child in self.nodes.iter_mut().filter_map(|n| n.child.as_mut()) {
            loop {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.nodes.clear();
        println!("squall: local cluster stopped");
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for child in self.nodes.iter_mut().filter_map(|n| n.child.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_that_ran_a_while_is_started_again_soon() {
        let mut r = Restarts::default();
        for _ in 0..20 {
            assert_eq!(
                r.after_exit(Duration::from_secs(60)),
                Some(RESTART_DELAY_MIN)
            );
        }
        assert_eq!(r.count, 20);
    }

    #[test]
    fn failed_starts_wait_longer_each_time_then_give_up() {
        let mut r = Restarts::default();
        let short = Duration::from_secs(1);
        let waits: Vec<_> = (0..SHORT_LIVES_MAX).map(|_| r.after_exit(short)).collect();
        assert_eq!(
            waits,
            vec![
                Some(Duration::from_secs(1)),
                Some(Duration::from_secs(2)),
                Some(Duration::from_secs(4)),
                Some(Duration::from_secs(8)),
                None
            ]
        );
    }

    #[test]
    fn a_long_life_forgives_earlier_failed_starts() {
        let mut r = Restarts::default();
        let short = Duration::from_secs(1);
        for _ in 0..SHORT_LIVES_MAX - 1 {
            assert!(r.after_exit(short).is_some());
        }
        assert_eq!(r.after_exit(LIFE_SHORT), Some(RESTART_DELAY_MIN));
        assert_eq!(r.after_exit(short), Some(Duration::from_secs(1)));
    }
}
