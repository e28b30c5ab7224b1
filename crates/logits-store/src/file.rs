//! One remote object read in place by byte ranges, for the Parquet reader.
//!
//! The synchronous Parquet reader asks for many small pieces (the footer, then page headers and
//! pages one by one); sending each as a request would make training wait on the network. So the
//! reader of a shard first says which byte ranges it will need (the projected column chunks of
//! the next row groups), they are fetched together, concurrently and ahead of use
//! ([`RemoteFile::fetch`] starts it, [`Pending::wait`] collects it, [`RemoteFile::hold`] makes
//! it what the Parquet reader is served from). The last 64 KiB are fetched once on first need,
//! so the footer costs one request. Anything else asked for is fetched on demand.

use std::ops::Range;
use std::sync::{Arc, RwLock};

use bytes::{Buf, Bytes};
use object_store::path::Path as ObjectPath;
use parquet::errors::ParquetError;
use parquet::file::reader::{ChunkReader, Length};

use crate::cache::{RangeCache, digest};
use crate::remote::{Remote, runtime};
use crate::{Result, StoreError};

/// Bytes at the end of an object fetched at once for the Parquet footer.
const TAIL: u64 = 64 << 10;
/// Bytes fetched for a read whose length is unknown (a page header).
const READ_AHEAD: u64 = 64 << 10;

/// A remote object opened for range reads.
pub struct RemoteFile {
    remote: Remote,
    key: ObjectPath,
    url: String,
    size: u64,
    etag: Option<String>,
    cache: Option<Arc<RangeCache>>,
    held: RwLock<Vec<(u64, Bytes)>>,
    tail: RwLock<Option<Bytes>>,
}

impl std::fmt::Debug for RemoteFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteFile")
            .field("url", &self.url)
            .field("size", &self.size)
            .finish()
    }
}

/// Ranges being fetched in the background.
pub struct Pending {
    url: String,
    task: tokio::task::JoinHandle<std::result::Result<Vec<(u64, Bytes)>, object_store::Error>>,
}

impl Pending {
    /// Waits for the ranges: `(start, bytes)` in the order asked.
    pub fn wait(self) -> Result<Vec<(u64, Bytes)>> {
        let url = self.url;
        match runtime()?.block_on(self.task) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(error)) => Err(StoreError::Store { url, error }),
            Err(e) => Err(StoreError::Location {
                url,
                message: format!("range read task failed: {e}"),
            }),
        }
    }
}

impl RemoteFile {
    pub(crate) fn new(
        remote: Remote,
        key: ObjectPath,
        url: String,
        size: u64,
        etag: Option<String>,
        cache: Option<Arc<RangeCache>>,
    ) -> RemoteFile {
        RemoteFile {
            remote,
            key,
            url,
            size,
            etag,
            cache,
            held: RwLock::new(Vec::new()),
            tail: RwLock::new(None),
        }
    }

