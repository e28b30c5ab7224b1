//! Writing a dataset: shards and the commit protocol.
//!
//! A dataset directory is built like this (see `schemas/FORMAT.md`, "Commit protocol"):
//! 1. `_build/draft.json` holds the manifest without shards; it identifies the dataset being
//!    built, so a second builder (a resumed run, another job-array worker) can check it is
//!    building the same thing.
//! 2. Each shard is written to a temporary name beside its final name, fsynced, renamed, and
//!    its directory fsynced; then `_build/done/<shard>.json` records it as complete.
//! 3. `manifest.json` is written last the same way, from the completion records. It is the
//!    commit point: a shard it does not list is not part of the dataset.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use arrow_schema::SchemaRef;
use parquet::arrow::{ArrowSchemaConverter, ArrowWriter};
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec;
use crate::error::{FormatError, Result};
use crate::location::RemoteSink;
use crate::manifest::{MANIFEST_FILE, Manifest, ShardEntry, Totals, Version};
use crate::rows::RowBatch;
use crate::schema;

/// Directory of build records inside a dataset.
pub const BUILD_DIR: &str = "_build";
/// The draft manifest inside [`BUILD_DIR`].
pub const DRAFT_FILE: &str = "draft.json";
/// Directory of shard completion records inside [`BUILD_DIR`].
pub const DONE_DIR: &str = "done";
/// Directory of shard files.
pub const SHARD_DIR: &str = "shards";
/// Directory inside [`BUILD_DIR`] of files that travel with the dataset (a tokenizer): commit
/// places each beside the manifest.
pub const ATTACH_DIR: &str = "attach";
/// Shard-level key/value metadata key holding the format version.
pub const KV_VERSION: &str = "logits.format_version";
/// Shard-level key/value metadata key holding the dataset id.
pub const KV_DATASET: &str = "logits.dataset_id";
/// Shard-level key/value metadata key holding the shard's relative path.
pub const KV_SHARD: &str = "logits.shard";
/// Shard-level key/value metadata key holding the manifest's `targets` (JSON): value
/// encoding, k, temperatures, axis size, granularity — what decoding a shard alone needs.
pub const KV_TARGETS: &str = "logits.targets";
/// Shard-level key/value metadata key holding the manifest's `inputs` (JSON: names, columns,
/// dtypes, per-row shapes).
pub const KV_INPUTS: &str = "logits.inputs";
/// Shard-level key/value metadata key holding the manifest's `features` (JSON).
pub const KV_FEATURES: &str = "logits.features";

/// Options for shard files.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// zstd level (1..=22).
    pub zstd_level: i32,
    /// Rows per Parquet row group: the unit of shuffling and of range reads.
    pub row_group_rows: usize,
    /// Fault points armed by tests (none in normal use).
    pub faults: crate::fault::Faults,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            zstd_level: 3,
            row_group_rows: 1024,
            faults: crate::fault::Faults::none(),
        }
    }
}

/// What to do when the output directory already holds something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateMode {
    /// Refuse a directory holding a dataset or a build.
    New,
    /// Continue a build of the same dataset: completed shards are kept.
    Resume,
    /// Join a build of the same dataset if one is there, else start it (job-array workers).
    Join,
    /// Remove whatever dataset or build is there and start afresh.
    Overwrite,
}

/// The completion record of one shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardRecord {
    /// Shard index in the build's plan.
    pub index: u32,
    /// The manifest entry of the shard.
    pub entry: ShardEntry,
    /// Row ids of the shard's range skipped on purpose.
    #[serde(default)]
    pub skipped_row_ids: Vec<u64>,
}

/// Relative path of shard `index`.
pub fn shard_path(index: u32) -> String {
    format!("{SHARD_DIR}/part-{index:05}.parquet")
}

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename, directory fsync.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = temp_name(path);
    let mut f = File::create(&tmp).map_err(|e| FormatError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| FormatError::io(&tmp, e))?;
    f.sync_all().map_err(|e| FormatError::io(&tmp, e))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| FormatError::io(path, e))?;
    sync_dir(dir)
}

