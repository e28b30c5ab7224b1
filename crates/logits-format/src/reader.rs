//! Reading a dataset: opening it (checking version and paths), and streaming its rows with
//! column projection, seeded shuffling and background prefetch, in memory bounded by the
//! options, never by the size of the dataset.
//!
//! Shuffling has two levels, as in tf.data and WebDataset: the order of shards and of row
//! groups within them is permuted by the seed, and rows then pass through a bounded shuffle
//! buffer from which each output row is drawn at random.

use std::collections::VecDeque;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use arrow_array::cast::AsArray;
use arrow_array::types::UInt64Type;
use arrow_array::{BooleanArray, RecordBatch};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::codec;
use crate::error::{FormatError, Result};
use crate::location::{self, RemoteDataset, ShardInput};
use crate::manifest::{MANIFEST_FILE, Manifest, ShardEntry};
use crate::rows::RowBatch;
use crate::schema;
use crate::writer::{self, BUILD_DIR, KV_DATASET, KV_VERSION};

/// An opened dataset: its directory (or store prefix) and manifest.
#[derive(Debug, Clone)]
pub struct Dataset {
    root: PathBuf,
    manifest: Manifest,
    complete: bool,
    remote: Option<RemoteDataset>,
    /// Shards whose size and sha256 were checked by this process (each is hashed once).
    verified: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl Dataset {
    /// Opens a committed dataset. An unfinished build is refused with a message saying how
    /// much of it is complete.
    /// `root` may be an object-store URL (`s3://bucket/prefix`...): the dataset is then read in
    /// place, by range requests.
    pub fn open(root: &Path) -> Result<Dataset> {
        if let Some(remote) = location::remote_for(root)? {
            let remote = RemoteDataset::new(remote)?;
            return Ok(Dataset {
                root: root.to_path_buf(),
                manifest: remote.manifest()?,
                complete: true,
                remote: Some(remote),
                verified: Default::default(),
            });
        }
        let mpath = root.join(MANIFEST_FILE);
        if !mpath.exists() && root.join(BUILD_DIR).exists() {
            let done = writer::read_records(root).map(|r| r.len()).unwrap_or(0);
            return Err(FormatError::OutputConflict {
                path: root.to_path_buf(),
                message: format!(
                    "the build of this dataset is not complete ({done} shards done, no manifest.json); finish it with `logits-build build ... --resume` (or `logits-build merge` for a job array); `logits-inspect --partial` shows the completed part"
                ),
            });
        }
        if !root.is_dir() {
            return Err(FormatError::io(
                root,
                std::io::Error::new(std::io::ErrorKind::NotFound, "dataset directory not found"),
            ));
        }
        let manifest = Manifest::load(root)?;
        Ok(Dataset {
            root: root.to_path_buf(),
            manifest,
            complete: true,
            remote: None,
            verified: Default::default(),
        })
    }

    /// Opens a dataset, or the completed shards of an unfinished build of one.
    pub fn open_partial(root: &Path) -> Result<Dataset> {
        if let Some(remote) = location::remote_for(root)? {
            if remote.size(MANIFEST_FILE)?.is_some() {
                return Dataset::open(root);
            }
            let draft = location::read_draft(&remote)?;
            let records = location::read_records(&remote)?;
            return Ok(Dataset {
                root: root.to_path_buf(),
                manifest: writer::assemble(draft, &records),
                complete: false,
                remote: Some(RemoteDataset::new(remote)?),
                verified: Default::default(),
            });
        }
        if root.join(MANIFEST_FILE).exists() {
            return Dataset::open(root);
        }
        let draft = writer::read_draft(root)?;
        let records = writer::read_records(root)?;
        Ok(Dataset {
            root: root.to_path_buf(),
            manifest: writer::assemble(draft, &records),
            complete: false,
            remote: None,
            verified: Default::default(),
        })
    }

    /// The dataset directory, or its URL.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The manifest (for a partial dataset: the draft with the completed shards).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// False when this is the completed part of an unfinished build.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// True when the dataset is in an object store.
    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// The shard's path or URL, for messages.
    pub fn shard_name(&self, shard: &ShardEntry) -> PathBuf {
        self.root.join(&shard.path)
    }

    /// Opens a shard for reading: a local file, or a remote object read by ranges.
    pub fn open_shard(&self, shard: &ShardEntry) -> Result<ShardInput> {
        match &self.remote {
            Some(r) => {
                crate::manifest::check_relative_path(&self.root.join(MANIFEST_FILE), &shard.path)?;
                r.open_shard(&shard.path)
            }
            None => ShardInput::local(&self.shard_file(shard)?),
        }
    }

    /// Checks a shard's bytes against its manifest entry before they are parsed: the size
    /// always; for a local file also the sha256, hashed once per process from the same open
    /// file that is then read (so the bytes checked are the bytes used). A shard in a store is
    /// read by ranges and not hashed here (`logits-inspect --validate` hashes it).
    pub fn verify_shard(&self, path: &Path, entry: &ShardEntry, input: &ShardInput) -> Result<()> {
        use parquet::file::reader::Length;
        let len = input.len();
        if len != entry.bytes {
            return Err(FormatError::ShardMismatch {
                path: path.to_path_buf(),
                message: format!(
                    "{len} bytes, the manifest says {} (truncated or replaced); rebuild or fetch the dataset again",
                    entry.bytes
                ),
            });
        }
        let ShardInput::Local(file) = input else {
            return Ok(());
        };
        let key = entry.path.clone();
        if self
            .verified
            .lock()
            .map(|v| v.contains(&key))
            .unwrap_or(false)
        {
            return Ok(());
        }
        let sha = writer::reader_sha256(path, &mut &**file)?;
        if sha != entry.sha256 {
            return Err(FormatError::ShardMismatch {
                path: path.to_path_buf(),
                message: format!(
                    "sha256 {sha} differs from the manifest's {} (the file is corrupted); rebuild or fetch the dataset again",
                    entry.sha256
                ),
            });
        }
        if let Ok(mut v) = self.verified.lock() {
            v.insert(key);
        }
        Ok(())
    }

    /// Checks that every shard of the manifest is there at the size it records (a stat per
    /// shard; a store's objects by their listed size), so a dataset with a lost or truncated
    /// shard is refused before a long job starts rather than when the reader reaches it.
    pub fn check_shard_sizes(&self) -> Result<()> {
        for s in &self.manifest.shards {
            let path = self.shard_name(s);
            let len = match &self.remote {
                Some(_) => {
                    use parquet::file::reader::Length;
                    self.open_shard(s)?.len()
                }
                None => {
                    let f = self.shard_file(s)?;
                    std::fs::metadata(&f)
                        .map_err(|e| FormatError::io(&f, e))?
                        .len()
                }
            };
            if len != s.bytes {
                return Err(FormatError::ShardMismatch {
                    path,
                    message: format!(
                        "{len} bytes, the manifest says {} (truncated or replaced); rebuild or fetch the dataset again",
                        s.bytes
                    ),
                });
            }
        }
        Ok(())
    }

    /// Size and sha256 of a shard's bytes, with an input to read it again (remote shards are
    /// downloaded once for this, to memory).
    pub fn shard_checksum(&self, shard: &ShardEntry) -> Result<(u64, String, ShardInput)> {
        match &self.remote {
            Some(r) => {
                crate::manifest::check_relative_path(&self.root.join(MANIFEST_FILE), &shard.path)?;
                let b = r.download(&shard.path)?;
                let sha = writer::hex(&<sha2::Sha256 as sha2::Digest>::digest(&b));
                Ok((b.len() as u64, sha, ShardInput::Memory(b)))
            }
            None => {
                let path = self.shard_file(shard)?;
                let (n, sha) = writer::file_sha256(&path)?;
                Ok((n, sha, ShardInput::local(&path)?))
            }
        }
    }

    /// The file of a local shard, refusing one that resolves outside the dataset (symlinks
    /// included). For a dataset in a store, use [`Self::open_shard`].
    pub fn shard_file(&self, shard: &ShardEntry) -> Result<PathBuf> {
        if self.remote.is_some() {
            return Err(FormatError::Reader(format!(
                "{}: a shard in an object store has no local file",
                self.shard_name(shard).display()
            )));
        }
        let mpath = self.root.join(MANIFEST_FILE);
        crate::manifest::check_relative_path(&mpath, &shard.path)?;
        let path = self.root.join(&shard.path);
        let real = path.canonicalize().map_err(|e| FormatError::io(&path, e))?;
        let base = self
            .root
            .canonicalize()
            .map_err(|e| FormatError::io(&self.root, e))?;
        if !real.starts_with(&base) {
            return Err(FormatError::UnsafePath {
                path: mpath,
                shard: shard.path.clone(),
                why: "it resolves (through a symlink) outside the dataset directory",
            });
        }
        Ok(path)
    }

    /// Every column name of the dataset's shards.
    pub fn columns(&self) -> Vec<String> {
        schema::shard_schema(&self.manifest)
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }

    /// Starts streaming rows as `options` say.
    pub fn stream(&self, options: &ReadOptions) -> Result<BatchStream> {
        BatchStream::start(self, options)
    }
}

/// How to stream a dataset.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// Columns to read (`row_id` is always read); `None` reads all.
    pub columns: Option<Vec<String>>,
    /// Rows per output batch.
    pub batch_size: usize,
    /// Seed for shuffling; `None` keeps row-id order.
    pub shuffle: Option<u64>,
    /// Rows held in the shuffle buffer (ignored without shuffling).
    pub shuffle_buffer: usize,
    /// Chunks read ahead by the background thread.
    pub prefetch: usize,
    /// Keep only rows whose id falls in this range (a held-out split, a worker's part).
    pub row_range: Option<Range<u64>>,
    /// Read only part `i` of `n`: the shards at manifest positions `i`, `i + n`, ... (one
    /// part per data-loader worker or rank, each shard read by exactly one of them).
    pub part: Option<(usize, usize)>,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            columns: None,
            batch_size: 256,
            shuffle: None,
            shuffle_buffer: 8192,
            prefetch: 4,
            row_range: None,
            part: None,
        }
    }
}

