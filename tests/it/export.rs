//! `idcctl export --format wsinfer` end to end: a small CNN trained on a synthetic dataset on
//! the local backend, exported, and the model directory applied as WSInfer 0.6 applies it, in
//! the torch venv's python: `torch.jit.load`, config.json's transforms done by hand with torch
//! ops (the venv has no torchvision: `ToTensor` is `uint8 / 255`, `Normalize` is
//! `(x - mean) / std`), and a softmax over the outputs. Its probabilities must be those that
//! `idcctl predict` gives for the same patches.

use crate::common::*;
use std::collections::BTreeMap;
use std::path::Path;

/// Applies the WSInfer model directory argv[1] to the PNGs of folder argv[2] (those of the
/// model's patch size: WSInfer would resize the others, where idc pads them) and prints
/// `{file name: [p per class]}` as JSON.
const APPLY: &str = r#"
import json, pathlib, sys
import numpy as np
import torch
from PIL import Image

model_dir, patches = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
config = json.loads((model_dir / "config.json").read_text())
model = torch.jit.load(str(model_dir / "torchscript_model.pt"), map_location="cpu")
model.eval()
# WSInfer's --speedup reads the device from the parameters.
assert next(model.parameters()).device.type == "cpu"
names, images = [], []
for path in sorted(patches.glob("*.png")):
    img = Image.open(path).convert("RGB")
    x = None
    for t in config["transform"]:
        args = t.get("arguments") or {}
        if t["name"] == "Resize":
            if img.size != (args["size"], args["size"]):
                break
        elif t["name"] == "ToTensor":
            x = torch.from_numpy(np.array(img)).permute(2, 0, 1).to(torch.float32).div(255)
        elif t["name"] == "Normalize":
            mean = torch.as_tensor(args["mean"], dtype=torch.float32)[:, None, None]
            std = torch.as_tensor(args["std"], dtype=torch.float32)[:, None, None]
            x = x.sub(mean).div(std)
        else:
            raise SystemExit("unknown transform " + t["name"])
    else:
        names.append(path.name)
        images.append(x)
with torch.no_grad():
    logits = model(torch.stack(images))
# As wsinfer.modellib.run_inference: a softmax over two or more outputs, else a sigmoid.
if logits.shape[1] > 1:
    probs = torch.nn.functional.softmax(logits, dim=1)
else:
    probs = torch.sigmoid(logits.squeeze(1))
assert probs.shape == (len(names), config["num_classes"]), probs.shape
print(json.dumps(dict(zip(names, probs.tolist()))))
"#;

