//! A prefix in an object store and the blocking operations the format needs on it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{
    CopyMode, CopyOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    WriteMultipart,
};
use url::Url;

use crate::cache::RangeCache;
use crate::file::RemoteFile;
use crate::{Result, StoreError};

/// Objects larger than this are uploaded in parts (S3 needs parts of at least 5 MiB).
pub const MULTIPART_THRESHOLD: u64 = 16 << 20;
/// Size of one uploaded part.
const PART_SIZE: usize = 8 << 20;
/// Parts of one upload in flight at once.
const PART_CONCURRENCY: usize = 4;

/// The runtime that drives `object_store`; a few threads are plenty for I/O.
pub(crate) fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RT: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("logits-store")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| StoreError::Location {
        url: "<runtime>".into(),
        message: format!("cannot start the object-store runtime: {e}"),
    })
}

/// A prefix ("directory") in an object store, with its client.
#[derive(Clone)]
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    url: String,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("url", &self.url).finish()
    }
}

impl Remote {
    /// Connects to the store of `url` (`s3://bucket/prefix`, `gs://`, `az://`, `file:///abs`),
    /// taking credentials and settings from the environment.
    pub fn open(url: &str) -> Result<Remote> {
        let bad = |message: String| StoreError::Location {
            url: url.into(),
            message,
        };
        let parsed = Url::parse(url).map_err(|e| bad(e.to_string()))?;
        let prefix = ObjectPath::from_url_path(parsed.path())
            .map_err(|e| bad(format!("bad object path: {e}")))?;
        let store: Arc<dyn ObjectStore> = match parsed.scheme() {
            "s3" | "s3a" => {
                let mut b = AmazonS3Builder::from_env().with_url(url);
                // Native S3 (and moto, MinIO) can finish a multipart copy only if the target is
                // absent; that is how two workers are kept from both finalizing one shard.
                if std::env::var_os("AWS_COPY_IF_NOT_EXISTS").is_none() {
                    b = b.with_config(AmazonS3ConfigKey::CopyIfNotExists, "multipart");
                }
                Arc::new(b.build().map_err(|e| bad(e.to_string()))?)
            }
            "gs" => Arc::new(
                GoogleCloudStorageBuilder::from_env()
                    .with_url(url)
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            "az" | "azure" | "abfs" | "abfss" | "adl" => Arc::new(
                MicrosoftAzureBuilder::from_env()
                    .with_url(url)
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            "file" => {
                if parsed
                    .host_str()
                    .is_some_and(|h| !h.is_empty() && h != "localhost")
                {
                    return Err(bad(
                        "file:// URLs name no host: file:///absolute/path".into()
                    ));
                }
                // Deleting the last object of a folder removes the folder, as on a store.
                Arc::new(LocalFileSystem::new().with_automatic_cleanup(true))
            }
            other => {
                return Err(bad(format!(
                    "unknown scheme {other:?}; use a path, or an s3://, gs://, az:// or file:// URL"
                )));
            }
        };
        Ok(Remote {
            store,
            prefix,
            url: url.trim_end_matches('/').to_string(),
        })
    }

    /// The location's URL, without a trailing slash.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL of `rel` below this location.
    pub fn url_of(&self, rel: &str) -> String {
        format!("{}/{}", self.url, rel)
    }

    /// A location below this one.
    pub fn child(&self, rel: &str) -> Remote {
        Remote {
            store: self.store.clone(),
            prefix: self.key(rel),
            url: self.url_of(rel),
        }
    }

    pub(crate) fn key(&self, rel: &str) -> ObjectPath {
        rel.split('/')
            .filter(|p| !p.is_empty())
            .fold(self.prefix.clone(), |k, part| k.clone().join(part))
    }

    pub(crate) fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    fn err(&self, rel: &str, source: object_store::Error) -> StoreError {
        match source {
            object_store::Error::NotFound { .. } => StoreError::NotFound {
                url: self.url_of(rel),
            },
            error => StoreError::Store {
                url: self.url_of(rel),
                error,
            },
        }
    }

    /// The whole object `rel`, or `None` when there is none.
    pub fn get(&self, rel: &str) -> Result<Option<Bytes>> {
        let key = self.key(rel);
        let got = runtime()?.block_on(async {
            match self.store.get(&key).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        got.map_err(|e| self.err(rel, e))
    }

    /// The size of object `rel`, or `None` when there is none.
    pub fn size(&self, rel: &str) -> Result<Option<u64>> {
        let key = self.key(rel);
        match runtime()?.block_on(self.store.head(&key)) {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(rel, e)),
        }
    }

    /// Writes `bytes` to `rel`, replacing what is there.
    pub fn put(&self, rel: &str, bytes: Bytes) -> Result<()> {
        let key = self.key(rel);
        runtime()?
            .block_on(self.store.put(&key, PutPayload::from(bytes)))
            .map(|_| ())
            .map_err(|e| self.err(rel, e))
    }

    /// Writes `bytes` to `rel` only if nothing is there; false when something already was.
    /// On a store without conditional writes this is a check followed by a write (two writers
    /// racing may both succeed), which the format tolerates because its writers agree on the
    /// content.
    pub fn put_new(&self, rel: &str, bytes: Bytes) -> Result<bool> {
        let key = self.key(rel);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let rt = runtime()?;
        match rt.block_on(
            self.store
                .put_opts(&key, PutPayload::from(bytes.clone()), opts),
        ) {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(false),
            Err(object_store::Error::NotImplemented { .. }) => {
                if self.size(rel)?.is_some() {
                    return Ok(false);
                }
                self.put(rel, bytes)?;
                Ok(true)
            }
            Err(e) => Err(self.err(rel, e)),
        }
    }

    /// Uploads the local file `local` to `rel` (in parts when it is large); returns its size.
    pub fn upload(&self, rel: &str, local: &Path) -> Result<u64> {
        let io = |source| StoreError::Io {
            path: local.to_path_buf(),
            source,
        };
        let mut file = std::fs::File::open(local).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        if size <= MULTIPART_THRESHOLD {
            let mut buf = Vec::with_capacity(size as usize);
            file.read_to_end(&mut buf).map_err(io)?;
            self.put(rel, Bytes::from(buf))?;
            return Ok(size);
        }
        let key = self.key(rel);
        let result: std::result::Result<(), UploadError> = runtime()?.block_on(async {
            let upload = self
                .store
                .put_multipart(&key)
                .await
                .map_err(UploadError::Store)?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            let mut buf = vec![0u8; PART_SIZE];
            loop {
                let n = match file.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = w.abort().await;
                        return Err(UploadError::Io(e));
                    }
                };
                if n == 0 {
                    break;
                }
                if let Err(e) = w.wait_for_capacity(PART_CONCURRENCY).await {
                    return Err(UploadError::Store(e));
                }
                w.write(&buf[..n]);
            }
            w.finish().await.map(|_| ()).map_err(UploadError::Store)
        });
        match result {
            Ok(()) => Ok(size),
            Err(UploadError::Io(e)) => Err(io(e)),
            Err(UploadError::Store(e)) => Err(self.err(rel, e)),
        }
    }

    /// Copies `from` to `to` only if `to` is absent; false when it was already there. This is
    /// the atomic "make final" step of an upload (object stores have no rename). Where the store
    /// cannot do it conditionally, a check and a plain copy.
    pub fn copy_new(&self, from: &str, to: &str) -> Result<bool> {
        let (f, t) = (self.key(from), self.key(to));
        let opts = CopyOptions {
            mode: CopyMode::Create,
            ..Default::default()
        };
        let rt = runtime()?;
        match rt.block_on(self.store.copy_opts(&f, &t, opts)) {
            Ok(()) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(false),
            Err(object_store::Error::NotImplemented { .. })
            | Err(object_store::Error::NotSupported { .. }) => {
                if self.size(to)?.is_some() {
                    return Ok(false);
                }
                rt.block_on(self.store.copy(&f, &t))
                    .map_err(|e| self.err(to, e))?;
                Ok(true)
            }
            Err(e) => Err(self.err(to, e)),
        }
    }

    /// Deletes `rel`; an absent object is not an error.
    pub fn delete(&self, rel: &str) -> Result<()> {
        let key = self.key(rel);
        match runtime()?.block_on(self.store.delete(&key)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(rel, e)),
        }
    }

