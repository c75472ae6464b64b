//! Warming what an `exec` reads. Two triggers:
//!
//! - **A runtime prepares an image** (podman looks its layers up in the
//!   layer store, containerd makes its remote snapshots): every lazy layer's
//!   TOC is fetched at once, and the program the image's default command
//!   names is fetched and verified in the background (with `/etc/passwd`
//!   and `/etc/group`, which the runtime reads to set the process's user,
//!   and what the C library reads on start: the locale the image's
//!   environment names, the charset converters' cache, the local time zone).
//!   The runtime is still pulling and setting up meanwhile.
//! - **A file is opened for exec** (the kernel passes `__FMODE_EXEC` in the
//!   open flags, through overlayfs too: a `chroot`, a container's own
//!   `exec`s, the loader the kernel maps): that file, with what the C
//!   library reads on start for the image's environment (the exec's own is
//!   not known; a container runtime sets the image's).
//!
//! Then what `exec` of it reads next ([`crate::exec_deps`]): its dynamic
//! loader and `/etc/ld.so.cache`, its shared libraries and theirs, or a
//! script's interpreter, resolved in the image's merged tree. Without this
//! the loader asks for them one after another, a round trip each; warmed,
//! each wave of files (the program; then what it names; then what those
//! name) is fetched side by side. The same files the exec reads, fetched
//! the same verified way; nothing else.
//!
//! With `--use-published-indexes`, the files of a prefetch list published
//! next to the image (`regfs trace stop … --publish`) join a runtime's
//! first wave.
//!
//! Only for images whose every layer is lazy (eStargz, zstd:chunked): the
//! merged tree of a gzip image needs its layers streamed whole, which stays
//! the container's own reads' decision. Once per image (runtime) or file
//! (exec) per process, at most [`MAX_FILES`] files and [`MAX_BYTES`] bytes
//! each time.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::trees::LoadedTree;
use super::{Fs, TreeId, TreeWhich};
use crate::digest::Digest;
use crate::error::Result;
use crate::estargz::LazySpec;
use crate::exec_deps::{exec_deps, ExecDeps};
use crate::image::{ImageConfig, Manifest};
use crate::layer::{NodeId, NodeKind};

/// Most files one image's warming reads.
pub const MAX_FILES: usize = 256;
/// Most bytes (uncompressed) one image's warming reads.
pub const MAX_BYTES: u64 = 256 << 20;
/// `PATH` when the image's environment sets none (as runc and podman use).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Files every container start reads besides the program's own.
const RUNTIME_FILES: &[&str] = &["/etc/passwd", "/etc/group"];
/// Files the C library reads on start whatever the locale: the charset
/// converters' cache (glibc, multiarch or not) and the local time zone.
const C_LIBRARY_FILES: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache",
    "/usr/lib/aarch64-linux-gnu/gconv/gconv-modules.cache",
    "/usr/lib64/gconv/gconv-modules.cache",
    "/usr/lib/gconv/gconv-modules.cache",
    "/etc/localtime",
];

/// What glibc reads when a program sets its locale from the image's
/// environment (`LC_ALL`, else `LC_CTYPE`, else `LANG`, as `setlocale`
/// looks): the locale archive, or the locale's `LC_CTYPE` under the name
/// glibc normalises it to (`C.UTF-8` → `C.utf8`); and [`C_LIBRARY_FILES`].
/// Paths the image lacks are skipped by the warming.
fn c_library_files(env: &[String]) -> Vec<String> {
    let var = |name: &str| {
        env.iter()
            .find_map(|e| e.strip_prefix(name)?.strip_prefix('='))
            .filter(|v| !v.is_empty())
    };
    let mut out: Vec<String> = Vec::new();
    if let Some(locale) = var("LC_ALL")
        .or_else(|| var("LC_CTYPE"))
        .or_else(|| var("LANG"))
    {
        // A name, not a path: nothing with a slash or a parent reference.
        if locale != "C" && locale != "POSIX" && !locale.contains('/') && !locale.contains("..") {
            out.push("/usr/lib/locale/locale-archive".into());
            let (lang, codeset) = locale.split_once('.').unwrap_or((locale, ""));
            let (codeset, modifier) = codeset.split_once('@').unwrap_or((codeset, ""));
            let normalized: String = codeset
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .map(|c| c.to_ascii_lowercase())
                .collect();
            let mut name = lang.to_string();
            if !normalized.is_empty() {
                name = format!("{name}.{normalized}");
            }
            if !modifier.is_empty() {
                name = format!("{name}@{modifier}");
            }
            out.push(format!("/usr/lib/locale/{name}/LC_CTYPE"));
            if name != locale {
                out.push(format!("/usr/lib/locale/{locale}/LC_CTYPE"));
            }
        }
    }
    out.extend(C_LIBRARY_FILES.iter().map(|p| p.to_string()));
    out
}

