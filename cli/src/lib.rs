//! The `ticketing` command. Thin: every subcommand parses its arguments and calls a library
//! crate. Subcommands arrive with the issues that build them (`setup`, `demo`, `wallet`, ...).

use std::process::ExitCode;

use clap::Parser;

/// Anonymous public-transit tickets issued by a threshold cluster.
#[derive(Debug, Parser)]
#[command(name = "ticketing", version, about)]
struct Cli {}

/// Parse the command line and run it.
pub fn main() -> ExitCode {
    let Cli {} = Cli::parse();
    ExitCode::SUCCESS
}
