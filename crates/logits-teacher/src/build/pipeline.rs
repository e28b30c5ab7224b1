//! The pipeline: reader → sessions → post-processing → writer, on threads joined by bounded
//! channels so memory does not grow with the corpus.
//!
//! A reader thread cuts each shard's row range into batches; `sessions` worker threads each own
//! one ONNX Runtime session (ONNX Runtime's advice: one session per thread) and only run
//! batches; as many post-processing workers turn each batch's outputs into rows while its
//! session already runs the next batch; the calling thread puts results back in order and
//! writes shards through the format library. The batch cut within a shard depends only on the
//! options, so the output is identical whatever the number of sessions or threads.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use logits_format::rows::RowBatch;
use logits_format::writer::{self, DatasetWriter};

use super::BuildOptions;
use super::plan::{Payload, Plan, Source};
use super::rows::{Outputs, session_error, tensor_rows, text_rows};
use crate::error::{Result, TeacherError};

struct Job {
    tag: Tag,
    batch: Payload,
}

type Done = (Tag, Result<(RowBatch, Vec<u64>)>);

/// A batch the teacher has run on, holding the outputs it still has to be turned into rows.
/// The outputs are owned values, so a post-processing thread works on them while the session
/// runs the next batch.
struct Ran {
    batch: Payload,
    outputs: Outputs,
}

/// Shared by the pipeline's threads: set when any stage fails or a stop was asked for, so the
/// others stop taking work at their next step instead of finishing the corpus.
struct Halt<'a> {
    failed: std::sync::atomic::AtomicBool,
    /// Set by the writer when a batch ahead of it failed: the reader stops, while the batches
    /// already in flight still finish so the shards before the failure are completed.
    draining: AtomicBool,
    /// The caller's stop flag (SIGINT/SIGTERM), if any.
    stop: Option<&'a AtomicBool>,
}

impl Halt<'_> {
    fn halted(&self) -> bool {
        self.failed.load(Ordering::Relaxed) || self.stop.is_some_and(|s| s.load(Ordering::Relaxed))
    }

    /// The reader stops at a halt and also while the pipeline drains after a failed batch.
    fn reading_stopped(&self) -> bool {
        self.halted() || self.draining.load(Ordering::Relaxed)
    }
}

