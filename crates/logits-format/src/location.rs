//! Where a dataset lives: a local directory, or a prefix in an object store (`s3://`, `gs://`,
//! `az://`, `file://`), and the commit protocol on a store.
//!
//! A store has no rename and no directory fsync, so the protocol of `writer` is carried over
//! like this (see `schemas/FORMAT.md`, "Building into an object store"):
//! 1. `_build/draft.json` is created only if absent; a second worker compares identities.
//! 2. A worker writes each shard to a local staging directory (checksummed as on disk), uploads
//!    it under a temporary name `_build/tmp/<shard>.<nonce>` (in parts when large), then makes it
//!    final by copying it to `shards/<shard>` only if nothing is there: where the store supports
//!    conditional copies (S3, GCS, Azure, local files) two workers can never both finalize one
//!    shard. A loser checks the size of what is there.
//! 3. The worker then creates `_build/done/<shard>.json` (only if absent): the completion
//!    marker that a re-run of a worker, or another worker, reads to skip the shard.
//! 4. The merge lists the markers, downloads and checks every shard (size, sha256, rows, schema,
//!    dataset id), writes `manifest.json` last and removes `_build/`.
//!
//! Shards are identical wherever they are built (the plan and the writer are deterministic), so
//! a dataset built into a store by many workers is byte-identical to a local one.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow_schema::Schema;
use logits_store::{Bytes, Pending, RangeCache, Remote, RemoteFile};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::reader::{ChunkReader, Length};

use crate::error::{FormatError, Result};
use crate::manifest::{MANIFEST_FILE, Manifest};
use crate::writer::{BUILD_DIR, DONE_DIR, DRAFT_FILE, ShardRecord, assemble, hex, identity};

/// The store prefix a command-line path names, or `None` for a local path.
pub fn remote_for(root: &Path) -> Result<Option<Remote>> {
    if logits_store::path_is_url(root) {
        let s = root.to_string_lossy();
        Ok(Some(Remote::open(&s)?))
    } else {
        Ok(None)
    }
}

fn at(remote: &Remote, rel: &str) -> PathBuf {
    PathBuf::from(remote.url_of(rel))
}

fn draft_rel() -> String {
    format!("{BUILD_DIR}/{DRAFT_FILE}")
}

fn marker_rel(index: u32) -> String {
    format!("{BUILD_DIR}/{DONE_DIR}/part-{index:05}.json")
}

/// A shard opened for reading: a local file, a remote object read by ranges, or bytes already
/// in memory. The Parquet reader reads all three the same way.
#[derive(Debug, Clone)]
pub enum ShardInput {
    /// A file on this machine.
    Local(Arc<File>),
    /// An object in a store, read in place by byte ranges.
    Remote(Arc<RemoteFile>),
    /// A whole shard downloaded.
    Memory(Bytes),
}

impl ShardInput {
    /// Opens a local shard file.
    pub fn local(path: &Path) -> Result<ShardInput> {
        let f = File::open(path).map_err(|e| FormatError::io(path, e))?;
        Ok(ShardInput::Local(Arc::new(f)))
    }

    /// True when reads go over the network, so they are worth announcing with [`Self::fetch`].
    pub fn is_remote(&self) -> bool {
        matches!(self, ShardInput::Remote(_))
    }

    /// Starts fetching the byte ranges the reader will need next (remote inputs only).
    pub fn fetch(&self, ranges: Vec<Range<u64>>) -> Result<Option<Pending>> {
        match self {
            ShardInput::Remote(f) => Ok(Some(f.fetch(ranges)?)),
            _ => Ok(None),
        }
    }

    /// Serves reads from what [`Self::fetch`] fetched.
    pub fn hold(&self, pending: Option<Pending>) -> Result<()> {
        if let (ShardInput::Remote(f), Some(p)) = (self, pending) {
            f.hold(p.wait()?);
        }
        Ok(())
    }
}

impl Length for ShardInput {
    fn len(&self) -> u64 {
        match self {
            ShardInput::Local(f) => Length::len(&**f),
            ShardInput::Remote(f) => f.size(),
            ShardInput::Memory(b) => b.len() as u64,
        }
    }
}

