//! `kubeless`: the Kubeless-compatible CLI.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    kubeless_broker::cli::main(kubeless_broker::cli::Cli::parse()).await
}
