//! `regfs index export|import`: move a gzip layer's tar index and span index
//! between caches, offline (no daemon, no network).

use std::io::{Read, Write};
use std::path::Path;

use anyhow::Context;
use regfs::cache::Store;
use regfs::content::{export_index, import_index};
use regfs::digest::Digest;

use crate::cli::{IndexExportArgs, IndexImportArgs};
use crate::mount::default_cache_dir;

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
    let (blob, diff_id, bytes) = export_index(&store, &digest)?;
    if args.file.as_os_str() == "-" {
        std::io::stdout().lock().write_all(&bytes)?;
    } else {
        std::fs::write(&args.file, &bytes)
            .with_context(|| format!("writing {}", args.file.display()))?;
    }
    eprintln!(
        "exported layer {blob} (diff_id {diff_id}): {} bytes",
        bytes.len()
    );
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