impl ChunkReader for ShardInput {
    type T = Box<dyn Read + Send>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(match self {
            ShardInput::Local(f) => Box::new(ChunkReader::get_read(&**f, start)?),
            ShardInput::Remote(f) => Box::new(f.get_read(start)?),
            ShardInput::Memory(b) => Box::new(b.get_read(start)?),
        })
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        match self {
            ShardInput::Local(f) => ChunkReader::get_bytes(&**f, start, length),
            ShardInput::Remote(f) => f.get_bytes(start, length),
            ShardInput::Memory(b) => b.get_bytes(start, length),
        }
    }
}

/// A dataset in a store, as the reader holds it.
#[derive(Debug, Clone)]
pub struct RemoteDataset {
    /// The dataset's prefix.
    pub remote: Remote,
    /// The local range cache (`LOGITS_CACHE_DIR`), if any.
    pub cache: Option<Arc<RangeCache>>,
}

impl RemoteDataset {
    /// Connects to the dataset at `remote` with the cache the environment asks for.
    pub fn new(remote: Remote) -> Result<RemoteDataset> {
        Ok(RemoteDataset {
            remote,
            cache: RangeCache::from_env()?,
        })
    }

    /// Reads `manifest.json`, or says how far an unfinished build got.
    pub fn manifest(&self) -> Result<Manifest> {
        let r = &self.remote;
        match r.get(MANIFEST_FILE)? {
            Some(b) => {
                let text = String::from_utf8_lossy(&b);
                Manifest::from_json(&at(r, MANIFEST_FILE), &text)
            }
            None if r.size(&draft_rel())?.is_some() => {
                let done = read_records(r).map(|m| m.len()).unwrap_or(0);
                Err(FormatError::OutputConflict {
                    path: PathBuf::from(r.url()),
                    message: format!(
                        "the build of this dataset is not complete ({done} shards done, no manifest.json); run the missing workers and `logits-build merge`, or read the completed part explicitly (--partial)"
                    ),
                })
            }
            None => Err(FormatError::Store(logits_store::StoreError::NotFound {
                url: r.url_of(MANIFEST_FILE),
            })),
        }
    }

    /// Opens a shard for range reads.
    pub fn open_shard(&self, rel: &str) -> Result<ShardInput> {
        let f = self.remote.open_file(rel, self.cache.clone())?;
        Ok(ShardInput::Remote(Arc::new(f)))
    }

    /// Downloads a whole shard (for checksums).
    pub fn download(&self, rel: &str) -> Result<Bytes> {
        self.remote.get(rel)?.ok_or_else(|| {
            FormatError::Store(logits_store::StoreError::NotFound {
                url: self.remote.url_of(rel),
            })
        })
    }
}

/// Reads the draft manifest of a build in a store.
pub fn read_draft(r: &Remote) -> Result<Manifest> {
    let rel = draft_rel();
    match r.get(&rel)? {
        Some(b) => Manifest::from_json(&at(r, &rel), &String::from_utf8_lossy(&b)),
        None => Err(FormatError::OutputConflict {
            path: PathBuf::from(r.url()),
            message: "there is no build here (no _build/draft.json)".into(),
        }),
    }
}

/// Reads the completion markers of a build in a store.
pub fn read_records(r: &Remote) -> Result<BTreeMap<u32, ShardRecord>> {
    let mut out = BTreeMap::new();
    for (name, _) in r.list(&format!("{BUILD_DIR}/{DONE_DIR}"))? {
        if !name.ends_with(".json") {
            continue;
        }
        let Some(b) = r.get(&name)? else { continue };
        let rec = crate::writer::parse_record(&at(r, &name), &b)?;
        out.insert(rec.index, rec);
    }
    Ok(out)
}

/// What the writer keeps when its output is a store.
#[derive(Debug)]
pub struct RemoteSink {
    /// The dataset's prefix.
    pub remote: Remote,
    /// This process's local staging directory (shards are written here, then uploaded).
    pub staging: PathBuf,
}

/// The local staging directory of a process building into `url`: `LOGITS_STAGING_DIR` or the
/// system temporary directory, one folder per process so workers on one machine never share.
pub fn staging_dir(url: &str) -> PathBuf {
    let base = std::env::var_os("LOGITS_STAGING_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("logits-staging"));
    let id = hex(&<sha2::Sha256 as sha2::Digest>::digest(url.as_bytes()));
    remove_dead_staging(&base, &id[..12]);
    base.join(format!("{}-{}", &id[..12], std::process::id()))
}

/// Removes staging folders for the same output left by processes that are gone (a killed
/// worker cannot clean up after itself). Where process ids cannot be checked (no `/proc`),
/// nothing is removed.
fn remove_dead_staging(base: &Path, id: &str) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(id))
            .and_then(|n| n.strip_prefix('-'))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The store-side checks of [`crate::DatasetWriter::create`]: refuses a store prefix holding
