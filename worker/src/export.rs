//! `idc-worker export-torchscript`: a run's model, loaded as `predict` loads it, traced into a
//! TorchScript file for WSInfer (`idcctl export --format wsinfer` writes its `config.json`).
//!
//! The traced module takes what WSInfer's transforms give it: float images `[N, 3, H, W]`
//! scaled to [0, 1] (`ToTensor`) and normalized with the dataset's statistics (`Normalize`
//! with its mean and [`idc::dataset::manifest::normalizing_std`]), so it runs the model after
//! its own normalization ([`Model::forward_normalized`]). It returns one logit per class, which
//! WSInfer turns into probabilities with a softmax: a two-class run trained with BCE (one logit
//! `z`) returns `[0, z]`, whose softmax is `[1 - sigmoid(z), sigmoid(z)]`, the run's p(IDC).

use crate::error::WorkerError;
use crate::model::Model;
use crate::shim::{self, Weight};
use idc::predictions::PredictSpec;
use std::collections::BTreeSet;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The class name of the traced module (`torch.jit.load(...).original_name`).
pub const MODULE_NAME: &str = "IdcClassifier";

/// The largest difference between the saved module's softmax and the model's probabilities
/// on the same images that the check after saving lets pass.
const MAX_DIFFERENCE: f64 = 1e-5;

/// Exports the run that the prediction spec at `spec_path` names (its model, classes, image
/// shape, statistics and checkpoint; its input is not read) as TorchScript at `out`.
pub fn run(spec_path: &Path, out: &Path) -> Result<(), WorkerError> {
    let text = std::fs::read(spec_path)
        .map_err(|e| WorkerError::BadInput(format!("{}: {e}", spec_path.display())))?;
    let spec: PredictSpec = serde_json::from_slice(&text)
        .map_err(|e| WorkerError::BadInput(format!("{}: {e}", spec_path.display())))?;
    let rt =
        tokio::runtime::Runtime::new().map_err(WorkerError::io("starting the async runtime"))?;
    let model = crate::predict::load_model(&rt, &spec, Device::Cpu)?;
    let (h, w) = (spec.shape.height as i64, spec.shape.width as i64);
    save(&model, [h, w], out)?;
    check_saved(&model, [h, w], out)
}

/// Logits for normalized images as the exported module returns them: one per class.
pub fn class_logits(model: &Model, normalized: &Tensor) -> Tensor {
    let z = model.forward_normalized(normalized, false);
    match model.outputs {
        1 => Tensor::cat(&[z.zeros_like(), z], 1),
        _ => z,
    }
}

/// Traces `model` on images of `[height, width]` and saves it at `path`.
pub fn save(model: &Model, [h, w]: [i64; 2], path: &Path) -> Result<(), WorkerError> {
    let vars = model.vs.variables();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let mut seen = BTreeSet::new();
    let mut weights = Vec::with_capacity(names.len());
    for name in names {
        let tensor = &vars[name];
        let attr = name.replace('.', "_");
        if !seen.insert(attr.clone()) {
            return Err(WorkerError::Internal(format!(
                "two weights of the model are both named {attr} once their dots are replaced"
            )));
        }
        weights.push(Weight {
            name: attr,
            tensor,
            buffer: !tensor.requires_grad(),
        });
    }
    let input = Tensor::zeros([2, model.channels(), h, w], (Kind::Float, Device::Cpu));
    tch::no_grad(|| {
        shim::trace_to_file(
            MODULE_NAME,
            &input,
            &weights,
            |x| class_logits(model, x),
            path,
        )
    })
}