    /// The object's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The object's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn cache_key(&self, r: &Range<u64>) -> String {
        digest(&[
            self.url.as_bytes(),
            &self.size.to_le_bytes(),
            self.etag.as_deref().unwrap_or("").as_bytes(),
            &r.start.to_le_bytes(),
            &r.end.to_le_bytes(),
        ])
    }

    /// Starts fetching `ranges` in the background (from the cache where it has them).
    pub fn fetch(&self, ranges: Vec<Range<u64>>) -> Result<Pending> {
        let store = self.remote.store().clone();
        let key = self.key.clone();
        let cache = self.cache.clone();
        let keys: Vec<String> = match &cache {
            Some(_) => ranges.iter().map(|r| self.cache_key(r)).collect(),
            None => Vec::new(),
        };
        let task = runtime()?.spawn(async move {
            let mut out: Vec<Option<Bytes>> = vec![None; ranges.len()];
            if let Some(c) = &cache {
                for (slot, k) in out.iter_mut().zip(&keys) {
                    *slot = c.get(k);
                }
            }
            let missing: Vec<usize> = (0..ranges.len()).filter(|&i| out[i].is_none()).collect();
            if !missing.is_empty() {
                let want: Vec<Range<u64>> = missing.iter().map(|&i| ranges[i].clone()).collect();
                let got = store.get_ranges(&key, &want).await?;
                for (&i, b) in missing.iter().zip(got) {
                    if let Some(c) = &cache {
                        c.put(&keys[i], &b);
                    }
                    out[i] = Some(b);
                }
            }
            Ok(ranges
                .iter()
                .zip(out)
                .map(|(r, b)| (r.start, b.unwrap_or_default()))
                .collect())
        });
        Ok(Pending {
            url: self.url.clone(),
            task,
        })
    }

    /// Serves reads from `ranges` from now on (replacing what was held before; the footer is
    /// kept), so memory holds only what the reader is working on.
    pub fn hold(&self, ranges: Vec<(u64, Bytes)>) {
        let mut held = self.held.write().unwrap_or_else(|e| e.into_inner());
        *held = ranges;
        held.sort_by_key(|r| r.0);
    }

    /// Fetches one range now.
    fn fetch_one(&self, r: Range<u64>) -> Result<Bytes> {
        let got = self.fetch(std::iter::once(r).collect())?.wait()?;
        Ok(got.into_iter().next().map(|x| x.1).unwrap_or_default())
    }

    /// Fetches `ranges` and holds them (the blocking form of fetch, wait, hold).
    pub fn prefetch(&self, ranges: Vec<Range<u64>>) -> Result<()> {
        let got = self.fetch(ranges)?.wait()?;
        self.hold(got);
        Ok(())
    }

    fn slice_of(buf: &Bytes, off: u64, start: u64, len: Option<usize>) -> Option<Bytes> {
        let end_buf = off + buf.len() as u64;
        if start < off || start >= end_buf {
            return None;
        }
        let a = (start - off) as usize;
        match len {
            Some(n) if start + n as u64 <= end_buf => Some(buf.slice(a..a + n)),
            Some(_) => None,
            None => Some(buf.slice(a..)),
        }
    }

    fn bytes_at(&self, start: u64, len: Option<usize>) -> Result<Bytes> {
        if len == Some(0) {
            return Ok(Bytes::new());
        }
        {
            let held = self.held.read().unwrap_or_else(|e| e.into_inner());
            // Ranges are sorted by start: the candidate is the last one starting at or before.
            let i = held.partition_point(|r| r.0 <= start);
            if i > 0
                && let Some(b) = Self::slice_of(&held[i - 1].1, held[i - 1].0, start, len)
            {
                return Ok(b);
            }
        }
        let tail_start = self.size.saturating_sub(TAIL);
        if start >= tail_start {
            let cached = self.tail.read().unwrap_or_else(|e| e.into_inner()).clone();
            let tail = match cached {
                Some(t) => t,
                None => {
                    let t = self.fetch_one(tail_start..self.size)?;
                    *self.tail.write().unwrap_or_else(|e| e.into_inner()) = Some(t.clone());
                    t
                }
            };
            if let Some(b) = Self::slice_of(&tail, tail_start, start, len) {
                return Ok(b);
            }
        }
        let end = match len {
            Some(n) => start + n as u64,
            None => (start + READ_AHEAD).min(self.size),
        };
        if end > self.size || start >= end {
            return Err(StoreError::Location {
                url: self.url.clone(),
                message: format!(
                    "read of bytes {start}..{end} past the end of a {}-byte object",
                    self.size
                ),
            });
        }
        self.fetch_one(start..end)
    }
}

impl Length for RemoteFile {
    fn len(&self) -> u64 {
        self.size
    }
}

impl ChunkReader for RemoteFile {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        self.bytes_at(start, None)
            .map(|b| b.reader())
            .map_err(|e| ParquetError::External(Box::new(e)))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.bytes_at(start, Some(length))
            .map_err(|e| ParquetError::External(Box::new(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_come_from_held_ranges_the_tail_or_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(dir.path().join("obj"), &data).unwrap();
        let r = Remote::open(&format!("file://{}", dir.path().display())).unwrap();
        let cache = RangeCache::open(&dir.path().join("cache"), 1 << 20).unwrap();
        let f = r.open_file("obj", Some(cache.clone())).unwrap();
        assert_eq!(f.size(), data.len() as u64);
        f.prefetch(vec![10..1000, 5000..9000]).unwrap();
        assert_eq!(f.get_bytes(20, 30).unwrap().as_ref(), &data[20..50]);
        assert_eq!(f.get_bytes(5000, 4000).unwrap().as_ref(), &data[5000..9000]);
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut f.get_read(900).unwrap(), &mut rest).unwrap();
        assert_eq!(rest, &data[900..1000]);
        // Footer reads come from one tail fetch; reads elsewhere from the store.
        assert_eq!(f.get_bytes(199_992, 8).unwrap().as_ref(), &data[199_992..]);
        assert_eq!(
            f.get_bytes(100_000, 10).unwrap().as_ref(),
            &data[100_000..100_010]
        );
        assert!(f.get_bytes(199_999, 5).is_err());
        let misses = cache.stats().misses;
        // The same ranges again come from the cache.
        let g = r.open_file("obj", Some(cache.clone())).unwrap();
        g.prefetch(vec![10..1000, 5000..9000]).unwrap();
        assert_eq!(cache.stats().misses, misses);
        assert!(cache.stats().hits >= 2);
        assert_eq!(g.get_bytes(10, 990).unwrap().as_ref(), &data[10..1000]);
    }
}
