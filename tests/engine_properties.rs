//! Properties of the engine over random valid specs and random sequences of time,
//! verdicts and user actions: no stage is ever skipped; exposure never exceeds the
//! current stage's weight; a `Fail` verdict always serves only the baseline; a finished
//! rollout stays finished; planning twice from the same inputs gives the same plan. When
//! the flag write fails ([`plan_write_failure`]), the status never claims the flag that
//! was not written, and a rollback it held up is not lost.
//!
//! The random source has a fixed seed, printed by the test, so a failure reproduces.

use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::json;
use sluice::crd::{
    AnalysisSpec, AnalysisStatus, Approval, Control, FeatureRolloutSpec, FeatureRolloutStatus,
    FileTarget, FlagSpec, MetricSpec, OnError, Phase, RatioMetric, Stage, Target, Tolerance,
    Verdict, Weight,
};
use sluice::engine::{Observations, WriteFailure, plan, plan_write_failure};
use sluice::flagd::FlagState;

const SEED: [u8; 32] = *b"sluice-engine-properties-seed-01";
const CASES: u32 = 400;

/// The random knobs of a spec: an audience stage first, the general weights, whether the
/// final stage has a duration, approvals, durations (minutes), metrics, minimum samples,
/// and whether analysis errors roll back.
type Shape = (
    bool,
    Vec<u32>,
    bool,
    Vec<bool>,
    Vec<u32>,
    bool,
    Option<u64>,
    bool,
);

fn stage_spec(shape: Shape) -> FeatureRolloutSpec {
    let (
        audience,
        weights,
        final_duration,
        approvals,
        durations,
        metrics,
        min_samples,
        on_error_rollback,
    ) = shape;
    let mut stages = Vec::new();
    if audience {
        stages.push(Stage {
            name: Some("internal".into()),
            weight: Weight::FULL,
            audience: Some(json!({"ends_with": [{"var": "email"}, "@example.com"]})),
            duration: Some("5m".into()),
            min_samples: None,
            approval: Approval::Auto,
        });
    }
    let mut sorted = weights;
    sorted.sort_unstable();
    for units in sorted {
        stages.push(Stage {
            name: None,
            weight: Weight::from_units(units).unwrap(),
            audience: None,
            duration: None,
            min_samples,
            approval: Approval::Auto,
        });
    }
    stages.push(Stage {
        name: None,
        weight: Weight::FULL,
        audience: None,
        duration: None,
        min_samples: None,
        approval: Approval::Auto,
    });
    let n = stages.len();
    for (i, stage) in stages.iter_mut().enumerate() {
        if i + 1 < n || final_duration {
            stage.duration = Some(format!("{}m", durations[i % durations.len()]));
        }
        if approvals[i % approvals.len()] {
            stage.approval = Approval::Required;
        }
        if stage.name.is_none() {
            stage.name = Some(format!("s{i}"));
        }
    }
    let analysis = metrics.then(|| AnalysisSpec {
        interval: Some("1m".into()),
        metrics: vec![MetricSpec {
            name: "errors".into(),
            ratio: Some(RatioMetric {
                errors: "e".into(),
                requests: "r".into(),
                per_user: None,
            }),
            histogram: None,
            guard: None,
            max_increase: Some(Tolerance {
                relative: Some("10%".into()),
                absolute: None,
            }),
            max: None,
        }],
        on_error: Some(OnError {
            consecutive: 2,
            action: if on_error_rollback {
                sluice::crd::ErrorAction::Rollback
            } else {
                sluice::crd::ErrorAction::Hold
            },
        }),
        ..AnalysisSpec::default()
    });
    FeatureRolloutSpec {
        flag: FlagSpec {
            key: "checkout".into(),
            variants: [
                ("on".to_owned(), json!(true)),
                ("off".to_owned(), json!(false)),
            ]
            .into_iter()
            .collect(),
            baseline: "off".into(),
            candidate: "on".into(),
        },
        target: Target {
            file: Some(FileTarget {
                path: "flags.json".into(),
            }),
            ..Target::default()
        },
        stages: if metrics {
            stages
        } else {
            stages
                .into_iter()
                .map(|s| Stage {
                    min_samples: None,
                    ..s
                })
                .collect()
        },
        analysis,
        control: Control::default(),
        notifications: Vec::new(),
    }
}

