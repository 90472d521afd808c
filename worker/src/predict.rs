//! `idc-worker predict`: applies a run's checkpoint to a prediction job's input shards (with
//! test-time augmentation if asked) and writes the predictions, then the result, to the job's
//! folder. Everything it needs is in the job's spec (`idc::predictions::PredictSpec`).

use crate::data::SplitData;
use crate::error::WorkerError;
use crate::model::Model;
use crate::runlog::RunLog;
use crate::train::{batch_logits, device_for, read_checkpoint, restore_model};
use bytes::Bytes;
use idc::layout::run::prediction as keys;
use idc::predictions::{self, PredictResult, PredictSpec, Prediction};
use idc::shard::{FLAG_UNLABELED, Layout, ShardReader};
use idc::spec::LossKind;
use idc::store::Store;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// Runs the prediction job whose folder is `job_url`.
pub fn run(job_url: &str) -> Result<(), WorkerError> {
    let rt =
        tokio::runtime::Runtime::new().map_err(WorkerError::io("starting the async runtime"))?;
    let job = Store::open(job_url)?;
    let text = rt.block_on(job.get(keys::SPEC))?;
    let spec: PredictSpec = serde_json::from_slice(&text)
        .map_err(|e| WorkerError::BadInput(format!("{}: {e}", job.url_of(keys::SPEC))))?;
    let log = RunLog::at(keys::LOG);
    let result = predict_job(&rt, &job, &spec, &log);
    if let Err(e) = &result {
        log.line(&format!("error: {e}"));
    }
    // The log is the job's record of what happened; losing it must not hide the outcome.
    if let Err(e) = rt.block_on(log.flush(&job)) {
        eprintln!("warning: could not write the log to the bucket: {e}");
    }
    result
}

fn predict_job(
    rt: &tokio::runtime::Runtime,
    job: &Store,
    spec: &PredictSpec,
    log: &RunLog,
) -> Result<(), WorkerError> {
    crate::shim::require_ops()?;
    let device = device_for(spec.device, "--device")?;
    let k = spec.classes.len();
    if spec.tta {
        predictions::check_tta(spec.shape).map_err(WorkerError::BadInput)?;
    }
    log.line(&format!(
        "prediction {} with run {} ({}, {}) on {device:?}{}",
        spec.prediction_id,
        spec.run_id,
        spec.model.name(),
        spec.checkpoint,
        if spec.tta {
            ", 8 flips/rotations averaged"
        } else {
            ""
        }
    ));
    let started = Instant::now();
    let (split, flags, files) = load_input(rt, spec, device)?;
    log.line(&format!(
        "input: {} images from {} shard(s), loaded in {:.1}s",
        split.len(),
        spec.input.shards.len(),
        started.elapsed().as_secs_f64()
    ));
    let model = load_model(rt, spec, device)?;

    let started = Instant::now();
    let probs = probabilities(
        &model,
        &split,
        spec.batch_size as i64,
        spec.tta,
        &mut |done| {
            let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
            eprintln!(
                "{}",
                predictions::progress_line(done, split.len() as u64, rate)
            );
        },
    );
    let seconds = started.elapsed().as_secs_f64();
    let rows: Vec<Prediction> = crate::train::class_rows(&probs, k)
        .into_iter()
        .enumerate()
        .map(|(i, probabilities)| {
            let meta = flags[i];
            Prediction {
                patient: meta.patient,
                x: meta.x,
                y: meta.y,
                file: files[i].clone(),
                label: (meta.flags & FLAG_UNLABELED == 0).then_some(meta.label),
                predicted: predictions::predicted_class(&probabilities, spec.threshold),
                probabilities,
            }
        })
        .collect();
    let n = rows.len() as u64;
    rt.block_on(job.put(keys::PREDICTIONS, Bytes::from(predictions::to_jsonl(&rows))))?;
    let result = PredictResult {
        prediction_id: spec.prediction_id.clone(),
        images: n,
        device: format!("{device:?}"),
        tta: spec.tta,
        seconds,
        images_per_s: n as f64 / seconds.max(1e-9),
        finished_at: idc::clock::now_rfc3339(),
    };
    // Last: its presence says the predictions are complete.
    rt.block_on(job.put(
        keys::RESULT,
        Bytes::from(serde_json::to_vec_pretty(&result).expect("serializes")),
    ))?;
    log.line(&format!(
        "predicted {n} images in {seconds:.1}s ({:.0} images/s)",
        result.images_per_s
    ));
    Ok(())
}

/// The model of the job's run on `device`, its weights restored from the job's checkpoint.
pub fn load_model(
    rt: &tokio::runtime::Runtime,
    spec: &PredictSpec,
    device: Device,
) -> Result<Model, WorkerError> {
    let outputs = match (spec.classes.len(), spec.loss) {
        (2, LossKind::BceWithLogits) => 1,
        (k, _) => k as i64,
    };
    let mut model = Model::new(
        &spec.model,
        outputs,
        spec.shape,
        &spec.mean,
        &spec.std,
        device,
    );
    let run = Store::open(&spec.run)?;
    restore_model(&mut model, &read_checkpoint(rt, &run, &spec.checkpoint)?)?;
    Ok(model)
}

