//! The sweep manifest (`apiVersion: idc/v1`, `kind: Sweep`): a `base` experiment, written
//! inline or named by file (`base: cnn.yaml`), a `search` space over its fields by dotted path,
//! the `objective`, the budget (`max_trials`, `parallelism`), the `sampler` and the `pruner`;
//! and its JSON Schema. Parsing is as strict as the experiment manifest's, with errors located
//! in the file at fault; the base and every searched value are checked by building the
//! experiments they make.

use super::pruner::PrunerSpec;
use super::sampler::SamplerSpec;
use super::space::{self, Distribution, Space};
use crate::experiment::{self, API_VERSION, Experiment, ManifestError};
use crate::metrics::MetricName;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::path::Path;

pub const KIND: &str = "Sweep";
/// Most trials a sweep may run (trial ids stay `t0001`…`t9999`).
pub const MAX_TRIALS: u32 = 9999;
/// Most trials running at once: each holds its GPUs (a Kubernetes Job) or is a worker process
/// on this machine, and the driver reads every running trial's status at each look.
pub const MAX_PARALLELISM: u32 = 256;
/// Experiment fields a search may not vary: set by the sweep, or shared by all its trials.
const FIXED: [&str; 5] = ["apiVersion", "kind", "name", "storage", "backend"];
/// Experiment fields a base leaves out: every trial is an experiment named after the sweep.
const SET_BY_SWEEP: [&str; 3] = ["apiVersion", "kind", "name"];

/// Whether larger or smaller objective values are better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Maximize,
    Minimize,
}

/// What the sweep optimizes: a validation metric, its best over a trial's epochs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Objective {
    /// The validation metric, e.g. `roc_auc`.
    pub metric: MetricName,
    /// Default: maximize, minimize for `loss`.
    #[serde(default)]
    pub direction: Option<Direction>,
}

impl Objective {
    pub fn direction(&self) -> Direction {
        self.direction.unwrap_or(if self.metric.higher_is_better() {
            Direction::Maximize
        } else {
            Direction::Minimize
        })
    }

    /// Multiplies values so that lower is better.
    pub fn sign(&self) -> f64 {
        match self.direction() {
            Direction::Maximize => -1.0,
            Direction::Minimize => 1.0,
        }
    }

    /// Whether `a` is better than `b`.
    pub fn better(&self, a: f64, b: f64) -> bool {
        self.sign() * a < self.sign() * b
    }

    pub fn metric_name(&self) -> String {
        crate::output::name_of(&self.metric)
    }
}

/// A sweep manifest (`kind: Sweep`): trials of a base experiment with searched values written
/// in. Also the schema of the document as written (`idcctl manifest schema --kind sweep`).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Sweep")]
struct Doc {
    /// Always `idc/v1`.
    #[serde(rename = "apiVersion")]
    #[schemars(extend("const" = API_VERSION))]
    #[allow(dead_code)]
    api_version: String,
    /// Always `Sweep`.
    #[schemars(extend("const" = KIND))]
    #[allow(dead_code)]
    kind: String,
    /// Lowercase letters, digits and '-', starting with a letter; at most 40 characters. Trials
    /// run as `<name>-t001`, `<name>-t002`, …
    #[schemars(length(min = 1, max = experiment::MAX_NAME_LEN), regex(pattern = r"^[a-z]([a-z0-9-]*[a-z0-9])?$"))]
    name: String,
    /// What the sweep searches, in a line.
    #[serde(default)]
    description: Option<String>,
    /// The experiment every trial starts from: its fields (dataset, train, resources, …)
    /// without apiVersion, kind and name, or the path of an experiment manifest (relative to
    /// this file) whose apiVersion, kind and name are dropped.
    #[schemars(with = "BaseSchema")]
    base: serde_yaml::Value,
    /// The searched fields: dotted paths into the experiment (`train.optimizer.lr`), each
    /// with its distribution.
    #[schemars(with = "SearchSchema")]
    search: Space,
    objective: Objective,
    /// Trials to run in all.
    #[schemars(range(min = 1, max = MAX_TRIALS))]
    max_trials: u32,
    /// Trials running at once.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = MAX_PARALLELISM))]
    parallelism: u32,
    /// How trials are proposed (default: TPE).
    #[serde(default)]
    sampler: SamplerSpec,
    /// Which trials are stopped early (default: none).
    #[serde(default)]
    pruner: PrunerSpec,
}

fn one() -> u32 {
    1
}

/// A checked sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct Sweep {
    /// Lowercase letters, digits and '-', at most 40 characters; trials run as
    /// `<name>-t001`, …
    pub name: String,
    pub description: Option<String>,
    /// The experiment fields every trial starts from (no apiVersion, kind or name).
    pub base: serde_yaml::Mapping,
    /// `base` as an experiment: where trials run and store.
    pub base_experiment: Experiment,
    pub space: Space,
    pub objective: Objective,
    pub max_trials: u32,
    /// Trials running at once.
    pub parallelism: u32,
    pub sampler: SamplerSpec,
    pub pruner: PrunerSpec,
}

impl Sweep {
    /// The experiment of a trial: the base with `values` written at their paths, checked like
    /// any experiment manifest. The message names the field at fault.
    pub fn experiment_with(
        &self,
        values: &[(String, serde_json::Value)],
    ) -> Result<Experiment, String> {
        let mut doc = serde_yaml::Mapping::new();
        doc.insert("apiVersion".into(), API_VERSION.into());
        doc.insert("kind".into(), experiment::KIND.into());
        doc.insert("name".into(), self.name.clone().into());
        for (k, v) in &self.base {
            doc.insert(k.clone(), v.clone());
        }
        for (path, v) in values {
            let v = serde_yaml::to_value(v).map_err(|e| format!("{path}: {e}"))?;
            space::set_path(&mut doc, path, v)?;
        }
        let text = serde_yaml::to_string(&doc).expect("YAML serializes");
        let mut exp = experiment::parse(&text, "trial").map_err(|e| match e.hint {
            Some(h) => format!("{} ({h})", e.message),
            None => e.message,
        })?;
        // A trial's MLflow run (when it is tracked at all) is a child of the sweep's.
        exp.tracking
            .get_or_insert_with(Default::default)
            .mlflow
            .get_or_insert_with(Default::default)
            .sweep = Some(self.name.clone());
        Ok(exp)
    }