fn specs() -> impl Strategy<Value = FeatureRolloutSpec> {
    (
        any::<bool>(),
        prop::collection::vec(1u32..=1_000_000, 0..5),
        any::<bool>(),
        prop::collection::vec(prop::bool::weighted(0.2), 1..4),
        prop::collection::vec(1u32..30, 1..4),
        any::<bool>(),
        prop::option::of(1u64..2_000),
        any::<bool>(),
    )
        .prop_map(stage_spec)
}

/// One thing that happens between two plans.
#[derive(Clone, Debug)]
struct Step {
    minutes: i64,
    verdict: Option<Verdict>,
    samples: u64,
    paused: Option<bool>,
    abort: Option<bool>,
    retry: bool,
    approve: Option<usize>,
    /// The flag write of this step's plan fails.
    write_fails: Option<WriteFailure>,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let verdict = prop_oneof![
        3 => Just(None),
        4 => Just(Some(Verdict::Pass)),
        1 => Just(Some(Verdict::Fail)),
        2 => Just(Some(Verdict::Inconclusive)),
        2 => Just(Some(Verdict::Error)),
    ];
    let step = (
        0i64..15,
        verdict,
        0u64..3_000,
        prop::option::weighted(0.1, any::<bool>()),
        prop::option::weighted(0.05, any::<bool>()),
        prop::bool::weighted(0.05),
        prop::option::weighted(0.2, 0usize..8),
        prop::option::weighted(
            0.15,
            prop_oneof![
                Just(WriteFailure::Unavailable("the API server is away".into())),
                Just(WriteFailure::Document("not a flagd document".into())),
                Just(WriteFailure::Target("a FIFO".into())),
            ],
        ),
    )
        .prop_map(
            |(minutes, verdict, samples, paused, abort, retry, approve, write_fails)| Step {
                minutes,
                verdict,
                samples,
                paused,
                abort,
                retry,
                approve,
                write_fails,
            },
        );
    prop::collection::vec(step, 1..60)
}

/// The look a step brings, made in `stage` at `now`.
fn observe(step: &Step, stage: u32, now: Timestamp) -> Observations {
    let analysis = step.verdict.map(|verdict| AnalysisStatus {
        at: now,
        stage,
        verdict,
        message: None,
        candidate_samples: Some(step.samples),
        metrics: vec![],
        sample_ratio: None,
        request_share: None,
    });
    Observations {
        analysis,
        generation: Some(1),
        ..Observations::default()
    }
}

fn stage_weight(spec: &FeatureRolloutSpec, index: u32) -> Weight {
    spec.stages[index as usize].weight
}

