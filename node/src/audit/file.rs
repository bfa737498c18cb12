//! The file audit device: JSON lines appended to one path, which an operator can rotate.
//!
//! **Writes.** The file is opened for appending and each entry is one `write` of one whole line,
//! which the kernel appends atomically with respect to other appends — so concurrent requests do
//! not queue on each other here (a mutex around the file cost a reader about a third of its read
//! throughput in futex traffic). They share the file under the read side of a lock; only a
//! reopen or a rotation takes the write side, for as long as a rename and an `open` take.
//!
//! **Rotation**, two ways:
//! * *Reopen* ([`reopen_all`], on SIGHUP — see [`reopen_on_hangup`] — or `secretlog audit
//!   reopen`): the path is opened again, so after `logrotate` renamed the file, the next entry goes
//!   to a new file at the configured path. Vault's file device does the same on SIGHUP.
//! * *By size* (`--audit-max-bytes`, `--audit-keep N`): once the file holds `max_bytes`, it is
//!   renamed `PATH.1` (older ones move to `.2` … `.N`, the oldest is dropped) and a new file is
//!   started. An entry is never split across two files.
//!
//! **A short write** (only a full disk causes one) leaves part of a line behind: the entry is not
//! on record and the request is refused, and the partial bytes are cut off again so the next entry
//! starts on a line of its own — otherwise a later, recorded entry would be glued to a fragment and
//! no longer parse.
//!
//! One device per path per process: the node's sealed-time and unsealed-time auditors share it
//! (one descriptor, one size count), and [`reopen_all`] reaches every one.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

/// Bytes of audit entries a sink recorded (counter, `sink` label).
pub(crate) const BYTES_METRIC: &str = "secretlog_audit_bytes_total";
/// Space left for unprivileged writers on the audit file's filesystem (gauge).
pub(crate) const FS_AVAIL_METRIC: &str = "secretlog_audit_filesystem_avail_bytes";
/// Size of the audit file's filesystem (gauge).
pub(crate) const FS_SIZE_METRIC: &str = "secretlog_audit_filesystem_size_bytes";

/// How often, at most, the filesystem gauges are refreshed on a successful write, ms (on every
/// failed one).
const FS_SAMPLE_MS: u64 = 1000;

/// Size-based rotation: `--audit-max-bytes`, `--audit-keep`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate once the file holds this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`PATH.1` … `PATH.keep`); at least 1.
    pub keep: u32,
}

/// An audit file, appended to by every request of the process.
pub(crate) struct FileSink {
    path: PathBuf,
    rotation: Option<Rotation>,
    file: RwLock<File>,
    /// Bytes in the current file: its length when opened plus what this process appended.
    len: AtomicU64,
    /// When the filesystem gauges are next refreshed, ms since [`epoch`].
    next_sample: AtomicU64,
}

/// Every file device of the process, by path (weak: a device lives as long as its auditors).
static DEVICES: Mutex<Vec<Weak<FileSink>>> = Mutex::new(Vec::new());

fn epoch() -> Instant {
    static E: OnceLock<Instant> = OnceLock::new();
    *E.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// Open `path` for appending, created with mode 0600 (and for reading: a short write's fragment
/// is read back before it is cut off).
fn open_append(path: &Path) -> std::io::Result<File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).append(true).read(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)
}

/// `PATH.n`.
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

impl FileSink {
    /// The process's device for `path`, opened now if there is none (an open device is shared:
    /// its rotation is the one it was opened with).
    pub fn open(path: &Path, rotation: Option<Rotation>) -> std::io::Result<Arc<FileSink>> {
        let mut devices = DEVICES.lock().unwrap_or_else(|e| e.into_inner());
        devices.retain(|d| d.strong_count() > 0);
        if let Some(d) = devices.iter().filter_map(Weak::upgrade).find(|d| d.path == path) {
            return Ok(d);
        }
        let file = open_append(path)?;
        let len = file.metadata()?.len();
        let sink = Arc::new(FileSink {
            path: path.to_path_buf(),
            rotation,
            file: RwLock::new(file),
            len: AtomicU64::new(len),
            next_sample: AtomicU64::new(0),
        });
        devices.push(Arc::downgrade(&sink));
        // Exported from the start, so the dashboard and alerts have series to watch.
        metrics::counter!(BYTES_METRIC, "sink" => "file").increment(0);
        sink.sample_filesystem(&sink.file.read().unwrap_or_else(|e| e.into_inner()));
        Ok(sink)
    }

