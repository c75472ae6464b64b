//! The byte progress bar the client commands show while a daemon works
//! (`regfs commit`, `regfs prefetch`).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

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
