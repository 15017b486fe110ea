//! `kubectl sluice`: the kubectl plugin for Sluice's FeatureRollouts (see
//! docs/kubectl-sluice.md). kubectl finds it on the PATH as `kubectl-sluice`.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // One TLS crypto provider (ring) for every client, installed before any is built.
    sluice::prometheus::ensure_crypto_provider();
    sluice::kubectl::main(sluice::kubectl::Args::parse()).await
}
