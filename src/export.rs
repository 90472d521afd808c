//! `idcctl export`: a finished run's best checkpoint as a model directory another tool runs.
//! One format so far, WSInfer's (PyPI `wsinfer` 0.6, and its QuPath extension): the model traced
//! by `idc-worker export-torchscript` as `torchscript_model.pt`, and `config.json` saying how
//! WSInfer cuts and transforms slide patches for it ([`WsinferConfig`]).
//!
//! The mapping is exact: WSInfer's `ToTensor` scales pixels to [0, 1] as idc does, its
//! `Normalize` applies the training set's mean and standard deviation (as the worker's models
//! do, [`crate::dataset::manifest::normalizing_std`]), and the traced module runs the model on
//! the normalized images; WSInfer's softmax over its one logit per class gives idc's
//! probabilities (a BCE-trained two-class model returns the logits `[0, z]`).

use crate::backend::local::{LocalError, worker_binary};
use crate::dataset::manifest::normalizing_std;
use crate::predict::{PredictError, TrainedRun};
use crate::predictions::PredictInput;
use crate::spec::DeviceSpec;
use crate::store::Store;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file names of a WSInfer model directory.
pub const WSINFER_MODEL: &str = "torchscript_model.pt";
pub const WSINFER_CONFIG: &str = "config.json";

/// What `idcctl export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// A WSInfer model directory: `torchscript_model.pt` and `config.json`.
    Wsinfer,
}

impl crate::choice::Choice for ExportFormat {
    const ALL: &'static [Self] = &[ExportFormat::Wsinfer];
    fn name(self) -> &'static str {
        match self {
            ExportFormat::Wsinfer => "wsinfer",
        }
    }
    fn about(self) -> Option<&'static str> {
        Some(match self {
            ExportFormat::Wsinfer => {
                "a WSInfer model directory: torchscript_model.pt and config.json"
            }
        })
    }
}
crate::choice_names!(ExportFormat);

/// How to export.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportOptions {
    pub format: ExportFormat,
    /// The micrometres per pixel of the training images (default: the dataset's
    /// `microns_per_pixel`).
    pub spacing_um_px: Option<f64>,
}

/// A WSInfer model configuration (`config.json`, spec version 1.0): WSInfer cuts patches of
/// `patch_size_pixels * spacing_um_px` micrometres from a slide, applies `transform` and runs
/// the model; a softmax over its `num_classes` outputs gives one probability per class name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WsinferConfig {
    /// "1.0", the only version WSInfer's schema knows.
    pub spec_version: String,
    /// The model's name (WSInfer suggests timm's names; `resnet34` is one).
    pub architecture: String,
    pub num_classes: usize,
    /// Index = class; distinct.
    pub class_names: Vec<String>,
    /// The side of the (square) patches the model takes.
    pub patch_size_pixels: u32,
    /// Micrometres per pixel of those patches.
    pub spacing_um_px: f64,
    /// torchvision transforms, applied in order to each patch (a PIL image).
    pub transform: Vec<Transform>,
}

/// The version of WSInfer's configuration schema written.
pub const WSINFER_SPEC_VERSION: &str = "1.0";

