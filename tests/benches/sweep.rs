//! Sweep benchmark: idc's samplers side by side with Optuna's `TPESampler`, in the same run, on
//! the same closed-form problems, budgets, seeds and schedule.
//!
//! `cargo bench --bench sweep` (Optuna from `IDC_OPTUNA_PYTHON`, which `.ci/env.sh`'s
//! `idc_optuna_venv` sets up; without it only idc's samplers run). Each study runs
//! `IDC_BENCH_TRIALS` trials (default 100) for each of `IDC_BENCH_SEEDS` seeds (default 20),
//! sequentially and with 3 trials pending at a time (as `parallelism: 3` does: the oldest
//! pending trial finishes first, then the next is asked for). `IDC_BENCH_PROBLEMS` and
//! `IDC_BENCH_SAMPLERS` (names, comma-separated: idc, idc-independent, optuna,
//! optuna-independent, random) pick problems and samplers; `IDC_BENCH_OUT` also writes the
//! tables there (Markdown); `IDC_BENCH_FIRST_SEED` starts the seeds elsewhere than 0.
//!
//! Printed per problem and schedule: the median [quartiles] of the best value found after 25,
//! 50 and 100 trials for each sampler, the share of seeds where idc's default TPE is at least
//! as good as Optuna's default after the full budget, and each sampler's time per trial (the
//! `suggest` call; for Optuna, `study.ask`, timed inside Python).

use idc::sweep::fmt_num as num;
use idc::sweep::sampler::{Observation, Outcome, SamplerSpec};
use idc::sweep::space::{Distribution, Param, Space};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

/// A closed-form objective to minimize over a search space.
struct Problem {
    name: &'static str,
    space: Space,
    f: fn(&[f64]) -> f64,
    /// The known minimum, for the table.
    optimum: f64,
}

fn uniform(low: f64, high: f64) -> Distribution {
    Distribution::Uniform { low, high }
}

fn box_space(dims: usize, low: f64, high: f64) -> Space {
    Space {
        params: (0..dims)
            .map(|i| Param {
                path: format!("x{i}"),
                dist: uniform(low, high),
            })
            .collect(),
    }
}

/// Hartmann 6-D on [0, 1]^6.
fn hartmann6(x: &[f64]) -> f64 {
    const ALPHA: [f64; 4] = [1.0, 1.2, 3.0, 3.2];
    const A: [[f64; 6]; 4] = [
        [10.0, 3.0, 17.0, 3.5, 1.7, 8.0],
        [0.05, 10.0, 17.0, 0.1, 8.0, 14.0],
        [3.0, 3.5, 1.7, 10.0, 17.0, 8.0],
        [17.0, 8.0, 0.05, 10.0, 0.1, 14.0],
    ];
    const P: [[f64; 6]; 4] = [
        [1312.0, 1696.0, 5569.0, 124.0, 8283.0, 5886.0],
        [2329.0, 4135.0, 8307.0, 3736.0, 1004.0, 9991.0],
        [2348.0, 1451.0, 3522.0, 2883.0, 3047.0, 6650.0],
        [4047.0, 8828.0, 8732.0, 5743.0, 1091.0, 381.0],
    ];
    -(0..4)
        .map(|i| {
            let s: f64 = (0..6)
                .map(|j| A[i][j] * (x[j] - 1e-4 * P[i][j]).powi(2))
                .sum();
            ALPHA[i] * (-s).exp()
        })
        .sum::<f64>()
}

/// Branin on [-5, 10] x [0, 15].
fn branin(x: &[f64]) -> f64 {
    use std::f64::consts::PI;
    let (b, c, t) = (5.1 / (4.0 * PI * PI), 5.0 / PI, 1.0 / (8.0 * PI));
    (x[1] - b * x[0] * x[0] + c * x[0] - 6.0).powi(2) + 10.0 * (1.0 - t) * x[0].cos() + 10.0
}

/// Styblinski-Tang, any dimension, on [-5, 5]^d.
fn styblinski_tang(x: &[f64]) -> f64 {
    0.5 * x
        .iter()
        .map(|v| v.powi(4) - 16.0 * v * v + 5.0 * v)
        .sum::<f64>()
}

