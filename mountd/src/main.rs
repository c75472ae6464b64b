//! `regfs`: mount a container registry as a directory.

mod als;
mod argv;
mod cli;
mod client;
mod config;
mod control;
mod convert;
mod daemon;
mod diff;
mod docs;
mod endpoints;
mod export;
mod index;
mod logging;
mod metrics;
mod mount;
mod prefetch;
mod progress_bar;
mod protocol;
mod reachability;
mod readiness;
mod size;
mod status;
mod supervise;
mod unmount;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse_from(argv::effective());
    if matches!(cli.command, cli::Command::Status(_)) {
        // `regfs status | head`: end quietly when the reader goes, as
        // coreutils do, instead of failing on EPIPE. (Not for the daemon,
        // whose sockets must not kill it.)
        // SAFETY: restoring a default disposition at start-up.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match cli.command {
        cli::Command::Mount(args)
            if args.supervise && !mount::is_supervised_server() && !args.daemon =>
        {
            supervise::run(&args, argv::effective().to_vec())
        }
        cli::Command::Mount(args) => mount::run(*args),
        cli::Command::Restart(args) => client::restart(args),
        cli::Command::Trace(cli::TraceCommand::Start(args)) => client::trace_start(args),
        cli::Command::Trace(cli::TraceCommand::Stop(args)) => client::trace_stop(args),
        cli::Command::StateCheck(args) => supervise::state_check(&args.dir),
        cli::Command::Unmount(args) => unmount::run(&args.mountpoint),
        cli::Command::Commit(args) => client::commit(args),
        cli::Command::Export(cli::ExportCommand::New(args)) => client::export_new(args),
        cli::Command::Status(args) => client::status(args),
        cli::Command::Prefetch(args) => prefetch::run(args),
        cli::Command::Index(cli::IndexCommand::Export(args)) => index::export(args),
        cli::Command::Index(cli::IndexCommand::Import(args)) => index::import(args),
        cli::Command::Index(cli::IndexCommand::Push(args)) => index::push(args),
        cli::Command::Diff(args) => diff::run(args),
        cli::Command::Convert(args) => convert::run(args),
        cli::Command::Completions(args) => docs::completions(args.shell),
        cli::Command::Manpage => docs::manpage(),
    };
    if let Err(e) = result {
        eprintln!("regfs: {e:#}");
        std::process::exit(1);
    }
}
