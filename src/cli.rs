//! The `sluice` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::analysis::look::{LookAt, RolloutRef, look};
use crate::crd::{AnalysisStatus, PrometheusSpec, Verdict, parse_duration};
use crate::prometheus::{PrometheusClient, client_config};
use crate::{crd, manifest, simulate, standalone};

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
    /// Run one analysis of a FeatureRollout against a live Prometheus and print the
    /// verdict per metric: check the queries before rolling out. Exits 1 when the verdict
    /// is Fail or Error.
    Analyze(AnalyzeRequest),
    /// Show, before a rollout starts, what each of its stages can detect: per stage the
    /// expected candidate requests, the smallest increase of each metric rolled back
    /// before the stage ends in 80 % of runs, the median minutes to roll back 2× and 5×,
    /// the chance the stage is held, the false-rollback budget it spends; from simulated
    /// rollouts through the real engine. Exits 1 when it warns, 2 on bad input.
    Plan(crate::plan::PlanRequest),
    /// Run the Kubernetes controller: reconcile FeatureRollouts, write their flags, report
    /// status; serves /livez, /readyz and /metrics on the admin address.
    Controller(crate::controller::Args),
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
        /// Skip the validity sweep (Sluice's A/A rate at other error rates and traffic).
        #[arg(long)]
        no_sweep: bool,
        /// Simulate only the cases of these scenarios (`S1`, `S2`, `S3a`, `S3b`, `S4`,
        /// `S5`: a case is kept when its scenario starts with one of them); repeatable.
        #[arg(long = "scenario", value_name = "SCENARIO")]
        scenarios: Vec<String>,
    },
    /// Run rollouts without a cluster: FeatureRollout YAML files in a directory, status
    /// in a state directory, flags in flagd JSON files, with a live view.
    Standalone(standalone::Options),
    /// Steer a running `sluice standalone`: status, pause, resume, approve, abort, retry.
    Ctl(standalone::ctl::CtlArgs),
}

/// Runs the command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Crd => {
            print!("{}", crd::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Validate { files } => validate_files(&files),
        Command::Analyze(request) => match analyze(request) {
            Ok(analysis) => {
                print!("{}", analysis_table(&analysis));
                match analysis.verdict {
                    Verdict::Pass | Verdict::Inconclusive => ExitCode::SUCCESS,
                    Verdict::Fail | Verdict::Error => ExitCode::FAILURE,
                }
            }
            Err(message) => {
                eprintln!("sluice analyze: {message}");
                ExitCode::from(2)
            }
        },
        Command::Plan(request) => crate::plan::run(request),
        Command::Controller(args) => run_controller(args),
        Command::Simulate {
            runs,
            seed,
            threads,
            no_sweep,
            scenarios,
        } => {
            let mut config = simulate::Config::benchmark(runs, seed, threads);
            config.sweep = !no_sweep;
            if !scenarios.is_empty() {
                config
                    .cases
                    .retain(|c| scenarios.iter().any(|s| c.scenario.starts_with(s.as_str())));
            }
            let results = simulate::run(&config);
            print!("{}", simulate::report::render(&results));
            println!("wall time: {:.1} s", results.elapsed.as_secs_f64());
            ExitCode::SUCCESS
        }
        Command::Standalone(options) => match standalone::run(options) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("sluice standalone: {e}");
                ExitCode::from(2)
            }
        },
        Command::Ctl(args) => match standalone::ctl::run(&args) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sluice ctl: {e}");
                ExitCode::from(2)
            }
        },
    }
}

fn run_controller(args: crate::controller::Args) -> ExitCode {
    use crate::runtime::{self, LogTo};
    if let Err(error) = runtime::init_logging(args.log_format, LogTo::Stderr) {
        eprintln!("sluice controller: {error}");
        return ExitCode::from(2);
    }
    let result = runtime::run(|shutdown| crate::controller::run_with(args, shutdown));
    match result {
        Err(error) => {
            eprintln!("sluice controller: {error}");
            ExitCode::from(2)
        }
        // A second signal stopped it at once.
        Ok(None) | Ok(Some(Ok(()))) => ExitCode::SUCCESS,
        Ok(Some(Err(error))) => {
            tracing::error!(%error, category = error.category(), "sluice controller stopped");
            ExitCode::FAILURE
        }
    }
}