/// One of the torchvision transforms WSInfer's configuration allows, with its arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", content = "arguments")]
pub enum Transform {
    /// Resizes the patch to `size` x `size` pixels.
    Resize { size: u32 },
    /// A PIL image as a float tensor `[C, H, W]` with values in [0, 1].
    ToTensor,
    /// `(x - mean) / std`, per channel.
    Normalize { mean: Vec<f64>, std: Vec<f64> },
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Something the user can fix in the command, or a run the format cannot hold (exit code
    /// 2).
    #[error("{0}")]
    Invalid(String),
    /// Resolving the run (as `idcctl predict` does); boxed, as it is large.
    #[error(transparent)]
    Run(Box<PredictError>),
    #[error(transparent)]
    Local(#[from] LocalError),
    /// `idc-worker export-torchscript` failed; `code` is its exit code (2: bad input).
    #[error("the worker could not trace run {run}'s model ({what}): {detail}")]
    Worker {
        run: String,
        code: i32,
        what: String,
        detail: String,
    },
    #[error("cannot write {path}: {source}")]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl crate::exit::ProcessExitCode for ExportError {
    fn process_exit_code(&self) -> crate::exit::ExitCode {
        use crate::exit::ExitCode;
        match self {
            ExportError::Invalid(_) => ExitCode::UserError,
            ExportError::Run(e) => e.process_exit_code(),
            ExportError::Local(e) => e.process_exit_code(),
            ExportError::Worker { code, .. } if *code == ExitCode::UserError as i32 => {
                ExitCode::UserError
            }
            ExportError::Worker { .. } | ExportError::Output { .. } => ExitCode::Failure,
        }
    }
}

impl From<PredictError> for ExportError {
    fn from(e: PredictError) -> Self {
        ExportError::Run(Box::new(e))
    }
}

/// What [`export`] wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    pub run: TrainedRun,
    pub config: WsinferConfig,
    /// The files written, model first.
    pub files: Vec<PathBuf>,
}

/// Exports the finished run `run_id` of the bucket `root` into the folder `dir` (made if
/// missing): each file is written whole under a temporary name, then renamed into place.
pub async fn export(
    root: &Store,
    run_id: &str,
    opts: &ExportOptions,
    dir: &Path,
) -> Result<Exported, ExportError> {
    let run = crate::predict::trained_run(root, run_id).await?;
    let config = match opts.format {
        ExportFormat::Wsinfer => {
            let spacing = spacing_um_px(opts.spacing_um_px, run.trained_on.microns_per_pixel())?;
            wsinfer_config(&run, spacing)?
        }
    };
    let worker = worker_binary()?;
    std::fs::create_dir_all(dir).map_err(output_error(dir))?;
    let model = dir.join(WSINFER_MODEL);
    trace(&worker, &run, &model)?;
    let config_path = dir.join(WSINFER_CONFIG);
    let mut json = serde_json::to_vec_pretty(&config).expect("serializes");
    json.push(b'\n');
    crate::output::write_file_whole(&config_path, &json).map_err(output_error(&config_path))?;
    Ok(Exported {
        run,
        config,
        files: vec![model, config_path],
    })
}

/// The micrometres per pixel of the run's training images, the one place that decides it: the
/// option, else the IDC set's.
fn spacing_um_px(given: Option<f64>, recorded: Option<f64>) -> Result<f64, ExportError> {
    let Some(spacing) = given.or(recorded) else {
        return Err(ExportError::Invalid(
            "the dataset the run trained on records no scale (microns_per_pixel): give --spacing-um-px, or restage it with --microns-per-pixel".into(),
        ));
    };
    if !(spacing.is_finite() && spacing > 0.0) {
        return Err(ExportError::Invalid(format!(
            "--spacing-um-px {spacing} is not a positive number of micrometres per pixel"
        )));
    }
    Ok(spacing)
}

/// The WSInfer configuration of `run`'s model on patches of `spacing_um_px`: WSInfer reads
/// square RGB patches, so the run must have trained on such images, with distinct class names.
pub fn wsinfer_config(run: &TrainedRun, spacing_um_px: f64) -> Result<WsinferConfig, ExportError> {
    let m = &run.trained_on;
    let (w, h, c) = (m.image.width, m.image.height, m.image.channels);
    if c != 3 || w != h {
        return Err(ExportError::Invalid(format!(
            "WSInfer applies a model to square RGB patches, but run {} trained on {w}x{h} images with {c} channel(s) (dataset {})",
            run.id, run.spec.dataset
        )));
    }
    let mut names = m.classes.clone();
    names.sort();
    if let Some(twice) = names.windows(2).find(|p| p[0] == p[1]) {
        return Err(ExportError::Invalid(format!(
            "WSInfer needs distinct class names, but the dataset {} run {} trained on names two classes '{}' (restage it with --class-names)",
            run.spec.dataset, run.id, twice[0]
        )));
    }
    Ok(WsinferConfig {
        spec_version: WSINFER_SPEC_VERSION.to_string(),
        architecture: run.spec.train.model.name().to_string(),
        num_classes: m.classes.len(),
        class_names: m.classes.clone(),
        patch_size_pixels: w,
        spacing_um_px,
        transform: vec![
            Transform::Resize { size: w },
            Transform::ToTensor,
            Transform::Normalize {
                mean: m.mean.clone(),
                std: normalizing_std(&m.std),
            },
        ],
    })
}

/// Runs `idc-worker export-torchscript` on `run`'s model (on the CPU), which writes the
/// TorchScript file under a temporary name beside `to`; then renames it to `to`.
fn trace(worker: &Path, run: &TrainedRun, to: &Path) -> Result<(), ExportError> {
    let dir = to.parent().expect("a file in the export folder");
    let input = PredictInput {
        store: String::new(),
        shards: vec![],
        files: vec![],
    };
    let batch = run.spec.train.eval_batch_size;
    let spec = run.job_spec(input, 0.5, batch, DeviceSpec::Cpu, false);
    let spec_file = temp_in(dir, ".export-spec-", ".json")?;
    std::fs::write(
        spec_file.path(),
        serde_json::to_vec_pretty(&spec).expect("serializes"),
    )
    .map_err(output_error(spec_file.path()))?;
    let model_file = temp_in(dir, ".torchscript_model-", ".pt")?;
    let out = std::process::Command::new(worker)
        .arg("export-torchscript")
        .arg("--spec")
        .arg(spec_file.path())
        .arg("--out")
        .arg(model_file.path())
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| LocalError::Spawn {
            what: worker.display().to_string(),
            source,
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
        let code = out.status.code().unwrap_or(-1);
        return Err(ExportError::Worker {
            run: run.id.clone(),
            code,
            what: format!("{} exited with code {code}", worker.display()),
            detail: last.unwrap_or("").trim_start_matches("error: ").to_string(),
        });
    }
    // A plain file's permissions, as `output::write_file_whole` gives (temporary files are
    // private).
    use std::os::unix::fs::PermissionsExt;
    model_file
        .as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(output_error(to))?;
    model_file
        .persist(to)
        .map_err(|e| output_error(to)(e.error))?;
    Ok(())
}

/// A new empty file in `dir`, removed when dropped unless persisted.
fn temp_in(dir: &Path, prefix: &str, suffix: &str) -> Result<tempfile::NamedTempFile, ExportError> {
    tempfile::Builder::new()
        .prefix(prefix)
        .suffix(suffix)
        .tempfile_in(dir)
        .map_err(output_error(dir))
}

fn output_error(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Output {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transforms_are_written_as_wsinfer_reads_them() {
        let t = vec![
            Transform::Resize { size: 50 },
            Transform::ToTensor,
            Transform::Normalize {
                mean: vec![0.5; 3],
                std: vec![0.25; 3],
            },
        ];
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"name": "Resize", "arguments": {"size": 50}},
                {"name": "ToTensor"},
                {"name": "Normalize", "arguments": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}},
            ])
        );
        assert_eq!(serde_json::from_value::<Vec<Transform>>(json).unwrap(), t);
    }

    #[test]
    fn the_spacing_is_the_datasets_unless_given_and_positive() {
        assert_eq!(spacing_um_px(None, Some(4.0)).unwrap(), 4.0);
        assert_eq!(spacing_um_px(Some(0.5), Some(4.0)).unwrap(), 0.5);
        let e = spacing_um_px(None, None).unwrap_err();
        assert!(e.to_string().contains("--spacing-um-px"), "{e}");
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = spacing_um_px(Some(bad), Some(4.0)).unwrap_err();
            assert!(e.to_string().contains("--spacing-um-px"), "{e}");
        }
    }
}