    /// Every object below `rel` (relative to this location) with its size, sorted by name.
    pub fn list(&self, rel: &str) -> Result<Vec<(String, u64)>> {
        let key = self.key(rel);
        let base = self.prefix.as_ref().len();
        let listed: std::result::Result<Vec<_>, _> =
            runtime()?.block_on(self.store.list(Some(&key)).try_collect::<Vec<_>>());
        let mut out: Vec<(String, u64)> = listed
            .map_err(|e| self.err(rel, e))?
            .into_iter()
            .map(|m| {
                let full = m.location.as_ref();
                let name = full.get(base..).unwrap_or(full).trim_start_matches('/');
                (name.to_string(), m.size)
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Deletes every object below `rel`.
    pub fn delete_all(&self, rel: &str) -> Result<()> {
        let key = self.key(rel);
        let rt = runtime()?;
        let store = self.store.clone();
        let res: std::result::Result<Vec<ObjectPath>, _> = rt.block_on(async {
            let locations = store.list(Some(&key)).map_ok(|m| m.location).boxed();
            store
                .delete_stream(locations)
                .filter(|r| {
                    futures::future::ready(!matches!(r, Err(object_store::Error::NotFound { .. })))
                })
                .try_collect()
                .await
        });
        res.map(|_| ()).map_err(|e| self.err(rel, e))
    }

    /// Opens object `rel` for range reads (one request: its size and entity tag), with an
    /// optional local cache of the ranges read.
    pub fn open_file(&self, rel: &str, cache: Option<Arc<RangeCache>>) -> Result<RemoteFile> {
        let key = self.key(rel);
        let meta = runtime()?
            .block_on(self.store.head(&key))
            .map_err(|e| self.err(rel, e))?;
        Ok(RemoteFile::new(
            self.clone(),
            key,
            self.url_of(rel),
            meta.size,
            meta.e_tag,
            cache,
        ))
    }

    /// Downloads `rel` into `dir` once (keyed by URL, size and entity tag) and returns the
    /// local path.
    pub fn download_cached(&self, rel: &str, dir: &Path) -> Result<PathBuf> {
        let key = self.key(rel);
        let rt = runtime()?;
        let meta = rt
            .block_on(self.store.head(&key))
            .map_err(|e| self.err(rel, e))?;
        let url = self.url_of(rel);
        let name = rel.rsplit('/').next().unwrap_or("object");
        let id = crate::cache::digest(&[
            url.as_bytes(),
            &meta.size.to_le_bytes(),
            meta.e_tag.as_deref().unwrap_or("").as_bytes(),
        ]);
        // The file keeps its name (the manifest records a model's or tokenizer's file name).
        let folder = dir.join(&id[..16]);
        let local = folder.join(name);
        if std::fs::metadata(&local).is_ok_and(|m| m.len() == meta.size) {
            return Ok(local);
        }
        let io = |p: &Path, source| StoreError::Io {
            path: p.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(&folder).map_err(|e| io(&folder, e))?;
        let bytes = self.get(rel)?.ok_or(StoreError::NotFound { url })?;
        let tmp = local.with_extension(format!("{}.tmp", std::process::id()));
        std::fs::write(&tmp, &bytes).map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, &local).map_err(|e| io(&local, e))?;
        Ok(local)
    }
}

enum UploadError {
    Io(std::io::Error),
    Store(object_store::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_remote(dir: &Path) -> Remote {
        Remote::open(&format!("file://{}", dir.display())).unwrap()
    }

    #[test]
    fn put_get_list_delete_on_a_file_url() {
        let dir = tempfile::tempdir().unwrap();
        let r = file_remote(dir.path());
        assert_eq!(r.get("a/x.json").unwrap(), None);
        r.put("a/x.json", Bytes::from_static(b"{}")).unwrap();
        assert!(dir.path().join("a/x.json").exists());
        assert_eq!(r.get("a/x.json").unwrap().unwrap().as_ref(), b"{}");
        assert_eq!(r.size("a/x.json").unwrap(), Some(2));
        r.put("b/y", Bytes::from_static(b"123")).unwrap();
        assert_eq!(
            r.list("").unwrap(),
            vec![("a/x.json".to_string(), 2), ("b/y".to_string(), 3)]
        );
        assert_eq!(r.list("a").unwrap().len(), 1);
        r.delete_all("a").unwrap();
        assert_eq!(r.list("").unwrap(), vec![("b/y".to_string(), 3)]);
        r.delete("missing").unwrap();
    }

    #[test]
    fn conditional_create_and_copy_refuse_a_second_writer() {
        let dir = tempfile::tempdir().unwrap();
        let r = file_remote(dir.path());
        assert!(r.put_new("m/0.json", Bytes::from_static(b"first")).unwrap());
        assert!(
            !r.put_new("m/0.json", Bytes::from_static(b"second"))
                .unwrap()
        );
        assert_eq!(r.get("m/0.json").unwrap().unwrap().as_ref(), b"first");
        r.put("tmp/a", Bytes::from_static(b"A")).unwrap();
        r.put("tmp/b", Bytes::from_static(b"B")).unwrap();
        assert!(r.copy_new("tmp/a", "final").unwrap());
        assert!(!r.copy_new("tmp/b", "final").unwrap());
        assert_eq!(r.get("final").unwrap().unwrap().as_ref(), b"A");
    }

    #[test]
    fn large_uploads_go_in_parts_and_arrive_whole() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("big.bin");
        let data: Vec<u8> = (0..(MULTIPART_THRESHOLD as usize + 3 * PART_SIZE / 2))
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        std::fs::write(&src, &data).unwrap();
        let r = file_remote(&dir.path().join("store"));
        assert_eq!(r.upload("x/big.bin", &src).unwrap(), data.len() as u64);
        assert_eq!(r.get("x/big.bin").unwrap().unwrap().as_ref(), &data[..]);
    }

    #[test]
    fn bad_locations_are_named() {
        let e = Remote::open("ftp://host/x").unwrap_err().to_string();
        assert!(
            e.contains("ftp://host/x") && e.contains("unknown scheme"),
            "{e}"
        );
        let e = Remote::open("file://host/x").unwrap_err().to_string();
        assert!(e.contains("no host"), "{e}");
        assert!(crate::is_url("s3://b/p") && !crate::is_url("/tmp/x") && !crate::is_url("a:b"));
    }
}