/// Runs the shards `todo` through reader → sessions → post-processing → writer.
///
/// No stage can wait forever on another: every channel end is owned by exactly the threads
/// that use it (no extra handle kept here), so when a stage returns — on success, on its own
/// error or because the writer stopped — its channels disconnect and its neighbours see that
/// at their next send or receive. The writer, on any error, drops its receiver and sets the
/// halt flag; the reader and sessions then stop at their next batch.
///
/// An error of the reader, a session or post-processing belongs to one batch, usually ahead of
/// the shard the writer is on. The writer then stops the reader, lets the batches in flight
/// (a few per session) finish the shards before the failing batch, and returns the error when
/// it reaches that batch: every shard read in full before the failure is recorded, so a resume
/// redoes no more than the failing shard, whatever the number of sessions.
pub(super) fn run_pipeline(
    o: &BuildOptions,
    plan: &Arc<Plan>,
    corpus: &Source,
    todo: &[u32],
    w: &mut DatasetWriter,
    total_rows: u64,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<(u64, u64)> {
    if todo.is_empty() {
        return Ok((0, 0));
    }
    // Sessions are created up front so a model ONNX Runtime refuses fails before any thread.
    let mut sessions = Vec::new();
    for i in 0..o.sessions {
        let device = o
            .devices
            .get(i % o.devices.len().max(1))
            .copied()
            .unwrap_or(crate::runtime::Device::Cpu);
        let session = plan.teacher.device_session(o.intra_threads, device)?.0;
        let io = Io::for_session(plan, &session, device, faults_bind(o))?;
        sessions.push((session, io));
    }
    let shard_plan = super::ShardPlan::new(corpus.rows(), o.rows_per_shard, o.holdout_from);
    let faults = &o.write.faults;
    let halt = Halt {
        failed: std::sync::atomic::AtomicBool::new(false),
        draining: AtomicBool::new(false),
        stop: o.stop,
    };
    let halt = &halt;
    let (job_tx, job_rx) = sync_channel::<Job>(2 * o.sessions);
    let job_rx = Arc::new(Mutex::new(job_rx));
    // A rendezvous: a session hands its outputs to a free post-processing worker and runs the
    // next batch, so at most two batches of outputs per session are alive (the largest buffers
    // of a language-model build).
    let (ran_tx, ran_rx) = sync_channel::<(Tag, Result<Ran>)>(0);
    let ran_rx = Arc::new(Mutex::new(ran_rx));
    let (done_tx, done_rx) = sync_channel::<Done>(2 * o.sessions);
    let (count_tx, count_rx) = std::sync::mpsc::channel::<(u32, u32, Option<TeacherError>)>();
    std::thread::scope(|scope| {
        let shards = todo.to_vec();
        scope.spawn(move || {
            // Batches are numbered from 1 in reading order over this run (fault points).
            let mut n = 0u64;
            for s in shards {
                let range = shard_plan.range(s);
                let mut seq = 0u32;
                let mut injected = None;
                let r = corpus.read_each(range, o.batch_size, |batch| {
                    n += 1;
                    if halt.reading_stopped() {
                        return false;
                    }
                    if faults.hit("reader", n) {
                        injected = Some(fault_error("reader", n));
                        return false;
                    }
                    let tag = Tag { shard: s, seq, n };
                    seq += 1;
                    job_tx.send(Job { tag, batch }).is_ok()
                });
                let failed = r.err().or(injected);
                let stop = failed.is_some() || halt.reading_stopped();
                if count_tx.send((s, seq, failed)).is_err() || stop {
                    return;
                }
            }
        });
        // Sessions are borrowed, not moved: output values live in their session's memory, so
        // every session outlives the post-processing workers that may still hold its outputs.
        for (session, io) in sessions.iter_mut() {
            let rx = Arc::clone(&job_rx);
            let tx = ran_tx.clone();
            let plan = Arc::clone(plan);
            scope.spawn(move || {
                serve(&rx, &tx, halt, |job: Job| {
                    if let Some(ms) = faults.value("delay-ms") {
                        std::thread::sleep(std::time::Duration::from_millis(ms));
                    }
                    let ran = if faults.hit("session", job.tag.n) {
                        Err(fault_error("session", job.tag.n))
                    } else {
                        run_batch(&plan, session, io.as_mut(), job.batch)
                    };
                    (job.tag, ran)
                })
            });
        }
        // Only the workers hold the channel ends from here on (see above).
        drop((ran_tx, job_rx));
        for _ in 0..o.sessions {
            let rx = Arc::clone(&ran_rx);
            let tx = done_tx.clone();
            let plan = Arc::clone(plan);
            scope.spawn(move || {
                serve(&rx, &tx, halt, |(tag, ran): (Tag, Result<Ran>)| {
                    let out = ran.and_then(|r| {
                        if faults.hit("post", tag.n) {
                            return Err(fault_error("post", tag.n));
                        }
                        match r.batch {
                            Payload::Tensor(b) => tensor_rows(&plan, b, &r.outputs),
                            Payload::Text(w) => text_rows(&plan, w, &r.outputs),
                        }
                    });
                    (tag, out)
                })
            });
        }
        drop((done_tx, ran_rx));
        let r = write_in_order(
            w, todo, done_rx, count_rx, total_rows, progress, halt, faults,
        );
        if r.is_err() {
            halt.failed.store(true, Ordering::Relaxed);
        }
        r
    })
}

/// Where a batch belongs: its shard, its place in the shard, and its number in this run.
#[derive(Debug, Clone, Copy)]
struct Tag {
    shard: u32,
    seq: u32,
    n: u64,
}

/// Whether the tests asked for I/O binding on the CPU (`LOGITS_FAULT=io-binding:1`), the path
/// GPU sessions take.
fn faults_bind(o: &BuildOptions) -> bool {
    o.write.faults.value("io-binding").is_some()
}

/// The error an armed fault point produces (tests only).
fn fault_error(stage: &str, n: u64) -> TeacherError {
    TeacherError::Pipeline(format!("injected fault in the {stage} stage at batch {n}"))
}

/// A worker's loop: takes items from a receiver shared with its peers until it closes or the
/// pipeline halts, and sends `f`'s result for each until the next stage is gone.
fn serve<T, U>(
    rx: &Mutex<Receiver<T>>,
    tx: &SyncSender<U>,
    halt: &Halt<'_>,
    mut f: impl FnMut(T) -> U,
) {
    loop {
        let item = match rx.lock() {
            Ok(guard) => guard.recv(),
            Err(_) => return,
        };
        let Ok(item) = item else { return };
        if halt.halted() {
            return;
        }
        if tx.send(f(item)).is_err() {
            return;
        }
    }
}

/// Puts finished batches back in shard order and writes them, shard by shard, recording each
/// finished shard. Returns the first failed batch's error once every batch before it is
/// written (see [`run_pipeline`]), a writer error at once, or an interruption when a stop was
/// asked for (checked at least every 50 ms), leaving the shards finished so far recorded.
#[allow(clippy::too_many_arguments)]
fn write_in_order(
    w: &mut DatasetWriter,
    todo: &[u32],
    done_rx: Receiver<Done>,
    count_rx: Receiver<(u32, u32, Option<TeacherError>)>,
    total_rows: u64,
    progress: &(dyn Fn(u64, u64) + Sync),
    halt: &Halt<'_>,
    faults: &logits_format::fault::Faults,
) -> Result<(u64, u64)> {
    let mut pending: BTreeMap<(u32, u32), (u64, RowBatch, Vec<u64>)> = BTreeMap::new();
    let mut counts: HashMap<u32, u32> = HashMap::new();
    // Errors by the place (shard, batch in shard) they take in the output: a reader error
    // after n batches of a shard sits at (shard, n).
    let mut failures: BTreeMap<(u32, u32), TeacherError> = BTreeMap::new();
    let (mut written, mut skipped) = (0u64, 0u64);
    let interrupted = || halt.stop.is_some_and(|s| s.load(Ordering::Relaxed));
    let fail_at = |failures: &mut BTreeMap<(u32, u32), TeacherError>, at, e| {
        failures.entry(at).or_insert(e);
        halt.draining.store(true, Ordering::Relaxed);
    };
    let take_counts = |counts: &mut HashMap<u32, u32>,
                       failures: &mut BTreeMap<(u32, u32), TeacherError>| {
        while let Ok((cs, n, err)) = count_rx.try_recv() {
            if let Some(e) = err {
                fail_at(failures, (cs, n), e);
            }
            counts.insert(cs, n);
        }
    };
    for &s in todo {
        let mut shard = w.shard(s)?;
        let mut seq = 0u32;
        loop {
            if interrupted() {
                return Err(TeacherError::Interrupted(String::new()));
            }
            take_counts(&mut counts, &mut failures);
            if let Some((n, batch, skip)) = pending.remove(&(s, seq)) {
                if faults.hit("writer", n) {
                    return Err(fault_error("writer", n));
                }
                if faults.hit("disk-full", n) {
                    let e = std::io::Error::from_raw_os_error(28); // ENOSPC
                    return Err(logits_format::FormatError::io(
                        w.root().join(writer::SHARD_DIR),
                        e,
                    )
                    .into());
                }
                shard.write(&batch)?;
                shard.skip(&skip);
                written += batch.len() as u64;
                skipped += skip.len() as u64;
                progress(written + skipped, total_rows);
                seq += 1;
                continue;
            }
            if let Some(e) = failures.remove(&(s, seq)) {
                return Err(e);
            }
            if counts.get(&s) == Some(&seq) {
                break;
            }
            match done_rx.recv_timeout(std::time::Duration::from_millis(50)) {
                Ok((tag, Ok((batch, skip)))) => {
                    pending.insert((tag.shard, tag.seq), (tag.n, batch, skip));
                }
                Ok((tag, Err(e))) => fail_at(&mut failures, (tag.shard, tag.seq), e),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    // Workers are gone; whatever is left must already be counted.
                    take_counts(&mut counts, &mut failures);
                    if interrupted() {
                        return Err(TeacherError::Interrupted(String::new()));
                    }
                    let here = failures.remove(&(s, seq));
                    if counts.get(&s) != Some(&seq) && !pending.contains_key(&(s, seq)) {
                        // Never wait for a batch no one will send: the failure that stopped
                        // the work, else a plain account of it.
                        let first = failures.into_values().next();
                        return Err(here.or(first).unwrap_or_else(|| {
                            TeacherError::Pipeline(
                                "workers stopped before the shard was complete".into(),
                            )
                        }));
                    }
                    if let Some(e) = here {
                        return Err(e);
                    }
                }
            }
        }
        let rec = shard.finish()?;
        w.record(rec)?;
    }
    Ok((written, skipped))
}

