//! `idc-worker bench`: times the training step that `idc-worker run` takes (`step::TrainStep`,
//! with the epoch order, loss window and logging reads of a run) on data resident on this
//! machine's device, and counts per step the ATen ops dispatched, host-to-device copies and
//! device-to-host reads. Prints images/s per model, batch size and precision.

use crate::error::WorkerError;
use crate::model::Model;
use crate::shim::{Counter, Counts};
use crate::step::{EpochOrder, LossWindow, TrainStep, WindowStep};
use idc::spec::{LossKind, LossSpec, ModelSpec, OptimizerKind, OptimizerSpec, Sampling, TrainSpec};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Models to time (logreg, simple_cnn, resnet34).
    #[arg(long, value_delimiter = ',', default_value = "simple_cnn,resnet34")]
    models: Vec<String>,
    /// Batch sizes to time.
    #[arg(long, value_delimiter = ',', default_value = "256,1024")]
    batch_sizes: Vec<i64>,
    /// Precisions to time: fp32, bf16 (autocast + channels-last, CUDA only). Default: bf16 on
    /// CUDA, fp32 on the CPU.
    #[arg(long, value_delimiter = ',')]
    precisions: Vec<String>,
    /// Timed steps per setup (after warm-up steps).
    #[arg(long, default_value_t = 60)]
    steps: usize,
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// Resident synthetic patches to sample from.
    #[arg(long, default_value_t = 24_000)]
    patches: i64,
    /// Read the losses back every this many steps, as a run's `train.log_every_steps`.
    #[arg(long, default_value_t = 50)]
    log_every: u32,
    /// Time on this device (cpu, cuda); default: CUDA when usable.
    #[arg(long)]
    device: Option<String>,
    /// Intra-op threads (default: libtorch's, one per core).
    #[arg(long)]
    threads: Option<i32>,
    /// One JSON object per setup instead of the table.
    #[arg(long)]
    json: bool,
}

/// One timed setup.
#[derive(Debug, serde::Serialize)]
struct Row {
    model: String,
    batch: i64,
    precision: &'static str,
    device: String,
    threads: i32,
    images_per_s: f64,
    /// Per training step that does not log.
    step: Counts,
    /// The optimizer update alone.
    optimizer_ops: u64,
    /// A logging step's read of the loss window.
    log_read: Counts,
}

pub fn run(args: &BenchArgs) -> Result<(), WorkerError> {
    let device = match args.device.as_deref() {
        None => Device::cuda_if_available(),
        Some("cpu") => Device::Cpu,
        Some("cuda") if tch::Cuda::is_available() => Device::Cuda(0),
        Some("cuda") => {
            return Err(WorkerError::BadInput(
                "--device cuda: no CUDA device is usable".into(),
            ));
        }
        Some(other) => {
            return Err(WorkerError::BadInput(format!(
                "--device: unknown device '{other}' (cpu, cuda)"
            )));
        }
    };
    crate::shim::require_ops()?;
    if let Some(n) = args.threads {
        tch::set_num_threads(n);
    }
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let precisions: Vec<bool> = if args.precisions.is_empty() {
        vec![device.is_cuda()]
    } else {
        args.precisions
            .iter()
            .map(|p| match p.as_str() {
                "fp32" => Ok(false),
                "bf16" if device.is_cuda() => Ok(true),
                "bf16" => Err(WorkerError::BadInput(
                    "--precisions bf16 needs a CUDA device".into(),
                )),
                other => Err(WorkerError::BadInput(format!(
                    "--precisions: unknown precision '{other}' (fp32, bf16)"
                ))),
            })
            .collect::<Result<_, _>>()?
    };
    let models: Vec<(String, ModelSpec)> = args
        .models
        .iter()
        .map(|name| model_spec(name).map(|m| (name.clone(), m)))
        .collect::<Result<_, _>>()?;

    tch::manual_seed(0);
    let images = Tensor::randint(256, [args.patches, 3, 50, 50], (Kind::Uint8, device));
    let labels_host: Vec<u8> = (0..args.patches).map(|i| u8::from(i % 7 < 2)).collect();
    let labels = Tensor::from_slice(&labels_host)
        .to_kind(Kind::Int64)
        .to_device(device);
    if !args.json {
        println!(
            "device {device:?}, {} threads, {} resident patches; the run's step (weighted sampling, default augmentation, SGD momentum, cross-entropy), losses read every {} steps",
            tch::get_num_threads(),
            args.patches,
            args.log_every
        );
        println!(
            "| model | batch | precision | images/s | ATen ops/step | optimizer ops | H2D/step | D2H/step | D2H/log read |"
        );
        println!("|---|---:|---|---:|---:|---:|---:|---:|---:|");
    }
    for (name, spec) in &models {
        for &bs in &args.batch_sizes {
            for &bf16 in &precisions {
                let row = time_setup(
                    args,
                    name,
                    spec,
                    bs,
                    bf16,
                    device,
                    &images,
                    &labels,
                    &labels_host,
                )?;
                if args.json {
                    println!("{}", serde_json::to_string(&row).expect("serializes"));
                } else {
                    println!(
                        "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} |",
                        row.model,
                        row.batch,
                        row.precision,
                        row.images_per_s,
                        row.step.ops,
                        row.optimizer_ops,
                        row.step.h2d,
                        row.step.d2h,
                        row.log_read.d2h
                    );
                }
            }
        }
    }
    Ok(())
}

