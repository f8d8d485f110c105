//! The conductor's command-line validator: `ticketing validate`, `ticketing validator ...`.
//! (Being written.)

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use ticketing_config::Settings;

/// `ticketing validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {}

/// `ticketing validator ...`.
#[derive(Debug, Subcommand)]
pub enum ValidatorCommand {}

/// Run `ticketing validate`; never fails: errors are printed and exit 2.
pub async fn validate(_settings: &Settings, _args: &ValidateArgs) -> ExitCode {
    ExitCode::from(2)
}

/// Run a `ticketing validator` subcommand.
pub async fn run(_settings: &Settings, cmd: ValidatorCommand) -> Result<ExitCode> {
    match cmd {}
}