/// The arguments of `sluice analyze`.
#[derive(clap::Args, Debug)]
pub struct AnalyzeRequest {
    /// The manifest (the first FeatureRollout in it, or the one named by --name).
    pub file: PathBuf,
    /// Which rollout in the file, by metadata.name.
    #[arg(long)]
    pub name: Option<String>,
    /// Prometheus base URL; overrides spec.analysis.prometheus.address.
    #[arg(long)]
    pub prometheus: Option<String>,
    /// The stage to analyse, by index (0-based) or name.
    #[arg(long, default_value = "0")]
    pub stage: String,
    /// How long the stage has run (the query window), e.g. 10m; defaults to the
    /// stage's duration.
    #[arg(long)]
    pub elapsed: Option<String>,
    /// Evaluation time (RFC 3339); defaults to now.
    #[arg(long)]
    pub at: Option<jiff::Timestamp>,
    /// The namespace for {{ namespace }}; defaults to metadata.namespace.
    #[arg(long)]
    pub namespace: Option<String>,
}

/// Reads the FeatureRollout of a manifest file (the first one, or the one named), checked
/// as the API server would check it; the error names the file and every problem's field.
pub fn load_rollout(
    file: &std::path::Path,
    name: Option<&str>,
) -> Result<crd::FeatureRollout, String> {
    let shown = file.display();
    let text = std::fs::read_to_string(file).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    let documents = manifest::documents(&text).map_err(|p| format!("{shown}: {p}"))?;
    let document = documents
        .iter()
        .find(|d| match name {
            Some(name) => d.pointer("/metadata/name").and_then(|n| n.as_str()) == Some(name),
            None => d.get("kind").and_then(|k| k.as_str()) == Some(manifest::KIND),
        })
        .ok_or_else(|| format!("{shown}: no FeatureRollout {}", name.unwrap_or("")))?;
    manifest::check(document).map_err(|problems| {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        format!("{shown}: invalid: {}", list.join("; "))
    })
}

fn analyze(request: AnalyzeRequest) -> Result<AnalysisStatus, String> {
    let shown = request.file.display();
    let rollout = load_rollout(&request.file, request.name.as_deref())?;
    let valid = crd::validate(&rollout.spec).map_err(|_| format!("{shown}: invalid"))?;
    if !valid.has_metrics() {
        return Err(format!(
            "{shown}: spec.analysis.metrics is empty: nothing to analyse"
        ));
    }
    let stage = match request.stage.parse::<usize>() {
        Ok(index) if index < valid.stages.len() => index,
        Ok(index) => {
            return Err(format!(
                "--stage {index}: the rollout has {} stages",
                valid.stages.len()
            ));
        }
        Err(_) => valid
            .stages
            .iter()
            .position(|s| s.name == request.stage)
            .ok_or_else(|| format!("--stage {:?}: no stage has that name", request.stage))?,
    };
    let elapsed = match &request.elapsed {
        Some(text) => parse_duration(text).map_err(|e| format!("--elapsed: {e}"))?,
        None if valid.stages[stage].duration.is_positive() => valid.stages[stage].duration,
        None => return Err("--elapsed is needed: the stage has no duration".into()),
    };
    let mut prometheus_spec: PrometheusSpec = valid.prometheus.clone().unwrap_or_default();
    if let Some(address) = request.prometheus {
        prometheus_spec.address = address;
    }
    if prometheus_spec.address.is_empty() {
        return Err(
            "no Prometheus address: set spec.analysis.prometheus.address or pass --prometheus"
                .into(),
        );
    }
    let config =
        client_config(&prometheus_spec).map_err(|e| format!("spec.analysis.prometheus: {e}"))?;
    let client = PrometheusClient::new(config).map_err(|e| format!("Prometheus client: {e}"))?;
    let now = request.at.unwrap_or_else(jiff::Timestamp::now);
    let namespace = request
        .namespace
        .or(rollout.metadata.namespace.clone())
        .unwrap_or_default();
    let name = rollout.metadata.name.clone().unwrap_or_default();
    let started = now - elapsed;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("tokio runtime: {e}"))?;
    let rollout_ref = RolloutRef {
        namespace: &namespace,
        name: &name,
    };
    // The stage's looks as the controller makes them, one per interval, each with the
    // previous one as `status.lastAnalysis`: the comparison needs the spread between looks.
    let interval = valid.interval.as_secs_f64().max(1.0);
    let looks = ((elapsed.as_secs_f64() / interval).ceil() as u32).clamp(1, MAX_ANALYZE_LOOKS);
    let step = elapsed.as_secs_f64() / f64::from(looks);
    Ok(runtime.block_on(async {
        let mut previous: Option<AnalysisStatus> = None;
        for k in 1..=looks {
            let at = LookAt {
                stage: stage as u32,
                stage_started_at: started,
                now: if k == looks {
                    now
                } else {
                    started + jiff::SignedDuration::from_secs_f64(step * f64::from(k))
                },
            };
            let status = look(
                &client,
                &valid,
                rollout_ref.clone(),
                at,
                previous.as_ref(),
            )
            .await;
            // A look that could not be made (Prometheus down, a query refused) would fail
            // the same way at every later look: stop at the first and say so.
            if status.verdict == Verdict::Error {
                let why = status
                    .metrics
                    .iter()
                    .filter(|m| m.verdict == Verdict::Error)
                    .find_map(|m| m.reason.as_deref().map(|r| format!("{}: {r}", m.name)))
                    .unwrap_or_else(|| "a query failed".into());
                eprintln!(
                    "sluice analyze: stopped at look {k} of {looks}: the look could not be made ({why})"
                );
                return status;
            }
            previous = Some(status);
        }
        previous.expect("at least one look")
    }))
}

