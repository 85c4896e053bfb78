//! The `lapdev` admin CLI; see `lapdev_server::cli`.

use clap::Parser as _;

#[tokio::main]
async fn main() {
    // One rustls crypto provider for the whole process; see ARCHITECTURE.md.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = lapdev_server::cli::Cli::parse();
    std::process::exit(lapdev_server::cli::run(cli).await);
}
