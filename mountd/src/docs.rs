//! `regfs completions SHELL` and `regfs manpage`: generated from the clap
//! definition, so they never drift from the command line.

use clap::CommandFactory;

use crate::cli::Cli;

/// Print the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "regfs", &mut buf);
    write_out(&buf)
}

/// Write to standard output; a closed pipe (`| head`) is not an error.
fn write_out(buf: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(buf) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

/// Print the man page (roff): `regfs(1)` with every subcommand's options.
pub fn manpage() -> anyhow::Result<()> {
    let cmd = Cli::command();
    let mut out = Vec::new();
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    man.render_subcommands_section(&mut out)?;
    // Each subcommand's options and examples, as SUBCOMMAND sections.
    for sub in cmd.get_subcommands() {
        // A one-shot command: leaking the few names is fine (clap wants &'static str).
        let name: &'static str = Box::leak(format!("regfs-{}", sub.get_name()).into_boxed_str());
        let sub = sub.clone().name(name).bin_name(name);
        let m = clap_mangen::Man::new(sub);
        m.render_name_section(&mut out)?;
        m.render_synopsis_section(&mut out)?;
        m.render_options_section(&mut out)?;
        m.render_extra_section(&mut out)?;
    }
    man.render_extra_section(&mut out)?;
    man.render_version_section(&mut out)?;
    write_out(&out)
}