fn model_spec(name: &str) -> Result<ModelSpec, WorkerError> {
    Ok(match name {
        "logreg" => ModelSpec::Logreg,
        "simple_cnn" => ModelSpec::SimpleCnn {
            width: 32,
            dropout: 0.5,
        },
        "resnet34" => ModelSpec::Resnet34 {
            pretrained: None,
            freeze_backbone: false,
            input_size: None,
        },
        other => {
            return Err(WorkerError::BadInput(format!(
                "--models: unknown model '{other}' (logreg, simple_cnn, resnet34)"
            )));
        }
    })
}

/// The spec every setup trains with: the run's defaults, SGD with momentum and cross-entropy.
fn bench_spec(model: &ModelSpec, bs: i64, log_every: u32) -> TrainSpec {
    TrainSpec {
        model: model.clone(),
        sampling: Sampling::Weighted,
        loss: LossSpec {
            kind: LossKind::CrossEntropy,
            pos_weight: None,
        },
        optimizer: OptimizerSpec {
            kind: OptimizerKind::Sgd,
            lr: 1e-3,
            momentum: 0.9,
            ..Default::default()
        },
        batch_size: bs as u32,
        log_every_steps: log_every,
        ..Default::default()
    }
}

#[allow(clippy::too_many_arguments)]
fn time_setup(
    args: &BenchArgs,
    name: &str,
    spec: &ModelSpec,
    bs: i64,
    bf16: bool,
    device: Device,
    images: &Tensor,
    labels: &Tensor,
    labels_host: &[u8],
) -> Result<Row, WorkerError> {
    let t = bench_spec(spec, bs, args.log_every);
    let mut model = Model::new(
        spec,
        2,
        idc::shard::Shape::IDC,
        &[0.5; 3],
        &[0.25; 3],
        device,
    );
    if bf16 {
        model.use_channels_last();
    }
    let mut train = TrainStep::new(&t, model, 50, bf16, device);
    let mut loop_ = Loop {
        order: EpochOrder::new(t.sampling, labels_host, t.seed, 0, device),
        epoch: 0,
        step_in_epoch: 0,
        global_step: 0,
        window: LossWindow::new(args.log_every, device),
        log_every: args.log_every.max(1) as u64,
        bs: bs as u64,
    };
    let step = |train: &mut TrainStep, l: &mut Loop| l.step(train, &t, images, labels, labels_host);
    for _ in 0..args.warmup {
        step(&mut train, &mut loop_)?;
    }
    sync(device);
    let started = Instant::now();
    for _ in 0..args.steps {
        step(&mut train, &mut loop_)?;
    }
    sync(device);
    let images_per_s = (bs as usize * args.steps) as f64 / started.elapsed().as_secs_f64();

    // Counted apart from the timing: the callback slows every op. First empty the window so
    // that the counted step does not log; then the optimizer alone; then a logging read.
    loop_.window.drain()?;
    loop_.global_step = loop_.global_step.next_multiple_of(loop_.log_every) + 1;
    let (r, step_counts) = Counter::count(|| step(&mut train, &mut loop_))?;
    r?;
    let (r, opt_counts) = Counter::count(|| train.opt.step(1e-3))?;
    r?;
    let (r, log_read) = Counter::count(|| loop_.window.drain())?;
    r?;
    Ok(Row {
        model: name.to_string(),
        batch: bs,
        precision: if bf16 {
            "bf16 autocast + channels-last"
        } else {
            "fp32"
        },
        device: format!("{device:?}"),
        threads: tch::get_num_threads(),
        images_per_s,
        step: step_counts,
        optimizer_ops: opt_counts.ops,
        log_read,
    })
}

/// Where the benchmark's training loop stands: epochs of a run's sample order, its loss window.
struct Loop {
    order: EpochOrder,
    epoch: u32,
    step_in_epoch: u64,
    global_step: u64,
    window: LossWindow,
    log_every: u64,
    bs: u64,
}

impl Loop {
    fn step(
        &mut self,
        train: &mut TrainStep,
        t: &TrainSpec,
        images: &Tensor,
        labels: &Tensor,
        labels_host: &[u8],
    ) -> Result<(), WorkerError> {
        let idx = match self.order.batch(self.step_in_epoch, self.bs) {
            Some(idx) => idx,
            None => {
                self.epoch += 1;
                self.step_in_epoch = 0;
                self.order =
                    EpochOrder::new(t.sampling, labels_host, t.seed, self.epoch, images.device());
                self.order
                    .batch(0, self.bs)
                    .expect("a new epoch has a first batch")
            }
        };
        let loss = train.run(
            images,
            labels,
            &idx,
            self.global_step as i64,
            t.optimizer.lr,
        )?;
        self.window.push(
            &loss,
            WindowStep {
                epoch: self.epoch + 1,
                step_in_epoch: self.step_in_epoch,
                patches: self.bs,
            },
        );
        self.step_in_epoch += 1;
        self.global_step += 1;
        if self.global_step.is_multiple_of(self.log_every) {
            self.window.drain()?;
        }
        Ok(())
    }
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}
