//! `regfs convert SRC DST --estargz | --zstd-chunked [--prefetch-from TRACE]`:
//! copy an image registry to registry with its layers re-packed in a lazy
//! format (see `regfs::convert`), printing a line per layer and the pushed
//! digest.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use regfs::convert::{convert, ConvertOptions, Endpoints, LayerReport};
use regfs::export::Codec;
use regfs::reference::{Reference, Registry, Selector};
use regfs::registry::{Client, ClientOptions, RegistryApi};

use crate::cli::ConvertArgs;
use crate::status::human;

/// `HOST[:PORT]/NAME[:TAG|@DIGEST]` → (registry host, reference).
fn parse_ref(s: &str) -> anyhow::Result<(String, Reference)> {
    let r: Reference = s
        .parse()
        .with_context(|| format!("not an image reference: {s:?}"))?;
    let Some(host) = r.registry.clone() else {
        bail!("{s:?} names no registry: write HOST[:PORT]/NAME:TAG (e.g. localhost:5000/lab/python:3.11)");
    };
    let (registry, _) = Registry::parse(&host)?;
    Ok((host, r.normalized_for(&registry)))
}

fn client(args: &ConvertArgs, host: &str) -> anyhow::Result<Arc<dyn RegistryApi>> {
    let (registry, _) = Registry::parse(host)?;
    let mut opts = ClientOptions::new(registry);
    opts.plain_http = args.plain_http;
    opts.force_https = !args.ca_cert.is_empty();
    opts.ca_certs = args.ca_cert.clone();
    opts.timeout = Duration::from_secs(args.timeout.max(1));
    Ok(Arc::new(Client::new(opts)?))
}

fn layer_line(codec: Codec, r: &LayerReport) -> String {
    let short = |d: &regfs::digest::Digest| d.to_string().chars().take(19).collect::<String>();
    let kind = match r.source_type.rsplit_once('.') {
        Some((_, k)) => k.trim_start_matches("tar+").to_string(),
        None => r.source_type.clone(),
    };
    format!(
        "layer {}/{} of {} {} ({kind}, {}) -> {} ({}, {}, tar {}{}) in {:.1} s",
        r.index,
        r.count,
        r.platform,
        short(&r.source.0),
        human(r.source.1),
        short(&r.digest),
        codec.name(),
        human(r.size),
        human(r.tar_size),
        match r.prioritized {
            0 => String::new(),
            n => format!(", {n} file(s) before .prefetch.landmark"),
        },
        r.elapsed.as_secs_f64()
    )
}

/// Run `regfs convert`.
pub fn run(args: ConvertArgs) -> anyhow::Result<()> {
    let codec = if args.zstd_chunked {
        Codec::ZstdChunked
    } else {
        Codec::Estargz
    };
    let (src_host, src) = parse_ref(&args.source)?;
    let (dst_host, dst) = parse_ref(&args.destination)?;
    let tag = match dst.selector() {
        Selector::Tag(t) => t,
        Selector::Digest(_) => {
            bail!(
                "{}: the destination needs a tag (a converted image has a new digest)",
                args.destination
            )
        }
    };
    let prefetch = match &args.prefetch_from {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("reading the trace {}", p.display()))?
            .lines()
            .map(str::to_string)
            .collect(),
        None => Vec::new(),
    };
    let src_client = client(&args, &src_host)?;
    let dst_client = if dst_host == src_host {
        src_client.clone()
    } else {
        client(&args, &dst_host)?
    };
    let opts = ConvertOptions {
        codec,
        prefetch,
        tmp_dir: args.tmp_dir.clone().unwrap_or_else(std::env::temp_dir),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let started = Instant::now();
    let quiet = args.quiet;
    let out = rt
        .block_on(async {
            let ep = Endpoints {
                src: src_client.as_ref(),
                src_repo: &src.repository,
                dst: dst_client.as_ref(),
                dst_repo: &dst.repository,
            };
            convert(&ep, &src.selector(), &tag, &opts, &|r| {
                if !quiet {
                    eprintln!("{}", layer_line(codec, r));
                }
            })
            .await
        })
        // The chain once (an error's text already holds its source's).
        .map_err(|e| anyhow::anyhow!("{}", e.chain()))
        .with_context(|| format!("converting {}", args.source))?;
    for d in &out.skipped {
        eprintln!("regfs convert: {d} is not an image (an artifact); left out of the index");
    }
    println!(
        "converted {} to {} ({}, {} layer(s), {}) in {:.1} s: {}",
        args.source,
        args.destination,
        codec.name(),
        out.layers,
        human(out.bytes),
        started.elapsed().as_secs_f64(),
        out.digest
    );
    Ok(())
}
