//! `regfs`: mount a container registry as a directory.

mod argv;
mod cli;
mod commit;
mod config;
mod control;
mod daemon;
mod endpoints;
mod export;
mod logging;
mod mount;
mod size;
mod unmount;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse_from(argv::effective());
    let result = match cli.command {
        cli::Command::Mount(args) => mount::run(*args),
        cli::Command::Unmount(args) => unmount::run(&args.mountpoint),
        cli::Command::Commit(args) => commit::commit(args),
        cli::Command::Export(cli::ExportCommand::New(args)) => commit::export_new(args),
        cli::Command::Status(args) => commit::status(args),
    };
    if let Err(e) = result {
        eprintln!("regfs: {e:#}");
        std::process::exit(1);
    }
}