/// another dataset, creates or joins the draft, and returns the shards already complete.
pub fn prepare(
    r: &Remote,
    draft: &Manifest,
    mode: crate::CreateMode,
) -> Result<(Manifest, BTreeMap<u32, ShardRecord>)> {
    use crate::CreateMode;
    let conflict = |message: &str| FormatError::OutputConflict {
        path: PathBuf::from(r.url()),
        message: message.to_string(),
    };
    if mode == CreateMode::Overwrite {
        // What a dataset consists of, as on disk: other objects under the prefix are not ours.
        r.delete(MANIFEST_FILE)?;
        r.delete_all(BUILD_DIR)?;
        r.delete_all(crate::writer::SHARD_DIR)?;
    }
    if let Some(b) = r.get(MANIFEST_FILE)? {
        let same = Manifest::from_json(&at(r, MANIFEST_FILE), &String::from_utf8_lossy(&b))
            .map(|m| m.dataset_id == draft.dataset_id)
            .unwrap_or(false);
        return Err(conflict(if same {
            "this dataset is already complete here; pass --overwrite to rebuild it"
        } else {
            "the location holds a different dataset; choose another output or pass --overwrite"
        }));
    }
    let existing = match r.get(&draft_rel())? {
        Some(b) => Some(b),
        None if mode == CreateMode::Resume => {
            return Err(conflict("there is no interrupted build here to resume"));
        }
        None => {
            if mode == CreateMode::New && !r.list("")?.is_empty() {
                return Err(conflict(
                    "the location is not empty; choose an empty prefix, or pass --overwrite",
                ));
            }
            if r.put_new(&draft_rel(), Bytes::from(draft.to_json()))? {
                None
            } else {
                // Another worker created it a moment ago: join it if it is the same dataset.
                r.get(&draft_rel())?
            }
        }
    };
    let mut draft = draft.clone();
    if let Some(b) = existing {
        let there = Manifest::from_json(&at(r, &draft_rel()), &String::from_utf8_lossy(&b))?;
        if identity(&there) != identity(&draft) {
            return Err(conflict(&format!(
                "an unfinished build of a different dataset is here (its {} differ from this command's); resume it with the same teacher, corpus and options, or pass --overwrite to replace it",
                crate::writer::identity_differences(&there, &draft).join(", ")
            )));
        }
        if mode == CreateMode::New {
            return Err(conflict(
                "an interrupted build is here; pass --resume to continue it",
            ));
        }
        draft.created = there.created;
    }
    let done = read_records(r)?;
    Ok((draft, done))
}

/// Uploads a finished shard from staging and marks it complete (steps 2 and 3 above). Returns
/// false when another worker had already finalized the shard (its copy is kept). `faults`
/// arms the crash points `after-upload:SHARD` and `after-finalize:SHARD` for recovery tests.
pub fn publish(
    sink: &RemoteSink,
    rec: &ShardRecord,
    faults: &crate::fault::Faults,
) -> Result<bool> {
    let r = &sink.remote;
    let local = sink.staging.join(&rec.entry.path);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let tmp = format!(
        "{BUILD_DIR}/tmp/part-{:05}.parquet.{}-{nanos}",
        rec.index,
        std::process::id()
    );
    r.upload(&tmp, &local)?;
    faults.abort_at("after-upload", rec.index as u64);
    let won = r.copy_new(&tmp, &rec.entry.path);
    r.delete(&tmp)?;
    let won = won?;
    if !won {
        let there = r.size(&rec.entry.path)?;
        if there != Some(rec.entry.bytes) {
            return Err(FormatError::ShardMismatch {
                path: at(r, &rec.entry.path),
                message: format!(
                    "another shard file ({} bytes) is already there, this build made {} bytes; remove it or rebuild with --overwrite",
                    there.unwrap_or(0),
                    rec.entry.bytes
                ),
            });
        }
    }
    faults.abort_at("after-finalize", rec.index as u64);
    let marker = serde_json::to_string_pretty(rec).unwrap_or_default();
    r.put_new(&marker_rel(rec.index), Bytes::from(marker))?;
    std::fs::remove_file(&local).map_err(|e| FormatError::io(&local, e))?;
    Ok(won)
}

