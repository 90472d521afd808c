//! Kubernetes' syntax rules for names idc passes on: object names (DNS-1123), label keys and
//! values, annotation keys and resource quantities. A manifest is checked against them when it
//! is read, whatever its backend, and a generated Job again before it is sent.

/// A DNS-1123 label: at most 63 lowercase alphanumerics or '-', alphanumeric at both ends
/// (Service names, container names, volume names).
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A DNS-1123 subdomain: at most 253 characters, dot-separated DNS-1123 labels (most object names).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// The name of an object that labels refer to (a Kueue LocalQueue or WorkloadPriorityClass): a
/// DNS-1123 subdomain that is also a label value, so at most 63 characters.
pub fn is_labelled_name(s: &str) -> bool {
    s.len() <= 63 && is_dns1123_subdomain(s)
}

/// A label value: empty, or at most 63 alphanumerics, '-', '_' or '.', alphanumeric at both ends.
pub fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    b.is_empty()
        || (b.len() <= 63
            && b.iter()
                .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric())
}

/// A label or annotation key: an optional DNS-1123 subdomain prefix and '/', then a name of at
/// most 63 alphanumerics, '-', '_' or '.', alphanumeric at both ends.
pub fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(is_dns1123_subdomain) && !name.is_empty() && is_label_value(name)
}

/// Whether `q` is a Kubernetes resource quantity (`4`, `0.5`, `500m`, `16Gi`, `1e3`).
pub fn is_quantity(q: &str) -> bool {
    const SUFFIXES: [&str; 13] = [
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "m", "k", "M", "G", "T", "P", "E",
    ];
    let number = SUFFIXES.iter().find_map(|s| q.strip_suffix(s)).unwrap_or(q);
    let (mantissa, exp) = match number.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (number, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some((a, b)) => (digits(a) || a.is_empty()) && digits(b),
        None => digits(mantissa),
    };
    mantissa_ok && exp.is_none_or(|e| digits(e.trim_start_matches(['+', '-'])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns1123() {
        for ok in ["a", "cnn-20261126-101010-ab12", "0abc", &"a".repeat(63)] {
            assert!(is_dns1123_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!is_dns1123_label(bad), "{bad}");
        }
        assert!(is_dns1123_subdomain("system-cluster-critical.example.com"));
        assert!(!is_dns1123_subdomain("a..b"));
        assert!(!is_dns1123_subdomain(&"a.".repeat(127)));
        for ok in ["gpu-queue", "team-a.gpu", &"q".repeat(63)] {
            assert!(is_labelled_name(ok), "{ok}");
        }
        for bad in ["", "GPU", "gpu_queue", "-q", "q.", &"q".repeat(64)] {
            assert!(!is_labelled_name(bad), "{bad}");
        }
    }

    #[test]
    fn quantities() {
        for q in ["4", "500m", "16Gi", "0.5", "1e3", "2k"] {
            assert!(is_quantity(q), "{q}");
        }
        for q in ["", "4 cores", "16GB", "-1", "1.2.3", "Gi"] {
            assert!(!is_quantity(q), "{q}");
        }
    }

    #[test]
    fn labels() {
        for ok in ["", "simple_cnn", "v1.2.3", "A-b_c.D", &"x".repeat(63)] {
            assert!(is_label_value(ok), "{ok}");
        }
        for bad in ["_a", "a.", "a b", "a/b", &"x".repeat(64)] {
            assert!(!is_label_value(bad), "{bad}");
        }
        for ok in [
            "app.kubernetes.io/name",
            "idc.dev/run",
            "nvidia.com/gpu",
            "run",
        ] {
            assert!(is_qualified_name(ok), "{ok}");
        }
        for bad in ["", "/a", "a/", "Example.com/a", "a/b/c", "a b"] {
            assert!(!is_qualified_name(bad), "{bad}");
        }
    }
}