    /// The experiment of the point `point` (one coordinate per parameter).
    pub fn trial_experiment(&self, point: &[f64]) -> Result<Experiment, String> {
        self.experiment_with(&self.space.values(point))
    }

    /// Whether `other` runs the same trials (only the budget, parallelism or description may
    /// differ): a sweep can be resumed with a larger `max_trials`.
    pub fn same_search(&self, other: &Sweep) -> bool {
        let strip = |s: &Sweep| Sweep {
            description: None,
            max_trials: 0,
            parallelism: 0,
            ..s.clone()
        };
        strip(self) == strip(other)
    }
}

/// Reads and checks the sweep manifest at `path`, a `base: FILE` read beside it: the sweep, and
/// the text to store for it (see [`parse_in`]).
pub fn load(path: &Path) -> Result<(Sweep, String), ManifestError> {
    let (text, file) = experiment::read(path)?;
    parse_in(&text, &file, path.parent().unwrap_or(Path::new("")))
}

/// Parses and checks sweep manifest `text` (`file` names it in errors), a `base: FILE` read
/// relative to `dir`. Returns the sweep and the text to store for it: `text` itself, or the
/// manifest with the base file's fields written in, so that the stored sweep reads without
/// the file (`sweep status`, the driver in the cluster) and a resume after the file has
/// changed is a different search.
pub fn parse_in(text: &str, file: &str, dir: &Path) -> Result<(Sweep, String), ManifestError> {
    let (sweep, resolved) = check(text, file, Some(dir))?;
    Ok((sweep, resolved.unwrap_or_else(|| text.to_string())))
}

/// Parses and checks sweep manifest `text` with its base written in, as stored; `file` names
/// it in errors. A `base: FILE` is refused: there is no directory to read it from.
pub fn parse(text: &str, file: &str) -> Result<Sweep, ManifestError> {
    check(text, file, None).map(|(sweep, _)| sweep)
}

/// Whether `text` is a sweep manifest (its `kind` is `Sweep`), whatever else is in it.
pub fn is_sweep(text: &str) -> bool {
    let text = crate::experiment::without_bom(text);
    experiment::check_depth(text).is_ok()
        && serde_yaml::from_str::<serde_yaml::Value>(text)
            .ok()
            .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(|k| k == KIND))
            .unwrap_or(false)
}

/// The sweep of manifest `text`, and, when its base names a file (read relative to `dir`), the
/// manifest with that base written in.
fn check(
    text: &str,
    file: &str,
    dir: Option<&Path>,
) -> Result<(Sweep, Option<String>), ManifestError> {
    let text = crate::experiment::without_bom(text);
    let err = |at, message: String, hint: Option<String>| ManifestError {
        file: file.to_string(),
        at,
        message,
        hint,
    };
    let locate = |path: &[&str]| experiment::locate(text, path);
    let raw: serde_yaml::Value = experiment::from_yaml(text, file)?;
    check_header(&raw, text, file)?;
    let doc: Doc = experiment::from_yaml(text, file)?;
    if let Some(why) = experiment::bad_name(&doc.name) {
        return Err(err(
            locate(&["name"]),
            format!("name '{}' {why}", doc.name),
            Some("e.g. cnn-lr; trials run as <name>-t001, …".into()),
        ));
    }
    let (base, base_experiment, base_file) = match doc.base {
        serde_yaml::Value::Mapping(base) => {
            for key in SET_BY_SWEEP {
                if base.contains_key(key) {
                    return Err(err(
                        locate(&["base", key]),
                        format!("base.{key} is set by the sweep"),
                        Some(
                            "remove it: every trial is an experiment named after the sweep".into(),
                        ),
                    ));
                }
            }
            let exp = check_base(text, file, &doc.name, &base)?;
            (base, exp, None)
        }
        serde_yaml::Value::String(path) => {
            let (base, exp) = read_base(text, file, &doc.name, &path, dir)?;
            (base, exp, Some(path))
        }
        _ => {
            return Err(err(
                locate(&["base"]),
                "base must be a mapping of experiment fields (dataset, train, resources, …) or the path of an experiment manifest".into(),
                None,
            ));
        }
    };

    check_search(&doc.search, text, file)?;
    check_objective(&doc.objective, text, file)?;
    check_budget(doc.max_trials, doc.parallelism, text, file)?;
    let space = doc.search.clone();
    if let Err(m) = doc.sampler.check(&space) {
        return Err(err(locate(&["sampler"]), m, None));
    }
    if let Err(m) = doc.pruner.check() {
        return Err(err(locate(&["pruner"]), m, None));
    }
    let sweep = Sweep {
        name: doc.name,
        description: doc.description,
        base,
        base_experiment,
        space,
        objective: doc.objective,
        max_trials: doc.max_trials,
        parallelism: doc.parallelism,
        sampler: doc.sampler,
        pruner: doc.pruner,
    };
    // Each searched value must make a valid experiment of the base (combinations are checked
    // as trials are made: an invalid one fails its trial).
    for p in &sweep.space.params {
        for x in p.dist.probes() {
            if let Err(m) = sweep.experiment_with(&[(p.path.clone(), p.dist.to_json(x))]) {
                return Err(err(
                    locate(&["search", &p.path]),
                    format!("search.{} = {}: {m}", p.path, p.dist.to_json(x)),
                    None,
                ));
            }
        }
    }
    check_pruner_reaches(&sweep, text, file)?;
    let resolved = base_file.map(|path| with_base_written_in(raw, &sweep, &path));
    Ok((sweep, resolved))
}

/// The manifest `raw` whose `base: FILE` (`path`) is replaced by that file's fields.
fn with_base_written_in(raw: serde_yaml::Value, sweep: &Sweep, path: &str) -> String {
    let mut doc = match raw {
        serde_yaml::Value::Mapping(m) => m,
        _ => Default::default(),
    };
    doc.insert(
        "base".into(),
        serde_yaml::Value::Mapping(sweep.base.clone()),
    );
    // Only what the manifest says, not where it was read from: the same manifest stores the
    // same text (a resume, the driver Job's spec hash).
    format!(
        "# Sweep {}, its `base: {path}` written in: that experiment manifest's fields but\n# apiVersion, kind and name.\n{}",
        sweep.name,
        serde_yaml::to_string(&doc).expect("YAML serializes")
    )
}

