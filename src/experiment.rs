//! The experiment manifest (`apiVersion: idc/v1`, `kind: Experiment`): what a user writes and
//! `idcctl` runs. Parsing is strict, and every error names the file, line and column, with a hint
//! where one helps. Training options are the shared [`TrainSpec`]; their defaults live there.

use crate::clock::parse_duration;
use crate::dataset::manifest::Undersized;
use crate::dataset::split::SplitOptions;
use crate::kube_syntax::is_quantity;
use crate::spec::TrainSpec;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

pub const API_VERSION: &str = "idc/v1";
pub const KIND: &str = "Experiment";
/// Longest experiment name: run ids add a 22-character suffix and must stay within 63.
pub const MAX_NAME_LEN: usize = 40;

/// An experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Always `idc/v1`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// Always `Experiment`.
    pub kind: String,
    /// Lowercase letters, digits and '-', starting with a letter; at most 40 characters.
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub dataset: DatasetRef,
    /// Model, sampling, augmentation, loss, optimizer, schedule, epochs and the rest.
    #[serde(default)]
    pub train: TrainSpec,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub backend: Backend,
    /// The bucket runs (and staged datasets) live in: `file://…` or `s3://bucket/prefix`.
    #[serde(default = "default_storage")]
    pub storage: String,
    /// Times a failed attempt is retried.
    #[serde(default)]
    pub retries: u32,
    /// Longest a run may take, e.g. `90m`, `6h`, `1h30m`.
    #[serde(default)]
    pub deadline: Option<String>,
    /// Experiment trackers that mirror the run (the bucket stays its record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking: Option<Tracking>,
}

/// Trackers a run is mirrored to.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tracking {
    /// An MLflow tracking server: `{uri, experiment}` (uri default: `MLFLOW_TRACKING_URI`;
    /// experiment default: this manifest's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlflow: Option<crate::spec::MlflowSpec>,
}

/// The laptop default bucket, `file://./.idc/bucket`.
pub fn default_storage() -> String {
    "file://./.idc/bucket".into()
}

/// The data: a staged dataset URL, or a source to stage first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetRef {
    /// A dataset already staged by `idcctl stage`.
    #[serde(default)]
    pub url: Option<String>,
    /// A download to stage (folder or zip), under `<storage>/datasets/<name>`.
    #[serde(default)]
    pub source: Option<String>,
    /// What the source is (with `source`): `idc` (default), `cifar10` or `idx`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<crate::stage::Format>,
    /// Class names replacing the archive's, index = label (with an archive `source`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_names: Option<Vec<String>>,
    /// Name of the staged dataset (with `source`; default `idc`).
    #[serde(default)]
    pub name: Option<String>,
    /// Split options (with `source`; for archives only `val` and `seed` apply).
    #[serde(default)]
    pub split: Option<SplitOptions>,
    /// Edge patches smaller than 50x50 (with `source`).
    #[serde(default)]
    pub undersized: Option<Undersized>,
}

impl DatasetRef {
    /// The dataset already staged at `url` (what `idcctl submit --dataset` trains on).
    pub fn staged(url: String) -> Self {
        Self {
            url: Some(url),
            source: None,
            format: None,
            class_names: None,
            name: None,
            split: None,
            undersized: None,
        }
    }
}

/// Where and how the run executes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The worker as a child process on this machine.
    #[default]
    Local,
    /// The worker as a Kubernetes GPU Job.
    Kubernetes,
}

impl crate::choice::Choice for Backend {
    const ALL: &'static [Self] = &[Backend::Local, Backend::Kubernetes];
    fn name(self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::Kubernetes => "kubernetes",
        }
    }
}
crate::choice_names!(Backend);

/// What a run asks of the cluster (Kubernetes backend).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Resources {
    /// `nvidia.com/gpu` limit.
    pub gpus: u32,
    /// CPU request, a Kubernetes quantity (`4`, `500m`).
    pub cpu: Option<String>,
    /// Memory request, a Kubernetes quantity (`16Gi`).
    pub memory: Option<String>,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
    /// Worker image (default: the chart's).
    pub image: Option<String>,
    pub priority_class: Option<String>,
    /// Kueue LocalQueue in the run's namespace that admits the Job (its
    /// `kueue.x-k8s.io/queue-name` label). Default: the namespace's (`idc-defaults`); `""`
    /// submits without a queue even when the namespace names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Kueue WorkloadPriorityClass of the Job (its `kueue.x-k8s.io/priority-class` label):
    /// the order of admission and preemption within the queue's ClusterQueue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload_priority: Option<String>,
}

