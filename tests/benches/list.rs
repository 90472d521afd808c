//! List benchmark: `idcctl list` on a bucket of thousands of finished runs, on an S3 server
//! behind a proxy that delays each request by a round trip, against the algorithm `list` had
//! before (every object under `runs/` listed, then each run's `status.json` and whole
//! `metrics.jsonl` read, one request after another), in the same run.
//!
//! `cargo bench --bench list` with an S3 server in the AWS_* variables and `IDC_TEST_S3_URL`
//! (`.ci/env.sh`'s `idc_s3_server` starts moto; without them the bench says so and stops).
//! `IDC_BENCH_RUNS` (default 5000) finished runs are written through the library as `submit`
//! and the supervisor leave them (run index entry, `status.json` with its summary, spec,
//! experiment, `metrics.jsonl` of 10 epochs, a log and a checkpoint pointer: 7 objects a run);
//! `IDC_BENCH_OLD_RUNS` (default 500) more as runs from before the index and summaries were
//! (no index entry, no summary). The proxy adds `IDC_BENCH_LATENCY_MS` (default 30) to every
//! client-to-server chunk, so each request pays one round trip, and counts requests (their
//! HTTP request lines). The old algorithm runs in this process, stopped after
//! `IDC_BENCH_OLD_TIMEOUT_S` (default 60); `list` runs as the `idcctl` binary, whose CPU time
//! is shown. With `IDC_BENCH_S3_PID` (the server's pid) the server's CPU time per command is
//! shown too.

