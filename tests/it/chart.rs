//! The Helm chart `charts/idc` against the Rust side: its golden renders (made with the real Helm
//! library by `.ci/helm`, which also checks that they are current) grant exactly `RBAC_RULES`
//! (and `KUEUE_RBAC_RULES` with `kueue.enabled`), bind them to the chart's service account, and
//! install an `idc-defaults` ConfigMap that
//! `ClusterDefaults` reads; every name and label is one Kubernetes accepts. No helm needed here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use idc::backend::kube::{
    CONFIG_MAP, CONFIG_MAP_KEY, ClusterDefaults, KUEUE_RBAC_RULES, RBAC_RULES,
};
use serde::Deserialize;
use serde_yaml::{Mapping, Value};

const NAMESPACE: &str = "idc";

/// A golden render and what its values file asks for.
struct Golden {
    name: &'static str,
    /// The credentials Secret the ConfigMap must name.
    credentials_secret: &'static str,
    /// Whether the chart renders that Secret itself (s3.createSecret).
    creates_secret: bool,
    /// Subjects besides the service account, as (kind, name).
    extra_subjects: &'static [(&'static str, &'static str)],
    /// Whether the values enable Kueue (`kueue.enabled`), and the default queue they name.
    kueue: bool,
    queue: Option<&'static str>,
}

const GOLDENS: &[Golden] = &[
    Golden {
        name: "default",
        credentials_secret: "idc-s3",
        creates_secret: false,
        extra_subjects: &[],
        kueue: false,
        queue: None,
    },
    Golden {
        name: "custom",
        credentials_secret: "minio-idc",
        creates_secret: true,
        extra_subjects: &[("Group", "ml-team"), ("User", "jane@example.com")],
        kueue: true,
        queue: Some("gpu-queue"),
    },
    Golden {
        name: "existing-secret",
        credentials_secret: "team-s3-keys",
        creates_secret: false,
        extra_subjects: &[],
        kueue: false,
        queue: None,
    },
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The documents of a golden render, parsed one by one.
fn docs(name: &str) -> Vec<Value> {
    let path = root().join(format!("tests/golden/chart/{name}.yaml"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (.ci/helm --update writes it)", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| &v[k])
}

fn str_at<'a>(v: &'a Value, path: &str) -> &'a str {
    get(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string in {v:?}"))
}

/// The only document of this kind.
fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let mut of_kind = docs.iter().filter(|d| str_at(d, "kind") == kind);
    let doc = of_kind
        .next()
        .unwrap_or_else(|| panic!("no {kind} rendered"));
    assert!(of_kind.next().is_none(), "more than one {kind} rendered");
    doc
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("not a list: {v:?}"))
        .iter()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect()
}

/// A grant: API group, resource, verb, and the resource names it is restricted to (none: all).
type Grant = (String, String, String, Vec<String>);

/// The Role's rules as single grants, so that equal permissions compare equal however the rules
/// are grouped.
fn grants(role: &Value) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_sequence().expect("rules") {
        let keys: BTreeSet<&str> = rule
            .as_mapping()
            .expect("a rule")
            .keys()
            .map(|k| k.as_str().unwrap())
            .collect();
        let allowed = BTreeSet::from(["apiGroups", "resources", "verbs", "resourceNames"]);
        assert!(keys.is_subset(&allowed), "unexpected rule fields: {keys:?}");
        let names = rule.get("resourceNames").map(strings).unwrap_or_default();
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    out.insert((group.clone(), resource.clone(), verb, names.clone()));
                }
            }
        }
    }
    out
}

/// What the Role must grant: `RBAC_RULES`, with ConfigMaps readable by name only, and
/// `KUEUE_RBAC_RULES` when Kueue is enabled.
fn expected_grants(kueue: bool) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    let kueue_rules = if kueue { KUEUE_RBAC_RULES } else { &[] };
    for (group, resource, verbs) in RBAC_RULES.iter().chain(kueue_rules) {
        let names = if *resource == "configmaps" {
            vec![CONFIG_MAP.to_string()]
        } else {
            vec![]
        };
        for verb in *verbs {
            out.insert((
                group.to_string(),
                resource.to_string(),
                verb.to_string(),
                names.clone(),
            ));
        }
    }
    out
}

