//! Staging benchmark: patches/s per core and peak memory of `idcctl stage`, side by side with
//! Pillow decoding the same PNGs to uint8 arrays, in the same run.
//!
//! `cargo bench --bench stage` (set IDC_BENCH_PATCHES to change the base size, default 40000;
//! a second dataset four times larger checks that memory does not grow with size). Pillow comes
//! from the repo's .venv (made by .ci/env.sh) or IDC_PYTHON.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

struct Run {
    wall: f64,
    cpu: f64,
    max_rss_mb: f64,
}

/// Runs a command to completion and returns its wall time, CPU time and peak resident memory.
fn measure(cmd: &mut Command) -> Run {
    let start = Instant::now();
    #[allow(clippy::zombie_processes)] // reaped by wait4 below, which also gives its rusage
    let child = cmd
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("command starts");
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; `usage` is a valid out-pointer.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4 failed");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed ({status})"
    );
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Run {
        wall: start.elapsed().as_secs_f64(),
        cpu: secs(usage.ru_utime) + secs(usage.ru_stime),
        max_rss_mb: usage.ru_maxrss as f64 / 1024.0,
    }
}

fn idcctl() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/release/deps/stage-… → target/release/idcctl
    let bin = exe.parent().unwrap().parent().unwrap().join("idcctl");
    assert!(bin.exists(), "build idcctl first: cargo build --release");
    bin
}

fn python() -> Option<PathBuf> {
    let p = std::env::var_os("IDC_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    let ok = Command::new(&p)
        .args(["-c", "import PIL, numpy"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ok.then_some(p)
}

/// Decodes every PNG under argv[1] to a uint8 HWC array; prints the patches per CPU-second of
/// the decoding loop alone (interpreter start-up and imports excluded, in Pillow's favour).
const PILLOW: &str = r#"
import os, sys, time
import numpy as np
from PIL import Image
files = [os.path.join(d, f) for d, _, fs in os.walk(sys.argv[1]) for f in fs if f.endswith(".png")]
t = time.process_time()
for f in files:
    a = np.asarray(Image.open(f).convert("RGB"), dtype=np.uint8)
print(len(files) / (time.process_time() - t))
"#;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probes for tests
    }
    let base: u32 = std::env::var("IDC_BENCH_PATCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40_000);
    let per_patient = 1000;
    let big_patients = (4 * base).div_ceil(per_patient);
    let small_patients = base.div_ceil(per_patient);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let tmp = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let (big, small) = synthesize(tmp.path(), big_patients, small_patients, per_patient);
    let n_small = (small_patients * per_patient) as f64;
    let n_big = (big_patients * per_patient) as f64;
    eprintln!(
        "synthesized {n_big} patches in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    let stage = |src: &Path, threads: usize, name: &str| {
        let url = format!("file://{}/bucket/{name}", tmp.path().display());
        measure(Command::new(idcctl()).args([
            "stage",
            src.to_str().unwrap(),
            "--to",
            &url,
            "-j",
            &threads.to_string(),
        ]))
    };
    // Warm the page cache so every contender reads the PNGs from memory.
    stage(small.parent().unwrap(), cores, "warm");

    println!("\nstaging benchmark, {cores} cores, {n_small} patches (memory also at {n_big})\n");
    println!("| contender | patches/s (wall) | patches/s per core | peak RSS |");
    println!("|---|---:|---:|---:|");
    let pillow_rate = pillow_row(&small, n_small);
    let one = stage(small.parent().unwrap(), 1, "j1");
    println!(
        "| idcctl stage -j 1 (decode, shard, sha256, write) | {:.0} | {:.0} | {:.0} MB |",
        n_small / one.wall,
        n_small / one.cpu,
        one.max_rss_mb
    );
    let all = stage(small.parent().unwrap(), cores, "all");
    println!(
        "| idcctl stage -j {cores} | {:.0} | {:.0} | {:.0} MB |",
        n_small / all.wall,
        n_small / all.cpu,
        all.max_rss_mb
    );
    let large = stage(&big, cores, "big");
    println!(
        "| idcctl stage -j {cores}, {n_big} patches | {:.0} | {:.0} | {:.0} MB |",
        n_big / large.wall,
        n_big / large.cpu,
        large.max_rss_mb
    );
    if let Some(p) = pillow_rate {
        println!(
            "\nper core, idcctl stage is {:.2}x Pillow (-j 1), {:.2}x (-j {cores})",
            (n_small / one.cpu) / p,
            (n_small / all.cpu) / p
        );
    }
    println!(
        "all cores: {:.2}x the -j 1 wall rate; peak memory {:.0} MB at {n_small} patches, {:.0} MB at {n_big}",
        one.wall / all.wall,
        all.max_rss_mb,
        large.max_rss_mb
    );
}

/// Synthesizes `big_patients` x `per_patient` patches under `tmp/big`, the first
/// `small_patients` of them also under `tmp/small` (hard links); returns both folders.
fn synthesize(
    tmp: &Path,
    big_patients: u32,
    small_patients: u32,
    per_patient: u32,
) -> (PathBuf, PathBuf) {
    let big = tmp.join("big");
    let small = tmp.join("small/IDC_regular_ps50_idx5");
    let opts = idc::dataset::synth::SynthOptions {
        patients: big_patients,
        per_patient,
        seed: 1,
        ..Default::default()
    };
    idc::dataset::synth::generate(&big, &opts).unwrap();
    // The small set is the first patients of the big one (hard links: same files).
    std::fs::create_dir_all(&small).unwrap();
    for i in 0..small_patients {
        let p = idc::dataset::synth::patient_id(i).to_string();
        for c in ["0", "1"] {
            let from = big.join("IDC_regular_ps50_idx5").join(&p).join(c);
            let to = small.join(&p).join(c);
            std::fs::create_dir_all(&to).unwrap();
            for f in std::fs::read_dir(&from).unwrap() {
                let f = f.unwrap();
                std::fs::hard_link(f.path(), to.join(f.file_name())).unwrap();
            }
        }
    }
    (big, small)
}

/// Pillow's row of the table, decoding the PNGs under `small` (`n_small` of them), when the
/// venv's python has it; returns its patches per CPU-second.
fn pillow_row(small: &Path, n_small: f64) -> Option<f64> {
    if let Some(py) = python() {
        let out = Command::new(&py)
            .args(["-c", PILLOW, small.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let per_core: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let r = measure(Command::new(&py).args(["-c", PILLOW, small.to_str().unwrap()]));
        println!(
            "| Pillow decode to uint8, 1 process (CPU time of the loop only) | {:.0} | {per_core:.0} | {:.0} MB |",
            n_small / r.wall,
            r.max_rss_mb
        );
        Some(per_core)
    } else {
        println!(
            "| Pillow | (not found: run .ci/test once to make .venv, or set IDC_PYTHON) | | |"
        );
        None
    }
}