/// A temporary name beside `path`, unique to this write: `.NAME.HOST.PID.SEQ.tmp`. The host
/// and pid say whose it is, so a later run removes only temporaries of processes that are gone
/// (see [`remove_stale_temporaries`]) and never a live job-array worker's.
fn temp_name(path: &Path) -> PathBuf {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    path.with_file_name(format!(
        ".{name}.{}.{}.{seq}.tmp",
        crate::host::host_name(),
        std::process::id()
    ))
}

fn sync_dir(dir: &Path) -> Result<()> {
    // Directory fsync makes the rename durable; not every platform allows opening a directory.
    if let Ok(d) = File::open(dir) {
        d.sync_all().map_err(|e| FormatError::io(dir, e))?;
    }
    Ok(())
}

/// The part of a manifest that identifies what is being built: everything but the creation
/// time, the tool, the shards and the totals. Two drafts with equal identity build one dataset.
pub fn identity(m: &Manifest) -> serde_json::Value {
    let mut v = serde_json::to_value(m).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        for k in ["created", "tool", "shards", "totals", "dataset_id"] {
            o.remove(k);
        }
    }
    v
}

/// The top-level parts of two drafts' identities that differ (e.g. `teacher`, `targets`,
/// `build`), to say what a refused resume changed.
pub fn identity_differences(a: &Manifest, b: &Manifest) -> Vec<String> {
    let (a, b) = (identity(a), identity(b));
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return vec!["settings".into()];
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let out: Vec<String> = keys
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    if out.is_empty() {
        vec!["settings".into()]
    } else {
        out
    }
}

