//! `regfs`: mount a container registry as a directory.

mod cli;
mod daemon;
mod logging;
mod mount;
mod size;
mod unmount;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Mount(args) => mount::run(*args),
        cli::Command::Unmount(args) => unmount::run(&args.mountpoint),
    };
    if let Err(e) = result {
        eprintln!("regfs: {e:#}");
        std::process::exit(1);
    }
}
