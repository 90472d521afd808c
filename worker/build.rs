//! Links the worker against the libtorch that torch-sys found, so that it runs on a GPU machine.
//!
//! torch-sys links `libtorch_cpu` and `libtorch`, but nothing references a symbol of
//! `libtorch_cuda`, so the linker's default `--as-needed` drops it and CUDA then reads as
//! unavailable at run time. We force it in and record an rpath to the libtorch we built against
//! (a GPU machine may override it with `LD_LIBRARY_PATH`).
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=DEP_TCH_LIBTORCH_LIB is not set; CUDA may read as unavailable");
        return;
    };
    // Resolve links (the repo's .venv points into ~/.cache/idc) so the rpath outlives the checkout.
    let lib = std::fs::canonicalize(&lib).unwrap_or_else(|_| PathBuf::from(lib));
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    compile_shim(&lib);
    println!(
        "cargo:rustc-env=IDC_LIBTORCH_VERSION={}",
        libtorch_version(&lib).unwrap_or_else(|| "unknown".into())
    );
}

/// The version of the libtorch we link: a PyPI torch keeps it in `torch/version.py`, a libtorch
/// zip in `build-version`.
fn libtorch_version(lib: &Path) -> Option<String> {
    let root = lib.parent()?;
    if let Ok(v) = std::fs::read_to_string(root.join("build-version")) {
        return Some(v.trim().to_string());
    }
    let py = std::fs::read_to_string(root.join("version.py")).ok()?;
    py.lines()
        .find_map(|l| l.strip_prefix("__version__ = "))
        .map(|v| v.trim().trim_matches('\'').trim_matches('"').to_string())
}

/// Compiles `src/shim.cpp` (autocast, fused optimizers, op counters) and `src/trace.cpp`
/// (TorchScript export) against the same libtorch headers.
fn compile_shim(lib: &Path) {
    for f in ["src/shim.cpp", "src/trace.cpp", "src/shim_error.h"] {
        println!("cargo:rerun-if-changed={f}");
    }
    let include = lib
        .parent()
        .expect("libtorch lib dir has a parent")
        .join("include");
    cc::Build::new()
        .cpp(true)
        .file("src/shim.cpp")
        .file("src/trace.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        // As libtorch itself is built: some of its classes (RecordFunction) have debug-only
        // members, so the shim must see the same layout.
        .define("NDEBUG", None)
        .warnings(false)
        .compile("idc_shim");
}
