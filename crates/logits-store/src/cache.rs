//! A local cache of byte ranges read from remote objects, bounded in size.
//!
//! Training reads the same projected column chunks every epoch; with a cache the second epoch
//! reads them from local disk. Entries are keyed by the object's URL, size and entity tag and
//! the range, so a rewritten object is never served stale. When the cache grows past its limit
//! the least recently used entries (by modification time, refreshed on every hit) are removed.
//! A cache that cannot be written (disk full, permissions) only costs speed: reads go on.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::{Result, StoreError};

/// Default cache limit when `LOGITS_CACHE_DIR` is set without `LOGITS_CACHE_SIZE`.
pub const DEFAULT_CACHE_BYTES: u64 = 10 << 30;

/// Counters of a cache's use in this process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Ranges served from local disk.
    pub hits: u64,
    /// Ranges fetched from the store (and then stored).
    pub misses: u64,
    /// Bytes the cache holds now.
    pub bytes: u64,
}

/// A size-limited directory of cached byte ranges.
#[derive(Debug)]
pub struct RangeCache {
    dir: PathBuf,
    max_bytes: u64,
    used: Mutex<u64>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Lowercase hex sha256 of the concatenated parts (each prefixed by its length, so parts
/// cannot run into each other).
pub(crate) fn digest(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a size such as `500M`, `20G` or `1048576`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = s[i..].to_ascii_lowercase();
            let m: u64 = match unit.trim_end_matches(['b', 'i']) {
                "" => 1,
                "k" => 1 << 10,
                "m" => 1 << 20,
                "g" => 1 << 30,
                "t" => 1 << 40,
                _ => return None,
            };
            (&s[..i], m)
        }
        None => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

impl RangeCache {
    /// Opens (creating it) a cache directory holding at most `max_bytes`.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Arc<RangeCache>> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let used = entries(dir).iter().map(|e| e.1).sum();
        Ok(Arc::new(RangeCache {
            dir: dir.to_path_buf(),
            max_bytes,
            used: Mutex::new(used),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }))
    }

    /// The cache the environment asks for: `LOGITS_CACHE_DIR` (none when unset) limited to
    /// `LOGITS_CACHE_SIZE` (`20G`, `500M`, bytes; default 10 GiB).
    pub fn from_env() -> Result<Option<Arc<RangeCache>>> {
        let Some(dir) = std::env::var_os("LOGITS_CACHE_DIR").filter(|d| !d.is_empty()) else {
            return Ok(None);
        };
        let max = match std::env::var("LOGITS_CACHE_SIZE") {
            Ok(s) => parse_size(&s).ok_or_else(|| StoreError::Location {
                url: format!("LOGITS_CACHE_SIZE={s}"),
                message: "not a size (examples: 500M, 20G, 1048576)".into(),
            })?,
            Err(_) => DEFAULT_CACHE_BYTES,
        };
        RangeCache::open(Path::new(&dir), max).map(Some)
    }

    /// Use counters so far.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            bytes: *self.used.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(&key[..2]).join(key)
    }

    pub(crate) fn get(&self, key: &str) -> Option<Bytes> {
        let p = self.path(key);
        match std::fs::read(&p) {
            Ok(b) => {
                if let Ok(f) = std::fs::File::options().append(true).open(&p) {
                    let _ = f.set_modified(SystemTime::now());
                }
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(Bytes::from(b))
            }
            Err(_) => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    pub(crate) fn put(&self, key: &str, bytes: &[u8]) {
        if bytes.len() as u64 > self.max_bytes {
            return;
        }
        let p = self.path(key);
        let tmp = p.with_extension(format!("{}.tmp", std::process::id()));
        let ok = p
            .parent()
            .is_some_and(|d| std::fs::create_dir_all(d).is_ok())
            && std::fs::write(&tmp, bytes).is_ok()
            && std::fs::rename(&tmp, &p).is_ok();
        if !ok {
            let _ = std::fs::remove_file(&tmp);
            return;
        }
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        *used += bytes.len() as u64;
        if *used > self.max_bytes {
            *used = self.evict();
        }
    }

    /// Removes least recently used entries until at most 90% of the limit is used; returns the
    /// bytes left.
    fn evict(&self) -> u64 {
        let mut all = entries(&self.dir);
        let mut used: u64 = all.iter().map(|e| e.1).sum();
        all.sort_by_key(|e| e.2);
        let goal = self.max_bytes / 10 * 9;
        for (path, len, _) in all {
            if used <= goal {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                used -= len;
            }
        }
        used
    }
}

/// Every cached entry: path, size, modification time.
fn entries(dir: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
    let mut out = Vec::new();
    let Ok(subdirs) = std::fs::read_dir(dir) else {
        return out;
    };
    for sub in subdirs.flatten() {
        let Ok(files) = std::fs::read_dir(sub.path()) else {
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name();
            if name.to_string_lossy().ends_with(".tmp") {
                continue;
            }
            if let Ok(m) = f.metadata() {
                let t = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                out.push((f.path(), m.len(), t));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("1048576"), Some(1 << 20));
        assert_eq!(parse_size("500M"), Some(500 << 20));
        assert_eq!(parse_size("20GiB"), Some(20 << 30));
        assert_eq!(parse_size("2 g"), Some(2 << 30));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("5X"), None);
    }

    #[test]
    fn hits_misses_and_eviction_keep_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let c = RangeCache::open(dir.path(), 1000).unwrap();
        let k = |i: u32| digest(&[&i.to_le_bytes()]);
        assert!(c.get(&k(0)).is_none());
        c.put(&k(0), &[7u8; 400]);
        assert_eq!(c.get(&k(0)).unwrap().as_ref(), &[7u8; 400][..]);
        std::thread::sleep(std::time::Duration::from_millis(20));
        c.put(&k(1), &[1u8; 400]);
        std::thread::sleep(std::time::Duration::from_millis(20));
        // Touch entry 0 so entry 1 is the least recently used.
        assert!(c.get(&k(0)).is_some());
        std::thread::sleep(std::time::Duration::from_millis(20));
        c.put(&k(2), &[2u8; 400]);
        let s = c.stats();
        assert!(s.bytes <= 900, "{s:?}");
        assert!(c.get(&k(1)).is_none(), "least recently used entry evicted");
        assert!(c.get(&k(2)).is_some());
        assert_eq!(c.stats().hits, 3);
        // Too big for the cache at all: not stored, no error.
        c.put(&k(3), &[0u8; 2000]);
        assert!(c.get(&k(3)).is_none());
        // A reopened cache counts what is on disk.
        let again = RangeCache::open(dir.path(), 1000).unwrap();
        assert_eq!(again.stats().bytes, c.stats().bytes);
    }
}