/// Checks `apiVersion` and `kind` (when given) before the rest, so that another kind of
/// manifest is told as such.
fn check_header(raw: &serde_yaml::Value, text: &str, file: &str) -> Result<(), ManifestError> {
    let err = |at, message: String, hint: Option<String>| ManifestError {
        file: file.to_string(),
        at,
        message,
        hint,
    };
    let locate = |path: &[&str]| experiment::locate(text, path);
    let field = |k: &str| raw.get(k).and_then(|v| v.as_str()).map(str::to_string);
    match field("apiVersion") {
        Some(v) if v == API_VERSION => {}
        Some(v) => {
            return Err(err(
                locate(&["apiVersion"]),
                format!("apiVersion is '{v}'"),
                Some(format!("this idcctl reads apiVersion: {API_VERSION}")),
            ));
        }
        None => {}
    }
    match field("kind") {
        Some(k) if k == KIND => {}
        Some(k) => {
            let hint = if k == experiment::KIND {
                "an experiment runs with idcctl submit; a sweep needs kind: Sweep".to_string()
            } else {
                format!("expected kind: {KIND}")
            };
            return Err(err(locate(&["kind"]), format!("kind is '{k}'"), Some(hint)));
        }
        None => {}
    }
    Ok(())
}

/// Refuses a direction against the metric's.
fn check_objective(objective: &Objective, text: &str, file: &str) -> Result<(), ManifestError> {
    let Some(d) = objective.direction else {
        return Ok(());
    };
    let natural = Objective {
        direction: None,
        ..*objective
    }
    .direction();
    if d == natural {
        return Ok(());
    }
    Err(ManifestError {
        file: file.to_string(),
        at: experiment::locate(text, &["objective", "direction"]),
        message: format!(
            "objective: {} is to {}, not to {}",
            objective.metric_name(),
            crate::output::name_of(&natural),
            crate::output::name_of(&d)
        ),
        hint: Some("leave direction out: it follows the metric".into()),
    })
}

/// Checks the searched parameters on their own: paths, overlaps, distributions.
fn check_search(search: &Space, text: &str, file: &str) -> Result<(), ManifestError> {
    let err = |at, message: String, hint: Option<String>| ManifestError {
        file: file.to_string(),
        at,
        message,
        hint,
    };
    let locate = |path: &[&str]| experiment::locate(text, path);
    let params = &search.params;
    if params.is_empty() {
        return Err(err(
            locate(&["search"]),
            "search lists no parameter".into(),
            Some("e.g. train.optimizer.lr: {kind: log_uniform, low: 1e-4, high: 1e-2}".into()),
        ));
    }
    for (i, p) in params.iter().enumerate() {
        let at = locate(&["search", &p.path]);
        if let Some(why) = space::bad_path(&p.path) {
            return Err(err(
                at,
                format!("search: parameter path '{}' {why}", p.path),
                Some("a dotted path into the experiment, e.g. train.optimizer.lr".into()),
            ));
        }
        let top = p.path.split('.').next().unwrap_or("");
        if FIXED.contains(&top) {
            return Err(err(
                at,
                format!("search.{}: {top} cannot vary within a sweep", p.path),
                Some("set it once, in base (or for the sweep itself)".into()),
            ));
        }
        if let Some(q) = params[..i].iter().find(|q| {
            p.path.starts_with(&format!("{}.", q.path))
                || q.path.starts_with(&format!("{}.", p.path))
        }) {
            return Err(err(
                at,
                format!("search.{} overlaps search.{}", p.path, q.path),
                Some("search a field or the fields inside it, not both".into()),
            ));
        }
        if let Err(why) = p.dist.check() {
            return Err(err(at, format!("search.{}: {why}", p.path), None));
        }
    }
    Ok(())
}

/// Checks the budget: `max_trials` in all, `parallelism` at once.
fn check_budget(
    max_trials: u32,
    parallelism: u32,
    text: &str,
    file: &str,
) -> Result<(), ManifestError> {
    let err = |field: &str, message: String, hint: Option<String>| ManifestError {
        file: file.to_string(),
        at: experiment::locate(text, &[field]),
        message,
        hint,
    };
    if max_trials == 0 || max_trials > MAX_TRIALS {
        return Err(err(
            "max_trials",
            format!("max_trials {} is not in 1..={MAX_TRIALS}", max_trials),
            None,
        ));
    }
    if parallelism == 0 {
        return Err(err(
            "parallelism",
            "parallelism must be at least 1".into(),
            None,
        ));
    }
    if parallelism > MAX_PARALLELISM {
        return Err(err(
            "parallelism",
            format!(
                "parallelism {} is more than {MAX_PARALLELISM} trials at once",
                parallelism
            ),
            Some(format!(
                "each running trial holds its GPUs as a Kubernetes Job, or is a worker process on this machine, and the driver reads every one's status at each look; {MAX_PARALLELISM} is the most a sweep runs"
            )),
        ));
    }
    Ok(())
}

/// Refuses a pruner that can stop no trial: one whose first chance (ASHA's first rung, the
/// median pruner's first epoch after warm-up) comes at or after the last epoch of every trial,
/// where the driver lets a trial finish. The trials' epochs are the base's, or the most the
/// search writes.
fn check_pruner_reaches(sweep: &Sweep, text: &str, file: &str) -> Result<(), ManifestError> {
    let (field, value, first) = match sweep.pruner {
        PrunerSpec::None => return Ok(()),
        PrunerSpec::Asha { min_epochs, .. } => ("min_epochs", min_epochs, min_epochs),
        PrunerSpec::Median { warmup_epochs, .. } => (
            "warmup_epochs",
            warmup_epochs,
            warmup_epochs.saturating_add(1),
        ),
    };
    let (epochs, searched) = max_epochs(sweep);
    if first < epochs {
        return Ok(());
    }
    let trials = match searched {
        Some(path) => format!("the search ({path}) runs trials of at most {epochs} epoch(s)"),
        None => format!("the trials run {epochs} epoch(s) (base train.epochs)"),
    };
    let why = match sweep.pruner {
        PrunerSpec::Asha { .. } => format!("ASHA's first rung is epoch {first}"),
        _ => format!("the median pruner looks first at epoch {first}"),
    };
    Err(ManifestError {
        file: file.to_string(),
        at: experiment::locate(text, &["pruner", field])
            .or_else(|| experiment::locate(text, &["pruner"])),
        message: format!(
            "pruner.{field}: {value} never prunes: {why}, and {trials}; a trial at its last epoch is let finish"
        ),
        hint: Some(if epochs < 2 {
            "a trial of one epoch is never stopped early: pruner: {kind: none}".into()
        } else {
            let below = epochs - u32::from(field == "warmup_epochs");
            format!("set pruner.{field} below {below}, or more train.epochs")
        }),
    })
}

