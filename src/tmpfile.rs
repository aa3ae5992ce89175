//! Files written anonymously (`O_TMPFILE`) and given their name only once complete: a crash
//! leaves nothing behind, a reader never sees a partial file, and there is no temp name to
//! create, rename and remove. Filesystems without `O_TMPFILE` (and systems without /proc)
//! get `None`/`false`, and callers fall back to a temp name and a rename.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// An unnamed file in `dir`, or None if the filesystem cannot make one or it could not be
/// named afterwards (`link` goes through /proc; without it the bytes would be unreachable).
pub(crate) fn create(dir: &Path, mode: u32) -> io::Result<Option<File>> {
    static PROC_FD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if !*PROC_FD.get_or_init(|| Path::new("/proc/self/fd").is_dir()) {
        return Ok(None);
    }
    match OpenOptions::new().write(true).mode(mode).custom_flags(libc::O_TMPFILE).open(dir) {
        Ok(f) => Ok(Some(f)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Gives `file` (from `create`) the name `dest`, which must not exist: a conditional
/// create. False if `dest` exists or the link cannot be made this way.
pub(crate) fn link(file: &File, dest: &Path) -> io::Result<bool> {
    let fd_path = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).expect("no NUL");
    let dest = CString::new(dest.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let linked = unsafe { libc::linkat(libc::AT_FDCWD, fd_path.as_ptr(), libc::AT_FDCWD, dest.as_ptr(), libc::AT_SYMLINK_FOLLOW) };
    if linked == 0 {
        return Ok(true);
    }
    match io::Error::last_os_error() {
        e if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOENT | libc::EPERM | libc::EXDEV)) => Ok(false),
        e => Err(e),
    }
}
