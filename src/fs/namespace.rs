//! The registry's namespace: namespace directories from the catalog, `name:tag`
//! symlinks from tag lists, and tag resolution with a TTL. A mount of many
//! registries has one directory per registry at its root, looked up by name.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use super::{leaf, FileKind, Fs, Key, Listed};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::Manifest;
use crate::reference::{validate_component, validate_tag, Selector};
use crate::registry::router::is_registry_name;

/// A value and when it was fetched.
type Stamped<T> = (Instant, T);
/// A list of names from the registry.
type Names = Arc<Vec<String>>;
/// `(repository, tag)`.
type TagKey = (Arc<str>, Arc<str>);

/// Cached catalog, tag lists and tag resolutions, each trusted for the tag TTL.
#[derive(Default)]
pub(super) struct Listings {
    /// By registry ("" for a mount of one registry); `None` inside: the
    /// registry has no usable catalog (autofs mode).
    catalog: Arc<Mutex<HashMap<String, Stamped<Option<Names>>>>>,
    tags: Mutex<HashMap<Arc<str>, Stamped<Names>>>,
    resolved: Mutex<HashMap<TagKey, Stamped<String>>>,
    /// By namespace: when it was last listed.
    listed: Mutex<HashMap<String, SystemTime>>,
    /// Catalog scopes being fetched again behind a stale answer (one
    /// refresh at a time).
    refreshing: Arc<Mutex<std::collections::HashSet<String>>>,
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}/{name}")
    }
}

impl Fs {
    /// Whether the mount serves many registries (`host/path` repositories,
    /// one directory per registry at the root).
    fn many_registries(&self) -> bool {
        self.content.client().registries().is_some()
    }

    /// The catalog's scope for namespace `prefix`: "" for a mount of one
    /// registry, else the registry `prefix` is in.
    fn catalog_scope(&self, prefix: &str) -> String {
        if self.many_registries() {
            prefix.split('/').next().unwrap_or_default().to_string()
        } else {
            String::new()
        }
    }

    /// The catalog that lists namespace `prefix` (with many registries, that
    /// of the registry `prefix` is in), or `None` if it offers none.
    async fn catalog(&self, prefix: &str) -> Option<Arc<Vec<String>>> {
        let scope = self.catalog_scope(prefix);
        if let Some((at, c)) = self.ns.catalog.lock().unwrap().get(&scope) {
            if at.elapsed() < self.cfg.tag_ttl {
                return c.clone();
            }
        }
        let client = self.content.client();
        let answer = if scope.is_empty() {
            client.catalog().await
        } else {
            client.catalog_of(&scope).await
        };
        let c = match answer {
            Ok(list) => Some(Arc::new(list)),
            Err(e) => {
                tracing::info!(error = %e, "no catalog: names are looked up on demand");
                None
            }
        };
        self.ns
            .catalog
            .lock()
            .unwrap()
            .insert(scope, (Instant::now(), c.clone()));
        c
    }

    /// Fetch the catalog of a mount of one registry now (when mounting), so
    /// that the first lookups of namespaces need not wait for it.
    pub async fn warm_catalog(&self) {
        if !self.many_registries() {
            self.catalog("").await;
        }
    }

