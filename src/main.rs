//! `kubeless-broker`: the trigger broker daemon.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kubeless_broker::app::main(kubeless_broker::config::Args::parse()).await
}
