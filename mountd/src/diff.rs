//! `regfs diff REF1 REF2`: the paths added, deleted and modified between two
//! images, from the library's layer trees (no mount, no daemon). eStargz and
//! zstd:chunked layers are compared by their TOCs alone; plain gzip layers
//! are streamed once into the cache (or served by a published index).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use regfs::cache::Store;
use regfs::content::Content;
use regfs::diff::{diff_images, resolve_image, ImageAt};
use regfs::image::Platform;
use regfs::layer::Limits;
use regfs::reference::{Reference, Registry};
use regfs::registry::{Client, ClientOptions, RegistryApi, RegistryRouter};

use crate::cli::DiffArgs;

/// The default cache: beside a mount's, not shared with a running daemon.
fn default_cache() -> PathBuf {
    crate::mount::default_cache_dir().with_file_name("regfs-diff")
}

/// `REF` as (`host/path` repository for the router, reference); a reference
/// without a registry takes `default`'s.
fn repo_of(s: &str, default: Option<&str>) -> anyhow::Result<(String, Reference)> {
    let r: Reference = s
        .parse()
        .with_context(|| format!("not an image reference: {s:?}"))?;
    let Some(host) = r.registry.clone().or(default.map(str::to_string)) else {
        bail!("{s:?} names no registry: write HOST[:PORT]/NAME:TAG (e.g. localhost:5000/lab/python:3.11)");
    };
    let (registry, _) = Registry::parse(&host)?;
    let r = r.normalized_for(&registry);
    Ok((format!("{host}/{}", r.repository), r))
}

/// Run `regfs diff`.
pub fn run(args: DiffArgs) -> anyhow::Result<()> {
    let (repo_a, ref_a) = repo_of(&args.from, None)?;
    let (repo_b, ref_b) = repo_of(&args.to, ref_a.registry.as_deref())?;
    let platform = match &args.platform {
        Some(p) => p.parse::<Platform>()?,
        None => Platform::host(),
    };
    let (plain, cas, timeout) = (
        args.plain_http,
        args.ca_cert.clone(),
        Duration::from_secs(args.timeout.max(1)),
    );
    let router = RegistryRouter::new(Box::new(move |r: &Registry| {
        let mut opts = ClientOptions::new(r.clone());
        opts.plain_http = plain;
        opts.force_https = !cas.is_empty();
        opts.ca_certs = cas.clone();
        opts.timeout = timeout;
        Ok(Arc::new(Client::new(opts)?) as Arc<dyn RegistryApi>)
    }));
    let dir = args.cache_dir.clone().unwrap_or_else(default_cache);
    let store = Arc::new(
        Store::open(&dir, args.cache_size).with_context(|| format!("cache {}", dir.display()))?,
    );
    let mut content = Content::new(Arc::new(router), store, 4_000_000, Limits::default());
    // Adopted indexes are used at once; the whole-layer check is a mount's job.
    content.set_use_published_indexes(args.use_published_indexes, Duration::from_secs(3600));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        let a = resolve_image(&content, &repo_a, &ref_a.selector(), &platform)
            .await
            .with_context(|| format!("resolving {}", args.from))?;
        let b = resolve_image(&content, &repo_b, &ref_b.selector(), &platform)
            .await
            .with_context(|| format!("resolving {}", args.to))?;
        let at = |repo: &str, digest| ImageAt {
            repo: repo.to_string(),
            digest,
        };
        anyhow::Ok(diff_images(&content, &at(&repo_a, a), &at(&repo_b, b)).await?)
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let mut out = String::new();
        for c in &report.changes {
            out.push_str(&format!("{} {}\n", c.change.letter(), c.path));
        }
        print!("{out}");
    }
    if report.files_read > 0 {
        eprintln!(
            "regfs diff: {} file(s) of plain tar layers compared by reading them",
            report.files_read
        );
    }
    Ok(())
}