    /// Whether namespace `path` (in `prefix`) exists by the catalog; `None`
    /// when the registry offers no catalog. A catalog older than the tag
    /// TTL still answers at once for a namespace it lists, and is fetched
    /// again behind that answer; a name it does not list is checked against
    /// a fresh catalog, so a new namespace shows and a missing one is ENOENT.
    async fn catalog_lists(&self, prefix: &str, path: &str) -> Option<bool> {
        let dir = format!("{path}/");
        let lists = |c: &Names| c.iter().any(|r| r.starts_with(&dir));
        let scope = self.catalog_scope(prefix);
        // A stale catalog answers for a name it lists; it stays stale (a
        // listing, which must be fresh, fetches it again itself).
        let stale_hit = match self.ns.catalog.lock().unwrap().get(&scope) {
            Some((at, Some(c))) => at.elapsed() >= self.cfg.tag_ttl && lists(c),
            _ => false,
        };
        if stale_hit && tokio::runtime::Handle::try_current().is_ok() {
            if self.ns.refreshing.lock().unwrap().insert(scope.clone()) {
                let (client, map) = (self.content.client_arc(), self.ns.catalog.clone());
                let refreshing = self.ns.refreshing.clone();
                tokio::spawn(async move {
                    let answer = if scope.is_empty() {
                        client.catalog().await
                    } else {
                        client.catalog_of(&scope).await
                    };
                    match answer {
                        Ok(list) => {
                            let fresh = (Instant::now(), Some(Arc::new(list)));
                            map.lock().unwrap().insert(scope.clone(), fresh);
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "catalog refresh failed; keeping the last one")
                        }
                    }
                    refreshing.lock().unwrap().remove(&scope);
                });
            }
            return Some(true);
        }
        self.catalog(prefix).await.map(|c| lists(&c))
    }

    async fn tag_list(&self, repo: &Arc<str>) -> Result<Arc<Vec<String>>> {
        if let Some((at, t)) = self.ns.tags.lock().unwrap().get(repo) {
            if at.elapsed() < self.cfg.tag_ttl {
                return Ok(t.clone());
            }
        }
        let t = Arc::new(self.content.client().tags(repo).await?);
        self.ns
            .tags
            .lock()
            .unwrap()
            .insert(repo.clone(), (Instant::now(), t.clone()));
        Ok(t)
    }

    /// Entries of namespace `prefix` ("" for the root): sub-namespaces and
    /// `name:tag` links. Notes when it was listed (see [`Fs::listing_mtime`]).
    pub(super) async fn list_namespace(&self, prefix: &str) -> Result<Vec<Listed>> {
        let out = self.compute_listing(prefix).await?;
        self.note_listed(prefix);
        Ok(out)
    }

    /// Note that the directory with listing key `key` (a namespace's path,
    /// or another changing listing's key) was listed now.
    pub(super) fn note_listed(&self, key: &str) {
        self.ns
            .listed
            .lock()
            .unwrap()
            .insert(key.to_string(), SystemTime::now());
    }

    /// The mtime of namespace `prefix` (or of the listing noted under that
    /// key by [`Fs::note_listed`]): when it was last listed, or now if
    /// that listing is older than the tag TTL (it may have changed). The
    /// kernel caches listings and drops the cache when a directory's mtime
    /// moves (`FUSE_AUTO_INVAL_DATA`), so a new tag, repository or registry
    /// shows in the next `ls` once the TTL has passed — without the network
    /// on lookups: the listing itself is refreshed only when listed.
    pub(super) fn listing_mtime(&self, prefix: &str) -> SystemTime {
        match self.ns.listed.lock().unwrap().get(prefix) {
            None => self.cfg.mount_time,
            Some(at) if at.elapsed().unwrap_or_default() < self.cfg.tag_ttl => *at,
            Some(_) => SystemTime::now(),
        }
    }

    async fn compute_listing(&self, prefix: &str) -> Result<Vec<Listed>> {
        if prefix.is_empty() {
            if let Some(hosts) = self.content.client().registries() {
                return Ok(hosts
                    .into_iter()
                    .map(|h| Listed {
                        key: Key::Namespace(h.as_str().into()),
                        name: h.into_bytes(),
                        kind: FileKind::Dir,
                    })
                    .collect());
            }
        }
        let Some(catalog) = self.catalog(prefix).await else {
            return Ok(Vec::new());
        };
        let mut namespaces = BTreeSet::new();
        let mut repos = BTreeSet::new();
        for r in catalog.iter() {
            let rest = if prefix.is_empty() {
                r.as_str()
            } else {
                match r.strip_prefix(prefix).and_then(|x| x.strip_prefix('/')) {
                    Some(x) => x,
                    None => continue,
                }
            };
            match rest.split_once('/') {
                Some((ns, _)) => namespaces.insert(ns.to_string()),
                None => repos.insert(rest.to_string()),
            };
        }
        let mut out = Vec::new();
        for ns in namespaces {
            out.push(Listed {
                key: Key::Namespace(join(prefix, &ns).into()),
                name: ns.into_bytes(),
                kind: FileKind::Dir,
            });
        }
        for name in repos {
            let repo: Arc<str> = join(prefix, &name).into();
            let tags = match self.tag_list(&repo).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(repo = %repo, error = %e, "cannot list tags");
                    continue;
                }
            };
            for tag in tags.iter() {
                if validate_tag(tag).is_err() {
                    continue;
                }
                let tag: Arc<str> = tag.as_str().into();
                let target = self.last_resolution(&repo, &tag);
                out.push(Listed {
                    key: Key::Tag {
                        repo: repo.clone(),
                        tag: tag.clone(),
                        target,
                    },
                    name: format!("{name}:{tag}").into_bytes(),
                    kind: FileKind::Symlink,
                });
            }
        }
        Ok(out)
    }

    /// The key for `name` in namespace `prefix`: `name@digest`, `name:tag` or a namespace.
    pub(super) async fn namespace_child(&self, prefix: &str, name: &[u8]) -> Result<Key> {
        let not_found = || Error::NotFound(format!("{}", String::from_utf8_lossy(name)));
        let name = std::str::from_utf8(name).map_err(|_| not_found())?;
        // Names the kernel or tools probe (".Trash", "autorun.inf", …) are simply absent.
        let invalid = |_| not_found();
        if prefix.is_empty() && self.many_registries() {
            // Any registry is looked up by name, like an autofs map key.
            return match is_registry_name(name) {
                true => Ok(Key::Namespace(name.into())),
                false => Err(not_found()),
            };
        }
        if let Some((n, d)) = name.split_once('@') {
            validate_component(n).map_err(invalid)?;
            let digest: Digest = d.parse().map_err(invalid)?;
            let repo: Arc<str> = join(prefix, n).into();
            return Ok(Key::Image { repo, digest });
        }
        if let Some((n, t)) = name.split_once(':') {
            validate_component(n).map_err(invalid)?;
            validate_tag(t).map_err(invalid)?;
            let (repo, tag): (Arc<str>, Arc<str>) = (join(prefix, n).into(), t.into());
            let target = self.resolve_tag(&repo, &tag).await?.into();
            return Ok(Key::Tag { repo, tag, target });
        }
        validate_component(name).map_err(invalid)?;
        let path = join(prefix, name);
        if self.catalog_lists(prefix, &path).await == Some(false) {
            return Err(not_found());
        }
        Ok(Key::Namespace(path.into()))
    }

    /// The latest resolution of `repo:tag` known, however old; empty if none.
    fn last_resolution(&self, repo: &Arc<str>, tag: &Arc<str>) -> Arc<str> {
        let key = (repo.clone(), tag.clone());
        match self.ns.resolved.lock().unwrap().get(&key) {
            Some((_, target)) => target.as_str().into(),
            None => "".into(),
        }
    }

    /// The symlink target of `repo:tag`: `name@digest`, for an index the manifest
    /// of the configured platform (or the index itself if no entry matches).
    /// The image manifest `repo` + `sel` names: a tag is resolved (with the
    /// tag TTL, like the `name:tag` symlinks), and an index stands for its
    /// entry for the configured platform.
    pub async fn resolve_image(&self, repo: &Arc<str>, sel: &Selector) -> Result<Digest> {
        let digest = match sel {
            Selector::Tag(tag) => {
                let target = self.resolve_tag(repo, &Arc::from(tag.as_str())).await?;
                let (_, d) = target
                    .rsplit_once('@')
                    .ok_or_else(|| Error::invalid(format!("tag target {target}")))?;
                d.parse::<Digest>()?
            }
            Selector::Digest(d) => d.clone(),
        };
        let info = self.content.manifest(repo, &digest).await?;
        match &info.manifest {
            Manifest::Image(_) => Ok(digest),
            Manifest::Index { entries, .. } => {
                Manifest::select_platform(entries, &self.cfg.platform)
                    .map(|e| e.manifest.digest.clone())
                    .ok_or_else(|| {
                        Error::NotFound(format!(
                            "{repo}@{digest}: no image for {}",
                            self.cfg.platform
                        ))
                    })
            }
        }
    }

    pub(super) async fn resolve_tag(&self, repo: &Arc<str>, tag: &Arc<str>) -> Result<String> {
        let key = (repo.clone(), tag.clone());
        if let Some((at, target)) = self.ns.resolved.lock().unwrap().get(&key) {
            if at.elapsed() < self.cfg.tag_ttl {
                return Ok(target.clone());
            }
        }
        let info = self
            .content
            .resolve(repo, &Selector::Tag(tag.to_string()))
            .await?;
        let digest = match &info.manifest {
            Manifest::Image(_) => info.digest.clone(),
            Manifest::Index { entries, .. } => {
                match Manifest::select_platform(entries, &self.cfg.platform) {
                    Some(e) => e.manifest.digest.clone(),
                    None => {
                        tracing::info!(%repo, %tag, platform = %self.cfg.platform, "no matching platform; tag shows the index");
                        info.digest.clone()
                    }
                }
            }
        };
        let target = format!("{}@{}", leaf(repo), digest);
        self.ns
            .resolved
            .lock()
            .unwrap()
            .insert(key, (Instant::now(), target.clone()));
        Ok(target)
    }
}
