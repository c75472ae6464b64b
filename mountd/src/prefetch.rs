//! `regfs prefetch MOUNTPOINT REF`: ask the daemon to warm its cache for an
//! image and show its progress (an indicatif bar on a terminal).

use crate::cli::PrefetchArgs;
use crate::client::{request, socket_for};
use crate::progress_bar::bar;
use crate::protocol::{PrefetchDone, PrefetchProgress, Request};
use crate::status::human;

/// Run `regfs prefetch`.
pub fn run(args: PrefetchArgs) -> anyhow::Result<()> {
    let socket = socket_for(Some(&args.mountpoint), args.control.as_deref())?;
    let bar = bar(args.quiet);
    bar.set_message(args.reference.clone());
    let mut on_progress = |p: PrefetchProgress| {
        bar.set_length(p.bytes_total);
        bar.set_position(p.bytes_done);
        bar.set_message(format!(
            "{} {}/{} layers",
            args.reference, p.layers_done, p.layers_total
        ));
    };
    let req = Request::Prefetch {
        reference: args.reference.clone(),
    };
    let r = request::<PrefetchProgress, PrefetchDone>(&socket, &req, &mut on_progress);
    bar.finish_and_clear();
    let r = r?;
    println!(
        "prefetched {} {} ({} layers, {}{}) in {:.1} s",
        args.reference,
        r.digest,
        r.layers,
        human(r.bytes),
        match r.lazy_layers {
            0 => String::new(),
            n => format!(", {n} lazy"),
        },
        r.ms as f64 / 1000.0,
    );
    Ok(())
}
