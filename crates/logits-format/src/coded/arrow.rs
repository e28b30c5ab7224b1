//! Between Arrow batches and coded rows: the writer turns a batch in the plain int8 layout
//! (`topk_ids`, `topk_values`) into the file layout (`topk_coded`), the reader turns it back.
//! Rows pass through a shard's [`BlockCoder`] in file order.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Int8Type, Int32Type, Int64Type, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, BinaryArray, RecordBatch, UInt8Array};
use arrow_schema::{DataType, SchemaRef};

use super::{BlockCoder, PlainRow};
use crate::codec::{ids_array, list_array, per_row};
use crate::error::{FormatError, Result};
use crate::manifest::{Granularity, TargetSpec};
use crate::schema;

fn bad(column: &str, message: impl Into<String>) -> FormatError {
    FormatError::InvalidBatch {
        column: column.to_string(),
        message: message.into(),
    }
}

fn column<'b>(b: &'b RecordBatch, name: &str) -> Result<&'b ArrayRef> {
    b.column_by_name(name)
        .ok_or_else(|| bad(name, "the column is missing from the batch"))
}

/// Offsets rows → positions and positions → entries (both from 0), and the flat entries, of a
/// per-row (example) or per-row-per-position (position) list column.
fn flatten(
    col: &ArrayRef,
    g: Granularity,
    name: &str,
) -> Result<(Vec<usize>, Vec<usize>, ArrayRef)> {
    let outer = col
        .as_list_opt::<i32>()
        .ok_or_else(|| bad(name, "expected a list column"))?;
    let o = outer.value_offsets();
    let (first, last) = (o[0] as usize, o[o.len() - 1] as usize);
    let rows: Vec<usize> = o.iter().map(|&x| x as usize - first).collect();
    match g {
        Granularity::Example => {
            let values = outer.values().slice(first, last - first);
            let positions: Vec<usize> = (0..o.len()).collect();
            Ok((positions, rows, values))
        }
        Granularity::Position => {
            let inner = outer
                .values()
                .as_list_opt::<i32>()
                .ok_or_else(|| bad(name, "expected a list of lists"))?;
            let io = &inner.value_offsets()[first..=last];
            let (a, e) = (io[0] as usize, io[io.len() - 1] as usize);
            let entries: Vec<usize> = io.iter().map(|&x| x as usize - a).collect();
            Ok((rows, entries, inner.values().slice(a, e - a)))
        }
    }
}

/// Integer values as u32 (ids, steps and token contexts are all non-negative and < 2^32).
fn as_u32(a: &ArrayRef, name: &str) -> Result<Vec<u32>> {
    Ok(match a.data_type() {
        DataType::UInt8 => a
            .as_primitive::<UInt8Type>()
            .values()
            .iter()
            .map(|&v| v as u32)
            .collect(),
        DataType::UInt16 => a
            .as_primitive::<UInt16Type>()
            .values()
            .iter()
            .map(|&v| v as u32)
            .collect(),
        DataType::UInt32 => a.as_primitive::<UInt32Type>().values().to_vec(),
        DataType::UInt64 => a
            .as_primitive::<UInt64Type>()
            .values()
            .iter()
            .map(|&v| v as u32)
            .collect(),
        DataType::Int8 => a
            .as_primitive::<Int8Type>()
            .values()
            .iter()
            .map(|&v| v as u32)
            .collect(),
        DataType::Int32 => a
            .as_primitive::<Int32Type>()
            .values()
            .iter()
            .map(|&v| v as u32)
            .collect(),
        DataType::Int64 => a
            .as_primitive::<Int64Type>()
            .values()
            .iter()
            .map(|&v| v as u32)
            .collect(),
        other => return Err(bad(name, format!("{other} values cannot be coded"))),
    })
}

/// The context tokens of every row (empty rows without a context column).
fn tokens(b: &RecordBatch, context: Option<&str>) -> Result<Vec<Vec<u32>>> {
    let Some(name) = context else {
        return Ok(vec![Vec::new(); b.num_rows()]);
    };
    let (_, rows, values) = flatten(column(b, name)?, Granularity::Example, name)?;
    let v = as_u32(&values, name)?;
    Ok(rows.windows(2).map(|w| v[w[0]..w[1]].to_vec()).collect())
}