/// The most epochs a trial of `sweep` runs, and the searched parameter that sets them, if one
/// does (`train.epochs`, or `train` as a whole).
fn max_epochs(sweep: &Sweep) -> (u32, Option<String>) {
    let base = sweep.base_experiment.train.epochs;
    for p in &sweep.space.params {
        if p.path == "train.epochs" || p.path == "train" {
            // The probes include the largest value; each made a valid experiment (checked above).
            let most = p
                .dist
                .probes()
                .into_iter()
                .filter_map(|x| {
                    let values = [(p.path.clone(), p.dist.to_json(x))];
                    sweep.experiment_with(&values).ok()
                })
                .map(|e| e.train.epochs)
                .max()
                .unwrap_or(base);
            return (most, Some(p.path.clone()));
        }
    }
    (base, None)
}

/// The base named by `base: FILE` (`rel`, relative to `dir`): that experiment manifest's
/// fields but apiVersion, kind and name, and the base as an experiment. Errors in the file are
/// located there; a file that cannot be read or is not an experiment manifest, at `base:`.
fn read_base(
    text: &str,
    file: &str,
    name: &str,
    rel: &str,
    dir: Option<&Path>,
) -> Result<(serde_yaml::Mapping, Experiment), ManifestError> {
    let at_base = |message: String, hint: Option<String>| ManifestError {
        file: file.to_string(),
        at: experiment::locate(text, &["base"]),
        message,
        hint,
    };
    let Some(dir) = dir else {
        return Err(at_base(
            format!("base names the file '{rel}', which is read only for a manifest on disk"),
            Some("write the experiment fields in base, or give the manifest's file".into()),
        ));
    };
    let path = dir.join(rel);
    let efile = path.display().to_string();
    let etext = std::fs::read_to_string(&path).map_err(|e| {
        at_base(
            format!("base: cannot read the experiment manifest {efile}: {e}"),
            Some("base: FILE is relative to the sweep manifest's directory".into()),
        )
    })?;
    let etext = experiment::without_bom(&etext);
    let raw: serde_yaml::Value = experiment::from_yaml(etext, &efile)?;
    let mut base = match raw {
        serde_yaml::Value::Mapping(m) => m,
        _ => Default::default(),
    };
    match base.get("kind").and_then(|k| k.as_str()) {
        Some(experiment::KIND) => {}
        kind => {
            let what = kind.map_or("it has no kind".into(), |k| format!("its kind is '{k}'"));
            return Err(at_base(
                format!("base: {efile} is not an experiment manifest ({what})"),
                Some(format!(
                    "base: FILE names a manifest of kind: {}",
                    experiment::KIND
                )),
            ));
        }
    }
    // Checked as the file it is, so that its errors point into it.
    experiment::parse(etext, &efile)?;
    for key in SET_BY_SWEEP {
        base.remove(key);
    }
    let exp = check_base(text, file, name, &base)?;
    Ok((base, exp))
}

/// Checks the base as an experiment; an error is located in the file where the base is a
/// block mapping (`base:` then indented lines), else at `base:`.
fn check_base(
    text: &str,
    file: &str,
    name: &str,
    base: &serde_yaml::Mapping,
) -> Result<Experiment, ManifestError> {
    let mut doc = serde_yaml::Mapping::new();
    doc.insert("apiVersion".into(), API_VERSION.into());
    doc.insert("kind".into(), experiment::KIND.into());
    doc.insert("name".into(), name.into());
    for (k, v) in base {
        doc.insert(k.clone(), v.clone());
    }
    let e = match experiment::parse(&serde_yaml::to_string(&doc).expect("serializes"), file) {
        Ok(exp) => return Ok(exp),
        Err(e) => e,
    };
    if let Some((base_line, indent, block)) = base_block(text) {
        let header = format!(
            "apiVersion: {API_VERSION}\nkind: {}\nname: {name}\n",
            experiment::KIND
        );
        if let Err(e2) = experiment::parse(&(header + &block), file) {
            return Err(ManifestError {
                file: file.to_string(),
                at: e2.at.map(|(l, c)| {
                    if l <= 3 {
                        (base_line, 1)
                    } else {
                        (base_line + l - 3, c + indent)
                    }
                }),
                message: format!("base: {}", e2.message),
                hint: e2.hint,
            });
        }
    }
    Err(ManifestError {
        file: file.to_string(),
        at: experiment::locate(text, &["base"]),
        message: format!("base: {}", e.message),
        hint: e.hint,
    })
}

/// The `base:` block as written: its 1-based line, the indentation of its fields, and its
/// lines with that indentation removed. `None` for a flow mapping (`base: {…}`).
fn base_block(text: &str) -> Option<(usize, usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let i = lines.iter().position(|l| l.starts_with("base:"))?;
    let rest = lines[i]["base:".len()..].trim();
    if !(rest.is_empty() || rest.starts_with('#')) {
        return None;
    }
    let end = lines[i + 1..]
        .iter()
        .position(|l| !l.is_empty() && !l.starts_with(' ') && !l.trim_start().starts_with('#'))
        .map_or(lines.len(), |p| i + 1 + p);
    let body = &lines[i + 1..end];
    let indent = body
        .iter()
        .filter(|l| {
            let t = l.trim_start();
            !t.is_empty() && !t.starts_with('#')
        })
        .map(|l| l.len() - l.trim_start().len())
        .min()?;
    let block: Vec<&str> = body
        .iter()
        .map(|l| match l.get(..indent) {
            Some(pad) if pad.trim().is_empty() => &l[indent..],
            _ => "",
        })
        .collect();
    Some((i + 1, indent, block.join("\n") + "\n"))
}

