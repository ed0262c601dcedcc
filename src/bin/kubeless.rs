//! `kubeless`: the Kubeless-compatible CLI.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match kubeless_broker::cli::Cli::try_parse() {
        Ok(cli) => kubeless_broker::cli::main(cli).await,
        Err(e) => kubeless_broker::cli::usage_error(e),
    }
}