/// The dataset id of a draft: derived from its identity, so every worker of a job array
/// computes the same one without talking to the others.
pub fn dataset_id(m: &Manifest) -> String {
    let text = serde_json::to_string(&identity(m)).unwrap_or_default();
    hex(&Sha256::digest(text.as_bytes())[..16])
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Current time as RFC 3339 UTC.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// Writes the shards of one dataset and commits its manifest.
#[derive(Debug)]
pub struct DatasetWriter {
    /// Where shards are written on this machine: the dataset directory, or a staging
    /// directory when the output is a store.
    dir: PathBuf,
    /// The output as given (a directory or a URL).
    root: PathBuf,
    /// Set when the output is a store.
    sink: Option<RemoteSink>,
    draft: Manifest,
    schema: SchemaRef,
    options: WriteOptions,
    completed: BTreeMap<u32, ShardRecord>,
    /// The output's lock, held for the writer's life (local outputs; a store's commit
    /// protocol is conditional instead).
    _lock: Option<crate::lock::OutputLock>,
}

impl DatasetWriter {
    /// Prepares `root` for building the dataset `draft` describes (its shards and totals are
    /// ignored), honouring `mode` when the directory already holds something.
    pub fn create(
        root: &Path,
        mut draft: Manifest,
        options: WriteOptions,
        mode: CreateMode,
    ) -> Result<DatasetWriter> {
        draft.format = crate::manifest::FORMAT_NAME.into();
        draft.format_version = Version::current().to_string();
        draft.shards.clear();
        draft.totals = Totals::default();
        draft.check_spec().map_err(FormatError::InvalidSpec)?;
        draft.dataset_id = dataset_id(&draft);
        if let Some(remote) = crate::location::remote_for(root)? {
            let (draft, completed) = crate::location::prepare(&remote, &draft, mode)?;
            let staging = crate::location::staging_dir(remote.url());
            let mut w = DatasetWriter::create(&staging, draft, options, CreateMode::Overwrite)?;
            w.completed = completed;
            w.root = root.to_path_buf();
            w.sink = Some(RemoteSink { remote, staging });
            return Ok(w);
        }
        let conflict = |message: String| FormatError::OutputConflict {
            path: root.to_path_buf(),
            message,
        };
        fs::create_dir_all(root).map_err(|e| FormatError::io(root, e))?;
        // Before anything in the directory is touched: a second writer is refused while the
        // first runs, whatever its flags (job-array workers of one build share the lock).
        let lock = crate::lock::OutputLock::acquire(
            root,
            if mode == CreateMode::Join {
                crate::lock::LockMode::Shared
            } else {
                crate::lock::LockMode::Exclusive
            },
            if mode == CreateMode::Join {
                "a job-array build"
            } else {
                "a build"
            },
        )?;
        let manifest_path = root.join(MANIFEST_FILE);
        let build = root.join(BUILD_DIR);
        if mode == CreateMode::Overwrite {
            for p in [&manifest_path] {
                if p.exists() {
                    fs::remove_file(p).map_err(|e| FormatError::io(p, e))?;
                }
            }
            for d in [build.clone(), root.join(SHARD_DIR)] {
                if d.exists() {
                    fs::remove_dir_all(&d).map_err(|e| FormatError::io(&d, e))?;
                }
            }
        }
        if manifest_path.exists() {
            let same = Manifest::load(root)
                .map(|m| m.dataset_id == draft.dataset_id)
                .unwrap_or(false);
            return Err(conflict(if same {
                "this dataset is already complete here; pass --overwrite to rebuild it".into()
            } else {
                "the directory holds a different dataset; choose another output or pass --overwrite"
                    .into()
            }));
        }
        if root.exists() && mode == CreateMode::New {
            let mut entries = fs::read_dir(root)
                .map_err(|e| FormatError::io(root, e))?
                .filter(|e| {
                    e.as_ref()
                        .map_or(true, |e| e.file_name() != crate::lock::LOCK_FILE)
                });
            if entries.next().is_some() {
                return Err(conflict(if build.join(DRAFT_FILE).exists() {
                    "an interrupted build is here; pass --resume to continue it or --overwrite to start again".into()
                } else {
                    "the directory is not empty; choose an empty or new directory, or pass --overwrite".into()
                }));
            }
        }
        let draft_path = build.join(DRAFT_FILE);
        fs::create_dir_all(build.join(DONE_DIR)).map_err(|e| FormatError::io(&build, e))?;
        fs::create_dir_all(root.join(SHARD_DIR)).map_err(|e| FormatError::io(root, e))?;
        if draft_path.exists() {
            let text =
                fs::read_to_string(&draft_path).map_err(|e| FormatError::io(&draft_path, e))?;
            let existing: Manifest =
                serde_json::from_str(&text).map_err(|e| FormatError::MalformedManifest {
                    path: draft_path.clone(),
                    message: e.to_string(),
                })?;
            if identity(&existing) != identity(&draft) {
                return Err(conflict(format!(
                    "an unfinished build of a different dataset is here (its {} differ from this command's); resume it with the same teacher, corpus and options, or pass --overwrite to replace it",
                    identity_differences(&existing, &draft).join(", ")
                )));
            }
            if mode == CreateMode::New {
                return Err(conflict(
                    "an interrupted build is here; pass --resume to continue it".into(),
                ));
            }
            draft.created = existing.created;
        } else {
            if mode == CreateMode::Resume {
                return Err(conflict(
                    "there is no interrupted build here to resume".into(),
                ));
            }
            write_atomic(&draft_path, draft.to_json().as_bytes())?;
        }
        let completed = read_records(root)?;
        remove_stale_temporaries(&root.join(SHARD_DIR))?;
        let schema = schema::shard_schema(&draft);
        Ok(DatasetWriter {
            dir: root.to_path_buf(),
            root: root.to_path_buf(),
            sink: None,
            draft,
            schema,
            options,
            completed,
            _lock: Some(lock),
        })
    }

    /// The output as given: the dataset directory, or its URL.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The draft manifest (no shards yet).
    pub fn draft(&self) -> &Manifest {
        &self.draft
    }

    /// The Arrow schema every shard gets.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Shards already complete (by plan index), from this run or an earlier one.
    pub fn completed(&self) -> &BTreeMap<u32, ShardRecord> {
        &self.completed
    }

    /// Checks the recorded shards among `shards` against their completion records (local:
    /// size and sha256; store: size) and forgets those that are missing or damaged (a disk
    /// that lost a file after a kill, a shard overwritten by hand), removing their record, so
    /// the build writes them again. Returns each forgotten shard with what was wrong.
    pub fn heal(&mut self, shards: &[u32]) -> Result<Vec<(u32, String)>> {
        let mut healed = Vec::new();
        for &i in shards {
            let Some(rec) = self.completed.get(&i) else {
                continue;
            };
            let problem = match &self.sink {
                Some(sink) => match sink.remote.size(&rec.entry.path)? {
                    None => Some("its file is missing".to_string()),
                    Some(n) if n != rec.entry.bytes => Some(format!(
                        "its file is {n} bytes, its record says {}",
                        rec.entry.bytes
                    )),
                    Some(_) => None,
                },
                None => {
                    let path = self.dir.join(&rec.entry.path);
                    match file_sha256(&path) {
                        Err(_) => Some("its file is missing or unreadable".to_string()),
                        Ok((n, sha)) if n != rec.entry.bytes || sha != rec.entry.sha256 => {
                            Some(format!(
                                "its file ({n} bytes, sha256 {sha}) differs from its record ({} bytes, sha256 {})",
                                rec.entry.bytes, rec.entry.sha256
                            ))
                        }
                        Ok(_) => None,
                    }
                }
            };
            if let Some(p) = problem {
                match &self.sink {
                    Some(sink) => {
                        sink.remote
                            .delete(&format!("{BUILD_DIR}/{DONE_DIR}/part-{i:05}.json"))?;
                        sink.remote.delete(&rec.entry.path)?;
                    }
                    None => {
                        let record = self
                            .dir
                            .join(BUILD_DIR)
                            .join(DONE_DIR)
                            .join(format!("part-{i:05}.json"));
                        fs::remove_file(&record).map_err(|e| FormatError::io(&record, e))?;
                        sync_dir(&self.dir.join(BUILD_DIR).join(DONE_DIR))?;
                    }
                }
                self.completed.remove(&i);
                healed.push((i, p));
            }
        }
        Ok(healed)
    }

    /// Starts shard `index` of the plan. Any previous partial file for it is replaced.
    pub fn shard(&self, index: u32) -> Result<ShardWriter> {
        ShardWriter::create(&self.dir, &self.draft, &self.schema, &self.options, index)
    }

    /// Records a finished shard as complete (called with what [`ShardWriter::finish`] gave).
    /// For a store, this uploads the shard, makes it final and writes its marker.
    pub fn record(&mut self, record: ShardRecord) -> Result<()> {
        if let Some(sink) = &self.sink {
            crate::location::publish(sink, &record, &self.options.faults)?;
            self.completed.insert(record.index, record);
            return Ok(());
        }
        let path = self
            .dir
            .join(BUILD_DIR)
            .join(DONE_DIR)
            .join(format!("part-{:05}.json", record.index));
        let text = serde_json::to_string_pretty(&record).unwrap_or_default();
        write_atomic(&path, text.as_bytes())?;
        self.completed.insert(record.index, record);
        Ok(())
    }

    /// Writes the manifest from the completion records and removes the build records.
    /// `plan_shards` is the number of shards the build's plan has: a missing one is an error,
    /// so a dataset is never marked complete while part of it is missing.
    /// Keeps `bytes` as file `name` (a plain file name) of the dataset: staged in the build
    /// directory now, placed beside the manifest by the commit (so a job-array worker's
    /// attachment reaches the merge too).
    pub fn attach(&self, name: &str, bytes: &[u8]) -> Result<()> {
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(FormatError::InvalidSpec(format!(
                "attachment name {name:?}: a plain file name"
            )));
        }
        match &self.sink {
            Some(sink) => Ok(sink.remote.put(
                &format!("{BUILD_DIR}/{ATTACH_DIR}/{name}"),
                logits_store::Bytes::copy_from_slice(bytes),
            )?),
            None => {
                let d = self.dir.join(BUILD_DIR).join(ATTACH_DIR);
                fs::create_dir_all(&d).map_err(|e| FormatError::io(&d, e))?;
                write_atomic(&d.join(name), bytes)
            }
        }
    }

    pub fn commit(self, plan_shards: u32) -> Result<Manifest> {
        match &self.sink {
            Some(sink) => crate::location::commit(&sink.remote, Some(plan_shards)),
            None => commit_locked(&self.dir, Some(plan_shards)),
        }
    }
}

