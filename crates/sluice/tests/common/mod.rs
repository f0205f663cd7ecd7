//! A `sluice serve` process for integration tests: free ports, its own data directory,
//! readiness read from its stderr (no sleeps), stopped on drop.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

pub struct Broker {
    child: Child,
    lines: Receiver<String>,
    pub amqp: SocketAddr,
    pub kafka: SocketAddr,
    pub data_dir: PathBuf,
    /// Extra environment, kept for restarts.
    env: Vec<(String, String)>,
    _tmp: Option<tempfile::TempDir>,
}

impl Broker {
    pub fn start() -> Broker {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let mut b = Broker::start_in(&dir);
        b._tmp = Some(tmp);
        b
    }

    pub fn start_in(data_dir: &Path) -> Broker {
        Broker::start_with(data_dir, &[])
    }

    /// Starts with extra `SLUICE_*` environment settings, in a fresh directory.
    pub fn start_env(env: &[(&str, &str)]) -> Broker {
        let tmp = tempfile::tempdir().unwrap();
        let mut b = Broker::start_with(&tmp.path().join("data"), env);
        b._tmp = Some(tmp);
        b
    }

    fn start_with(data_dir: &Path, env: &[(&str, &str)]) -> Broker {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([
                "serve",
                "--amqp-listen",
                "127.0.0.1:0",
                "--kafka-listen",
                "127.0.0.1:0",
                "--grpc-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .env("SLUICE_LOG_LEVEL", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut amqp = None;
        let mut kafka = None;
        let deadline = Instant::now() + WAIT;
        while amqp.is_none() || kafka.is_none() {
            let line = lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("sluice did not report its listeners");
            for (face, slot) in [("amqp", &mut amqp), ("kafka", &mut kafka)] {
                let marker = format!("listening {face}=");
                if let Some((_, rest)) = line.split_once(&marker) {
                    *slot = rest.split_whitespace().next().and_then(|a| a.parse().ok());
                }
            }
        }
        Broker {
            child,
            lines,
            amqp: amqp.unwrap(),
            kafka: kafka.unwrap(),
            data_dir: data_dir.to_path_buf(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            _tmp: None,
        }
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.amqp)
    }

    /// Stops the broker (SIGTERM, or SIGKILL when `graceful` is false) and starts a new
    /// one on the same data directory.
    pub fn restart(mut self, graceful: bool) -> Broker {
        if graceful {
            let status = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status()
                .unwrap();
            assert!(status.success());
            let deadline = Instant::now() + WAIT;
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    assert!(status.success(), "graceful stop failed: {status}");
                    break;
                }
                assert!(Instant::now() < deadline, "sluice did not stop");
                std::thread::sleep(Duration::from_millis(10));
            }
        } else {
            self.child.kill().unwrap();
            self.child.wait().unwrap();
        }
        let tmp = self._tmp.take();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut next = Broker::start_with(&self.data_dir, &env);
        next._tmp = tmp;
        next
    }

    /// Every stderr line printed so far that has not been read yet.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// Resident memory of the server process, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    }

    /// Whether the process is still running (it must survive bad input).
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