/// Ackley, any dimension; searched on [-10, 30]^d (as in the SigOpt evaluation set) so that the
/// optimum is not at the centre of the box, where every prior starts.
fn ackley(x: &[f64]) -> f64 {
    use std::f64::consts::{E, PI};
    let n = x.len() as f64;
    let sq = x.iter().map(|v| v * v).sum::<f64>() / n;
    let cos = x.iter().map(|v| (2.0 * PI * v).cos()).sum::<f64>() / n;
    -20.0 * (-0.2 * sq.sqrt()).exp() - cos.exp() + 20.0 + E
}

/// Shekel (m = 10) on [0, 10]^4.
fn shekel(x: &[f64]) -> f64 {
    const BETA: [f64; 10] = [1.0, 2.0, 2.0, 4.0, 4.0, 6.0, 3.0, 7.0, 5.0, 5.0];
    const C: [[f64; 10]; 4] = [
        [4.0, 1.0, 8.0, 6.0, 3.0, 2.0, 5.0, 8.0, 6.0, 7.0],
        [4.0, 1.0, 8.0, 6.0, 7.0, 9.0, 3.0, 1.0, 2.0, 3.6],
        [4.0, 1.0, 8.0, 6.0, 3.0, 2.0, 5.0, 8.0, 6.0, 7.0],
        [4.0, 1.0, 8.0, 6.0, 7.0, 9.0, 3.0, 1.0, 2.0, 3.6],
    ];
    -(0..10)
        .map(|i| {
            let d: f64 = (0..4).map(|j| (x[j] - C[j][i]).powi(2)).sum();
            1.0 / (d + 0.1 * BETA[i])
        })
        .sum::<f64>()
}

/// Rosenbrock, any dimension, on [-5, 10]^d.
fn rosenbrock(x: &[f64]) -> f64 {
    x.windows(2)
        .map(|w| 100.0 * (w[1] - w[0] * w[0]).powi(2) + (1.0 - w[0]).powi(2))
        .sum()
}

const BATCH_SIZES: [f64; 3] = [256.0, 512.0, 1024.0];

/// The space of `manifests/sweep.yaml` (plus a log-scale integer width): a made-up validation
/// loss over it, 0 at its best, with the interactions real ones have (the best learning rate
/// grows with the batch size, the best dropout with the width).
fn mixed_space() -> Space {
    let p = |path: &str, dist| Param {
        path: path.into(),
        dist,
    };
    let choices = |c: &[&str]| Distribution::Categorical {
        choices: c.iter().map(|s| serde_yaml::Value::from(*s)).collect(),
    };
    Space {
        params: vec![
            p(
                "lr",
                Distribution::LogUniform {
                    low: 1e-4,
                    high: 1e-2,
                },
            ),
            p(
                "weight_decay",
                Distribution::LogUniform {
                    low: 1e-6,
                    high: 1e-2,
                },
            ),
            p("batch_size", choices(&["256", "512", "1024"])),
            p("dropout", uniform(0.1, 0.6)),
            p("color", uniform(0.0, 0.8)),
            p(
                "width",
                Distribution::Int {
                    low: 8,
                    high: 128,
                    step: 1,
                    log: true,
                },
            ),
            p("sampling", choices(&["weighted", "shuffle"])),
        ],
    }
}

fn mixed(x: &[f64]) -> f64 {
    let bs = BATCH_SIZES[x[2] as usize];
    let lr_opt = 5e-4 * bs / 256.0;
    let lr = ((x[0].log10() - lr_opt.log10()) / 0.5).powi(2);
    let wd = 0.3 * ((x[1].log10() + 4.0) / 1.5).powi(2);
    let width = x[5];
    let d_opt = 0.3 + 0.1 * (width / 32.0).log2();
    let dropout = 0.5 * ((x[3] - d_opt) / 0.2).powi(2);
    let color = 0.2 * (x[4] - 0.4).powi(2) / 0.16;
    let w = 0.3 * ((width.log2() - 5.5) / 1.5).powi(2);
    let sampling = [0.0, 0.15][x[6] as usize];
    let batch = [0.05, 0.0, 0.1][x[2] as usize];
    lr + wd + dropout + color + w + sampling + batch
}