impl Drop for DatasetWriter {
    fn drop(&mut self) {
        // The staging directory is this process's own (named by its pid); what is in it was
        // either uploaded or is a partial shard a re-run redoes.
        if let Some(sink) = &self.sink {
            let _ = fs::remove_dir_all(&sink.staging);
        }
    }
}

/// Reads the completion records of a build in `root`.
pub fn read_records(root: &Path) -> Result<BTreeMap<u32, ShardRecord>> {
    if let Some(r) = crate::location::remote_for(root)? {
        return crate::location::read_records(&r);
    }
    let done = root.join(BUILD_DIR).join(DONE_DIR);
    let mut out = BTreeMap::new();
    let entries = match fs::read_dir(&done) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(FormatError::io(&done, e)),
    };
    for e in entries {
        let e = e.map_err(|e| FormatError::io(&done, e))?;
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let bytes = fs::read(&p).map_err(|err| FormatError::io(&p, err))?;
        let rec = parse_record(&p, &bytes)?;
        out.insert(rec.index, rec);
    }
    Ok(out)
}

/// Parses a completion record read from `path` (a file or an object), checking its shard path.
pub fn parse_record(path: &Path, bytes: &[u8]) -> Result<ShardRecord> {
    let rec: ShardRecord =
        serde_json::from_slice(bytes).map_err(|err| FormatError::MalformedManifest {
            path: path.to_path_buf(),
            message: err.to_string(),
        })?;
    crate::manifest::check_relative_path(path, &rec.entry.path)?;
    Ok(rec)
}

