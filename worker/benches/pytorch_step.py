"""The idc training step in PyTorch eager, side by side with `idc-worker bench` in the same run.

PyTorch runs the step `idc-worker run` takes (worker/src/step.rs), written as a PyTorch user
would: the same simple CNN and ResNet34 (torchvision's layout), weighted sampling (the epoch's
order uploaded once per epoch), the same default augmentations drawn on the device (flips and
quarter turns through one gather, colour and contrast factors), cross-entropy, SGD with
momentum (`foreach=True`, PyTorch's CUDA default, and `fused=True`), losses kept on the device
and read every `--log-every` steps. It times images/s and counts per step, with torch.profiler,
the ATen ops, host-to-device copies and device-to-host reads, by the rules the worker's
RecordFunction counter uses (worker/src/shim.cpp).

With `--idc-worker PATH` it runs `PATH bench --json` for each setup just before timing PyTorch
on it, and prints one markdown table with the ratios. Needs only torch.

    python3 worker/benches/pytorch_step.py --idc-worker target/release/idc-worker
"""

import argparse
import json
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

MEAN, STD = 0.5, 0.25
# The worker's defaults (src/spec.rs, Augmentation::default()).
AUG = dict(rotate90=0.5, flip_lr=0.5, flip_tb=0.5, color=0.3, min_saturation=0.5, contrast=0.3,
           max_contrast=1.5)


def simple_cnn(width=32, dropout=0.5):
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(4 * width * 6 * 6, 256), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(256, 2))


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                            nn.BatchNorm2d(c_out))

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


def resnet34(classes=2):
    """torchvision.models.resnet34's layout (torchvision is not needed)."""
    layers, c_in = [], 64
    for c_out, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for b in range(blocks):
            layers.append(BasicBlock(c_in, c_out, stride if b == 0 else 1))
            c_in = c_out
    return nn.Sequential(
        nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1), *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(512, classes))


def logreg():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 50 * 50, 2))


MODELS = {"logreg": logreg, "simple_cnn": simple_cnn, "resnet34": resnet34}


class Normalized(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.full((1, 3, 1, 1), MEAN))
        self.register_buffer("std", torch.full((1, 3, 1, 1), STD))

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


def transform_table(side):
    """Source pixel of every output pixel for the 16 flip/quarter-turn codes (as augment.rs)."""
    last, rows = side - 1, []
    for code in range(16):
        a, b, k = code & 1, (code >> 1) & 1, code >> 2
        row = []
        for i in range(side):
            for j in range(side):
                r, c = i, j
                for _ in range(k):
                    r, c = c, last - r
                if b:
                    r = last - r
                if a:
                    c = last - c
                row.append(r * side + c)
        rows.append(row)
    return torch.tensor(rows, dtype=torch.int64)


class Augment:
    def __init__(self, side, device):
        p = []
        for code in range(16):
            a, b, k = code & 1, (code >> 1) & 1, code >> 2
            pa = AUG["flip_lr"] if a else 1 - AUG["flip_lr"]
            pb = AUG["flip_tb"] if b else 1 - AUG["flip_tb"]
            pk = 1 - AUG["rotate90"] if k == 0 else AUG["rotate90"] / 3
            p.append(pa * pb * pk)
        cdf = torch.tensor(p, dtype=torch.float64).cumsum(0).float()
        last = max(i for i, q in enumerate(p) if q > 0)
        cdf[last:] = 2.0
        self.cdf = cdf.to(device)
        self.table = transform_table(side).to(device)
        self.slope = torch.tensor([[-1 / AUG["color"]], [-1 / AUG["contrast"]]], device=device)
        self.range = torch.tensor([[AUG["min_saturation"] - 1], [AUG["max_contrast"] - 1]],
                                  device=device)
        self.gray = torch.tensor([0.299, 0.587, 0.114], device=device).view(1, 3, 1, 1)

    def __call__(self, xs):
        n, c, h, w = xs.shape
        u = torch.rand(3, n, device=xs.device)
        code = torch.searchsorted(self.cdf, u[0], right=True)
        src = self.table.index_select(0, code).unsqueeze(1).expand(n, c, h * w)
        x = xs.view(n, c, h * w).gather(2, src).view(n, c, h, w).float() / 255.0
        f = (u[1:3] * self.slope + 1.0).relu() * self.range + 1.0
        s, k = f[0].view(-1, 1, 1, 1), f[1].view(-1, 1, 1, 1)
        gray = (x * self.gray).sum(1, keepdim=True)
        x = gray + (x - gray) * s
        mean = x.mean((1, 2, 3), keepdim=True)
        return (mean + (x - mean) * k).clamp(0.0, 1.0)