/// A Kubernetes toleration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Toleration {
    pub key: String,
    #[serde(default = "default_operator")]
    pub operator: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub effect: Option<String>,
}

fn default_operator() -> String {
    "Exists".into()
}

/// A manifest that cannot be used, located in its file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    pub file: String,
    /// 1-based line and column, when known.
    pub at: Option<(usize, usize)>,
    pub message: String,
    pub hint: Option<String>,
}

impl crate::exit::ProcessExitCode for ManifestError {
    /// A manifest is the user's to fix.
    fn process_exit_code(&self) -> crate::exit::ExitCode {
        crate::exit::ExitCode::UserError
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((l, c)) => write!(f, "{}:{l}:{c}: {}", self.file, self.message)?,
            None => write!(f, "{}: {}", self.file, self.message)?,
        }
        if let Some(h) = &self.hint {
            write!(f, " ({h})")?;
        }
        Ok(())
    }
}

/// Reads and checks the manifest at `path`.
pub fn load(path: &Path) -> Result<Experiment, ManifestError> {
    let (text, file) = read(path)?;
    parse(&text, &file)
}

/// The text of the manifest file at `path`, and its name for errors.
pub fn read(path: &Path) -> Result<(String, String), ManifestError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ManifestError {
        file: file.clone(),
        at: None,
        message: format!("cannot read: {e}"),
        hint: None,
    })?;
    Ok((text, file))
}

/// `text` without the UTF-8 byte-order mark some Windows editors write first.
pub fn without_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// Parses and checks manifest `text`; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Experiment, ManifestError> {
    let text = without_bom(text);
    let exp: Experiment = from_yaml(text, file)?;
    let c = Checks { text, file };
    c.identity(&exp)?;
    c.dataset(&exp.dataset)?;
    c.stores(&exp)?;
    if let Err(message) = exp.train.validate() {
        let field = message.split(':').next().unwrap_or("train");
        let path: Vec<&str> = field.split('.').collect();
        return Err(c.err(c.locate(&path), message.clone(), None));
    }
    c.quantities(&exp.resources)?;
    c.node_selector(&exp.resources)?;
    c.kueue_names(&exp.resources)?;
    c.tolerations(&exp.resources)?;
    if exp.backend == Backend::Kubernetes && exp.storage.starts_with("file://") {
        return Err(c.err(
            c.locate(&["storage"]),
            "a kubernetes run needs shared storage, not a local folder".into(),
            Some("use storage: s3://bucket/prefix".into()),
        ));
    }
    if let Some(d) = &exp.deadline
        && parse_duration(d).is_none()
    {
        return Err(c.err(
            c.locate(&["deadline"]),
            format!("deadline '{d}' is not a duration"),
            Some("e.g. 90m, 6h or 1h30m".into()),
        ));
    }
    Ok(exp)
}

/// The checks of one manifest's fields, each error located in its `text` and named by `file`.
struct Checks<'a> {
    text: &'a str,
    file: &'a str,
}

