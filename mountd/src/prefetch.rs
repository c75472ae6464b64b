//! `regfs prefetch MOUNTPOINT REF`: ask the daemon to warm its cache for an
//! image and show its progress (an indicatif bar on a terminal).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::cli::PrefetchArgs;
use crate::commit::{request, socket_for};
use crate::status::human;

/// A byte progress bar on standard error, hidden when `quiet` or when
/// standard error is not a terminal (then nothing is redrawn).
pub fn bar(quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(0);
    b.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        )
        .expect("static template")
        .progress_chars("#>-"),
    );
    b
}

/// Run `regfs prefetch`.
pub fn run(args: PrefetchArgs) -> anyhow::Result<()> {
    let socket = socket_for(Some(&args.mountpoint), args.control.as_deref())?;
    let bar = bar(args.quiet);
    bar.set_message(args.reference.clone());
    let mut on_progress = |p: &Value| {
        let u = |k: &str| p[k].as_u64().unwrap_or(0);
        bar.set_length(u("bytes_total"));
        bar.set_position(u("bytes_done"));
        bar.set_message(format!(
            "{} {}/{} layers",
            args.reference,
            u("layers_done"),
            u("layers_total")
        ));
    };
    let r = request(
        &socket,
        &json!({"op": "prefetch", "reference": args.reference}),
        &mut on_progress,
    );
    bar.finish_and_clear();
    let r = r?;
    let u = |k: &str| r[k].as_u64().unwrap_or(0);
    println!(
        "prefetched {} {} ({} layers, {}{}) in {:.1} s",
        args.reference,
        r["digest"].as_str().unwrap_or(""),
        u("layers"),
        human(u("bytes")),
        match u("lazy_layers") {
            0 => String::new(),
            n => format!(", {n} lazy"),
        },
        u("ms") as f64 / 1000.0,
    );
    Ok(())
}