type Chunk = Result<RecordBatch>;

/// A stream of record batches of `batch_size` rows (the last may be smaller).
pub struct BatchStream {
    rx: Option<Receiver<Chunk>>,
    thread: Option<JoinHandle<()>>,
    manifest: Manifest,
    batch_size: usize,
    buffer: usize,
    rng: Option<ChaCha8Rng>,
    chunks: Vec<Option<(RecordBatch, usize)>>,
    rows: VecDeque<(usize, usize)>,
    free: Vec<usize>,
    exhausted: bool,
}

impl std::fmt::Debug for BatchStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchStream")
            .field("buffered_rows", &self.rows.len())
            .finish()
    }
}

impl BatchStream {
    fn start(ds: &Dataset, o: &ReadOptions) -> Result<BatchStream> {
        let all = ds.columns();
        let wanted: Vec<String> = match &o.columns {
            None => all.clone(),
            Some(cols) => {
                let mut w = vec![schema::ROW_ID.to_string()];
                for c in cols {
                    if !all.contains(c) {
                        return Err(FormatError::MissingColumn {
                            path: ds.root.clone(),
                            column: c.clone(),
                            why: format!("it was asked for; the dataset has {}", all.join(", ")),
                        });
                    }
                    if !w.contains(c) {
                        w.push(c.clone());
                    }
                }
                w
            }
        };
        if let Some((i, n)) = o.part
            && i >= n
        {
            return Err(FormatError::Reader(format!(
                "part {i} of {n} does not exist: parts are numbered 0..{n}"
            )));
        }
        let mut shards: Vec<(PathBuf, ShardEntry)> = Vec::new();
        for (at, s) in ds.manifest.shards.iter().enumerate() {
            if s.rows == 0 || o.part.is_some_and(|(i, n)| at % n != i) {
                continue;
            }
            if let Some(r) = &o.row_range
                && (s.last_row_id < r.start || s.first_row_id >= r.end)
            {
                continue;
            }
            if ds.remote.is_none() {
                // Checked now so a symlink out of the dataset fails before any reading.
                ds.shard_file(s)?;
            }
            shards.push((ds.shard_name(s), s.clone()));
        }
        let mut rng = o.shuffle.map(ChaCha8Rng::seed_from_u64);
        if let Some(r) = rng.as_mut() {
            shards.shuffle(r);
        }
        let order_seed = rng.as_mut().map(|r| r.random::<u64>());
        let (tx, rx) = sync_channel(o.prefetch.max(1));
        let job = ReadJob {
            ds: ds.clone(),
            shards,
            columns: wanted,
            expected: schema::shard_schema(&ds.manifest),
            file_expected: schema::file_schema(&ds.manifest),
            coder: Default::default(),
            dataset_id: ds.manifest.dataset_id.clone(),
            chunk_rows: o.batch_size.clamp(1, 4096),
            order_seed,
            row_range: o.row_range.clone(),
            rows: Default::default(),
        };
        let thread = std::thread::Builder::new()
            .name("logits-prefetch".into())
            .spawn(move || job.run(tx))
            .map_err(|e| FormatError::Reader(e.to_string()))?;
        Ok(BatchStream {
            rx: Some(rx),
            thread: Some(thread),
            manifest: ds.manifest.clone(),
            batch_size: o.batch_size.max(1),
            buffer: if o.shuffle.is_some() {
                o.shuffle_buffer.max(o.batch_size.max(1))
            } else {
                o.batch_size.max(1)
            },
            rng,
            chunks: Vec::new(),
            rows: VecDeque::new(),
            free: Vec::new(),
            exhausted: false,
        })
    }

