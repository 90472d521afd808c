//! `idc-worker`: the training worker that runs on the GPU node (or as a local child process).
use clap::Parser;

/// Trains IDC classifiers with libtorch from a dataset staged by `idcctl stage`.
#[derive(Parser, Debug)]
#[command(name = "idc-worker", disable_version_flag = true)]
struct Cli {
    /// Print the worker's version, the libtorch it was built against and whether CUDA is usable.
    #[arg(short = 'V', long)]
    version: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.version {
        println!("{}", version_text());
        return Ok(());
    }
    anyhow::bail!("nothing to do: see `idc-worker --help`")
}

fn version_text() -> String {
    let cuda = if tch::Cuda::is_available() {
        format!(
            "available ({} device(s), cuDNN {})",
            tch::Cuda::device_count(),
            if tch::Cuda::cudnn_is_available() {
                "yes"
            } else {
                "no"
            }
        )
    } else {
        "not available".to_string()
    };
    format!(
        "idc-worker {}\nlibtorch {} (built against)\nshard format v{}\nCUDA {}",
        env!("CARGO_PKG_VERSION"),
        env!("IDC_LIBTORCH_VERSION"),
        idc::shard::FORMAT_VERSION,
        cuda
    )
}
