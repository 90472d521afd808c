//! Object storage behind one interface: `file://` (a local folder) and `s3://` (MinIO, Garage,
//! AWS), via `object_store`. Errors name the URL and the cause, never credentials.

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{
    BackoffConfig, ClientConfigKey, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
    WriteMultipart,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Objects larger than this are uploaded in parts of this size (S3 wants parts of 5 MiB or more).
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid storage URL '{url}': {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot {op} {url}: {message}{hint}")]
    Op {
        op: &'static str,
        url: String,
        message: String,
        hint: &'static str,
    },
    #[error("{url} does not exist")]
    NotFound { url: String },
    /// The object is there but is not what it should be; it is left as it is.
    #[error("{url} is corrupt ({reason}); nothing was changed: repair or remove it")]
    Corrupt { url: String, reason: String },
}

/// Whether `e` comes from failing to connect to the server (its chain holds an HTTP error of
/// kind `Connect`).
fn could_not_connect(e: &object_store::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(h) = c.downcast_ref::<object_store::client::HttpError>()
            && h.kind() == object_store::client::HttpErrorKind::Connect
        {
            return true;
        }
        cause = c.source();
    }
    false
}

impl StoreError {
    /// A bad URL or a damaged record is the user's to fix (2); the rest may pass on retry (1).
    pub fn exit_code(&self) -> crate::exit::ExitCode {
        match self {
            StoreError::BadUrl { .. } | StoreError::Corrupt { .. } => {
                crate::exit::ExitCode::UserError
            }
            _ => crate::exit::ExitCode::Failure,
        }
    }

    fn op(op: &'static str, url: String, e: object_store::Error) -> Self {
        use object_store::Error as E;
        if matches!(e, E::NotFound { .. }) {
            return StoreError::NotFound { url };
        }
        let hint = match &e {
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
                " (check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
            }
            _ if could_not_connect(&e) => " (is the storage server reachable? check AWS_ENDPOINT)",
            _ => "",
        };
        StoreError::Op {
            op,
            url,
            message: e.to_string(),
            hint,
        }
    }
}

/// A bucket (or a prefix inside one) that keys are relative to.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    /// The URL of `prefix`, for messages.
    url: String,
    /// Whether listings come in key order (S3's do; a local folder's do not).
    ordered: bool,
}

