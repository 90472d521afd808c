//! `idc-worker bench`: training images/s per model and batch size on this machine's device,
//! with data resident on the device as in a real run (uint8 patches, weighted gather, flips).

use crate::autocast::maybe_bf16;
use crate::error::WorkerError;
use crate::model::{Model, channels_last};
use crate::optim::Optimizer;
use idc::spec::{ModelSpec, OptimizerKind, OptimizerSpec};
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
    /// Timed steps per setup (after warm-up steps).
    #[arg(long, default_value_t = 60)]
    steps: usize,
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// Resident synthetic patches to sample from.
    #[arg(long, default_value_t = 24_000)]
    patches: i64,
    /// Also time fp32 on CUDA (bf16 autocast + channels-last is always timed there).
    #[arg(long)]
    fp32: bool,
}

pub fn run(args: &BenchArgs) -> Result<(), WorkerError> {
    let device = Device::cuda_if_available();
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    tch::manual_seed(0);
    let data = Tensor::randint(256, [args.patches, 3, 50, 50], (Kind::Uint8, device));
    let labels =
        (Tensor::rand([args.patches], (Kind::Float, device)).lt(2.0 / 7.0)).to_kind(Kind::Int64);
    // Inverse class-count weights, as the seed's WeightedRandomSampler.
    let y = labels.to_kind(Kind::Float);
    let pos = y.sum(Kind::Float).double_value(&[]).max(1.0);
    let neg = (args.patches as f64 - pos).max(1.0);
    let w: Tensor = &y * (1.0 / pos) + (y.ones_like() - &y) * (1.0 / neg);
    println!(
        "device {device:?}, {} resident patches, training images/s (SGD momentum, cross-entropy):",
        args.patches
    );
    println!("| model | batch | precision | images/s |");
    println!("|---|---:|---|---:|");
    let precisions: Vec<bool> = if device.is_cuda() {
        if args.fp32 {
            vec![false, true]
        } else {
            vec![true]
        }
    } else {
        vec![false]
    };
    for name in &args.models {
        let spec = match name.as_str() {
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
                    "--models: unknown model '{other}'"
                )));
            }
        };
        for &bs in &args.batch_sizes {
            for &bf16 in &precisions {
                let mut model = Model::new(&spec, 2, [0.5; 3], [0.5; 3], device);
                if bf16 {
                    model.use_channels_last();
                }
                let opt_spec = OptimizerSpec {
                    kind: OptimizerKind::Sgd,
                    lr: 1e-3,
                    momentum: 0.9,
                    ..Default::default()
                };
                let mut opt = Optimizer::new(&opt_spec, model.trainable());
                let mut step = || {
                    let idx = w.multinomial(bs, true);
                    let x = data.index_select(0, &idx).to_kind(Kind::Float) / 255.0;
                    let flip = Tensor::rand([bs], (Kind::Float, device))
                        .lt(0.5)
                        .view([-1, 1, 1, 1]);
                    let x = x.flip([3]).where_self(&flip, &x);
                    let x = if bf16 { channels_last(&x) } else { x };
                    let logits = maybe_bf16(bf16, || model.forward(&x, true));
                    let loss = logits
                        .to_kind(Kind::Float)
                        .cross_entropy_for_logits(&labels.index_select(0, &idx));
                    opt.zero_grad();
                    loss.backward();
                    opt.step(1e-3);
                };
                for _ in 0..args.warmup {
                    step();
                }
                sync(device);
                let t = Instant::now();
                for _ in 0..args.steps {
                    step();
                }
                sync(device);
                let rate = (bs as usize * args.steps) as f64 / t.elapsed().as_secs_f64();
                println!(
                    "| {name} | {bs} | {} | {rate:.0} |",
                    if bf16 {
                        "bf16 autocast + channels-last"
                    } else {
                        "fp32"
                    }
                );
            }
        }
    }
    Ok(())
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}