impl Checks<'_> {
    fn err(
        &self,
        at: Option<(usize, usize)>,
        message: String,
        hint: Option<String>,
    ) -> ManifestError {
        ManifestError {
            file: self.file.to_string(),
            at,
            message,
            hint,
        }
    }

    fn locate(&self, path: &[&str]) -> Option<(usize, usize)> {
        locate(self.text, path)
    }

    /// The manifest's apiVersion, kind and name.
    fn identity(&self, exp: &Experiment) -> Result<(), ManifestError> {
        if exp.api_version != API_VERSION {
            return Err(self.err(
                self.locate(&["apiVersion"]),
                format!("apiVersion is '{}'", exp.api_version),
                Some(format!("this idcctl reads apiVersion: {API_VERSION}")),
            ));
        }
        if exp.kind != KIND {
            return Err(self.err(
                self.locate(&["kind"]),
                format!("kind is '{}'", exp.kind),
                Some(format!("expected kind: {KIND}")),
            ));
        }
        if let Some(why) = bad_name(&exp.name) {
            return Err(self.err(
                self.locate(&["name"]),
                format!("name '{}' {why}", exp.name),
                Some("e.g. cnn-weighted".into()),
            ));
        }
        Ok(())
    }

    /// A staged dataset or one to stage, with only the options that apply to it.
    fn dataset(&self, d: &DatasetRef) -> Result<(), ManifestError> {
        match (&d.url, &d.source) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(self.err(
                    self.locate(&["dataset"]),
                    "dataset needs exactly one of url (a staged dataset) or source (a download to stage)".into(),
                    None,
                ));
            }
            (Some(_), None) if d.split.is_some() || d.undersized.is_some() || d.name.is_some() => {
                return Err(self.err(
                    self.locate(&["dataset", "url"]),
                    "dataset.split, dataset.undersized and dataset.name apply only with dataset.source"
                        .into(),
                    Some("a staged dataset keeps the options it was staged with".into()),
                ));
            }
            (Some(_), None) if d.format.is_some() || d.class_names.is_some() => {
                return Err(self.err(
                    self.locate(&["dataset", "url"]),
                    "dataset.format and dataset.class_names apply only with dataset.source".into(),
                    Some(
                        "a staged dataset keeps the format and class names it was staged with"
                            .into(),
                    ),
                ));
            }
            _ => {}
        }
        let format = d.format.unwrap_or_default();
        if format.archive().is_some() {
            let defaults = SplitOptions::default();
            let fixed = d
                .split
                .as_ref()
                .is_some_and(|s| s.method != defaults.method || s.test != defaults.test);
            if fixed || d.undersized.is_some() {
                let name = crate::output::name_of(&format);
                return Err(self.err(
                    self.locate(&["dataset", if fixed { "split" } else { "undersized" }]),
                    format!(
                        "dataset.split.method, dataset.split.test and dataset.undersized do not apply to format {name}: its official test set is kept"
                    ),
                    Some("give dataset.split.val (a count or a fraction of the training images) and seed".into()),
                ));
            }
        } else if d.class_names.is_some() {
            return Err(self.err(
                self.locate(&["dataset", "class_names"]),
                "dataset.class_names applies to archives (format cifar10 or idx); the IDC classes are fixed".into(),
                None,
            ));
        }
        if let Some(name) = &d.name
            && let Some(why) = bad_name(name)
        {
            return Err(self.err(
                self.locate(&["dataset", "name"]),
                format!("dataset.name '{name}' {why}"),
                None,
            ));
        }
        Ok(())
    }

    /// The storage and the staged dataset's URL open as stores.
    fn stores(&self, exp: &Experiment) -> Result<(), ManifestError> {
        for (field, url) in [
            ("storage", Some(&exp.storage)),
            ("url", exp.dataset.url.as_ref()),
        ] {
            if let Some(url) = url
                && let Err(e) = crate::store::Store::open(url)
            {
                let path: &[&str] = if field == "storage" {
                    &["storage"]
                } else {
                    &["dataset", "url"]
                };
                return Err(self.err(self.locate(path), e.to_string(), None));
            }
        }
        Ok(())
    }

    /// resources.cpu and resources.memory are Kubernetes quantities.
    fn quantities(&self, r: &Resources) -> Result<(), ManifestError> {
        for (field, q) in [("cpu", &r.cpu), ("memory", &r.memory)] {
            if let Some(q) = q
                && !is_quantity(q)
            {
                return Err(self.err(
                    self.locate(&["resources", field]),
                    format!("resources.{field} '{q}' is not a Kubernetes quantity"),
                    Some(if field == "cpu" {
                        "e.g. 4 or 500m".into()
                    } else {
                        "e.g. 16Gi or 512Mi".into()
                    }),
                ));
            }
        }
        Ok(())
    }

    /// resources.node_selector's keys and values are Kubernetes label keys and values: what
    /// Kubernetes would reject is said now whatever the backend, since the manifest names it.
    fn node_selector(&self, r: &Resources) -> Result<(), ManifestError> {
        use crate::kube_syntax::{is_label_value, is_qualified_name};
        for (key, value) in &r.node_selector {
            // A key the search cannot find as written (escapes in quotes): at node_selector.
            let at = || {
                self.locate(&["resources", "node_selector", key])
                    .or_else(|| self.locate(&["resources", "node_selector"]))
            };
            if !is_qualified_name(key) {
                return Err(self.err(
                    at(),
                    format!("resources.node_selector: '{key}' is not a valid Kubernetes label key"),
                    Some("e.g. nvidia.com/gpu.product: at most 63 letters, digits, '-', '_' or '.', a letter or digit at each end, after an optional DNS prefix and '/'".into()),
                ));
            }
            if !is_label_value(value) {
                return Err(self.err(
                    at(),
                    format!(
                        "resources.node_selector.{key}: '{value}' is not a valid Kubernetes label value"
                    ),
                    Some(
                        "at most 63 letters, digits, '-', '_' or '.', a letter or digit at each end"
                            .into(),
                    ),
                ));
            }
        }
        Ok(())
    }

    /// resources.queue and resources.workload_priority name Kueue objects.
    fn kueue_names(&self, r: &Resources) -> Result<(), ManifestError> {
        use crate::kube_syntax::is_labelled_name;
        for (field, name, what) in [
            ("queue", &r.queue, "Kueue LocalQueue"),
            (
                "workload_priority",
                &r.workload_priority,
                "Kueue WorkloadPriorityClass",
            ),
        ] {
            let Some(name) = name else { continue };
            // An empty queue opts out of the namespace's default queue.
            if !(is_labelled_name(name) || (field == "queue" && name.is_empty())) {
                return Err(self.err(
                    self.locate(&["resources", field]),
                    format!("resources.{field} '{name}' is not a valid {what} name"),
                    Some(format!(
                        "the name of a {what}: at most 63 lowercase letters, digits, '-' or '.', a letter or digit at each end{}",
                        if field == "queue" {
                            "; \"\" submits without a queue"
                        } else {
                            ""
                        }
                    )),
                ));
            }
        }
        Ok(())
    }

    /// Each of resources.tolerations is one Kubernetes would take.
    fn tolerations(&self, r: &Resources) -> Result<(), ManifestError> {
        use crate::kube_syntax::{is_label_value, is_qualified_name};
        for (i, t) in r.tolerations.iter().enumerate() {
            let bad = |what: String| {
                Err(self.err(
                    self.locate(&["resources", "tolerations", "key"]),
                    format!("resources.tolerations[{i}]: {what}"),
                    None,
                ))
            };
            let matches_all = t.key.is_empty() && t.operator == "Exists";
            if !matches_all && !is_qualified_name(&t.key) {
                return bad(format!(
                    "key '{}' is not a valid Kubernetes label key",
                    t.key
                ));
            }
            if !matches!(t.operator.as_str(), "Exists" | "Equal") {
                return bad(format!("operator '{}' is not Exists or Equal", t.operator));
            }
            if let Some(v) = &t.value
                && !is_label_value(v)
            {
                return bad(format!("value '{v}' is not a valid Kubernetes label value"));
            }
            if let Some(e) = &t.effect
                && !matches!(e.as_str(), "NoSchedule" | "PreferNoSchedule" | "NoExecute")
            {
                return bad(format!(
                    "effect '{e}' is not NoSchedule, PreferNoSchedule or NoExecute"
                ));
            }
        }
        Ok(())
    }
}