impl Store {
    /// Opens `file:///abs`, `file://./rel`, a plain path, or `s3://bucket/prefix` (configured by
    /// the usual AWS_* variables: AWS_ENDPOINT, AWS_REGION, AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_ALLOW_HTTP).
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let bad = |reason: &str| StoreError::BadUrl {
            url: redact(url),
            reason: reason.to_string(),
        };
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket name (expected s3://bucket/prefix)"));
            }
            if bucket.contains('@') || bucket.contains(':') {
                return Err(bad(
                    "credentials and ports do not belong in the URL; set AWS_* variables",
                ));
            }
            let retry = RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 5,
                retry_timeout: Duration::from_secs(60),
            };
            let s3 = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry)
                // Not with_client_options(): that would replace the options from_env() read
                // (AWS_ALLOW_HTTP among them).
                .with_config(
                    AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                    "5s",
                )
                .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), "300s")
                .build()
                .map_err(|e| bad(&e.to_string()))?;
            let prefix = prefix.trim_matches('/');
            return Ok(Self {
                inner: Arc::new(s3),
                prefix: ObjPath::from(prefix),
                url: format!(
                    "s3://{bucket}{}{prefix}",
                    if prefix.is_empty() { "" } else { "/" }
                ),
                ordered: true,
            });
        }
        let path = match url.split_once("://") {
            Some(("file", p)) => p,
            Some((scheme, _)) => {
                return Err(bad(&format!(
                    "unsupported scheme '{scheme}' (use file:// or s3://)"
                )));
            }
            None => url,
        };
        if path.is_empty() {
            return Err(bad("empty path"));
        }
        Self::local(Path::new(path)).map_err(|reason| bad(&reason))
    }

    fn local(path: &Path) -> Result<Self, String> {
        let abs: PathBuf = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| e.to_string())?
                .join(path)
        };
        let abs = normalize(&abs);
        let prefix = ObjPath::from_absolute_path(&abs).map_err(|e| e.to_string())?;
        Ok(Self {
            inner: Arc::new(LocalFileSystem::new()),
            prefix,
            url: format!("file://{}", abs.display()),
            ordered: false,
        })
    }

    /// The URL of this store's root.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL of `key`.
    pub fn url_of(&self, key: &str) -> String {
        format!("{}/{}", self.url.trim_end_matches('/'), key)
    }

    /// A store rooted at `sub` inside this one.
    pub fn child(&self, sub: &str) -> Self {
        Self {
            inner: self.inner.clone(),
            prefix: self.path(sub),
            url: self.url_of(sub.trim_matches('/')),
            ordered: self.ordered,
        }
    }

    fn path(&self, key: &str) -> ObjPath {
        key.split('/')
            .filter(|p| !p.is_empty())
            .fold(self.prefix.clone(), |p, part| p.join(part))
    }

    /// Reads `key`, or `None` when it does not exist.
    pub async fn get_opt(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let run = async { self.inner.get(&self.path(key)).await?.bytes().await };
        match run.await {
            Ok(b) => Ok(Some(b)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(StoreError::op("read", self.url_of(key), e)),
        }
    }

    /// Reads `key`; a missing object is an error.
    pub async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.get_opt(key)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                url: self.url_of(key),
            })
    }

    /// The size of `key`, or `None` when it does not exist.
    pub async fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        match self.inner.head(&self.path(key)).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(StoreError::op("read", self.url_of(key), e)),
        }
    }

    /// Writes `key` whole: readers see the old object or the new one, never a part.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        if bytes.len() > PART_SIZE {
            return self.put_multipart(key, bytes).await;
        }
        self.inner
            .put(&self.path(key), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| StoreError::op("write", self.url_of(key), e))
    }

    async fn put_multipart(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        let err = |e| StoreError::op("write", self.url_of(key), e);
        let upload = self
            .inner
            .put_multipart(&self.path(key))
            .await
            .map_err(err)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        for chunk in bytes.chunks(PART_SIZE) {
            // Bound memory and connections: at most 4 parts in flight.
            writer.wait_for_capacity(4).await.map_err(err)?;
            writer.put(bytes.slice_ref(chunk));
        }
        writer.finish().await.map(|_| ()).map_err(err)
    }

    /// Deletes `key`; a missing object is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.inner.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StoreError::op("delete", self.url_of(key), e)),
        }
    }

    /// Keys (relative to this store) and sizes of every object under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let root = self.path(prefix);
        let listed: Vec<_> = match self.inner.list(Some(&root)).try_collect().await {
            Ok(v) => v,
            Err(object_store::Error::NotFound { .. }) => vec![],
            Err(e) => return Err(StoreError::op("list", self.url_of(prefix), e)),
        };
        let skip = self.prefix.parts().count();
        let mut out: Vec<(String, u64)> = listed
            .into_iter()
            .map(|m| {
                let key: Vec<_> = m
                    .location
                    .parts()
                    .skip(skip)
                    .map(|p| p.as_ref().to_string())
                    .collect();
                (key.join("/"), m.size)
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// The first `n` keys under `prefix` in key order (relative to this store), and whether
    /// that is all of them. S3 lists in key order, 1,000 keys a request, so only the requests
    /// needed are made; a local folder is listed whole.
    pub async fn list_first(
        &self,
        prefix: &str,
        n: usize,
    ) -> Result<(Vec<String>, bool), StoreError> {
        if !self.ordered {
            let mut keys: Vec<String> = self.list(prefix).await?.into_iter().map(|k| k.0).collect();
            let all = keys.len() <= n;
            keys.truncate(n);
            return Ok((keys, all));
        }
        let skip = self.prefix.parts().count();
        let mut listed = self.inner.list(Some(&self.path(prefix)));
        let mut keys = vec![];
        // Asking for one more than `n` would cost a request when `n` ends a page.
        while keys.len() < n {
            match listed.try_next().await {
                Ok(Some(m)) => {
                    let key: Vec<_> = m.location.parts().skip(skip).collect();
                    keys.push(key.iter().map(|p| p.as_ref()).collect::<Vec<_>>().join("/"));
                }
                Ok(None) | Err(object_store::Error::NotFound { .. }) => return Ok((keys, true)),
                Err(e) => return Err(StoreError::op("list", self.url_of(prefix), e)),
            }
        }
        Ok((keys, false))
    }

    /// The names of the folders right under `prefix`, sorted: one request per 1,000 folders on
    /// S3, however many objects each holds.
    pub async fn list_folders(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let listed = match self
            .inner
            .list_with_delimiter(Some(&self.path(prefix)))
            .await
        {
            Ok(l) => l.common_prefixes,
            Err(object_store::Error::NotFound { .. }) => vec![],
            Err(e) => return Err(StoreError::op("list", self.url_of(prefix), e)),
        };
        let mut out: Vec<String> = listed
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Deletes every object under `prefix`.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<(), StoreError> {
        for (key, _) in self.list(prefix).await? {
            self.delete(&key).await?;
        }
        Ok(())
    }
}

/// `url` with any `user:password@` part masked, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s && !url[s + 3..at].contains('/') => {
            format!("{}://***@{}", &url[..s], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// Removes `.` and `..` without touching the file system (the folder may not exist yet).
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_told_apart_by_their_type() {
        let url = || "s3://b/k".to_string();
        let denied = object_store::Error::PermissionDenied {
            path: "k".into(),
            source: "403 Forbidden".into(),
        };
        let e = StoreError::op("read", url(), denied).to_string();
        assert!(e.contains("check AWS_ACCESS_KEY_ID"), "{e}");
        let connect = object_store::Error::Generic {
            store: "S3",
            source: Box::new(object_store::client::HttpError::new(
                object_store::client::HttpErrorKind::Connect,
                std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
            )),
        };
        let e = StoreError::op("read", url(), connect).to_string();
        assert!(e.contains("is the storage server reachable?"), "{e}");
        // A message that merely mentions 403 is no permission error.
        let other = object_store::Error::Generic {
            store: "S3",
            source: "object key 403.txt is odd".into(),
        };
        assert!(
            StoreError::op("read", url(), other)
                .to_string()
                .ends_with("is odd")
        );
        let missing = object_store::Error::NotFound {
            path: "k".into(),
            source: "404".into(),
        };
        assert!(matches!(
            StoreError::op("read", url(), missing),
            StoreError::NotFound { .. }
        ));
    }

    #[tokio::test]
    async fn local_round_trip_and_listing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("file://{}/bucket/./ds", dir.path().display())).unwrap();
        assert_eq!(
            store.url(),
            format!("file://{}/bucket/ds", dir.path().display())
        );
        assert_eq!(store.get_opt("a/b.json").await.unwrap(), None);
        store
            .put("a/b.json", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let big = Bytes::from(vec![3u8; PART_SIZE * 2 + 5]);
        store.put("a/big.bin", big.clone()).await.unwrap();
        assert_eq!(store.get("a/big.bin").await.unwrap(), big);
        assert_eq!(store.size("a/b.json").await.unwrap(), Some(2));
        let keys: Vec<_> = store
            .list("a")
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.0)
            .collect();
        assert_eq!(keys, ["a/b.json", "a/big.bin"]);
        store
            .put("a/c/d/e.json", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        assert_eq!(store.list_folders("a").await.unwrap(), ["c"]);
        assert_eq!(
            store.list_first("a", 2).await.unwrap(),
            (vec!["a/b.json".to_string(), "a/big.bin".into()], false)
        );
        assert!(store.list_first("a", 3).await.unwrap().1);
        assert_eq!(store.list_folders("").await.unwrap(), ["a"]);
        assert!(store.list_folders("nowhere").await.unwrap().is_empty());
        assert_eq!(store.child("a").list("").await.unwrap().len(), 3);
        store.delete_prefix("a").await.unwrap();
        assert!(store.list("").await.unwrap().is_empty());
        assert!(matches!(
            store.get("a/b.json").await,
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn rejects_bad_urls() {
        for (url, want) in [
            ("gs://bucket/x", "unsupported scheme 'gs'"),
            ("s3://", "no bucket name"),
            (
                "s3://AKIA:secret@bucket/x",
                "credentials and ports do not belong",
            ),
            ("file://", "empty path"),
        ] {
            let e = Store::open(url).unwrap_err().to_string();
            assert!(e.contains(want), "{url}: {e}");
            assert!(!e.contains("secret"), "credentials leaked: {e}");
        }
    }
}