    /// The next batch decoded into a [`RowBatch`] (values in their spec meaning). Every row
    /// was checked against the contract ([`codec::check_rows`]) by the reading thread.
    pub fn next_rows(&mut self) -> Option<Result<RowBatch>> {
        let b = self.next()?;
        Some(b.and_then(|b| codec::decode(&self.manifest, &b)))
    }

    fn add_chunk(&mut self, b: RecordBatch) {
        let n = b.num_rows();
        if n == 0 {
            return;
        }
        let slot = match self.free.pop() {
            Some(s) => {
                self.chunks[s] = Some((b, n));
                s
            }
            None => {
                self.chunks.push(Some((b, n)));
                self.chunks.len() - 1
            }
        };
        self.rows.extend((0..n).map(|r| (slot, r)));
    }

    fn emit(&mut self) -> Result<RecordBatch> {
        let n = self.batch_size.min(self.rows.len());
        let mut picks = Vec::with_capacity(n);
        for _ in 0..n {
            let pick = match self.rng.as_mut() {
                Some(rng) => {
                    let i = rng.random_range(0..self.rows.len());
                    self.rows.swap_remove_back(i)
                }
                None => self.rows.pop_front(),
            };
            if let Some(p) = pick {
                picks.push(p);
            }
        }
        // Map slots to a dense list of the chunks this batch uses.
        let mut used: Vec<usize> = picks.iter().map(|p| p.0).collect();
        used.sort_unstable();
        used.dedup();
        let batches: Vec<&RecordBatch> = used
            .iter()
            .filter_map(|&s| self.chunks[s].as_ref().map(|c| &c.0))
            .collect();
        let idx: Vec<(usize, usize)> = picks
            .iter()
            .map(|&(s, r)| (used.binary_search(&s).unwrap_or(0), r))
            .collect();
        let out = arrow_select::interleave::interleave_record_batch(&batches, &idx)
            .map_err(|e| FormatError::Reader(e.to_string()))?;
        for (s, _) in picks {
            if let Some((_, left)) = self.chunks[s].as_mut() {
                *left -= 1;
                if *left == 0 {
                    self.chunks[s] = None;
                    self.free.push(s);
                }
            }
        }
        Ok(out)
    }
}

