//! The loader: dataset rows → training batches. It reads only the columns the chosen losses
//! need (a projection), shuffles with a seed, and lets the format library's background thread
//! prefetch; a dataset lacking a needed column is refused before training starts, naming the
//! column and the option that needs it.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;

use logits_format::manifest::{FeatureEncoding, Granularity};
use logits_format::rows::SampledEntries;
use logits_format::schema;
use logits_format::{Dataset, ReadOptions, RowBatch};
use ndarray::Array2;

use crate::error::{Result, StudentError};

/// What a run needs from the dataset.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Needs {
    /// Stored top-k targets (response losses, evaluation against the teacher).
    pub topk: bool,
    /// Sampled targets (RS-KD).
    pub sampled: bool,
    /// Labels (cross-entropy, accuracy).
    pub labels: bool,
    /// Teacher features by name.
    pub features: Vec<String>,
}

/// Top-k teacher targets of a batch, per row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TeacherRows {
    /// Row offsets into `ids`/`logits`.
    pub offsets: Vec<usize>,
    /// Kept ids.
    pub ids: Vec<u32>,
    /// Raw teacher logits of the kept ids.
    pub logits: Vec<f32>,
    /// logZ at T = 1, per row.
    pub logz: Vec<f32>,
    /// logZ at the dataset's extra temperatures, `rows × temps`.
    pub logz_temps: Vec<f32>,
    /// The dataset's extra temperatures.
    pub temps: Vec<f64>,
}

impl TeacherRows {
    /// Kept ids of row `r`.
    pub fn ids(&self, r: usize) -> &[u32] {
        &self.ids[self.offsets[r]..self.offsets[r + 1]]
    }

    /// logZ at temperature `t` for row `r`, when the dataset stored it.
    pub fn logz_at(&self, r: usize, t: f64) -> Option<f64> {
        if t == 1.0 {
            return Some(self.logz[r] as f64);
        }
        let i = self.temps.iter().position(|&x| x == t)?;
        Some(self.logz_temps[r * self.temps.len() + i] as f64)
    }

    /// Exact teacher log-probs at `t` of row `r`'s kept ids (None when logZ_t was not stored).
    pub fn logprobs(&self, r: usize, t: f64) -> Option<Vec<f64>> {
        let lz = self.logz_at(r, t)?;
        Some(
            self.logits[self.offsets[r]..self.offsets[r + 1]]
                .iter()
                .map(|&z| z as f64 / t - lz)
                .collect(),
        )
    }

    /// Log-probs at `t` of row `r`'s kept ids renormalised over those ids (always available).
    pub fn renormalised_logprobs(&self, r: usize, t: f64) -> Vec<f64> {
        let z = &self.logits[self.offsets[r]..self.offsets[r + 1]];
        let lz = logits_format::targets::logsumexp(z, t);
        z.iter().map(|&v| v as f64 / t - lz).collect()
    }
}

/// A training or evaluation batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Row ids.
    pub row_ids: Vec<u64>,
    /// Inputs, `rows × width`.
    pub x: Array2<f32>,
    /// Labels, when read.
    pub labels: Option<Vec<Option<i64>>>,
    /// Top-k targets, when read.
    pub teacher: Option<TeacherRows>,
    /// Sampled targets, when read.
    pub sampled: Option<SampledEntries>,
    /// Teacher features by name, `rows × width`.
    pub features: BTreeMap<String, Array2<f32>>,
}

impl Batch {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.row_ids.len()
    }

    /// True when the batch has no rows.
    pub fn is_empty(&self) -> bool {
        self.row_ids.is_empty()
    }
}

/// How a dataset row finds its corpus row when the dataset was built without its inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinBy {
    /// Row id = position in the corpus files (as `logits-build` numbered them); the row's
    /// stored input hash must match the corpus row's.
    RowId,
    /// The corpus row whose `sha256-v1` input hash equals the row's stored hash (the corpus
    /// may have been reordered or extended).
    Hash,
}

