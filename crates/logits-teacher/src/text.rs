//! Text corpora: JSONL (a text field per line), plain text (one document per non-empty line)
//! or a Parquet string column, tokenized with a Hugging Face `tokenizer.json` through the
//! `tokenizers` crate, with the tokenizer's own special tokens (BOS/EOS as its post-processor
//! defines them), cut into windows of `window` tokens every `stride` tokens. Each window is a
//! row; row ids number the windows in corpus order.
//!
//! A first pass records where each document starts and how many windows it gives (16 bytes per
//! document), so rows can be read by range later without holding tokens in memory.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

use crate::error::{Result, TeacherError};

/// Where documents come from.
#[derive(Debug, Clone)]
pub enum TextSource {
    /// JSON Lines with the text in `field`.
    Jsonl {
        /// The file.
        path: PathBuf,
        /// The text field.
        field: String,
        /// The document-id field (string or integer), kept as each window's `user_id`.
        id: Option<String>,
    },
    /// Plain text, one document per non-empty line.
    Plain {
        /// The file.
        path: PathBuf,
    },
    /// A string column of a Parquet file.
    Parquet {
        /// The file.
        path: PathBuf,
        /// The column.
        column: String,
        /// The document-id column (string or integer), kept as each window's `user_id`.
        id: Option<String>,
    },
}

impl TextSource {
    /// The file.
    pub fn path(&self) -> &Path {
        match self {
            TextSource::Jsonl { path, .. }
            | TextSource::Plain { path }
            | TextSource::Parquet { path, .. } => path,
        }
    }