/// The most looks `sluice analyze` replays in a stage.
const MAX_ANALYZE_LOOKS: u32 = 120;

/// The verdict table `sluice analyze` prints.
pub fn analysis_table(analysis: &AnalysisStatus) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let cohort = |c: &Option<crd::CohortNumbers>| match c {
        Some(c) => format!("{:.6} (n={})", c.value, c.n),
        None => "no data".to_owned(),
    };
    let number = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:+.6}"));
    let _ = writeln!(
        out,
        "{:<16} {:<13} {:<24} {:<24} {:>11} {:>11}",
        "METRIC", "VERDICT", "BASELINE", "CANDIDATE", "EFFECT", "BOUND"
    );
    for m in &analysis.metrics {
        let _ = writeln!(
            out,
            "{:<16} {:<13} {:<24} {:<24} {:>11} {:>11}",
            m.name,
            format!("{:?}", m.verdict),
            cohort(&m.baseline),
            cohort(&m.candidate),
            number(m.effect),
            number(m.bound)
        );
        let _ = writeln!(out, "  {}", m.reason.as_deref().unwrap_or_default());
        if let Some(z) = m.statistic {
            let at = |b: Option<f64>| {
                b.map_or_else(|| "none at this look".to_owned(), |b| format!("{b:.2}"))
            };
            let _ = writeln!(
                out,
                "  z = {z:.2} (boundary {}); recent z = {} (boundary {}); budget spent {:.1}%; dispersion κ = {:.3}",
                at(m.boundary),
                m.recent_statistic
                    .map_or_else(|| "-".to_owned(), |z| format!("{z:.2}")),
                at(m.recent_boundary),
                100.0 * m.budget_spent.unwrap_or_default(),
                m.dispersion.unwrap_or_default()
            );
        }
        if let Some(test) = &m.test {
            let _ = writeln!(out, "  test: {test}");
        }
        if let Some(shift) = &m.shift {
            let _ = writeln!(out, "  {shift}");
        }
        for query in &m.queries {
            let _ = writeln!(out, "  query: {query}");
        }
    }
    if let Some(s) = &analysis.sample_ratio {
        let _ = writeln!(
            out,
            "users: baseline {:.0} candidate {:.0}: candidate share {:.4}% (expected {:.4}%), p = {:.3e}{}",
            s.baseline_users.round(),
            s.candidate_users.round(),
            100.0 * s.observed_share,
            100.0 * s.expected_share,
            s.p_value,
            if s.mismatch {
                ": SAMPLE RATIO MISMATCH"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(
        out,
        "verdict: {:?}: {}",
        analysis.verdict,
        analysis.message.as_deref().unwrap_or_default()
    );
    out
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
            // Other kinds share files with rollouts in GitOps repositories: not ours to judge.
            if let Some(kind) = document.get("kind").and_then(|k| k.as_str())
                && kind != manifest::KIND
            {
                println!(
                    "{shown}: {name}: skipped ({kind} is not a {})",
                    manifest::KIND
                );
                continue;
            }
            match manifest::check(document) {
                Ok(rollout) => {
                    println!("{shown}: {name}: valid");
                    let warnings = crd::validate(&rollout.spec)
                        .map(|v| v.warnings)
                        .unwrap_or_default();
                    for warning in warnings {
                        println!("  warning: {warning}");
                    }
                }
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