fn problems() -> Vec<Problem> {
    let branin_space = Space {
        params: vec![
            Param {
                path: "x0".into(),
                dist: uniform(-5.0, 10.0),
            },
            Param {
                path: "x1".into(),
                dist: uniform(0.0, 15.0),
            },
        ],
    };
    vec![
        Problem {
            name: "hartmann6",
            space: box_space(6, 0.0, 1.0),
            f: hartmann6,
            optimum: -3.32237,
        },
        Problem {
            name: "branin",
            space: branin_space,
            f: branin,
            optimum: 0.397887,
        },
        Problem {
            name: "styblinski-tang-5",
            space: box_space(5, -5.0, 5.0),
            f: styblinski_tang,
            optimum: -39.16617 * 5.0,
        },
        Problem {
            name: "ackley-5",
            space: box_space(5, -10.0, 30.0),
            f: ackley,
            optimum: 0.0,
        },
        Problem {
            name: "shekel-10",
            space: box_space(4, 0.0, 10.0),
            f: shekel,
            optimum: -10.5364,
        },
        Problem {
            name: "rosenbrock-4",
            space: box_space(4, -5.0, 10.0),
            f: rosenbrock,
            optimum: 0.0,
        },
        Problem {
            name: "mixed-7",
            space: mixed_space(),
            f: mixed,
            optimum: 0.0,
        },
    ]
}

/// Something that proposes points and is told their values.
trait Searcher {
    /// The point of trial `id` (0-based), and the seconds the sampler took.
    fn ask(&mut self, id: usize) -> (Vec<f64>, f64);
    fn tell(&mut self, id: usize, value: f64);
}

/// One of idc's samplers, given what a sweep's driver gives it: every ended trial, and the
/// pending ones as running.
struct Idc<'a> {
    sampler: SamplerSpec,
    space: &'a Space,
    trials: Vec<Observation>,
}

impl Searcher for Idc<'_> {
    fn ask(&mut self, id: usize) -> (Vec<f64>, f64) {
        let start = Instant::now();
        let point = self
            .sampler
            .suggest(self.space, &self.trials, id as u32 + 1)
            .expect("an unbounded sampler");
        let secs = start.elapsed().as_secs_f64();
        self.trials.push(Observation {
            number: id as u32 + 1,
            point: point.clone(),
            outcome: Outcome::Running,
        });
        (point, secs)
    }

    fn tell(&mut self, id: usize, value: f64) {
        self.trials[id].outcome = Outcome::Completed(value);
    }
}

/// Optuna's TPESampler in a Python child (optuna_sampler.py).
struct Optuna {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Optuna {
    fn start(python: &PathBuf) -> Optuna {
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/benches/optuna_sampler.py");
        let mut child = Command::new(python)
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", python.display()));
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Optuna {
            child,
            stdin,
            stdout,
        }
    }

    fn call(&mut self, msg: serde_json::Value) -> serde_json::Value {
        let mut line = String::new();
        let answered = writeln!(self.stdin, "{msg}").is_ok()
            && self.stdout.read_line(&mut line).is_ok_and(|n| n > 0);
        // Its traceback is on stderr, which it shares with this process.
        assert!(
            answered,
            "optuna_sampler.py stopped answering (its error is printed above) after {msg}"
        );
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("optuna_sampler.py said {line:?}: {e}"))
    }

    fn study(&mut self, space: &Space, seed: u64, multivariate: bool) {
        let space: Vec<serde_json::Value> = space
            .params
            .iter()
            .map(|p| serde_json::to_value(&p.dist).unwrap())
            .collect();
        self.call(serde_json::json!({"study": {"space": space, "seed": seed, "multivariate": multivariate}}));
    }
}

impl Drop for Optuna {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Searcher for Optuna {
    fn ask(&mut self, id: usize) -> (Vec<f64>, f64) {
        let r = self.call(serde_json::json!({ "ask": id }));
        let point = r["point"]
            .as_array()
            .expect("a point")
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        (point, r["secs"].as_f64().unwrap())
    }

