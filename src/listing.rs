//! Reading many runs in few round trips: which runs `idcctl list` shows (newest first, from the
//! run index: one listing request gives the newest 1,000 while the index was found complete in
//! the last [`RECHECK`]; otherwise the run folders are listed too, and runs from before the
//! index are indexed on the way), what it and `status` read of each (a finished run's record
//! carries its metrics summary; reads go [`READS`] at a time), and [`Clusters`], which connects
//! to each cluster once and keeps a failing one from holding up the runs of the others.

use crate::backend::kube::Kubernetes;
use crate::backend::kube::cluster::Cluster;
use crate::backend::{BackendError, RunBackend, Target, local};
use crate::experiment::Backend;
use crate::layout::{self, run as keys};
use crate::run::{self, MetricsSummary, Phase, Progress, RunStatus, Summary};
use crate::spec::RunSpec;
use crate::store::{Store, StoreError};
use bytes::Bytes;
use futures::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// Reads in flight at a time: at a 30 ms round trip, about 4,000 small records a second (5,000
/// runs in 1.2 s), far below what an object store serves; a filtered listing reads at most this
/// many runs beyond the last it shows.
pub const READS: usize = 128;

/// Runs `list` shows when not told otherwise.
pub const DEFAULT_LIMIT: usize = 50;

/// Keys one S3 listing request returns.
const LIST_PAGE: usize = 1000;

/// How long after `list` found every run folder indexed it reads the index alone (a run made
/// by an idcctl from before the index shows up within this).
pub const RECHECK: std::time::Duration = std::time::Duration::from_secs(600);

/// Which runs to list.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Show at most this many (newest first); `None`: all.
    pub limit: Option<usize>,
    /// Only runs in one of these phases (as brought up to date); empty: any.
    pub phases: Vec<Phase>,
    /// Only runs of this experiment (the manifest's `name`; a sweep's trials carry its base's).
    pub experiment: Option<String>,
}

/// What `list` found.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Newest first.
    pub rows: Vec<Summary>,
    /// Whether runs were left unread once the limit was reached (some may match).
    pub more: bool,
    /// What the user should know (a line each, without a `warning: ` label): corrupt records,
    /// clusters that could not be asked.
    pub warnings: Vec<String>,
}

/// Warnings gathered by reads running at the same time.
#[derive(Default)]
struct Warnings(Mutex<Vec<String>>);

impl Warnings {
    fn push(&self, w: String) {
        self.0.lock().expect("not poisoned").push(w);
    }
}

/// The runs of the bucket at `root`, newest first, read as `opts` says; unfinished runs are
/// brought up to date through `clusters`. Only the runs shown are read (with a filter, runs in
/// order until the limit's worth match, and those in flight then).
pub async fn list(
    root: &Store,
    opts: &ListOptions,
    clusters: &Clusters,
) -> Result<Listing, StoreError> {
    let warnings = Warnings::default();
    let limit = opts.limit.unwrap_or(usize::MAX);
    let filtered = !opts.phases.is_empty() || opts.experiment.is_some();
    // The newest few may come from the index alone; all runs, or a filter, need them all.
    let want = opts.limit.filter(|_| !filtered);
    let mut found = runs_newest_first(root, want, &warnings).await?;
    let mut rows = vec![];
    let mut next = 0;
    loop {
        while rows.len() < limit && next < found.ids.len() {
            // Without a filter the runs to show are the next ones (more only where one turns
            // out gone or corrupt); with one, runs are read in order until enough match.
            let want = if filtered {
                found.ids.len()
            } else {
                limit - rows.len()
            };
            let batch = &found.ids[next..found.ids.len().min(next.saturating_add(want))];
            let mut stream = futures::stream::iter(batch)
                .map(|id| row(root, id, found.read.remove(id), opts, clusters, &warnings))
                .buffered(READS);
            while let Some(r) = stream.next().await {
                next += 1;
                if let Some(r) = r? {
                    rows.push(r);
                    if rows.len() >= limit {
                        break;
                    }
                }
            }
        }
        if rows.len() >= limit || found.whole {
            break;
        }
        // Deleted runs took the places of runs to show in the part of the index read.
        let all = runs_newest_first(root, None, &warnings).await?;
        found.ids.truncate(next);
        let done: HashSet<&String> = found.ids.iter().collect();
        let rest: Vec<String> = all
            .ids
            .into_iter()
            .filter(|id| !done.contains(id))
            .collect();
        found.ids.extend(rest);
        found.read = all.read;
        found.whole = true;
    }
    Ok(Listing {
        rows,
        more: next < found.ids.len() || !found.whole,
        warnings: warnings.0.into_inner().expect("not poisoned"),
    })
}