use bytes::Bytes;
use futures::StreamExt;
use idc::experiment::Backend;
use idc::layout::{self, run as keys};
use idc::metrics::{BinaryMetrics, Metrics, MetricsRecord};
use idc::run::{self, MetricsSummary, Phase, RunStatus};
use idc::spec::RunSpec;
use idc::store::{Store, StoreError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A TCP proxy in front of the S3 server: delays what the client sends by `delay_ms` (each
/// chunk leaves `delay_ms` after it arrived, so the delay adds latency, not a rate limit) and
/// counts HTTP requests.
struct Proxy {
    addr: SocketAddr,
    delay_ms: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
}

impl Proxy {
    async fn start(listener: std::net::TcpListener, upstream: SocketAddr) -> Proxy {
        listener.set_nonblocking(true).unwrap();
        let listener = TcpListener::from_std(listener).unwrap();
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            delay_ms: Arc::new(AtomicU64::new(0)),
            requests: Arc::new(AtomicU64::new(0)),
        };
        let (delay, requests) = (proxy.delay_ms.clone(), proxy.requests.clone());
        tokio::spawn(async move {
            loop {
                let (client, _) = listener.accept().await.expect("accept");
                let server = TcpStream::connect(upstream).await.expect("the S3 server");
                tokio::spawn(forward(client, server, delay.clone(), requests.clone()));
            }
        });
        proxy
    }
}

async fn forward(
    client: TcpStream,
    server: TcpStream,
    delay_ms: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut server_rd, mut server_wr) = server.into_split();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let up = async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut line = RequestLines::default();
        loop {
            let n = match client_rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            requests.fetch_add(line.count(&buf[..n]), Ordering::Relaxed);
            let due = tokio::time::Instant::now()
                + Duration::from_millis(delay_ms.load(Ordering::Relaxed));
            if tx.send((due, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    };
    let delayed = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if server_wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = server_wr.shutdown().await;
    };
    let down = async move {
        let _ = tokio::io::copy(&mut server_rd, &mut client_wr).await;
        let _ = client_wr.shutdown().await;
    };
    tokio::join!(up, delayed, down);
}

/// Counts HTTP/1.1 request lines (`GET /key HTTP/1.1`) in a client's byte stream, across
/// chunk boundaries.
#[derive(Default)]
struct RequestLines {
    line: Vec<u8>,
}

impl RequestLines {
    fn count(&mut self, bytes: &[u8]) -> u64 {
        let mut n = 0;
        for &b in bytes {
            if b == b'\n' {
                let l = &self.line;
                let method = ["GET ", "PUT ", "POST ", "HEAD ", "DELETE "]
                    .iter()
                    .any(|m| l.starts_with(m.as_bytes()));
                if method && l.ends_with(b" HTTP/1.1\r") {
                    n += 1;
                }
                self.line.clear();
            } else if self.line.len() < 16 * 1024 {
                self.line.push(b);
            }
        }
        n
    }
}

/// Run `i` of the bench: ids of the three kinds (`<name>-<date>-<time>-<hex>`, sweep trials,
/// `--run-id` names), created ten minutes apart, mostly succeeded.
fn run_record(i: usize, old: bool) -> RunStatus {
    let created =
        time::OffsetDateTime::from_unix_timestamp(1_764_547_200 + i as i64 * 600).expect("a time");
    let stamp = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let day = time::macros::format_description!("[year][month][day]-[hour][minute][second]");
    let (experiment, run_id) = match i % 10 {
        0..=6 => (
            "cnn",
            format!(
                "cnn-{}-{:04x}",
                created.format(&day).unwrap(),
                (i * 7919) & 0xffff
            ),
        ),
        7 | 8 => ("cnn-sweep", format!("sweep{}-t{:03}", i / 100, i % 100 + 1)),
        _ => ("resnet34", format!("baseline-{i}")),
    };
    let phase = match i % 23 {
        0 => Phase::Failed,
        1 => Phase::Cancelled,
        _ => Phase::Succeeded,
    };
    let run_id = if old { format!("old-{run_id}") } else { run_id };
    RunStatus {
        run_id,
        experiment: experiment.into(),
        model: "simple_cnn".into(),
        backend: Backend::Local,
        phase,
        attempts: 1,
        max_attempts: 3,
        created_at: stamp(created),
        started_at: Some(stamp(created + Duration::from_secs(2))),
        finished_at: Some(stamp(created + Duration::from_secs(300))),
        exit_codes: vec![if phase == Phase::Succeeded { 0 } else { 1 }],
        reason: Some("finished".into()),
        supervisor: None,
        worker: None,
        heartbeat_at: None,
        deadline_s: None,
        cluster: None,
        summary: None,
    }
}

fn metrics_of(i: usize) -> Vec<MetricsRecord> {
    (1..=10u32)
        .flat_map(|epoch| {
            let f1 =
                0.6 + 0.03 * epoch as f64 - 0.002 * (epoch as f64).powi(2) + (i % 7) as f64 / 100.0;
            [
                MetricsRecord::Step {
                    epoch,
                    step: epoch as u64 * 100,
                    loss: 0.4,
                    lr: 1e-3,
                    images_per_s: 2400.0,
                },
                MetricsRecord::Epoch {
                    epoch,
                    train_loss: 0.35,
                    lr: 1e-3,
                    val: Metrics::Binary(BinaryMetrics {
                        count: 38000,
                        f1,
                        ..Default::default()
                    }),
                    duration_s: 29.0,
                    images_per_s: 2450.0,
                    best: false,
                },
            ]
        })
        .collect()
}

/// Writes run `i` as `submit` and its supervisor leave a finished run (or, `old`, as one from
/// before the index and summaries).
async fn write_run(root: &Store, i: usize, old: bool, experiment: &str) -> Result<(), StoreError> {
    let mut s = run_record(i, old);
    let run = run::run_store(root, &s.run_id);
    let records = metrics_of(i);
    let lines: String = records
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect();
    let spec = RunSpec {
        run_id: s.run_id.clone(),
        dataset: root.url_of("datasets/idc"),
        train: Default::default(),
    };
    if !old {
        let mut m = MetricsSummary::of(&records);
        m.ended_at = s.finished_at.clone();
        s.summary = Some(m);
        let ms = idc::clock::seconds_of(&s.created_at).unwrap() as u64 * 1000;
        root.put(&layout::run_index_key(ms, &s.run_id), Bytes::new())
            .await?;
    }
    let log = format!("{} start: run {}\nepoch 10 done\n", s.created_at, s.run_id);
    let puts = [
        (keys::SPEC, serde_yaml::to_string(&spec).unwrap()),
        (keys::EXPERIMENT, experiment.to_string()),
        (keys::METRICS, lines),
        (&keys::log(1), log),
        (keys::LATEST_CHECKPOINT, keys::checkpoint(10)),
        (keys::STATUS, serde_json::to_string_pretty(&s).unwrap()),
    ];
    for (key, body) in puts {
        run.put(key, Bytes::from(body)).await?;
    }
    Ok(())
}

/// Writes runs `0..n` (64 at a time).
async fn fill(root: &Store, n: usize, old: bool) {
    let exp = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/cnn.yaml"))
        .unwrap();
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| write_run(root, i, old, &exp))
        .buffer_unordered(64)
        .for_each(|r| async { r.expect("bench run written") })
        .await;
    eprintln!(
        "wrote {n} runs{} to {} in {:.0} s",
        if old { " (no index, no summary)" } else { "" },
        root.url(),
        started.elapsed().as_secs_f64()
    );
}