/// How a session's batches go in and out when it runs on a GPU: through an I/O binding,
/// with only the outputs the build keeps bound, to page-locked host memory, so the device
/// copies them out by DMA and leaves every other output (and, on the graph path, the
/// logits) on the device.
struct Io {
    binding: ort::session::IoBinding,
    outputs: ort::memory::MemoryInfo<'static>,
}

impl Io {
    /// The binding for `session` on `device`; None on the CPU, where plain runs are the same
    /// copies (`bind` forces it there, for the tests of this path).
    fn for_session(
        plan: &Plan,
        session: &ort::session::Session,
        device: crate::runtime::Device,
        bind: bool,
    ) -> Result<Option<Io>> {
        use crate::runtime::Device;
        use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
        let err = |e: ort::Error| session_error(plan, format!("I/O binding: {e}"));
        let outputs = match device {
            Device::Cuda(_) | Device::TensorRt(_) => MemoryInfo::new(
                AllocationDevice::CUDA_PINNED,
                0,
                AllocatorType::Device,
                MemoryType::CPUOutput,
            ),
            Device::Cpu | Device::Auto if bind => MemoryInfo::new(
                AllocationDevice::CPU,
                0,
                AllocatorType::Device,
                MemoryType::Default,
            ),
            Device::Cpu | Device::Auto => return Ok(None),
        }
        .map_err(err)?;
        let binding = session.create_binding().map_err(err)?;
        Ok(Some(Io { binding, outputs }))
    }
}