/// A corpus held outside the dataset (restricted data), joined to it for training. The chosen
/// input column is held in memory as f32 (rows × width); every row's `sha256-v1` hash is
/// computed as the builder computed it, so a row whose inputs differ is refused.
#[derive(Debug)]
pub struct Join {
    path: PathBuf,
    by: JoinBy,
    input: String,
    width: usize,
    values: Vec<f32>,
    hashes: Vec<[u8; 32]>,
    by_hash: std::collections::HashMap<[u8; 32], usize>,
}

impl Join {
    /// Reads `files` (the corpus the dataset was built from, or a copy of it) for `ds`; `input`
    /// names the model input the student reads (default: the only one).
    pub fn open(ds: &Dataset, files: &[PathBuf], input: Option<&str>, by: JoinBy) -> Result<Join> {
        use logits_format::corpus::{ColumnMap, Flat, TensorCorpus};
        let m = ds.manifest();
        let path = files.first().cloned().unwrap_or_default();
        let refuse = |what: String| StudentError::Dataset {
            dataset: ds.root().to_path_buf(),
            what,
        };
        if m.row_keys.input_hash.as_deref() != Some("sha256-v1") {
            return Err(refuse(
                "the dataset stores no sha256-v1 input hashes, so a corpus cannot be joined to it safely".into(),
            ));
        }
        // Inputs the build made from others (a transformer's token types from its ids) have no
        // corpus column and are not hashed.
        let derived = m.corpus.options.get("derived");
        let names: Vec<String> = m
            .teacher
            .inputs
            .iter()
            .map(|i| i.name.clone())
            .filter(|n| derived.and_then(|d| d.get(n)).is_none())
            .collect();
        // Hashed in the type the shards store it: as recorded, or by the format's rule.
        let stored: std::collections::HashMap<String, logits_format::manifest::DType> = m
            .teacher
            .inputs
            .iter()
            .map(|i| {
                let s = m
                    .inputs
                    .iter()
                    .find(|s| s.name == i.name)
                    .map_or(i.dtype.stored_for_input(), |s| s.stored);
                (i.name.clone(), s)
            })
            .collect();
        let input = match input {
            Some(n) if names.iter().any(|x| x == n) => n.to_string(),
            Some(n) => {
                return Err(refuse(format!(
                    "the teacher has no input {n:?} (inputs: {})",
                    names.join(", ")
                )));
            }
            None if names.len() == 1 => names[0].clone(),
            None => {
                return Err(refuse(format!(
                    "the teacher has several inputs ({}); choose one with --input",
                    names.join(", ")
                )));
            }
        };
        // The column mapping the build used, from the manifest.
        let mapping: Vec<(String, String)> = m.corpus.options["inputs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| Some((p[0].as_str()?.to_string(), p[1].as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let map = ColumnMap {
            inputs: mapping,
            label: None,
            id: None,
            ..Default::default()
        };
        let corpus = TensorCorpus::open(files, &names, &map)?;
        let mut values = Vec::new();
        let mut hashes = Vec::new();
        let mut width = None;
        let mut failure = None;
        corpus.read_each(0..corpus.rows(), 4096, |b| {
            let rows = b.row_ids.len();
            let mut parts: Vec<Vec<(String, Vec<u8>, usize)>> = vec![Vec::new(); rows];
            for name in &names {
                let Some((offsets, flat)) = b.inputs.get(name) else {
                    continue;
                };
                let len = match flat {
                    Flat::F32(v) => v.len(),
                    Flat::I64(v) => v.len(),
                };
                let want = stored
                    .get(name)
                    .copied()
                    .unwrap_or(logits_format::manifest::DType::Float32);
                let tv = match flat.to_stored(0..len, want) {
                    Ok(tv) => tv,
                    Err((at, v)) => {
                        let r = offsets.partition_point(|&o| o <= at).saturating_sub(1);
                        failure = Some((
                            b.row_ids[r],
                            format!(
                                "input {name:?}: {v} does not fit the dataset's stored type {}",
                                want.name()
                            ),
                        ));
                        return false;
                    }
                };
                for (r, part) in parts.iter_mut().enumerate() {
                    let range = offsets[r]..offsets[r + 1];
                    part.push((name.clone(), tv.le_bytes(range.clone()), range.len()));
                    if *name == input {
                        let w = *width.get_or_insert(range.len());
                        if w != range.len() {
                            failure = Some((
                                b.row_ids[r],
                                format!(
                                    "input {input:?} has {} values, earlier rows {w}",
                                    range.len()
                                ),
                            ));
                            return false;
                        }
                        values.extend(tv.to_f32(range));
                    }
                }
            }
            for part in parts {
                let refs: Vec<(&str, Vec<u8>, usize)> = part
                    .iter()
                    .map(|(n, b, l)| (n.as_str(), b.clone(), *l))
                    .collect();
                hashes.push(logits_format::rows::input_hash_v1(&refs));
            }
            true
        })?;
        if let Some((row, why)) = failure {
            return Err(StudentError::Join { path, row, why });
        }
        let by_hash = match by {
            JoinBy::Hash => hashes.iter().enumerate().map(|(i, h)| (*h, i)).collect(),
            JoinBy::RowId => Default::default(),
        };
        Ok(Join {
            path,
            by,
            input,
            width: width.unwrap_or(0),
            values,
            hashes,
            by_hash,
        })
    }

