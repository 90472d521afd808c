//! The training run, by phase: set up (device, data, model), resume, train each epoch (with
//! timed checkpoints), close it (validate, keep the best, checkpoint), report. Every output goes
//! to the run's folder in the bucket (keys from `idc::layout::run`), each object written whole.

use crate::data::SplitData;
use crate::error::WorkerError;
use crate::model::Model;
use crate::runlog::RunLog;
use crate::sampler::rng_for;
use crate::step::{EpochOrder, LossWindow, TrainStep, WindowStep, loss_of};
use bytes::Bytes;
use idc::layout::run as keys;
use idc::metrics::{self, AnyReport, ErrorKind, Metrics, MetricsRecord, Misclassified};
use idc::spec::{DeviceSpec, LossKind, ModelSpec, Precision, RunSpec};
use idc::store::Store;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Finished,
    /// Stopped on request after writing a checkpoint.
    Preempted,
}

/// What the `latest` pointer records: where training stands.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Progress {
    checkpoint: String,
    /// Epoch in progress (0-based) and steps done in it.
    epoch: u32,
    step_in_epoch: u64,
    global_step: u64,
    epoch_loss_sum: f64,
    epoch_seen: u64,
    best_epoch: Option<u32>,
    best_value: Option<f64>,
    best_checkpoint: Option<String>,
    /// Best value of the early-stopping metric so far.
    stop_metric_best: Option<f64>,
    since_improvement: u32,
    stopped_early: bool,
    train_seconds: f64,
    images_trained: u64,
    /// When the run first started (Unix seconds): the TensorBoard events' wall-time origin.
    #[serde(default)]
    started_unix: f64,
}

/// What a run's phases share once it is set up.
struct Session {
    t: idc::spec::TrainSpec,
    device: Device,
    bf16: bool,
    data: crate::data::Dataset,
    train: TrainStep,
    p: Progress,
    /// metrics.jsonl so far.
    metric_lines: Vec<String>,
    steps_per_epoch: u64,
    total_steps: u64,
    window: LossWindow,
    checkpoint_every: Option<std::time::Duration>,
    last_checkpoint: Instant,
}

pub struct Trainer<'a> {
    spec: RunSpec,
    out: Store,
    rt: &'a tokio::runtime::Runtime,
    log: RunLog,
    stop: Arc<AtomicBool>,
    /// This attempt's number (1-based).
    attempt: u32,
    /// The run's mirror in MLflow, when its experiment names a server.
    tracker: Option<crate::track::Tracker>,
}

/// A deterministic torch seed for one training step (dropout), so a resumed run draws alike.
fn step_seed(seed: u64, epoch: u32, step: u64) -> i64 {
    let mut r = rng_for(seed, 3, epoch, step);
    (rand_chacha::rand_core::RngCore::next_u64(&mut r) >> 1) as i64
}

impl<'a> Trainer<'a> {
    pub fn new(
        spec: RunSpec,
        out: Store,
        rt: &'a tokio::runtime::Runtime,
        log: RunLog,
        stop: Arc<AtomicBool>,
        attempt: u32,
    ) -> Self {
        Self {
            spec,
            out,
            rt,
            log,
            stop,
            attempt,
            tracker: None,
        }
    }

    fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), WorkerError> {
        Ok(self.rt.block_on(self.out.put(key, Bytes::from(bytes)))?)
    }

    /// Trains (or resumes) the run to its end or to a stop request, its log written to the
    /// bucket as it goes: at once when set-up starts, then every few seconds with new lines.
    pub fn run(&mut self) -> Result<Outcome, WorkerError> {
        let timer = self
            .log
            .flush_every(self.rt, &self.out, crate::runlog::FLUSH_EVERY);
        let outcome = self.train();
        // Stopped before the caller's last flush (of the outcome or the error), which must
        // land last.
        self.rt.block_on(timer.stop());
        outcome
    }

    fn train(&mut self) -> Result<Outcome, WorkerError> {
        let mut s = self.setup()?;
        self.resume(&mut s)?;
        if s.p.started_unix == 0.0 {
            s.p.started_unix = idc::clock::unix_now();
        }
        let backend = if std::env::var_os("IDC_POD_NAME").is_some() {
            "kubernetes"
        } else {
            "local"
        };
        let tags = vec![
            ("idc.dataset_id".to_string(), s.data.manifest.id.clone()),
            ("idc.dataset".to_string(), self.spec.dataset.clone()),
            ("idc.model".to_string(), s.t.model.name().to_string()),
            ("idc.backend".to_string(), backend.to_string()),
            ("idc.attempt".to_string(), self.attempt.to_string()),
        ];
        self.tracker = crate::track::Tracker::start(
            self.rt,
            &self.out,
            &self.spec,
            tags,
            s.p.started_unix,
            &self.log,
        );
        while s.p.epoch < s.t.epochs && !s.p.stopped_early {
            if let Some(outcome) = self.epoch(&mut s)? {
                return Ok(outcome);
            }
        }
        self.report(s)
    }

    /// Checks the spec and the libtorch, picks the device, loads the dataset, builds the model.
    fn setup(&mut self) -> Result<Session, WorkerError> {
        let t = self.spec.train.clone();
        t.validate().map_err(WorkerError::BadInput)?;
        // Before any work: a libtorch without the shim's operators cannot train.
        crate::shim::require_ops()?;
        let (device, bf16) = self.pick_device(&t)?;
        let data = self.load_data(device)?;
        let model = self.build_model(&t, &data, device, bf16)?;
        let side = data.manifest.image.height as i64;
        let train = TrainStep::new(&t, model, side, bf16, device);

        let n_train = data.train.len() as u64;
        let batch = t.batch_size as u64;
        let mut steps_per_epoch = n_train.div_ceil(batch);
        if let Some(m) = t.max_steps_per_epoch {
            steps_per_epoch = steps_per_epoch.min(m as u64);
        }
        let total_steps = steps_per_epoch * t.epochs as u64;
        let log_every = t.log_every_steps.max(1);
        let window = LossWindow::new(log_every, device);
        let checkpoint_every = t.checkpoint_interval();
        let last_checkpoint = Instant::now();
        Ok(Session {
            t,
            device,
            bf16,
            data,
            train,
            p: Progress::default(),
            metric_lines: vec![],
            steps_per_epoch,
            total_steps,
            window,
            checkpoint_every,
            last_checkpoint,
        })
    }

    /// The device `t` asks for, and whether it trains in bf16; said in the log.
    fn pick_device(&mut self, t: &idc::spec::TrainSpec) -> Result<(Device, bool), WorkerError> {
        let device = device_for(t.device, "train.device")?;
        let bf16 = match (t.precision, device) {
            (Precision::Bf16, Device::Cpu) => {
                return Err(WorkerError::BadInput(
                    "train.precision bf16 needs a CUDA device".into(),
                ));
            }
            (Precision::Bf16 | Precision::Auto, Device::Cuda(_)) => true,
            _ => false,
        };
        if device.is_cuda() {
            tch::Cuda::cudnn_set_benchmark(true);
        }
        self.log.line(&format!(
            "run {}: {} on {device:?}{}, dataset {}",
            self.spec.run_id,
            t.model.name(),
            if bf16 {
                " (bf16 autocast, channels-last)"
            } else {
                ""
            },
            self.spec.dataset
        ));
        // Loading the dataset (and pretrained weights) may take minutes: say so now.
        self.flush_log();
        Ok((device, bf16))
    }

    /// The run's dataset, loaded onto `device`.
    fn load_data(&mut self, device: Device) -> Result<crate::data::Dataset, WorkerError> {
        let ds_store = Store::open(&self.spec.dataset)?;
        let started = Instant::now();
        let data = self.rt.block_on(crate::data::load(&ds_store, device))?;
        self.log.line(&format!(
            "dataset {}: train {}, val {}, test {} patches, loaded in {:.1}s",
            data.manifest.id,
            data.train.len(),
            data.val.len(),
            data.test.len(),
            started.elapsed().as_secs_f64()
        ));
        Ok(data)
    }

    /// The model `t` describes for `data` (its pretrained weights loaded), once `t` is checked
    /// against the dataset.
    fn build_model(
        &mut self,
        t: &idc::spec::TrainSpec,
        data: &crate::data::Dataset,
        device: Device,
        bf16: bool,
    ) -> Result<Model, WorkerError> {
        let m = &data.manifest;
        t.check_dataset(m.num_classes(), m.image.shape())
            .map_err(|e| WorkerError::BadInput(format!("dataset {}: {e}", self.spec.dataset)))?;
        let outputs = match (m.num_classes(), t.loss.kind) {
            (2, LossKind::BceWithLogits) => 1,
            (k, _) => k as i64,
        };
        tch::manual_seed(step_seed(t.seed, u32::MAX, 0));
        let mut model = Model::new(&t.model, outputs, m.image.shape(), &m.mean, &m.std, device);
        if let ModelSpec::Resnet34 {
            pretrained,
            freeze_backbone,
            ..
        } = &t.model
        {
            if let Some(src) = pretrained {
                let local = self.fetch(src)?;
                model.load_pretrained(local.path())?;
                self.log
                    .line(&format!("loaded pretrained backbone from {src}"));
            }
            if *freeze_backbone {
                model.freeze_backbone();
            }
        }
        if bf16 {
            model.use_channels_last();
        }
        Ok(model)
    }

    /// Continues from the newest checkpoint, if there is one: weights, optimizer state,
    /// progress, and the metrics written up to it.
    fn resume(&mut self, s: &mut Session) -> Result<(), WorkerError> {
        let Session {
            train,
            p,
            metric_lines,
            ..
        } = s;
        if let Some(bytes) = self
            .rt
            .block_on(self.out.get_opt(keys::LATEST_CHECKPOINT))?
        {
            *p = serde_json::from_slice(&bytes).map_err(|e| {
                WorkerError::Internal(format!("{}: {e}", self.out.url_of(keys::LATEST_CHECKPOINT)))
            })?;
            let tensors = self.load_checkpoint(&p.checkpoint)?;
            restore_model(&mut train.model, &tensors)?;
            train
                .opt
                .load_state(&tensors)
                .map_err(WorkerError::Internal)?;
            *metric_lines = self.existing_metrics(p)?;
            self.log.line(&format!(
                "resumed from {} (epoch {}, step {} of it)",
                p.checkpoint,
                p.epoch + 1,
                p.step_in_epoch
            ));
        }
        Ok(())
    }

    /// Trains the epoch in progress from where it stands, checkpointing as due; then validates
    /// and checkpoints it. Some(outcome) when the run stops here.
    fn epoch(&mut self, s: &mut Session) -> Result<Option<Outcome>, WorkerError> {
        let (steps_per_epoch, total_steps, checkpoint_every) =
            (s.steps_per_epoch, s.total_steps, s.checkpoint_every);
        let batch = s.t.batch_size as u64;
        let log_every = s.t.log_every_steps.max(1);
        let Session {
            t,
            device,
            data,
            train,
            p,
            metric_lines,
            window,
            last_checkpoint,
            ..
        } = s;
        let device = *device;
        let epoch_started = Instant::now();
        // Training time since it was last added to `p.train_seconds` (at a checkpoint).
        let mut segment = Instant::now();
        let order = EpochOrder::new(t.sampling, &data.train.labels_host, t.seed, p.epoch, device);
        let mut window_clock = (Instant::now(), 0u64);
        while p.step_in_epoch < steps_per_epoch {
            let step = p.step_in_epoch;
            let idx = order
                .batch(step, batch)
                .expect("steps_per_epoch fits the order");
            let n = idx.size()[0] as u64;
            let lr = t
                .schedule
                .lr_at(t.optimizer.lr, p.global_step, steps_per_epoch, total_steps);
            let loss = train.run(
                &data.train.images,
                &data.train.labels,
                &idx,
                step_seed(t.seed, p.epoch, step),
                lr,
            )?;
            window.push(
                &loss,
                WindowStep {
                    epoch: p.epoch + 1,
                    step_in_epoch: step,
                    patches: n,
                },
            );
            p.images_trained += n;
            p.step_in_epoch += 1;
            p.global_step += 1;
            window_clock.1 += n;
            if p.global_step.is_multiple_of(log_every as u64) {
                // The one read of this window: it waits for the device, so the rate is true.
                let loss_v = drain_losses(window, p)?;
                let rate = window_clock.1 as f64 / window_clock.0.elapsed().as_secs_f64().max(1e-9);
                let rec = MetricsRecord::Step {
                    epoch: p.epoch + 1,
                    step: p.global_step,
                    loss: loss_v,
                    lr,
                    images_per_s: rate,
                };
                metric_lines.push(serde_json::to_string(&rec).expect("serializes"));
                self.log.line(&format!(
                    "epoch {} step {}/{steps_per_epoch} loss {loss_v:.4} lr {lr:.2e} {rate:.0} img/s",
                    p.epoch + 1,
                    p.step_in_epoch
                ));
                window_clock = (Instant::now(), 0);
            }
            let stop = self.stop.load(Ordering::SeqCst);
            let due = checkpoint_every.is_some_and(|every| last_checkpoint.elapsed() >= every);
            if (stop || due) && p.step_in_epoch < steps_per_epoch {
                drain_losses(window, p)?;
                p.train_seconds += segment.elapsed().as_secs_f64();
                let key = keys::checkpoint_mid_epoch(p.epoch + 1, p.step_in_epoch);
                self.save_checkpoint(train, p, key, metric_lines)?;
                segment = Instant::now();
                *last_checkpoint = Instant::now();
                if stop {
                    self.log.line(&format!(
                        "stop requested: checkpoint {} written; exiting",
                        p.checkpoint
                    ));
                    self.flush_log();
                    return Ok(Some(Outcome::Preempted));
                }
                self.log.line(&format!(
                    "checkpoint {} written (train.checkpoint_every: {})",
                    p.checkpoint,
                    t.checkpoint_every.as_deref().unwrap_or_default()
                ));
            }
        }
        drain_losses(window, p)?;

        let seconds = epoch_started.elapsed().as_secs_f64();
        p.train_seconds += segment.elapsed().as_secs_f64();
        self.close_epoch(s, seconds)
    }

    /// The end of an epoch of `seconds`: validates, keeps the best, decides early stopping,
    /// records the epoch and checkpoints it. Some(outcome) when the run stops here.
    fn close_epoch(
        &mut self,
        s: &mut Session,
        seconds: f64,
    ) -> Result<Option<Outcome>, WorkerError> {
        let (steps_per_epoch, total_steps, bf16) = (s.steps_per_epoch, s.total_steps, s.bf16);
        let Session {
            t,
            data,
            train,
            p,
            metric_lines,
            last_checkpoint,
            ..
        } = s;
        let val = evaluate(
            &train.model,
            &data.val,
            t.eval_batch_size as i64,
            t.loss.kind,
            bf16,
        );
        let train_loss = p.epoch_loss_sum / p.epoch_seen.max(1) as f64;
        let value = t.select_metric.of(&val);
        let better = match p.best_value {
            None => true,
            Some(b) if t.select_metric.higher_is_better() => value > b,
            Some(b) => value < b,
        };
        if let Some(es) = &t.early_stopping {
            let v = es.metric.of(&val);
            let improved = match p.stop_metric_best {
                None => true,
                Some(b) if es.metric.higher_is_better() => v > b + es.min_delta,
                Some(b) => v < b - es.min_delta,
            };
            if improved {
                p.stop_metric_best = Some(v);
                p.since_improvement = 0;
            } else {
                p.since_improvement += 1;
            }
            if p.since_improvement >= es.patience {
                p.stopped_early = true;
            }
        }
        let lr = t.schedule.lr_at(
            t.optimizer.lr,
            p.global_step.saturating_sub(1),
            steps_per_epoch,
            total_steps,
        );
        let rec = MetricsRecord::Epoch {
            epoch: p.epoch + 1,
            train_loss,
            lr,
            val: val.clone(),
            duration_s: seconds,
            images_per_s: p.epoch_seen as f64 / seconds.max(1e-9),
            best: better,
        };
        metric_lines.push(serde_json::to_string(&rec).expect("serializes"));
        self.log.line(&format!(
            "epoch {}/{}: train loss {train_loss:.4}, val {val}{}",
            p.epoch + 1,
            t.epochs,
            if better { " (best)" } else { "" }
        ));
        let key = keys::checkpoint(p.epoch + 1);
        if better {
            p.best_epoch = Some(p.epoch + 1);
            p.best_value = Some(value);
            p.best_checkpoint = Some(key.clone());
        }
        p.epoch += 1;
        p.step_in_epoch = 0;
        p.epoch_loss_sum = 0.0;
        p.epoch_seen = 0;
        if p.stopped_early {
            self.log
                .line("early stopping: no improvement in validation");
        }
        self.save_checkpoint(train, p, key, metric_lines)?;
        *last_checkpoint = Instant::now();
        if self.stop.load(Ordering::SeqCst) && p.epoch < t.epochs && !p.stopped_early {
            self.log.line(&format!(
                "stop requested: checkpoint {} written; exiting",
                p.checkpoint
            ));
            self.flush_log();
            return Ok(Some(Outcome::Preempted));
        }
        Ok(None)
    }

    /// Tests the best checkpoint (at 0.5 and at the F1-optimal threshold chosen on validation)
    /// and writes the report.
    fn report(&mut self, s: Session) -> Result<Outcome, WorkerError> {
        let Session {
            t,
            device,
            bf16,
            data,
            train,
            p,
            metric_lines: s_metric_lines,
            ..
        } = s;
        // Test with the best checkpoint; the F1-optimal threshold is chosen on validation.
        let best = p
            .best_checkpoint
            .clone()
            .ok_or_else(|| WorkerError::Internal("no checkpoint".into()))?;
        let tensors = self.load_checkpoint(&best)?;
        let mut model = train.model;
        restore_model(&mut model, &tensors)?;
        let batch = t.eval_batch_size as i64;
        let (val_probs, val_loss) = predict(&model, &data.val, batch, t.loss.kind, bf16);
        let (probs, loss) = predict(&model, &data.test, batch, t.loss.kind, bf16);
        let k = data.manifest.num_classes();
        let mut report = AnyReport {
            run_id: self.spec.run_id.clone(),
            dataset_id: data.manifest.id.clone(),
            model: t.model.name().to_string(),
            device: format!("{device:?}"),
            best_epoch: p.best_epoch.unwrap_or(0),
            epochs_run: p.epoch,
            classes: data.manifest.classes.clone(),
            test: Metrics::default(),
            test_at_val_threshold: None,
            val: Metrics::default(),
            roc: vec![],
            pr: vec![],
            train_seconds: p.train_seconds,
            train_images_per_s: p.images_trained as f64 / p.train_seconds.max(1e-9),
            config: serde_json::to_value(&t).expect("serializes"),
            finished_at: idc::clock::now_rfc3339(),
            misclassified: vec![],
        };
        let scored = Scored {
            data: &data,
            probs: &probs,
            loss,
            val_probs: &val_probs,
            val_loss,
        };
        let summary = if k == 2 {
            scored.binary(&mut report)
        } else {
            scored.multiclass(&mut report, k)
        };
        let mut jsonl = s_metric_lines.join("\n");
        jsonl.push('\n');
        let records = metrics::parse_jsonl(jsonl.as_bytes());
        self.put(
            keys::TENSORBOARD,
            idc::tracking::tensorboard::events_of(&records, Some(&report), p.started_unix),
        )?;
        // Every test image's prediction, before the report (whose presence says the run is done).
        let threshold = report
            .test_at_val_threshold
            .as_ref()
            .map_or(0.5, |m| m.threshold);
        self.put(
            keys::TEST_PREDICTIONS,
            idc::predictions::to_jsonl(&test_predictions(&data, &probs, k, threshold)),
        )?;
        let report_json = serde_json::to_vec_pretty(&report).expect("serializes");
        self.put(keys::REPORT, report_json.clone())?;
        self.log.line(&summary);
        if let Some(t) = &self.tracker {
            let scalars = idc::tracking::scalars_of(&records, Some(&report));
            t.finish(self.rt, &scalars, report_json, &self.log);
        }
        self.flush_log();
        Ok(Outcome::Finished)
    }

    /// Writes the checkpoint, the metrics so far, then the `latest` pointer (the commit), then
    /// drops the previous checkpoint unless it is the best.
    fn save_checkpoint(
        &self,
        train: &TrainStep,
        p: &mut Progress,
        key: String,
        metric_lines: &[String],
    ) -> Result<(), WorkerError> {
        let mut named: Vec<(String, Tensor)> = train
            .model
            .vs
            .variables()
            .into_iter()
            .map(|(n, t)| (format!("model.{n}"), t.to_device(Device::Cpu).contiguous()))
            .collect();
        named.extend(
            train
                .opt
                .state_tensors()
                .into_iter()
                .map(|(n, t)| (n, t.to_device(Device::Cpu).contiguous())),
        );
        let file = tempfile::Builder::new()
            .suffix(".safetensors")
            .tempfile()
            .map_err(WorkerError::io("staging a checkpoint in a temporary file"))?;
        Tensor::write_safetensors(&named, file.path())?;
        let bytes = std::fs::read(file.path())
            .map_err(WorkerError::io("staging a checkpoint in a temporary file"))?;
        self.put(&key, bytes)?;
        let mut jsonl = metric_lines.join("\n");
        jsonl.push('\n');
        let records = metrics::parse_jsonl(jsonl.as_bytes());
        let events = idc::tracking::tensorboard::events_of(&records, None, p.started_unix);
        self.put(keys::METRICS, jsonl.into_bytes())?;
        self.put(keys::TENSORBOARD, events)?;
        if let Some(t) = &self.tracker {
            t.push(
                self.rt,
                &idc::tracking::scalars_of(&records, None),
                &self.log,
            );
        }
        let previous = std::mem::replace(&mut p.checkpoint, key);
        self.put(
            keys::LATEST_CHECKPOINT,
            serde_json::to_vec_pretty(p).expect("serializes"),
        )?;
        if !previous.is_empty()
            && previous != p.checkpoint
            && Some(&previous) != p.best_checkpoint.as_ref()
        {
            self.rt.block_on(self.out.delete(&previous))?;
        }
        self.flush_log();
        Ok(())
    }

    fn load_checkpoint(&self, key: &str) -> Result<BTreeMap<String, Tensor>, WorkerError> {
        read_checkpoint(self.rt, &self.out, key)
    }

    /// metrics.jsonl as of the checkpoint being resumed (later lines came from lost work).
    fn existing_metrics(&self, p: &Progress) -> Result<Vec<String>, WorkerError> {
        let Some(bytes) = self.rt.block_on(self.out.get_opt(keys::METRICS))? else {
            return Ok(vec![]);
        };
        Ok(metrics::parse_jsonl(&bytes)
            .into_iter()
            .filter(|r| match r {
                MetricsRecord::Step { step, .. } => *step <= p.global_step,
                MetricsRecord::Epoch { epoch, .. } => *epoch <= p.epoch,
            })
            .map(|r| serde_json::to_string(&r).expect("serializes"))
            .collect())
    }

    /// A local file for weights given as a path or a bucket URL.
    fn fetch(&self, src: &str) -> Result<tempfile::NamedTempFile, WorkerError> {
        let bytes = if src.contains("://") {
            // The object's folder as `idcctl weights import` wrote it (the root of a URL too).
            let (store, name) = Store::open_object(src)?;
            self.rt.block_on(store.get(&name))?.to_vec()
        } else {
            std::fs::read(src)
                .map_err(|e| WorkerError::BadInput(format!("pretrained weights {src}: {e}")))?
        };
        let ext = src.rsplit('.').next().unwrap_or("ot");
        let file = tempfile::Builder::new()
            .suffix(&format!(".{ext}"))
            .tempfile()
            .map_err(WorkerError::io(
                "staging pretrained weights in a temporary file",
            ))?;
        std::fs::write(file.path(), bytes).map_err(WorkerError::io(
            "staging pretrained weights in a temporary file",
        ))?;
        Ok(file)
    }

    /// Records a failure in the log and writes the log to the bucket.
    pub fn log_failure(&self, e: &WorkerError) {
        self.log.line(&format!("error: {e}"));
        self.flush_log();
    }

    fn flush_log(&self) {
        if let Err(e) = self.rt.block_on(self.log.flush(&self.out)) {
            eprintln!("warning: could not write the log to the bucket: {e}");
        }
    }
}

