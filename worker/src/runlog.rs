//! The worker's log: each line to stdout (what `kubectl logs` shows) and to the bucket: a run's
//! `logs/attempt-N.log`, or a prediction job's `worker.log`.

use bytes::Bytes;
use idc::store::{Store, StoreError};
use std::sync::Mutex;

pub struct RunLog {
    key: String,
    lines: Mutex<Vec<String>>,
}

impl RunLog {
    /// A log for attempt `attempt` (1-based).
    pub fn new(attempt: u32) -> Self {
        Self {
            key: idc::layout::run::log(attempt),
            lines: Mutex::new(vec![]),
        }
    }

    /// A log kept at `key` of the store it is flushed to.
    pub fn at(key: &str) -> Self {
        Self {
            key: key.to_string(),
            lines: Mutex::new(vec![]),
        }
    }

    /// Prints and keeps one line, with a UTC timestamp.
    pub fn line(&self, msg: &str) {
        let line = format!("{} {msg}", idc::clock::now_rfc3339());
        println!("{line}");
        self.lines.lock().expect("log lock").push(line);
    }

    /// Writes the whole log so far to the bucket.
    pub async fn flush(&self, out: &Store) -> Result<(), StoreError> {
        let mut text = self.lines.lock().expect("log lock").join("\n");
        text.push('\n');
        out.put(&self.key, Bytes::from(text)).await
    }
}
