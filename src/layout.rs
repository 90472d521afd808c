//! The bucket layout: where datasets, runs, checkpoints, metrics, logs and reports live.
//!
//! A storage URL (`file://…` or `s3://bucket/prefix`) is the root of a bucket. Every object key
//! idc reads or writes is built here, so both binaries agree on it.

use crate::shard::Split;

/// Folder of staged datasets under a bucket root: `datasets/<name>/`.
pub const DATASETS: &str = "datasets";
/// Folder of runs under a bucket root: `runs/<run-id>/`.
pub const RUNS: &str = "runs";
/// Folder of hyperparameter sweeps under a bucket root: `sweeps/<name>/`.
pub const SWEEPS: &str = "sweeps";
/// Folder of the run index under a bucket root: one empty object per run, named so that a
/// listing (in key order) gives the newest runs first ([`run_index_key`]).
pub const RUN_INDEX: &str = "index/runs";

/// Written by `list` when it found every run folder in the index (the time, RFC 3339): while
/// recent, `list` reads the index alone. Runs are made only by `submit`, which indexes them;
/// the check finds runs made by an idcctl from before the index.
pub const RUN_INDEX_CHECKED: &str = "index/runs-checked";

/// Digits of the inverted creation time in a run index key (milliseconds, up to year 2286).
const INDEX_TIME_DIGITS: usize = 13;
/// The largest creation time in milliseconds a run index key holds.
const INDEX_TIME_MAX: u64 = 10u64.pow(INDEX_TIME_DIGITS as u32) - 1;

/// Keys inside one staged dataset, relative to the dataset's URL.
pub mod dataset {
    use super::Split;

    /// The dataset manifest; written last, so its presence means the dataset is complete.
    pub const MANIFEST: &str = "manifest.json";
    /// Folder of the packed shards.
    pub const SHARDS: &str = "shards";
    /// Folder of per-shard commit markers of a stage in progress (removed once complete).
    pub const STAGING: &str = "_staging";

    /// Key of shard `index` of `split`: `shards/train-00003.idcs`.
    pub fn shard(split: Split, index: usize) -> String {
        format!("{SHARDS}/{}-{index:05}.idcs", split.as_str())
    }

    /// Key of the commit marker of a shard for the stage plan `plan_id`.
    pub fn staging_marker(plan_id: &str, split: Split, index: usize) -> String {
        format!("{STAGING}/{plan_id}/{}-{index:05}.json", split.as_str())
    }

    /// Prefix of every marker of the stage plan `plan_id`.
    pub fn staging_prefix(plan_id: &str) -> String {
        format!("{STAGING}/{plan_id}")
    }
}

/// Keys inside one run, relative to `runs/<run-id>/`.
pub mod run {
    /// The resolved experiment spec the worker runs.
    pub const SPEC: &str = "spec.yaml";
    /// The experiment manifest as submitted (with overrides applied): what a retry or resume
    /// on Kubernetes rebuilds the Job from.
    pub const EXPERIMENT: &str = "experiment.yaml";
    /// Phase, attempts, timestamps, exit codes and reason.
    pub const STATUS: &str = "status.json";
    /// One JSON record per line: per-epoch validation metrics and periodic step throughput.
    pub const METRICS: &str = "metrics.jsonl";
    /// The final evaluation report.
    pub const REPORT: &str = "report.json";
    /// Folder of checkpoints.
    pub const CHECKPOINTS: &str = "checkpoints";
    /// Pointer to the newest complete checkpoint (its key, as text).
    pub const LATEST_CHECKPOINT: &str = "checkpoints/latest";
    /// Present once a cancel was asked for.
    pub const CANCEL: &str = "cancel";
    /// Folder of worker logs, one object per attempt.
    pub const LOGS: &str = "logs";
    /// Folder of attempt records (`idc::attempt::AttemptRecord`), one object per attempt.
    pub const ATTEMPTS: &str = "attempts";
    /// Every test image's prediction by the evaluated checkpoint, one JSON object per line
    /// (`idc::predictions::Prediction`, in test-split order): what slide maps are drawn from.
    pub const TEST_PREDICTIONS: &str = "test-predictions.jsonl";
    /// The run's TensorBoard event file (scalars from metrics.jsonl and the report), rewritten
    /// whole with metrics.jsonl; TensorBoard reads any file named `*tfevents*`.
    pub const TENSORBOARD: &str = "tensorboard/events.out.tfevents.idc";
    /// Folder of `idcctl predict` jobs, one folder per prediction id.
    pub const PREDICTIONS: &str = "predictions";

    /// Keys inside one prediction job's folder, relative to `predictions/<id>/`.
    pub mod prediction {
        /// The job's `idc::predictions::PredictSpec`.
        pub const SPEC: &str = "spec.json";
        /// Folder of the shards `idcctl predict` packed from a folder or zip source.
        pub const INPUT: &str = "input";
        /// The predictions, one JSON object per line, in input order.
        pub const PREDICTIONS: &str = "predictions.jsonl";
        /// The `idc::predictions::PredictResult`; written last, so its presence means done.
        pub const RESULT: &str = "result.json";
        /// The worker's log.
        pub const LOG: &str = "worker.log";

        /// Folder of a slide prediction's outputs, one folder per slide (`slides/<name>/`,
        /// files named in `idc::slide::outputs::files`).
        pub const SLIDES: &str = "slides";
        /// Folder of the slides `idcctl predict` uploaded for a cluster's pods to read.
        pub const SLIDE_INPUT: &str = "input/slides";

        /// Key of `file` among slide `name`'s outputs.
        pub fn slide_output(name: &str, file: &str) -> String {
            format!("{SLIDES}/{name}/{file}")
        }