/// `list` as it was: every object under `runs/`, then each run's record and metrics, in turn.
/// The runs are finished, so it asked no backend. Returns the rows it would print.
async fn old_list(root: &Store) -> Result<usize, StoreError> {
    let mut rows = 0;
    for (key, _) in root.list(layout::RUNS).await? {
        let Some(id) = key
            .strip_prefix("runs/")
            .and_then(|k| k.strip_suffix("/status.json"))
        else {
            continue;
        };
        let run = run::run_store(root, id);
        let Some(s) = run::read_status(&run).await? else {
            continue;
        };
        let row = run::Summary::of(&s, &MetricsSummary::of(&run::read_metrics(&run).await?));
        std::hint::black_box(row);
        rows += 1;
    }
    Ok(rows)
}

/// One measured command.
struct Measured {
    wall_s: f64,
    requests: u64,
    rows: Option<usize>,
    client_cpu_s: Option<f64>,
    server_cpu_s: Option<f64>,
}

/// CPU seconds the process `pid` has used so far.
fn cpu_of(pid: Option<u32>) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid?)).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

async fn measure<F: std::future::Future<Output = (Option<usize>, Option<f64>)>>(
    proxy: &Proxy,
    server: Option<u32>,
    what: F,
) -> Measured {
    proxy.requests.store(0, Ordering::SeqCst);
    let cpu = cpu_of(server);
    let started = Instant::now();
    let (rows, client_cpu_s) = what.await;
    let wall_s = started.elapsed().as_secs_f64();
    Measured {
        wall_s,
        requests: proxy.requests.load(Ordering::SeqCst),
        rows,
        client_cpu_s,
        server_cpu_s: cpu.zip(cpu_of(server)).map(|(a, b)| b - a),
    }
}

/// CPU seconds of this process's children that have been waited for.
fn children_cpu() -> f64 {
    // SAFETY: `usage` is a valid out-pointer.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// `idcctl list ARGS -o json` on `storage` through the proxy; the rows it printed and its CPU
/// seconds.
async fn idcctl_list(
    storage: &str,
    proxy: SocketAddr,
    args: &[&str],
) -> (Option<usize>, Option<f64>) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_idcctl"));
    cmd.args(["list", "--storage", storage, "-o", "json"])
        .args(args)
        .env("AWS_ENDPOINT", format!("http://{proxy}"))
        .env("RUST_LOG", "warn");
    let (out, cpu) = tokio::task::spawn_blocking(move || {
        let before = children_cpu();
        let out = cmd.output().expect("idcctl runs");
        (out, children_cpu() - before)
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "idcctl list {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON rows");
    (Some(rows.as_array().expect("an array").len()), Some(cpu))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probes for tests
    }
    let (Ok(base), Ok(endpoint)) = (
        std::env::var("IDC_TEST_S3_URL"),
        std::env::var("AWS_ENDPOINT"),
    ) else {
        eprintln!(
            "IDC_TEST_S3_URL and AWS_ENDPOINT are not set: no S3 server to measure (source .ci/env.sh; idc_s3_server)"
        );
        return;
    };
    let upstream: SocketAddr = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("AWS_ENDPOINT is http://host:port on loopback");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_addr = listener.local_addr().unwrap();
    // SAFETY: no other thread runs yet; this process's stores go through the proxy.
    unsafe { std::env::set_var("AWS_ENDPOINT", format!("http://{proxy_addr}")) };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(bench(base, upstream, listener));
}

