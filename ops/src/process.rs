//! Child processes that die with us, or outlive us on purpose.
//!
//! *Attached* children get `PR_SET_PDEATHSIG=SIGKILL`. That signal fires when the **thread**
//! that forked the child exits, not the process — so every attached child is forked by one
//! dedicated spawner thread that lives as long as the process. Whatever way we die (panic,
//! SIGKILL, a failed test), the children die too: nothing is left running.
//! *Detached* children start a session of their own and survive us (`secretlog up --detach`,
//! `secretlog kafka up`).

use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct SpawnJob {
    cmd: Command,
    reply: mpsc::Sender<io::Result<Child>>,
}

fn spawner() -> &'static mpsc::Sender<SpawnJob> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnJob>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("child-spawner".into())
            .spawn(move || {
                // The static sender is never dropped, so this loop (and thread) lasts as long as
                // the process.
                while let Ok(mut job) = rx.recv() {
                    let parent = std::process::id() as libc::pid_t;
                    // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) run between
                    // fork and exec.
                    unsafe {
                        job.cmd.pre_exec(move || {
                            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                                return Err(io::Error::last_os_error());
                            }
                            // If we died between fork and prctl, nobody would kill the child.
                            if libc::getppid() != parent {
                                libc::_exit(1);
                            }
                            Ok(())
                        });
                    }
                    let _ = job.reply.send(job.cmd.spawn());
                }
            })
            .expect("spawning the child-spawner thread");
        tx
    })
}

/// Spawn a child that is killed when this process dies.
pub fn spawn_attached(cmd: Command) -> io::Result<Child> {
    let (reply, rx) = mpsc::channel();
    spawner().send(SpawnJob { cmd, reply }).map_err(|_| io::Error::other("spawner thread is gone"))?;
    rx.recv().map_err(|_| io::Error::other("spawner thread did not answer"))?
}

/// Spawn a child in a session of its own, so it survives this process and its terminal.
pub fn spawn_detached(mut cmd: Command) -> io::Result<Child> {
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Send a signal; a process that is already gone is not an error.
pub fn signal(pid: u32, sig: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    if pid <= 0 {
        return Err(io::Error::other("refusing to signal a process group"));
    }
    // SAFETY: a plain syscall on a positive pid.
    if unsafe { libc::kill(pid, sig) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(e);
        }
    }
    Ok(())
}

/// SIGTERM a child, wait up to `grace` for it to exit, then SIGKILL it. Always reaps it.
pub fn terminate(child: &mut Child, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = signal(child.id(), libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Whether `pid` is alive and its command line mentions `marker` (so a recycled pid is never
/// mistaken for ours).
pub fn alive_with(pid: u32, marker: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    if matches!(state, None | Some("Z") | Some("X")) {
        return false;
    }
    std::fs::read(format!("/proc/{pid}/cmdline")).map(|c| String::from_utf8_lossy(&c).contains(marker)).unwrap_or(false)
}

/// Stop a process we did not spawn in this run (a detached node): SIGTERM, wait, SIGKILL.
pub fn terminate_pid(pid: u32, marker: &str, grace: Duration) {
    if !alive_with(pid, marker) {
        return;
    }
    let _ = signal(pid, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !alive_with(pid, marker) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = signal(pid, libc::SIGKILL);
}

/// The last `n` lines of a log file (empty if unreadable).
pub fn tail_file(path: &Path, n: usize) -> String {
    let Ok(text) = std::fs::read(path) else { return String::new() };
    let start = text.len().saturating_sub(64 * 1024);
    let text = String::from_utf8_lossy(&text[start..]);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Opt this process (and the processes it starts) out of transparent huge pages.
///
/// mimalloc asks for huge pages on its arena (`MADV_HUGEPAGE`), and with THP in `madvise` mode (a
/// common default, Debian's among them) every 2 MiB region it touches becomes resident whole, and
/// khugepaged collapses regions that mimalloc had partly returned back into huge pages. In a soak
/// three readers started side by side from the same log grew in 24 minutes: with THP 110 -> 218
/// MiB (`AnonHugePages` 18 -> 92 MiB), without 98 -> 135 and 84 -> 122 MiB (the value cache
/// filling; docs/operations.md, "A node's memory"). The nodes' heaps are some 100 MiB: huge pages
/// buy them nothing measurable. Databases that allocate as we do advise the same (Redis,
/// MongoDB). Done first, before the heap grows; failure (an old kernel) leaves THP as the system
/// has it.
pub fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes an integer flag and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