/// Removes the temporaries of processes on this host that are no longer running. Those of a
/// live process (another job-array worker writing its shard right now) and those written on
/// another host (whose processes this one cannot see) are left alone.
fn remove_stale_temporaries(dir: &Path) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(|e| FormatError::io(dir, e))?;
    let host = crate::host::host_name();
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let Some(stem) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) else {
            continue;
        };
        // .NAME.HOST.PID.SEQ.tmp; NAME may itself hold dots, HOST may not be ours.
        let parts: Vec<&str> = stem.rsplitn(4, '.').collect();
        let stale = match parts.as_slice() {
            [_seq, pid, h, _name] => {
                *h == host
                    && pid
                        .parse::<u32>()
                        .is_ok_and(|p| !crate::host::process_alive(p))
            }
            _ => false,
        };
        if stale {
            let _ = fs::remove_file(e.path());
        }
    }
    Ok(())
}

/// Loads the draft manifest of an unfinished build.
pub fn read_draft(root: &Path) -> Result<Manifest> {
    if let Some(r) = crate::location::remote_for(root)? {
        return crate::location::read_draft(&r);
    }
    let path = root.join(BUILD_DIR).join(DRAFT_FILE);
    let text = fs::read_to_string(&path).map_err(|e| FormatError::io(&path, e))?;
    Manifest::from_json(&path, &text)
}

/// Assembles a manifest from a draft and completion records (shards sorted by first row id).
pub fn assemble(mut draft: Manifest, records: &BTreeMap<u32, ShardRecord>) -> Manifest {
    let mut shards: Vec<ShardEntry> = records.values().map(|r| r.entry.clone()).collect();
    shards.sort_by_key(|s| (s.first_row_id, s.path.clone()));
    let mut skipped: Vec<u64> = records
        .values()
        .flat_map(|r| r.skipped_row_ids.iter().copied())
        .collect();
    skipped.sort_unstable();
    draft.totals = Totals {
        rows: shards.iter().map(|s| s.rows).sum(),
        bytes: shards.iter().map(|s| s.bytes).sum(),
        shards: shards.len() as u64,
        positions: shards.iter().map(|s| s.positions).sum(),
        entries: shards.iter().map(|s| s.entries).sum(),
        skipped_row_ids: skipped,
    };
    draft.shards = shards;
    draft
}

/// The merge step: checks every recorded shard file (size and sha256), that the plan is
/// complete when its size is known, writes `manifest.json` last and removes the build records.
/// `root` may be a store URL: see [`crate::location::commit`].
pub fn commit(root: &Path, plan_shards: Option<u32>) -> Result<Manifest> {
    if let Some(r) = crate::location::remote_for(root)? {
        return crate::location::commit(&r, plan_shards);
    }
    read_draft(root)?; // a directory with no build in it is said so before anything else
    let _lock =
        crate::lock::OutputLock::acquire(root, crate::lock::LockMode::Exclusive, "a merge")?;
    commit_locked(root, plan_shards)
}