    /// The configured path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one whole line (ending in `\n`) with one `write`. An error means the entry is not
    /// on record; a short write is one (and its fragment is removed again).
    pub(crate) fn write_line(&self, line: &[u8]) -> std::io::Result<()> {
        {
            let file = self.file.read().unwrap_or_else(|e| e.into_inner());
            let n = match (&*file).write(line) {
                Ok(n) => n,
                Err(e) => {
                    // A failure is when the space left matters: sampled every time.
                    self.sample_filesystem(&file);
                    return Err(e);
                }
            };
            if n < line.len() {
                self.sample_filesystem(&file);
                drop(file);
                self.remove_fragment(&line[..n]);
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    format!("short write: {n} of {} bytes (disk full?)", line.len()),
                ));
            }
            let due = self.next_sample.load(Ordering::Relaxed);
            let now = now_ms();
            if now >= due
                && self
                    .next_sample
                    .compare_exchange(due, now + FS_SAMPLE_MS, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                self.sample_filesystem(&file);
            }
        }
        let len = self.len.fetch_add(line.len() as u64, Ordering::Relaxed) + line.len() as u64;
        if let Some(r) = self.rotation
            && len >= r.max_bytes
        {
            self.rotate(r);
        }
        Ok(())
    }

    /// Cut `fragment` (the start of a line a short write left) off the end of the file, if it is
    /// still the end: appends go on after it otherwise, and then it cannot be taken out.
    fn remove_fragment(&self, fragment: &[u8]) {
        if fragment.is_empty() {
            return;
        }
        let file = self.file.write().unwrap_or_else(|e| e.into_inner());
        let n = fragment.len() as u64;
        let removed = (|| -> std::io::Result<bool> {
            let len = file.metadata()?.len();
            if len < n {
                return Ok(false);
            }
            let mut tail = vec![0; fragment.len()];
            file.read_exact_at(&mut tail, len - n)?;
            if tail != fragment {
                return Ok(false);
            }
            file.set_len(len - n)?;
            Ok(true)
        })();
        match removed {
            Ok(true) => {}
            Ok(false) => tracing::error!(
                file = %self.path.display(),
                bytes = n,
                "a partial audit entry is followed by others and stays in the file (one line will not parse)"
            ),
            Err(e) => tracing::error!(file = %self.path.display(), error = %e, "cannot remove a partial audit entry"),
        }
    }

    /// Open the configured path again (after logrotate renamed the file). On failure the old file
    /// stays in use: entries keep being recorded, in the renamed file.
    pub fn reopen(&self) -> std::io::Result<()> {
        let new = open_append(&self.path)?;
        let len = new.metadata()?.len();
        let mut file = self.file.write().unwrap_or_else(|e| e.into_inner());
        *file = new;
        self.len.store(len, Ordering::Relaxed);
        self.sample_filesystem(&file);
        Ok(())
    }

    /// Rename the full file to `PATH.1` (shifting older ones, dropping the oldest) and start a
    /// new one — unless another request did so already.
    fn rotate(&self, r: Rotation) {
        let mut file = self.file.write().unwrap_or_else(|e| e.into_inner());
        if self.len.load(Ordering::Relaxed) < r.max_bytes {
            return;
        }
        let shifted = (|| -> std::io::Result<File> {
            for n in (1..r.keep).rev() {
                match std::fs::rename(rotated(&self.path, n), rotated(&self.path, n + 1)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(&self.path, rotated(&self.path, 1))?;
            open_append(&self.path)
        })();
        match shifted {
            Ok(new) => {
                *file = new;
                self.len.store(0, Ordering::Relaxed);
                self.sample_filesystem(&file);
                tracing::info!(file = %self.path.display(), max_bytes = r.max_bytes, keep = r.keep, "audit file rotated");
            }
            Err(e) => {
                // Entries keep going to the file in use; the next attempt comes after another
                // max_bytes (not on every entry).
                self.len.store(0, Ordering::Relaxed);
                tracing::error!(file = %self.path.display(), error = %e, "cannot rotate the audit file");
            }
        }
    }

    /// Refresh the filesystem gauges from the file's filesystem.
    fn sample_filesystem(&self, file: &File) {
        use std::os::fd::AsRawFd;
        // SAFETY: fstatvfs fills the zeroed struct we own; the descriptor is open (we hold it).
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstatvfs(file.as_raw_fd(), &mut s) } != 0 {
            return;
        }
        let frsize = s.f_frsize as f64;
        metrics::gauge!(FS_AVAIL_METRIC, "sink" => "file").set(s.f_bavail as f64 * frsize);
        metrics::gauge!(FS_SIZE_METRIC, "sink" => "file").set(s.f_blocks as f64 * frsize);
    }
}