/// One run's row, or `None` when it is filtered out, gone or its record is corrupt (named in
/// a warning). `recorded` is its record when already read.
async fn row(
    root: &Store,
    id: &str,
    recorded: Option<RunStatus>,
    opts: &ListOptions,
    clusters: &Clusters,
    warnings: &Warnings,
) -> Result<Option<Summary>, StoreError> {
    let run = run::run_store(root, id);
    let s = match recorded {
        Some(s) => s,
        None => match read_record(&run, id, warnings).await? {
            Some(s) => s,
            None => return Ok(None),
        },
    };
    if opts.experiment.as_ref().is_some_and(|e| *e != s.experiment) {
        return Ok(None);
    }
    let s = clusters.refresh(&run, s).await.unwrap_or_else(|stale| {
        warnings
            .0
            .lock()
            .expect("not poisoned")
            .extend(stale.warning);
        stale.status
    });
    if !opts.phases.is_empty() && !opts.phases.contains(&s.phase) {
        return Ok(None);
    }
    let metrics = match s.summary_of_end() {
        Some(m) => m.clone(),
        // Active, or recorded before summaries were: its metrics file says.
        None => MetricsSummary::of(&run::read_metrics(&run).await?),
    };
    Ok(Some(Summary::of(&s, &metrics)))
}