/// The file form of a plain batch: `topk_ids` and `topk_values` coded into `topk_coded`, in
/// `file`'s column order. `restart(i)` says whether row `i` of the batch starts a block.
pub(crate) fn encode_batch(
    spec: &TargetSpec,
    plain: &RecordBatch,
    file: &SchemaRef,
    coder: &mut BlockCoder,
    restart: impl Fn(usize) -> bool,
) -> Result<RecordBatch> {
    let g = spec.granularity;
    let context = spec.coding.as_ref().and_then(|c| c.context.as_deref());
    let (rows, entries, ids) = flatten(column(plain, schema::TOPK_IDS)?, g, schema::TOPK_IDS)?;
    let (_, _, steps) = flatten(column(plain, schema::TOPK_VALUES)?, g, schema::TOPK_VALUES)?;
    let ids = as_u32(&ids, schema::TOPK_IDS)?;
    let steps = steps
        .as_primitive_opt::<UInt8Type>()
        .ok_or_else(|| bad(schema::TOPK_VALUES, "coded top-k needs int8 steps"))?
        .values()
        .to_vec();
    let toks = tokens(plain, context)?;
    let mut blobs = Vec::with_capacity(plain.num_rows());
    for r in 0..plain.num_rows() {
        let (pa, pe) = (rows[r], rows[r + 1]);
        let (ea, ee) = (entries[pa], entries[pe]);
        let mut row = PlainRow {
            offsets: entries[pa..=pe].iter().map(|&x| x - ea).collect(),
            ids: ids[ea..ee].to_vec(),
            steps: steps[ea..ee].to_vec(),
        };
        if !toks[r].is_empty() && toks[r].len() != pe - pa {
            return Err(bad(
                context.unwrap_or_default(),
                format!(
                    "row {r} has {} context tokens for {} positions",
                    toks[r].len(),
                    pe - pa
                ),
            ));
        }
        row.canonicalise();
        blobs.push(coder.encode_row(&row, &toks[r], restart(r)));
    }
    let coded: ArrayRef = Arc::new(BinaryArray::from_iter_values(blobs.iter()));
    let cols = file
        .fields()
        .iter()
        .map(|f| {
            if f.name() == schema::TOPK_CODED {
                Ok(coded.clone())
            } else {
                column(plain, f.name()).cloned()
            }
        })
        .collect::<Result<Vec<_>>>()?;
    RecordBatch::try_new(file.clone(), cols).map_err(|e| bad(schema::TOPK_CODED, e.to_string()))
}

/// The plain form of a file batch: `topk_coded` decoded into `topk_ids` and `topk_values`,
/// the batch's columns in `out`'s order (the context column may be read only for decoding).
pub(crate) fn decode_batch(
    spec: &TargetSpec,
    file: &RecordBatch,
    out: &SchemaRef,
    coder: &mut BlockCoder,
) -> Result<RecordBatch> {
    let g = spec.granularity;
    let context = spec.coding.as_ref().and_then(|c| c.context.as_deref());
    let blobs = column(file, schema::TOPK_CODED)?
        .as_binary_opt::<i32>()
        .ok_or_else(|| bad(schema::TOPK_CODED, "expected a binary column"))?;
    let toks = tokens(file, context)?;
    let row_ids = file
        .column_by_name(schema::ROW_ID)
        .and_then(|c| c.as_primitive_opt::<UInt64Type>());
    let (mut ids, mut steps, mut entries, mut rows) = (Vec::new(), Vec::new(), vec![0], vec![0]);
    for (r, toks) in toks.iter().enumerate() {
        let row = coder
            .decode_row(blobs.value(r), toks)
            .map_err(|d| FormatError::InvalidRow {
                row_id: row_ids.map_or(r as u64, |a| a.value(r)),
                column: schema::TOPK_CODED.into(),
                message: d.0,
            })?;
        let positions = row.offsets.len() - 1;
        if g == Granularity::Example && positions != 1 {
            return Err(bad(
                schema::TOPK_CODED,
                format!("row {r}: {positions} coded positions in a per-example dataset"),
            ));
        }
        let base = ids.len();
        entries.extend(row.offsets[1..].iter().map(|&o| base + o));
        ids.extend_from_slice(&row.ids);
        steps.extend_from_slice(&row.steps);
        rows.push(entries.len() - 1);
    }
    let ids_col = per_row(
        schema::TOPK_IDS,
        g,
        list_array(schema::TOPK_IDS, ids_array(spec.ids, &ids), &entries)?,
        &rows,
    )?;
    let steps_col = per_row(
        schema::TOPK_VALUES,
        g,
        list_array(
            schema::TOPK_VALUES,
            Arc::new(UInt8Array::from(steps)),
            &entries,
        )?,
        &rows,
    )?;
    let cols = out
        .fields()
        .iter()
        .map(|f| match f.name().as_str() {
            schema::TOPK_IDS => Ok(ids_col.clone()),
            schema::TOPK_VALUES => Ok(steps_col.clone()),
            name => column(file, name).cloned(),
        })
        .collect::<Result<Vec<_>>>()?;
    RecordBatch::try_new(out.clone(), cols).map_err(|e| bad(schema::TOPK_CODED, e.to_string()))
}