/// Deepest nesting of mappings and sequences a manifest may have. Manifests need about six
/// levels; the YAML parser's time grows with the square of the depth (seconds at a few
/// thousand levels), so deeper text is refused before it is parsed.
pub const MAX_DEPTH: usize = 64;

/// Parses YAML `text` of manifest `file` into `T`, refusing text nested deeper than
/// [`MAX_DEPTH`] first: every manifest idcctl reads from a user goes through here.
pub fn from_yaml<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &str,
) -> Result<T, ManifestError> {
    check_depth(text).map_err(|(line, column)| ManifestError {
        file: file.to_string(),
        at: Some((line, column)),
        message: format!("mappings and sequences nest deeper than {MAX_DEPTH} levels here"),
        hint: Some("a manifest needs a few levels: is this file generated or damaged?".into()),
    })?;
    serde_yaml::from_str(text).map_err(|e| {
        let mut err = yaml_error(file, e);
        // serde reads a `kind`-tagged mapping (a model, an optimizer, a sampler, a pruner) from
        // a copy without positions: its errors come at the document's start and name no field.
        // Find the entry.
        if (err.at.is_none() || err.at == document_start(text))
            && let Some(path) = tagged_culprit(text, &err.message)
        {
            let keys: Vec<&str> = path.iter().map(String::as_str).collect();
            err.at = locate(text, &keys).or(err.at);
            err.message = format!("{}: {}", path.join("."), err.message);
        }
        err
    })
}