/// A dotted parameter path: field names (lowercase letters, digits and '_') joined by '.'.
const PATH_PATTERN: &str = r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*$";

/// The JSON Schema of the sweep manifest, for editors (`idcctl manifest schema --kind sweep`).
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Doc)).expect("a schema serializes")
}

/// The schema of `base`: the experiment manifest's fields but apiVersion, kind and name (its
/// definitions shared), or the path of an experiment manifest.
struct BaseSchema;

impl JsonSchema for BaseSchema {
    fn schema_name() -> Cow<'static, str> {
        "SweepBase".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let mut fields = Experiment::json_schema(generator);
        if let Some(o) = fields.as_object_mut() {
            if let Some(serde_json::Value::Object(p)) = o.get_mut("properties") {
                for key in SET_BY_SWEEP {
                    p.remove(key);
                }
            }
            if let Some(serde_json::Value::Array(r)) = o.get_mut("required") {
                r.retain(|k| !k.as_str().is_some_and(|k| SET_BY_SWEEP.contains(&k)));
            }
            o.insert(
                "description".into(),
                "The experiment's fields, as in an experiment manifest without apiVersion, kind and name.".into(),
            );
        }
        schemars::json_schema!({
            "anyOf": [
                fields,
                {
                    "type": "string",
                    "minLength": 1,
                    "description": "The path of an experiment manifest (kind: Experiment), relative to the sweep manifest's directory or absolute; its apiVersion, kind and name are dropped."
                }
            ]
        })
    }
}

/// The schema of `search`: dotted paths to distributions.
struct SearchSchema;

