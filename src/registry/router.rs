//! Many registries behind one [`RegistryApi`]: repositories are named
//! `host/path` (`localhost:5000/lab/busybox`), and each registry gets its own
//! client, opened on first use by a caller-supplied function (which gives it
//! its credentials, mirrors and TLS settings). This is what
//! `regfs mount --any-registry` serves: the first path component of the
//! mount picks the registry, like autofs picks a map key.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use super::api::{BoxBlobBody, RegistryApi};
use super::{ClientStats, FetchedManifest};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::reference::{Registry, Selector};

/// Opens the client of one registry, given the name as it appears in paths.
pub type OpenRegistry = dyn Fn(&Registry) -> Result<Arc<dyn RegistryApi>> + Send + Sync;

/// The name a router reports as its registry: it has no single one.
pub const ANY_REGISTRY: &str = "*";

/// Routes each request to the registry named by its repository's first
/// component; see the [module docs](self).
pub struct RegistryRouter {
    me: Registry,
    open: Box<OpenRegistry>,
    clients: Mutex<BTreeMap<String, Arc<dyn RegistryApi>>>,
}

/// Whether `name` is a registry as the first component of a reference:
/// it contains `.` or `:`, or is `localhost` (the distribution/reference
/// rule), and parses as `host[:port]`.
pub fn is_registry_name(name: &str) -> bool {
    (name.contains('.') || name.contains(':') || name == "localhost")
        && !name.starts_with('.')
        && !name.contains("://")
        && Registry::parse(name).is_ok()
}

impl RegistryRouter {
    /// A router that opens each registry with `open` the first time a
    /// repository of it is asked for.
    pub fn new(open: Box<OpenRegistry>) -> RegistryRouter {
        RegistryRouter {
            me: Registry {
                name: ANY_REGISTRY.to_string(),
                api_host: String::new(),
            },
            open,
            clients: Mutex::new(BTreeMap::new()),
        }
    }

    /// The client of registry `host`, opened now if it is new.
    pub fn client(&self, host: &str) -> Result<Arc<dyn RegistryApi>> {
        if !is_registry_name(host) {
            return Err(Error::NotFound(format!(
                "{host:?} is not a registry name (host[:port] with a dot or a port, or localhost)"
            )));
        }
        if let Some(c) = self.clients.lock().unwrap().get(host) {
            return Ok(c.clone());
        }
        let (registry, _) = Registry::parse(host)?;
        let client = (self.open)(&registry)?;
        Ok(self
            .clients
            .lock()
            .unwrap()
            .entry(host.to_string())
            .or_insert(client)
            .clone())
    }

    /// The client for `repo` (`host/path`) and the path inside its registry.
    fn route<'a>(&self, repo: &'a str) -> Result<(Arc<dyn RegistryApi>, &'a str)> {
        let (host, path) = repo.split_once('/').ok_or_else(|| {
            Error::NotFound(format!(
                "{repo:?}: with several registries a repository is named host/path"
            ))
        })?;
        Ok((self.client(host)?, path))
    }
}

/// Prefix each name with `host/`.
fn under(host: &str, names: Vec<String>) -> Vec<String> {
    names.into_iter().map(|n| format!("{host}/{n}")).collect()
}

impl RegistryApi for RegistryRouter {
    fn registry(&self) -> &Registry {
        &self.me
    }

    fn stats(&self) -> ClientStats {
        let clients: Vec<_> = self.clients.lock().unwrap().values().cloned().collect();
        clients.iter().fold(ClientStats::default(), |mut sum, c| {
            let s = c.stats();
            sum.requests += s.requests;
            sum.bytes_received += s.bytes_received;
            sum.retries += s.retries;
            sum.token_fetches += s.token_fetches;
            sum
        })
    }

    /// The repositories of every registry used so far whose catalog answers.
    fn catalog(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(async move {
            let mut all = Vec::new();
            for host in self.registries().unwrap_or_default() {
                if let Ok(names) = self.catalog_of(&host).await {
                    all.extend(names);
                }
            }
            Ok(all)
        })
    }