    /// Picks the kind from the extension: `.jsonl`/`.json` → JSONL (field `field`), `.parquet`
    /// → Parquet (column `field`), anything else → plain text.
    pub fn guess(path: &Path, field: &str) -> TextSource {
        match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl" | "json" | "ndjson") => TextSource::Jsonl {
                path: path.into(),
                field: field.into(),
                id: None,
            },
            Some("parquet") => TextSource::Parquet {
                path: path.into(),
                column: field.into(),
                id: None,
            },
            _ => TextSource::Plain { path: path.into() },
        }
    }

    /// The same source, with each document's id read from field or column `id`.
    pub fn with_id(self, id: Option<String>) -> TextSource {
        match self {
            TextSource::Jsonl { path, field, .. } => TextSource::Jsonl { path, field, id },
            TextSource::Parquet { path, column, .. } => TextSource::Parquet { path, column, id },
            plain => plain,
        }
    }

    /// The id field or column, if any.
    fn id(&self) -> Option<&str> {
        match self {
            TextSource::Jsonl { id, .. } | TextSource::Parquet { id, .. } => id.as_deref(),
            TextSource::Plain { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct DocRef {
    source: u32,
    /// Byte offset of the line (JSONL, plain) or row index (Parquet).
    at: u64,
    windows: u32,
}

/// One window of tokens.
#[derive(Debug, Clone)]
pub struct Window {
    /// Row id.
    pub row_id: u64,
    /// The tokens (real tokens only; padding is added when batching).
    pub ids: Vec<u32>,
    /// The document's id, when the corpus has an id field or column.
    pub doc_id: Option<String>,
}

/// A tokenized, windowed text corpus.
pub struct TextCorpus {
    sources: Vec<TextSource>,
    tokenizer: Tokenizer,
    pad: u32,
    tokenizer_path: PathBuf,
    window: usize,
    stride: usize,
    docs: Vec<DocRef>,
    /// Prefix sums of windows per document (len docs + 1).
    starts: Vec<u64>,
}

impl std::fmt::Debug for TextCorpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextCorpus")
            .field("docs", &self.docs.len())
            .field("rows", &self.rows())
            .finish()
    }
}

fn err(path: &Path, message: impl Into<String>) -> TeacherError {
    TeacherError::Corpus {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Number of windows a document of `n` tokens gives.
pub fn window_count(n: usize, window: usize, stride: usize) -> usize {
    if n == 0 {
        0
    } else if n <= window {
        1
    } else {
        (n - window).div_ceil(stride) + 1
    }
}

impl TextCorpus {
    /// Loads the tokenizer and indexes the documents.
    pub fn open(
        sources: &[TextSource],
        id: Option<&str>,
        tokenizer: &Path,
        window: usize,
        stride: usize,
    ) -> Result<TextCorpus> {
        if window == 0 || stride == 0 || stride > window {
            return Err(TeacherError::Options(format!(
                "window ({window}) and stride ({stride}) must satisfy 0 < stride <= window"
            )));
        }
        if sources.is_empty() {
            return Err(TeacherError::Options("no corpus file given".into()));
        }
        if let Some(wanted) = id {
            for s in sources {
                if let TextSource::Plain { path } = s {
                    return Err(err(
                        path,
                        format!(
                            "--id-column {wanted}: plain text has no id field; give the corpus as JSONL or Parquet"
                        ),
                    ));
                }
            }
        }
        let sources: Vec<TextSource> = sources
            .iter()
            .cloned()
            .map(|s| s.with_id(id.map(str::to_string)))
            .collect();
        let mut tok = Tokenizer::from_file(tokenizer)
            .map_err(|e| err(tokenizer, format!("cannot read the tokenizer: {e}")))?;
        // Windows are cut from whole documents: padding is ours to add per batch, and the
        // tokenizer's own truncation would drop text.
        let pad = tok.get_padding().map(|p| p.pad_id).unwrap_or(0);
        tok.with_padding(None);
        tok.with_truncation(None)
            .map_err(|e| err(tokenizer, e.to_string()))?;
        let mut docs = Vec::new();
        let mut starts = vec![0u64];
        for (si, s) in sources.iter().enumerate() {
            let mut chunk: Vec<(u64, String)> = Vec::new();
            read_docs(s, 0, u64::MAX, &mut |at, text, _| {
                chunk.push((at, text.to_string()));
                if chunk.len() >= 1024 {
                    index(
                        &tok,
                        s,
                        si as u32,
                        &mut chunk,
                        window,
                        stride,
                        &mut docs,
                        &mut starts,
                    )?;
                }
                Ok(true)
            })?;
            index(
                &tok,
                s,
                si as u32,
                &mut chunk,
                window,
                stride,
                &mut docs,
                &mut starts,
            )?;
        }
        Ok(TextCorpus {
            sources,
            tokenizer: tok,
            pad,
            tokenizer_path: tokenizer.to_path_buf(),
            window,
            stride,
            docs,
            starts,
        })
    }

    /// Rows (windows) in the corpus.
    pub fn rows(&self) -> u64 {
        *self.starts.last().unwrap_or(&0)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The padding id: the tokenizer's padding token if it has one, else 0.
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// The `tokenizer.json` this corpus was tokenized with.
    pub fn tokenizer_path(&self) -> &std::path::Path {
        &self.tokenizer_path
    }

    /// The tokenizer manifest entry (file name, sha256, vocabulary size).
    pub fn tokenizer_entry(&self) -> Result<logits_format::manifest::Tokenizer> {
        let (_, sha) = logits_format::writer::file_sha256(&self.tokenizer_path)?;
        Ok(logits_format::manifest::Tokenizer {
            file: self
                .tokenizer_path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            sha256: sha,
            vocab_size: self.vocab_size() as u64,
        })
    }

    /// sha256 and size of each source, and a fingerprint over them, the tokenizer and the
    /// window options.
    pub fn fingerprint(&self) -> Result<(Vec<logits_format::manifest::Source>, String)> {
        let mut sources = Vec::new();
        let mut h = Sha256::new();
        for s in &self.sources {
            let (bytes, sha) = logits_format::writer::file_sha256(s.path())?;
            h.update(sha.as_bytes());
            sources.push(logits_format::manifest::Source {
                path: s.path().display().to_string(),
                sha256: Some(sha),
                bytes: Some(bytes),
            });
        }
        h.update(self.tokenizer_entry()?.sha256.as_bytes());
        // Kinds and fields, not paths: a corpus fetched from a store into a local cache is the
        // same corpus wherever the cache is (the content is in the sha256s above).
        let kinds: Vec<String> = self
            .sources
            .iter()
            .map(|s| match s {
                TextSource::Jsonl { field, .. } => format!("jsonl:{field}"),
                TextSource::Plain { .. } => "plain".into(),
                TextSource::Parquet { column, .. } => format!("parquet:{column}"),
            } + &s.id().map(|i| format!(":id={i}")).unwrap_or_default())
            .collect();
        h.update(format!("{}|{}|{:?}", self.window, self.stride, kinds).as_bytes());
        Ok((sources, crate::teacher::hex(&h.finalize())))
    }

    /// Reads windows with row ids in `range`, `batch` at a time, handing each batch to `each`
    /// (false stops). Only the documents concerned are read and tokenized.
    pub fn read_each(
        &self,
        range: Range<u64>,
        batch: usize,
        mut each: impl FnMut(Vec<Window>) -> bool,
    ) -> Result<()> {
        let first = self
            .starts
            .partition_point(|&s| s <= range.start)
            .saturating_sub(1);
        let mut out: Vec<Window> = Vec::new();
        let mut d = first;
        while d < self.docs.len() && self.starts[d] < range.end {
            let doc = self.docs[d];
            let src = &self.sources[doc.source as usize];
            let mut text = None;
            let mut doc_id = None;
            read_docs(src, doc.at, 1, &mut |_, t, id| {
                text = Some(t.to_string());
                doc_id = id;
                Ok(false)
            })?;
            let text = text.ok_or_else(|| {
                err(
                    src.path(),
                    format!(
                        "document at {} vanished (file changed during the build?)",
                        doc.at
                    ),
                )
            })?;
            let enc = self
                .tokenizer
                .encode(text, true)
                .map_err(|e| err(src.path(), format!("tokenizing: {e}")))?;
            let ids = enc.get_ids();
            for w in 0..doc.windows as usize {
                let row = self.starts[d] + w as u64;
                if row < range.start || row >= range.end {
                    continue;
                }
                let lo = w * self.stride;
                let hi = (lo + self.window).min(ids.len());
                let slice = ids.get(lo..hi).ok_or_else(|| err(src.path(), format!("document at {} tokenizes differently than when indexed (file changed during the build?)", doc.at)))?;
                out.push(Window {
                    row_id: row,
                    ids: slice.to_vec(),
                    doc_id: doc_id.clone(),
                });
                if out.len() == batch && !each(std::mem::take(&mut out)) {
                    return Ok(());
                }
            }
            d += 1;
        }
        if !out.is_empty() {
            each(out);
        }
        Ok(())
    }
}

/// Tokenizes a chunk of documents and records their window counts.
#[allow(clippy::too_many_arguments)]
fn index(
    tok: &Tokenizer,
    src: &TextSource,
    source: u32,
    chunk: &mut Vec<(u64, String)>,
    window: usize,
    stride: usize,
    docs: &mut Vec<DocRef>,
    starts: &mut Vec<u64>,
) -> Result<()> {
    if chunk.is_empty() {
        return Ok(());
    }
    let texts: Vec<&str> = chunk.iter().map(|(_, t)| t.as_str()).collect();
    let enc = tok
        .encode_batch(texts, true)
        .map_err(|e| err(src.path(), format!("tokenizing: {e}")))?;
    for ((at, _), e) in chunk.iter().zip(enc) {
        let w = window_count(e.get_ids().len(), window, stride) as u32;
        docs.push(DocRef {
            source,
            at: *at,
            windows: w,
        });
        let last = *starts.last().unwrap_or(&0);
        starts.push(last + w as u64);
    }
    chunk.clear();
    Ok(())
}

/// "line N" for the line starting at byte `start` of `path` (counted only when an error is
/// reported, since documents are read from byte offsets).
fn line_at(path: &Path, start: u64) -> String {
    let n = File::open(path).ok().and_then(|f| {
        let mut lines = 1u64;
        let mut buf = [0u8; 1 << 16];
        let mut r = std::io::Read::take(f, start);
        loop {
            match std::io::Read::read(&mut r, &mut buf) {
                Ok(0) => return Some(lines),
                Ok(k) => lines += buf[..k].iter().filter(|&&b| b == b'\n').count() as u64,
                Err(_) => return None,
            }
        }
    });
    match n {
        Some(n) => format!("line {n}"),
        None => format!("the line at byte {start}"),
    }
}

/// What `read_docs` calls for each document: (offset or row, text, id) → go on?
type EachDoc<'a> = dyn FnMut(u64, &str, Option<String>) -> Result<bool> + 'a;

/// A document id as text: a string as it is, a number in decimal.
fn id_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Reads documents of a source starting at `at` (byte offset or row), at most `limit`, calling
/// `each(at, text, id)` until it returns false.
fn read_docs(s: &TextSource, at: u64, limit: u64, each: &mut EachDoc<'_>) -> Result<()> {
    let path = s.path();
    match s {
        TextSource::Jsonl { .. } | TextSource::Plain { .. } => {
            let mut f = File::open(path).map_err(|e| err(path, format!("cannot open: {e}")))?;
            f.seek(SeekFrom::Start(at))
                .map_err(|e| err(path, e.to_string()))?;
            let mut r = BufReader::new(f);
            let mut pos = at;
            let mut line = String::new();
            let mut n = 0u64;
            loop {
                line.clear();
                let got = r
                    .read_line(&mut line)
                    .map_err(|e| err(path, format!("byte {pos}: {e}")))?;
                if got == 0 {
                    return Ok(());
                }
                let start = pos;
                pos += got as u64;
                let trimmed = line.trim_end_matches(['\n', '\r']);
                if trimmed.trim().is_empty() {
                    continue;
                }
                let (text, doc_id) = if let TextSource::Jsonl { field, id, .. } = s {
                    let v: serde_json::Value = serde_json::from_str(trimmed).map_err(|e| {
                        err(path, format!("{}: not JSON: {e}", line_at(path, start)))
                    })?;
                    let text = match v.get(field).and_then(|t| t.as_str()) {
                        Some(t) => t.to_string(),
                        None => {
                            return Err(err(
                                path,
                                format!("{}: no string field {field:?}", line_at(path, start)),
                            ));
                        }
                    };
                    let doc_id = match id {
                        None => None,
                        Some(f) => Some(v.get(f).and_then(id_text).ok_or_else(|| {
                            err(
                                path,
                                format!(
                                    "{}: no string or integer id field {f:?} (--id-column)",
                                    line_at(path, start)
                                ),
                            )
                        })?),
                    };
                    (text, doc_id)
                } else {
                    (trimmed.to_string(), None)
                };
                if !each(start, &text, doc_id)? {
                    return Ok(());
                }
                n += 1;
                if n >= limit {
                    return Ok(());
                }
            }
        }
        TextSource::Parquet { column, id, .. } => {
            let f = File::open(path).map_err(|e| err(path, format!("cannot open: {e}")))?;
            let b = ParquetRecordBatchReaderBuilder::try_new(f)
                .map_err(|e| err(path, format!("not a readable Parquet file: {e}")))?;
            let idx = b
                .schema()
                .index_of(column)
                .map_err(|_| err(path, format!("no column {column:?}")))?;
            let id_idx = match id {
                None => None,
                Some(c) => Some(
                    b.schema()
                        .index_of(c)
                        .map_err(|_| err(path, format!("no id column {c:?} (--id-column)")))?,
                ),
            };
            let roots: Vec<usize> = std::iter::once(idx).chain(id_idx).collect();
            let mask = parquet::arrow::ProjectionMask::roots(b.parquet_schema(), roots);
            let reader = b
                .with_projection(mask)
                .with_offset(at as usize)
                .with_batch_size(1024)
                .build()
                .map_err(|e| err(path, e.to_string()))?;
            let mut row = at;
            let mut n = 0u64;
            let mut reader = reader;
            loop {
                // A damaged page can make the Parquet library panic: an error naming the file.
                let Some(rb) = logits_format::reader::catch_panics(|| reader.next())
                    .map_err(|p| err(path, format!("the file is damaged ({p})")))?
                else {
                    break;
                };
                let rb = rb.map_err(|e| err(path, e.to_string()))?;
                let c = rb
                    .column_by_name(column)
                    .ok_or_else(|| err(path, format!("no column {column:?}")))?;
                let ids: Option<Vec<Option<String>>> = match id {
                    None => None,
                    Some(name) => {
                        let a = rb
                            .column_by_name(name)
                            .ok_or_else(|| err(path, format!("no id column {name:?}")))?;
                        Some(logits_format::corpus::id_strings(a).ok_or_else(|| {
                            err(
                                path,
                                format!(
                                    "id column {name:?} is {}, expected strings or integers",
                                    a.data_type()
                                ),
                            )
                        })?)
                    }
                };
                let strings: Vec<Option<String>> = match c.data_type() {
                    arrow_schema::DataType::Utf8 => c
                        .as_string::<i32>()
                        .iter()
                        .map(|x| x.map(str::to_string))
                        .collect(),
                    arrow_schema::DataType::LargeUtf8 => c
                        .as_string::<i64>()
                        .iter()
                        .map(|x| x.map(str::to_string))
                        .collect(),
                    t => {
                        return Err(err(
                            path,
                            format!("column {column:?} is {t}, expected strings"),
                        ));
                    }
                };
                for (i, s) in strings.into_iter().enumerate() {
                    let here = row;
                    row += 1;
                    let Some(s) = s else { continue };
                    if s.trim().is_empty() {
                        continue;
                    }
                    let doc_id = match &ids {
                        None => None,
                        Some(v) => Some(v[i].clone().ok_or_else(|| {
                            err(path, format!("row {here}: the id column holds a null"))
                        })?),
                    };
                    if !each(here, &s, doc_id)? {
                        return Ok(());
                    }
                    n += 1;
                    if n >= limit {
                        return Ok(());
                    }
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::window_count;

    #[test]
    fn windows_cover_documents() {
        assert_eq!(window_count(0, 8, 4), 0);
        assert_eq!(window_count(5, 8, 4), 1);
        assert_eq!(window_count(8, 8, 4), 1);
        assert_eq!(window_count(9, 8, 4), 2);
        assert_eq!(window_count(12, 8, 4), 2);
        assert_eq!(window_count(13, 8, 4), 3);
        assert_eq!(window_count(16, 8, 8), 2);
    }
}