impl JsonSchema for SearchSchema {
    fn schema_name() -> Cow<'static, str> {
        "SweepSearch".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        schemars::json_schema!({
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"pattern": PATH_PATTERN},
            "additionalProperties": generator.subschema_for::<Distribution>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
apiVersion: idc/v1
kind: Sweep
name: lr-sweep
base:
  dataset: {url: 'file:///tmp/ds'}
  train:
    model: {kind: simple_cnn, width: 8}
    optimizer: {kind: adamw, lr: 0.001}
    epochs: 3
search:
  train.optimizer.lr: {kind: log_uniform, low: 1.0e-4, high: 1.0e-1}
  train.batch_size: {kind: categorical, choices: [32, 64]}
  train.augmentation.color: {kind: uniform, low: 0.0, high: 0.6}
  train.model.width: {kind: int, low: 8, high: 32, step: 8}
  train.sampling: {kind: categorical, choices: [weighted, shuffle]}
objective: {metric: roc_auc}
max_trials: 20
parallelism: 2
sampler: {kind: tpe, seed: 3}
pruner: {kind: asha, min_epochs: 1, reduction_factor: 3}
";

    fn fails(text: &str) -> String {
        parse(text, "s.yaml").unwrap_err().to_string()
    }

    #[test]
    fn parses_and_makes_trial_experiments() {
        let s = parse(GOOD, "s.yaml").unwrap();
        assert_eq!(s.space.params.len(), 5);
        assert_eq!(
            s.space.params[0].path, "train.optimizer.lr",
            "manifest order"
        );
        assert_eq!(s.objective.direction(), Direction::Maximize);
        assert!(s.objective.better(0.9, 0.8));
        let exp = s.trial_experiment(&[0.01, 1.0, 0.5, 16.0, 1.0]).unwrap();
        assert_eq!(exp.name, "lr-sweep");
        assert_eq!(exp.train.optimizer.lr, 0.01);
        assert_eq!(exp.train.optimizer.kind, crate::spec::OptimizerKind::Adamw);
        assert_eq!(exp.train.batch_size, 64);
        assert_eq!(exp.train.augmentation.color, 0.5);
        assert_eq!(exp.train.sampling, crate::spec::Sampling::Shuffle);
        assert_eq!(exp.train.epochs, 3);
        assert!(matches!(
            exp.train.model,
            crate::spec::ModelSpec::SimpleCnn { width: 16, .. }
        ));
        let more = parse(&GOOD.replace("max_trials: 20", "max_trials: 40"), "s.yaml").unwrap();
        assert!(s.same_search(&more));
        let other = parse(&GOOD.replace("seed: 3", "seed: 4"), "s.yaml").unwrap();
        assert!(!s.same_search(&other));
        assert!(is_sweep(GOOD) && !is_sweep("kind: Experiment\n"));
    }

    #[test]
    fn errors_are_located_and_name_the_field() {
        let e = fails(&GOOD.replace("    epochs: 3", "    epochz: 3"));
        assert!(
            e.starts_with("s.yaml:9:5: base: train: unknown field `epochz`")
                && e.contains("did you mean `epochs`?"),
            "{e}"
        );
        let e = fails(&GOOD.replace("train.optimizer.lr:", "train.optimizer.lrr:"));
        assert!(
            e.starts_with("s.yaml:11:3: search.train.optimizer.lrr = 0.0001: train.optimizer: unknown field `lrr`"),
            "{e}"
        );
        let e = fails(&GOOD.replace("choices: [32, 64]", "choices: [0, 64]"));
        assert!(
            e.starts_with("s.yaml:12:3: search.train.batch_size = 0: train.batch_size"),
            "{e}"
        );
        let e = fails(&GOOD.replace("high: 0.6}", "high: 1.5}"));
        assert!(
            e.contains("search.train.augmentation.color = 1.5: train.augmentation.color: 1.5 is not a probability"),
            "{e}"
        );
        let e = fails(&GOOD.replace("low: 1.0e-4", "low: 0.0"));
        assert!(
            e.contains("s.yaml:11:3: search.train.optimizer.lr: log_uniform needs low > 0"),
            "{e}"
        );
        let e = fails(&GOOD.replace("kind: log_uniform", "kind: loguniform"));
        assert!(e.contains("did you mean `log_uniform`?"), "{e}");
        let e = fails(&GOOD.replace("max_trials: 20", "max_trails: 20"));
        assert!(e.contains("did you mean `max_trials`?"), "{e}");
        let e = fails(&GOOD.replace("{metric: roc_auc}", "{metric: loss, direction: maximize}"));
        assert!(
            e.contains("objective: loss is to minimize, not to maximize"),
            "{e}"
        );
        let e = fails(&GOOD.replace("  train.sampling:", "  storage:"));
        assert!(e.contains("search.storage: storage cannot vary"), "{e}");
        let e = fails(&GOOD.replace("  train.sampling:", "  train.model:"));
        assert!(
            e.contains("search.train.model overlaps search.train.model.width"),
            "{e}"
        );
        let e = fails(&GOOD.replace("kind: Sweep", "kind: Experiment"));
        assert!(
            e.contains("s.yaml:2:1: kind is 'Experiment'") && e.contains("idcctl submit"),
            "{e}"
        );
        let e = fails(&GOOD.replace("reduction_factor: 3", "reduction_factor: 1"));
        assert!(
            e.contains("pruner.reduction_factor: must be at least 2"),
            "{e}"
        );
        let e = fails(&GOOD.replace("base:\n", "base:\n  name: x\n"));
        assert!(
            e.contains("s.yaml:5:3: base.name is set by the sweep"),
            "{e}"
        );
        let e = fails(&GOOD.replace("dataset: {url: 'file:///tmp/ds'}", "resources: {}"));
        assert!(e.contains("base: missing field `dataset`"), "{e}");
    }

    #[test]
    fn a_pruner_that_cannot_stop_a_trial_is_refused() {
        let asha = |min: &str, extra: &str| {
            GOOD.replace("min_epochs: 1,", &format!("min_epochs: {min},"))
                .replace("search:\n", &format!("search:\n{extra}"))
        };
        let e = fails(&asha("50", ""));
        assert_eq!(
            e,
            "s.yaml:20:22: pruner.min_epochs: 50 never prunes: ASHA's first rung is epoch 50, and the trials run 3 epoch(s) (base train.epochs); a trial at its last epoch is let finish (set pruner.min_epochs below 3, or more train.epochs)"
        );
        // The last epoch is no rung either: the trial ends there anyway.
        assert!(
            fails(&asha("3", "")).starts_with("s.yaml:20:22: pruner.min_epochs: 3 never prunes")
        );
        assert!(parse(&asha("2", ""), "s.yaml").is_ok());
        // Epochs the search varies count at their most.
        let searched = "  train.epochs: {kind: int, low: 2, high: 6, step: 2}\n";
        assert!(parse(&asha("5", searched), "s.yaml").is_ok());
        let e = fails(&asha("6", searched));
        assert!(
            e.starts_with("s.yaml:21:22: pruner.min_epochs: 6 never prunes: ASHA's first rung is epoch 6, and the search (train.epochs) runs trials of at most 6 epoch(s)"),
            "{e}"
        );
        let choices = "  train.epochs: {kind: categorical, choices: [1, 8]}\n";
        assert!(parse(&asha("7", choices), "s.yaml").is_ok());
        // The median pruner looks first after its warm-up.
        let median = |warmup: u32| {
            GOOD.replace(
                "{kind: asha, min_epochs: 1, reduction_factor: 3}",
                &format!("{{kind: median, warmup_epochs: {warmup}}}"),
            )
        };
        assert!(parse(&median(1), "s.yaml").is_ok());
        let e = fails(&median(2));
        assert!(
            e.starts_with("s.yaml:20:24: pruner.warmup_epochs: 2 never prunes: the median pruner looks first at epoch 3")
                && e.ends_with("(set pruner.warmup_epochs below 2, or more train.epochs)"),
            "{e}"
        );
        // One epoch: nothing to stop, whatever the settings (min_epochs defaulted: at pruner).
        let e = fails(
            &GOOD
                .replace("epochs: 3", "epochs: 1")
                .replace("min_epochs: 1, ", ""),
        );
        assert!(
            e.starts_with("s.yaml:20:1: pruner.min_epochs: 1 never prunes")
                && e.ends_with(
                    "(a trial of one epoch is never stopped early: pruner: {kind: none})"
                ),
            "{e}"
        );
    }

    #[test]
    fn parallelism_is_bounded_and_sampler_errors_are_located() {
        let e = fails(&GOOD.replace("parallelism: 2", "parallelism: 100000"));
        assert!(
            e.starts_with(&format!(
                "s.yaml:18:1: parallelism 100000 is more than {MAX_PARALLELISM} trials at once (each running trial holds its GPUs"
            )),
            "{e}"
        );
        assert!(
            parse(
                &GOOD.replace("parallelism: 2", "parallelism: 256"),
                "s.yaml"
            )
            .is_ok()
        );
        // Fields of the tagged sampler and pruner: at their line, named.
        let e = fails(&GOOD.replace("seed: 3", "seed: -3"));
        assert_eq!(
            e,
            "s.yaml:19:22: sampler.seed: invalid value: integer `-3`, expected u64"
        );
        let e = fails(&GOOD.replace("reduction_factor: 3", "reduction_fator: 3"));
        assert!(
            e.starts_with("s.yaml:20:37: pruner.reduction_fator: unknown field `reduction_fator`")
                && e.ends_with("(did you mean `reduction_factor`?)"),
            "{e}"
        );
        let block = GOOD.replace(
            "sampler: {kind: tpe, seed: 3}",
            "sampler:\n  kind: random\n  seed: -3",
        );
        assert!(fails(&block).starts_with("s.yaml:21:3: sampler.seed: invalid value"));
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let deep = GOOD.replace(
            "objective: {metric: roc_auc}",
            &format!(
                "objective: {{metric: roc_auc, x: {}1{}}}",
                "[".repeat(20000),
                "]".repeat(20000)
            ),
        );
        let started = std::time::Instant::now();
        let e = fails(&deep);
        assert!(
            started.elapsed() < std::time::Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        assert!(
            e.starts_with("s.yaml:16:95: mappings and sequences nest deeper than 64 levels here"),
            "{e}"
        );
        assert!(!is_sweep(&deep));
    }

    /// GOOD's base as an experiment manifest of its own.
    fn experiment_file() -> String {
        let block = GOOD
            .split("base:\n")
            .nth(1)
            .unwrap()
            .split("search:")
            .next()
            .unwrap();
        let fields: String = block.lines().map(|l| format!("{}\n", &l[2..])).collect();
        format!("apiVersion: idc/v1\nkind: Experiment\nname: cnn\n{fields}")
    }

    /// GOOD with `base: FILE` instead of the inline base.
    fn with_base_file(file: &str) -> String {
        let (head, rest) = GOOD.split_once("base:\n").unwrap();
        let tail = rest.split_once("search:").unwrap().1;
        format!("{head}base: {file}\nsearch:{tail}")
    }

    #[test]
    fn base_may_name_an_experiment_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("exp.yaml"), experiment_file()).unwrap();
        let sweep_file = dir.path().join("s.yaml");
        std::fs::write(&sweep_file, with_base_file("exp.yaml")).unwrap();
        let (s, stored) = load(&sweep_file).unwrap();
        assert_eq!(
            s,
            parse(GOOD, "s.yaml").unwrap(),
            "the same sweep as inline"
        );
        // What is stored reads on its own, as the same sweep, and says where the base was.
        assert!(stored.starts_with("# Sweep lr-sweep, its `base: exp.yaml` written in"));
        assert_eq!(parse(&stored, "sweep.yaml").unwrap(), s);
        assert_eq!(load(&sweep_file).unwrap().1, stored, "deterministic");
        // An absolute path too; an inline base is stored as written.
        let abs = with_base_file(&dir.path().join("exp.yaml").display().to_string());
        assert_eq!(parse_in(&abs, "s.yaml", Path::new("/")).unwrap().0, s);
        assert_eq!(parse_in(GOOD, "s.yaml", dir.path()).unwrap().1, GOOD);
        // Editing the experiment makes another search: a resume refuses it.
        std::fs::write(
            dir.path().join("exp.yaml"),
            experiment_file().replace("epochs: 3", "epochs: 4"),
        )
        .unwrap();
        let (edited, _) = load(&sweep_file).unwrap();
        assert!(!edited.same_search(&s));

        // Text alone has no directory to read the file from.
        let e = fails(&with_base_file("exp.yaml"));
        assert!(
            e.starts_with("s.yaml:4:1: base names the file 'exp.yaml'"),
            "{e}"
        );
    }