/// Where the YAML parser places the start of `text`'s document: its first line that is not
/// blank, a comment, a directive or `---`.
fn document_start(text: &str) -> Option<(usize, usize)> {
    text.lines().enumerate().find_map(|(i, l)| {
        let t = l.trim_start();
        let skip = t.is_empty() || t.starts_with('#') || t.starts_with('%') || t == "---";
        (!skip).then(|| (i + 1, l.len() - t.len() + 1))
    })
}

/// The path of the entry of a `kind`-tagged mapping in `text` that serde's `message` is about:
/// the first (in document order) whose key is the unknown field it names, or whose value is
/// the invalid value or type it quotes.
fn tagged_culprit(text: &str, message: &str) -> Option<Vec<String>> {
    let quoted = |s: &str, open: char, close: char| {
        let (_, rest) = s.split_once(open)?;
        rest.split_once(close).map(|(v, _)| v.to_string())
    };
    let (key, value) = if let Some(rest) = message.strip_prefix("unknown field ") {
        (quoted(rest, '`', '`'), None)
    } else {
        let rest = message
            .strip_prefix("invalid value: ")
            .or_else(|| message.strip_prefix("invalid type: "))?;
        let what = rest.split(", expected").next()?;
        let v = if what.starts_with("string ") {
            quoted(what, '"', '"')
        } else {
            quoted(what, '`', '`')
        };
        (None, v)
    };
    if key.is_none() && value.is_none() {
        return None;
    }
    let raw: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
    // Below the document's own mapping (whose `kind` is the manifest's).
    let serde_yaml::Value::Mapping(top) = raw else {
        return None;
    };
    top.iter().find_map(|(k, v)| {
        let mut path = vec![k.as_str()?.to_string()];
        find_tagged(v, key.as_deref(), value.as_deref(), &mut path).then_some(path)
    })
}

/// Depth-first search for [`tagged_culprit`]; `path` holds the keys down to the match.
fn find_tagged(
    v: &serde_yaml::Value,
    key: Option<&str>,
    value: Option<&str>,
    path: &mut Vec<String>,
) -> bool {
    use serde_yaml::Value;
    let scalar = |v: &Value| match v {
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    };
    match v {
        Value::Mapping(m) => {
            let tagged = m.contains_key("kind");
            for (k, child) in m {
                let Some(name) = scalar(k) else { continue };
                path.push(name.clone());
                let hit = tagged
                    && name != "kind"
                    && (key == Some(name.as_str())
                        || (value.is_some() && scalar(child).as_deref() == value));
                if hit || find_tagged(child, key, value, path) {
                    return true;
                }
                path.pop();
            }
            false
        }
        Value::Sequence(items) => items.iter().any(|i| find_tagged(i, key, value, path)),
        Value::Tagged(t) => find_tagged(&t.value, key, value, path),
        _ => false,
    }
}

/// The 1-based line and column where `text`'s nesting first goes deeper than [`MAX_DEPTH`], if
/// it does. One pass over the text: block levels by indentation (and `- - x` on one line),
/// flow levels by brackets outside quotes, comments and block scalars. An estimate: a
/// multi-line plain scalar's continuation counts as a level, a block sequence written at its
/// key's indentation as one level where YAML sees two; deep nesting is refused all the same.
pub fn check_depth(text: &str) -> Result<(), (usize, usize)> {
    let mut scan = DepthScan::default();
    for (i, line) in text.lines().enumerate() {
        scan.line(line).map_err(|byte| {
            let column = line.get(..byte).map_or(byte, |s| s.chars().count());
            (i + 1, column + 1)
        })?;
    }
    Ok(())
}

