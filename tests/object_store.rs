//! Building into and reading from an S3-compatible store, end to end: the test starts moto's
//! S3 server on loopback itself (from the project's pinned Python environment), runs four
//! `logits-build` workers into one bucket concurrently, two of them killed mid-protocol and run
//! again, merges, and checks that the shards are byte-identical to a single-process local build,
//! that `logits-inspect --validate` passes on the remote dataset, and that `logits-train`
//! trains from it exactly as from the local copy.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

mod common;
use common::moto::{Moto, python};
use common::{fixture, text};

fn with_s3_env(c: &mut Command, port: u16) {
    c.env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_COPY_IF_NOT_EXISTS")
        .env_remove("LOGITS_CACHE_DIR")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX");
}

fn bin(name: &str, port: u16, args: &[String]) -> Command {
    let mut c = Command::new(match name {
        "logits-build" => env!("CARGO_BIN_EXE_logits-build"),
        "logits-inspect" => env!("CARGO_BIN_EXE_logits-inspect"),
        _ => env!("CARGO_BIN_EXE_logits-train"),
    });
    c.args(args);
    with_s3_env(&mut c, port);
    c
}

fn run(mut c: Command) -> Output {
    c.output().expect("run binary")
}

/// The digits build of the other end-to-end tests, in shards of 100 rows; as job-array
/// worker `worker` of 4 when given.
fn build_args(out: &str, worker: Option<usize>) -> Vec<String> {
    let mut a = common::digits_build_args(out);
    a.extend(["--rows-per-shard".into(), "100".into()]);
    if let Some(i) = worker {
        a.extend([
            "--num-workers".into(),
            "4".into(),
            "--worker-index".into(),
            i.to_string(),
        ]);
    }
    a
}