    /// The corpus row of dataset row `row_id` whose stored hash is `hash`, or the reason there
    /// is none.
    fn row(&self, row_id: u64, hash: &[u8; 32]) -> Result<usize> {
        let fail = |why: String| StudentError::Join {
            path: self.path.clone(),
            row: row_id,
            why,
        };
        match self.by {
            JoinBy::RowId => {
                let i = row_id as usize;
                let h = self.hashes.get(i).ok_or_else(|| {
                    fail(format!("the corpus has only {} rows", self.hashes.len()))
                })?;
                if h != hash {
                    return Err(fail(
                        "the corpus row's input hash differs from the one the teacher saw (a different or modified corpus); refusing it".into(),
                    ));
                }
                Ok(i)
            }
            JoinBy::Hash => self
                .by_hash
                .get(hash)
                .copied()
                .ok_or_else(|| fail("no corpus row has the input hash the teacher saw".into())),
        }
    }
}

/// Reads batches of one per-example dataset for a student.
#[derive(Debug)]
pub struct Loader<'a> {
    ds: &'a Dataset,
    /// The stored input the student reads.
    pub input: String,
    /// Values per row of that input.
    pub input_width: usize,
    /// Classes (the target axis, or the label count).
    pub classes: usize,
    needs: Needs,
    columns: Vec<String>,
    join: Option<std::sync::Arc<Join>>,
}