/// Runs one batch through the teacher, keeping the target and feature outputs for
/// post-processing on another thread.
fn run_batch(
    plan: &Plan,
    session: &mut ort::session::Session,
    io: Option<&mut Io>,
    batch: Payload,
) -> Result<Ran> {
    let values = plan.feed.inputs_for(&batch)?;
    let sess_err = |message: String| session_error(plan, message);
    let post = [
        logits_onnx::postprocess::post::VALUES,
        logits_onnx::postprocess::post::INDICES,
        logits_onnx::postprocess::post::LOGZ,
        logits_onnx::postprocess::post::SUM_MIN,
    ]
    .map(String::from);
    let targets: &[String] = if plan.in_graph {
        &post
    } else {
        std::slice::from_ref(&plan.target)
    };
    let mut names: Vec<&String> = Vec::new();
    for name in targets
        .iter()
        .chain(plan.features.iter().map(|f| &f.req.tensor))
    {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let mut run = match io {
        None => session.run(values).map_err(|e| sess_err(e.to_string()))?,
        Some(io) => {
            let bind_err = |e: ort::Error| sess_err(format!("I/O binding: {e}"));
            // Fresh bindings every run: the outputs of the last one are still being turned
            // into rows on another thread, and an output left bound would be written again.
            io.binding.clear();
            for (name, value) in &values {
                io.binding
                    .bind_input(name.as_str(), value)
                    .map_err(bind_err)?;
            }
            for name in &names {
                io.binding
                    .bind_output_to_device(name.as_str(), &io.outputs)
                    .map_err(bind_err)?;
            }
            session
                .run_binding(&io.binding)
                .map_err(|e| sess_err(e.to_string()))?
        }
    };
    let mut outputs = HashMap::new();
    for name in names {
        let v = run
            .remove(name)
            .ok_or_else(|| sess_err(format!("no output {name:?}")))?;
        outputs.insert(name.clone(), v);
    }
    Ok(Ran { batch, outputs })
}