fn check_run(mut spec: FeatureRolloutSpec, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let mut now: Timestamp = "2026-11-24T12:00:00Z".parse().unwrap();
    let mut status: Option<FeatureRolloutStatus> = None;
    // A rollback for a failing look whose flag write failed: the next plan must roll back.
    let mut held_rollback = false;
    for step in steps {
        now += SignedDuration::from_mins(step.minutes);
        if let Some(p) = step.paused {
            spec.control.paused = p;
        }
        if let Some(a) = step.abort {
            spec.control.abort = a;
        }
        if step.retry {
            spec.control.retry += 1;
        }
        if let Some(i) = step.approve {
            spec.control.approve = spec.stages.get(i).and_then(|s| s.name.clone());
        }
        let current_stage = status.as_ref().and_then(|s| s.stage).unwrap_or(0);
        let obs = observe(&step, current_stage, now);

        let p = plan(&spec, status.as_ref(), &obs, now);
        prop_assert_eq!(
            &p,
            &plan(&spec, status.as_ref(), &obs, now),
            "planning twice differs"
        );

        if held_rollback && step.verdict.is_none() {
            prop_assert_eq!(
                &p.flag,
                &Some(FlagState::Baseline),
                "a rollback held up by a failed write was lost: {:?}",
                p.decision
            );
        }
        held_rollback = false;

        let prev_phase = status.as_ref().map_or(Phase::Pending, |s| s.phase);
        let prev_stage = status.as_ref().and_then(|s| s.stage);
        let prev_started = status.as_ref().and_then(|s| s.stage_started_at);
        let next = &p.status;

        // A finished rollout stays finished (a rollback until retried).
        if prev_phase == Phase::Promoted {
            prop_assert_eq!(next.phase, Phase::Promoted);
            prop_assert_eq!(&p.flag, &Some(FlagState::Promoted));
        }
        let retried = status
            .as_ref()
            .is_some_and(|s| spec.control.retry > s.retries);
        if prev_phase == Phase::RolledBack && (!retried || spec.control.abort) {
            prop_assert_eq!(next.phase, Phase::RolledBack);
            prop_assert_eq!(&p.flag, &Some(FlagState::Baseline));
        }

        // A Fail verdict always serves only the baseline, whatever else holds.
        let fail_counts = step.verdict == Some(Verdict::Fail) && prev_started.is_some();
        if fail_counts && prev_phase != Phase::Promoted {
            prop_assert_eq!(
                &p.flag,
                &Some(FlagState::Baseline),
                "a Fail did not roll back: {:?}",
                p.decision
            );
            prop_assert_eq!(next.phase, Phase::RolledBack);
        }
        if spec.control.abort && prev_phase != Phase::Promoted {
            prop_assert_eq!(&p.flag, &Some(FlagState::Baseline));
        }

        // No stage is skipped: the stage moves by at most one, or starts over at 0.
        if let (Some(before), Some(after)) = (prev_stage, next.stage) {
            prop_assert!(
                after <= before + 1 || after == 0,
                "stage jumped from {} to {}",
                before,
                after
            );
            if after == before + 1 {
                prop_assert_eq!(next.stage_started_at, Some(now), "a new stage starts now");
            }
        }
        if next.phase == Phase::Promoted && prev_phase != Phase::Promoted {
            prop_assert_eq!(
                next.stage,
                Some(spec.stages.len() as u32 - 1),
                "promoted before the final stage"
            );
        }

        // A stage ends only when its duration has passed, a fresh look of that stage passed
        // (with metrics), and the next stage's approval is given.
        if let sluice::engine::Decision::Advance { from, to } = p.decision {
            let started = prev_started.expect("an advance comes from a running stage");
            let stage = &spec.stages[from as usize];
            let duration = stage
                .duration
                .as_deref()
                .map(|d| sluice::crd::parse_duration(d).unwrap())
                .unwrap_or_default();
            prop_assert!(
                now >= started + duration,
                "stage {} ended before its duration",
                from
            );
            if spec.analysis.is_some() && prev_phase != Phase::WaitingForApproval {
                let passed = obs
                    .analysis
                    .as_ref()
                    .or(status.as_ref().and_then(|s| s.last_analysis.as_ref()))
                    .is_some_and(|a| {
                        a.verdict == Verdict::Pass
                            && a.stage == from
                            && a.at + SignedDuration::from_mins(1) > now
                    });
                prop_assert!(passed, "stage {} ended without a fresh passing look", from);
            }
            let next_stage = &spec.stages[to as usize];
            if next_stage.approval == Approval::Required {
                prop_assert_eq!(
                    spec.control.approve.as_ref(),
                    next_stage.name.as_ref(),
                    "entered a gated stage unapproved"
                );
            }
        }

        // Exposure never exceeds the current stage's weight; the flag matches the phase.
        match &p.flag {
            Some(FlagState::Split {
                candidate_weight,
                audience,
            }) => {
                let index = next.stage.expect("a split has a stage");
                prop_assert!(*candidate_weight <= stage_weight(&spec, index).units());
                prop_assert_eq!(audience, &spec.stages[index as usize].audience);
                prop_assert!(matches!(
                    next.phase,
                    Phase::Progressing | Phase::Paused | Phase::WaitingForApproval
                ));
            }
            Some(FlagState::Promoted) => prop_assert_eq!(next.phase, Phase::Promoted),
            Some(FlagState::Baseline) => {
                prop_assert!(!matches!(next.phase, Phase::Promoted | Phase::Progressing))
            }
            None => prop_assert!(false, "a valid spec must say what the flag serves"),
        }

        if let Some(failure) = &step.write_fails {
            let held = plan_write_failure(status.as_ref(), &p, failure, now);
            prop_assert_eq!(
                &held,
                &plan_write_failure(status.as_ref(), &p, failure, now),
                "planning a failed write twice differs"
            );
            let before = status.clone().unwrap_or_default();
            let claim = |s: &FeatureRolloutStatus| {
                (
                    s.phase,
                    s.stage,
                    s.weight,
                    s.audience,
                    s.stage_started_at,
                    s.history.clone(),
                )
            };
            prop_assert_eq!(
                claim(&held.status),
                claim(&before),
                "a failed write moved the status"
            );
            prop_assert_eq!(&held.flag, &None);
            prop_assert_eq!(&held.status.last_analysis, &p.status.last_analysis);
            let ready = held.status.conditions.iter().find(|c| c.type_ == "Ready");
            prop_assert!(
                ready.is_some_and(|c| c.status == "False" && c.reason == failure.reason()),
                "Ready must say the write failed: {:?}",
                ready
            );
            // Looks are made only while a stage runs.
            let running = matches!(
                prev_phase,
                Phase::Progressing | Phase::Paused | Phase::WaitingForApproval
            );
            held_rollback = fail_counts && running && p.status.phase == Phase::RolledBack;
            status = Some(held.status);
            continue;
        }
        status = Some(p.status);
    }
    Ok(())
}