/// Reopen every audit file of the process (SIGHUP, `secretlog audit reopen`); what happened to
/// each is logged.
pub(crate) fn reopen_all() -> usize {
    let devices: Vec<Arc<FileSink>> = {
        let d = DEVICES.lock().unwrap_or_else(|e| e.into_inner());
        d.iter().filter_map(Weak::upgrade).collect()
    };
    for d in &devices {
        match d.reopen() {
            Ok(()) => tracing::info!(file = %d.path.display(), "audit file reopened"),
            Err(e) => tracing::error!(
                file = %d.path.display(),
                error = %e,
                "cannot reopen the audit file: entries still go to the file open before"
            ),
        }
    }
    devices.len()
}

/// Reopen the audit files on every SIGHUP until `cancel`. The handler is installed before this
/// returns, so a SIGHUP that comes once the node serves never takes the default action (exit).
pub(crate) fn reopen_on_hangup(cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    tokio::spawn(async move {
        let mut hup = match hup {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: audit files are not reopened on it");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    let n = tokio::task::spawn_blocking(reopen_all).await.unwrap_or(0);
                    tracing::info!(audit_files = n, "SIGHUP: audit files reopened");
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tests that rename a file and reopen: one at a time ([`reopen_all`] reaches every device).
    static RENAMING: Mutex<()> = Mutex::new(());

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect()
    }

    #[test]
    fn a_reopen_after_a_rename_starts_a_new_file_at_the_path() {
        let _one = RENAMING.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let sink = FileSink::open(&path, None).unwrap();
        sink.write_line(b"one\n").unwrap();
        std::fs::rename(&path, dir.path().join("audit.log.old")).unwrap();
        sink.write_line(b"two\n").unwrap();
        sink.reopen().unwrap();
        sink.write_line(b"three\n").unwrap();
        assert_eq!(lines(&dir.path().join("audit.log.old")), ["one", "two"]);
        assert_eq!(lines(&path), ["three"]);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn one_device_per_path_and_reopen_all_reaches_it() {
        let _one = RENAMING.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.log");
        let a = FileSink::open(&path, None).unwrap();
        let b = FileSink::open(&path, None).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        std::fs::rename(&path, dir.path().join("moved")).unwrap();
        assert!(reopen_all() >= 1);
        b.write_line(b"after\n").unwrap();
        assert_eq!(lines(&path), ["after"]);
    }

    #[test]
    fn size_rotation_keeps_n_files_and_never_splits_an_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let sink = FileSink::open(&path, Some(Rotation { max_bytes: 100, keep: 3 })).unwrap();
        let line = format!("{}\n", "x".repeat(39)); // 40 bytes: a file rotates after 3 lines
        for _ in 0..20 {
            sink.write_line(line.as_bytes()).unwrap();
        }
        // 20 lines: 6 full files of 3 and 2 lines in the current one; 3 rotated files kept.
        assert_eq!(lines(&path).len(), 2);
        for n in 1..=3 {
            let l = lines(&rotated(&path, n));
            assert_eq!(l.len(), 3, "{n}");
            assert!(l.iter().all(|l| l.len() == 39));
        }
        assert!(!rotated(&path, 4).exists());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_full_disk_is_an_error() {
        let full = FileSink::open(Path::new("/dev/full"), None).unwrap();
        let err = full.write_line(b"{}\n").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(28), "{err}");
    }
}
