//! Simulated traffic: the stage schedule, the request and error model, and the per-minute
//! cohort counts one simulated rollout produces.
//!
//! Each minute, the total number of requests is Poisson; each request lands in the
//! candidate cohort with probability equal to the current exposure (so the two cohorts
//! are independent Poisson counts); each request fails with its cohort's error
//! probability for that minute (binomial errors). Overdispersion (scenario S2) multiplies
//! each cohort's error probability, independently per cohort and minute, by a Gamma draw
//! with mean 1 and a chosen coefficient of variation.

use rand::Rng;
use rand_distr::{Binomial, Distribution, Gamma, Poisson};

/// Requests and errors of one cohort over some period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests served.
    pub requests: u64,
    /// Requests that failed.
    pub errors: u64,
}

impl Counts {
    /// The error rate, or `None` without requests.
    pub fn rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors as f64 / self.requests as f64)
    }
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Counts) {
        self.requests += other.requests;
        self.errors += other.errors;
    }
}

/// The counts of both cohorts over the same period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cohorts {
    /// Users served the candidate variant.
    pub candidate: Counts,
    /// Users served the baseline variant.
    pub baseline: Counts,
}

impl std::ops::AddAssign for Cohorts {
    fn add_assign(&mut self, other: Cohorts) {
        self.candidate += other.candidate;
        self.baseline += other.baseline;
    }
}

/// One stage of the rollout plan.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stage {
    /// Share of requests served the candidate, in (0, 1).
    pub exposure: f64,
    /// Length of the stage in minutes (one look per minute).
    pub minutes: u32,
}

/// The stages a rollout goes through before promotion; one look at the end of every minute.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    /// The stages, in order. After the last one the candidate is promoted.
    pub stages: Vec<Stage>,
}

impl Schedule {
    /// BENCHMARK.md's plan: 1 %, 5 %, 25 %, 50 %, ten minutes each, then promotion.
    pub fn benchmark() -> Self {
        Schedule {
            stages: [0.01, 0.05, 0.25, 0.5]
                .into_iter()
                .map(|exposure| Stage {
                    exposure,
                    minutes: 10,
                })
                .collect(),
        }
    }

    /// Total number of looks (minutes) before promotion.
    pub fn total_minutes(&self) -> u32 {
        self.stages.iter().map(|s| s.minutes).sum()
    }

    /// The stage index and the minute within that stage (both starting at 0) of the
    /// zero-based minute `index`, or `None` past the last stage.
    pub fn locate(&self, index: u32) -> Option<(usize, u32)> {
        let mut start = 0;
        for (i, stage) in self.stages.iter().enumerate() {
            if index < start + stage.minutes {
                return Some((i, index - start));
            }
            start += stage.minutes;
        }
        None
    }
}

/// How requests arrive and fail when the candidate is as good as the baseline.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Traffic {
    /// Requests per second, both cohorts together.
    pub requests_per_second: f64,
    /// Baseline error probability per request.
    pub error_rate: f64,
    /// Coefficient of variation of the per-cohort, per-minute Gamma multiplier of the error
    /// probability (mean 1); `None` for plain binomial errors.
    pub burstiness: Option<f64>,
}

impl Traffic {
    /// Scenario S1: 50 requests/s, 1 % errors, binomial.
    pub fn s1() -> Self {
        Traffic {
            requests_per_second: 50.0,
            error_rate: 0.01,
            burstiness: None,
        }
    }

    /// Scenario S2: S1 with error probabilities multiplied per cohort and minute by a
    /// Gamma draw of mean 1 and coefficient of variation 0.5.
    pub fn s2() -> Self {
        Traffic {
            burstiness: Some(0.5),
            ..Traffic::s1()
        }
    }

    /// Expected requests (both cohorts) in `minutes` minutes.
    pub fn expected_requests(&self, minutes: u32) -> f64 {
        self.requests_per_second * 60.0 * f64::from(minutes)
    }
}

/// The candidate's harm: from `onset_minute` on, its error probability is `multiplier`
/// times the baseline's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Regression {
    /// Candidate error probability over baseline error probability (1 = no harm).
    pub multiplier: f64,
    /// Minutes after the start of the rollout when the harm begins (0 = from the start).
    /// The minute `onset_minute + 1` (one-based) is the first one affected.
    pub onset_minute: u32,
}

/// Draws the per-minute cohort counts of one whole rollout (every minute of the schedule,
/// whether or not a rule would have stopped earlier), so every rule judges the same traffic.
pub fn simulate_rollout<R: Rng + ?Sized>(
    rng: &mut R,
    schedule: &Schedule,
    traffic: &Traffic,
    regression: &Regression,
) -> Vec<Cohorts> {
    let per_minute = traffic.expected_requests(1);
    let arrivals = Poisson::new(per_minute).expect("a positive, finite request rate");
    let burst = traffic.burstiness.map(|cv| {
        let shape = 1.0 / (cv * cv);
        Gamma::new(shape, 1.0 / shape).expect("a positive coefficient of variation")
    });
    let multiplier = |rng: &mut R| burst.as_ref().map_or(1.0, |g| g.sample(rng));
    let minutes = schedule.total_minutes();
    let mut out = Vec::with_capacity(minutes as usize);
    for index in 0..minutes {
        let (stage, _) = schedule.locate(index).expect("index within the schedule");
        let exposure = schedule.stages[stage].exposure;
        let total = arrivals.sample(rng) as u64;
        let candidate_requests = binomial(rng, total, exposure);
        let baseline_requests = total - candidate_requests;
        let harm = if index >= regression.onset_minute {
            regression.multiplier
        } else {
            1.0
        };
        let p_candidate = traffic.error_rate * harm * multiplier(rng);
        let p_baseline = traffic.error_rate * multiplier(rng);
        out.push(Cohorts {
            candidate: Counts {
                requests: candidate_requests,
                errors: binomial(rng, candidate_requests, p_candidate),
            },
            baseline: Counts {
                requests: baseline_requests,
                errors: binomial(rng, baseline_requests, p_baseline),
            },
        });
    }
    out
}

fn binomial<R: Rng + ?Sized>(rng: &mut R, n: u64, p: f64) -> u64 {
    let p = p.clamp(0.0, 1.0);
    Binomial::new(n, p)
        .expect("a probability in [0, 1]")
        .sample(rng)
}
