//! `sluice serve` as a process: readiness from its stderr, listeners on port 0, the data
//! directory lock, signals, exit codes and the precedence of config sources.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Generous, because the test machine may be busy compiling; waits end as soon as the
/// awaited line or exit arrives.
const WAIT: Duration = Duration::from_secs(30);

const FREE_PORTS: [&str; 8] = [
    "--amqp-listen",
    "127.0.0.1:0",
    "--kafka-listen",
    "127.0.0.1:0",
    "--grpc-listen",
    "127.0.0.1:0",
    "--http-listen",
    "127.0.0.1:0",
];

fn sluice(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    for (var, _) in std::env::vars() {
        if var.starts_with("SLUICE_") {
            command.env_remove(var);
        }
    }
    command
        .current_dir(cwd)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// A running `sluice` whose stderr is read line by line on a thread.
struct Server {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Server {
    fn start(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = sluice(cwd, args, env).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Server {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for the first stderr line containing `needle`.
    fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no line with {needle:?} within {WAIT:?}; stderr: {:#?}",
                        self.seen
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("stderr closed before {needle:?}; stderr: {:#?}", self.seen)
                }
            }
        }
    }

    /// Waits for the `listening <face>=ADDR` line and returns ADDR.
    fn listening(&mut self, face: &str) -> SocketAddr {
        let marker = format!("listening {face}=");
        let line = self.wait_for_line(&marker);
        let (_, rest) = line.split_once(&marker).unwrap();
        rest.split_whitespace().next().unwrap().parse().unwrap()
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit and returns its status and all of its stderr.
    fn wait_exit(mut self) -> (ExitStatus, Vec<String>) {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "sluice did not exit within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        // The reader thread ends at EOF, which follows the exit.
        while let Ok(line) = self.lines.recv_timeout(WAIT) {
            self.seen.push(line);
        }
        (status, std::mem::take(&mut self.seen))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `sluice` to completion, expecting it to stop by itself (a startup failure).
fn run_to_exit(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, Vec<String>) {
    let (status, stderr) = Server::start(cwd, args, env).wait_exit();
    (status.code(), stderr)
}

fn data_dir(temp: &tempfile::TempDir) -> PathBuf {
    temp.path().join("data")
}

fn args_with_data_dir<'a>(dir: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["serve", "--data-dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    args
}

#[test]
fn serve_speaks_amqp_kafka_and_rocketmq_on_their_listeners() {
    let temp = tempfile::tempdir().unwrap();
    let dir = data_dir(&temp);
    let mut server = Server::start(temp.path(), &args_with_data_dir(&dir, &FREE_PORTS), &[]);
    let amqp = server.listening("amqp");
    let kafka = server.listening("kafka");
    let rocketmq = server.listening("rocketmq");
    assert_ne!(amqp.port(), 0);
    assert_ne!(kafka.port(), 0);
    assert_ne!(rocketmq.port(), 0);
    assert_answers_amqp_handshake(amqp);
    assert_answers_kafka_api_versions(kafka);
    assert_answers_http2(rocketmq);
    assert!(dir.join(".lock").is_file());
}

/// An ApiVersions v0 request gets its correlation id back with error code 0.
fn assert_answers_kafka_api_versions(addr: SocketAddr) {
    use std::io::Write;
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    // size 10 | api key 18 | version 0 | correlation id 7 | client id null
    stream
        .write_all(&[0, 0, 0, 10, 0, 18, 0, 0, 0, 0, 0, 7, 0xff, 0xff])
        .unwrap();
    let mut head = [0u8; 10];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(&head[4..8], &[0, 0, 0, 7], "correlation id");
    assert_eq!(&head[8..10], &[0, 0], "error code NONE");
}

/// The gRPC listener speaks HTTP/2: a client preface and an empty SETTINGS frame are
/// answered with the server's SETTINGS frame.
fn assert_answers_http2(addr: SocketAddr) {
    use std::io::Write;
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(head[3], 4, "a SETTINGS frame");
}

/// A client's protocol header is answered with `connection.start` (a method frame on
/// channel 0 for class 10, method 10).
fn assert_answers_amqp_handshake(addr: SocketAddr) {
    use std::io::Write;
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
    let mut head = [0u8; 11];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(head[0], 1, "method frame");
    assert_eq!(&head[1..3], &[0, 0], "channel 0");
    assert_eq!(&head[7..11], &[0, 10, 0, 10], "connection.start");
}

#[test]
fn sigterm_stops_the_server_with_exit_code_zero_and_releases_the_lock() {
    let temp = tempfile::tempdir().unwrap();
    let dir = data_dir(&temp);
    let args = args_with_data_dir(&dir, &FREE_PORTS);
    let mut server = Server::start(temp.path(), &args, &[]);
    let amqp = server.listening("amqp");
    server.listening("kafka");
    server.signal("TERM");
    let (status, stderr) = server.wait_exit();
    assert_eq!(status.code(), Some(0), "{stderr:#?}");
    assert!(stderr.last().unwrap().ends_with("stopped"), "{stderr:#?}");
    assert!(TcpStream::connect(amqp).is_err(), "listener still open");

    let mut again = Server::start(temp.path(), &args, &[]);
    again.listening("kafka");
}

#[test]
fn sigint_stops_the_server_with_exit_code_zero() {
    let temp = tempfile::tempdir().unwrap();
    let dir = data_dir(&temp);
    let mut server = Server::start(temp.path(), &args_with_data_dir(&dir, &FREE_PORTS), &[]);
    server.listening("kafka");
    server.signal("INT");
    let (status, stderr) = server.wait_exit();
    assert_eq!(status.code(), Some(0), "{stderr:#?}");
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("shutting down signal=\"SIGINT\"")),
        "{stderr:#?}"
    );
}

#[test]
fn a_second_server_on_the_same_data_dir_exits_1_naming_the_lock_file() {
    let temp = tempfile::tempdir().unwrap();
    let dir = data_dir(&temp);
    let args = args_with_data_dir(&dir, &FREE_PORTS);
    let mut first = Server::start(temp.path(), &args, &[]);
    first.listening("kafka");

    let (code, stderr) = run_to_exit(temp.path(), &args, &[]);
    assert_eq!(code, Some(1));
    let expected = format!(
        "sluice: data directory {} is in use by another sluice process (lock file {}/.lock)",
        dir.display(),
        dir.display()
    );
    assert_eq!(stderr, [expected]);
}

#[test]
fn a_taken_address_exits_1_naming_the_key_and_address() {
    let temp = tempfile::tempdir().unwrap();
    let dir = data_dir(&temp);
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let args = args_with_data_dir(
        &dir,
        &[
            "--amqp-listen",
            &addr,
            "--kafka-listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ],
    );
    let (code, stderr) = run_to_exit(temp.path(), &args, &[]);
    assert_eq!(code, Some(1));
    let errors: Vec<_> = stderr.iter().filter(|l| l.starts_with("sluice:")).collect();
    assert_eq!(errors.len(), 1, "{stderr:#?}");
    assert!(
        errors
            .first()
            .unwrap()
            .starts_with(&format!("sluice: amqp.listen: cannot bind {addr}: ")),
        "{stderr:#?}"
    );
}

#[test]
fn a_bad_flag_value_exits_2_with_one_line_naming_the_flag() {
    let temp = tempfile::tempdir().unwrap();
    let (code, stderr) = run_to_exit(temp.path(), &["serve", "--amqp-listen", "abc"], &[]);
    assert_eq!(code, Some(2));
    assert_eq!(
        stderr,
        ["sluice: config error: --amqp-listen: invalid socket address \"abc\""]
    );
}

#[test]
fn a_bad_env_value_exits_2_with_one_line_naming_the_variable() {
    let temp = tempfile::tempdir().unwrap();
    let (code, stderr) = run_to_exit(temp.path(), &["serve"], &[("SLUICE_AMQP_LISTEN", "abc")]);
    assert_eq!(code, Some(2));
    assert_eq!(
        stderr,
        ["sluice: config error: SLUICE_AMQP_LISTEN: invalid socket address \"abc\""]
    );
}

#[test]
fn a_bad_config_file_value_exits_2_with_one_line_naming_the_file_and_key() {
    let temp = tempfile::tempdir().unwrap();
    let file = temp.path().join("sluice.toml");
    std::fs::write(&file, "[storage]\nflush = \"sometimes\"\n").unwrap();
    let (code, stderr) = run_to_exit(
        temp.path(),
        &["serve", "--config", file.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, Some(2));
    let expected = format!(
        "sluice: config error: {}: storage.flush: expected \"sync\" or \"async\", got \"sometimes\"",
        file.display()
    );
    assert_eq!(stderr, [expected]);
}

#[test]
fn an_unknown_config_file_key_exits_2_naming_it() {
    let temp = tempfile::tempdir().unwrap();
    let file = temp.path().join("sluice.toml");
    std::fs::write(&file, "[amqp]\nport = 5672\n").unwrap();
    let (code, stderr) = run_to_exit(
        temp.path(),
        &["serve", "--config", file.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, Some(2));
    let expected = format!(
        "sluice: config error: {}: amqp.port: unknown key",
        file.display()
    );
    assert_eq!(stderr, [expected]);
}

#[test]
fn an_invalid_storage_value_exits_2_naming_the_variable() {
    let temp = tempfile::tempdir().unwrap();
    let (code, stderr) = run_to_exit(
        temp.path(),
        &["serve"],
        &[("SLUICE_STORAGE_SEGMENT_BYTES", "10")],
    );
    assert_eq!(code, Some(2));
    assert_eq!(stderr.len(), 1, "{stderr:#?}");
    assert!(
        stderr
            .first()
            .unwrap()
            .starts_with("sluice: config error: SLUICE_STORAGE_SEGMENT_BYTES: must be between"),
        "{stderr:#?}"
    );
}

struct Case<'a> {
    extra: &'a [&'a str],
    env: &'a [(&'a str, &'a str)],
    expected_ip: &'a str,
}

/// Each source puts the AMQP listener on its own loopback address, so the `listening`
/// line tells which source won.
#[test]
fn flags_beat_env_and_env_beats_the_config_file() {
    let temp = tempfile::tempdir().unwrap();
    let dir = data_dir(&temp);
    let file = temp.path().join("sluice.toml");
    std::fs::write(
        &file,
        "[amqp]\nlisten = \"127.0.0.2:0\"\n[kafka]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let env = [("SLUICE_AMQP_LISTEN", "127.0.0.3:0")];
    let with_flag = ["--config", file, "--amqp-listen", "127.0.0.4:0"];
    let cases = [
        Case {
            extra: &["--config", file],
            env: &[],
            expected_ip: "127.0.0.2",
        },
        Case {
            extra: &["--config", file],
            env: &env,
            expected_ip: "127.0.0.3",
        },
        Case {
            extra: &with_flag,
            env: &env,
            expected_ip: "127.0.0.4",
        },
    ];
    for Case {
        extra,
        env,
        expected_ip,
    } in cases
    {
        let mut server = Server::start(temp.path(), &args_with_data_dir(&dir, extra), env);
        let amqp = server.listening("amqp");
        assert_eq!(amqp.ip().to_string(), expected_ip, "{extra:?} {env:?}");
        server.signal("TERM");
        let (status, stderr) = server.wait_exit();
        assert_eq!(status.code(), Some(0), "{stderr:#?}");
    }
}

#[test]
fn the_data_dir_defaults_to_sluice_data_in_the_working_directory() {
    let temp = tempfile::tempdir().unwrap();
    let mut server = Server::start(
        temp.path(),
        &["serve"],
        &[
            ("SLUICE_AMQP_LISTEN", "127.0.0.1:0"),
            ("SLUICE_KAFKA_LISTEN", "127.0.0.1:0"),
        ],
    );
    server.listening("kafka");
    assert!(temp.path().join("sluice-data/.lock").is_file());
}

#[test]
fn help_mentions_every_flag() {
    let temp = tempfile::tempdir().unwrap();
    let output = sluice(temp.path(), &["--help"], &[])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(help.contains("serve"), "{help}");

    let output = sluice(temp.path(), &["serve", "--help"], &[])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for flag in ["--config", "--data-dir", "--amqp-listen", "--kafka-listen"] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    for env in [
        "SLUICE_DATA_DIR",
        "SLUICE_AMQP_LISTEN",
        "SLUICE_KAFKA_LISTEN",
    ] {
        assert!(help.contains(env), "{env} missing from:\n{help}");
    }
}
