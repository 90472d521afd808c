//! The sweep manifest (`apiVersion: idc/v1`, `kind: Sweep`): a `base` experiment written
//! inline, a `search` space over its fields by dotted path, the `objective`, the budget
//! (`max_trials`, `parallelism`), the `sampler` and the `pruner`. Parsing is as strict as the
//! experiment manifest's, with errors located in the file; the base and every searched value
//! are checked by building the experiments they make.

use super::pruner::PrunerSpec;
use super::sampler::SamplerSpec;
use super::space::{self, Space};
use crate::experiment::{self, API_VERSION, Experiment, ManifestError};
use crate::metrics::MetricName;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const KIND: &str = "Sweep";
/// Most trials a sweep may run (trial ids stay `t0001`…`t9999`).
pub const MAX_TRIALS: u32 = 9999;
/// Experiment fields a search may not vary: set by the sweep, or shared by all its trials.
const FIXED: [&str; 5] = ["apiVersion", "kind", "name", "storage", "backend"];

/// Whether larger or smaller objective values are better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Maximize,
    Minimize,
}

/// What the sweep optimizes: a validation metric, its best over a trial's epochs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Objective {
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

/// The document as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    #[serde(rename = "apiVersion")]
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    name: String,
    #[serde(default)]
    description: Option<String>,
    base: serde_yaml::Value,
    search: Space,
    objective: Objective,
    max_trials: u32,
    #[serde(default = "one")]
    parallelism: u32,
    #[serde(default)]
    sampler: SamplerSpec,
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

/// Reads and checks the sweep manifest at `path`.
pub fn load(path: &Path) -> Result<(Sweep, String), ManifestError> {
    let (text, file) = crate::experiment::read(path)?;
    let sweep = parse(&text, &file)?;
    Ok((sweep, text))
}

/// Whether `text` is a sweep manifest (its `kind` is `Sweep`), whatever else is in it.
pub fn is_sweep(text: &str) -> bool {
    serde_yaml::from_str::<serde_yaml::Value>(crate::experiment::without_bom(text))
        .ok()
        .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(|k| k == KIND))
        .unwrap_or(false)
}

/// Parses and checks sweep manifest `text`; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Sweep, ManifestError> {
    let text = crate::experiment::without_bom(text);
    let err = |at, message: String, hint: Option<String>| ManifestError {
        file: file.to_string(),
        at,
        message,
        hint,
    };
    let locate = |path: &[&str]| experiment::locate(text, path);
    let raw: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| experiment::yaml_error(file, e))?;
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
    let doc: Doc = serde_yaml::from_str(text).map_err(|e| experiment::yaml_error(file, e))?;
    if let Some(why) = experiment::bad_name(&doc.name) {
        return Err(err(
            locate(&["name"]),
            format!("name '{}' {why}", doc.name),
            Some("e.g. cnn-lr; trials run as <name>-t001, …".into()),
        ));
    }
    let serde_yaml::Value::Mapping(base) = doc.base else {
        return Err(err(
            locate(&["base"]),
            "base must be a mapping of experiment fields (dataset, train, resources, …)".into(),
            None,
        ));
    };
    for key in ["apiVersion", "kind", "name"] {
        if base.contains_key(key) {
            return Err(err(
                locate(&["base", key]),
                format!("base.{key} is set by the sweep"),
                Some("remove it: every trial is an experiment named after the sweep".into()),
            ));
        }
    }
    let base_experiment = check_base(text, file, &doc.name, &base)?;

    let params = &doc.search.params;
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
    if let Some(d) = doc.objective.direction {
        let natural = Objective {
            direction: None,
            ..doc.objective
        }
        .direction();
        if d != natural {
            return Err(err(
                locate(&["objective", "direction"]),
                format!(
                    "objective: {} is to {}, not to {}",
                    doc.objective.metric_name(),
                    crate::output::name_of(&natural),
                    crate::output::name_of(&d)
                ),
                Some("leave direction out: it follows the metric".into()),
            ));
        }
    }
    if doc.max_trials == 0 || doc.max_trials > MAX_TRIALS {
        return Err(err(
            locate(&["max_trials"]),
            format!("max_trials {} is not in 1..={MAX_TRIALS}", doc.max_trials),
            None,
        ));
    }
    if doc.parallelism == 0 {
        return Err(err(
            locate(&["parallelism"]),
            "parallelism must be at least 1".into(),
            None,
        ));
    }
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
    Ok(sweep)
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
}
