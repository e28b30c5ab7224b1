//! One writer per output: an advisory lock on a build's or a training run's output directory.
//!
//! The lock is a file (`.logits.lock`) holding the owner's pid, host and what it is doing,
//! locked with the operating system's file lock (`flock` on Unix). The operating system drops
//! the lock when its holder dies, so a lock left by a killed process is taken over without any
//! guessing; the file's text is only there to tell a refused second writer the truth ("a build
//! by pid N on host H is running here"). Job-array workers share one build, so they take the
//! lock shared; every other writer (a single build, `--resume`, `--overwrite`, a training run)
//! takes it exclusively.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{FormatError, Result};
use crate::host::host_name;

/// Name of the lock file inside an output directory.
pub const LOCK_FILE: &str = ".logits.lock";

/// How an output is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// The only writer (a build, a resume, an overwrite, a training run).
    Exclusive,
    /// One of several cooperating writers (job-array workers of one build).
    Shared,
}

/// A held lock; dropping it releases the lock (and removes the file when no one else holds it).
#[derive(Debug)]
pub struct OutputLock {
    file: File,
    path: PathBuf,
    mode: LockMode,
}

impl OutputLock {
    /// Takes the lock of the existing output directory `dir` for `what` (e.g. "a build",
    /// "a training run"). Refused at once, never waiting, when another process holds it in a
    /// way that conflicts; the error names that process.
    pub fn acquire(dir: &Path, mode: LockMode, what: &str) -> Result<OutputLock> {
        let path = dir.join(LOCK_FILE);
        // A holder may remove the file as it releases it: retry on a file that vanished
        // between our open and our lock, so two processes never lock two different files.
        for _ in 0..20 {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| FormatError::io(&path, e))?;
            let locked = match mode {
                LockMode::Exclusive => file.try_lock(),
                LockMode::Shared => file.try_lock_shared(),
            };
            match locked {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    let mut text = String::new();
                    let _ = file.read_to_string(&mut text);
                    return Err(FormatError::OutputConflict {
                        path: dir.to_path_buf(),
                        message: busy_message(&text, mode),
                    });
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(FormatError::io(&path, e));
                }
            }
            if !same_file(&file, &path) {
                continue;
            }
            if mode == LockMode::Exclusive || file.metadata().map(|m| m.len()).unwrap_or(0) == 0 {
                let owner = format!(
                    "{what} by pid {} on host {}\n",
                    std::process::id(),
                    host_name()
                );
                let _ = file.set_len(0);
                let _ = file.rewind();
                let _ = file.write_all(owner.as_bytes());
                let _ = file.sync_all();
            }
            return Ok(OutputLock { file, path, mode });
        }
        Err(FormatError::OutputConflict {
            path: dir.to_path_buf(),
            message: "could not take the output lock: other processes keep replacing it".into(),
        })
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        // The last holder removes the file while still holding the lock: a process that
        // opened it meanwhile sees (by inode) that it no longer is the lock file and retries.
        // A shared holder is the last when it can turn its lock exclusive.
        let last = self.mode == LockMode::Exclusive || self.file.try_lock().is_ok();
        if last && same_file(&self.file, &self.path) {
            let _ = fs::remove_file(&self.path);
        }
        let _ = self.file.unlock();
    }
}

fn busy_message(owner: &str, mode: LockMode) -> String {
    let owner = owner.trim();
    let who = if owner.is_empty() {
        "another process".to_string()
    } else {
        owner.to_string()
    };
    match mode {
        LockMode::Exclusive => format!(
            "{who} is running here; wait for it to finish or stop it (it can be resumed) before starting another writer on this output"
        ),
        LockMode::Shared => format!(
            "{who} is running here and is not a job-array worker of this build; wait for it to finish"
        ),
    }
}

/// Whether the open `file` is still the file at `path` (same device and inode).
fn same_file(file: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (file, path);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_refuses_a_second_writer_and_names_the_first() {
        let d = tempfile::tempdir().expect("tempdir");
        let a = OutputLock::acquire(d.path(), LockMode::Exclusive, "a build").expect("first");
        let e = OutputLock::acquire(d.path(), LockMode::Exclusive, "a build").expect_err("second");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("a build by pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains(&host_name()), "{msg}");
        let e = OutputLock::acquire(d.path(), LockMode::Shared, "a build").expect_err("shared");
        assert!(e.to_string().contains("not a job-array worker"), "{e}");
        drop(a);
        assert!(!d.path().join(LOCK_FILE).exists());
        OutputLock::acquire(d.path(), LockMode::Exclusive, "a build").expect("after release");
    }

    #[test]
    fn shared_holders_coexist_and_keep_out_an_exclusive_one() {
        let d = tempfile::tempdir().expect("tempdir");
        let a = OutputLock::acquire(d.path(), LockMode::Shared, "a job-array build").expect("a");
        let b = OutputLock::acquire(d.path(), LockMode::Shared, "a job-array build").expect("b");
        assert!(OutputLock::acquire(d.path(), LockMode::Exclusive, "a build").is_err());
        drop(a);
        assert!(d.path().join(LOCK_FILE).exists(), "b still holds it");
        drop(b);
        assert!(
            !d.path().join(LOCK_FILE).exists(),
            "the last holder removes it"
        );
        OutputLock::acquire(d.path(), LockMode::Exclusive, "a build").expect("after release");
    }

    #[test]
    fn a_lock_file_left_by_a_dead_process_is_taken_over() {
        let d = tempfile::tempdir().expect("tempdir");
        fs::write(
            d.path().join(LOCK_FILE),
            "a build by pid 1 on host elsewhere\n",
        )
        .expect("w");
        let l = OutputLock::acquire(d.path(), LockMode::Exclusive, "a build").expect("stale");
        drop(l);
    }
}