/// The device `spec` asks for (`what` names the setting in errors).
pub fn device_for(spec: DeviceSpec, what: &str) -> Result<Device, WorkerError> {
    Ok(match spec {
        DeviceSpec::Cpu => Device::Cpu,
        DeviceSpec::Cuda if !tch::Cuda::is_available() => {
            return Err(WorkerError::BadInput(format!(
                "{what} is cuda but no CUDA device is usable"
            )));
        }
        DeviceSpec::Cuda => Device::Cuda(0),
        DeviceSpec::Auto => Device::cuda_if_available(),
    })
}

/// Reads the safetensors checkpoint `key` of the run folder `store`.
pub fn read_checkpoint(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    key: &str,
) -> Result<BTreeMap<String, Tensor>, WorkerError> {
    let bytes = rt.block_on(store.get(key))?;
    let file = tempfile::Builder::new()
        .suffix(".safetensors")
        .tempfile()
        .map_err(WorkerError::io("staging a checkpoint in a temporary file"))?;
    std::fs::write(file.path(), &bytes)
        .map_err(WorkerError::io("staging a checkpoint in a temporary file"))?;
    let tensors = Tensor::read_safetensors(file.path())
        .map_err(|e| WorkerError::Internal(format!("checkpoint {}: {e}", store.url_of(key))))?;
    Ok(tensors.into_iter().collect())
}