    fn tell(&mut self, id: usize, value: f64) {
        self.call(serde_json::json!({"tell": id, "value": value}));
    }
}

/// What one study found: the best value after each trial, and the sampler's total seconds.
struct Study {
    best: Vec<f64>,
    secs: f64,
}

/// Runs `trials` trials with `pending` outstanding at a time; the oldest finishes first.
fn run(s: &mut dyn Searcher, f: fn(&[f64]) -> f64, trials: usize, pending: usize) -> Study {
    let mut outstanding: VecDeque<(usize, Vec<f64>)> = VecDeque::new();
    let (mut asked, mut secs) = (0, 0.0);
    let mut best = vec![];
    while best.len() < trials {
        while outstanding.len() < pending && asked < trials {
            let (point, t) = s.ask(asked);
            secs += t;
            outstanding.push_back((asked, point));
            asked += 1;
        }
        let (id, point) = outstanding.pop_front().expect("a pending trial");
        let v = f(&point);
        s.tell(id, v);
        let so_far = best.last().copied().unwrap_or(f64::INFINITY);
        best.push(so_far.min(v));
    }
    Study { best, secs }
}

#[derive(Clone, Copy, PartialEq)]
enum Sampler {
    IdcTpe,
    IdcTpeIndependent,
    OptunaTpe,
    OptunaTpeIndependent,
    Random,
}

impl Sampler {
    fn label(self) -> &'static str {
        match self {
            Sampler::IdcTpe => "idc tpe (default: multivariate)",
            Sampler::IdcTpeIndependent => "idc tpe (multivariate: false)",
            Sampler::OptunaTpe => "optuna 5.0 tpe (default)",
            Sampler::OptunaTpeIndependent => "optuna 5.0 tpe (multivariate=False)",
            Sampler::Random => "random",
        }
    }

    /// Its name in `IDC_BENCH_SAMPLERS`.
    fn key(self) -> &'static str {
        match self {
            Sampler::IdcTpe => "idc",
            Sampler::IdcTpeIndependent => "idc-independent",
            Sampler::OptunaTpe => "optuna",
            Sampler::OptunaTpeIndependent => "optuna-independent",
            Sampler::Random => "random",
        }
    }

    fn optuna(self) -> bool {
        matches!(self, Sampler::OptunaTpe | Sampler::OptunaTpeIndependent)
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Quartiles (q1, median, q3) by linear interpolation.
fn quartiles(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let x = q * (s.len() - 1) as f64;
        let (i, frac) = (x.floor() as usize, x - x.floor());
        s[i] + (s[(i + 1).min(s.len() - 1)] - s[i]) * frac
    };
    (at(0.25), at(0.5), at(0.75))
}

/// The budget of the benchmark, from the environment.
struct Budget {
    trials: usize,
    seeds: u64,
    first_seed: u64,
    /// Studies run at a time.
    jobs: usize,
}

/// One finished study: (problem index, pending trials, sampler, seed, the study).
type Finished = (usize, usize, Sampler, u64, Study);

/// The schedules: trials asked one at a time, and with 3 pending.
const SCHEDULES: [usize; 2] = [1, 3];

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probes for tests
    }
    let budget = Budget {
        trials: env_or("IDC_BENCH_TRIALS", 100),
        seeds: env_or("IDC_BENCH_SEEDS", 20),
        first_seed: env_or("IDC_BENCH_FIRST_SEED", 0),
        jobs: env_or(
            "IDC_BENCH_JOBS",
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        ),
    };
    let python = std::env::var_os("IDC_OPTUNA_PYTHON").map(PathBuf::from);
    let only: Option<Vec<String>> = std::env::var("IDC_BENCH_PROBLEMS")
        .ok()
        .map(|v| v.split(',').map(str::to_string).collect());
    let problems: Vec<Problem> = problems()
        .into_iter()
        .filter(|p| only.as_ref().is_none_or(|o| o.iter().any(|n| n == p.name)))
        .collect();
    let samplers = chosen_samplers(python.is_some());
    let started = Instant::now();
    let results = run_studies(&budget, &problems, &samplers, python.as_ref());
    let Budget {
        trials,
        seeds,
        jobs,
        ..
    } = budget;
    let mut out = format!(
        "Sweep samplers, {trials} trials x {seeds} seeds per problem; best value found: median [q1, q3] of the seeds (lower is better); {jobs} studies at a time, {:.0} s in all.\n",
        started.elapsed().as_secs_f64()
    );
    let mut wins_tally = vec![];
    for (pi, p) in problems.iter().enumerate() {
        for pending in SCHEDULES {
            let of = |s: Sampler| -> Vec<&Study> {
                let mut v: Vec<(u64, &Study)> = results
                    .iter()
                    .filter(|r| r.0 == pi && r.1 == pending && r.2 == s)
                    .map(|r| (r.3, &r.4))
                    .collect();
                v.sort_by_key(|x| x.0);
                v.into_iter().map(|x| x.1).collect()
            };
            out += &problem_table(p, pending, trials, &samplers, &of);
            if [Sampler::IdcTpe, Sampler::OptunaTpe, Sampler::Random]
                .iter()
                .all(|s| samplers.contains(s))
            {
                let (line, tally) = idc_against_optuna(p, pending, trials, &of);
                out += &line;
                wins_tally.push(tally);
            }
        }
    }
    if !wins_tally.is_empty() {
        out += &summary(&wins_tally);
    }
    print!("{out}");
    if let Some(path) = std::env::var_os("IDC_BENCH_OUT") {
        std::fs::write(&path, &out).expect("IDC_BENCH_OUT is writable");
    }
}