impl<'a> Loader<'a> {
    /// Like [`Loader::new`], for a dataset built without its inputs: they come from `join`.
    pub fn joined(ds: &'a Dataset, join: std::sync::Arc<Join>, needs: Needs) -> Result<Loader<'a>> {
        let mut l = Loader::with_input(ds, None, needs, Some(&join))?;
        l.join = Some(join);
        Ok(l)
    }

    /// Checks that `ds` has what `needs` asks for and prepares the column projection; `input`
    /// names the stored input (default: the only one).
    pub fn new(ds: &'a Dataset, input: Option<&str>, needs: Needs) -> Result<Loader<'a>> {
        Loader::with_input(ds, input, needs, None)
    }

    fn with_input(
        ds: &'a Dataset,
        input: Option<&str>,
        needs: Needs,
        join: Option<&Join>,
    ) -> Result<Loader<'a>> {
        let m = ds.manifest();
        let refuse = |what: String| StudentError::Dataset {
            dataset: ds.root().to_path_buf(),
            what,
        };
        let stored = |input: Option<&str>| -> Result<(String, u64, String)> {
            let spec = match input {
                Some(name) => m.inputs.iter().find(|i| i.name == name).ok_or_else(|| {
                    refuse(format!(
                        "no stored input named {name:?} (stored inputs: {})",
                        names(m.inputs.iter().map(|i| i.name.as_str()))
                    ))
                })?,
                None => match m.inputs.as_slice() {
                    [one] => one,
                    [] => {
                        return Err(refuse(
                        "the dataset stores no inputs (built with --no-inputs); join it with the corpus it was built from".into(),
                    ));
                    }
                    many => {
                        return Err(refuse(format!(
                            "the dataset stores several inputs ({}); choose one with --input",
                            names(many.iter().map(|i| i.name.as_str()))
                        )));
                    }
                },
            };
            let width: u64 = spec
                .shape
                .iter()
                .map(|d| match d {
                    logits_format::manifest::Dim::Fixed(n) => Some(*n),
                    logits_format::manifest::Dim::Named(_) => None,
                })
                .product::<Option<u64>>()
                .filter(|&w| w > 0)
                .ok_or_else(|| {
                    refuse(format!(
                        "input {:?} has a variable shape {:?}; the MLP student needs a fixed width",
                        spec.name, spec.shape
                    ))
                })?;
            Ok((spec.name.clone(), width, spec.column.clone()))
        };
        let (input_name, width, mut columns) = match join {
            Some(j) => (
                j.input.clone(),
                j.width as u64,
                vec![schema::INPUT_HASH.to_string()],
            ),
            None => {
                let (n, w, c) = stored(input)?;
                (n, w, vec![c])
            }
        };
        let classes;
        match &m.targets {
            Some(t) => {
                if t.granularity != Granularity::Example {
                    return Err(refuse(
                        "the targets are per position (a language-model dataset); the MLP student trains on per-example targets".into(),
                    ));
                }
                classes = t.axis_size as usize;
                columns.extend(target_columns(ds, t, &needs)?);
            }
            None => {
                if needs.topk || needs.sampled {
                    return Err(refuse(
                        "the dataset stores no teacher targets; only feature losses and cross-entropy can train from it".into(),
                    ));
                }
                classes = m.labels.as_ref().map_or(0, |l| l.num_classes as usize);
            }
        }
        if needs.labels {
            if m.labels.is_none() {
                return Err(refuse(
                    "the dataset has no labels (column label), needed by cross-entropy (loss.ce); build with --label-column or set loss.ce = 0".into(),
                ));
            }
            columns.push(schema::LABEL.into());
        }
        columns.extend(feature_columns(ds, &needs, Granularity::Example)?);
        columns.dedup();
        if classes == 0 {
            return Err(refuse(
                "neither targets nor labels say how many classes the student should output".into(),
            ));
        }
        Ok(Loader {
            ds,
            join: None,
            input: input_name,
            input_width: width as usize,
            classes,
            needs,
            columns,
        })
    }

    /// Streams the rows of `range` (all rows when None) in batches of `batch_size`, shuffled
    /// with `shuffle` when given.
    pub fn stream(
        &self,
        range: Option<Range<u64>>,
        batch_size: usize,
        shuffle: Option<u64>,
        shuffle_buffer: usize,
        prefetch: usize,
    ) -> Result<impl Iterator<Item = Result<Batch>> + '_> {
        let mut s = self.ds.stream(&ReadOptions {
            columns: Some(self.columns.clone()),
            batch_size,
            shuffle,
            shuffle_buffer,
            prefetch,
            row_range: range,
            part: None,
        })?;
        Ok(std::iter::from_fn(move || s.next_rows()).map(move |r| self.convert(r?)))
    }

    /// Decodes every row of `range` into one batch (evaluation, in-memory training).
    pub fn load(&self, range: Option<Range<u64>>) -> Result<Batch> {
        let mut parts = Vec::new();
        for b in self.stream(range, 4096, None, 0, 2)? {
            parts.push(b?);
        }
        Ok(concat(parts, self.input_width))
    }

    fn convert(&self, rb: RowBatch) -> Result<Batch> {
        let root = || self.ds.root().to_path_buf();
        let rows = rb.len();
        let mut x = Array2::<f32>::zeros((rows, self.input_width));
        if let Some(j) = &self.join {
            let hashes = rb
                .input_hashes
                .as_ref()
                .ok_or_else(|| StudentError::Dataset {
                    dataset: root(),
                    what: "input_hash was not read".into(),
                })?;
            for (r, mut row) in x.rows_mut().into_iter().enumerate() {
                let i = j.row(rb.row_ids[r], &hashes[r])?;
                let w = self.input_width;
                row.assign(&ndarray::ArrayView1::from(&j.values[i * w..(i + 1) * w]));
            }
            return self.finish(rb, x);
        }
        let iv = rb
            .inputs
            .get(&self.input)
            .ok_or_else(|| StudentError::Dataset {
                dataset: root(),
                what: format!("input {:?} was not read", self.input),
            })?;
        for (r, mut row) in x.rows_mut().into_iter().enumerate() {
            let range = iv.offsets[r]..iv.offsets[r + 1];
            if range.len() != self.input_width {
                return Err(StudentError::Dataset {
                    dataset: root(),
                    what: format!(
                        "row {}: input {:?} has {} values, expected {}",
                        rb.row_ids[r],
                        self.input,
                        range.len(),
                        self.input_width
                    ),
                });
            }
            for (d, v) in row.iter_mut().zip(iv.values.to_f32(range)) {
                *d = v;
            }
        }
        self.finish(rb, x)
    }

