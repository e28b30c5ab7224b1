//! The loader: dataset rows → training batches. It reads only the columns the chosen losses
//! need (a projection), shuffles with a seed, and lets the format library's background thread
//! prefetch; a dataset lacking a needed column is refused before training starts, naming the
//! column and the option that needs it.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;

use logits_format::manifest::{FeatureEncoding, Granularity, ValueEncoding};
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
}

impl<'a> Loader<'a> {
    /// Checks that `ds` has what `needs` asks for and prepares the column projection; `input`
    /// names the stored input (default: the only one).
    pub fn new(ds: &'a Dataset, input: Option<&str>, needs: Needs) -> Result<Loader<'a>> {
        let m = ds.manifest();
        let refuse = |what: String| StudentError::Dataset {
            dataset: ds.root().to_path_buf(),
            what,
        };
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
        let mut columns = vec![spec.column.clone()];
        let classes;
        match &m.targets {
            Some(t) => {
                if t.granularity != Granularity::Example {
                    return Err(refuse(
                        "the targets are per position (a language-model dataset); the MLP student trains on per-example targets".into(),
                    ));
                }
                classes = t.axis_size as usize;
                if needs.topk {
                    if t.topk.is_none() {
                        return Err(refuse(
                            "the dataset has no top-k targets (column topk_ids), needed by the response loss (loss.kd) and by evaluation against the teacher".into(),
                        ));
                    }
                    columns.extend(
                        [schema::TOPK_IDS, schema::TOPK_VALUES, schema::LOGZ].map(String::from),
                    );
                    if t.values == ValueEncoding::Int8 {
                        columns.push(schema::TOPK_LOGTAIL.into());
                    }
                    if !t.temperatures.is_empty() {
                        columns.push(schema::LOGZ_TEMPS.into());
                    }
                }
                if needs.sampled {
                    if t.sampled.is_none() {
                        return Err(refuse(
                            "the dataset has no sampled targets (column sample_ids), needed by loss.sampled; build with --sample N".into(),
                        ));
                    }
                    columns.extend(
                        [schema::SAMPLE_IDS, schema::SAMPLE_COUNTS, schema::LOGZ].map(String::from),
                    );
                }
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
        for f in &needs.features {
            let spec = m.features.iter().find(|s| &s.name == f).ok_or_else(|| {
                refuse(format!(
                    "no teacher feature named {f:?} (stored features: {}), needed by a feature loss",
                    names(m.features.iter().map(|s| s.name.as_str()))
                ))
            })?;
            if spec.granularity != Granularity::Example {
                return Err(refuse(format!(
                    "feature {f:?} is per position; the MLP student needs per-example features"
                )));
            }
            columns.push(spec.column.clone());
            if spec.encoding == FeatureEncoding::Int8 {
                columns.push(schema::scale_column(spec));
            }
        }
        columns.dedup();
        if classes == 0 {
            return Err(refuse(
                "neither targets nor labels say how many classes the student should output".into(),
            ));
        }
        Ok(Loader {
            ds,
            input: spec.name.clone(),
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
        let iv = rb
            .inputs
            .get(&self.input)
            .ok_or_else(|| StudentError::Dataset {
                dataset: root(),
                what: format!("input {:?} was not read", self.input),
            })?;
        let mut x = Array2::<f32>::zeros((rows, self.input_width));
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
        let temps: Vec<f64> = self
            .ds
            .manifest()
            .targets
            .as_ref()
            .map_or(Vec::new(), |t| t.temperatures.clone());
        let (teacher, sampled) = match rb.targets {
            Some(t) => (
                t.topk.filter(|_| self.needs.topk).map(|k| TeacherRows {
                    offsets: k.offsets,
                    ids: k.ids,
                    logits: k.logits,
                    logz: t.logz.clone(),
                    logz_temps: t.logz_temps.clone(),
                    temps: temps.clone(),
                }),
                t.sampled.filter(|_| self.needs.sampled),
            ),
            None => (None, None),
        };
        let mut features = BTreeMap::new();
        for name in &self.needs.features {
            let f = rb.features.get(name).ok_or_else(|| StudentError::Dataset {
                dataset: root(),
                what: format!("feature {name:?} was not read"),
            })?;
            let width = f.values.len() / rows.max(1);
            let a = Array2::from_shape_vec((rows, width), f.values.clone()).map_err(|e| {
                StudentError::Dataset {
                    dataset: root(),
                    what: format!("feature {name:?}: {e}"),
                }
            })?;
            features.insert(name.clone(), a);
        }
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
