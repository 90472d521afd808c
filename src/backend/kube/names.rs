//! A check of a whole Job idcctl generates against Kubernetes' validation rules
//! ([`crate::kube_syntax`]), so a bad name is said before the API server is asked.

use crate::kube_syntax::{
    is_dns1123_label, is_dns1123_subdomain, is_label_value, is_qualified_name, is_quantity,
};
use k8s_openapi::api::batch::v1::Job;
use std::collections::BTreeMap;

/// Every rule the Job breaks, one line each, naming the field; empty when the Job is valid.
pub fn job_violations(job: &Job) -> Vec<String> {
    let mut out = vec![];
    let meta = &job.metadata;
    let name = meta.name.as_deref().unwrap_or("");
    // The Job controller labels pods with the Job's name, so it must be a label value too.
    if !is_dns1123_label(name) {
        out.push(format!(
            "metadata.name '{name}' is not a DNS-1123 label (at most 63 of a-z, 0-9, '-')"
        ));
    }
    check_labels("metadata.labels", meta.labels.as_ref(), &mut out);
    check_keys("metadata.annotations", meta.annotations.as_ref(), &mut out);
    let Some(spec) = &job.spec else {
        out.push("spec is missing".into());
        return out;
    };
    spec_violations(spec, &mut out);
    let template = &spec.template;
    if let Some(m) = &template.metadata {
        check_labels("spec.template.metadata.labels", m.labels.as_ref(), &mut out);
        check_keys(
            "spec.template.metadata.annotations",
            m.annotations.as_ref(),
            &mut out,
        );
    }
    let Some(pod) = &template.spec else {
        out.push("spec.template.spec is missing".into());
        return out;
    };
    pod_violations(pod, &mut out);
    for c in &pod.containers {
        container_violations(c, &mut out);
    }
    out
}

/// The API server's rules on completions, indexes and failure policies (`ValidateJobSpec`
/// in Kubernetes' `pkg/apis/batch/validation`) that a Job's spec breaks.
fn spec_violations(spec: &k8s_openapi::api::batch::v1::JobSpec, out: &mut Vec<String>) {
    // The most indexes and parallel pods an Indexed Job may have.
    const MAX_INDEXED: i32 = 100_000;
    let indexed = match spec.completion_mode.as_deref() {
        None | Some("NonIndexed") => false,
        Some("Indexed") => true,
        Some(other) => {
            out.push(format!(
                "spec.completionMode '{other}' is neither NonIndexed nor Indexed"
            ));
            false
        }
    };
    for (field, v) in [
        ("spec.completions", spec.completions),
        ("spec.parallelism", spec.parallelism),
        ("spec.backoffLimit", spec.backoff_limit),
        ("spec.backoffLimitPerIndex", spec.backoff_limit_per_index),
        ("spec.maxFailedIndexes", spec.max_failed_indexes),
    ] {
        if v.is_some_and(|v| v < 0) {
            out.push(format!("{field} must be at least 0"));
        }
    }
    if indexed {
        match spec.completions {
            None => out.push("spec.completions is required when completionMode is Indexed".into()),
            Some(c) if c > MAX_INDEXED => out.push(format!(
                "spec.completions {c} is over {MAX_INDEXED}, the most an Indexed Job may have"
            )),
            Some(_) => {}
        }
        if spec.parallelism.is_some_and(|p| p > MAX_INDEXED) {
            out.push(format!(
                "spec.parallelism is over {MAX_INDEXED}, the most an Indexed Job may have"
            ));
        }
    } else {
        for (field, set) in [
            (
                "spec.backoffLimitPerIndex",
                spec.backoff_limit_per_index.is_some(),
            ),
            ("spec.maxFailedIndexes", spec.max_failed_indexes.is_some()),
        ] {
            if set {
                out.push(format!("{field} requires completionMode Indexed"));
            }
        }
    }
    if spec.max_failed_indexes.is_some() && spec.backoff_limit_per_index.is_none() {
        out.push("spec.maxFailedIndexes requires spec.backoffLimitPerIndex".into());
    }
    if let Some(policy) = &spec.pod_failure_policy {
        if spec
            .template
            .spec
            .as_ref()
            .and_then(|p| p.restart_policy.as_deref())
            != Some("Never")
        {
            out.push("spec.podFailurePolicy requires the pod's restartPolicy to be Never".into());
        }
        if spec
            .pod_replacement_policy
            .as_deref()
            .is_some_and(|p| p != "Failed")
        {
            out.push(
                "spec.podReplacementPolicy must be Failed when spec.podFailurePolicy is set".into(),
            );
        }
        for (i, rule) in policy.rules.iter().enumerate() {
            match rule.action.as_str() {
                "FailJob" | "Ignore" | "Count" => {}
                "FailIndex" if spec.backoff_limit_per_index.is_some() => {}
                "FailIndex" => out.push(format!(
                    "spec.podFailurePolicy.rules[{i}].action FailIndex requires spec.backoffLimitPerIndex"
                )),
                other => out.push(format!(
                    "spec.podFailurePolicy.rules[{i}].action '{other}' is not one of FailJob, FailIndex, Ignore, Count"
                )),
            }
        }
    }
}