#[test]
fn role_grants_exactly_the_rbac_rules() {
    for g in GOLDENS {
        let want = expected_grants(g.kueue);
        let docs = docs(g.name);
        let got = grants(one(&docs, "Role"));
        assert_eq!(
            got,
            want,
            "{}: the chart's Role (charts/idc/templates/rbac.yaml) must grant exactly RBAC_RULES \
             (src/backend/kube/defaults.rs), and KUEUE_RBAC_RULES with kueue.enabled; extra: {:?}, \
             missing: {:?}",
            g.name,
            got.difference(&want).collect::<Vec<_>>(),
            want.difference(&got).collect::<Vec<_>>()
        );
        assert_eq!(
            str_at(one(&docs, "Role"), "apiVersion"),
            "rbac.authorization.k8s.io/v1"
        );
    }
}

#[test]
fn role_binding_binds_the_role_to_the_service_account() {
    for g in GOLDENS {
        let docs = docs(g.name);
        let role = one(&docs, "Role");
        let binding = one(&docs, "RoleBinding");
        let sa = one(&docs, "ServiceAccount");
        assert_eq!(
            str_at(binding, "roleRef.apiGroup"),
            "rbac.authorization.k8s.io"
        );
        assert_eq!(str_at(binding, "roleRef.kind"), "Role");
        assert_eq!(
            str_at(binding, "roleRef.name"),
            str_at(role, "metadata.name"),
            "{}",
            g.name
        );
        let subjects = binding["subjects"].as_sequence().expect("subjects");
        let first = &subjects[0];
        assert_eq!(str_at(first, "kind"), "ServiceAccount", "{}", g.name);
        assert_eq!(
            str_at(first, "name"),
            str_at(sa, "metadata.name"),
            "{}",
            g.name
        );
        assert_eq!(str_at(first, "namespace"), NAMESPACE, "{}", g.name);
        let extra: Vec<(&str, &str)> = subjects[1..]
            .iter()
            .map(|s| (str_at(s, "kind"), str_at(s, "name")))
            .collect();
        assert_eq!(extra, g.extra_subjects, "{}: rbac.extraSubjects", g.name);
        for s in &subjects[1..] {
            assert_eq!(
                str_at(s, "apiGroup"),
                "rbac.authorization.k8s.io",
                "{}",
                g.name
            );
        }
    }
}

/// The ConfigMap's `defaults.yaml`, as text.
fn defaults_yaml(docs: &[Value]) -> &str {
    let cm = docs
        .iter()
        .find(|d| str_at(d, "kind") == "ConfigMap" && str_at(d, "metadata.name") == CONFIG_MAP)
        .unwrap_or_else(|| panic!("no ConfigMap {CONFIG_MAP} rendered"));
    let data = cm["data"].as_mapping().expect("data");
    assert_eq!(
        data.len(),
        1,
        "{CONFIG_MAP} holds one key, {CONFIG_MAP_KEY}"
    );
    // Not str_at: the key has a dot in it.
    cm["data"][CONFIG_MAP_KEY]
        .as_str()
        .unwrap_or_else(|| panic!("{CONFIG_MAP} has no string {CONFIG_MAP_KEY}"))
}

#[test]
fn config_map_holds_cluster_defaults_that_match_the_rendered_objects() {
    for g in GOLDENS {
        let docs = docs(g.name);
        let text = defaults_yaml(&docs);
        let defaults: ClusterDefaults = serde_yaml::from_str(text)
            .unwrap_or_else(|e| panic!("{}: {CONFIG_MAP_KEY} is not ClusterDefaults: {e}", g.name));
        assert_eq!(
            defaults.service_account,
            str_at(one(&docs, "ServiceAccount"), "metadata.name"),
            "{}",
            g.name
        );
        assert_eq!(
            defaults.s3.credentials_secret, g.credentials_secret,
            "{}",
            g.name
        );
        assert_eq!(
            defaults.queue.as_deref(),
            g.queue,
            "{}: kueue.queue",
            g.name
        );
        let secrets: Vec<&Value> = docs
            .iter()
            .filter(|d| str_at(d, "kind") == "Secret")
            .collect();
        if g.creates_secret {
            assert_eq!(secrets.len(), 1, "{}: one Secret", g.name);
            let secret = secrets[0];
            assert_eq!(str_at(secret, "metadata.name"), g.credentials_secret);
            let keys: BTreeSet<&str> = secret["data"]
                .as_mapping()
                .expect("data")
                .keys()
                .map(|k| k.as_str().unwrap())
                .collect();
            assert_eq!(
                keys,
                BTreeSet::from(["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"])
            );
        } else {
            assert!(
                secrets.is_empty(),
                "{}: the chart must create no Secret",
                g.name
            );
        }
        // Every field is written out, so the chart's values, not the Rust defaults, decide.
        let rendered: Value = serde_yaml::from_str(text).unwrap();
        let all = serde_yaml::to_value(ClusterDefaults::default()).unwrap();
        assert_eq!(
            key_paths(&rendered, ""),
            key_paths(&all, ""),
            "{}: {CONFIG_MAP_KEY} must list every ClusterDefaults field",
            g.name
        );
    }
}