/// Loads the saved module back and checks that, on random images of another batch size, its
/// softmax equals the model's probabilities.
fn check_saved(model: &Model, [h, w]: [i64; 2], path: &Path) -> Result<(), WorkerError> {
    let saved = tch::CModule::load(path)?;
    let x = Tensor::randn([3, model.channels(), h, w], (Kind::Float, Device::Cpu));
    let diff = tch::no_grad(|| -> Result<f64, WorkerError> {
        let got = saved.forward_ts(&[&x])?.softmax(1, Kind::Float);
        let want = model.probability(&model.forward_normalized(&x, false));
        let got = match model.outputs {
            1 | 2 => got.select(1, 1),
            _ => got,
        };
        Ok((got - want).abs().max().double_value(&[]))
    })?;
    // NaN counts as a difference too.
    if diff.is_nan() || diff > MAX_DIFFERENCE {
        return Err(WorkerError::Internal(format!(
            "the traced module {} differs from the model by {diff:e} in probability",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use idc::shard::Shape;
    use idc::spec::ModelSpec;

    const MEAN: [f64; 3] = [0.8, 0.6, 0.7];
    const STD: [f64; 3] = [0.1, 0.2, 0.0];

    fn model(spec: &ModelSpec, outputs: i64) -> Model {
        tch::manual_seed(5);
        Model::new(spec, outputs, Shape::IDC, &MEAN, &STD, Device::Cpu)
    }

    /// Random [0, 1] images normalized as the exported config's `Normalize` does.
    fn config_normalized(x: &Tensor) -> Tensor {
        let std = idc::dataset::manifest::normalizing_std(&STD);
        let stat = |v: &[f64]| {
            let v: Vec<f32> = v.iter().map(|&s| s as f32).collect();
            Tensor::from_slice(&v).view([1, 3, 1, 1])
        };
        (x - stat(&MEAN)) / stat(&std)
    }

    #[test]
    fn the_saved_module_gives_the_models_probabilities() {
        let cases = [
            (ModelSpec::Logreg, 1, "logreg, BCE"),
            (ModelSpec::Logreg, 2, "logreg, cross-entropy"),
            (
                ModelSpec::SimpleCnn {
                    width: 4,
                    dropout: 0.5,
                },
                1,
                "simple_cnn, BCE",
            ),
            (
                ModelSpec::SimpleCnn {
                    width: 4,
                    dropout: 0.5,
                },
                5,
                "simple_cnn, 5 classes",
            ),
        ];
        let dir = tempfile::tempdir().unwrap();
        for (spec, outputs, what) in cases {
            let m = model(&spec, outputs);
            let path = dir.path().join(format!("{}-{outputs}.pt", spec.name()));
            save(&m, [50, 50], &path).unwrap();
            check_saved(&m, [50, 50], &path).unwrap();
            let loaded = tch::CModule::load(&path).unwrap();
            let x = Tensor::rand([7, 3, 50, 50], (Kind::Float, Device::Cpu));
            let (got, want) = tch::no_grad(|| {
                let logits = loaded.forward_ts(&[config_normalized(&x)]).unwrap();
                (logits, m.probability(&m.forward(&x, false)))
            });
            let classes = outputs.max(2);
            assert_eq!(got.size(), [7, classes], "{what}");
            let p = got.softmax(1, Kind::Float);
            let p = if classes == 2 { p.select(1, 1) } else { p };
            let diff = (p - want).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "{what}: differs by {diff}");
        }
    }

    #[test]
    fn the_weights_are_parameters_that_follow_the_module() {
        let m = model(
            &ModelSpec::SimpleCnn {
                width: 4,
                dropout: 0.0,
            },
            1,
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.pt");
        save(&m, [50, 50], &path).unwrap();
        let mut loaded = tch::CModule::load(&path).unwrap();
        let mut names: Vec<String> = loaded
            .named_parameters()
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        names.sort();
        assert!(names.contains(&"conv1_weight".to_string()), "{names:?}");
        assert_eq!(names.len(), m.vs.variables().len(), "{names:?}");
        // Moved to double, the weights go along: double images run (constants would not).
        loaded.to(Device::Cpu, Kind::Double, false);
        let x = Tensor::rand([2, 3, 50, 50], (Kind::Double, Device::Cpu));
        let out = tch::no_grad(|| loaded.forward_ts(&[x])).unwrap();
        assert_eq!(out.kind(), Kind::Double);
    }

    #[test]
    fn batch_norm_statistics_are_buffers_that_follow_the_module() {
        let spec = ModelSpec::Resnet34 {
            pretrained: None,
            freeze_backbone: false,
            input_size: Some(64),
        };
        let m = model(&spec, 3);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resnet34.pt");
        save(&m, [50, 50], &path).unwrap();
        let mut loaded = tch::CModule::load(&path).unwrap();
        let trainable = m.vs.trainable_variables().len();
        assert_eq!(loaded.named_parameters().unwrap().len(), trainable);
        assert!(m.vs.variables().len() > trainable, "running statistics");
        loaded.to(Device::Cpu, Kind::Double, false);
        let x = Tensor::rand([2, 3, 50, 50], (Kind::Float, Device::Cpu));
        let (got, want) = tch::no_grad(|| {
            let logits = loaded
                .forward_ts(&[config_normalized(&x).to_kind(Kind::Double)])
                .unwrap();
            (logits, m.probability(&m.forward(&x, false)))
        });
        let p = got.softmax(1, Kind::Double).to_kind(Kind::Float);
        let diff = (p - want).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "differs by {diff}");
    }

    #[test]
    fn a_failed_forward_pass_abandons_the_trace() {
        let m = model(&ModelSpec::Logreg, 1);
        let dir = tempfile::tempdir().unwrap();
        // The wrong image size: the linear layer's matmul fails inside the trace.
        let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            save(&m, [20, 20], &dir.path().join("bad.pt"))
        }));
        assert!(failed.is_err());
        // A later trace on this thread starts afresh.
        save(&m, [50, 50], &dir.path().join("good.pt")).unwrap();
    }
}
