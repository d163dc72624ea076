// See clippy.toml: a function longer than a screen is several steps that deserve names.
#![warn(clippy::too_many_lines)]

use std::process::ExitCode;

use clap::Parser;
use vip_operator::cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = vip_operator::telemetry::init(&cli.log_level, cli.log_format) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    // Each subcommand has its own error type; only the message matters here.
    let result: Result<(), Box<dyn std::error::Error>> = match cli.command {
        Command::Run(args) => match vip_operator::run::run(*args, vip_operator::shutdown_signal()).await {
            Ok(()) => Ok(()),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(e.exit_code());
            }
        },
        Command::Import(args) => match vip_operator::import::run(*args).await {
            Ok(()) => Ok(()),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(e.exit_code());
            }
        },
        Command::Simulator(args) => args.run().await.map_err(Into::into),
        Command::Crd(args) => {
            vip_operator::api::crds_yaml(args.name.as_deref()).map(|yaml| print!("{yaml}")).map_err(Into::into)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