/// The state of [`check_depth`]'s pass, carried from line to line.
#[derive(Default)]
struct DepthScan {
    /// Indentation of the enclosing block nodes, outermost first.
    indents: Vec<usize>,
    /// Open flow collections (`[` and `{`).
    flow: usize,
    /// The quote of a quoted scalar still open at the end of a line.
    quote: Option<char>,
    /// The indentation of the line that opened a block scalar (`|`, `>`) whose lines follow.
    block_scalar: Option<usize>,
}

impl DepthScan {
    /// Scans one line; `Err(byte)` where it goes too deep.
    fn line(&mut self, line: &str) -> Result<(), usize> {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let body = &line[indent..];
        if let Some(parent) = self.block_scalar {
            if body.trim().is_empty() || indent > parent {
                return Ok(());
            }
            self.block_scalar = None;
        }
        if self.quote.is_none() && self.flow == 0 {
            if body.is_empty() || body.starts_with('#') {
                return Ok(());
            }
            while self.indents.last().is_some_and(|&i| i >= indent) {
                self.indents.pop();
            }
            self.indents.push(indent);
        }
        let too_deep = |levels: usize| levels > MAX_DEPTH;
        // Levels opened on this line by sequence entries (`- x`, `- - x`).
        let mut entries = 0;
        if too_deep(self.indents.len() + self.flow) {
            return Err(indent);
        }
        // Whether a node may start here (a quote or a bracket opens one only there).
        let mut at_start = true;
        let bytes = body.as_bytes();
        let mut k = 0;
        while k < bytes.len() {
            let c = bytes[k];
            let next = bytes.get(k + 1).copied();
            let blank_after = next.is_none_or(|n| n == b' ' || n == b'\t');
            match (self.quote, c) {
                (Some('\''), b'\'') if next == Some(b'\'') => k += 1,
                (Some('\''), b'\'') | (Some('"'), b'"') => {
                    self.quote = None;
                    at_start = false;
                }
                (Some('"'), b'\\') => k += 1,
                (Some(_), _) | (None, b' ' | b'\t') => {}
                (None, b'#') if k == 0 || bytes[k - 1] == b' ' || bytes[k - 1] == b'\t' => break,
                (None, b'\'' | b'"') if at_start => self.quote = Some(c as char),
                (None, b'[' | b'{') if at_start || self.flow > 0 => {
                    self.flow += 1;
                    at_start = true;
                    if too_deep(self.indents.len() + entries + self.flow) {
                        return Err(indent + k);
                    }
                }
                (None, b']' | b'}') if self.flow > 0 => {
                    self.flow -= 1;
                    at_start = false;
                }
                (None, b',') if self.flow > 0 => at_start = true,
                (None, b':')
                    if blank_after
                        || (self.flow > 0 && b",[]{}".contains(&next.unwrap_or(b' '))) =>
                {
                    at_start = true
                }
                (None, b'-' | b'?') if at_start && blank_after => {
                    entries += usize::from(c == b'-');
                    if too_deep(self.indents.len() + entries + self.flow) {
                        return Err(indent + k);
                    }
                }
                (None, b'|' | b'>') if at_start && self.flow == 0 => {
                    self.block_scalar = Some(indent);
                    break;
                }
                // An anchor or a tag comes before the node it names.
                (None, b'&' | b'!') if at_start => {
                    while k + 1 < bytes.len() && bytes[k + 1] != b' ' {
                        k += 1;
                    }
                }
                (None, _) => at_start = false,
            }
            k += 1;
        }
        Ok(())
    }
}

/// A YAML or schema error of manifest `file`, located, with a did-you-mean where one helps.
pub fn yaml_error(file: &str, e: serde_yaml::Error) -> ManifestError {
    let at = e.location().map(|l| (l.line(), l.column()));
    let full = e.to_string();
    // serde_yaml appends the location, which we print in front instead.
    let message = full.split(" at line ").next().unwrap_or(&full).to_string();
    let (message, hint) = explain(&message);
    ManifestError {
        file: file.to_string(),
        at,
        message,
        hint,
    }
}

