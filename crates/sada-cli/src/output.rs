//! Writing outputs without leaving half-written or stray files behind.
//!
//! Every output is first written to a temporary file of its own beside the target (a random
//! name created with O_EXCL, so nothing planted at a predictable name is followed), flushed to
//! disk, then renamed over the target in one step: a reader sees the old file or the complete
//! new one. The temporary file is removed on any error, and on SIGINT / SIGTERM, which end the
//! run with exit code 130 / 143 and no temporary file left; SIGPIPE (stdout piped into a reader
//! that has quit, as in `sada bench-unet | head -1`) ends it the same way with 141, as other
//! command-line tools end, instead of Rust's panic on the failed print. Output paths are checked
//! before any work starts.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicPtr, Ordering};

use anyhow::{bail, Context, Result};

/// Temporary files being written, for the signal handler (lock-free: the handler may only
/// use async-signal-safe calls, so it reads these slots and unlinks what they name).
static PENDING: [AtomicPtr<libc::c_char>; 16] = [const { AtomicPtr::new(std::ptr::null_mut()) }; 16];

extern "C" fn on_signal(sig: libc::c_int) {
    for slot in &PENDING {
        let p = slot.load(Ordering::SeqCst);
        if !p.is_null() {
            // SAFETY: a NUL-terminated path leaked by `Pending::new` and not yet freed (freeing
            // happens only after the slot is cleared); unlink and _exit are async-signal-safe.
            unsafe { libc::unlink(p) };
        }
    }
    // SAFETY: _exit ends the process without running anything else.
    unsafe { libc::_exit(128 + sig) };
}

/// Remove pending temporary files and exit 130 / 143 / 141 on SIGINT / SIGTERM / SIGPIPE.
pub fn install_signal_cleanup() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGPIPE] {
        // SAFETY: installs a handler that only calls async-signal-safe functions.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

/// A temporary file registered for removal on a signal while it exists.
struct Pending {
    slot: Option<usize>,
}

impl Pending {
    fn new(path: &Path) -> Self {
        let Ok(c) = CString::new(path.as_os_str().as_bytes()) else { return Self { slot: None } };
        let raw = c.into_raw();
        for (i, slot) in PENDING.iter().enumerate() {
            if slot.compare_exchange(std::ptr::null_mut(), raw, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                return Self { slot: Some(i) };
            }
        }
        // more than 16 outputs in flight at once: none is, but do not leak
        // SAFETY: `raw` came from `into_raw` above and was not stored anywhere.
        drop(unsafe { CString::from_raw(raw) });
        Self { slot: None }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            let raw = PENDING[i].swap(std::ptr::null_mut(), Ordering::SeqCst);
            if !raw.is_null() {
                // SAFETY: stored by `Pending::new` from `into_raw`; cleared from the slot above.
                drop(unsafe { CString::from_raw(raw) });
            }
        }
    }
}

/// The folder an output goes into (`.` for a bare file name).
pub fn folder(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Before any work: `path` (given with `flag`) can be written — it names a file, not a
/// folder, and its folder exists and takes new files.
pub fn check_writable(flag: &str, path: &Path) -> Result<()> {
    if path.file_name().is_none() || path.as_os_str().as_bytes().ends_with(b"/") {
        bail!("{flag} {}: expected a file path, not a folder", path.display());
    }
    if path.is_dir() {
        bail!("{flag} {}: is a folder; give a file path", path.display());
    }
    let dir = folder(path);
    if !dir.is_dir() {
        bail!("{flag} {}: the folder {} does not exist", path.display(), dir.display());
    }
    tempfile::Builder::new()
        .prefix(".sada-check-")
        .tempfile_in(dir)
        .map(drop)
        .with_context(|| format!("{flag} {}: cannot write into {}", path.display(), dir.display()))
}

/// Whether `a` and `b` name the same file (their folders resolved; the files need not exist).
pub fn same_file(a: &Path, b: &Path) -> bool {
    let key = |p: &Path| -> PathBuf {
        let dir = folder(p);
        dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()).join(p.file_name().unwrap_or_default())
    };
    key(a) == key(b)
}

/// Before any work: no two outputs name the same file.
pub fn check_distinct(outputs: &[(&str, &Path)]) -> Result<()> {
    for (i, (fa, a)) in outputs.iter().enumerate() {
        for (fb, b) in &outputs[i + 1..] {
            if same_file(a, b) {
                bail!("{fa} and {fb} both name {}; give them different files", a.display());
            }
        }
    }
    Ok(())
}

/// An output written in full to a temporary file beside its target, not yet moved into place.
pub struct Staged {
    tmp: tempfile::NamedTempFile,
    target: PathBuf,
    _pending: Pending,
}

/// Let `write` produce a temporary file beside `path` and flush it to disk; on failure the
/// temporary file is removed and `path` is untouched.
pub fn stage(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<Staged> {
    let dir = folder(path);
    anyhow::ensure!(dir.is_dir(), "output folder {} does not exist", dir.display());
    let name = path.file_name().with_context(|| format!("{} is not a file path", path.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".partial")
        // the usual permissions of a new file (the umask applies), not tempfile's private 0600
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .with_context(|| format!("writing {}: cannot create a file in {}", path.display(), dir.display()))?;
    let pending = Pending::new(tmp.path());
    let written = write(tmp.path())
        .with_context(|| format!("writing {}", path.display()))
        .and_then(|()| std::fs::File::open(tmp.path()).and_then(|f| f.sync_all()).with_context(|| format!("writing {}: flushing to disk", path.display())));
    // on failure the file goes first, then its registration (a signal in between finds it):
    // fields drop in order, `tmp` before `_pending`
    written.map(|()| Staged { tmp, target: path.to_path_buf(), _pending: pending })
}

impl Staged {
    /// Rename the file into place.
    pub fn commit(self) -> Result<()> {
        let Staged { tmp, target, _pending } = self;
        tmp.persist(&target).map(drop).map_err(|e| anyhow::Error::new(e.error).context(format!("moving {} into place", target.display())))
    }
}

/// Move every staged output into place: all of them were written in full before any is
/// renamed, so a failure while writing any leaves none of the new files behind.
pub fn commit_all(outputs: Vec<Staged>) -> Result<()> {
    outputs.into_iter().try_for_each(Staged::commit)
}

/// `bytes`, staged for `path`.
pub fn stage_bytes(path: &Path, bytes: &[u8]) -> Result<Staged> {
    stage(path, |tmp| {
        let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(tmp)?;
        f.write_all(bytes)?;
        Ok(())
    })
}

/// Write `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    stage_bytes(path, bytes)?.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_committed_together_appear_all_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.png"), dir.path().join("b.json"));
        let first = stage_bytes(&a, b"image").unwrap();
        let second = stage(&b, |_| anyhow::bail!("disk full"));
        assert!(second.is_err());
        drop(first);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
        commit_all(vec![stage_bytes(&a, b"image").unwrap(), stage_bytes(&b, b"{}").unwrap()]).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"image");
        assert_eq!(std::fs::read(&b).unwrap(), b"{}");
    }
}