/// Reads the loss window into the epoch's running sum (in step order, as f64); returns the
/// last step's loss. A non-finite loss fails the run here, at most one window late.
fn drain_losses(window: &mut LossWindow, p: &mut Progress) -> Result<f64, WorkerError> {
    let mut last = f64::NAN;
    for (s, loss) in window.drain()? {
        p.epoch_loss_sum += loss * s.patches as f64;
        p.epoch_seen += s.patches;
        last = loss;
    }
    Ok(last)
}

/// Probabilities as one row per image, `k` per row: two classes come as p(IDC) alone.
pub fn class_rows(probs: &[f32], k: usize) -> Vec<Vec<f32>> {
    if k == 2 {
        probs.iter().map(|&p| vec![1.0 - p, p]).collect()
    } else {
        probs.chunks(k).map(<[f32]>::to_vec).collect()
    }
}

/// A run's predictions on test and validation, from its best checkpoint.
struct Scored<'a> {
    data: &'a crate::data::Dataset,
    probs: &'a [f32],
    loss: f64,
    val_probs: &'a [f32],
    val_loss: f64,
}

impl Scored<'_> {
    /// Scores two classes into `report`, at 0.5 and at the F1-optimal threshold on validation;
    /// the summary line.
    fn binary(&self, report: &mut AnyReport) -> String {
        let labels = &self.data.test.labels_host;
        // The F1-optimal threshold is chosen on validation.
        let threshold = metrics::f1_optimal_threshold(self.val_probs, &self.data.val.labels_host);
        let test = metrics::evaluate(self.probs, labels, 0.5, self.loss);
        let at = metrics::evaluate(self.probs, labels, threshold, self.loss);
        let line = format!(
            "test (best epoch {}): acc {:.4} bal-acc {:.4} F1 {:.4} AUC {:.4} AP {:.4}; at val threshold {threshold:.3}: F1 {:.4}",
            report.best_epoch,
            test.accuracy,
            test.balanced_accuracy,
            test.f1,
            test.roc_auc,
            test.pr_auc,
            at.f1
        );
        report.val = metrics::evaluate(
            self.val_probs,
            &self.data.val.labels_host,
            0.5,
            self.val_loss,
        )
        .into();
        report.roc = metrics::thin(&metrics::roc_curve(self.probs, labels), 200);
        report.pr = metrics::thin(&metrics::pr_curve(self.probs, labels), 200);
        report.misclassified = misclassified(self.data, self.probs);
        report.test = test.into();
        report.test_at_val_threshold = Some(at);
        line
    }

    /// Scores `k` classes into `report`; the summary line.
    fn multiclass(&self, report: &mut AnyReport, k: usize) -> String {
        let labels = &self.data.test.labels_host;
        let test = metrics::evaluate_multiclass(self.probs, labels, k, self.loss);
        report.val = metrics::evaluate_multiclass(
            self.val_probs,
            &self.data.val.labels_host,
            k,
            self.val_loss,
        )
        .into();
        report.misclassified = confusions(self.data, self.probs, k);
        let line = format!(
            "test (best epoch {}): {}",
            report.best_epoch,
            Metrics::from(test.clone())
        );
        report.test = test.into();
        line
    }
}

