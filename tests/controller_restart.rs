//! Killing the controller at any point of a rollout and starting it again neither skips
//! nor repeats a stage.
//!
//! Every reconcile runs with a fresh controller state (nothing survives but what the API
//! server holds, as after a restart). Then the whole rollout is run again once per write
//! the reference run made, with that write failing, either before it is applied (the
//! process died before sending it) or after (it died before reading the answer): a crash
//! between the flag write and the status write is among them. Each run must write the
//! same flag exposures and claim the same stages, in the same order, as the reference.

mod support;

use jiff::{SignedDuration, Timestamp};
use serde_json::Value;
use sluice::crd::Phase;
use support::kube_api::{Harness, Hook, config_map_path, rollout, rollout_path};

const STAGED: &str = r#"
flag: { key: checkout, variants: { "on": true, "off": false }, baseline: "off", candidate: "on" }
target: { configMap: { name: shop-flags } }
stages:
  - { name: internal, weight: 100, audience: { ends_with: [{ var: email }, "@example.com"] }, duration: 5m }
  - { weight: 1, duration: 10m }
  - { weight: 5, duration: 10m }
  - { weight: 25, duration: 10m }
  - { weight: 100 }
"#;

fn at(minutes: i64) -> Timestamp {
    "2026-11-24T12:00:00Z".parse::<Timestamp>().unwrap() + SignedDuration::from_mins(minutes)
}

#[derive(Clone, Copy, Debug)]
enum Crash {
    /// The k-th write (1-based) is never applied.
    Before(usize),
    /// The k-th write is applied but its answer is lost.
    After(usize),
}

/// What a run did: the flag exposures written, in order, and the stages claimed by
/// status, in order (consecutive repeats folded).
#[derive(Debug, PartialEq)]
struct Trace {
    flags: Vec<String>,
    stages: Vec<(Phase, Option<u32>)>,
    history: Vec<(Phase, Phase, Option<u32>, String)>,
    /// Every (stage claimed, exposure served, whether the reconcile succeeded) seen
    /// after a reconcile.
    claims: Vec<(u32, String, bool)>,
    writes: usize,
}

fn exposure(flag: &Value) -> String {
    match flag.get("targeting") {
        None => format!("default={}", flag["defaultVariant"]),
        Some(targeting) => targeting.to_string(),
    }
}

fn push_folded<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if list.last() != Some(&item) {
        list.push(item);
    }
}

async fn run(crash: Option<Crash>) -> Trace {
    let h = Harness::new(at(0));
    h.api
        .insert(&rollout_path("checkout"), rollout("checkout", STAGED));
    let mut seen = 0;
    h.api.set_hook(move |call, _| {
        if !call.is_write() {
            return Hook::Pass;
        }
        seen += 1;
        match crash {
            Some(Crash::Before(k)) if k == seen => Hook::Fail(500),
            Some(Crash::After(k)) if k == seen => Hook::FailAfter(500),
            _ => Hook::Pass,
        }
    });
    let mut trace = Trace {
        flags: Vec::new(),
        stages: Vec::new(),
        history: Vec::new(),
        claims: Vec::new(),
        writes: 0,
    };
    for minute in 0..=60 {
        h.set_now(at(minute));
        // Each attempt is a fresh controller (a restart); a failed one is retried at once,
        // and a successful one is followed by the watch event of its own status write.
        let mut failures = 0;
        let mut successes = 0;
        while successes < 2 {
            let ok = match h.reconcile("checkout").await {
                Ok(_) => true,
                Err(error) => {
                    failures += 1;
                    assert!(failures < 5, "minute {minute}: {error}");
                    false
                }
            };
            successes += usize::from(ok);
            if let Some(flag) = h.config_map_flag("shop-flags", "checkout") {
                push_folded(&mut trace.flags, exposure(&flag));
            }
            if let Some(status) = h.status("checkout")
                && let Some(stage) = status.stage
            {
                push_folded(&mut trace.stages, (status.phase, status.stage));
                let flag = h
                    .config_map_flag("shop-flags", "checkout")
                    .expect("a claimed flag");
                trace.claims.push((stage, exposure(&flag), ok));
            }
        }
    }
    let calls = h.api.calls();
    trace.writes = calls.iter().filter(|c| c.is_write()).count();
    let status = h.status("checkout").expect("a status");
    trace.history = status
        .history
        .iter()
        .map(|e| (e.from, e.to, e.stage, e.weight.to_string()))
        .collect();
    assert!(h.api.get(&config_map_path("shop-flags")).is_some());
    trace
}

#[tokio::test]
async fn a_restart_at_any_write_neither_skips_nor_repeats_a_stage() {
    let reference = run(None).await;
    assert_eq!(
        reference.stages,
        vec![
            (Phase::Progressing, Some(0)),
            (Phase::Progressing, Some(1)),
            (Phase::Progressing, Some(2)),
            (Phase::Progressing, Some(3)),
            (Phase::Promoted, Some(4)),
        ],
        "the reference run goes through every stage"
    );
    assert_eq!(reference.flags.len(), 5, "{:?}", reference.flags);
    assert!(reference.flags[0].contains("@example.com"));
    assert!(reference.flags[1].contains("10000"));
    assert!(reference.flags[2].contains("50000"));
    assert!(reference.flags[3].contains("250000"));
    assert_eq!(reference.flags[4], "default=\"on\"");
    println!(
        "reference: {} writes, flags {:?}",
        reference.writes, reference.flags
    );

    let mut runs = 0;
    for k in 1..=reference.writes {
        for crash in [Crash::Before(k), Crash::After(k)] {
            let trace = run(Some(crash)).await;
            assert_eq!(trace.flags, reference.flags, "{crash:?}: flag writes");
            assert_eq!(trace.stages, reference.stages, "{crash:?}: stages claimed");
            assert_eq!(trace.history, reference.history, "{crash:?}: history");
            // The flag is written before the status that claims it: after a successful
            // reconcile both say the same stage; after a crash the flag may be one stage
            // ahead of the status (repaired by the next reconcile), never behind.
            for (stage, served, ok) in &trace.claims {
                let stage = *stage as usize;
                let served_stage = reference.flags.iter().position(|f| f == served).unwrap();
                if *ok {
                    assert_eq!(served_stage, stage, "{crash:?}: status and flag disagree");
                } else {
                    assert!(
                        served_stage == stage || served_stage == stage + 1,
                        "{crash:?}: stage {stage} claimed while the flag served stage {served_stage}"
                    );
                }
            }
            runs += 1;
        }
    }
    println!("{runs} crashed runs, each the same as the reference");
}