/// Adds a did-you-mean to serde's unknown field/variant messages.
pub fn explain(message: &str) -> (String, Option<String>) {
    for what in ["unknown field `", "unknown variant `"] {
        let Some(rest) = message.split(what).nth(1) else {
            continue;
        };
        let given = rest.split('`').next().unwrap_or("");
        // serde lists the choices in backticks: "expected `a` or `b`", "expected one of `a`, `b`".
        let choices = rest.split_once("expected").map_or("", |(_, list)| list);
        let expected: Vec<&str> = choices.split('`').skip(1).step_by(2).collect();
        let head = message
            .split(", expected")
            .next()
            .unwrap_or(message)
            .to_string();
        let best = expected
            .iter()
            .map(|e| (strsim::levenshtein(given, e), *e))
            .filter(|(d, e)| *d <= 2.max(e.len() / 4))
            .min();
        return match (best, expected.is_empty()) {
            (Some((_, e)), _) => (head, Some(format!("did you mean `{e}`?"))),
            (None, false) => (
                head,
                Some(format!("expected one of: {}", expected.join(", "))),
            ),
            (None, true) => (head, None),
        };
    }
    (message.to_string(), None)
}

/// Why `name` is not a valid experiment or dataset name, if it is not.
pub fn bad_name(name: &str) -> Option<String> {
    name_rule_violation(name, MAX_NAME_LEN)
}