    #[test]
    fn base_file_errors_are_located_in_the_file_at_fault() {
        let dir = tempfile::tempdir().unwrap();
        let exp = dir.path().join("exp.yaml");
        let sweep_file = dir.path().join("s.yaml");
        std::fs::write(&sweep_file, with_base_file("exp.yaml")).unwrap();
        let fails = || load(&sweep_file).unwrap_err().to_string();

        std::fs::write(
            &exp,
            experiment_file().replace("  epochs: 3", "  epochz: 3"),
        )
        .unwrap();
        let e = fails();
        assert!(
            e.starts_with(&format!(
                "{}:8:3: train: unknown field `epochz`",
                exp.display()
            )) && e.contains("did you mean `epochs`?"),
            "{e}"
        );
        std::fs::write(&exp, experiment_file().replace("name: cnn", "name: CNN")).unwrap();
        assert!(fails().starts_with(&format!("{}:3:1: name 'CNN'", exp.display())));

        std::fs::write(
            &exp,
            experiment_file().replace("kind: Experiment", "kind: Sweep"),
        )
        .unwrap();
        let e = fails();
        assert!(
            e.starts_with(&format!(
                "{}:4:1: base: {} is not an experiment manifest (its kind is 'Sweep')",
                sweep_file.display(),
                exp.display()
            )),
            "{e}"
        );

        std::fs::remove_file(&exp).unwrap();
        let e = fails();
        assert!(
            e.starts_with(&format!(
                "{}:4:1: base: cannot read the experiment manifest {}: ",
                sweep_file.display(),
                exp.display()
            )),
            "{e}"
        );
        // A searched value is still checked against the base, located in the sweep.
        std::fs::write(&exp, experiment_file()).unwrap();
        std::fs::write(
            &sweep_file,
            with_base_file("exp.yaml").replace("choices: [32, 64]", "choices: [0, 64]"),
        )
        .unwrap();
        assert!(fails().contains("s.yaml:7:3: search.train.batch_size = 0"));

        let e = super::parse(&with_base_file("3"), "s.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("s.yaml:4:1: base must be a mapping of experiment fields"),
            "{e}"
        );
    }

    #[test]
    fn schema_names_the_fields() {
        let schema = json_schema();
        let s = schema.to_string();
        for field in [
            "apiVersion",
            "search",
            "log_uniform",
            "categorical",
            "choices",
            "n_startup_trials",
            "grid_points",
            "asha",
            "reduction_factor",
            "roc_auc",
            "maximize",
            "max_trials",
            "parallelism",
            "batch_size",
        ] {
            assert!(s.contains(field), "schema lacks {field}");
        }
        assert_eq!(schema["title"], "Sweep");
        let p = &schema["properties"];
        assert_eq!(p["kind"]["const"], "Sweep");
        assert_eq!(p["max_trials"]["maximum"], MAX_TRIALS);
        let base = p["base"]["anyOf"].as_array().unwrap();
        assert!(base[0]["properties"]["dataset"].is_object());
        assert!(base[0]["properties"].get("name").is_none());
        assert_eq!(base[0]["required"], serde_json::json!(["dataset"]));
        assert_eq!(base[1]["type"], "string");
        let mut kinds: Vec<String> =
            defined(&schema, &p["search"]["additionalProperties"])["oneOf"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| {
                    v["properties"]["kind"]["const"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect();
        kinds.sort();
        assert_eq!(kinds, ["categorical", "int", "log_uniform", "uniform"]);
    }

    #[test]
    fn shipped_sweep_manifests_match_the_schema() {
        let schema = json_schema();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
        let mut checked = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            if !is_sweep(&text) {
                continue;
            }
            let doc: serde_json::Value = serde_yaml::from_str(&text).unwrap();
            if let Err(e) = conforms(&schema, &schema, &doc, "") {
                panic!("{}: {e}", path.display());
            }
            checked += 1;
        }
        assert!(checked >= 3, "{checked} sweep manifests");
        let good: serde_json::Value = serde_yaml::from_str(GOOD).unwrap();
        conforms(&schema, &schema, &good, "").unwrap();
        let file: serde_json::Value = serde_yaml::from_str(&with_base_file("cnn.yaml")).unwrap();
        conforms(&schema, &schema, &file, "").unwrap();
        // The mistakes parse refuses, the schema refuses too (what an editor can flag).
        for (from, to, at) in [
            (
                "kind: log_uniform",
                "kind: loguniform",
                "/search/train.optimizer.lr",
            ),
            ("max_trials: 20", "max_trials: 0", "/max_trials"),
            ("max_trials: 20", "max_trails: 20", ""),
            ("objective: {metric: roc_auc}", "", ""),
            ("{metric: roc_auc}", "{metric: auc}", "/objective/metric"),
            ("kind: tpe", "kind: tpe2", "/sampler"),
            ("reduction_factor: 3", "reduction: 3", "/pruner"),
            ("    epochs: 3", "    epochz: 3", "/base"),
            ("kind: Sweep", "kind: Experiment", "/kind"),
        ] {
            let text = GOOD.replace(from, to);
            let doc: serde_json::Value = serde_yaml::from_str(&text).unwrap();
            let e = conforms(&schema, &schema, &doc, "").expect_err(to);
            assert!(e.starts_with(&format!("{at}:")), "{to}: {e}");
        }
    }

    /// `schema`, or what its `$ref` names in `root`.
    fn defined<'a>(
        root: &'a serde_json::Value,
        schema: &'a serde_json::Value,
    ) -> &'a serde_json::Value {
        match schema["$ref"].as_str() {
            Some(r) => root
                .pointer(r.trim_start_matches('#'))
                .expect("a defined $ref"),
            None => schema,
        }
    }