def epoch_order(labels_host, epoch, device):
    """Weighted sampling: each class equally likely, uniform within it (as sampler.rs)."""
    g = torch.Generator().manual_seed(epoch)
    by_class = [torch.nonzero(labels_host == c).flatten() for c in (0, 1)]
    n = len(labels_host)
    cls = torch.randint(0, 2, (n,), generator=g)
    order = torch.empty(n, dtype=torch.int64)
    for c in (0, 1):
        m = cls == c
        order[m] = by_class[c][torch.randint(0, len(by_class[c]), (int(m.sum()),), generator=g)]
    return order.to(device)


class Loop:
    def __init__(self, model, opt, images, labels, labels_host, bs, log_every, amp, cl):
        self.model, self.opt, self.images, self.labels = model, opt, images, labels
        self.labels_host, self.bs, self.log_every, self.amp, self.cl = (
            labels_host, bs, log_every, amp, cl)
        self.device = images.device
        self.aug = Augment(images.shape[-1], self.device)
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.order = epoch_order(labels_host, 0, self.device)
        self.window = torch.zeros(log_every, device=self.device)
        self.in_window = 0

    def drain(self):
        losses = self.window[: self.in_window].cpu().tolist()
        self.in_window = 0
        if any(l != l or abs(l) == float("inf") for l in losses):
            raise SystemExit("training diverged")
        return losses

    def step(self):
        lo = self.step_in_epoch * self.bs
        if lo >= len(self.order):
            self.epoch += 1
            self.step_in_epoch, lo = 0, 0
            self.order = epoch_order(self.labels_host, self.epoch, self.device)
        idx = self.order[lo:lo + self.bs]
        torch.manual_seed(self.global_step)
        x = self.aug(self.images.index_select(0, idx))
        if self.cl:
            x = x.contiguous(memory_format=torch.channels_last)
        y = self.labels.index_select(0, idx)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            logits = self.model(x)
        loss = F.cross_entropy(logits.float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.window[self.in_window].copy_(loss.detach())
        self.in_window += 1
        self.step_in_epoch += 1
        self.global_step += 1
        if self.global_step % self.log_every == 0:
            self.drain()


def nearest_aten_parent(e):
    p = e.cpu_parent
    while p is not None and not p.name.startswith("aten::"):
        p = p.cpu_parent
    return p


def counts(prof, on_device):
    """The worker's counting rules (shim.cpp) applied to a profile: a device's copies come from
    its activity (an `item()` there is one "Memcpy DtoH"); on the CPU, an `item()` the step
    makes itself is the read."""
    ops = top = h2d = d2h = 0
    for e in prof.events():
        name = e.name
        if "Memcpy HtoD" in name:
            h2d += 1
            continue
        if "Memcpy DtoH" in name:
            d2h += 1
            continue
        if not name.startswith("aten::"):
            continue
        ops += 1
        parent = nearest_aten_parent(e)
        if parent is None:
            top += 1
        if name == "aten::_local_scalar_dense" and not on_device:
            grand = nearest_aten_parent(parent) if parent is not None else None
            if parent is None or (parent.name == "aten::item" and grand is None):
                d2h += 1
    return dict(ops=ops, top=top, h2d=h2d, d2h=d2h)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_pytorch(name, bs, amp, optimizer, a, images, labels, labels_host):
    device = images.device
    torch.manual_seed(0)
    model = Normalized(MODELS[name]()).to(device)
    cl = amp
    if cl:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9,
                          **({"fused": True} if optimizer == "fused" else {"foreach": True}))
    loop = Loop(model, opt, images, labels, labels_host, bs, a.log_every, amp, cl)
    for _ in range(a.warmup):
        loop.step()
    sync(device)
    t = time.perf_counter()
    for _ in range(a.steps):
        loop.step()
    sync(device)
    rate = bs * a.steps / (time.perf_counter() - t)
    # Counted apart from the timing, on a step that does not log.
    loop.drain()
    loop.global_step = -(-loop.global_step // a.log_every) * a.log_every + 1
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        loop.step()
        sync(device)
    step = counts(prof, device.type == "cuda")
    with torch.profiler.profile(activities=activities) as prof:
        opt.step()
        sync(device)
    optimizer_ops = counts(prof, device.type == "cuda")["ops"]
    return dict(images_per_s=rate, step=step, optimizer_ops=optimizer_ops)


def time_idc(worker, name, bs, amp, a, device):
    cmd = [worker, "bench", "--json", "--models", name, "--batch-sizes", str(bs),
           "--precisions", "bf16" if amp else "fp32", "--steps", str(a.steps),
           "--warmup", str(a.warmup), "--patches", str(a.patches), "--log-every",
           str(a.log_every), "--device", device.type, "--threads", str(torch.get_num_threads())]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def fmt(v):
    return f"{v:,.0f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--idc-worker", help="also time this idc-worker binary, setup by setup")
    ap.add_argument("--models", default="simple_cnn,resnet34")
    ap.add_argument("--batch-sizes", default="256")
    ap.add_argument("--precisions", default=None, help="fp32,bf16 (default: bf16 on CUDA)")
    ap.add_argument("--optimizers", default="foreach,fused", help="PyTorch SGD variants")
    ap.add_argument("--steps", type=int, default=30,
                    help="timed steps per setup (resnet34 on a CPU: --cpu-resnet-steps)")
    ap.add_argument("--cpu-resnet-steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per setup")
    ap.add_argument("--patches", type=int, default=24000)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--markdown", help="also write the table to this file")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    precisions = (a.precisions or ("bf16" if device.type == "cuda" else "fp32")).split(",")
    where = (torch.cuda.get_device_name(0) if device.type == "cuda"
             else f"CPU, {torch.get_num_threads()} threads")
    print(f"torch {torch.__version__}, {where}; {a.patches} resident patches, losses read "
          f"every {a.log_every} steps", flush=True)

    torch.manual_seed(0)
    images = torch.randint(0, 256, (a.patches, 3, 50, 50), dtype=torch.uint8, device=device)
    labels_host = torch.tensor([1 if i % 7 < 2 else 0 for i in range(a.patches)])
    labels = labels_host.to(device)

    rows = []
    for name in a.models.split(","):
        for bs in (int(b) for b in a.batch_sizes.split(",")):
            for prec in precisions:
                amp = prec == "bf16"
                steps = a.steps
                if device.type == "cpu" and name == "resnet34":
                    steps = a.cpu_resnet_steps
                sa = argparse.Namespace(**{**vars(a), "steps": steps})
                row = dict(model=name, batch=bs, precision=prec)
                # Rounds alternate the contenders, so that drift in the machine's speed hits
                # each alike; each keeps its median.
                runs = {}
                for _ in range(a.rounds):
                    if a.idc_worker:
                        runs.setdefault("idc", []).append(
                            time_idc(a.idc_worker, name, bs, amp, sa, device))
                    for o in a.optimizers.split(","):
                        runs.setdefault(o, []).append(
                            time_pytorch(name, bs, amp, o, sa, images, labels, labels_host))
                for who, rs in runs.items():
                    rates = sorted(r["images_per_s"] for r in rs)
                    row[who] = {**rs[-1], "images_per_s": rates[len(rates) // 2],
                                "rounds": rates}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)

    opts = a.optimizers.split(",")
    head = ["model", "batch", "precision"]
    if a.idc_worker:
        head += ["idc-worker img/s"]
    for o in opts:
        head += [f"PyTorch {o} img/s"] + (["idc / PyTorch"] if a.idc_worker else [])
    head += ["ops/step (idc, " + ", ".join(f"PyTorch {o}" for o in opts) + ")",
             "optimizer ops", "H2D/step", "D2H/step"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], str(r["batch"]), r["precision"]]
        idc = r.get("idc")
        if idc:
            cells.append(fmt(idc["images_per_s"]))
        for o in opts:
            cells.append(fmt(r[o]["images_per_s"]))
            if idc:
                cells.append(f"{idc['images_per_s'] / r[o]['images_per_s']:.2f}x")
        sources = ([idc] if idc else []) + [r[o] for o in opts]
        cells.append(" / ".join(str(s["step"]["ops"]) for s in sources))
        cells.append(" / ".join(str(s["optimizer_ops"]) for s in sources))
        cells.append(" / ".join(str(s["step"]["h2d"]) for s in sources))
        cells.append(" / ".join(str(s["step"]["d2h"]) for s in sources))
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