/// Command-line arguments as owned strings.
fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn shard_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.join("shards"))
        .expect("shards")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read shard"),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn four_workers_build_into_s3_and_training_reads_it_in_place() {
    let moto = Moto::start();
    moto.bucket("logits");
    let port = moto.port;
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = "s3://logits/datasets/digits";

    // Large objects go up in parts (S3's multipart protocol, parts of 8 MiB) and arrive whole.
    for (k, v) in moto.env() {
        // SAFETY: this file holds one test, and nothing else of this process reads the
        // environment concurrently; the variables point this process's client at moto.
        unsafe { std::env::set_var(k, v) };
    }
    let big = tmp.path().join("big.bin");
    let data: Vec<u8> = (0..(20u32 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(&big, &data).expect("write");
    let store = logits_store::Remote::open("s3://logits/objects").expect("open store");
    assert_eq!(
        store.upload("big.bin", &big).expect("upload"),
        data.len() as u64
    );
    assert!(store.get("big.bin").expect("get").expect("exists") == data);
    assert!(store.copy_new("big.bin", "copy.bin").expect("copy"));
    assert!(
        !store
            .copy_new("big.bin", "copy.bin")
            .expect("second copy refused")
    );

    // The reference: one process, local disk.
    let local = tmp.path().join("local");
    let o = common::logits_build(&build_args(&local.display().to_string(), None));
    assert!(o.status.success(), "{}", text(&o));

    // Four workers at once; worker 1 dies after uploading shard 5 (before making it final),
    // worker 2 after making shard 10 final (before its completion marker).
    let faults = [
        None,
        Some("after-upload:5"),
        Some("after-finalize:10"),
        None,
    ];
    let workers: Vec<(usize, Child)> = (0..4)
        .map(|i| {
            let mut c = bin("logits-build", port, &build_args(url, Some(i)));
            c.env("LOGITS_STAGING_DIR", tmp.path().join("staging"));
            if let Some(f) = faults[i] {
                c.env("LOGITS_FAULT", f);
            }
            let child = c
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn worker");
            (i, child)
        })
        .collect();
    for (i, child) in workers {
        let o = child.wait_with_output().expect("worker");
        if faults[i].is_some() {
            assert!(
                !o.status.success(),
                "worker {i} should have been killed: {}",
                text(&o)
            );
        } else {
            assert!(o.status.success(), "worker {i}: {}", text(&o));
        }
    }
    // Not complete yet: reading it is refused with a message saying so.
    let o = run(bin("logits-inspect", port, &[url.into()]));
    assert!(!o.status.success());
    assert!(text(&o).contains("not complete"), "{}", text(&o));
    // Merging now is refused and names the missing shards.
    let o = run(bin("logits-build", port, &["merge".into(), url.into()]));
    assert!(!o.status.success());
    assert!(text(&o).contains("part-00005.parquet"), "{}", text(&o));
    // The killed workers run again and skip what they had finished.
    for i in [1, 2] {
        let mut c = bin("logits-build", port, &build_args(url, Some(i)));
        c.env("LOGITS_STAGING_DIR", tmp.path().join("staging"));
        let o = run(c);
        assert!(o.status.success(), "re-run of worker {i}: {}", text(&o));
    }
    // The killed workers' staging folders were removed by the re-runs; the others by their
    // own processes.
    let left: Vec<_> = std::fs::read_dir(tmp.path().join("staging"))
        .expect("staging")
        .collect();
    assert!(left.is_empty(), "staging left behind: {left:?}");
    let o = run(bin("logits-build", port, &["merge".into(), url.into()]));
    assert!(o.status.success(), "merge: {}", text(&o));

    // Four workers that all run at once, none killed: the last to finish lists the markers
    // again after its own and commits, with no merge step.
    let at_once = "s3://logits/datasets/digits-at-once";
    let workers: Vec<Child> = (0..4)
        .map(|i| {
            let mut c = bin("logits-build", port, &build_args(at_once, Some(i)));
            c.env("LOGITS_STAGING_DIR", tmp.path().join("staging"));
            c.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn worker")
        })
        .collect();
    let mut committed = 0;
    for child in workers {
        let o = child.wait_with_output().expect("worker");
        assert!(o.status.success(), "{}", text(&o));
        committed += text(&o).contains("dataset committed") as usize;
    }
    assert!(committed >= 1, "no worker committed the dataset");
    let o = run(bin(
        "logits-inspect",
        port,
        &[at_once.into(), "--validate".into()],
    ));
    assert!(o.status.success(), "{}", text(&o));

    // Byte-identical to the local build: a copy of the bucket downloaded by a third party
    // (boto3, which moto's server ships with) against the local files.
    let o = run(bin(
        "logits-inspect",
        port,
        &[url.into(), "--validate".into()],
    ));
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        // 1,437 training rows in 15 shards of at most 100, the 360 held-out rows in 4: shards
        // restart at the held-out boundary.
        text(&o).contains("validation: OK (19 shards, 1797 rows checked)"),
        "{}",
        text(&o)
    );
    let copy = tmp.path().join("copy");
    let mut c = Command::new(python());
    c.args([
        "-c",
        "import boto3,os,sys\n\
         s3=boto3.client('s3',endpoint_url=os.environ['AWS_ENDPOINT_URL'])\n\
         for o in s3.list_objects_v2(Bucket='logits',Prefix='datasets/digits/')['Contents']:\n\
         \x20 p=os.path.join(sys.argv[1],o['Key'][len('datasets/digits/'):])\n\
         \x20 os.makedirs(os.path.dirname(p),exist_ok=True)\n\
         \x20 s3.download_file('logits',o['Key'],p)\n",
        &copy.display().to_string(),
    ]);
    with_s3_env(&mut c, port);
    let o = run(c);
    assert!(o.status.success(), "download: {}", text(&o));
    assert!(
        !copy.join("_build").exists(),
        "build records are removed by the merge"
    );
    let (a, b) = (shard_files(&local), shard_files(&copy));
    assert_eq!(a.len(), 19);
    assert_eq!(
        a.iter().map(|x| &x.0).collect::<Vec<_>>(),
        b.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    for (x, y) in a.iter().zip(&b) {
        assert!(
            x.1 == y.1,
            "{} differs between the local and the S3 build",
            x.0
        );
    }
    let ml: serde_json::Value =
        serde_json::from_slice(&std::fs::read(local.join("manifest.json")).unwrap()).unwrap();
    let mr: serde_json::Value =
        serde_json::from_slice(&std::fs::read(copy.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(ml["shards"], mr["shards"]);
    assert_eq!(ml["dataset_id"], mr["dataset_id"]);

    // Training reads the dataset in place (with a range cache) and ends exactly where training
    // from the local copy ends.
    let train = |ds: &str, out: &str, cache: Option<&Path>| {
        let args = owned(&[
            "train",
            ds,
            "--out",
            out,
            "--quiet",
            "--hidden",
            "32",
            "--steps",
            "300",
            "--batch-size",
            "64",
            "--lr",
            "1e-2",
            "--seed",
            "3",
            "--json",
        ]);
        let mut c = bin("logits-train", port, &args);
        if let Some(d) = cache {
            c.env("LOGITS_CACHE_DIR", d).env("LOGITS_CACHE_SIZE", "64M");
        }
        let o = run(c);
        assert!(o.status.success(), "train from {ds}: {}", text(&o));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("report json");
        r["evaluation"].clone()
    };
    let cache = tmp.path().join("cache");
    let run_local = tmp.path().join("run-local").display().to_string();
    let el = train(&local.display().to_string(), &run_local, None);
    // Read from the store, and the run itself written to it.
    let er = train(url, "s3://logits/runs/a", Some(&cache));
    assert_eq!(el, er, "training from S3 and from local disk differ");
    assert!(el["accuracy"].as_f64().unwrap() > 0.85, "{el}");
    let cached = std::fs::read_dir(&cache).map(|d| d.count()).unwrap_or(0);
    assert!(cached > 0, "the range cache was not used");
    // The run was uploaded: a second run into the same URL finds its checkpoints and refuses.
    let args: Vec<String> = ["train", url, "--out", "s3://logits/runs/a", "--quiet"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let o = run(bin("logits-train", port, &args));
    assert!(!o.status.success());
    assert!(
        text(&o).contains("already holds a training run"),
        "{}",
        text(&o)
    );

    // The Slurm example script itself, run as four array tasks would run it, into the store.
    let slurm_out = "s3://logits/datasets/slurm";
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_logits-build"))
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for task in 0..4 {
        let mut c = Command::new("bash");
        c.arg(common::root().join("scripts/scheduler/slurm-build.sbatch"));
        with_s3_env(&mut c, port);
        c.env("PATH", &path)
            .env("SLURM_ARRAY_TASK_ID", task.to_string())
            .env("SLURM_ARRAY_TASK_COUNT", "4")
            .env("SLURM_CPUS_PER_TASK", "1")
            .env("MODEL", fixture("fixtures/digits/digits_teacher.onnx"))
            .env(
                "CORPUS",
                format!(
                    "{} {}",
                    fixture("fixtures/digits/train.parquet"),
                    fixture("fixtures/digits/holdout.parquet")
                ),
            )
            .env("OUT", slurm_out)
            .env("ROWS_PER_SHARD", "100")
            .env(
                "BUILD_ARGS",
                "--holdout-from 1437 --label-column label -k 5 --temperatures 2,4 --feature penult=hidden2:f16",
            );
        let o = run(c);
        assert!(o.status.success(), "slurm task {task}: {}", text(&o));
    }
    let o = run(bin(
        "logits-build",
        port,
        &["merge".into(), slurm_out.into()],
    ));
    assert!(
        o.status.success(),
        "merge after the last task committed: {}",
        text(&o)
    );
    let o = run(bin(
        "logits-inspect",
        port,
        &[slurm_out.into(), "--validate".into(), "--json".into()],
    ));
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("inspect json");
    assert_eq!(
        v["manifest"]["shards"], ml["shards"],
        "the Slurm script's build differs"
    );

    // A per-token dataset from a text corpus and a tokenizer that are themselves in the store,
    // and a language-model student trained from it in place.
    for f in ["train.jsonl", "tokenizer.json"] {
        store
            .upload(f, &common::root().join("fixtures/tinylm").join(f))
            .expect("upload input");
    }
    let lm_url = "s3://logits/datasets/tinylm";
    let args = owned(&[
        "build",
        "--model",
        &fixture("fixtures/tinylm/tiny_lm.onnx"),
        "--tokenizer",
        "s3://logits/objects/tokenizer.json",
        "--corpus",
        "s3://logits/objects/train.jsonl",
        "--window",
        "32",
        "-k",
        "16",
        "--holdout-from",
        "300",
        "--rows-per-shard",
        "100",
        "--quiet",
        "--out",
        lm_url,
    ]);
    let mut c = bin("logits-build", port, &args);
    c.env("LOGITS_CACHE_DIR", tmp.path().join("fetched"));
    let o = run(c);
    assert!(
        o.status.success(),
        "LM build from store inputs: {}",
        text(&o)
    );
    let o = run(bin(
        "logits-inspect",
        port,
        &[lm_url.into(), "--json".into()],
    ));
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("inspect json");
    assert_eq!(
        v["manifest"]["corpus"]["sources"][0]["path"], "s3://logits/objects/train.jsonl",
        "the manifest names the corpus as given"
    );
    let run_dir = tmp.path().join("lm-run");
    let args = common::tiny_lm_train_args(
        lm_url,
        &run_dir.display().to_string(),
        &["--steps", "4", "-T", "1", "--json"],
    );
    let o = run(bin("logits-train", port, &args));
    assert!(
        o.status.success(),
        "LM training from the store: {}",
        text(&o)
    );
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("report json");
    assert!(
        r["evaluation"]["perplexity"]
            .as_f64()
            .is_some_and(f64::is_finite),
        "{r}"
    );
    let args = owned(&[
        "generate",
        "--student",
        &run_dir.join("student.safetensors").display().to_string(),
        "--tokenizer",
        "s3://logits/objects/tokenizer.json",
        "--prompt",
        "The module",
        "--max-tokens",
        "4",
    ]);
    let o = run(bin("logits-train", port, &args));
    assert!(
        o.status.success(),
        "generate with a tokenizer in the store: {}",
        text(&o)
    );

    // A store that cannot be reached: the message names the object and says the cause once.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let o = run(bin("logits-inspect", dead, &["s3://logits/none".into()]));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("s3://logits/none/manifest.json"), "{t}");
    assert_eq!(t.matches("Connection refused").count(), 1, "{t}");
    drop(moto);
}