    /// Whether `v` (at JSON pointer `at`) is valid against `schema`, `$ref`s resolved in `root`:
    /// the keywords these schemas use (others pass). The error names where `v` fails.
    fn conforms(
        root: &serde_json::Value,
        schema: &serde_json::Value,
        v: &serde_json::Value,
        at: &str,
    ) -> Result<(), String> {
        use serde_json::Value;
        let schema = defined(root, schema);
        let Some(s) = schema.as_object() else {
            return match schema {
                Value::Bool(false) => Err(format!("{at}: not allowed")),
                _ => Ok(()),
            };
        };
        value_keywords(s, v, at)?;
        combined(root, s, v, at)?;
        if let Some(o) = v.as_object() {
            object_keywords(root, s, o, at)?;
        }
        if let (Some(a), Some(items)) = (v.as_array(), s.get("items")) {
            for (i, x) in a.iter().enumerate() {
                conforms(root, items, x, &format!("{at}/{i}"))?;
            }
        }
        Ok(())
    }

    type Schema = serde_json::Map<String, serde_json::Value>;

    /// The items of the array keyword `key` of `s`: none when it has none.
    fn array<'s>(s: &'s Schema, key: &str) -> impl Iterator<Item = &'s serde_json::Value> {
        s.get(key)
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
    }

    /// The keywords on `v` itself: type, const, enum, minimum and maximum.
    fn value_keywords(s: &Schema, v: &serde_json::Value, at: &str) -> Result<(), String> {
        use serde_json::Value;
        if let Some(t) = s.get("type") {
            let is = |t: &Value| match t.as_str().unwrap_or("") {
                "object" => v.is_object(),
                "array" => v.is_array(),
                "string" => v.is_string(),
                "boolean" => v.is_boolean(),
                "null" => v.is_null(),
                "number" => v.is_number(),
                "integer" => v.as_f64().is_some_and(|x| x.fract() == 0.0),
                _ => true,
            };
            let ok = match t {
                Value::Array(ts) => ts.iter().any(is),
                t => is(t),
            };
            if !ok {
                return Err(format!("{at}: {v} is not of type {t}"));
            }
        }
        if let Some(c) = s.get("const")
            && c != v
        {
            return Err(format!("{at}: {v} is not {c}"));
        }
        if let Some(Value::Array(e)) = s.get("enum")
            && !e.contains(v)
        {
            return Err(format!("{at}: {v} is not one of {e:?}"));
        }
        if let Some(x) = v.as_f64() {
            if s.get("minimum")
                .and_then(Value::as_f64)
                .is_some_and(|m| x < m)
            {
                return Err(format!("{at}: {x} is below the minimum"));
            }
            if s.get("maximum")
                .and_then(Value::as_f64)
                .is_some_and(|m| x > m)
            {
                return Err(format!("{at}: {x} is above the maximum"));
            }
        }
        Ok(())
    }

    /// allOf, anyOf and oneOf.
    fn combined(
        root: &serde_json::Value,
        s: &Schema,
        v: &serde_json::Value,
        at: &str,
    ) -> Result<(), String> {
        use serde_json::Value;
        for sub in array(s, "allOf") {
            conforms(root, sub, v, at)?;
        }
        for (keyword, exactly_one) in [("anyOf", false), ("oneOf", true)] {
            let Some(Value::Array(subs)) = s.get(keyword) else {
                continue;
            };
            let results: Vec<_> = subs.iter().map(|sub| conforms(root, sub, v, at)).collect();
            let passed = results.iter().filter(|r| r.is_ok()).count();
            if passed == 0 || (exactly_one && passed > 1) {
                let why: Vec<String> = results.into_iter().filter_map(Result::err).collect();
                return Err(format!(
                    "{at}: matches {passed} of {keyword} ({})",
                    why.join("; ")
                ));
            }
        }
        Ok(())
    }

    /// The keywords on an object `o`: required, minProperties, properties and
    /// additionalProperties.
    fn object_keywords(
        root: &serde_json::Value,
        s: &Schema,
        o: &Schema,
        at: &str,
    ) -> Result<(), String> {
        use serde_json::Value;
        for key in array(s, "required") {
            if !o.contains_key(key.as_str().unwrap_or("")) {
                return Err(format!("{at}: {key} is required"));
            }
        }
        if let Some(n) = s.get("minProperties").and_then(Value::as_u64)
            && (o.len() as u64) < n
        {
            return Err(format!("{at}: fewer than {n} properties"));
        }
        let props = s.get("properties").and_then(Value::as_object);
        for (key, value) in o {
            let here = format!("{at}/{key}");
            match props.and_then(|p| p.get(key)) {
                Some(sub) => conforms(root, sub, value, &here)?,
                None => match s.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        return Err(format!("{at}: unknown property {key}"));
                    }
                    Some(sub) => conforms(root, sub, value, &here)?,
                    None => {}
                },
            }
        }
        Ok(())
    }
}