impl Iterator for BatchStream {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Result<RecordBatch>> {
        while !self.exhausted && self.rows.len() < self.buffer {
            match self.rx.as_ref().map(|rx| rx.recv()) {
                Some(Ok(Ok(b))) => self.add_chunk(b),
                Some(Ok(Err(e))) => {
                    self.exhausted = true;
                    return Some(Err(e));
                }
                Some(Err(_)) | None => {
                    self.exhausted = true;
                    if let Some(t) = self.thread.take()
                        && t.join().is_err()
                    {
                        return Some(Err(FormatError::Reader("prefetch thread panicked".into())));
                    }
                }
            }
        }
        if self.rows.is_empty() {
            return None;
        }
        Some(self.emit())
    }
}

impl Drop for BatchStream {
    fn drop(&mut self) {
        // Dropping the receiver makes the thread's next send fail, so it stops promptly.
        self.rx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct ReadJob {
    ds: Dataset,
    shards: Vec<(PathBuf, ShardEntry)>,
    columns: Vec<String>,
    expected: arrow_schema::SchemaRef,
    /// The shards' own schema (differs from `expected` for coded top-k).
    file_expected: arrow_schema::SchemaRef,
    /// The coded top-k decoder of the shard being read.
    coder: std::cell::RefCell<Option<Box<crate::coded::BlockCoder>>>,
    dataset_id: String,
    chunk_rows: usize,
    order_seed: Option<u64>,
    row_range: Option<Range<u64>>,
    rows: std::cell::RefCell<ShardRows>,
}

/// The row ids seen in the shard being read, against its manifest entry: each id inside the
/// entry's range, none twice, as many as the entry says. Swapped, duplicated or truncated
/// shards whose bytes still parse are caught here. Ids are marked in a bitmap of the entry's
/// range (a bit per id), or in a set when the range is far wider than the rows (a shard whose
/// rows were mostly skipped, or a forged range that must not ask for huge memory).
#[derive(Default)]
struct ShardRows {
    first: u64,
    last: u64,
    bits: Vec<u64>,
    sparse: std::collections::HashSet<u64>,
    count: u64,
}

impl ShardRows {
    fn start(&mut self, e: &ShardEntry) {
        self.first = e.first_row_id;
        self.last = e.last_row_id.max(e.first_row_id);
        let span = self.last - self.first + 1;
        let dense = span <= e.rows.saturating_mul(64).max(1 << 16);
        self.bits = if dense {
            vec![0; span.div_ceil(64) as usize]
        } else {
            Vec::new()
        };
        self.sparse.clear();
        self.count = 0;
    }

    fn see(&mut self, path: &Path, b: &RecordBatch) -> Result<()> {
        let ids = row_ids(path, b)?;
        for id in ids.values().iter().copied() {
            if id < self.first || id > self.last {
                return Err(FormatError::ShardMismatch {
                    path: path.to_path_buf(),
                    message: format!(
                        "row id {id} is outside the shard's range {}..={} in the manifest (a shard swapped or replaced?)",
                        self.first, self.last
                    ),
                });
            }
            let off = id - self.first;
            let new = if self.bits.is_empty() {
                self.sparse.insert(id)
            } else {
                let (w, bit) = ((off / 64) as usize, off % 64);
                let had = self.bits[w] >> bit & 1 == 1;
                self.bits[w] |= 1 << bit;
                !had
            };
            if !new {
                return Err(FormatError::ShardMismatch {
                    path: path.to_path_buf(),
                    message: format!("row id {id} appears twice"),
                });
            }
            self.count += 1;
        }
        Ok(())
    }

    fn finish(&self, path: &Path, e: &ShardEntry) -> Result<()> {
        if self.count != e.rows {
            return Err(FormatError::ShardMismatch {
                path: path.to_path_buf(),
                message: format!(
                    "{} rows read, the manifest says {} (truncated or replaced)",
                    self.count, e.rows
                ),
            });
        }
        Ok(())
    }
}

/// The error for a shard the Parquet library could not read.
fn damaged(path: &Path, why: &str) -> FormatError {
    FormatError::ShardMismatch {
        path: path.to_path_buf(),
        message: format!(
            "the file is damaged ({why}); rebuild the dataset or fetch it again, and check it with `logits-inspect --validate`"
        ),
    }
}

/// Runs `f`, which hands bytes from a file to the Parquet library, turning a panic of the
/// library (its page decoders index without bounds checks on some damaged input) into
/// `Err(text)` for the caller to report with the file and what to do.
pub fn catch_panics<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| panic_text(&p))
}

