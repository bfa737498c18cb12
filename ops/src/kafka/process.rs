//! Starting, finding and signalling broker JVMs.
//!
//! Two ways to start a broker: *detached* (own session, survives us) and *attached* (dies with
//! us through `PR_SET_PDEATHSIG`). Liveness of a pid we did not spawn is judged from `/proc`, and
//! only counts if the process's command line names the node's `server.properties`, so a recycled
//! pid is never mistaken for a broker.

use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{KafkaConfig, KafkaError, LOG_TAIL_LINES, NODE_IDS, POLL, STOP_GRACE, config};

/// Whether brokers outlive the process that started them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// New session (`setsid`); survives this process, Ctrl-C and terminal hang-up.
    Detached,
    /// `PR_SET_PDEATHSIG=SIGKILL`, spawned from the long-lived spawner thread.
    Attached,
}

/// Spawn `cmd` in the given mode.
pub(crate) fn spawn(mode: Mode, cmd: Command) -> io::Result<Child> {
    match mode {
        Mode::Detached => crate::process::spawn_detached(cmd),
        Mode::Attached => crate::process::spawn_attached(cmd),
    }
}

/// True if `pid` is a live (not zombie) process whose command line contains `marker`.
pub(crate) fn proc_alive(pid: u32, marker: &Path) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // Field 3 follows the parenthesised command name, which may itself contain spaces.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    match state {
        None | Some("X") | Some("x") => return false,
        // A SIGKILLed JVM's leader thread turns zombie while its other threads are still exiting
        // and holding the sockets; it is gone only when it is the last task left.
        Some("Z") => return fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|d| d.count() > 1),
        _ => {}
    }
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let marker = marker.as_os_str().as_encoded_bytes();
    cmdline.split(|b| *b == 0).any(|arg| arg == marker)
}

pub(crate) use crate::process::signal;