/// The test split's predictions, in its order, named by their staged records.
fn test_predictions(
    data: &crate::data::Dataset,
    probs: &[f32],
    k: usize,
    threshold: f64,
) -> Vec<idc::predictions::Prediction> {
    class_rows(probs, k)
        .into_iter()
        .zip(&data.test.origins)
        .map(|(probabilities, o)| idc::predictions::Prediction {
            patient: o.meta.patient,
            x: o.meta.x,
            y: o.meta.y,
            file: idc::predictions::record_ref(
                &data.manifest.shards[o.shard as usize].key,
                o.record as usize,
            ),
            label: Some(o.meta.label),
            predicted: idc::predictions::predicted_class(&probabilities, threshold),
            probabilities,
        })
        .collect()
}

/// The most confidently misclassified test patches at 0.5, located in the staged dataset.
fn misclassified(data: &crate::data::Dataset, probs: &[f32]) -> Vec<Misclassified> {
    metrics::most_confident_errors(
        probs,
        &data.test.labels_host,
        0.5,
        metrics::MISCLASSIFIED_PER_KIND,
    )
    .into_iter()
    .map(|(i, error)| located(data, i, error, probs[i], None))
    .collect()
}

/// K classes: the most confidently misclassified test images, located in the staged dataset.
fn confusions(data: &crate::data::Dataset, probs: &[f32], k: usize) -> Vec<Misclassified> {
    metrics::most_confident_confusions(
        probs,
        &data.test.labels_host,
        k,
        2 * metrics::MISCLASSIFIED_PER_KIND,
    )
    .into_iter()
    .map(|(i, predicted, p)| located(data, i, ErrorKind::WrongClass, p, Some(predicted)))
    .collect()
}