/// [`commit`] on a local directory whose lock the caller holds.
fn commit_locked(root: &Path, plan_shards: Option<u32>) -> Result<Manifest> {
    let draft = read_draft(root)?;
    let records = read_records(root)?;
    check_plan_complete(
        root,
        &records,
        plan_shards,
        "run the missing workers (or --resume)",
    )?;
    for rec in records.values() {
        let path = root.join(&rec.entry.path);
        let (bytes, sha) = file_sha256(&path)?;
        if bytes != rec.entry.bytes || sha != rec.entry.sha256 {
            return Err(FormatError::ShardMismatch {
                path,
                message: format!(
                    "file is {bytes} bytes with sha256 {sha}, its completion record says {} bytes with {}; rebuild it with --resume",
                    rec.entry.bytes, rec.entry.sha256
                ),
            });
        }
    }
    let manifest = assemble(draft, &records);
    // Attachments and the card first: the manifest is what marks the dataset complete.
    let attached = root.join(BUILD_DIR).join(ATTACH_DIR);
    if let Ok(entries) = fs::read_dir(&attached) {
        for e in entries.flatten() {
            let p = e.path();
            let bytes = fs::read(&p).map_err(|err| FormatError::io(&p, err))?;
            write_atomic(&root.join(e.file_name()), &bytes)?;
        }
    }
    write_atomic(
        &root.join(crate::card::CARD_FILE),
        crate::card::dataset_card(&manifest).as_bytes(),
    )?;
    let path = root.join(MANIFEST_FILE);
    write_atomic(&path, manifest.to_json().as_bytes())?;
    let build = root.join(BUILD_DIR);
    fs::remove_dir_all(&build).map_err(|e| FormatError::io(&build, e))?;
    Ok(manifest)
}

/// Refuses to merge while a shard of the plan (`plan_shards`, when known) has no completion
/// record, naming the first missing ones; `todo` says what to run.
pub(crate) fn check_plan_complete(
    at: &Path,
    records: &BTreeMap<u32, ShardRecord>,
    plan_shards: Option<u32>,
    todo: &str,
) -> Result<()> {
    let Some(n) = plan_shards else { return Ok(()) };
    let missing: Vec<u32> = (0..n).filter(|i| !records.contains_key(i)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = missing.iter().take(10).map(|i| shard_path(*i)).collect();
    Err(FormatError::OutputConflict {
        path: at.to_path_buf(),
        message: format!(
            "{} of {n} shards are not complete ({}{}); {todo} before merging",
            missing.len(),
            shown.join(", "),
            if missing.len() > 10 { ", ..." } else { "" }
        ),
    })
}

/// The sha256 (lowercase hex) of everything `r` holds from its start, read with positioned
/// reads so a shared file handle's cursor does not matter; `path` names it in errors.
pub fn reader_sha256(path: &Path, r: &mut &File) -> Result<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        loop {
            let got = r
                .read_at(&mut buf, at)
                .map_err(|e| FormatError::io(path, e))?;
            if got == 0 {
                break;
            }
            h.update(&buf[..got]);
            at += got as u64;
        }
        Ok(hex(&h.finalize()))
    }
    #[cfg(not(unix))]
    {
        let _ = r;
        Ok(file_sha256(path)?.1)
    }
}

/// Size and sha256 (lowercase hex) of a file, streamed.
pub fn file_sha256(path: &Path) -> Result<(u64, String)> {
    let mut f = File::open(path).map_err(|e| FormatError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let got = std::io::Read::read(&mut f, &mut buf).map_err(|e| FormatError::io(path, e))?;
        if got == 0 {
            break;
        }
        h.update(&buf[..got]);
        n += got as u64;
    }
    Ok((n, hex(&h.finalize())))
}

/// A `Write` that hashes and counts what passes through it.
struct HashingFile {
    file: File,
    hasher: Sha256,
    bytes: u64,
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// JSON of a manifest part that a shard's metadata repeats.
fn json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| FormatError::InvalidSpec(e.to_string()))
}

