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
    /// No credentials in the environment, and the instance metadata service (the last place
    /// object_store looks) did not give any.
    #[error(
        "cannot {op} {url}: no AWS credentials found. idc looked for AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN, AWS_CONTAINER_CREDENTIALS_RELATIVE_URI, AWS_CONTAINER_CREDENTIALS_FULL_URI with AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE, then asked the EC2 instance metadata service at {endpoint}, which failed ({message}). Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (with AWS_ENDPOINT for MinIO or Garage), or give the machine an instance role"
    )]
    NoCredentials {
        op: &'static str,
        url: String,
        endpoint: String,
        message: String,
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
    /// The error of `op` on `url`; `metadata` is the instance metadata endpoint when the
    /// store's credentials come from there (none were in the environment).
    fn of(op: &'static str, url: String, metadata: Option<&str>, e: object_store::Error) -> Self {
        match metadata {
            // The credential request names the endpoint; the store's own requests do not.
            Some(endpoint)
                if !matches!(e, object_store::Error::NotFound { .. })
                    && e.to_string().contains(endpoint.trim_end_matches('/')) =>
            {
                StoreError::NoCredentials {
                    op,
                    url,
                    endpoint: endpoint.to_string(),
                    message: e.to_string(),
                }
            }
            _ => Self::op(op, url, e),
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

impl crate::exit::ProcessExitCode for StoreError {
    /// A bad URL or a damaged record is the user's to fix (2); the rest may pass on retry (1).
    fn process_exit_code(&self) -> crate::exit::ExitCode {
        match self {
            StoreError::BadUrl { .. } | StoreError::Corrupt { .. } => {
                crate::exit::ExitCode::UserError
            }
            _ => crate::exit::ExitCode::Failure,
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
    /// The instance metadata endpoint an S3 store takes its credentials from, when the
    /// environment gives none: its failure is told as "no credentials found".
    metadata: Option<Arc<str>>,
    /// Whether listings come in key order (S3's do; a local folder's do not).
    ordered: bool,
}

/// Retries of an S3 request (and of the credential requests before it).
const RETRY: RetryConfig = RetryConfig {
    backoff: BackoffConfig {
        init_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(15),
        base: 2.,
    },
    max_retries: 5,
    retry_timeout: Duration::from_secs(60),
};

/// object_store's instance metadata endpoint when AWS_METADATA_ENDPOINT is not set.
const DEFAULT_METADATA_ENDPOINT: &str = "http://169.254.169.254";

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
            return Self::s3(rest, AmazonS3Builder::from_env(), RETRY).map_err(|r| bad(&r));
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

    /// The store of `rest` (`bucket/prefix`, after `s3://`), configured by `builder` (the
    /// environment's AWS_* variables).
    fn s3(rest: &str, builder: AmazonS3Builder, retry: RetryConfig) -> Result<Self, String> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err("no bucket name (expected s3://bucket/prefix)".into());
        }
        if bucket.contains('@') || bucket.contains(':') {
            return Err(
                "credentials and ports do not belong in the URL; set AWS_* variables".into(),
            );
        }
        let metadata = metadata_fallback(&builder);
        let s3 = builder
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
            .map_err(|e| e.to_string())?;
        let prefix = prefix.trim_matches('/');
        Ok(Self {
            inner: Arc::new(s3),
            prefix: ObjPath::from(prefix),
            url: format!(
                "s3://{bucket}{}{prefix}",
                if prefix.is_empty() { "" } else { "/" }
            ),
            metadata: metadata.map(Arc::from),
            ordered: true,
        })
    }

    /// Opens the folder of the object at `url` (`s3://bucket/dir/NAME`, `file:///dir/NAME`,
    /// a path): that folder's store and the object's name in it. An object at the root of its
    /// URL (`file:///NAME`, `file://NAME`, `s3://bucket/NAME`) is in the root's store.
    pub fn open_object(url: &str) -> Result<(Self, String), StoreError> {
        let bad = |reason: &str| StoreError::BadUrl {
            url: redact(url),
            reason: reason.to_string(),
        };
        let (scheme, path) = match url.split_once("://") {
            Some((scheme, path)) => (Some(scheme), path),
            None => (None, url),
        };
        let (dir, name) = match (scheme, path.rsplit_once('/')) {
            (Some("s3"), None) => return Err(bad("names a bucket, not an object in it")),
            (_, Some((dir, name))) => (if dir.is_empty() { "/" } else { dir }, name),
            (_, None) => (".", path),
        };
        if name.is_empty() || name == "." || name == ".." {
            return Err(bad("names a folder, not an object"));
        }
        let dir = match scheme {
            Some(scheme) => format!("{scheme}://{dir}"),
            None => dir.to_string(),
        };
        Ok((Self::open(&dir)?, name.to_string()))
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
            metadata: None,
            ordered: false,
        })
    }

    /// The URL of this store's root.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL of `key`.
    pub fn url_of(&self, key: &str) -> String {
        // The root folder's URL (`file:///`) already ends in its separator.
        if self.url.ends_with(":///") {
            format!("{}{key}", self.url)
        } else {
            format!("{}/{}", self.url.trim_end_matches('/'), key)
        }
    }

    /// A store rooted at `sub` inside this one.
    pub fn child(&self, sub: &str) -> Self {
        Self {
            inner: self.inner.clone(),
            prefix: self.path(sub),
            url: self.url_of(sub.trim_matches('/')),
            metadata: self.metadata.clone(),
            ordered: self.ordered,
        }
    }

    /// The error of `op` on `key`.
    fn error(&self, op: &'static str, key: &str, e: object_store::Error) -> StoreError {
        StoreError::of(op, self.url_of(key), self.metadata.as_deref(), e)
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
            Err(e) => Err(self.error("read", key, e)),
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
            Err(e) => Err(self.error("read", key, e)),
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
            .map_err(|e| self.error("write", key, e))
    }

    async fn put_multipart(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        let mut parts = bytes.chunks(PART_SIZE).map(|c| bytes.slice_ref(c));
        self.write_parts(key, || Ok(parts.next())).await
    }

    /// Writes the local file `from` to `key` in parts, never holding it whole in memory
    /// (slides are gigabytes); readers see the old object or the new one.
    pub async fn upload_file(&self, key: &str, from: &Path) -> Result<(), StoreError> {
        use std::io::Read;
        let local = |e: std::io::Error| StoreError::Op {
            op: "read",
            url: from.display().to_string(),
            message: e.to_string(),
            hint: "",
        };
        let mut file = std::fs::File::open(from).map_err(local)?;
        self.write_parts(key, || {
            let mut part = Vec::with_capacity(PART_SIZE);
            (&mut file)
                .take(PART_SIZE as u64)
                .read_to_end(&mut part)
                .map_err(local)?;
            Ok((!part.is_empty()).then(|| Bytes::from(part)))
        })
        .await
    }

    /// Writes `key` as a multipart upload of the parts `next` gives until `None`; an error
    /// (of `next` or of the store) aborts the upload, so no part of it is left behind.
    async fn write_parts(
        &self,
        key: &str,
        mut next: impl FnMut() -> Result<Option<Bytes>, StoreError>,
    ) -> Result<(), StoreError> {
        let err = |e| self.error("write", key, e);
        let upload = self
            .inner
            .put_multipart(&self.path(key))
            .await
            .map_err(err)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let written: Result<(), StoreError> = async {
            while let Some(part) = next()? {
                // Bound memory and connections: at most 4 parts in flight.
                writer.wait_for_capacity(4).await.map_err(err)?;
                writer.put(part);
            }
            Ok(())
        }
        .await;
        match written {
            Ok(()) => writer.finish().await.map(|_| ()).map_err(err),
            Err(e) => {
                // Best effort: the error that stopped the upload is the one to report.
                let _ = writer.abort().await;
                Err(e)
            }
        }
    }

    /// Writes `key` to the local file `to`, streamed.
    pub async fn download(&self, key: &str, to: &Path) -> Result<(), StoreError> {
        use std::io::Write;
        let local = |e: std::io::Error| StoreError::Op {
            op: "write",
            url: to.display().to_string(),
            message: e.to_string(),
            hint: "",
        };
        let got = match self.inner.get(&self.path(key)).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(StoreError::NotFound {
                    url: self.url_of(key),
                });
            }
            Err(e) => return Err(self.error("read", key, e)),
        };
        let mut file = std::io::BufWriter::new(std::fs::File::create(to).map_err(local)?);
        let mut stream = got.into_stream();
        while let Some(chunk) = stream
            .try_next()
            .await
            .map_err(|e| self.error("read", key, e))?
        {
            file.write_all(&chunk).map_err(local)?;
        }
        file.flush().map_err(local)
    }

    /// The local path of `key` when this store is a folder on this machine (`file://`).
    pub fn local_path(&self, key: &str) -> Option<PathBuf> {
        let root = self.url.strip_prefix("file://")?;
        let mut p = PathBuf::from(root);
        p.extend(key.split('/').filter(|s| !s.is_empty()));
        Some(p)
    }

    /// Deletes `key`; a missing object is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.inner.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error("delete", key, e)),
        }
    }

    /// Keys (relative to this store) and sizes of every object under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let root = self.path(prefix);
        let listed: Vec<_> = match self.inner.list(Some(&root)).try_collect().await {
            Ok(v) => v,
            Err(object_store::Error::NotFound { .. }) => vec![],
            Err(e) => return Err(self.error("list", prefix, e)),
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

/// The instance metadata endpoint object_store will take credentials from with `builder`'s
/// settings: when no static keys, web identity, or container credentials are set and requests
/// are signed (its order in `AmazonS3Builder::build`).
fn metadata_fallback(builder: &AmazonS3Builder) -> Option<String> {
    use AmazonS3ConfigKey as K;
    let set = |k: K| builder.get_config_value(&k).is_some();
    let skip_signature = builder
        .get_config_value(&K::SkipSignature)
        .is_some_and(|v| v == "true");
    let from_env = set(K::AccessKeyId)
        || set(K::SecretAccessKey)
        || (set(K::WebIdentityTokenFile) && set(K::RoleArn))
        || set(K::ContainerCredentialsRelativeUri)
        || (set(K::ContainerCredentialsFullUri) && set(K::ContainerAuthorizationTokenFile));
    (!from_env && !skip_signature).then(|| {
        builder
            .get_config_value(&K::MetadataEndpoint)
            .unwrap_or_else(|| DEFAULT_METADATA_ENDPOINT.into())
    })
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

    #[tokio::test]
    async fn a_file_is_uploaded_in_parts_and_downloaded_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("bucket").to_str().unwrap()).unwrap();
        // Two whole parts and a bit.
        let data: Vec<u8> = (0..2 * PART_SIZE + 1234)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let from = dir.path().join("slide.svs");
        std::fs::write(&from, &data).unwrap();
        let mut stores = vec![store.clone()];
        // And the S3 server of .ci/test, where parts are S3's multipart upload.
        if let Ok(url) = std::env::var("IDC_TEST_S3_URL") {
            let prefix = format!("{url}/store-parts-{}", std::process::id());
            stores.push(Store::open(&prefix).unwrap());
        }
        let to = dir.path().join("back.svs");
        for s in &stores {
            s.upload_file("in/slide.svs", &from).await.unwrap();
            assert_eq!(s.get("in/slide.svs").await.unwrap(), data, "{}", s.url());
            s.download("in/slide.svs", &to).await.unwrap();
            assert_eq!(std::fs::read(&to).unwrap(), data, "{}", s.url());
            s.put("in/put.bin", Bytes::from(data.clone()))
                .await
                .unwrap();
            assert_eq!(s.get("in/put.bin").await.unwrap(), data, "{}", s.url());
        }
        assert_eq!(
            store.local_path("in/slide.svs").unwrap(),
            dir.path().join("bucket/in/slide.svs")
        );
        // A missing file is an error naming it, and writes nothing.
        let e = store
            .upload_file("in/gone.svs", &dir.path().join("gone.svs"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("gone.svs"), "{e}");
        assert_eq!(store.size("in/gone.svs").await.unwrap(), None);
        let e = store.download("in/nothing", &to).await.unwrap_err();
        assert!(matches!(e, StoreError::NotFound { .. }), "{e}");
    }

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

    /// A builder configured as `AmazonS3Builder::from_env` would be by `env` alone.
    fn builder(env: &[(&str, &str)]) -> AmazonS3Builder {
        env.iter().fold(AmazonS3Builder::new(), |b, (k, v)| {
            b.with_config(k.to_ascii_lowercase().parse().unwrap(), *v)
        })
    }

    /// A loopback port nothing listens on.
    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    const NO_RETRY: RetryConfig = RetryConfig {
        backoff: RETRY.backoff,
        max_retries: 0,
        retry_timeout: Duration::from_secs(5),
    };

    #[tokio::test]
    async fn without_credentials_the_error_says_where_idc_looked() {
        let (s3, metadata) = (closed_port(), closed_port());
        let (s3, metadata) = (
            format!("http://127.0.0.1:{s3}"),
            format!("http://127.0.0.1:{metadata}"),
        );
        let env = [
            ("AWS_ENDPOINT", s3.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_METADATA_ENDPOINT", metadata.as_str()),
        ];
        let store = Store::s3("b/p", builder(&env), NO_RETRY).unwrap();
        let e = store.get_opt("k").await.unwrap_err();
        assert!(matches!(e, StoreError::NoCredentials { .. }), "{e:?}");
        let e = e.to_string();
        assert!(
            e.starts_with(&format!(
                "cannot read s3://b/p/k: no AWS credentials found. idc looked for AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN, AWS_CONTAINER_CREDENTIALS_RELATIVE_URI, AWS_CONTAINER_CREDENTIALS_FULL_URI with AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE, then asked the EC2 instance metadata service at {metadata}, which failed ("
            )) && e.ends_with("Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (with AWS_ENDPOINT for MinIO or Garage), or give the machine an instance role"),
            "{e}"
        );
        // Credentials in the environment: the server's failure is told as it is.
        let keys = [("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "s")];
        let store = Store::s3("b", builder(&[&env[..], &keys].concat()), NO_RETRY).unwrap();
        let e = store.get_opt("k").await.unwrap_err().to_string();
        assert!(e.contains("is the storage server reachable?"), "{e}");
        // Where object_store takes credentials from, as idc reads it.
        let from = |extra: &[(&str, &str)]| metadata_fallback(&builder(extra));
        assert_eq!(from(&[]).as_deref(), Some(DEFAULT_METADATA_ENDPOINT));
        for set in [
            &[("AWS_ACCESS_KEY_ID", "a")][..],
            &[("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"), ("AWS_ROLE_ARN", "r")],
            &[("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/c")],
            &[
                ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://x"),
                ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "/t"),
            ],
            &[("AWS_SKIP_SIGNATURE", "true")],
        ] {
            assert_eq!(from(set), None, "{set:?}");
        }
        assert!(
            from(&[("AWS_ROLE_ARN", "r")]).is_some(),
            "a role alone is not used"
        );
    }

    /// An instance metadata service on loopback that hands out credentials to `requests`
    /// requests, as EC2's does (IMDSv2: a token, the role's name, its credentials).
    fn fake_metadata_service(requests: usize) -> String {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for conn in listener.incoming().take(requests) {
                let mut conn = conn.unwrap();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut request = String::new();
                reader.read_line(&mut request).unwrap();
                let mut header = String::new();
                while reader.read_line(&mut header).unwrap() > 2 {
                    header.clear();
                }
                let body = if request.starts_with("PUT /latest/api/token") {
                    "token"
                } else if request.contains("/security-credentials/ ") {
                    "idc-role"
                } else {
                    r#"{"AccessKeyId":"AKIA","SecretAccessKey":"s","Token":"t","Expiration":"2099-01-01T00:00:00Z"}"#
                };
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                conn.write_all(reply.as_bytes()).unwrap();
            }
        });
        url
    }

    #[tokio::test]
    async fn on_ec2_credentials_still_come_from_the_metadata_service() {
        let s3 = format!("http://127.0.0.1:{}", closed_port());
        let metadata = fake_metadata_service(3);
        let env = [
            ("AWS_ENDPOINT", s3.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_METADATA_ENDPOINT", metadata.as_str()),
        ];
        let store = Store::s3("b", builder(&env), NO_RETRY).unwrap();
        // Credentials were had: the request went on to the (absent) server.
        let e = store.get_opt("k").await.unwrap_err().to_string();
        assert!(e.contains("is the storage server reachable?"), "{e}");
        assert!(!e.contains("no AWS credentials"), "{e}");
    }

    #[test]
    fn an_object_at_the_root_of_its_url_opens() {
        for (url, store, key) in [
            ("file:///r.bin", "file:///", "r.bin"),
            ("file:///a/b/r.bin", "file:///a/b", "r.bin"),
            ("/r.bin", "file:///", "r.bin"),
            ("s3://b/r.bin", "s3://b", "r.bin"),
            ("s3://b/d/r.bin", "s3://b/d", "r.bin"),
        ] {
            let (s, k) = Store::open_object(url).unwrap();
            assert_eq!((s.url(), k.as_str()), (store, key), "{url}");
            let full = match url.contains("://") {
                true => url.to_string(),
                false => format!("file://{url}"),
            };
            assert_eq!(s.url_of(&k), full, "{url}");
        }
        for (url, want) in [
            ("s3://b", "names a bucket"),
            ("s3://b/", "names a folder"),
            ("file:///tmp/", "names a folder"),
        ] {
            let e = Store::open_object(url).unwrap_err().to_string();
            assert!(e.contains(want), "{url}: {e}");
        }
    }

    #[tokio::test]
    async fn an_object_at_the_root_of_a_relative_file_url_reads() {
        // `file://NAME` is NAME in the working folder: the root of that URL's folder.
        let (s, k) = Store::open_object("file://Cargo.toml").unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(s.url(), format!("file://{}", cwd.display()));
        assert_eq!(
            s.get(&k).await.unwrap(),
            std::fs::read("Cargo.toml").unwrap()
        );
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