/// Checks one downloaded shard against its completion record: size, sha256, dataset id,
/// schema and rows.
fn check_downloaded(
    r: &Remote,
    draft: &Manifest,
    expected: &Schema,
    rec: &ShardRecord,
    bytes: Bytes,
) -> Result<()> {
    let path = at(r, &rec.entry.path);
    crate::reader::catch_panics(|| check_downloaded_bytes(r, draft, expected, rec, bytes))
        .unwrap_or_else(|p| {
            Err(FormatError::ShardMismatch {
                path,
                message: format!("the object is damaged ({p}); rerun its worker"),
            })
        })
}

fn check_downloaded_bytes(
    r: &Remote,
    draft: &Manifest,
    expected: &Schema,
    rec: &ShardRecord,
    bytes: Bytes,
) -> Result<()> {
    let path = at(r, &rec.entry.path);
    let sha = hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    if bytes.len() as u64 != rec.entry.bytes || sha != rec.entry.sha256 {
        return Err(FormatError::ShardMismatch {
            path,
            message: format!(
                "object is {} bytes with sha256 {sha}, its completion marker says {} bytes with {}; rerun its worker",
                bytes.len(),
                rec.entry.bytes,
                rec.entry.sha256
            ),
        });
    }
    let b = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| FormatError::parquet(&path, e))?;
    crate::reader::check_shard_metadata(&path, b.metadata(), &draft.dataset_id)?;
    let found = Schema::new(b.schema().fields().clone());
    if found != *expected {
        return Err(FormatError::ShardMismatch {
            path,
            message: format!("schema differs from the draft's: found {found}"),
        });
    }
    let rows = b.metadata().file_metadata().num_rows() as u64;
    if rows != rec.entry.rows {
        return Err(FormatError::ShardMismatch {
            path,
            message: format!("{rows} rows, the completion marker says {}", rec.entry.rows),
        });
    }
    Ok(())
}

/// The merge step on a store: lists the markers, checks that the plan is complete, downloads
/// and checks every shard (a few at a time), writes `manifest.json` last, removes `_build/`.
pub fn commit(r: &Remote, plan_shards: Option<u32>) -> Result<Manifest> {
    let draft = read_draft(r)?;
    let records = read_records(r)?;
    crate::writer::check_plan_complete(
        Path::new(r.url()),
        &records,
        plan_shards,
        "run the missing workers",
    )?;
    let expected = Schema::new(crate::schema::file_schema(&draft).fields().clone());
    let recs: Vec<&ShardRecord> = records.values().collect();
    let next = AtomicUsize::new(0);
    let first_error = std::sync::Mutex::new(None::<(usize, FormatError)>);
    std::thread::scope(|s| {
        for _ in 0..8.min(recs.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(rec) = recs.get(i) else { return };
                    let res = r
                        .get(&rec.entry.path)
                        .map_err(FormatError::from)
                        .and_then(|b| {
                            b.ok_or_else(|| FormatError::ShardMismatch {
                                path: at(r, &rec.entry.path),
                                message: "its completion marker exists but the shard does not; rerun its worker".into(),
                            })
                        })
                        .and_then(|b| check_downloaded(r, &draft, &expected, rec, b));
                    if let Err(e) = res {
                        let mut g = first_error.lock().unwrap_or_else(|p| p.into_inner());
                        if g.as_ref().is_none_or(|(j, _)| i < *j) {
                            *g = Some((i, e));
                        }
                        return;
                    }
                }
            });
        }
    });
    if let Some((_, e)) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let manifest = assemble(draft, &records);
    let attached = format!("{BUILD_DIR}/{}/", crate::writer::ATTACH_DIR);
    for (key, _) in r.list(&attached)? {
        let name = key.rsplit('/').next().unwrap_or(&key).to_string();
        if let Some(b) = r.get(&format!("{attached}{name}"))? {
            r.put(&name, b)?;
        }
    }
    r.put(
        crate::card::CARD_FILE,
        Bytes::from(crate::card::dataset_card(&manifest)),
    )?;
    r.put(MANIFEST_FILE, Bytes::from(manifest.to_json()))?;
    r.delete_all(BUILD_DIR)?;
    Ok(manifest)
}