    fn finish(&self, rb: RowBatch, x: Array2<f32>) -> Result<Batch> {
        let rows = rb.len();
        let (teacher, sampled) = split_targets(self.ds, rb.targets, &self.needs);
        let features = feature_matrices(self.ds, &rb.features, &self.needs, rows)?;
        Ok(Batch {
            row_ids: rb.row_ids,
            x,
            labels: rb.labels,
            teacher,
            sampled,
            features,
        })
    }

    /// The dataset directory.
    pub fn root(&self) -> PathBuf {
        self.ds.root().to_path_buf()
    }
}

/// A batch's decoded targets as the losses take them: top-k rows (with the dataset's
/// temperatures) and sampled entries, each only when `needs` asks for it.
pub(crate) fn split_targets(
    ds: &Dataset,
    targets: Option<logits_format::rows::Targets>,
    needs: &Needs,
) -> (Option<TeacherRows>, Option<SampledEntries>) {
    let Some(t) = targets else {
        return (None, None);
    };
    let temps = ds
        .manifest()
        .targets
        .as_ref()
        .map_or(Vec::new(), |s| s.temperatures.clone());
    let (logz, logz_temps) = (t.logz, t.logz_temps);
    (
        t.topk.filter(|_| needs.topk).map(|k| TeacherRows {
            offsets: k.offsets,
            ids: k.ids,
            logits: k.logits,
            logz,
            logz_temps,
            temps,
        }),
        t.sampled.filter(|_| needs.sampled),
    )
}

/// The teacher features `needs` asks for, as `rows × width` matrices (rows: examples or
/// positions).
pub(crate) fn feature_matrices(
    ds: &Dataset,
    features: &BTreeMap<String, logits_format::rows::FeatureValues>,
    needs: &Needs,
    rows: usize,
) -> Result<BTreeMap<String, Array2<f32>>> {
    let bad = |what: String| StudentError::Dataset {
        dataset: ds.root().to_path_buf(),
        what,
    };
    let mut out = BTreeMap::new();
    for name in &needs.features {
        let f = features
            .get(name)
            .ok_or_else(|| bad(format!("feature {name:?} was not read")))?;
        let width = f.values.len() / rows.max(1);
        let a = Array2::from_shape_vec((rows, width), f.values.clone())
            .map_err(|e| bad(format!("feature {name:?}: {e}")))?;
        out.insert(name.clone(), a);
    }
    Ok(out)
}

/// The target columns `needs` asks for, refusing a dataset that lacks them.
pub(crate) fn target_columns(
    ds: &Dataset,
    t: &logits_format::manifest::TargetSpec,
    needs: &Needs,
) -> Result<Vec<String>> {
    let refuse = |what: &str| StudentError::Dataset {
        dataset: ds.root().to_path_buf(),
        what: what.to_string(),
    };
    let mut columns = Vec::new();
    if needs.topk {
        if t.topk.is_none() {
            return Err(refuse(
                "the dataset has no top-k targets (column topk_ids), needed by the response loss (loss.kd) and by evaluation against the teacher",
            ));
        }
        columns.extend([schema::TOPK_IDS, schema::TOPK_VALUES, schema::LOGZ].map(String::from));
        // int8, and f16/bf16 from format 1.1, decode against the stored exact tail.
        if t.has_logtail() {
            columns.push(schema::TOPK_LOGTAIL.into());
        }
        if !t.temperatures.is_empty() {
            columns.push(schema::LOGZ_TEMPS.into());
        }
    }
    if needs.sampled {
        if t.sampled.is_none() {
            return Err(refuse(
                "the dataset has no sampled targets (column sample_ids), needed by loss.sampled; build with --sample N",
            ));
        }
        columns.extend([schema::SAMPLE_IDS, schema::SAMPLE_COUNTS, schema::LOGZ].map(String::from));
    }
    Ok(columns)
}

