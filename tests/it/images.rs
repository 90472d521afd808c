//! Static checks of the two Dockerfiles (worker/Dockerfile, src/Dockerfile), since no docker
//! engine builds them in CI: what they copy exists and survives .dockerignore, they run as a
//! numeric non-root user, and their pins agree with the rest of the repository.

use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Instructions as (KEYWORD, arguments), with continuation lines joined and comments dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = vec![];
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (keyword, args) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((keyword.to_uppercase(), args.trim().to_string()));
                current.clear();
            }
        }
    }
    assert!(current.is_empty(), "a continuation line ends the file");
    out
}

/// The root-relative paths .dockerignore leaves out of the build context (its simple patterns).
fn ignored(path: &str) -> bool {
    read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.contains('*'))
        .any(|pattern| {
            let pattern = pattern.trim_end_matches('/');
            path == pattern || path.starts_with(&format!("{pattern}/"))
        })
}

fn check_common(dockerfile: &str, binary: &str) -> Vec<(String, String)> {
    let text = read(dockerfile);
    assert!(
        text.starts_with("# syntax=docker/dockerfile:1"),
        "{dockerfile}: RUN --mount needs BuildKit's syntax"
    );
    let ins = instructions(&text);
    let known = [
        "FROM",
        "ARG",
        "RUN",
        "ENV",
        "WORKDIR",
        "COPY",
        "USER",
        "ENTRYPOINT",
        "CMD",
    ];
    for (k, _) in &ins {
        assert!(known.contains(&k.as_str()), "{dockerfile}: unexpected {k}");
    }
    // Build context: every COPY from it exists and is not ignored.
    for (_, args) in ins.iter().filter(|(k, _)| k == "COPY") {
        if args.starts_with("--from=") {
            continue;
        }
        let words: Vec<&str> = args.split_whitespace().collect();
        for src in &words[..words.len() - 1] {
            assert!(
                root().join(src).exists(),
                "{dockerfile}: COPY {src}: missing"
            );
            assert!(
                !ignored(src),
                "{dockerfile}: COPY {src}: left out by .dockerignore"
            );
        }
    }
    // The rust builder is at least the workspace's rust-version.
    let cargo: toml_lite::Table = toml_lite::parse(&read("Cargo.toml"));
    let min = cargo.get("workspace.package", "rust-version");
    let from = ins
        .iter()
        .find(|(k, _)| k == "FROM")
        .map(|(_, a)| a.clone())
        .unwrap();
    let tag = from
        .strip_prefix("rust:")
        .unwrap_or_else(|| panic!("{dockerfile}: builder is {from}"));
    let version = |v: &str| -> (u32, u32) {
        let mut it = v.split(['.', '-', ' ']).map(|x| x.parse().unwrap_or(0));
        (it.next().unwrap(), it.next().unwrap())
    };
    assert!(
        version(tag) >= version(&min),
        "{dockerfile}: rust {tag} < {min}"
    );
    // The final stage runs the binary as a numeric, non-root user.
    let last_from = ins.iter().rposition(|(k, _)| k == "FROM").unwrap();
    let runtime = &ins[last_from..];
    let user = runtime
        .iter()
        .rev()
        .find(|(k, _)| k == "USER")
        .map(|(_, a)| a.as_str())
        .unwrap_or_else(|| panic!("{dockerfile}: no USER"));
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{dockerfile}: USER {user} is not numeric"));
    assert_ne!(uid, 0, "{dockerfile}: runs as root");
    let entry = runtime.iter().find(|(k, _)| k == "ENTRYPOINT").unwrap();
    assert_eq!(entry.1, format!("[\"{binary}\"]"), "{dockerfile}");
    ins
}

#[test]
fn worker_image() {
    let ins = check_common("worker/Dockerfile", "idc-worker");
    let text = read("worker/Dockerfile");
    // The same torch as .ci/env.sh, so the image runs what CI tested.
    let env = read(".ci/env.sh");
    let pinned = env
        .lines()
        .find_map(|l| l.strip_prefix("IDC_TORCH_VERSION="))
        .expect("IDC_TORCH_VERSION in .ci/env.sh");
    assert!(
        ins.contains(&("ARG".into(), format!("TORCH_VERSION={pinned}"))),
        "worker/Dockerfile: TORCH_VERSION must be {pinned}"
    );
    assert!(text.contains("LIBTORCH_USE_PYTORCH=1"));
    assert!(text.contains("cargo build --release -p idc-worker --locked"));
    // The binary's rpath (the builder's libtorch) is where the runtime stage puts libtorch.
    let lib = "/opt/torch/torch/lib";
    assert!(text.contains(&format!("COPY --from=builder {lib} {lib}")));
    assert!(text.contains(&format!("LD_LIBRARY_PATH={lib}")));
    assert!(text.contains("RUNPATH.*/opt/torch/torch/lib"));
    // Slides are read with the OpenSlide the worker loads at run time.
    assert!(
        text.contains("libopenslide0"),
        "worker/Dockerfile: install libopenslide0"
    );
}

#[test]
fn idcctl_image() {
    check_common("src/Dockerfile", "idcctl");
    assert!(read("src/Dockerfile").contains("--bin idcctl --locked"));
}

#[test]
fn dockerignore_keeps_build_output_out() {
    for p in ["target", ".venv", ".idc", "data"] {
        assert!(ignored(p), ".dockerignore must leave out {p}");
    }
    for p in ["src", "worker", "Cargo.lock"] {
        assert!(!ignored(p), ".dockerignore must keep {p}");
    }
}

/// Just enough TOML for `[section]` + `key = "value"` lines, so the test needs no TOML crate.
mod toml_lite {
    pub struct Table(Vec<(String, String, String)>);

    pub fn parse(text: &str) -> Table {
        let mut section = String::new();
        let mut out = vec![];
        for line in text.lines().map(str::trim) {
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = s.to_string();
            } else if let Some((k, v)) = line.split_once('=') {
                let v = v.trim().trim_matches('"').to_string();
                out.push((section.clone(), k.trim().to_string(), v));
            }
        }
        Table(out)
    }

    impl Table {
        pub fn get(&self, section: &str, key: &str) -> String {
            self.0
                .iter()
                .find(|(s, k, _)| s == section && k == key)
                .map(|(_, _, v)| v.clone())
                .unwrap_or_else(|| panic!("[{section}] {key} not found"))
        }
    }
}