#[test]
fn chart_defaults_are_the_rust_defaults() {
    // A plain `helm install` and a cluster without the ConfigMap behave alike.
    let docs = docs("default");
    let defaults: ClusterDefaults = serde_yaml::from_str(defaults_yaml(&docs)).unwrap();
    assert_eq!(defaults, ClusterDefaults::default());
}

fn key_paths(v: &Value, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Value::Mapping(m) = v {
        for (k, v) in m {
            let path = format!("{prefix}{}", k.as_str().unwrap());
            out.extend(key_paths(v, &format!("{path}.")));
            out.insert(path);
        }
    }
    out
}

/// Where each ClusterDefaults field comes from in charts/idc/values.yaml.
const VALUES_OF_DEFAULTS: &[(&str, &str)] = &[
    ("image", "worker.image.repository"),
    ("controllerImage", "controller.image.repository"),
    ("imagePullPolicy", "worker.image.pullPolicy"),
    ("imagePullSecrets", "worker.imagePullSecrets"),
    ("storage", "storage"),
    ("s3", "s3"),
    ("s3.endpoint", "s3.endpoint"),
    ("s3.region", "s3.region"),
    ("s3.allowHttp", "s3.allowHttp"),
    ("s3.credentialsSecret", "s3.secretName"),
    ("serviceAccount", "serviceAccount.name"),
    ("resources", "worker.resources"),
    ("resources.cpu", "worker.resources.cpu"),
    ("resources.memory", "worker.resources.memory"),
    ("shmSize", "worker.shmSize"),
    ("ttlSecondsAfterFinished", "worker.ttlSecondsAfterFinished"),
    (
        "terminationGracePeriodSeconds",
        "worker.terminationGracePeriodSeconds",
    ),
    ("priorityClass", "worker.priorityClass"),
    ("tolerateGpuTaint", "worker.tolerateGpuTaint"),
    ("queue", "kueue.queue"),
    ("mlflow", "mlflow"),
    ("mlflow.uri", "mlflow.uri"),
    ("mlflow.tokenSecret", "mlflow.tokenSecret"),
];

#[test]
fn every_cluster_defaults_field_has_a_value_and_a_schema() {
    let chart = root().join("charts/idc");
    let values: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart.join("values.yaml")).unwrap()).unwrap();
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(chart.join("values.schema.json")).unwrap())
            .unwrap();
    let fields = key_paths(
        &serde_yaml::to_value(ClusterDefaults::default()).unwrap(),
        "",
    );
    let mapped: BTreeSet<String> = VALUES_OF_DEFAULTS
        .iter()
        .map(|(f, _)| f.to_string())
        .collect();
    assert_eq!(
        fields, mapped,
        "a ClusterDefaults field was added or removed: give it a value in charts/idc/values.yaml, \
         a schema in values.schema.json, render it in templates/configmap.yaml, and list it here"
    );
    for (field, path) in VALUES_OF_DEFAULTS {
        assert!(
            !get(&values, path).is_null(),
            "{field}: values.yaml has no {path}"
        );
        let mut s = &schema;
        for k in path.split('.') {
            s = &s["properties"][k];
        }
        assert!(!s.is_null(), "{field}: values.schema.json has no {path}");
    }
}

