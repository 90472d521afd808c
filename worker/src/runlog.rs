//! The worker's log: each line to stdout (what `kubectl logs` shows) and to the bucket: a run's
//! `logs/attempt-N.log`, or a prediction job's `worker.log`. Written whole on each flush, by
//! hand and by a timer while there are new lines, so that `idcctl logs -f` follows a slow
//! start (dataset load, pretrained weights) as it happens.

use bytes::Bytes;
use idc::store::{Store, StoreError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the timer writes a log that has new lines (as often as training steps wrote it
/// before the timer).
pub const FLUSH_EVERY: Duration = Duration::from_secs(2);

pub struct RunLog {
    inner: Arc<Inner>,
}

struct Inner {
    key: String,
    /// The lines so far, and how many of them the bucket holds.
    lines: Mutex<(Vec<String>, usize)>,
    /// Held across each write, so that writes land in order: a later one never holds fewer
    /// lines than an earlier one.
    writing: tokio::sync::Mutex<()>,
}

/// The timer of [`RunLog::flush_every`]. Dropping it stops the timer after any write under
/// way; [`FlushTimer::stop`] also waits for that write.
pub struct FlushTimer {
    stop: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl FlushTimer {
    /// Stops the timer once any write under way has landed, so that a flush after this one
    /// is the last write.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for FlushTimer {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

impl RunLog {
    /// A log for attempt `attempt` (1-based).
    pub fn new(attempt: u32) -> Self {
        Self::at(&idc::layout::run::log(attempt))
    }

    /// A log kept at `key` of the store it is flushed to.
    pub fn at(key: &str) -> Self {
        Self {
            inner: Arc::new(Inner {
                key: key.to_string(),
                lines: Mutex::new((vec![], 0)),
                writing: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Prints and keeps one line, with a UTC timestamp.
    pub fn line(&self, msg: &str) {
        let line = format!("{} {msg}", idc::clock::now_rfc3339());
        println!("{line}");
        self.inner.lines.lock().expect("log lock").0.push(line);
    }

    /// Writes the whole log so far to the bucket.
    pub async fn flush(&self, out: &Store) -> Result<(), StoreError> {
        self.inner.flush(out, true).await
    }

    /// Writes the log to `out` every `every` while it has lines the bucket lacks, on `rt`'s
    /// threads (the caller's may be busy in libtorch), until the timer is dropped.
    pub fn flush_every(
        &self,
        rt: &tokio::runtime::Runtime,
        out: &Store,
        every: Duration,
    ) -> FlushTimer {
        let (inner, out) = (self.inner.clone(), out.clone());
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = rt.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    _ = stopped.wait_for(|s| *s) => return,
                    _ = tick.tick() => {}
                }
                // Not raced against the stop: a write under way lands before the timer ends.
                if let Err(e) = inner.flush(&out, false).await {
                    eprintln!("warning: could not write the log to the bucket: {e}");
                }
            }
        });
        FlushTimer {
            stop,
            task: Some(task),
        }
    }
}

impl Inner {
    /// Writes the lines so far; with `always` false, only when some are not in the bucket yet.
    async fn flush(&self, out: &Store, always: bool) -> Result<(), StoreError> {
        let _order = self.writing.lock().await;
        let (mut text, count) = {
            let lines = self.lines.lock().expect("log lock");
            if !always && lines.1 == lines.0.len() {
                return Ok(());
            }
            (lines.0.join("\n"), lines.0.len())
        };
        text.push('\n');
        out.put(&self.key, Bytes::from(text)).await?;
        let mut lines = self.lines.lock().expect("log lock");
        lines.1 = lines.1.max(count);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines of the log object at `path`, or none while it does not exist.
    fn written(path: &std::path::Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .map(|t| {
                t.lines()
                    .map(|l| l.split_once(' ').unwrap().1.to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn the_timer_writes_new_lines_without_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let out = Store::open(&format!("file://{}", dir.path().display())).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let log = RunLog::at("worker.log");
        let path = dir.path().join("worker.log");
        let timer = log.flush_every(&rt, &out, Duration::from_millis(20));
        // What a slow start logs before its first step, this thread busy meanwhile.
        log.line("run r: simple_cnn on Cpu, dataset file:///ds");
        let waited = std::time::Instant::now();
        while written(&path).is_empty() && waited.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            written(&path),
            ["run r: simple_cnn on Cpu, dataset file:///ds"]
        );
        log.line("dataset ds: loaded");
        let waited = std::time::Instant::now();
        while written(&path).len() < 2 && waited.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(written(&path).len(), 2);
        // Nothing new: the timer does not rewrite the object.
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            modified
        );
        // Once stopped, it writes no more.
        rt.block_on(timer.stop());
        log.line("after");
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(written(&path).len(), 2);
        rt.block_on(log.flush(&out)).unwrap();
        assert_eq!(written(&path).len(), 3);
    }
}