async fn bench(base: String, upstream: SocketAddr, listener: std::net::TcpListener) {
    let n: usize = env_or("IDC_BENCH_RUNS", 5000);
    let old_n: usize = env_or("IDC_BENCH_OLD_RUNS", 500);
    let latency: u64 = env_or("IDC_BENCH_LATENCY_MS", 30);
    let old_timeout = Duration::from_secs(env_or("IDC_BENCH_OLD_TIMEOUT_S", 60));
    let server: Option<u32> = std::env::var("IDC_BENCH_S3_PID")
        .ok()
        .and_then(|p| p.parse().ok());
    let proxy = Proxy::start(listener, upstream).await;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!("{}/list-bench-{nanos}", base.trim_end_matches('/'));
    let (new_url, old_url) = (format!("{prefix}/team"), format!("{prefix}/old"));
    let (new_root, old_root) = (
        Store::open(&new_url).unwrap(),
        Store::open(&old_url).unwrap(),
    );
    fill(&new_root, n, false).await;
    fill(&old_root, old_n, true).await;
    proxy.delay_ms.store(latency, Ordering::SeqCst);

    let mut table = vec![];
    let mut row = |runs: usize, bucket: &str, what: &str, m: Measured| {
        table.push(table_row(runs, bucket, what, m));
    };
    let old_alg = |root: Store| async move {
        match tokio::time::timeout(old_timeout, old_list(&root)).await {
            Ok(rows) => (Some(rows.expect("old list")), None),
            Err(_) => (None, None),
        }
    };
    let p = proxy.addr;
    let before = "before: every object listed, each record and metrics file read in turn";
    let m = measure(&proxy, server, old_alg(old_root.clone())).await;
    row(old_n, "old runs (no index, no summaries)", before, m);
    let m = measure(&proxy, server, idcctl_list(&old_url, p, &[])).await;
    row(
        old_n,
        "old runs (no index, no summaries)",
        "after: `list`, first time (indexes them)",
        m,
    );
    let m = measure(&proxy, server, idcctl_list(&old_url, p, &[])).await;
    row(
        old_n,
        "old runs (no index, no summaries)",
        "after: `list`",
        m,
    );
    let m = measure(&proxy, server, idcctl_list(&old_url, p, &["--all"])).await;
    row(
        old_n,
        "old runs (no index, no summaries)",
        "after: `list --all`",
        m,
    );
    let m = measure(&proxy, server, old_alg(new_root.clone())).await;
    row(n, "team (indexed, summaries)", before, m);
    let team = "team (indexed, summaries)";
    let m = measure(&proxy, server, idcctl_list(&new_url, p, &[])).await;
    row(
        n,
        team,
        "after: `list`, index check due (the index and every run folder listed)",
        m,
    );
    let m = measure(&proxy, server, idcctl_list(&new_url, p, &[])).await;
    row(n, team, "after: `list` (newest 50)", m);
    let m = measure(
        &proxy,
        server,
        idcctl_list(&new_url, p, &["--phase", "failed"]),
    )
    .await;
    row(
        n,
        team,
        "after: `list --phase failed` (newest 50 failed)",
        m,
    );
    let m = measure(&proxy, server, idcctl_list(&new_url, p, &["--all"])).await;
    row(n, team, "after: `list --all`", m);

    print_table(latency, old_timeout, &table);
}

/// One row of the table: what was listed, and what it cost.
fn table_row(runs: usize, bucket: &str, what: &str, m: Measured) -> String {
    let secs = |s: Option<f64>| s.map_or("-".into(), |c| format!("{c:.2}"));
    format!(
        "| {runs} | {bucket} | {what} | {:.2} | {} | {} | {} | {} |",
        m.wall_s,
        m.requests,
        m.rows.map_or("nothing (stopped)".into(), |r| r.to_string()),
        secs(m.client_cpu_s),
        secs(m.server_cpu_s),
    )
}

/// Prints the table under its title.
fn print_table(latency: u64, old_timeout: Duration, table: &[String]) {
    println!(
        "\n`idcctl list` through a proxy adding {latency} ms to every request; the old algorithm stopped after {} s\n",
        old_timeout.as_secs()
    );
    println!(
        "| runs | bucket | command | wall (s) | requests | rows | idcctl CPU (s) | S3 server CPU (s) |"
    );
    println!("|---:|---|---|---:|---:|---:|---:|---:|");
    for line in table {
        println!("{line}");
    }
}
