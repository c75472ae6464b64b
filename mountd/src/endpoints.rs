//! Mirrors (`--mirror`, `--hosts-dir`) for `regfs mount`.

use anyhow::Context;
use regfs::registry::{hosts, ClientOptions, MirrorSpec};

use crate::cli::MountArgs;

/// Add the mount's mirrors to `opts`: `--mirror` URLs first, then the
/// `hosts.toml` hosts, then (always) the registry itself.
pub fn apply(args: &MountArgs, opts: &mut ClientOptions) -> anyhow::Result<()> {
    for m in &args.mirror {
        opts.mirrors.push(MirrorSpec::parse(m)?);
    }
    if let Some(dir) = &args.hosts_dir {
        let found = hosts::load(dir, &opts.registry.name)
            .with_context(|| format!("--hosts-dir {}", dir.display()))?;
        opts.mirrors.extend(found);
    }
    for m in &opts.mirrors {
        tracing::info!(registry = %opts.registry, mirror = %m.url, pull = m.capabilities.pull, resolve = m.capabilities.resolve, "mirror");
    }
    Ok(())
}
