//! `ticketing`: every subcommand lives in the library; this file only hands over.

fn main() -> std::process::ExitCode {
    ticketing_cli::main()
}