#[test]
fn engine_properties_hold_for_random_specs_and_histories() {
    println!("proptest seed: {SEED:?}, {CASES} cases");
    let config = Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &SEED));
    let result = runner.run(&(specs(), steps()), |(spec, steps)| {
        prop_assert!(
            sluice::crd::validate(&spec).is_ok(),
            "generated spec invalid: {:?}",
            sluice::crd::validate(&spec)
        );
        check_run(spec, steps)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn random_runs_reach_every_phase() {
    // Guards the property test against a generator that never exercises the engine:
    // across the same seeded runs, every phase must occur.
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: CASES,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &SEED),
    );
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..CASES {
        let spec = specs().new_tree(&mut runner).unwrap().current();
        let steps = steps().new_tree(&mut runner).unwrap().current();
        let mut spec = spec;
        let mut status = None;
        let mut now: Timestamp = "2026-11-24T12:00:00Z".parse().unwrap();
        for step in steps {
            now += SignedDuration::from_mins(step.minutes);
            if let Some(p) = step.paused {
                spec.control.paused = p;
            }
            if let Some(i) = step.approve {
                spec.control.approve = spec.stages.get(i).and_then(|s| s.name.clone());
            }
            let stage = status
                .as_ref()
                .and_then(|s: &FeatureRolloutStatus| s.stage)
                .unwrap_or(0);
            let p = plan(&spec, status.as_ref(), &observe(&step, stage, now), now);
            seen.insert(format!("{:?}", p.status.phase));
            status = Some(p.status);
        }
    }
    for phase in [
        "Progressing",
        "WaitingForApproval",
        "Paused",
        "Promoted",
        "RolledBack",
    ] {
        assert!(seen.contains(phase), "no run reached {phase}: {seen:?}");
    }
}