/// The message of a caught panic.
fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown".into());
    format!("the Parquet reader panicked: {msg}")
}

/// Loads a shard's Parquet metadata without trusting it: the footer is parsed with the
/// library's panics caught, and every column chunk's byte range is checked against the file's
/// size before any reader asks for it (parquet 60 panics on negative ranges).
pub fn load_metadata(path: &Path, input: &ShardInput) -> Result<ArrowReaderMetadata> {
    use parquet::file::reader::Length;
    let len = input.len();
    let meta = catch_panics(|| ArrowReaderMetadata::load(input, ArrowReaderOptions::new()))
        .map_err(|p| damaged(path, &p))?
        .map_err(|e| FormatError::parquet(path, e))?;
    let pm = meta.metadata();
    for (g, rg) in pm.row_groups().iter().enumerate() {
        if rg.num_rows() < 0 {
            return Err(damaged(
                path,
                &format!("row group {g} has a negative row count"),
            ));
        }
        for (c, cc) in rg.columns().iter().enumerate() {
            // The same start the library's `byte_range` takes (the dictionary page when there
            // is one), and the data page offset too, which page readers use.
            let start = cc.dictionary_page_offset().unwrap_or(cc.data_page_offset());
            let size = cc.compressed_size();
            let end = start.checked_add(size);
            let data = cc.data_page_offset();
            if start < 0
                || size < 0
                || data < 0
                || data as u64 > len
                || end.is_none_or(|e| e as u64 > len)
            {
                return Err(damaged(
                    path,
                    &format!(
                        "row group {g}, column {c}: bytes {start}..+{size} outside the file's {len} bytes"
                    ),
                ));
            }
        }
    }
    Ok(meta)
}