/// The feature columns `needs` asks for, refusing unknown features or ones of the wrong
/// granularity for the student.
pub(crate) fn feature_columns(
    ds: &Dataset,
    needs: &Needs,
    want: Granularity,
) -> Result<Vec<String>> {
    let m = ds.manifest();
    let refuse = |what: String| StudentError::Dataset {
        dataset: ds.root().to_path_buf(),
        what,
    };
    let mut columns = Vec::new();
    for f in &needs.features {
        let spec = m.features.iter().find(|s| &s.name == f).ok_or_else(|| {
            refuse(format!(
                "no teacher feature named {f:?} (stored features: {}), needed by a feature loss",
                names(m.features.iter().map(|s| s.name.as_str()))
            ))
        })?;
        if spec.granularity != want {
            return Err(refuse(match want {
                Granularity::Example => format!(
                    "feature {f:?} is per position; the MLP student needs per-example features"
                ),
                Granularity::Position => format!(
                    "feature {f:?} is pooled per window; hidden-state distillation needs it per token"
                ),
            }));
        }
        columns.push(spec.column.clone());
        if spec.encoding == FeatureEncoding::Int8 {
            columns.push(schema::scale_column(spec));
        }
    }
    Ok(columns)
}

fn names<'s>(it: impl Iterator<Item = &'s str>) -> String {
    let v: Vec<&str> = it.collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Concatenates batches (rows in order).
pub fn concat(parts: Vec<Batch>, width: usize) -> Batch {
    let rows: usize = parts.iter().map(Batch::len).sum();
    let mut out = Batch {
        row_ids: Vec::with_capacity(rows),
        x: Array2::zeros((0, width)),
        labels: parts
            .first()
            .and_then(|p| p.labels.as_ref())
            .map(|_| Vec::new()),
        teacher: parts
            .first()
            .and_then(|p| p.teacher.as_ref())
            .map(|t| TeacherRows {
                offsets: vec![0],
                temps: t.temps.clone(),
                ..Default::default()
            }),
        sampled: parts
            .first()
            .and_then(|p| p.sampled.as_ref())
            .map(|_| SampledEntries {
                offsets: vec![0],
                ..Default::default()
            }),
        features: BTreeMap::new(),
    };
    let mut xs = Vec::new();
    let mut feats: BTreeMap<String, Vec<Array2<f32>>> = BTreeMap::new();
    for p in parts {
        out.row_ids.extend(&p.row_ids);
        xs.push(p.x);
        if let (Some(a), Some(b)) = (out.labels.as_mut(), p.labels) {
            a.extend(b);
        }
        if let (Some(a), Some(b)) = (out.teacher.as_mut(), p.teacher) {
            let base = a.ids.len();
            a.offsets.extend(b.offsets[1..].iter().map(|o| o + base));
            a.ids.extend(b.ids);
            a.logits.extend(b.logits);
            a.logz.extend(b.logz);
            a.logz_temps.extend(b.logz_temps);
        }
        if let (Some(a), Some(b)) = (out.sampled.as_mut(), p.sampled) {
            let base = a.ids.len();
            a.offsets.extend(b.offsets[1..].iter().map(|o| o + base));
            a.ids.extend(b.ids);
            a.counts.extend(b.counts);
        }
        for (k, v) in p.features {
            feats.entry(k).or_default().push(v);
        }
    }
    let views: Vec<_> = xs.iter().map(|a| a.view()).collect();
    if !views.is_empty()
        && let Ok(x) = ndarray::concatenate(ndarray::Axis(0), &views)
    {
        out.x = x;
    }
    for (k, v) in feats {
        let views: Vec<_> = v.iter().map(|a| a.view()).collect();
        if let Ok(a) = ndarray::concatenate(ndarray::Axis(0), &views) {
            out.features.insert(k, a);
        }
    }
    out
}
