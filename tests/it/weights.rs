//! `idcctl weights import` on checkpoints torch itself wrote: a torchvision-layout ResNet34
//! (built from torch.nn in the venv's torch, which has no torchvision: same module names, so
//! the same state dict keys and shapes) with random values, imported to a file:// bucket and
//! compared bit for bit, read back both by idc and by an independent reader in Python; and
//! the files that must fail with exit code 2 and a message naming the file and the tensors.

use crate::common::*;
use idc::weights::{self, Dtype};
use std::path::Path;
use std::process::Command;

/// Writes the checkpoints into the current folder.
const MAKE: &str = r#"
import collections, struct
import torch
from torch import nn

class BasicBlock(nn.Module):
    def __init__(self, c_in, c, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.downsample = None
        if stride != 1 or c_in != c:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c, 1, stride, bias=False), nn.BatchNorm2d(c))

class ResNet(nn.Module):
    """torchvision.models.resnet34's module tree."""
    def __init__(self, layers=(3, 4, 6, 3)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c_in = 64
        for i, (c, n) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = [BasicBlock(c_in, c, 1 if i == 0 else 2)] + [BasicBlock(c, c, 1) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            c_in = c
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, 1000)

torch.manual_seed(7)
model = ResNet()
with torch.no_grad():
    for name, t in model.state_dict().items():
        if t.is_floating_point():
            t.copy_(torch.randn(t.shape))
        else:
            t.fill_(1234)
sd = model.state_dict()
assert len(sd) == 218, len(sd)
assert sd["fc.weight"].shape == (1000, 512)
torch.save(sd, "resnet34.pth")

# The backbone as raw float32: name, shape per line; the bytes concatenated in that order.
with open("expected.txt", "w") as txt, open("expected.bin", "wb") as raw:
    for k, v in sd.items():
        if k.startswith("fc.") or k.endswith("num_batches_tracked"):
            continue
        txt.write(k + "\t" + ",".join(str(d) for d in v.shape) + "\n")
        raw.write(v.contiguous().numpy().tobytes())

torch.save(collections.OrderedDict(("module." + k, v) for k, v in sd.items()), "dataparallel.pth")
torch.save({"epoch": 90, "state_dict": sd, "best_acc1": 73.3}, "training-checkpoint.pth")
torch.save([sd["conv1.weight"], sd["bn1.weight"]], "list.pth")
bad = collections.OrderedDict(sd)
bad["conv1.weight"] = torch.randn(64, 1, 7, 7)
del bad["layer4.2.bn2.weight"]
torch.save(bad, "bad.pth")
torch.save(collections.OrderedDict((k, v.double() if v.is_floating_point() else v) for k, v in sd.items()), "f64.pth")
data = open("resnet34.pth", "rb").read()
open("truncated.pth", "wb").write(data[: len(data) // 2])
"#;

/// Reads a .safetensors with nothing but json and torch.frombuffer and checks it against the
/// original state dict bit for bit.
const CHECK: &str = r#"
import json, struct, sys
import torch
sd = torch.load("resnet34.pth")
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8 : 8 + n])
header.pop("__metadata__", None)
data = raw[8 + n :]
expected = {k: v for k, v in sd.items() if not (k.startswith("fc.") or k.endswith("num_batches_tracked"))}
assert sorted(header) == sorted(expected), set(header) ^ set(expected)
for k, h in header.items():
    b, e = h["data_offsets"]
    assert h["dtype"] == "F32", (k, h)
    t = torch.frombuffer(bytearray(data[b:e]), dtype=torch.float32).view(h["shape"])
    want = expected[k]
    assert t.shape == want.shape, k
    assert torch.equal(t.view(torch.int32), want.contiguous().view(torch.int32)), k
print("python check: ok", len(header))
"#;

fn run_python(python: &Path, dir: &Path, script: &str, args: &[&str]) {
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "python failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// `idcctl weights import` of `file` to `to`: (exit code, stdout, stderr).
fn import(file: &Path, to: &str) -> (i32, String, String) {
    let out = idcctl(&[
        "weights",
        "import",
        file.to_str().unwrap(),
        "--model",
        "resnet34",
        "--to",
        to,
    ]);
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// The backbone tensors python dumped: (name, shape, float32 bytes).
fn expected(dir: &Path) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    let txt = std::fs::read_to_string(dir.join("expected.txt")).unwrap();
    let raw = std::fs::read(dir.join("expected.bin")).unwrap();
    let mut at = 0;
    let mut out = vec![];
    for line in txt.lines() {
        let (name, shape) = line.split_once('\t').unwrap();
        let shape: Vec<usize> = shape.split(',').map(|d| d.parse().unwrap()).collect();
        let len = shape.iter().product::<usize>() * 4;
        out.push((name.to_string(), shape, raw[at..at + len].to_vec()));
        at += len;
    }
    assert_eq!(at, raw.len());
    out
}

fn assert_imported(dir: &Path, python: &Path, file: &str, stdout: &str, object: &Path) {
    assert!(
        stdout.contains(
            "imported 180 tensors (21284672 parameters + 17024 BatchNorm statistics, 85206784 bytes)"
        ),
        "{file}: {stdout}"
    );
    assert!(
        stdout.contains("dropped 38 keys: 36 num_batches_tracked buffers"),
        "{file}: {stdout}"
    );
    let got = weights::read_safetensors(&std::fs::read(object).unwrap()).unwrap();
    let mut want = expected(dir);
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got.len(), want.len(), "{file}");
    for ((name, t), (wname, wshape, wbytes)) in got.iter().zip(&want) {
        assert_eq!(name, wname, "{file}");
        assert_eq!(t.dtype, Dtype::F32, "{file} {name}");
        assert_eq!(&t.shape, wshape, "{file} {name}");
        assert!(t.bytes == *wbytes, "{file} {name}: bytes differ");
    }
    // Exactly the worker's backbone, as resnet34_backbone() defines it.
    let mut layout = weights::resnet34_backbone();
    layout.sort();
    let names: Vec<(String, Vec<usize>)> = got
        .iter()
        .map(|(n, t)| (n.clone(), t.shape.clone()))
        .collect();
    assert_eq!(names, layout, "{file}");
    run_python(python, dir, CHECK, &[object.to_str().unwrap()]);
}

#[test]
fn weights_import_torchvision_checkpoints() {
    let Some(python) = torch_python() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    run_python(&python, dir, MAKE, &[]);
    let bucket = dir.join("bucket");

    // A state dict, a DataParallel one, a training checkpoint holding one.
    for (file, extra) in [
        ("resnet34.pth", None),
        (
            "dataparallel.pth",
            Some("stripped DataParallel's 'module.' prefix"),
        ),
        ("training-checkpoint.pth", None),
    ] {
        let object = bucket.join(format!("weights/{file}.safetensors"));
        let to = format!("file://{}", object.display());
        let (code, stdout, stderr) = import(&dir.join(file), &to);
        assert_eq!(code, 0, "{file}: {stdout}{stderr}");
        if let Some(extra) = extra {
            assert!(stdout.contains(extra), "{file}: {stdout}");
        }
        assert!(
            stdout.contains("the old head [") && stdout.contains("fc.weight"),
            "{file}: {stdout}"
        );
        assert_imported(dir, &python, file, &stdout, &object);
    }

    // At the root of its URL: `file://NAME` is NAME in the working folder, as `file:///NAME`
    // is at the root of the file system. Written where a run opens it (Store::open_object).
    let out = Command::new(env!("CARGO_BIN_EXE_idcctl"))
        .args(["weights", "import", "resnet34.pth", "--model", "resnet34"])
        .args(["--to", "file://root.safetensors"])
        .current_dir(dir)
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let object = dir.join("root.safetensors");
    assert!(
        stdout.contains(&format!("to file://{}", object.display())),
        "{stdout}"
    );
    assert_imported(dir, &python, "resnet34.pth", &stdout, &object);

    // Files that must fail: exit 2, the file and the tensors named.
    let to = format!("file://{}/weights/bad.safetensors", bucket.display());
    for (file, wants) in [
        ("truncated.pth", vec!["truncated or corrupt zip archive"]),
        (
            "list.pth",
            vec!["not a state dict: the checkpoint holds a list"],
        ),
        (
            "bad.pth",
            vec![
                "does not fit resnet34: 1 missing [layer4.2.bn2.weight]; 1 mis-shaped [conv1.weight: file [64, 1, 7, 7], model [64, 3, 7, 7]]",
            ],
        ),
        (
            "f64.pth",
            vec![
                "180 of the wrong dtype [",
                "conv1.weight: file float64, model float32",
                "layer4.2.bn2.running_var: file float64, model float32",
            ],
        ),
    ] {
        let path = dir.join(file);
        let (code, stdout, stderr) = import(&path, &to);
        assert_eq!(code, 2, "{file}: {stdout}{stderr}");
        assert!(
            stderr.contains(&format!("{}: ", path.display())),
            "{file} is not named: {stderr}"
        );
        for want in wants {
            assert!(stderr.contains(want), "{file}: wanted {want:?} in {stderr}");
        }
        assert!(!bucket.join("weights/bad.safetensors").exists(), "{file}");
    }

    // A missing file, and a --to that is not a .safetensors object.
    let (code, _, stderr) = import(&dir.join("nope.pth"), &to);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("nope.pth"), "{stderr}");
    let (code, _, stderr) = import(
        &dir.join("resnet34.pth"),
        &format!("file://{}/w.pth", bucket.display()),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("must end in .safetensors"), "{stderr}");
}