/// Why `name` breaks the rule for experiment, dataset and run names, if it does: at most `max`
/// lowercase letters, digits and '-', a letter first and a letter or digit last (so that it is
/// a Kubernetes DNS-1123 label when `max` is 63 or less).
pub fn name_rule_violation(name: &str, max: usize) -> Option<String> {
    if name.is_empty() {
        return Some("is empty".into());
    }
    if name.len() > max {
        return Some(format!("is longer than {max} characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Some("may hold only lowercase letters, digits and '-'".into());
    }
    if !name.as_bytes()[0].is_ascii_lowercase() || name.ends_with('-') {
        return Some("must start with a letter and end with a letter or digit".into());
    }
    None
}

/// The 1-based line and column of the key at `path`, each key searched from its parent's line
/// on (the same line too, for flow mappings such as `optimizer: {kind: sgd, lr: 0.1}`).
pub fn locate(text: &str, path: &[&str]) -> Option<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let (mut line, mut col) = (0usize, 0usize);
    for (depth, key) in path.iter().enumerate() {
        // Written plain or quoted (`"bad key": x`).
        let patterns = [
            format!("{key}:"),
            format!("\"{key}\":"),
            format!("'{key}':"),
        ];
        let mut found = None;
        for (i, l) in lines.iter().enumerate().skip(line) {
            let start = if i == line && depth > 0 { col + 1 } else { 0 };
            let Some(hay) = l.get(start..) else { continue };
            let hit = patterns
                .iter()
                .filter_map(|pattern| {
                    hay.match_indices(pattern.as_str()).find(|(at, _)| {
                        let before = hay[..*at].chars().last();
                        before.is_none_or(|c| c == ' ' || c == '{' || c == '-' || c == ',')
                    })
                })
                .min();
            if let Some((at, _)) = hit {
                found = Some((i, start + at));
                break;
            }
        }
        (line, col) = found?;
    }
    Some((line + 1, col + 1))
}

/// The JSON Schema of the manifest, for editors.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Experiment)).expect("a schema serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_names() {
        assert_eq!(parse_duration("1h30m"), Some(5400));
        assert_eq!(parse_duration("90s"), Some(90));
        assert_eq!(parse_duration("6"), None);
        assert_eq!(parse_duration("1w"), None);
        assert_eq!(bad_name("cnn-weighted-2"), None);
        assert!(bad_name("CNN").is_some() && bad_name("-a").is_some() && bad_name("9a").is_some());
    }

    #[test]
    fn depth_is_measured_outside_scalars_and_comments() {
        let brackets = "[{".repeat(100);
        for text in [
            format!("description: |\n  {brackets}\n  more\nname: x\n"),
            format!("description: >-\n    {brackets}\n\n    {brackets}\nname: x\n"),
            format!("description: '{brackets} it''s'\nname: x\n"),
            format!("description: \"{brackets} \\\" {brackets}\"\nname: x\n"),
            format!("description: \"multi\n  line {brackets}\"\nname: x\n"),
            format!("description: see {brackets}\nname: x # {brackets}\n"),
            format!("description: don't {brackets}\n# {brackets}\n"),
            format!("tags: [a, \"{brackets}\", '{brackets}', b]\n"),
            "a:\n  - b:\n      - c: {d: [1, {e: [2]}]}\n  - &x !t {f: [1]}\n  - *x\n".to_string(),
        ] {
            assert_eq!(check_depth(&text), Ok(()), "{text}");
            // YAML reads it too: what is skipped is no structure.
            serde_yaml::from_str::<serde_yaml::Value>(&text).expect(&text);
        }
        let n = 5000;
        for (text, at) in [
            (format!("a: {}1{}\n", "[".repeat(n), "]".repeat(n)), (1, 67)),
            (format!("a: {}1\n", "{a: ".repeat(n)), (1, 4 + 4 * 63)),
            (format!("a: {}1\n", "- ".repeat(n)), (1, 4 + 2 * 63)),
            (
                (0..n).map(|i| format!("{}a:\n", " ".repeat(i))).collect(),
                (65, 65),
            ),
            (
                (0..n)
                    .map(|i| format!("{}- \n", " ".repeat(2 * i)))
                    .collect(),
                (64, 127),
            ),
        ] {
            assert_eq!(check_depth(&text), Err(at), "{}", &text[..80]);
        }
    }

    #[test]
    fn schema_names_the_fields() {
        let s = json_schema().to_string();
        for field in [
            "apiVersion",
            "dataset",
            "batch_size",
            "simple_cnn",
            "node_selector",
        ] {
            assert!(s.contains(field), "schema lacks {field}");
        }
    }

    #[test]
    fn archive_sources_refuse_options_that_do_not_apply() {
        let base = "apiVersion: idc/v1\nkind: Experiment\nname: c\ndataset:\n  source: ./cifar-10-python.tar.gz\n  format: cifar10\n";
        assert!(
            parse(
                &format!("{base}  split: {{val: 5000, seed: 1}}\n"),
                "e.yaml"
            )
            .is_ok()
        );
        let e = parse(
            &format!("{base}  split: {{val: 5000, test: 100}}\n"),
            "e.yaml",
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with("e.yaml:7:3: dataset.split.method, dataset.split.test and dataset.undersized do not apply to format cifar10"),
            "{e}"
        );
        let idc = "apiVersion: idc/v1\nkind: Experiment\nname: c\ndataset:\n  source: ./archive.zip\n  class_names: [a, b]\n";
        let e = parse(idc, "e.yaml").unwrap_err();
        assert!(
            e.to_string()
                .contains("dataset.class_names applies to archives"),
            "{e}"
        );
        let url = "apiVersion: idc/v1\nkind: Experiment\nname: c\ndataset:\n  url: file:///tmp/d\n  format: idx\n";
        let e = parse(url, "e.yaml").unwrap_err();
        assert!(
            e.to_string()
                .contains("dataset.format and dataset.class_names apply only with dataset.source"),
            "{e}"
        );
    }

    mod fuzz {
        use super::*;
        use crate::fuzz::{config, corrupted};
        use proptest::prelude::*;

        const MANIFESTS: [&str; 4] = [
            include_str!("../manifests/cnn.yaml"),
            include_str!("../manifests/resnet34.yaml"),
            include_str!("../manifests/cifar10.yaml"),
            include_str!("../manifests/logreg.yaml"),
        ];

        /// A manifest is read, or refused with an error naming its file, never a panic.
        fn read_or_name(b: &[u8]) {
            let text = String::from_utf8_lossy(b);
            if let Err(e) = parse(&text, "exp.yaml") {
                assert!(e.to_string().starts_with("exp.yaml"), "{e}");
            }
        }

        proptest! {
            #![proptest_config(config(64))]

            #[test]
            fn any_text(t in "\\PC{0,200}") {
                read_or_name(t.as_bytes());
            }

            #[test]
            fn yaml_like_text(t in "([a-z_.]{0,8}: ?[-\\[\\]{}a-z0-9:,'\"&*!|> ]{0,12}\n {0,4}){0,12}") {
                read_or_name(t.as_bytes());
            }

            #[test]
            fn corrupted_manifests(
                b in (0..MANIFESTS.len()).prop_flat_map(|i| corrupted(MANIFESTS[i].as_bytes().to_vec()))
            ) {
                read_or_name(&b);
            }
        }
    }
}
