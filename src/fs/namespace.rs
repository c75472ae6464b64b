//! The registry's namespace: namespace directories from the catalog, `name:tag`
//! symlinks from tag lists, and tag resolution with a TTL.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{leaf, FileKind, Fs, Key, Listed};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::Manifest;
use crate::reference::{validate_component, validate_tag, Selector};

/// A value and when it was fetched.
type Stamped<T> = (Instant, T);
/// A list of names from the registry.
type Names = Arc<Vec<String>>;
/// `(repository, tag)`.
type TagKey = (Arc<str>, Arc<str>);

/// Cached catalog, tag lists and tag resolutions, each trusted for the tag TTL.
#[derive(Default)]
pub(super) struct Listings {
    /// `None` inside: the registry has no usable catalog (autofs mode).
    catalog: Mutex<Option<Stamped<Option<Names>>>>,
    tags: Mutex<HashMap<Arc<str>, Stamped<Names>>>,
    resolved: Mutex<HashMap<TagKey, Stamped<String>>>,
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}/{name}")
    }
}

impl Fs {
    /// The catalog, or `None` if the registry does not offer one.
    async fn catalog(&self) -> Option<Arc<Vec<String>>> {
        if let Some((at, c)) = &*self.ns.catalog.lock().unwrap() {
            if at.elapsed() < self.cfg.tag_ttl {
                return c.clone();
            }
        }
        let c = match self.content.client().catalog().await {
            Ok(list) => Some(Arc::new(list)),
            Err(e) => {
                tracing::info!(error = %e, "no catalog: names are looked up on demand");
                None
            }
        };
        *self.ns.catalog.lock().unwrap() = Some((Instant::now(), c.clone()));
        c
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

    /// Entries of namespace `prefix` ("" for the root): sub-namespaces and `name:tag` links.
    pub(super) async fn list_namespace(&self, prefix: &str) -> Result<Vec<Listed>> {
        let Some(catalog) = self.catalog().await else {
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
        if let Some(catalog) = self.catalog().await {
            let dir = format!("{path}/");
            if !catalog.iter().any(|r| r.starts_with(&dir)) {
                return Err(not_found());
            }
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