        /// The log of the worker of a slide job's index `index` (each pod writes its own).
        pub fn index_log(index: u32) -> String {
            format!("worker-{index}.log")
        }

        /// Key of input shard `index`.
        pub fn input_shard(index: usize) -> String {
            format!("{INPUT}/input-{index:05}.idcs")
        }
    }

    /// Folder of the prediction job `id`, relative to the run's folder.
    pub fn prediction(id: &str) -> String {
        format!("{PREDICTIONS}/{id}")
    }

    /// Key of the checkpoint written at the end of `epoch`.
    pub fn checkpoint(epoch: u32) -> String {
        format!("{CHECKPOINTS}/epoch-{epoch:04}.ckpt")
    }

    /// Key of a checkpoint written mid-epoch (on SIGTERM) after `step` steps of `epoch`.
    pub fn checkpoint_mid_epoch(epoch: u32, step: u64) -> String {
        format!("{CHECKPOINTS}/epoch-{epoch:04}-step-{step:07}.ckpt")
    }

    /// Key of the record of attempt `attempt` (1-based).
    pub fn attempt_record(attempt: u32) -> String {
        format!("{ATTEMPTS}/{attempt}.json")
    }

    /// Key of the worker log of attempt `attempt` (1-based).
    pub fn log(attempt: u32) -> String {
        format!("{LOGS}/attempt-{attempt}.log")
    }
}

/// Keys inside one sweep, relative to `sweeps/<name>/`.
pub mod sweep {
    /// The sweep manifest as submitted.
    pub const MANIFEST: &str = "sweep.yaml";
    /// Every trial: parameters, run id, state, objective and intermediate values.
    pub const STATE: &str = "state.json";
    /// Which `idcctl sweep run` drives the sweep (host, pid, heartbeat).
    pub const DRIVER: &str = "driver.json";
}

/// Prefix of the dataset `name` under a bucket root.
pub fn dataset_prefix(name: &str) -> String {
    format!("{DATASETS}/{name}")
}

/// Prefix of the run `run_id` under a bucket root.
pub fn run_prefix(run_id: &str) -> String {
    format!("{RUNS}/{run_id}")
}

/// Prefix of the sweep `name` under a bucket root.
pub fn sweep_prefix(name: &str) -> String {
    format!("{SWEEPS}/{name}")
}

/// Key of the run index entry of `run_id`, created at `created_ms` (Unix milliseconds):
/// `index/runs/<inverted time, 13 digits>-<run id>`, so that key order is newest first.
pub fn run_index_key(created_ms: u64, run_id: &str) -> String {
    let inverted = INDEX_TIME_MAX - created_ms.min(INDEX_TIME_MAX);
    format!(
        "{RUN_INDEX}/{inverted:0width$}-{run_id}",
        width = INDEX_TIME_DIGITS
    )
}

/// The creation time (Unix milliseconds) and run id of a run index key (relative to the
/// bucket root); `None` for a key that is not one.
pub fn parse_run_index_key(key: &str) -> Option<(u64, &str)> {
    let name = key.strip_prefix(RUN_INDEX)?.strip_prefix('/')?;
    let (time, run_id) = name.split_at_checked(INDEX_TIME_DIGITS)?;
    let run_id = run_id.strip_prefix('-')?;
    if !time.bytes().all(|b| b.is_ascii_digit()) || run_id.is_empty() || run_id.contains('/') {
        return None;
    }
    Some((INDEX_TIME_MAX - time.parse::<u64>().ok()?, run_id))
}

/// Run id of trial `number` of the sweep `name`: `<name>-t007` (four digits from 1000 on).
pub fn trial_run_id(name: &str, number: u32) -> String {
    format!("{name}-t{number:03}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable() {
        assert_eq!(dataset::shard(Split::Val, 7), "shards/val-00007.idcs");
        assert_eq!(
            dataset::staging_marker("ab12", Split::Train, 0),
            "_staging/ab12/train-00000.json"
        );
        assert_eq!(run::checkpoint(3), "checkpoints/epoch-0003.ckpt");
        assert_eq!(run::log(2), "logs/attempt-2.log");
        assert_eq!(run::prediction("0a1b2c3d4e5f"), "predictions/0a1b2c3d4e5f");
        assert_eq!(run::prediction::input_shard(3), "input/input-00003.idcs");
        assert_eq!(dataset_prefix("idc"), "datasets/idc");
        assert_eq!(run_prefix("cnn-1"), "runs/cnn-1");
        assert_eq!(sweep_prefix("lr"), "sweeps/lr");
        assert_eq!(trial_run_id("lr", 7), "lr-t007");
        assert_eq!(trial_run_id("lr", 1234), "lr-t1234");
        assert_eq!(
            run_index_key(1_764_000_000_123, "cnn-1"),
            "index/runs/8235999999876-cnn-1"
        );
    }

    #[test]
    fn run_index_keys_sort_newest_first_and_read_back() {
        let older = run_index_key(1_000, "b-run");
        let newer = run_index_key(2_000, "a-run");
        assert!(newer < older, "{newer} sorts before {older}");
        assert_eq!(parse_run_index_key(&older), Some((1_000, "b-run")));
        assert_eq!(
            parse_run_index_key(&run_index_key(0, "x-t001")),
            Some((0, "x-t001"))
        );
        for bad in [
            "index/runs/123-x",
            "index/runs/82359999998x6-cnn-1",
            "index/runs/8235999999876cnn-1",
            "index/runs/8235999999876-",
            "runs/8235999999876-cnn-1",
        ] {
            assert_eq!(parse_run_index_key(bad), None, "{bad}");
        }
    }
}