/// The samplers compared: idc's two TPEs, Optuna's two when its Python is there, random; then
/// only those `IDC_BENCH_SAMPLERS` names, if set.
fn chosen_samplers(optuna: bool) -> Vec<Sampler> {
    let mut samplers = vec![Sampler::IdcTpe, Sampler::IdcTpeIndependent];
    if optuna {
        samplers.extend([Sampler::OptunaTpe, Sampler::OptunaTpeIndependent]);
    } else {
        eprintln!(
            "IDC_OPTUNA_PYTHON is not set: Optuna is left out (source .ci/env.sh; idc_optuna_venv)"
        );
    }
    samplers.push(Sampler::Random);
    if let Ok(keep) = std::env::var("IDC_BENCH_SAMPLERS") {
        let keep: Vec<&str> = keep.split(',').collect();
        samplers.retain(|s| keep.contains(&s.key()));
    }
    samplers
}

/// Runs every study (problem x schedule x sampler x seed), shared by `budget.jobs` threads
/// (each with its own Optuna process).
fn run_studies(
    budget: &Budget,
    problems: &[Problem],
    samplers: &[Sampler],
    python: Option<&PathBuf>,
) -> Vec<Finished> {
    let mut work = vec![];
    for (pi, _) in problems.iter().enumerate() {
        for pending in SCHEDULES {
            for &s in samplers {
                for seed in budget.first_seed..budget.first_seed + budget.seeds {
                    work.push((pi, pending, s, seed));
                }
            }
        }
    }
    let total = work.len();
    let queue = Mutex::new(work);
    let results = Mutex::new(vec![]);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..budget.jobs {
            scope.spawn(|| {
                let mut optuna = python.map(Optuna::start);
                loop {
                    let Some((pi, pending, s, seed)) = queue.lock().unwrap().pop() else {
                        break;
                    };
                    let p = &problems[pi];
                    let study = if s.optuna() {
                        let o = optuna.as_mut().expect("optuna runs");
                        o.study(&p.space, seed, s == Sampler::OptunaTpe);
                        run(o, p.f, budget.trials, pending)
                    } else {
                        idc_study(p, s, seed, budget.trials, pending)
                    };
                    let mut r = results.lock().unwrap();
                    r.push((pi, pending, s, seed, study));
                    if r.len() % 100 == 0 {
                        eprintln!(
                            "{}/{total} studies ({:.0}s)",
                            r.len(),
                            started.elapsed().as_secs_f64()
                        );
                    }
                }
            });
        }
    });
    results.into_inner().unwrap()
}

/// A study of problem `p` with one of idc's samplers.
fn idc_study(p: &Problem, s: Sampler, seed: u64, trials: usize, pending: usize) -> Study {
    let sampler = match s {
        Sampler::Random => SamplerSpec::Random { seed },
        Sampler::IdcTpeIndependent => {
            let mut s = SamplerSpec::tpe(seed);
            if let SamplerSpec::Tpe { multivariate, .. } = &mut s {
                *multivariate = false;
            }
            s
        }
        _ => SamplerSpec::tpe(seed),
    };
    let mut idc = Idc {
        sampler,
        space: &p.space,
        trials: vec![],
    };
    run(&mut idc, p.f, trials, pending)
}

/// "sequential", or "N pending".
fn schedule_name(pending: usize) -> String {
    if pending == 1 {
        "sequential".to_string()
    } else {
        format!("{pending} pending")
    }
}

