//! A reader's own network: a Linux network namespace whose only way out is through this test
//! process, so the nemesis can slow the reader's network down or cut it.
//!
//! Inside a namespace 127.0.0.1 is the namespace's own loopback. The reader runs there
//! (`ip netns exec`), and this process bridges: for every port the reader needs (the brokers,
//! which advertise 127.0.0.1:<port>, so metadata stays valid; the writers) a listener *inside*
//! the namespace forwards to the same port on the host, and one host port forwards to the
//! reader's listener inside. The sockets are created in the namespace by a short-lived thread
//! that enters it (`setns`), so no veth pair, routing or forwarding program is needed.
//!
//! Faults: a **cut** takes the namespace's loopback down (the kernel drops every packet of the
//! reader's connections: they hang, as on a partition, and resume when it comes back); a
//! **delay** holds every byte crossing the bridge for a while, in both directions. The kernel's
//! `netem` would delay packets instead, but this machine's kernel has no `sch_netem` (nor loadable
//! modules), so the delay lives in the bridge. An **outbound cut** holds every byte of the
//! connections the reader opened to the host (brokers, writers) and new ones hang unconnected,
//! while the namespace's loopback, and so the reader's own port, stays up: the reader is cut
//! off from Kafka but still answers HTTP.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// A network namespace and the bridge into it. Dropping it removes both.
pub struct Netns {
    pub name: String,
    delay_ms: Arc<AtomicU64>,
    /// `true` while the outbound cut is on.
    outbound_cut: tokio::sync::watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

/// A TCP socket (unbound, unconnected) that lives in the namespace `name`.
fn socket_in(name: &str) -> std::io::Result<TcpSocket> {
    let ns = std::fs::File::open(format!("/var/run/netns/{name}"))?;
    // The thread enters the namespace, makes the socket and ends: no other thread moves.
    let fd = std::thread::spawn(move || -> std::io::Result<OwnedFd> {
        // SAFETY: setns and socket take plain integers; the fd returned is owned here.
        unsafe {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(OwnedFd::from_raw_fd(fd))
        }
    })
    .join()
    .map_err(|_| std::io::Error::other("namespace thread panicked"))??;
    Ok(TcpSocket::from_std_stream(std::net::TcpStream::from(fd)))
}

/// Copy `from` to `to`, holding each chunk until `delay` after it was read, and while `cut`
/// (when given) says so.
async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    delay: Arc<AtomicU64>,
    mut cut: Option<tokio::sync::watch::Receiver<bool>>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, Vec<u8>)>(256);
    let read = async move {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0 || tx.send((Instant::now(), buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
    };
    let write = async move {
        while let Some((at, chunk)) = rx.recv().await {
            let d = Duration::from_millis(delay.load(Ordering::Relaxed));
            tokio::time::sleep_until((at + d).into()).await;
            if let Some(cut) = &mut cut
                && cut.wait_for(|c| !c).await.is_err()
            {
                return;
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

fn bridge(a: TcpStream, b: TcpStream, delay: &Arc<AtomicU64>, cut: Option<tokio::sync::watch::Receiver<bool>>) {
    let _ = (a.set_nodelay(true), b.set_nodelay(true));
    let (ar, aw) = a.into_split();
    let (br, bw) = b.into_split();
    tokio::spawn(pipe(ar, bw, delay.clone(), cut.clone()));
    tokio::spawn(pipe(br, aw, delay.clone(), cut));
}

impl Netns {
    /// A fresh namespace with its loopback up, or why this machine cannot have one (not root,
    /// no `ip`, no network namespaces).
    pub fn create(name: &str) -> Result<Netns, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root".into());
        }
        let _ = ip(&["netns", "del", name]);
        ip(&["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
            delay_ms: Arc::new(AtomicU64::new(0)),
            outbound_cut: tokio::sync::watch::Sender::new(false),
            tasks: Vec::new(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        socket_in(name).map_err(|e| format!("a socket in namespace {name}: {e}"))?;
        Ok(ns)
    }

    /// The command prefix that runs a program inside the namespace.
    pub fn prefix(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name].into_iter().map(String::from).collect()
    }

    /// Inside the namespace, 127.0.0.1:`port` reaches the host's 127.0.0.1:`port`.
    pub fn forward_in(&mut self, port: u16) -> std::io::Result<()> {
        let s = socket_in(&self.name)?;
        s.set_reuseaddr(true)?;
        s.bind(([127, 0, 0, 1], port).into())?;
        let listener = s.listen(1024)?;
        let (delay, cut) = (self.delay_ms.clone(), self.outbound_cut.clone());
        self.tasks.push(tokio::spawn(async move {
            while let Ok((inside, _)) = listener.accept().await {
                let (delay, mut cut) = (delay.clone(), cut.subscribe());
                tokio::spawn(async move {
                    // While cut off, a new connection hangs as on a partition.
                    if cut.wait_for(|c| !c).await.is_err() {
                        return;
                    }
                    if let Ok(host) = TcpStream::connect(("127.0.0.1", port)).await {
                        bridge(inside, host, &delay, Some(cut));
                    }
                });
            }
        }));
        Ok(())
    }

    /// A host port on 127.0.0.1 that reaches 127.0.0.1:`port` inside the namespace.
    pub async fn expose(&mut self, port: u16) -> std::io::Result<u16> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let host_port = listener.local_addr()?.port();
        let (name, delay) = (self.name.clone(), self.delay_ms.clone());
        self.tasks.push(tokio::spawn(async move {
            while let Ok((outside, _)) = listener.accept().await {
                let (name, delay) = (name.clone(), delay.clone());
                tokio::spawn(async move {
                    let Ok(s) = socket_in(&name) else { return };
                    // While the namespace is cut a connection attempt hangs; give up as a
                    // client would.
                    let connect = s.connect(([127, 0, 0, 1], port).into());
                    if let Ok(Ok(inside)) = tokio::time::timeout(Duration::from_secs(5), connect).await {
                        bridge(outside, inside, &delay, None);
                    }
                });
            }
        }));
        Ok(host_port)
    }

    /// Hold every byte crossing into or out of the namespace for `d` (zero: none).
    pub fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::Relaxed);
    }

    /// Cut (`true`) or restore the namespace's way out (brokers, writers) only: bytes of open
    /// connections are held, new connections hang; the reader's exposed port still answers.
    pub fn set_outbound_cut(&self, cut: bool) {
        self.outbound_cut.send_replace(cut);
    }

    /// Cut (`true`) or restore the namespace's network.
    pub fn set_cut(&self, cut: bool) {
        let state = if cut { "down" } else { "up" };
        ip(&["-n", &self.name, "link", "set", "lo", state]).expect("switching the namespace's loopback");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}