/// Checks that a shard is the one its manifest entry names (`logits.shard` key), so shards
/// swapped or copied over each other are caught even where no checksum is computed.
fn check_shard_key(
    path: &Path,
    meta: &parquet::file::metadata::ParquetMetaData,
    entry: &ShardEntry,
) -> Result<()> {
    let key = meta
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|e| e.key == writer::KV_SHARD))
        .and_then(|e| e.value.clone());
    match key {
        Some(k) if k == entry.path => Ok(()),
        other => Err(FormatError::ShardMismatch {
            path: path.to_path_buf(),
            message: format!(
                "the file says it is shard {}, the manifest lists it as {} (shards swapped or copied over each other)",
                other.unwrap_or_else(|| "<none>".into()),
                entry.path
            ),
        }),
    }
}

impl ReadJob {
    fn run(self, tx: SyncSender<Chunk>) {
        let mut rng = self.order_seed.map(ChaCha8Rng::seed_from_u64);
        for (path, entry) in &self.shards {
            self.rows.borrow_mut().start(entry);
            // A damaged file must give an error, never take the process down: the Parquet
            // library's own panics on corrupt input are caught here and reported as such.
            let r = catch_panics(|| self.read_shard(path, entry, rng.as_mut(), &tx))
                .unwrap_or_else(|p| Err(damaged(path, &p)))
                .and_then(|()| self.rows.borrow().finish(path, entry));
            if let Err(e) = r {
                let _ = tx.send(Err(e));
                return;
            }
        }
    }