/// The input's images on `device`, each record's fields, and each record's name.
fn load_input(
    rt: &tokio::runtime::Runtime,
    spec: &PredictSpec,
    device: Device,
) -> Result<(SplitData, Vec<idc::shard::RecordMeta>, Vec<String>), WorkerError> {
    let store = Store::open(&spec.input.store)?;
    let want = Layout {
        shape: spec.shape,
        classes: spec.classes.len() as u16,
    };
    let total = spec.input.records() as usize;
    let mut pixels = Vec::with_capacity(total * spec.shape.pixel_bytes());
    let mut metas = Vec::with_capacity(total);
    let mut files = Vec::with_capacity(total);
    for s in &spec.input.shards {
        let bytes = rt.block_on(store.get(&s.key))?;
        let shard = ShardReader::open_verified(bytes, &s.sha256)
            .map_err(|e| WorkerError::BadInput(format!("shard {}: {e}", store.url_of(&s.key))))?;
        if shard.layout() != want || shard.len() as u64 != s.records {
            return Err(WorkerError::BadInput(format!(
                "shard {} holds {} images of {}x{}x{} in {} classes, but the job expects {} of {}x{}x{} in {} classes (the model's)",
                store.url_of(&s.key),
                shard.len(),
                shard.layout().shape.width,
                shard.layout().shape.height,
                shard.layout().shape.channels,
                shard.layout().classes,
                s.records,
                want.shape.width,
                want.shape.height,
                want.shape.channels,
                want.classes
            )));
        }
        for (i, r) in shard.records().enumerate() {
            pixels.extend_from_slice(r.pixels);
            metas.push(r.meta);
            files.push(predictions::record_ref(&s.key, i));
        }
    }
    if !spec.input.files.is_empty() {
        if spec.input.files.len() != files.len() {
            return Err(WorkerError::BadInput(format!(
                "the job names {} files but its shards hold {} images",
                spec.input.files.len(),
                files.len()
            )));
        }
        files = spec.input.files.clone();
    }
    let labels = metas.iter().map(|m| m.label).collect();
    let split = SplitData::from_hwc(&pixels, labels, spec.shape, device);
    Ok((split, metas, files))
}

/// The probabilities of every image of `split` (two classes: p(IDC) per image; K classes: K
/// per image), averaged over the 8 flips and rotations when `tta`; `progress` gets the images
/// done about once a second.
fn probabilities(
    model: &Model,
    split: &SplitData,
    batch: i64,
    tta: bool,
    progress: &mut dyn FnMut(u64),
) -> Vec<f32> {
    tch::no_grad(|| {
        let n = split.len() as i64;
        let mut out = Vec::with_capacity(split.len() * model.outputs.max(1) as usize);
        let mut last = Instant::now();
        let mut start = 0;
        while start < n {
            let len = batch.min(n - start);
            let x = split.images.narrow(0, start, len);
            out.extend(batch_probabilities(model, &x, tta));
            start += len;
            if last.elapsed() >= Duration::from_secs(1) || start == n {
                progress(start as u64);
                last = Instant::now();
            }
        }
        out
    })
}

/// The probabilities of the images `x` (`[N, C, H, W]`, bytes, on the model's device), as
/// [`probabilities`] gives them. Call within `tch::no_grad`.
pub fn batch_probabilities(model: &Model, x: &Tensor, tta: bool) -> Vec<f32> {
    let p = if tta {
        let mut sum: Option<Tensor> = None;
        for view in dihedral(x) {
            let p = model.probability(&batch_logits(model, &view, false));
            sum = Some(match sum {
                Some(s) => s + p,
                None => p,
            });
        }
        sum.expect("eight views") / 8.0
    } else {
        model.probability(&batch_logits(model, x, false))
    };
    Vec::<f32>::try_from(p.to_kind(Kind::Float).flatten(0, -1).to_device(Device::Cpu))
        .expect("float probabilities")
}

/// The 8 images of the dihedral group of a square batch `[N, C, H, W]`: the 4 rotations by 90
/// degrees, each also mirrored.
fn dihedral(x: &Tensor) -> Vec<Tensor> {
    let mut views = Vec::with_capacity(8);
    for k in 0..4 {
        let r = x.rot90(k, [2, 3]);
        views.push(r.flip([3]));
        views.push(r);
    }
    views
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dihedral_views_are_the_eight_distinct_symmetries() {
        let x = Tensor::arange(9, (Kind::Int64, Device::Cpu)).view([1, 1, 3, 3]);
        let views: Vec<Vec<i64>> = dihedral(&x)
            .iter()
            .map(|v| Vec::<i64>::try_from(v.flatten(0, -1)).unwrap())
            .collect();
        let mut distinct = views.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 8, "{views:?}");
        assert!(views.contains(&(0..9).collect::<Vec<_>>()));
    }
}