/// The pid recorded in a pid file, if it parses.
pub(crate) fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// True if something accepts TCP connections on `127.0.0.1:port`.
pub(crate) fn port_answers(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

/// True if we can listen on `127.0.0.1:port` within `wait` (a process that was just killed may
/// still be releasing it).
pub(crate) fn port_free(port: u16, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) use crate::process::tail_file;

/// Our knowledge of one node's JVM.
#[derive(Default)]
pub(crate) struct Node {
    pub(crate) pid: Option<u32>,
    /// Present when this process spawned the JVM, so it can be reaped (no zombies) and its exit
    /// status reported.
    pub(crate) child: Option<Child>,
}

/// SIGTERM every live node, wait for them together, SIGKILL stragglers, remove pid files.
pub(crate) fn terminate(cfg: &KafkaConfig, nodes: &mut [Node]) -> Result<(), KafkaError> {
    let alive = |n: u32, node: &mut Node| -> bool {
        if let Some(child) = node.child.as_mut() {
            return matches!(child.try_wait(), Ok(None));
        }
        node.pid.is_some_and(|pid| proc_alive(pid, &cfg.properties_file(n)))
    };
    for (i, node) in nodes.iter_mut().enumerate() {
        let n = NODE_IDS[i];
        if let (true, Some(pid)) = (alive(n, node), node.pid) {
            signal(pid, libc::SIGTERM).map_err(|e| KafkaError::Signal {
                node: n,
                pid,
                signal: libc::SIGTERM,
                source: e,
            })?;
        }
    }
    let started = Instant::now();
    let mut running: Vec<bool> = (0..nodes.len()).map(|i| alive(NODE_IDS[i], &mut nodes[i])).collect();
    while running.iter().any(|r| *r) && started.elapsed() < STOP_GRACE {
        std::thread::sleep(POLL);
        for (i, node) in nodes.iter_mut().enumerate() {
            if running[i] && !alive(NODE_IDS[i], node) {
                running[i] = false;
                tracing::debug!(node = NODE_IDS[i], elapsed = ?started.elapsed(), "broker exited");
            }
        }
    }
    let mut result = Ok(());
    for (i, node) in nodes.iter_mut().enumerate() {
        let n = NODE_IDS[i];
        if alive(n, node) {
            tracing::warn!(node = n, "broker ignored SIGTERM for {STOP_GRACE:?}; sending SIGKILL");
        }
        let r = match (node.pid, node.child.as_mut()) {
            (_, Some(child)) => {
                let pid = child.id();
                let _ = child.kill();
                child.wait().map(|_| ()).map_err(|e| KafkaError::Signal {
                    node: n,
                    pid,
                    signal: libc::SIGKILL,
                    source: e,
                })
            }
            (Some(pid), None) => kill_pid(cfg, n, pid),
            (None, None) => Ok(()),
        };
        let _ = fs::remove_file(cfg.pid_file(n));
        if result.is_ok() {
            result = r;
        }
    }
    result
}

/// SIGKILL a broker we did not spawn and poll `/proc` until it is gone.
pub(crate) fn kill_pid(cfg: &KafkaConfig, node: u32, pid: u32) -> Result<(), KafkaError> {
    let marker = cfg.properties_file(node);
    if !proc_alive(pid, &marker) {
        return Ok(());
    }
    signal(pid, libc::SIGKILL).map_err(|e| KafkaError::Signal { node, pid, signal: libc::SIGKILL, source: e })?;
    let timeout = Duration::from_secs(10);
    let deadline = Instant::now() + timeout;
    while proc_alive(pid, &marker) {
        if Instant::now() >= deadline {
            return Err(KafkaError::StillRunning { node, pid, timeout });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The pid in node `n`'s pid file, if it is a live broker of this data dir.
pub(crate) fn live_pid(cfg: &KafkaConfig, n: u32) -> Option<u32> {
    read_pid(&cfg.pid_file(n)).filter(|pid| proc_alive(*pid, &cfg.properties_file(n)))
}

/// `java -Dlog4j2... -cp '<libs>/*'` with the configured heap and JVM flags.
pub(crate) fn java_command(cfg: &KafkaConfig) -> Command {
    let java = std::env::var_os("JAVA_HOME")
        .map(|h| PathBuf::from(h).join("bin").join("java"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("java"));
    let mut cmd = Command::new(java);
    cmd.args(config::heap_args(&cfg.heap))
        .args(&cfg.jvm_flags)
        .args(["-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true"])
        .arg(format!("-Dlog4j2.configurationFile={}", cfg.log4j_file().display()))
        .arg("-cp")
        .arg(format!("{}/*", cfg.libs_dir().display()));
    cmd
}

/// Format the KRaft storage of `nodes` with `cluster_id`, in parallel (each is a JVM start).
pub(crate) fn format_storage(cfg: &KafkaConfig, nodes: &[u32], cluster_id: &str) -> Result<(), KafkaError> {
    // Format the unformatted nodes in parallel (each is a JVM start).
    let mut formats = Vec::new();
    for &n in nodes.iter().filter(|n| !cfg.log_dir(**n).join("meta.properties").is_file()) {
        let mut cmd = java_command(cfg);
        cmd.args(["kafka.tools.StorageTool", "format", "--cluster-id", cluster_id, "--config"])
            .arg(cfg.properties_file(n));
        let command = describe(&cmd);
        tracing::info!(node = n, %command, "formatting KRaft storage");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| KafkaError::Spawn { node: Some(n), command: command.clone(), source: e })?;
        formats.push((n, command, child));
    }
    let mut first_err = None;
    for (n, command, child) in formats {
        let out = child.wait_with_output().map_err(|e| KafkaError::Spawn {
            node: Some(n),
            command: command.clone(),
            source: e,
        });
        let err = match out {
            Ok(out) if out.status.success() => None,
            Ok(out) => {
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&out.stderr));
                Some(KafkaError::Command {
                    node: Some(n),
                    command,
                    status: out.status.to_string(),
                    output_tail: config::last_lines(&text, LOG_TAIL_LINES),
                })
            }
            Err(e) => Some(e),
        };
        if first_err.is_none() {
            first_err = err;
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// A shell-like rendering of a command, for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brokers_start_with_the_heap_and_the_local_jit_and_collector() {
        let cfg = KafkaConfig::new("/tmp/secretlog-test-java-command");
        let cmd = java_command(&cfg);
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        for flag in ["-Xmx768m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-XX:+ExitOnOutOfMemoryError"] {
            assert!(args.iter().any(|a| a == flag), "{flag} missing from {args:?}");
        }
        let classpath = args.iter().position(|a| a == "-cp").expect("a classpath");
        assert!(args[..classpath].iter().all(|a| a.starts_with('-')), "flags before the classpath: {args:?}");
    }
}
