//! `idcctl` as a user runs it: messages, output formats and exit codes.

use crate::common::*;

#[test]
fn synth_stage_show_and_restage() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let src = src.to_str().unwrap();
    let out = idcctl(&[
        "dataset",
        "synth",
        "--out",
        src,
        "--patients",
        "5",
        "--per-patient",
        "40",
        "--corrupt",
        "1",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("wrote 200 patches"),
        "{}",
        text(&out.stderr)
    );

    let url = format!("file://{}/bucket/ds", tmp.path().display());
    let out = idcctl(&["stage", src, "--to", &url, "--shard-records", "64"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    for want in [
        "train",
        "val",
        "test",
        "total",
        "199",
        "skipped 1 files: 1 not a readable PNG",
    ] {
        assert!(table.contains(want), "summary lacks {want:?}:\n{table}");
    }

    let out = idcctl(&["stage", src, "--to", &url, "--shard-records", "64"]);
    assert!(out.status.success());
    assert!(
        text(&out.stderr).contains("nothing to do"),
        "{}",
        text(&out.stderr)
    );

    let out = idcctl(&["dataset", "show", &url, "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let records: u64 = json["splits"]
        .as_object()
        .unwrap()
        .values()
        .map(|s| s["records"].as_u64().unwrap())
        .sum();
    assert_eq!(records, 199);
    assert_eq!(json["skipped"].as_array().unwrap().len(), 1);

    let out = idcctl(&["dataset", "show", &url, "-o", "yaml"]);
    let yaml: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    assert_eq!(yaml["format_version"].as_u64(), Some(1));

    // Other options over an existing dataset need --force; the old one stays readable.
    let out = idcctl(&["stage", src, "--to", &url, "--split", "random"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("already holds a different dataset"),
        "{}",
        text(&out.stderr)
    );
    assert!(idcctl(&["dataset", "show", &url]).status.success());
}

#[test]
fn user_errors_exit_2_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("file://{}/b", tmp.path().display());
    let cases: [(&[&str], &str); 5] = [
        (
            &["stage", "/no/such/download", "--to", &url],
            "source /no/such/download does not exist",
        ),
        (
            &["stage", ".", "--to", "gs://bucket/x"],
            "unsupported scheme 'gs'",
        ),
        (
            &["stage", ".", "--to", &url, "--val", "ten"],
            "neither a patch count",
        ),
        (&["dataset", "show", &url], "no staged dataset at"),
        (
            &["stage", tmp.path().to_str().unwrap(), "--to", &url],
            "no patches found in",
        ),
    ];
    for (args, want) in cases {
        let out = idcctl(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(want),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn unreachable_storage_names_the_url_and_hides_credentials() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    synth(&src, 3, 10, 0);
    let env = [
        ("AWS_ENDPOINT", "http://127.0.0.1:9"),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_REGION", "garage"),
        ("AWS_ACCESS_KEY_ID", "GKidcTestKey"),
        ("AWS_SECRET_ACCESS_KEY", "do-not-print-this-secret"),
    ];
    let out = idcctl_env(
        &[
            "stage",
            src.to_str().unwrap(),
            "--to",
            "s3://idc-bucket/datasets/x",
        ],
        &env,
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("s3://idc-bucket/datasets/x/manifest.json"),
        "{err}"
    );
    assert!(err.contains("reachable"), "{err}");
    assert!(!err.contains("do-not-print-this-secret"), "{err}");
}

#[test]
fn a_corrupt_run_record_is_named_never_taken_for_no_run() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("bucket/runs/broken-1");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("status.json"), b"{\"run_id\": \"broken-1\", \"pha").unwrap();
    let storage = format!("file://{}/bucket", tmp.path().display());
    let env = [("IDC_STORAGE", storage.as_str())];
    let key = format!("{}/status.json", run.display());

    let out = idcctl_env(&["status", "broken-1"], &env);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&key) && err.contains("is corrupt"), "{err}");
    assert!(!err.contains("no run"), "{err}");

    let out = idcctl_env(&["list", "-o", "json"], &env);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: run broken-1:") && err.contains("is corrupt"),
        "{err}"
    );

    let out = idcctl_env(&["resume", "broken-1"], &env);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read(run.join("status.json")).unwrap(),
        b"{\"run_id\": \"broken-1\", \"pha",
        "the record is left as it was"
    );
}