#[test]
fn wsinfer_gets_the_probabilities_predict_gives() {
    let Some(python) = torch_python() else {
        return;
    };
    require_worker();
    let dir = tempfile::tempdir().unwrap();
    let (storage, dataset) = staged_synth_bucket(dir.path(), 6, 100);
    let manifest = dir.path().join("export.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: idc/v1\nkind: Experiment\nname: export\ndataset: {{url: '{dataset}'}}\ntrain:\n  device: cpu\n  epochs: 1\n  batch_size: 32\n  model: {{kind: simple_cnn, width: 8}}\nstorage: '{storage}'\n"
        ),
    )
    .unwrap();
    let run = submit_wait(manifest.to_str().unwrap());
    let env = [("IDC_STORAGE", storage.as_str())];

    let model_dir = dir.path().join("wsinfer/idc-cnn");
    let model_arg = model_dir.to_str().unwrap();
    let out = idcctl_env(&["export", &run, "--format", "wsinfer", model_arg], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    assert_eq!(
        listed,
        [
            model_dir.join("torchscript_model.pt").display().to_string(),
            model_dir.join("config.json").display().to_string()
        ]
    );
    the_config_is_wsinfers(&model_dir.join("config.json"));
    let mut files: Vec<String> = std::fs::read_dir(&model_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["config.json", "torchscript_model.pt"],
        "no temporaries left"
    );

    let patches = dir.path().join("patches");
    copy_patches(&dir.path().join("src"), &patches, 40);
    let csv = dir.path().join("predictions.csv");
    let out = idcctl_env(
        &[
            "predict",
            &run,
            patches.to_str().unwrap(),
            "--out",
            csv.to_str().unwrap(),
        ],
        &env,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let predicted = p_idc_by_file(&csv);
    let applied = apply_as_wsinfer(&python, &model_dir, &patches);
    assert!(applied.len() >= 30, "{} full-size patches", applied.len());
    let p: Vec<f64> = applied.values().map(|probs| probs[1]).collect();
    let spread = p.iter().cloned().fold(f64::MIN, f64::max) - p.iter().cloned().fold(1.0, f64::min);
    assert!(spread > 0.01, "the patches' p(IDC) hardly differ: {p:?}");
    for (file, probs) in &applied {
        let want = predicted[file];
        assert_eq!(probs.len(), 2);
        assert!(
            (probs[0] + probs[1] - 1.0).abs() < 1e-5,
            "{file}: {probs:?}"
        );
        assert!(
            (probs[1] - want).abs() < 1e-4,
            "{file}: WSInfer p(IDC) {} but predict {want}",
            probs[1]
        );
    }
    mistakes_exit_with_code_2(&run, &env, dir.path());
}

/// config.json holds what WSInfer's schema (wsinfer-zoo's `model-config.schema.json`) requires,
/// for a 50x50 RGB two-class run.
fn the_config_is_wsinfers(path: &Path) {
    let c: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(c["spec_version"], "1.0");
    assert_eq!(c["architecture"], "simple_cnn");
    assert_eq!(c["num_classes"], 2);
    assert_eq!(c["class_names"], serde_json::json!(["no IDC", "IDC"]));
    assert_eq!(c["patch_size_pixels"], 50);
    assert_eq!(c["spacing_um_px"], 4.0);
    let names: Vec<&str> = c["transform"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Resize", "ToTensor", "Normalize"]);
    assert_eq!(
        c["transform"][0]["arguments"],
        serde_json::json!({"size": 50})
    );
    let normalize = &c["transform"][2]["arguments"];
    for key in ["mean", "std"] {
        assert_eq!(normalize[key].as_array().unwrap().len(), 3, "{key}");
    }
}

/// Copies up to `n` of the synthetic patches under `src` into the flat folder `to`.
fn copy_patches(src: &Path, to: &Path, n: usize) {
    std::fs::create_dir_all(to).unwrap();
    let mut stack = vec![src.to_path_buf()];
    let mut copied = 0;
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                stack.push(p);
            } else if copied < n && p.extension().is_some_and(|e| e == "png") {
                std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
                copied += 1;
            }
        }
    }
}

/// p(IDC) by file name, from the CSV `idcctl predict` wrote.
fn p_idc_by_file(csv: &Path) -> BTreeMap<String, f64> {
    let text = std::fs::read_to_string(csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("patient,x,y,file,p_idc,predicted,label"));
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[3].to_string(), f[4].parse().unwrap())
        })
        .collect()
}

fn apply_as_wsinfer(python: &Path, model_dir: &Path, patches: &Path) -> BTreeMap<String, Vec<f64>> {
    let out = std::process::Command::new(python)
        .args(["-c", APPLY])
        .arg(model_dir)
        .arg(patches)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// An unknown run and a spacing that is no length are the user's to fix: exit code 2, the
/// message naming what is wrong, nothing written.
fn mistakes_exit_with_code_2(run: &str, env: &[(&str, &str)], dir: &Path) {
    let to = dir.join("not-written");
    let to_arg = to.to_str().unwrap();
    let cases: [(&[&str], &str); 2] = [
        (
            &["export", "no-such-run", "--format", "wsinfer", to_arg],
            "no run no-such-run",
        ),
        (
            &[
                "export",
                run,
                "--format",
                "wsinfer",
                "--spacing-um-px",
                "0",
                to_arg,
            ],
            "--spacing-um-px 0",
        ),
    ];
    for (args, says) in cases {
        let out = idcctl_env(args, env);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(says),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    assert!(!to.exists());
}
