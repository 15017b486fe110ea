use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // One TLS crypto provider (ring) for every client, installed before any is built.
    sluice::prometheus::ensure_crypto_provider();
    sluice::cli::run(sluice::cli::Cli::parse())
}