/// A run's record; `None` when it has none, or a corrupt one (named in a warning: the others
/// are still listed).
async fn read_record(
    run: &Store,
    id: &str,
    warnings: &Warnings,
) -> Result<Option<RunStatus>, StoreError> {
    match run::read_status(run).await {
        Ok(s) => Ok(s),
        Err(e @ StoreError::Corrupt { .. }) => {
            warnings.push(format!("run {id}: {e}"));
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Runs of the bucket, newest first.
struct Found {
    ids: Vec<String>,
    /// The records read on the way (of runs that were not indexed yet).
    read: HashMap<String, RunStatus>,
    /// Whether `ids` holds every run; else the newest part of the index.
    whole: bool,
}

/// The runs of the bucket, newest first: the newest `want` and more (a request's worth of
/// the index) while the index was recently found complete, else all of them (`want: None`:
/// all), runs missing from the index indexed on the way.
async fn runs_newest_first(
    root: &Store,
    want: Option<usize>,
    warnings: &Warnings,
) -> Result<Found, StoreError> {
    if let Some(n) = want {
        let (checked, newest) = tokio::join!(
            checked_recently(root),
            root.list_first(layout::RUN_INDEX, n.max(LIST_PAGE))
        );
        if checked {
            let (keys, whole) = newest?;
            let times = keys
                .iter()
                .filter_map(|k| layout::parse_run_index_key(k))
                .map(|(t, id)| (t, id.to_string()))
                .collect();
            return Ok(Found {
                ids: newest_first(times, None),
                read: HashMap::new(),
                whole,
            });
        }
    }
    // The index and the run folders, side by side: each a request per 1,000 runs.
    let (index, folders) = tokio::join!(
        root.list(layout::RUN_INDEX),
        root.list_folders(layout::RUNS)
    );
    let indexed: Vec<(u64, String)> = index?
        .iter()
        .filter_map(|(k, _)| layout::parse_run_index_key(k))
        .map(|(t, id)| (t, id.to_string()))
        .collect();
    let folders = folders?;
    let known: HashSet<&str> = indexed.iter().map(|(_, id)| id.as_str()).collect();
    let missing: Vec<String> = folders
        .iter()
        .filter(|f| !known.contains(f.as_str()))
        .cloned()
        .collect();
    let (healed, complete) = index_missing(root, missing, warnings).await?;
    if complete {
        // Only a speed-up: a bucket this user may only read is checked each time.
        let now = Bytes::from(crate::clock::now_rfc3339());
        let _ = root.put(layout::RUN_INDEX_CHECKED, now).await;
    }
    let mut times = indexed;
    times.extend(healed.iter().map(|(t, s)| (*t, s.run_id.clone())));
    let read = healed
        .into_iter()
        .map(|(_, s)| (s.run_id.clone(), s))
        .collect();
    Ok(Found {
        ids: newest_first(times, Some(&folders)),
        read,
        whole: true,
    })
}

/// Whether `list` found every run folder indexed within [`RECHECK`].
async fn checked_recently(root: &Store) -> bool {
    let Ok(Some(b)) = root.get_opt(layout::RUN_INDEX_CHECKED).await else {
        return false;
    };
    crate::clock::seconds_since(String::from_utf8_lossy(&b).trim())
        .is_some_and(|age| (-60.0..RECHECK.as_secs_f64()).contains(&age))
}

/// The run ids that have a creation time in `times` (Unix ms, run id; an id may appear more
/// than once) and, when given, a folder in `folders`, newest first, ties by id.
fn newest_first(times: Vec<(u64, String)>, folders: Option<&[String]>) -> Vec<String> {
    let folders: Option<HashSet<&str>> = folders.map(|f| f.iter().map(String::as_str).collect());
    let mut newest: HashMap<String, u64> = HashMap::new();
    for (t, id) in times {
        // An index entry without a folder is a run deleted since.
        if folders.as_ref().is_none_or(|f| f.contains(id.as_str())) {
            let e = newest.entry(id).or_insert(t);
            *e = (*e).max(t);
        }
    }
    let mut out: Vec<(u64, String)> = newest.into_iter().map(|(id, t)| (t, id)).collect();
    out.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    out.into_iter().map(|(_, id)| id).collect()
}

/// Reads the records of run folders the index lacks (runs made before it existed) and indexes
/// them at their `created_at`; whether every one that has a record is indexed now. Folders
/// without a record are no runs (yet); a bucket this user may only read is listed all the
/// same, with one warning.
async fn index_missing(
    root: &Store,
    missing: Vec<String>,
    warnings: &Warnings,
) -> Result<(Vec<(u64, RunStatus)>, bool), StoreError> {
    let unwritable = Mutex::new(None);
    let found: Vec<Result<Option<(u64, RunStatus)>, StoreError>> = futures::stream::iter(&missing)
        .map(|id| async {
            let Some(s) = read_record(&run::run_store(root, id), id, warnings).await? else {
                return Ok(None);
            };
            let ms = crate::clock::seconds_of(&s.created_at).map_or(0, |t| t.max(0) as u64) * 1000;
            if let Err(e) = root.put(&layout::run_index_key(ms, id), Bytes::new()).await {
                unwritable.lock().expect("not poisoned").get_or_insert(e);
            }
            Ok(Some((ms, s)))
        })
        .buffered(READS)
        .collect()
        .await;
    let unwritable = unwritable.into_inner().expect("not poisoned");
    let complete = unwritable.is_none();
    if let Some(e) = unwritable {
        warnings.push(format!(
            "runs made before the run index could not be indexed ({e}); they are listed, but `list` reads all of them each time"
        ));
    }
    let healed = found
        .into_iter()
        .filter_map(Result::transpose)
        .collect::<Result<_, _>>()?;
    Ok((healed, complete))
}

/// A run's record brought up to date, with its spec's epochs and its metrics (`idcctl
/// status`): the three objects are read side by side. `None` when the run does not exist; the
/// warning says why the recorded phase is shown, if it is.
pub async fn progress(
    run: &Store,
    clusters: &Clusters,
) -> Result<Option<(Progress, Option<String>)>, StoreError> {
    let (status, spec, metrics) = tokio::join!(
        run::read_status(run),
        run.get_opt(keys::SPEC),
        run::read_metrics(run)
    );
    let Some(s) = status? else {
        return Ok(None);
    };
    let (s, warning) = match clusters.refresh(run, s).await {
        Ok(s) => (s, None),
        Err(stale) => (stale.status, stale.warning),
    };
    let epochs = spec?
        .and_then(|b| serde_yaml::from_slice::<RunSpec>(&b).ok())
        .map_or(0, |r| r.train.epochs);
    Ok(Some((Progress::of(s, epochs, &metrics?), warning)))
}

/// A run whose record could not be brought up to date: the recorded one, and what to tell the
/// user (a line without a `warning: ` label; once per cluster: `None` for its later runs).
#[derive(Debug)]
pub struct Stale {
    pub status: RunStatus,
    pub warning: Option<String>,
}

/// A (context, namespace) a run's Job lives in.
type TargetKey = (Option<String>, Option<String>);

/// A cluster connected once, or why it could not be.
type Connection = Arc<tokio::sync::OnceCell<Result<Kubernetes, String>>>;

/// The clusters of the runs being read: each (context, namespace) is connected once, and one
/// that fails (its context cannot be loaded, its API server cannot be reached) is not asked
/// again, while the runs of the others are still brought up to date.
pub struct Clusters {
    /// The command's `--context`/`-n`, which override each run's own.
    target: Target,
    connected: Mutex<HashMap<TargetKey, Connection>>,
    failed: Mutex<HashSet<TargetKey>>,
}

impl Clusters {
    pub fn new(target: Target) -> Self {
        Self {
            target,
            connected: Mutex::default(),
            failed: Mutex::default(),
        }
    }

    /// Uses `cluster` for the runs whose Job lives at `target` (a cluster reached otherwise,
    /// such as a mock API server).
    pub fn insert(&self, target: &Target, cluster: Cluster) {
        let cell = tokio::sync::OnceCell::new_with(Some(Ok(Kubernetes::on(cluster))));
        self.connected
            .lock()
            .expect("not poisoned")
            .insert(key_of(target), Arc::new(cell));
    }

    /// Brings an unfinished run's record up to date (`backend::refresh`, and saved when it
    /// changed); a finished one is returned as it is.
    pub async fn refresh(&self, run: &Store, s: RunStatus) -> Result<RunStatus, Stale> {
        if s.phase.is_terminal() {
            return Ok(s);
        }
        let per_run = |s: RunStatus, e: &dyn std::fmt::Display| Stale {
            warning: Some(format!("run {}: showing its recorded phase: {e}", s.run_id)),
            status: s,
        };
        if s.backend == Backend::Local {
            return match local::Local::default().refresh(run, s.clone()).await {
                Ok(s) => Ok(s),
                Err(e) => Err(per_run(s, &e)),
            };
        }
        let target = self.target.for_run(s.cluster.as_ref());
        let key = key_of(&target);
        if self.failed.lock().expect("not poisoned").contains(&key) {
            return Err(Stale {
                status: s,
                warning: None,
            });
        }
        let cell = self
            .connected
            .lock()
            .expect("not poisoned")
            .entry(key.clone())
            .or_default()
            .clone();
        let connected = cell
            .get_or_init(|| async {
                let cluster = target.connect().await.map_err(|e| e.to_string())?;
                Ok(Kubernetes::on(cluster))
            })
            .await;
        let cluster = match connected {
            Ok(c) => c,
            Err(e) => return Err(self.failed(key, s, e)),
        };
        match cluster.refresh(run, s.clone()).await {
            Ok(fresh) => Ok(fresh),
            Err(BackendError::Kube(e)) => Err(self.failed(key, s, &e.to_string())),
            Err(e) => Err(per_run(s, &e)),
        }
    }

    /// Marks the cluster at `key` as failed; the warning comes with its first run only.
    fn failed(&self, key: TargetKey, s: RunStatus, e: &str) -> Stale {
        let place = match &key {
            (Some(c), Some(ns)) => format!("context {c}, namespace {ns}"),
            (Some(c), None) => format!("context {c}"),
            (None, Some(ns)) => format!("the current context, namespace {ns}"),
            (None, None) => "the current context".into(),
        };
        let first = self.failed.lock().expect("not poisoned").insert(key);
        Stale {
            status: s,
            warning: first
                .then(|| format!("showing the recorded phase of the runs on {place}: {e}")),
        }
    }
}

fn key_of(t: &Target) -> TargetKey {
    (t.context.clone(), t.namespace.clone())
}

/// `idcctl status` as text: the phase, the latest epoch's validation metrics with the ETA, the
/// throughput.
pub fn status_text(p: &Progress) -> String {
    let s = &p.status;
    let mut out = format!(
        "run {}  {}  ({} attempt(s) of {}; {})\n",
        s.run_id,
        crate::output::name_of(&s.phase).to_uppercase(),
        s.attempts,
        s.max_attempts,
        s.reason.clone().unwrap_or_default()
    );
    match &p.last_epoch {
        Some(e) => {
            out += &format!("epoch {}/{}: val {}\n", e.epoch, p.epochs, e.val);
            if let Some((eta, left)) = p.eta() {
                out += &format!(
                    "ETA about {eta:.0}s ({left} epochs left at {:.0}s each)\n",
                    e.duration_s
                );
            }
        }
        None => out += "no epoch finished yet\n",
    }
    if let Some(r) = p.images_per_s {
        out += &format!("training throughput {r:.0} images/s\n");
    }
    out
}

/// `idcctl list` as a table: a row a run.
pub fn table(rows: &[Summary]) -> String {
    let mut t = crate::output::table();
    t.set_header([
        "run",
        "phase",
        "model",
        "backend",
        "best val F1",
        "duration",
        "created",
    ]);
    for r in rows {
        t.add_row([
            r.run_id.clone(),
            crate::output::name_of(&r.phase),
            r.model.clone(),
            crate::output::name_of(&r.backend),
            r.best_val_f1.map(|f| format!("{f:.4}")).unwrap_or_default(),
            r.duration_s
                .map(|d| format!("{}m{:02}s", d / 60, d % 60))
                .unwrap_or_default(),
            r.created_at.clone(),
        ]);
    }
    format!("{t}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{BinaryMetrics, Metrics, MetricsRecord};
    use crate::process::ProcessRef;
    use bytes::Bytes;

    fn record(id: &str, experiment: &str, phase: Phase, created: &str) -> RunStatus {
        RunStatus {
            run_id: id.into(),
            experiment: experiment.into(),
            model: "logreg".into(),
            backend: Backend::Local,
            phase,
            attempts: 1,
            max_attempts: 1,
            created_at: created.into(),
            started_at: Some(created.into()),
            finished_at: phase
                .is_terminal()
                .then(|| created.replace("T00:00", "T00:01")),
            exit_codes: vec![],
            reason: None,
            supervisor: None,
            worker: None,
            heartbeat_at: None,
            deadline_s: None,
            cluster: None,
            summary: None,
        }
    }

    fn metrics(f1s: &[f64]) -> Bytes {
        let lines: String = f1s
            .iter()
            .enumerate()
            .map(|(i, &f1)| {
                let r = MetricsRecord::Epoch {
                    epoch: i as u32 + 1,
                    train_loss: 0.5,
                    lr: 0.01,
                    val: Metrics::Binary(BinaryMetrics {
                        f1,
                        ..Default::default()
                    }),
                    duration_s: 1.0,
                    images_per_s: 100.0,
                    best: false,
                };
                serde_json::to_string(&r).unwrap() + "\n"
            })
            .collect();
        Bytes::from(lines)
    }

    /// Writes run `s` with its metrics, and its index entry unless it is from before the index.
    async fn put(root: &Store, s: &RunStatus, f1s: &[f64], indexed: bool) {
        let run = run::run_store(root, &s.run_id);
        run::write_status(&run, s).await.unwrap();
        run.put(keys::METRICS, metrics(f1s)).await.unwrap();
        if indexed {
            let ms = crate::clock::seconds_of(&s.created_at).unwrap() as u64 * 1000;
            root.put(&layout::run_index_key(ms, &s.run_id), Bytes::new())
                .await
                .unwrap();
        }
    }

    fn ids(l: &Listing) -> Vec<&str> {
        l.rows.iter().map(|r| r.run_id.as_str()).collect()
    }

    async fn list_with(root: &Store, opts: ListOptions) -> Listing {
        list(root, &opts, &Clusters::new(Target::default()))
            .await
            .unwrap()
    }

    fn limit(n: usize) -> ListOptions {
        ListOptions {
            limit: Some(n),
            ..Default::default()
        }
    }

    #[test]
    fn newest_first_by_creation_time_not_by_id() {
        let t = |ms, id: &str| (ms, id.to_string());
        let times = vec![
            t(3_000, "a-t001"),
            t(1_000, "zz-20990101-000000-abcd"),
            t(2_000, "m"),
            t(3_000, "a-t000"),
            t(500, "m"),
            t(9_000, "deleted"),
        ];
        let folders: Vec<String> = ["a-t000", "a-t001", "m", "zz-20990101-000000-abcd"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            newest_first(times.clone(), Some(&folders)),
            ["a-t000", "a-t001", "m", "zz-20990101-000000-abcd"]
        );
        assert_eq!(
            newest_first(times, None),
            [
                "deleted",
                "a-t000",
                "a-t001",
                "m",
                "zz-20990101-000000-abcd"
            ]
        );
    }

    /// Four runs whose ids do not sort by age: two from before the index, one `--run-id`, one
    /// sweep trial; and a corrupt record, third newest.
    async fn bucket() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let root = Store::open(&format!("file://{}", dir.path().display())).unwrap();
        let runs = [
            (
                "cnn-20250101-000000-ffff",
                "cnn",
                Phase::Succeeded,
                "2026-04-01T00:00:00Z",
                false,
            ),
            (
                "sweep-t001",
                "sweep",
                Phase::Failed,
                "2026-03-01T00:00:00Z",
                true,
            ),
            (
                "old-20260101-000000-abcd",
                "cnn",
                Phase::Succeeded,
                "2026-01-01T00:00:00Z",
                false,
            ),
        ];
        for (id, exp, phase, created, indexed) in runs {
            put(
                &root,
                &record(id, exp, phase, created),
                &[0.5, 0.7],
                indexed,
            )
            .await;
        }
        let broken = run::run_store(&root, "my-run");
        broken
            .put(keys::STATUS, Bytes::from_static(b"{\"run_id\": \"my-r"))
            .await
            .unwrap();
        root.put(
            &layout::run_index_key(1_770_000_000_000, "my-run"),
            Bytes::new(),
        )
        .await
        .unwrap();
        (dir, root)
    }

    #[tokio::test]
    async fn lists_the_newest_reads_only_those_and_indexes_older_runs() {
        let (_dir, root) = bucket().await;
        let l = list_with(&root, limit(2)).await;
        assert_eq!(ids(&l), ["cnn-20250101-000000-ffff", "sweep-t001"]);
        assert!(l.more);
        // The corrupt record is beyond the limit: never read.
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        // The runs from before the index are in it now.
        let index = root.list(layout::RUN_INDEX).await.unwrap();
        assert_eq!(index.len(), 4, "{index:?}");
        assert_eq!(
            layout::parse_run_index_key(&index[0].0),
            Some((1_775_001_600_000, "cnn-20250101-000000-ffff"))
        );

        let all = list_with(&root, ListOptions::default()).await;
        assert_eq!(
            ids(&all),
            [
                "cnn-20250101-000000-ffff",
                "sweep-t001",
                "old-20260101-000000-abcd"
            ]
        );
        assert!(!all.more);
        assert_eq!(all.warnings.len(), 1, "{:?}", all.warnings);
        assert!(
            all.warnings[0].starts_with("run my-run: ") && all.warnings[0].contains("is corrupt"),
            "{}",
            all.warnings[0]
        );
        assert_eq!(all.rows[0].best_val_f1, Some(0.7));
        assert_eq!(all.rows[0].best_epoch, Some(2));
        assert_eq!(all.rows[0].duration_s, Some(60));
        // A run deleted since it was indexed is not shown.
        root.delete_prefix(&layout::run_prefix("sweep-t001"))
            .await
            .unwrap();
        assert_eq!(
            ids(&list_with(&root, limit(2)).await),
            ["cnn-20250101-000000-ffff", "old-20260101-000000-abcd"]
        );
    }

    #[tokio::test]
    async fn a_recent_check_lets_list_read_the_index_alone() {
        let (_dir, root) = bucket().await;
        list_with(&root, limit(2)).await;
        assert!(checked_recently(&root).await, "every folder was indexed");
        // A run made by an idcctl from before the index, after the check.
        let late = record("late-run", "cnn", Phase::Succeeded, "2026-07-01T00:00:00Z");
        put(&root, &late, &[0.5], false).await;
        let l = list_with(&root, limit(2)).await;
        assert_eq!(ids(&l), ["cnn-20250101-000000-ffff", "sweep-t001"]);
        // --all (and filters) always look at the folders; so does the default once the check
        // is old.
        let all = list_with(&root, ListOptions::default()).await;
        assert_eq!(all.rows[0].run_id, "late-run");
        put(&root, &late, &[0.5], false).await;
        root.put(
            layout::RUN_INDEX_CHECKED,
            Bytes::from("2026-01-01T00:00:00Z"),
        )
        .await
        .unwrap();
        assert!(!checked_recently(&root).await);
        assert_eq!(ids(&list_with(&root, limit(1)).await), ["late-run"]);
    }

    #[tokio::test]
    async fn index_entries_of_deleted_runs_do_not_hide_older_runs() {
        let (_dir, root) = bucket().await;
        list_with(&root, limit(2)).await;
        // More deleted runs than a listing request returns, all newer than the others.
        for i in 0..LIST_PAGE as u64 + 1 {
            let key = layout::run_index_key(1_800_000_000_000 + i, &format!("gone-{i}"));
            root.put(&key, Bytes::new()).await.unwrap();
        }
        let l = list_with(&root, limit(2)).await;
        assert_eq!(ids(&l), ["cnn-20250101-000000-ffff", "sweep-t001"]);
        assert!(l.more);
    }

    #[tokio::test]
    async fn filters_pick_the_newest_matches_as_runs_are_now() {
        let (_dir, root) = bucket().await;
        // A local run whose supervisor is gone: recorded running, lost now.
        let mut gone = record("gone", "cnn", Phase::Running, "2026-05-01T00:00:00Z");
        gone.supervisor = None;
        put(&root, &gone, &[0.6], true).await;
        // One that runs under a live supervisor (this test).
        let mut live = record("live", "other", Phase::Running, "2026-06-01T00:00:00Z");
        live.supervisor = Some(ProcessRef::current());
        put(&root, &live, &[0.4], true).await;

        let only = |phases: Vec<Phase>, experiment: Option<&str>, n: Option<usize>| ListOptions {
            limit: n,
            phases,
            experiment: experiment.map(String::from),
        };
        let l = list_with(&root, only(vec![Phase::Lost], None, None)).await;
        assert_eq!(ids(&l), ["gone"]);
        assert_eq!(l.rows[0].best_val_f1, Some(0.6));
        let l = list_with(&root, only(vec![Phase::Running], None, None)).await;
        assert_eq!(ids(&l), ["live"]);
        let l = list_with(&root, only(vec![Phase::Succeeded], Some("cnn"), Some(1))).await;
        assert_eq!(ids(&l), ["cnn-20250101-000000-ffff"]);
        assert!(l.more);
        let l = list_with(&root, only(vec![], Some("sweep"), None)).await;
        assert_eq!(ids(&l), ["sweep-t001"]);
        let l = list_with(&root, only(vec![Phase::Failed, Phase::Lost], None, None)).await;
        assert_eq!(ids(&l), ["gone", "sweep-t001"]);
        assert!(list_with(&root, limit(0)).await.rows.is_empty());
    }

    #[tokio::test]
    async fn a_finished_run_is_listed_from_its_summary_and_others_from_their_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let root = Store::open(&format!("file://{}", dir.path().display())).unwrap();
        // Its summary says 0.9 and its metrics file 0.5: the file is not read.
        let mut summarised = record("summarised", "e", Phase::Succeeded, "2026-01-03T00:00:00Z");
        summarised.summary = Some(MetricsSummary {
            ended_at: summarised.finished_at.clone(),
            epochs: 2,
            best_val_f1: Some(run::BestF1 { f1: 0.9, epoch: 2 }),
        });
        put(&root, &summarised, &[0.5], true).await;
        // A summary of an earlier end (it was resumed since): the file is read.
        let mut resumed = summarised.clone();
        resumed.run_id = "resumed".into();
        resumed.created_at = "2026-01-02T00:00:00Z".into();
        resumed.finished_at = Some("2026-01-05T00:00:00Z".into());
        put(&root, &resumed, &[0.3, 0.4], true).await;
        let old = record("old", "e", Phase::Failed, "2026-01-01T00:00:00Z");
        put(&root, &old, &[0.2], true).await;
        let l = list_with(&root, ListOptions::default()).await;
        assert_eq!(ids(&l), ["summarised", "resumed", "old"]);
        let f1: Vec<_> = l
            .rows
            .iter()
            .map(|r| (r.best_val_f1, r.best_epoch))
            .collect();
        assert_eq!(
            f1,
            [
                (Some(0.9), Some(2)),
                (Some(0.4), Some(2)),
                (Some(0.2), Some(1))
            ]
        );
    }

    #[tokio::test]
    async fn progress_reads_record_spec_and_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let root = Store::open(&format!("file://{}", dir.path().display())).unwrap();
        let clusters = Clusters::new(Target::default());
        let run = run::run_store(&root, "r");
        assert!(progress(&run, &clusters).await.unwrap().is_none());
        put(
            &root,
            &record("r", "e", Phase::Failed, "2026-01-01T00:00:00Z"),
            &[0.2, 0.3],
            true,
        )
        .await;
        let (p, warning) = progress(&run, &clusters).await.unwrap().unwrap();
        assert_eq!(warning, None);
        assert_eq!(p.last_epoch.map(|e| e.epoch), Some(2));
        assert_eq!(p.epochs, 0, "no spec.yaml");
    }
}