#[test]
fn chart_app_version_is_the_crate_version() {
    // The worker image tag defaults to appVersion; ClusterDefaults' image to the crate version.
    let chart: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("charts/idc/Chart.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(str_at(&chart, "apiVersion"), "v2");
    assert_eq!(str_at(&chart, "name"), "idc");
    assert_eq!(str_at(&chart, "appVersion"), env!("CARGO_PKG_VERSION"));
}

#[test]
fn chart_kube_version_is_the_oldest_idcctl_accepts() {
    // What `idcctl submit` checks against the API server's /version, the chart refuses too.
    let chart: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("charts/idc/Chart.yaml")).unwrap(),
    )
    .unwrap();
    let (major, minor) = idc::backend::kube::defaults::MIN_KUBERNETES;
    assert_eq!(
        str_at(&chart, "kubeVersion"),
        format!(">={major}.{minor}.0-0")
    );
}

/// RFC 1123 label: at most 63 of [a-z0-9-], starting and ending alphanumeric.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters (most object names).
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A label value, or the name part of a label key: at most 63 of [A-Za-z0-9-_.], alphanumeric
/// at both ends; a value may be empty.
fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric())
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a non-empty name.
fn is_label_key(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(is_dns_subdomain) && !name.is_empty() && is_label_value(name)
}

#[test]
fn name_and_label_checks_reject_what_kubernetes_rejects() {
    for ok in ["idc", "idc-s3", "a.b-c", "0x"] {
        assert!(is_dns_subdomain(ok), "{ok}");
    }
    for bad in ["", "Idc", "-idc", "idc-", "a..b", "a_b", &"a".repeat(254)] {
        assert!(!is_dns_subdomain(bad), "{bad}");
    }
    for ok in ["app.kubernetes.io/name", "helm.sh/chart", "name", "a_b.c-d"] {
        assert!(is_label_key(ok), "{ok}");
    }
    for bad in [
        "/name",
        "Example.com/x",
        "a/b/c",
        "x/",
        "-a",
        &"a".repeat(64),
    ] {
        assert!(!is_label_key(bad), "{bad}");
    }
    for ok in ["", "0.1.0", "Helm", "idc-0.1.0", "a_b"] {
        assert!(is_label_value(ok), "{ok}");
    }
    for bad in ["0.1.0+x", "-a", "a.", "has space", &"a".repeat(64)] {
        assert!(!is_label_value(bad), "{bad}");
    }
}

#[test]
fn names_and_labels_are_valid_kubernetes() {
    for g in GOLDENS {
        let docs = docs(g.name);
        assert!(docs.len() >= 4, "{}: {} documents", g.name, docs.len());
        for d in &docs {
            let what = format!(
                "{}: {} {:?}",
                g.name,
                str_at(d, "kind"),
                d["metadata"]["name"]
            );
            assert!(is_dns_subdomain(str_at(d, "metadata.name")), "{what}: name");
            assert_eq!(
                str_at(d, "metadata.namespace"),
                NAMESPACE,
                "{what}: namespace"
            );
            let labels: &Mapping = d["metadata"]["labels"].as_mapping().expect("labels");
            for (k, v) in labels {
                let (k, v) = (
                    k.as_str().unwrap(),
                    v.as_str().expect("label values are strings"),
                );
                assert!(is_label_key(k), "{what}: label key {k:?}");
                assert!(is_label_value(v), "{what}: label {k}={v:?}");
            }
            for key in [
                "app.kubernetes.io/name",
                "app.kubernetes.io/instance",
                "app.kubernetes.io/version",
                "app.kubernetes.io/managed-by",
                "helm.sh/chart",
            ] {
                assert!(labels.contains_key(key), "{what}: no label {key}");
            }
        }
    }
}

#[test]
fn golden_renders_exist_for_every_values_file() {
    // .ci/helm renders each values file to a golden of the same name; a new one needs an entry
    // in GOLDENS here to be checked.
    let dir = root().join("tests/golden/chart");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter_map(|f| f.strip_suffix(".values.yaml").map(str::to_string))
        .collect();
    names.push("default".into());
    names.sort();
    let mut known: Vec<String> = GOLDENS.iter().map(|g| g.name.to_string()).collect();
    known.sort();
    assert_eq!(names, known);
    for n in &names {
        assert!(
            Path::new(&dir.join(format!("{n}.yaml"))).exists(),
            "{n}.yaml"
        );
    }
}