/// Test image `i`, misclassified as `error`, with where its record is in the staged dataset.
fn located(
    data: &crate::data::Dataset,
    i: usize,
    error: ErrorKind,
    probability: f32,
    predicted: Option<u8>,
) -> Misclassified {
    let o = data.test.origins[i];
    Misclassified {
        error,
        shard: data.manifest.shards[o.shard as usize].key.clone(),
        record: o.record as u64,
        patient: o.meta.patient,
        x: o.meta.x,
        y: o.meta.y,
        label: data.test.labels_host[i],
        probability: probability as f64,
        predicted,
    }
}

pub fn restore_model(
    model: &mut Model,
    tensors: &BTreeMap<String, Tensor>,
) -> Result<(), WorkerError> {
    let mut vars = model.vs.variables();
    for (name, var) in vars.iter_mut() {
        let t = tensors
            .get(&format!("model.{name}"))
            .ok_or_else(|| WorkerError::Internal(format!("checkpoint lacks tensor {name}")))?;
        tch::no_grad(|| var.copy_(&t.to_device(var.device())));
    }
    Ok(())
}

/// The mean loss over a split and its probabilities: two classes, that of class 1 (IDC) per
/// image; K classes, K per image (row-major).
pub fn predict(
    model: &Model,
    split: &SplitData,
    batch: i64,
    kind: LossKind,
    bf16: bool,
) -> (Vec<f32>, f64) {
    tch::no_grad(|| {
        let n = split.len() as i64;
        let mut probs = vec![];
        let mut loss_sum = Tensor::zeros([], (Kind::Double, split.images.device()));
        let mut start = 0;
        while start < n {
            let len = batch.min(n - start);
            let logits = batch_logits(model, &split.images.narrow(0, start, len), bf16);
            let y = split.labels.narrow(0, start, len);
            loss_sum += loss_of(&logits, &y, kind, None).to_kind(Kind::Double) * len as f64;
            probs.push(model.probability(&logits));
            start += len;
        }
        // One read for the whole split.
        let probs = if probs.is_empty() {
            vec![]
        } else {
            Vec::<f32>::try_from(Tensor::cat(&probs, 0).flatten(0, -1).to_device(Device::Cpu))
                .expect("float probabilities")
        };
        (probs, loss_sum.double_value(&[]) / n.max(1) as f64)
    })
}

/// The float logits of a batch of uint8 images `[N, C, H, W]` (evaluation mode, no grad).
pub fn batch_logits(model: &Model, images: &Tensor, bf16: bool) -> Tensor {
    let x = images.to_kind(Kind::Float) / 255.0;
    let x = if bf16 {
        crate::model::channels_last(&x)
    } else {
        x
    };
    crate::shim::maybe_bf16(bf16, || model.forward(&x, false)).to_kind(Kind::Float)
}

/// The metrics of a split: two classes at 0.5, K classes by argmax.
fn evaluate(model: &Model, split: &SplitData, batch: i64, kind: LossKind, bf16: bool) -> Metrics {
    let (probs, loss) = predict(model, split, batch, kind, bf16);
    match model.outputs {
        1 | 2 => metrics::evaluate(&probs, &split.labels_host, 0.5, loss).into(),
        k => metrics::evaluate_multiclass(&probs, &split.labels_host, k as usize, loss).into(),
    }
}
