//! Attempt records: what each attempt of a run leaves in the bucket (`attempts/N.json`): its
//! number, where it ran, when it started and ended, and its exit code. The worker writes its own
//! at start and at its end; `idcctl` completes one from the pod's status when the worker could
//! not (killed). Unlike pods, which an eviction, a cancel or a Job's TTL deletes, these records
//! stay, so attempts are numbered and explained from them.

use crate::layout::run as keys;
use crate::store::{Store, StoreError};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// One attempt's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// 1-based, in the order the attempts started.
    pub attempt: u32,
    /// The pod it ran in (Kubernetes), else none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// The worker's exit code (negative: killed by that signal); none while it runs, or when
    /// its end was never seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// How it ended, in a few words ("stopped on SIGTERM after writing a checkpoint").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
}

impl AttemptRecord {
    /// The record of an attempt starting now.
    pub fn starting(attempt: u32, pod: Option<String>) -> Self {
        Self {
            attempt,
            pod,
            started_at: crate::clock::now_rfc3339(),
            finished_at: None,
            exit_code: None,
            ended: None,
        }
    }

    /// The same record, ended now with `exit_code`.
    pub fn ended_with(mut self, exit_code: i32, how: impl Into<String>) -> Self {
        self.finished_at = Some(crate::clock::now_rfc3339());
        self.exit_code = Some(exit_code);
        self.ended = Some(how.into());
        self
    }
}

/// How an exit code reads ("succeeded", "found bad input (exit code 2)", ...).
pub fn describe_exit(code: i32) -> String {
    use crate::exit::ExitCode;
    match code {
        0 => "succeeded".into(),
        c if c == ExitCode::UserError as i32 => "found bad input (exit code 2)".into(),
        c if c == ExitCode::Preempted as i32 => {
            "stopped on SIGTERM after writing a checkpoint (exit code 3)".into()
        }
        // unsigned_abs: a stored code of i32::MIN has no negation.
        c if c < 0 => format!("was killed by signal {}", c.unsigned_abs()),
        c => format!("exited with code {c}"),
    }
}

/// Writes (or replaces) the record of its attempt.
pub async fn write(run: &Store, r: &AttemptRecord) -> Result<(), StoreError> {
    let body = serde_json::to_vec_pretty(r).expect("attempt records serialize");
    run.put(&keys::attempt_record(r.attempt), Bytes::from(body))
        .await
}

/// The attempt record stored at `url`: one that does not parse is [`StoreError::Corrupt`],
/// naming it.
pub fn parse(url: &str, bytes: &[u8]) -> Result<AttemptRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        url: url.to_string(),
        reason: e.to_string(),
    })
}

/// Every attempt record of the run, in attempt order. A record that does not parse is an error
/// naming it: attempts must not be silently renumbered.
pub async fn read_all(run: &Store) -> Result<Vec<AttemptRecord>, StoreError> {
    let listed = run.list(keys::ATTEMPTS).await?;
    let reads = listed.iter().filter_map(|(key, _)| {
        let name = key.strip_prefix(keys::ATTEMPTS)?.strip_prefix('/')?;
        name.strip_suffix(".json")?.parse::<u32>().ok()?;
        Some(async move { parse(&run.url_of(key), &run.get(key).await?) })
    });
    let mut records: Vec<AttemptRecord> = futures::future::try_join_all(reads).await?;
    records.sort_by_key(|r| r.attempt);
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_round_trip_in_attempt_order() {
        let dir = tempfile::tempdir().unwrap();
        let run = Store::open(dir.path().to_str().unwrap()).unwrap();
        for n in [10, 2, 1] {
            write(&run, &AttemptRecord::starting(n, Some(format!("p{n}"))))
                .await
                .unwrap();
        }
        let ended = AttemptRecord::starting(2, Some("p2".into())).ended_with(3, describe_exit(3));
        write(&run, &ended).await.unwrap();
        let all = read_all(&run).await.unwrap();
        assert_eq!(
            all.iter().map(|r| r.attempt).collect::<Vec<_>>(),
            [1, 2, 10]
        );
        assert_eq!(all[1].exit_code, Some(3));
        assert!(all[1].ended.as_deref().unwrap().contains("SIGTERM"));
    }

    #[tokio::test]
    async fn a_corrupt_record_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let run = Store::open(dir.path().to_str().unwrap()).unwrap();
        run.put(&keys::attempt_record(1), Bytes::from_static(b"{not json"))
            .await
            .unwrap();
        let e = read_all(&run).await.unwrap_err().to_string();
        assert!(
            e.contains("attempts/1.json") && e.contains("corrupt"),
            "{e}"
        );
    }

    mod fuzz {
        use super::*;
        use crate::fuzz::{bytes, config, corrupted};
        use proptest::prelude::*;

        const URL: &str = "file:///b/runs/r/attempts/1.json";

        fn read_or_name(bytes: &[u8]) {
            match parse(URL, bytes) {
                // A record read back is described without panicking.
                Ok(r) => drop(r.exit_code.map(describe_exit)),
                Err(e) => assert!(e.to_string().contains(URL), "{e}"),
            }
        }

        proptest! {
            #![proptest_config(config(256))]

            #[test]
            fn any_bytes(b in bytes(256)) {
                read_or_name(&b);
            }

            #[test]
            fn corrupted_records(b in corrupted(
                serde_json::to_vec_pretty(
                    &AttemptRecord::starting(2, Some("p".into())).ended_with(-9, "killed"),
                )
                .unwrap(),
            )) {
                read_or_name(&b);
            }

            #[test]
            fn any_exit_code(code in any::<i32>()) {
                drop(describe_exit(code));
            }
        }
    }
}