    fn catalog_of<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(async move {
            let client = self.client(host)?;
            Ok(under(host, client.catalog().await?))
        })
    }

    fn registries(&self) -> Option<Vec<String>> {
        Some(self.clients.lock().unwrap().keys().cloned().collect())
    }

    fn tags<'a>(&'a self, repo: &'a str) -> BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(async move {
            let (c, path) = self.route(repo)?;
            c.tags(path).await
        })
    }

    fn manifest<'a>(
        &'a self,
        repo: &'a str,
        sel: &'a Selector,
    ) -> BoxFuture<'a, Result<FetchedManifest>> {
        Box::pin(async move {
            let (c, path) = self.route(repo)?;
            c.manifest(path, sel).await
        })
    }

    fn referrers<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<Bytes>>> {
        Box::pin(async move {
            let (c, path) = self.route(repo)?;
            c.referrers(path, digest).await
        })
    }

    fn blob<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        size: Option<u64>,
    ) -> BoxFuture<'a, Result<BoxBlobBody>> {
        Box::pin(async move {
            let (c, path) = self.route(repo)?;
            c.blob(path, digest, size).await
        })
    }

    fn blob_range<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'a, Result<Bytes>> {
        Box::pin(async move {
            let (c, path) = self.route(repo)?;
            c.blob_range(path, digest, offset, len).await
        })
    }

    fn blob_ranges<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        ranges: &'a [(u64, u64)],
    ) -> BoxFuture<'a, Result<Vec<Bytes>>> {
        Box::pin(async move {
            let (c, path) = self.route(repo)?;
            c.blob_ranges(path, digest, ranges).await
        })
    }

    fn blob_size<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<u64>>> {
        Box::pin(async move {
            let (c, path) = self.route(repo)?;
            c.blob_size(path, digest).await
        })
    }

    fn blob_exists<'a>(&'a self, repo: &'a str, digest: &'a Digest) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let (c, path) = self.route(repo)?;
            c.blob_exists(path, digest).await
        })
    }

    /// Only within one registry; across registries the caller uploads.
    fn mount_blob<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        from_repo: &'a str,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let (c, path) = self.route(repo)?;
            let (host, _) = repo.split_once('/').unwrap_or((repo, ""));
            match from_repo.split_once('/') {
                Some((from_host, from_path)) if from_host == host => {
                    c.mount_blob(path, digest, from_path).await
                }
                _ => Ok(false),
            }
        })
    }

    fn push_blob<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        size: u64,
        body: BoxStream<'a, Result<Bytes>>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let (c, path) = self.route(repo)?;
            c.push_blob(path, digest, size, body).await
        })
    }

    fn push_blob_stream<'a>(
        &'a self,
        repo: &'a str,
        body: BoxStream<'a, Result<Bytes>>,
    ) -> BoxFuture<'a, Result<(Digest, u64)>> {
        Box::pin(async move {
            let (c, path) = self.route(repo)?;
            c.push_blob_stream(path, body).await
        })
    }

    fn put_manifest<'a>(
        &'a self,
        repo: &'a str,
        reference: &'a Selector,
        media_type: &'a str,
        bytes: Bytes,
    ) -> BoxFuture<'a, Result<Digest>> {
        Box::pin(async move {
            let (c, path) = self.route(repo)?;
            c.put_manifest(path, reference, media_type, bytes).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::memory::MemoryRegistry;

    fn two() -> (RegistryRouter, Arc<MemoryRegistry>, Arc<MemoryRegistry>) {
        let a = Arc::new(MemoryRegistry::new("a.example:5000"));
        let b = Arc::new(MemoryRegistry::new("localhost:5001"));
        let (a2, b2) = (a.clone(), b.clone());
        let router = RegistryRouter::new(Box::new(move |r: &Registry| {
            Ok(match r.name.as_str() {
                "a.example:5000" => a2.clone() as Arc<dyn RegistryApi>,
                "localhost:5001" => b2.clone() as Arc<dyn RegistryApi>,
                other => return Err(Error::NotFound(format!("no registry {other}"))),
            })
        }));
        (router, a, b)
    }

    #[test]
    fn registry_names() {
        for ok in [
            "localhost",
            "localhost:5000",
            "a.example",
            "127.0.0.1:5000",
            "docker.io",
        ] {
            assert!(is_registry_name(ok), "{ok}");
        }
        for bad in ["lab", ".Trash", "busybox:latest", "a/b", "http://x.y", ""] {
            assert!(!is_registry_name(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn each_repository_goes_to_its_registry() {
        let (router, a, b) = two();
        a.add_image("lab/one", "latest", &[]);
        b.add_image("lab/two", "v1", &[]);
        assert!(router.registries().unwrap().is_empty());
        assert_eq!(
            router.tags("a.example:5000/lab/one").await.unwrap(),
            vec!["latest"]
        );
        assert_eq!(
            router.tags("localhost:5001/lab/two").await.unwrap(),
            vec!["v1"]
        );
        // The same repository name in the other registry does not exist.
        assert!(router.tags("localhost:5001/lab/one").await.is_err());
        assert_eq!(
            router.registries().unwrap(),
            vec!["a.example:5000", "localhost:5001"]
        );
        assert_eq!(
            router.catalog_of("a.example:5000").await.unwrap(),
            vec!["a.example:5000/lab/one"]
        );
        let mut all = router.catalog().await.unwrap();
        all.sort();
        assert_eq!(
            all,
            vec!["a.example:5000/lab/one", "localhost:5001/lab/two"]
        );
        let m = router
            .manifest("a.example:5000/lab/one", &Selector::Tag("latest".into()))
            .await
            .unwrap();
        assert!(!m.bytes.is_empty());
    }

    #[tokio::test]
    async fn names_that_are_not_registries_are_not_found() {
        let (router, _, _) = two();
        for repo in ["lab/one", "busybox", "other.example/x"] {
            let e = router.tags(repo).await.unwrap_err();
            assert!(matches!(e, Error::NotFound(_)), "{repo}: {e:?}");
        }
        // A failed open is not remembered as a registry in use.
        assert!(router.registries().unwrap().is_empty());
    }
}
