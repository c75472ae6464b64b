//! `regfs index export|import`: move a gzip layer's tar index and span index,
//! or a large blob's chunk list, between caches, offline (no daemon, no
//! network); `regfs index push`: publish an image's layer indexes and chunk
//! lists through a mount's daemon.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::Context;
use regfs::cache::Store;
use regfs::content::{export_chunk_list, export_index, import_chunk_list, import_index};
use regfs::digest::Digest;

use crate::cli::{IndexExportArgs, IndexImportArgs, IndexPushArgs};
use crate::client::{request, socket_for};
use crate::mount::default_cache_dir;
use crate::protocol::{IndexPushed, Request};

fn store(dir: Option<&Path>) -> anyhow::Result<Store> {
    let dir = dir.map(Path::to_path_buf).unwrap_or_else(default_cache_dir);
    Store::open_offline(&dir).with_context(|| format!("cache {}", dir.display()))
}

/// Run `regfs index export DIGEST FILE`.
pub fn export(args: IndexExportArgs) -> anyhow::Result<()> {
    let digest: Digest = args
        .digest
        .parse()
        .with_context(|| format!("not a digest: {:?}", args.digest))?;
    let store = store(args.cache_dir.as_deref())?;
    // A gzip layer's index, else a large blob's chunk list.
    let (bytes, what) = match export_index(&store, &digest) {
        Ok((blob, diff_id, bytes)) => (bytes, format!("layer {blob} (diff_id {diff_id})")),
        Err(regfs::Error::NotFound(e)) => match export_chunk_list(&store, &digest) {
            Ok(bytes) => (bytes, format!("the chunk list of blob {digest}")),
            Err(regfs::Error::NotFound(c)) => anyhow::bail!("{e}; {c}"),
            Err(c) => return Err(c.into()),
        },
        Err(e) => return Err(e.into()),
    };
    if args.file.as_os_str() == "-" {
        std::io::stdout().lock().write_all(&bytes)?;
    } else {
        std::fs::write(&args.file, &bytes)
            .with_context(|| format!("writing {}", args.file.display()))?;
    }
    eprintln!("exported {what}: {} bytes", bytes.len());
    Ok(())
}

/// Run `regfs index import FILE`.
pub fn import(args: IndexImportArgs) -> anyhow::Result<()> {
    let mut bytes = Vec::new();
    if args.file.as_os_str() == "-" {
        std::io::stdin().lock().read_to_end(&mut bytes)?;
    } else {
        bytes = std::fs::read(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?;
    }
    let store = store(args.cache_dir.as_deref())?;
    if bytes.starts_with(b"{") {
        let list = import_chunk_list(&store, &bytes)
            .with_context(|| format!("importing {}", args.file.display()))?;
        eprintln!(
            "imported the chunk list of blob {} ({} bytes, {} chunks)",
            list.blob,
            list.size,
            list.digests.len()
        );
        return Ok(());
    }
    let ix = import_index(&store, &bytes)
        .with_context(|| format!("importing {}", args.file.display()))?;
    eprintln!(
        "imported layer {} (diff_id {}): {} entries, {} spans",
        ix.blob,
        ix.diff_id,
        ix.tree.len(),
        ix.spans.checkpoints.len()
    );
    Ok(())
}

/// Run `regfs index push MOUNTPOINT REF`.
pub fn push(args: IndexPushArgs) -> anyhow::Result<()> {
    let socket = socket_for(Some(&args.mountpoint), args.control.as_deref())?;
    let req = Request::IndexPush {
        reference: args.reference.clone(),
    };
    let r = request::<(), IndexPushed>(&socket, &req, &mut |_| {})?;
    let how = match &r.fallback_tag {
        Some(t) => format!("listed under the referrers tag {t}"),
        None => "found through the registry's referrers API".to_string(),
    };
    let verb = if r.already {
        "already published for"
    } else {
        "published for"
    };
    if r.layers > 0 {
        println!(
            "{verb} {}: layer indexes of {} gzip layer(s) in artifact {}, {how}{}",
            args.reference,
            r.layers,
            r.artifact,
            match r.missing {
                0 => String::new(),
                n => format!(
                    "; {n} gzip layer(s) not indexed in this cache (read the rootfs once first)"
                ),
            }
        );
    }
    if let Some(a) = &r.chunk_artifact {
        println!(
            "{verb} {}: chunk lists of {} large blob(s) in artifact {a}, {how}",
            args.reference, r.chunk_lists
        );
    }
    Ok(())
}
