//! The `sluice` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::{crd, manifest, simulate};

/// Roll feature flags out in stages; roll back on harm.
#[derive(Parser, Debug)]
#[command(name = "sluice", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the FeatureRollout CustomResourceDefinition as YAML.
    Crd,
    /// Check FeatureRollout manifests offline, as the API server would (for CI and GitOps
    /// pipelines). Lists every problem and exits 1 if there is any.
    Validate {
        /// Manifest files (YAML, several documents per file allowed; other kinds are
        /// reported).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run the decision-quality benchmark of BENCHMARK.md (simulated rollouts, rules
    /// modelled on today's tools) and print its report.
    Simulate {
        /// Simulated rollouts per case.
        #[arg(long, default_value_t = simulate::DEFAULT_RUNS)]
        runs: usize,
        /// Base seed of the random streams.
        #[arg(long, default_value_t = simulate::DEFAULT_SEED)]
        seed: u64,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
}

/// Runs the command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Crd => {
            print!("{}", crd::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Validate { files } => validate_files(&files),
        Command::Simulate {
            runs,
            seed,
            threads,
        } => {
            let results = simulate::run(&simulate::Config::benchmark(runs, seed, threads));
            print!("{}", simulate::report::render(&results));
            println!("wall time: {:.1} s", results.elapsed.as_secs_f64());
            ExitCode::SUCCESS
        }
    }
}

fn validate_files(files: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for file in files {
        let shown = file.display();
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) => {
                eprintln!("{shown}: cannot read: {e}");
                failed = true;
                continue;
            }
        };
        let documents = match manifest::documents(&text) {
            Ok(documents) => documents,
            Err(problem) => {
                eprintln!("{shown}: {problem}");
                failed = true;
                continue;
            }
        };
        if documents.is_empty() {
            eprintln!("{shown}: holds no document");
            failed = true;
        }
        for (i, document) in documents.iter().enumerate() {
            let name = document
                .pointer("/metadata/name")
                .and_then(|n| n.as_str())
                .map_or_else(|| format!("document {}", i + 1), str::to_owned);
            match manifest::check(document) {
                Ok(_) => println!("{shown}: {name}: valid"),
                Err(problems) => {
                    failed = true;
                    eprintln!("{shown}: {name}: {} problem(s)", problems.len());
                    for problem in problems {
                        eprintln!("  {problem}");
                    }
                }
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
