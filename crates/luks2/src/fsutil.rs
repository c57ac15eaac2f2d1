//! Creating the files the tools write, without ever following a symlink.
//!
//! The rule: every file nbdcrypt writes (state and temporary files, header backups, man pages,
//! pid files, the key service's keys, certificates and host identities) is created with
//! `O_CREAT | O_EXCL | O_NOFOLLOW` (mode given at creation), so a symlink or any other file
//! planted at the name by another user is refused, never followed or truncated. A file that
//! replaces another is written under a fresh temporary name created the same way, synced, and
//! then `rename()`d over the target: rename replaces a symlink at the target, it never writes
//! through it. Root running a command in a directory another user can write therefore cannot
//! be made to overwrite a file elsewhere.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Creates `path`, which must not exist (not even as a dangling symlink), for writing with
/// permissions `mode` (before the umask). Errors: `AlreadyExists` when anything is at `path`,
/// or the error of `open(2)`.
pub fn create_new(path: &Path, mode: u32) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Creates `path` as [`create_new`] does, writes `bytes` and syncs. Errors: as [`create_new`],
/// or of the write.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut f = create_new(path, mode)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// A fresh temporary name beside `path`: `PATH.PID.RANDOM.tmp`.
fn temp_name(path: &Path) -> PathBuf {
    let mut r = [0u8; 8];
    // Uniqueness, not secrecy: `create_new` refuses a name that is taken anyway.
    let _ = getrandom::fill(&mut r);
    let mut t = path.as_os_str().to_owned();
    t.push(format!(
        ".{}.{:016x}.tmp",
        std::process::id(),
        u64::from_le_bytes(r)
    ));
    PathBuf::from(t)
}

/// Replaces `path` atomically with a file of `bytes` and permissions `mode`: written under a
/// fresh temporary name beside it (created as [`create_new`] does), synced, then renamed over
/// `path`. A symlink at `path` is replaced, not followed. The temporary file is removed on
/// failure. Errors: of the create, write, sync or rename.
pub fn replace(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp = temp_name(path);
    let done = write_new(&tmp, bytes, mode).and_then(|()| std::fs::rename(&tmp, path));
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn create_new_refuses_a_symlink_and_leaves_its_target() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let link = d.path().join("link");
        symlink(&victim, &link).unwrap();
        let e = create_new(&link, 0o600).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert!(write_new(&link, b"evil", 0o600).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        // A dangling symlink is refused too: nothing is created at its target.
        let dangling = d.path().join("dangling");
        symlink(d.path().join("nowhere"), &dangling).unwrap();
        assert!(write_new(&dangling, b"evil", 0o600).is_err());
        assert!(!d.path().join("nowhere").exists());
    }

    #[test]
    fn write_new_sets_the_mode_asked() {
        let d = tempfile::tempdir().unwrap();
        // Owner bits only: no umask takes them away.
        for m in [0o600, 0o400] {
            let p = d.path().join(format!("f{m:o}"));
            write_new(&p, b"x", m).unwrap();
            assert_eq!(mode(&p), m, "{m:o}");
            assert_eq!(std::fs::read(&p).unwrap(), b"x");
        }
    }

    #[test]
    fn replace_replaces_a_symlink_instead_of_writing_through_it() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let target = d.path().join("state");
        symlink(&victim, &target).unwrap();
        replace(&target, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(std::fs::symlink_metadata(&target).unwrap().is_file());
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(mode(&target), 0o600);
        // Replacing a regular file works and leaves no temporary file behind.
        replace(&target, b"newer", 0o600).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"newer");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2);
    }

    #[test]
    fn a_symlink_at_the_temporary_name_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let target = d.path().join("state");
        let tmp = temp_name(&target);
        symlink(&victim, &tmp).unwrap();
        // The name planted is refused by `write_new`; `replace` picks a fresh one.
        assert!(write_new(&tmp, b"evil", 0o600).is_err());
        replace(&target, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
    }
}