    fn read_shard(
        &self,
        path: &Path,
        entry: &ShardEntry,
        rng: Option<&mut ChaCha8Rng>,
        tx: &SyncSender<Chunk>,
    ) -> Result<()> {
        let input = self.ds.open_shard(entry)?;
        self.ds.verify_shard(path, entry, &input)?;
        let meta = load_metadata(path, &input)?;
        let builder =
            ParquetRecordBatchReaderBuilder::new_with_metadata(input.clone(), meta.clone());
        check_shard_metadata(path, builder.metadata(), &self.dataset_id)?;
        check_shard_key(path, builder.metadata(), entry)?;
        let arrow = builder.schema().clone();
        let mut roots = Vec::new();
        if let Some(c) = self.coder.borrow_mut().as_mut() {
            c.forget();
        }
        for c in &self.file_columns() {
            let i = arrow.index_of(c).map_err(|_| FormatError::ShardMismatch {
                path: path.to_path_buf(),
                message: format!("column {c:?} is missing from the shard"),
            })?;
            let want = self.file_expected.field_with_name(c).ok();
            if want.map(|w| w.data_type()) != Some(arrow.field(i).data_type()) {
                return Err(FormatError::ShardMismatch {
                    path: path.to_path_buf(),
                    message: format!(
                        "column {c:?} is {} in the shard but the manifest implies {}",
                        arrow.field(i).data_type(),
                        want.map(|w| w.data_type().to_string()).unwrap_or_default()
                    ),
                });
            }
            roots.push(i);
        }
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots.iter().copied());
        let mut groups: Vec<usize> = (0..builder.metadata().num_row_groups()).collect();
        if let Some(r) = rng {
            groups.shuffle(r);
        }
        if !input.is_remote() {
            let reader = builder
                .with_projection(mask)
                .with_row_groups(groups)
                .with_batch_size(self.chunk_rows)
                .build()
                .map_err(|e| FormatError::parquet(path, e))?;
            return self.send_all(path, reader, tx).map(|_| ());
        }
        // A remote shard is read one row group at a time, the projected column chunks of the
        // next group being fetched while this one is decoded and sent.
        drop(builder);
        let pmeta = meta.metadata();
        let leaves: Vec<usize> = (0..pmeta.file_metadata().schema_descr().num_columns())
            .filter(|&c| {
                roots.contains(&pmeta.file_metadata().schema_descr().get_column_root_idx(c))
            })
            .collect();
        let ranges = |g: usize| -> Vec<Range<u64>> {
            let rg = pmeta.row_group(g);
            leaves
                .iter()
                .map(|&c| {
                    let (start, len) = rg.column(c).byte_range();
                    start..start + len
                })
                .collect()
        };
        let mut pending = match groups.first() {
            Some(&g) => input.fetch(ranges(g))?,
            None => None,
        };
        // Batches are cut to the same fixed sizes across row groups as the single local reader
        // cuts them, so a seeded shuffle gives the same order from a store as from disk.
        let mut carry: Vec<RecordBatch> = Vec::new();
        let mut carried = 0usize;
        for (i, &g) in groups.iter().enumerate() {
            input.hold(pending.take())?;
            if let Some(&next) = groups.get(i + 1) {
                pending = input.fetch(ranges(next))?;
            }
            let reader =
                ParquetRecordBatchReaderBuilder::new_with_metadata(input.clone(), meta.clone())
                    .with_projection(mask.clone())
                    .with_row_groups(vec![g])
                    .with_batch_size(self.chunk_rows)
                    .build()
                    .map_err(|e| FormatError::parquet(path, e))?;
            for b in reader {
                let b = b.map_err(|e| FormatError::parquet(path, e))?;
                carried += b.num_rows();
                carry.push(b);
                while carried >= self.chunk_rows {
                    let all = arrow_select::concat::concat_batches(&carry[0].schema(), &carry)
                        .map_err(|e| FormatError::parquet(path, e))?;
                    let rest = all.slice(self.chunk_rows, carried - self.chunk_rows);
                    carried = rest.num_rows();
                    carry = if carried > 0 { vec![rest] } else { Vec::new() };
                    if !self.send(path, all.slice(0, self.chunk_rows), tx)? {
                        return Ok(());
                    }
                }
            }
        }
        if carried > 0 {
            let all = arrow_select::concat::concat_batches(&carry[0].schema(), &carry)
                .map_err(|e| FormatError::parquet(path, e))?;
            self.send(path, all, tx)?;
        }
        Ok(())
    }

    /// The columns to read from the files: the asked-for ones, with coded top-k's
    /// `topk_coded` (and its context column) in place of `topk_ids` and `topk_values`.
    fn file_columns(&self) -> Vec<String> {
        let Some(t) = self.coding() else {
            return self.columns.clone();
        };
        let topk = [schema::TOPK_IDS, schema::TOPK_VALUES];
        let mut cols: Vec<String> = Vec::new();
        for c in &self.columns {
            let c = if topk.contains(&c.as_str()) {
                schema::TOPK_CODED
            } else {
                c.as_str()
            };
            if !cols.iter().any(|x| x == c) {
                cols.push(c.to_string());
            }
        }
        if let Some(ctx) = t.coding.as_ref().and_then(|c| c.context.as_ref())
            && cols.iter().any(|c| c == schema::TOPK_CODED)
            && !cols.contains(ctx)
        {
            cols.push(ctx.clone());
        }
        cols
    }

    fn coding(&self) -> Option<&crate::manifest::TargetSpec> {
        self.ds
            .manifest
            .targets
            .as_ref()
            .filter(|t| t.coding.is_some())
    }

    /// A batch as read from a file, with coded top-k decoded into the plain columns.
    fn plain(&self, b: RecordBatch) -> Result<RecordBatch> {
        let Some(t) = self.coding() else {
            return Ok(b);
        };
        if b.column_by_name(schema::TOPK_CODED).is_none() {
            return Ok(b);
        }
        let fields: Vec<arrow_schema::FieldRef> = self
            .expected
            .fields()
            .iter()
            .filter(|f| self.columns.contains(f.name()))
            .cloned()
            .collect();
        let out = std::sync::Arc::new(arrow_schema::Schema::new(fields));
        let mut slot = self.coder.borrow_mut();
        let coder = slot
            .get_or_insert_with(|| Box::new(crate::coded::BlockCoder::new(t.axis_size, t.max_k())));
        crate::coded::arrow::decode_batch(t, &b, &out, coder)
    }

    /// Filters to the row range and sends one batch; false when the receiver is gone.
    fn send(&self, path: &Path, b: RecordBatch, tx: &SyncSender<Chunk>) -> Result<bool> {
        let b = self.plain(b).map_err(|e| FormatError::InShard {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        self.rows.borrow_mut().see(path, &b)?;
        // The contract is checked here, where the shard is known, so the error names it.
        codec::decode(self.ds.manifest(), &b)
            .and_then(|rows| codec::check_rows(self.ds.manifest(), &rows))
            .map_err(|e| FormatError::InShard {
                path: path.to_path_buf(),
                source: Box::new(e),
            })?;
        let b = match &self.row_range {
            Some(r) => filter_range(path, &b, r)?,
            None => b,
        };
        Ok(tx.send(Ok(b)).is_ok())
    }

    /// Sends every batch of `reader`; false when the receiver is gone.
    fn send_all(
        &self,
        path: &Path,
        reader: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
        tx: &SyncSender<Chunk>,
    ) -> Result<bool> {
        for b in reader {
            let b = b.map_err(|e| FormatError::parquet(path, e))?;
            if !self.send(path, b, tx)? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Checks a shard's key/value metadata: known format version, this dataset's id.
pub fn check_shard_metadata(
    path: &Path,
    meta: &parquet::file::metadata::ParquetMetaData,
    dataset_id: &str,
) -> Result<()> {
    let kv = meta.file_metadata().key_value_metadata();
    let get = |k: &str| {
        kv.and_then(|kv| kv.iter().find(|e| e.key == k))
            .and_then(|e| e.value.clone())
    };
    let version = get(KV_VERSION).ok_or_else(|| FormatError::ShardMismatch {
        path: path.to_path_buf(),
        message: format!("not a logits shard: no {KV_VERSION} metadata"),
    })?;
    crate::manifest::check_version(path, &version)?;
    match get(KV_DATASET) {
        Some(id) if id == dataset_id => Ok(()),
        other => Err(FormatError::ShardMismatch {
            path: path.to_path_buf(),
            message: format!(
                "shard belongs to dataset {}, the manifest is for {dataset_id}",
                other.unwrap_or_else(|| "<none>".into())
            ),
        }),
    }
}

/// The `row_id` column of a batch read from `path`.
fn row_ids<'b>(path: &Path, b: &'b RecordBatch) -> Result<&'b arrow_array::UInt64Array> {
    b.column_by_name(schema::ROW_ID)
        .and_then(|c| c.as_primitive_opt::<UInt64Type>())
        .ok_or_else(|| FormatError::ShardMismatch {
            path: path.to_path_buf(),
            message: "row_id column missing or not uint64".into(),
        })
}

fn filter_range(path: &Path, b: &RecordBatch, r: &Range<u64>) -> Result<RecordBatch> {
    let ids = row_ids(path, b)?;
    let keep: BooleanArray = ids.iter().map(|v| v.map(|v| r.contains(&v))).collect();
    if keep.true_count() == ids.len() {
        return Ok(b.clone());
    }
    arrow_select::filter::filter_record_batch(b, &keep).map_err(|e| FormatError::parquet(path, e))
}