/// Where the dynamic loader looks for libraries when the program names no
/// directory (glibc's multiarch and trusted directories, musl's).
const LIB_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
    "/usr/local/lib",
];

/// Most exec'd files remembered as warmed before starting over.
const MAX_EXECS_REMEMBERED: usize = 4096;

/// What was warmed (or is being warmed) in this process.
#[derive(Default)]
pub(super) struct Warmed {
    /// Images, by repository and manifest digest.
    images: Mutex<HashSet<(Arc<str>, Digest)>>,
    /// Files opened for exec.
    execs: Mutex<HashSet<(Arc<TreeId>, NodeId)>>,
    /// What exec of a file of an image's merged tree reads, once a warming
    /// has read the file (`None`: not a program): a later warming reaching
    /// it (an exec after the runtime's warming) reads it no more.
    deps: Mutex<DepsMemo>,
}

/// What exec of a file of an image's merged tree reads, by image and node.
type DepsMemo = HashMap<(Digest, NodeId), Option<Arc<ExecDeps>>>;

/// What one warming read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WarmedFiles {
    /// The files read, in the order they were found (paths in the image).
    pub paths: Vec<String>,
    /// Their bytes (uncompressed).
    pub bytes: u64,
}

impl Fs {
    /// Warm image `repo@image`'s start-up files in a task of its own (see
    /// the module docs); once per image, failures only logged.
    pub fn warm_entrypoint_in_background(self: &Arc<Self>, repo: &str, image: &Digest) {
        let id: (Arc<str>, Digest) = (repo.into(), image.clone());
        if !self.warmed.images.lock().unwrap().insert(id.clone()) {
            return;
        }
        let fs = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            match fs.warm_entrypoint(&id.0, &id.1).await {
                Ok(w) if w.paths.is_empty() => {}
                Ok(w) => tracing::info!(
                    repo = %id.0, image = %id.1, files = w.paths.len(), bytes = w.bytes, paths = ?w.paths,
                    ms = started.elapsed().as_millis() as u64, "warmed the image's start-up files"
                ),
                Err(e) => {
                    tracing::info!(repo = %id.0, image = %id.1, error = %e, "warming the image's start-up files failed")
                }
            }
        });
    }

    /// Read (fetch and verify) image `repo@image`'s start-up files now; see
    /// the module docs. Nothing for an image with a layer that is not lazy
    /// or without a default command.
    pub async fn warm_entrypoint(&self, repo: &str, image: &Digest) -> Result<WarmedFiles> {
        let Some((loaded, config)) = self.lazy_rootfs(repo, image).await? else {
            return Ok(WarmedFiles::default());
        };
        let Some(argv0) = config.command.first() else {
            return Ok(WarmedFiles::default());
        };
        let tree = &loaded.tree;
        let is_file = |p: &str| {
            tree.resolve(p.as_bytes())
                .is_some_and(|n| tree.node(n).kind == NodeKind::File)
        };
        let path_var = config
            .env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        let program = if argv0.contains('/') {
            Some(argv0.clone())
        } else {
            path_var
                .split(':')
                .map(|d| format!("{}/{argv0}", d.trim_end_matches('/')))
                .find(|p| is_file(p))
        };
        let Some(program) = program else {
            return Ok(WarmedFiles::default());
        };
        // A prefetch list published next to the image (`regfs trace stop
        // --publish`, read with --use-published-indexes): those files too.
        let listed = match self.content.published_prefetch_list(repo, image).await {
            Ok(l) => l,
            Err(e) => {
                tracing::info!(%repo, %image, error = %e, "published prefetch list not used");
                Vec::new()
            }
        };
        // The runtime itself reads the user and group databases (runc,
        // crun and podman resolve the process's user in the rootfs).
        let first: Vec<String> = std::iter::once(program)
            .chain(RUNTIME_FILES.iter().map(|p| p.to_string()))
            .chain(c_library_files(&config.env))
            .chain(
                listed
                    .iter()
                    .map(|p| format!("/{}", p.trim_start_matches('/'))),
            )
            .collect();
        self.warm_waves(image, &loaded, first).await
    }

    /// The merged tree of image `repo@image` and its config, if every layer
    /// is lazy; every lazy layer's TOC is started either way.
    async fn lazy_rootfs(
        &self,
        repo: &str,
        image: &Digest,
    ) -> Result<Option<(Arc<LoadedTree>, Arc<ImageConfig>)>> {
        let info = self.content.manifest(repo, image).await?;
        let Manifest::Image(m) = &info.manifest else {
            return Ok(None);
        };
        // Every lazy layer's TOC now, whatever the rest of the image is.
        self.content.start_tocs(repo, &m.layers, None);
        if m.is_artifact()
            || !m
                .layers
                .iter()
                .all(|l| LazySpec::from_descriptor(l).is_some())
        {
            return Ok(None);
        }
        let config = self.content.config(repo, &m.config).await?;
        let id = Arc::new(TreeId {
            repo: repo.into(),
            image: image.clone(),
            which: TreeWhich::Rootfs,
        });
        Ok(Some((self.trees.load(self, &id).await?, config)))
    }

    /// File `node` of `tree` was opened for `exec` (the kernel's open of a
    /// program or of its loader): warm, in a task of its own, what that
    /// exec reads next, resolved in the image's merged tree (see the module
    /// docs). Once per file per process; failures only logged.
    pub(super) fn warm_exec_in_background(self: &Arc<Self>, tree: &Arc<TreeId>, node: NodeId) {
        {
            let mut execs = self.warmed.execs.lock().unwrap();
            if execs.len() >= MAX_EXECS_REMEMBERED {
                execs.clear();
            }
            if !execs.insert((tree.clone(), node)) {
                return;
            }
        }
        let (fs, tree) = (self.clone(), tree.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            match fs.warm_exec(&tree, node).await {
                Ok(w) if w.paths.is_empty() => {}
                Ok(w) => tracing::info!(
                    repo = %tree.repo, image = %tree.image, files = w.paths.len(), bytes = w.bytes,
                    paths = ?w.paths, ms = started.elapsed().as_millis() as u64,
                    "warmed what an exec reads"
                ),
                Err(e) => tracing::info!(
                    repo = %tree.repo, image = %tree.image, error = %e, "warming what an exec reads failed"
                ),
            }
        });
    }

    /// Read what exec of file `node` of `tree` reads (the file, its loader,
    /// libraries, interpreter), resolved in the image's merged tree; nothing
    /// unless every layer of the image is lazy.
    pub async fn warm_exec(&self, tree: &Arc<TreeId>, node: NodeId) -> Result<WarmedFiles> {
        let Some((rootfs, config)) = self.lazy_rootfs(&tree.repo, &tree.image).await? else {
            return Ok(WarmedFiles::default());
        };
        let own = match tree.which {
            TreeWhich::Rootfs => rootfs.clone(),
            TreeWhich::Layer(_) => self.trees.load(self, tree).await?,
        };
        let Some(path) = own.tree.path_of(node) else {
            return Ok(WarmedFiles::default());
        };
        let path = format!(
            "/{}",
            String::from_utf8_lossy(&path).trim_start_matches('/')
        );
        // What the C library reads on start, for the image's environment:
        // the exec's own is not known here, and a container runtime sets
        // the image's.
        let first = std::iter::once(path)
            .chain(c_library_files(&config.env))
            .collect();
        self.warm_waves(&tree.image, &rootfs, first).await
    }

    /// Read `first` (paths in the merged tree `loaded`) side by side, then
    /// what exec of each names ([`exec_deps`]), wave after wave, within
    /// [`MAX_FILES`] and [`MAX_BYTES`].
    async fn warm_waves(
        &self,
        image: &Digest,
        loaded: &Arc<LoadedTree>,
        first: Vec<String>,
    ) -> Result<WarmedFiles> {
        let mut out = WarmedFiles::default();
        let tree = &loaded.tree;
        let is_file = |p: &str| {
            tree.resolve(p.as_bytes())
                .is_some_and(|n| tree.node(n).kind == NodeKind::File)
        };
        let mut wave = first;
        let mut seen: HashSet<NodeId> = HashSet::new();
        let mut loader_cache = false;
        let mut found: Vec<(String, Option<Arc<ExecDeps>>)> = Vec::new();
        while !wave.is_empty() {
            let mut files = Vec::new();
            for path in wave.drain(..) {
                let Some(node) = tree.resolve(path.as_bytes()) else {
                    continue;
                };
                let size = tree.node(node).size;
                if tree.node(node).kind != NodeKind::File
                    || out.paths.len() >= MAX_FILES
                    || out.bytes + size > MAX_BYTES
                    || size > u32::MAX as u64
                    || !seen.insert(node)
                {
                    continue;
                }
                out.bytes += size;
                out.paths.push(path.clone());
                let known = self
                    .warmed
                    .deps
                    .lock()
                    .unwrap()
                    .get(&(image.clone(), node))
                    .cloned();
                match known {
                    Some(deps) => found.push((path, deps)),
                    None => files.push((path, node, size)),
                }
            }
            let nodes: Vec<NodeId> = files.iter().map(|f| f.1).collect();
            loaded.fetch_together(&self.content, &nodes).await;
            let reads = files.into_iter().map(|(path, node, size)| {
                let read = loaded.clone().read(&self.content, node, 0, size as u32);
                async move { read.await.map(|data| (path, node, data)) }
            });
            for (path, node, data) in futures_util::future::try_join_all(reads).await? {
                let deps = exec_deps(&data).map(Arc::new);
                let mut memo = self.warmed.deps.lock().unwrap();
                if memo.len() >= MAX_EXECS_REMEMBERED {
                    memo.clear();
                }
                memo.insert((image.clone(), node), deps.clone());
                found.push((path, deps));
            }
            for (path, deps) in found.drain(..) {
                let Some(deps) = deps else {
                    continue;
                };
                if let Some(interp) = &deps.interpreter {
                    wave.push(interp.clone());
                    if !deps.needed.is_empty() && !loader_cache {
                        loader_cache = true;
                        wave.push("/etc/ld.so.cache".into());
                    }
                }
                let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
                let search: Vec<String> = deps
                    .search
                    .iter()
                    .map(|s| s.replace("$ORIGIN", dir).replace("${ORIGIN}", dir))
                    .chain(LIB_DIRS.iter().map(|s| s.to_string()))
                    .collect();
                for lib in &deps.needed {
                    if lib.contains('/') {
                        wave.push(lib.clone());
                    } else if let Some(p) = search
                        .iter()
                        .map(|d| format!("{}/{lib}", d.trim_end_matches('/')))
                        .find(|p| is_file(p))
                    {
                        wave.push(p);
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::c_library_files;

    fn env(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_locale_comes_from_the_environment_as_setlocale_reads_it() {
        let f = c_library_files(&env(&["PATH=/bin", "LANG=C.UTF-8"]));
        assert!(
            f.contains(&"/usr/lib/locale/C.utf8/LC_CTYPE".to_string()),
            "{f:?}"
        );
        assert!(f.contains(&"/usr/lib/locale/C.UTF-8/LC_CTYPE".to_string()));
        assert!(f.contains(&"/usr/lib/locale/locale-archive".to_string()));
        assert!(f.contains(&"/etc/localtime".to_string()));
        // LC_ALL wins over LANG; modifiers are kept.
        let f = c_library_files(&env(&["LANG=C.UTF-8", "LC_ALL=de_DE.ISO-8859-1@euro"]));
        assert!(
            f.contains(&"/usr/lib/locale/de_DE.iso88591@euro/LC_CTYPE".to_string()),
            "{f:?}"
        );
        assert!(!f.iter().any(|p| p.contains("C.utf8")));
        // No locale, the C locale, or a name that is a path: no locale files.
        for e in [
            &[][..],
            &["LANG=C"],
            &["LANG=../../etc"],
            &["LANG=/tmp/x"],
            &["LANG="],
        ] {
            let f = c_library_files(&env(e));
            assert!(!f.iter().any(|p| p.contains("/locale/")), "{e:?}: {f:?}");
            assert!(f.contains(&"/etc/localtime".to_string()));
        }
    }
}