/// Parquet writer properties for a shard of `manifest`: zstd, byte-stream-split floats, no
/// dictionaries on numeric leaves (ids and values are near-random, dictionaries only cost).
pub fn writer_properties(
    manifest: &Manifest,
    arrow: &SchemaRef,
    options: &WriteOptions,
    shard: &str,
) -> Result<WriterProperties> {
    let level = ZstdLevel::try_new(options.zstd_level)
        .map_err(|e| FormatError::InvalidSpec(format!("zstd level: {e}")))?;
    // A shard decodes on its own: how its values are encoded, at which temperatures, and
    // what its input and feature columns are travel in it, not only in manifest.json.
    let mut kv = vec![
        KeyValue::new(KV_VERSION.into(), manifest.format_version.clone()),
        KeyValue::new(KV_DATASET.into(), manifest.dataset_id.clone()),
        KeyValue::new(KV_SHARD.into(), shard.to_string()),
        KeyValue::new(KV_INPUTS.into(), json(&manifest.inputs)?),
        KeyValue::new(KV_FEATURES.into(), json(&manifest.features)?),
    ];
    if let Some(t) = &manifest.targets {
        kv.push(KeyValue::new(KV_TARGETS.into(), json(t)?));
    }
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_row_count(Some(options.row_group_rows.max(1)))
        .set_dictionary_enabled(false)
        .set_key_value_metadata(Some(kv));
    let descr = ArrowSchemaConverter::new()
        .convert(arrow)
        .map_err(|e| FormatError::InvalidSpec(e.to_string()))?;
    for col in descr.columns() {
        use parquet::basic::Type as P;
        let top = col.path().parts().first().cloned().unwrap_or_default();
        match col.physical_type() {
            P::FLOAT | P::DOUBLE => {
                b = b.set_column_encoding(col.path().clone(), Encoding::BYTE_STREAM_SPLIT);
            }
            P::FIXED_LEN_BYTE_ARRAY if top != schema::INPUT_HASH => {
                b = b.set_column_encoding(col.path().clone(), Encoding::BYTE_STREAM_SPLIT);
            }
            P::INT32 if top == schema::TOPK_IDS || top == schema::SAMPLE_IDS => {
                // Ids are skewed towards frequent (small) values: splitting the bytes lets
                // zstd see the nearly constant high bytes apart from the low ones.
                b = b.set_column_encoding(col.path().clone(), Encoding::BYTE_STREAM_SPLIT);
            }
            P::INT64 if top == schema::ROW_ID => {
                b = b.set_column_encoding(col.path().clone(), Encoding::DELTA_BINARY_PACKED);
            }
            P::BYTE_ARRAY if top == schema::TOPK_CODED => {
                // Entropy-coded already: zstd would spend time and gain nothing.
                b = b.set_column_compression(col.path().clone(), Compression::UNCOMPRESSED);
            }
            P::BYTE_ARRAY if top == schema::USER_ID => {
                b = b.set_column_dictionary_enabled(col.path().clone(), true);
            }
            _ => {}
        }
    }
    Ok(b.build())
}

/// Writes one shard: row batches in, a [`ShardRecord`] out.
pub struct ShardWriter {
    writer: Option<ArrowWriter<HashingFile>>,
    manifest_targets: bool,
    manifest: Manifest,
    schema: SchemaRef,
    /// The file's schema and the coding state, for coded top-k.
    coded: Option<(SchemaRef, Box<crate::coded::BlockCoder>)>,
    /// Rows per row group (and coding block).
    block_rows: u64,
    index: u32,
    rel: String,
    tmp: PathBuf,
    dest: PathBuf,
    rows: u64,
    first: Option<u64>,
    last: Option<u64>,
    positions: u64,
    entries: u64,
    skipped: Vec<u64>,
}

impl std::fmt::Debug for ShardWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardWriter")
            .field("shard", &self.rel)
            .field("rows", &self.rows)
            .finish()
    }
}

impl ShardWriter {
    fn create(
        root: &Path,
        manifest: &Manifest,
        schema: &SchemaRef,
        options: &WriteOptions,
        index: u32,
    ) -> Result<ShardWriter> {
        let rel = shard_path(index);
        let dest = root.join(&rel);
        let tmp = temp_name(&dest);
        let file = File::create(&tmp).map_err(|e| FormatError::io(&tmp, e))?;
        let file_schema = schema::file_schema(manifest);
        let props = writer_properties(manifest, &file_schema, options, &rel)?;
        let sink = HashingFile {
            file,
            hasher: Sha256::new(),
            bytes: 0,
        };
        let writer = ArrowWriter::try_new(sink, file_schema.clone(), Some(props))
            .map_err(|e| FormatError::parquet(&tmp, e))?;
        let coded = manifest
            .targets
            .as_ref()
            .filter(|t| t.coding.is_some())
            .map(|t| {
                let coder = crate::coded::BlockCoder::new(t.axis_size, t.max_k());
                (file_schema.clone(), Box::new(coder))
            });
        Ok(ShardWriter {
            writer: Some(writer),
            manifest_targets: manifest.targets.is_some(),
            manifest: manifest.clone(),
            schema: schema.clone(),
            coded,
            block_rows: options.row_group_rows.max(1) as u64,
            index,
            rel,
            tmp,
            dest,
            rows: 0,
            first: None,
            last: None,
            positions: 0,
            entries: 0,
            skipped: Vec::new(),
        })
    }