/// The table of problem `p` under a schedule: each sampler's best value after 25, 50 and 100
/// trials (those within the budget), and its time per trial. `of` gives a sampler's studies.
fn problem_table<'a>(
    p: &Problem,
    pending: usize,
    trials: usize,
    samplers: &[Sampler],
    of: &dyn Fn(Sampler) -> Vec<&'a Study>,
) -> String {
    let checkpoints: Vec<usize> = [25, 50, 100]
        .into_iter()
        .filter(|&c| c <= trials)
        .chain((trials < 25).then_some(trials))
        .collect();
    let mut out = format!(
        "\n### {} ({} parameters, optimum {}), {}\n\n",
        p.name,
        p.space.params.len(),
        num(p.optimum),
        schedule_name(pending)
    );
    let mut header = "| sampler |".to_string();
    let mut rule = "|---|".to_string();
    for c in &checkpoints {
        header += &format!(" best after {c} |");
        rule += "---|";
    }
    header += " sampler ms/trial |";
    rule += "---|";
    out += &format!("{header}\n{rule}\n");
    for &s in samplers {
        let studies = of(s);
        let mut row = format!("| {} |", s.label());
        for &c in &checkpoints {
            let at: Vec<f64> = studies.iter().map(|st| st.best[c - 1]).collect();
            let (q1, m, q3) = quartiles(&at);
            row += &format!(" {} [{}, {}] |", num(m), num(q1), num(q3));
        }
        let ms =
            studies.iter().map(|st| st.secs).sum::<f64>() * 1e3 / (studies.len() * trials) as f64;
        row += &format!(" {ms:.3} |");
        out += &format!("{row}\n");
    }
    out
}

/// One row of the summary: problem, schedule, idc's TPE at least as good as Optuna's, better
/// than random, and its sampler's speed-up.
type Tally = (&'static str, String, bool, bool, f64);

/// idc's default TPE against Optuna's default and random on problem `p` under a schedule,
/// after the full budget: the line under its table, and its row of the summary.
fn idc_against_optuna<'a>(
    p: &Problem,
    pending: usize,
    trials: usize,
    of: &dyn Fn(Sampler) -> Vec<&'a Study>,
) -> (String, Tally) {
    let (idc, optuna, random) = (
        of(Sampler::IdcTpe),
        of(Sampler::OptunaTpe),
        of(Sampler::Random),
    );
    let last = trials - 1;
    let at_least = idc
        .iter()
        .zip(&optuna)
        .filter(|(a, b)| a.best[last] <= b.best[last])
        .count();
    let median = |v: &[&Study]| quartiles(&v.iter().map(|s| s.best[last]).collect::<Vec<_>>()).1;
    let (mi, mo, mr) = (median(&idc), median(&optuna), median(&random));
    let time = |v: &[&Study]| v.iter().map(|s| s.secs).sum::<f64>();
    let speed = time(&optuna) / time(&idc).max(1e-12);
    let line = format!(
        "\nidc's default TPE is at least as good as Optuna's default on {at_least} of {} seeds after {trials} trials (median {} vs {}; random {}); its sampler is {speed:.0}x faster per trial.\n",
        idc.len(),
        num(mi),
        num(mo),
        num(mr)
    );
    (
        line,
        (p.name, schedule_name(pending), mi <= mo, mi < mr, speed),
    )
}

/// The summary table of every problem and schedule, and the count per schedule.
fn summary(wins_tally: &[Tally]) -> String {
    let mut out = "\n### Summary (median best after the full budget)\n\n| problem | schedule | idc tpe ≤ optuna tpe | idc tpe < random | sampler speed-up |\n|---|---|---|---|---|\n".to_string();
    for (name, schedule, vs_optuna, vs_random, speed) in wins_tally {
        let yes = |b: &bool| if *b { "yes" } else { "no" };
        out += &format!(
            "| {name} | {schedule} | {} | {} | {speed:.0}x |\n",
            yes(vs_optuna),
            yes(vs_random)
        );
    }
    for pending in SCHEDULES {
        let schedule = schedule_name(pending);
        let rows: Vec<_> = wins_tally.iter().filter(|r| r.1 == schedule).collect();
        out += &format!(
            "\n{schedule}: idc's default TPE is at least as good as Optuna's default on {} of {} problems, better than random on {} of {}.",
            rows.iter().filter(|r| r.2).count(),
            rows.len(),
            rows.iter().filter(|r| r.3).count(),
            rows.len()
        );
    }
    out += "\n";
    out
}