/// The rules the pod spec of a Job breaks, its containers aside.
fn pod_violations(pod: &k8s_openapi::api::core::v1::PodSpec, out: &mut Vec<String>) {
    if let Some(sa) = &pod.service_account_name
        && !is_dns1123_subdomain(sa)
    {
        out.push(format!(
            "spec.template.spec.serviceAccountName '{sa}' is not a DNS-1123 subdomain"
        ));
    }
    if let Some(pc) = &pod.priority_class_name
        && !is_dns1123_subdomain(pc)
    {
        out.push(format!(
            "spec.template.spec.priorityClassName '{pc}' is not a DNS-1123 subdomain"
        ));
    }
    check_labels(
        "spec.template.spec.nodeSelector",
        pod.node_selector.as_ref(),
        out,
    );
    for (i, t) in pod.tolerations.iter().flatten().enumerate() {
        if let Some(k) = &t.key
            && !is_qualified_name(k)
        {
            out.push(format!(
                "spec.template.spec.tolerations[{i}].key '{k}' is not a qualified name"
            ));
        }
    }
    for v in pod.volumes.iter().flatten() {
        if !is_dns1123_label(&v.name) {
            out.push(format!("volume name '{}' is not a DNS-1123 label", v.name));
        }
        if let Some(q) = v.empty_dir.as_ref().and_then(|e| e.size_limit.as_ref())
            && !is_quantity(&q.0)
        {
            out.push(format!(
                "volume {} sizeLimit '{}' is not a quantity",
                v.name, q.0
            ));
        }
    }
}

/// The rules container `c` breaks: its name, resources and environment.
fn container_violations(c: &k8s_openapi::api::core::v1::Container, out: &mut Vec<String>) {
    if !is_dns1123_label(&c.name) {
        out.push(format!(
            "container name '{}' is not a DNS-1123 label",
            c.name
        ));
    }
    let r = c.resources.as_ref();
    for (what, map) in [
        ("requests", r.and_then(|r| r.requests.as_ref())),
        ("limits", r.and_then(|r| r.limits.as_ref())),
    ] {
        for (k, q) in map.into_iter().flatten() {
            if !is_qualified_name(k) {
                out.push(format!(
                    "container {} resources.{what} key '{k}' is not a qualified name",
                    c.name
                ));
            }
            if !is_quantity(&q.0) {
                out.push(format!(
                    "container {} resources.{what}.{k} '{}' is not a quantity",
                    c.name, q.0
                ));
            }
        }
    }
    for e in c.env.iter().flatten() {
        // Kubernetes accepts any printable name but C identifiers are what processes expect.
        let ok = e
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !e.name.as_bytes()[0].is_ascii_digit();
        if !ok {
            out.push(format!(
                "container {} env name '{}' is not an identifier",
                c.name, e.name
            ));
        }
    }
}

fn check_labels(field: &str, labels: Option<&BTreeMap<String, String>>, out: &mut Vec<String>) {
    for (k, v) in labels.into_iter().flatten() {
        if !is_qualified_name(k) {
            out.push(format!("{field} key '{k}' is not a qualified name"));
        }
        if !is_label_value(v) {
            out.push(format!(
                "{field}.{k} value '{v}' is not a label value (at most 63 of A-Z, a-z, 0-9, '-', '_', '.', alphanumeric at both ends)"
            ));
        }
    }
}

fn check_keys(field: &str, map: Option<&BTreeMap<String, String>>, out: &mut Vec<String>) {
    for k in map.into_iter().flatten().map(|(k, _)| k) {
        if !is_qualified_name(k) {
            out.push(format!("{field} key '{k}' is not a qualified name"));
        }
    }
}