    /// Appends rows. Row ids must keep increasing across calls.
    pub fn write(&mut self, batch: &RowBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        if let (Some(last), Some(&first)) = (self.last, batch.row_ids.first())
            && first <= last
        {
            return Err(FormatError::InvalidRow {
                row_id: first,
                column: schema::ROW_ID.into(),
                message: format!("row ids must increase within a shard (after {last})"),
            });
        }
        let rb = codec::encode(&self.manifest, &self.schema, batch)?;
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| FormatError::parquet(&self.tmp, "writer already closed"))?;
        match (&mut self.coded, &self.manifest.targets) {
            (Some((file, coder)), Some(spec)) => {
                // Cut at block boundaries, each closing its row group, so that every row group
                // starts a coding block and decodes on its own.
                let mut start = 0;
                while start < rb.num_rows() {
                    let in_block = (self.rows + start as u64) % self.block_rows;
                    let n = ((self.block_rows - in_block) as usize).min(rb.num_rows() - start);
                    let part = rb.slice(start, n);
                    let coded = crate::coded::arrow::encode_batch(spec, &part, file, coder, |i| {
                        i == 0 && in_block == 0
                    })?;
                    w.write(&coded)
                        .map_err(|e| FormatError::parquet(&self.tmp, e))?;
                    if in_block + n as u64 == self.block_rows {
                        w.flush().map_err(|e| FormatError::parquet(&self.tmp, e))?;
                    }
                    start += n;
                }
            }
            _ => w
                .write(&rb)
                .map_err(|e| FormatError::parquet(&self.tmp, e))?,
        }
        self.rows += batch.len() as u64;
        self.first = self.first.or(batch.row_ids.first().copied());
        self.last = batch.row_ids.last().copied();
        if self.manifest_targets
            && let Some(t) = &batch.targets
        {
            self.positions += t.positions() as u64;
            self.entries += t.topk.as_ref().map_or(0, |k| k.ids.len() as u64);
        }
        Ok(())
    }

    /// Notes row ids of this shard's range that were skipped on purpose.
    pub fn skip(&mut self, row_ids: &[u64]) {
        self.skipped.extend_from_slice(row_ids);
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Closes the file, makes it durable under its final name and returns its record (which
    /// the caller passes to [`DatasetWriter::record`]).
    pub fn finish(mut self) -> Result<ShardRecord> {
        let w = self
            .writer
            .take()
            .ok_or_else(|| FormatError::parquet(&self.tmp, "writer already closed"))?;
        let sink = w
            .into_inner()
            .map_err(|e| FormatError::parquet(&self.tmp, e))?;
        sink.file
            .sync_all()
            .map_err(|e| FormatError::io(&self.tmp, e))?;
        let sha = hex(&sink.hasher.finalize());
        drop(sink.file);
        fs::rename(&self.tmp, &self.dest).map_err(|e| FormatError::io(&self.dest, e))?;
        if let Some(dir) = self.dest.parent() {
            sync_dir(dir)?;
        }
        Ok(ShardRecord {
            index: self.index,
            entry: ShardEntry {
                path: self.rel.clone(),
                rows: self.rows,
                bytes: sink.bytes,
                sha256: sha,
                first_row_id: self.first.unwrap_or(0),
                last_row_id: self.last.unwrap_or(0),
                positions: self.positions,
                entries: self.entries,
            },
            skipped_row_ids: std::mem::take(&mut self.skipped),
        })
    }
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        // An unfinished shard leaves no file behind under any name a reader would take.
        if self.writer.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}
