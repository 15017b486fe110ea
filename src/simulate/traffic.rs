//! Simulated traffic: the stage schedule, the request and error model, and the per-look
//! cohort counts one simulated rollout produces.
//!
//! The simulator's unit of time is one look interval ([`Schedule::look_seconds`]: a minute
//! on BENCHMARK.md's S1–S4 plan, 10 s on S5's). Each interval, the total number of
//! requests is Poisson; each request lands in the candidate cohort with probability equal
//! to the current exposure (so the two cohorts are independent Poisson counts); each
//! request fails with its cohort's error probability for that interval (binomial errors).
//! Overdispersion (scenarios S2, S4) multiplies each cohort's error probability,
//! independently per cohort and interval, by a Gamma draw with mean 1 and a chosen
//! coefficient of variation. User clustering (scenario S3) sends the requests from users
//! with Zipf request shares, assigned to the candidate stickily, each with its own Gamma
//! multiplier per interval (S3a) or for the whole rollout (S3b).

use std::sync::{Arc, Mutex, OnceLock};

use rand::{Rng, RngExt};
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
    /// Length of the stage in look intervals (minutes on a plan with a look per minute).
    pub minutes: u32,
}

/// The stages a rollout goes through before promotion; one look at the end of every
/// interval.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    /// The stages, in order. After the last one the candidate is promoted.
    pub stages: Vec<Stage>,
    /// Seconds between looks: the simulator's unit of time (60 on BENCHMARK.md's plan).
    pub look_seconds: u32,
}

impl Schedule {
    /// BENCHMARK.md's plan: 1 %, 5 %, 25 %, 50 %, ten minutes each, then promotion.
    pub fn benchmark() -> Self {
        Schedule::of(&[(0.01, 10), (0.05, 10), (0.25, 10), (0.5, 10)], 60)
    }

    /// BENCHMARK.md's S5 plan: 10 % for 60 s, 50 % for 60 s, a look every 10 s.
    pub fn s5() -> Self {
        Schedule::of(&[(0.1, 6), (0.5, 6)], 10)
    }

    /// A plan of `(exposure, intervals)` stages with a look every `look_seconds`.
    pub fn of(stages: &[(f64, u32)], look_seconds: u32) -> Self {
        Schedule {
            stages: stages
                .iter()
                .map(|&(exposure, minutes)| Stage { exposure, minutes })
                .collect(),
            look_seconds,
        }
    }

    /// Total number of looks (intervals) before promotion.
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

/// Requests from users with Zipf request shares (scenario S3).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Users {
    /// Number of users.
    pub count: u32,
    /// The Zipf exponent of their request shares (user `i` sends `∝ i^−s`).
    pub zipf: f64,
    /// Coefficient of variation of each user's Gamma multiplier of the error probability.
    pub cv: f64,
    /// `true`: one multiplier per user for the whole rollout (S3b); `false`: a new one per
    /// user and interval (S3a).
    pub persistent: bool,
    /// Replicas of the service the requests are spread over, round-robin (1: one). Each
    /// replica counts its own users: a user's requests are split between them.
    pub replicas: u32,
}

/// One user's requests and errors on one replica in one interval (scenario S3), for the
/// per-user sums an instrumentation exports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserStep {
    /// The user and the replica that counted it: `user × replicas + replica`.
    pub key: u32,
    /// Whether the user is in the candidate cohort.
    pub candidate: bool,
    /// Requests in the interval.
    pub requests: u32,
    /// Errors in the interval.
    pub errors: u32,
}

/// How requests arrive and fail when the candidate is as good as the baseline.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Traffic {
    /// Requests per second, both cohorts together.
    pub requests_per_second: f64,
    /// Baseline error probability per request.
    pub error_rate: f64,
    /// Coefficient of variation of the per-cohort, per-interval Gamma multiplier of the
    /// error probability (mean 1); `None` for plain binomial errors.
    pub burstiness: Option<f64>,
    /// Requests come from users ([`Users`]) instead of independently.
    pub users: Option<Users>,
}

impl Traffic {
    /// Scenario S1: 50 requests/s, 1 % errors, binomial.
    pub fn s1() -> Self {
        Traffic {
            requests_per_second: 50.0,
            error_rate: 0.01,
            burstiness: None,
            users: None,
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

    /// Scenario S3a: S1's traffic from 10,000 users with Zipf(1.1) shares, each user's
    /// error probability multiplied per interval by a Gamma draw of mean 1 and CV 1.
    pub fn s3a() -> Self {
        Traffic {
            users: Some(Users {
                count: 10_000,
                zipf: 1.1,
                cv: 1.0,
                persistent: false,
                replicas: 1,
            }),
            ..Traffic::s1()
        }
    }

    /// Scenario S3b: S3a with one multiplier per user for the whole rollout.
    pub fn s3b() -> Self {
        let mut t = Traffic::s3a();
        if let Some(u) = &mut t.users {
            u.persistent = true;
        }
        t
    }

    /// The same traffic with its users' requests spread round-robin over `replicas`
    /// replicas, each counting its own users.
    pub fn on_replicas(mut self, replicas: u32) -> Self {
        if let Some(u) = &mut self.users {
            u.replicas = replicas.max(1);
        }
        self
    }

    /// Scenario S4: S2 with a coefficient of variation of 1.
    pub fn s4() -> Self {
        Traffic {
            burstiness: Some(1.0),
            ..Traffic::s1()
        }
    }

    /// Scenario S5's traffic: 100 requests/s, 0.5 % baseline errors, binomial.
    pub fn s5() -> Self {
        Traffic {
            requests_per_second: 100.0,
            error_rate: 0.005,
            ..Traffic::s1()
        }
    }

    /// Expected requests (both cohorts) in `minutes` minutes.
    pub fn expected_requests(&self, minutes: u32) -> f64 {
        self.requests_per_second * 60.0 * f64::from(minutes)
    }
}

/// The cumulative request shares of `count` users with Zipf exponent `zipf`, computed once
/// per `(count, zipf)` and shared.
fn zipf_cdf(count: u32, zipf: f64) -> Arc<Vec<f64>> {
    type Cache = Mutex<Vec<((u32, u64), Arc<Vec<f64>>)>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let key = (count, zipf.to_bits());
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, cdf)) = cache.iter().find(|(k, _)| *k == key) {
        return Arc::clone(cdf);
    }
    let mut total = 0.0;
    let mut cdf: Vec<f64> = (1..=count)
        .map(|i| {
            total += f64::from(i).powf(-zipf);
            total
        })
        .collect();
    for c in &mut cdf {
        *c /= total;
    }
    let cdf = Arc::new(cdf);
    cache.push((key, Arc::clone(&cdf)));
    cdf
}

/// The users of one rollout: their request shares, their sticky assignment draws and
/// (S3b) their error multipliers.
#[derive(Clone, Debug)]
struct Population {
    users: Users,
    cdf: Arc<Vec<f64>>,
    /// Each user's uniform draw: in the candidate cohort while it is below the exposure.
    assignment: Vec<f64>,
    /// Each user's multiplier for the whole rollout (S3b), else empty.
    multipliers: Vec<f64>,
    /// Requests per user and replica (`user × replicas + replica`) in the current
    /// interval (scratch).
    requests: Vec<u32>,
    touched: Vec<u32>,
    /// Each user's multiplier in the current interval (S3a; scratch, NaN: not drawn yet).
    interval_multipliers: Vec<f64>,
    /// The requests of the current interval so far, for the round-robin over replicas.
    sent: u64,
}

/// The source of one rollout's traffic: draws the counts of one interval at a given
/// exposure, keeping what lasts across intervals (the users and their assignment).
#[derive(Clone, Debug)]
pub struct TrafficSource {
    traffic: Traffic,
    arrivals: Poisson<f64>,
    burst: Option<Gamma<f64>>,
    population: Option<Population>,
    /// Per drawn interval, in draw order, each user's requests and errors (S3 only).
    steps: Vec<Vec<UserStep>>,
}

impl TrafficSource {
    /// The traffic of one rollout with a look every `look_seconds`; draws the users'
    /// assignment (and S3b's multipliers) from `rng`.
    pub fn new<R: Rng + ?Sized>(rng: &mut R, traffic: &Traffic, look_seconds: u32) -> Self {
        let per_look = traffic.requests_per_second * f64::from(look_seconds);
        let gamma = |cv: f64| {
            let shape = 1.0 / (cv * cv);
            Gamma::new(shape, 1.0 / shape).expect("a positive coefficient of variation")
        };
        let population = traffic.users.map(|users| {
            let assignment = (0..users.count).map(|_| rng.random::<f64>()).collect();
            let multipliers = if users.persistent {
                let g = gamma(users.cv);
                (0..users.count).map(|_| g.sample(rng)).collect()
            } else {
                Vec::new()
            };
            Population {
                users,
                cdf: zipf_cdf(users.count, users.zipf),
                assignment,
                multipliers,
                requests: vec![0; (users.count * users.replicas.max(1)) as usize],
                touched: Vec::new(),
                interval_multipliers: vec![f64::NAN; users.count as usize],
                sent: 0,
            }
        });
        TrafficSource {
            traffic: *traffic,
            arrivals: Poisson::new(per_look).expect("a positive, finite request rate"),
            burst: traffic.burstiness.map(gamma),
            population,
            steps: Vec::new(),
        }
    }

    /// The users' requests and errors of the `index`-th interval drawn (in draw order;
    /// empty without users).
    pub fn user_steps(&self, index: usize) -> &[UserStep] {
        self.steps.get(index).map_or(&[], Vec::as_slice)
    }

    /// The number of intervals drawn so far.
    pub fn drawn(&self) -> usize {
        self.steps.len()
    }

    /// The counts of one interval at `exposure`; the candidate's error probability is
    /// multiplied by `harm`.
    pub fn draw<R: Rng + ?Sized>(&mut self, rng: &mut R, exposure: f64, harm: f64) -> Cohorts {
        let p0 = self.traffic.error_rate;
        if let Some(population) = &mut self.population {
            let mut steps = Vec::new();
            let counts = population.draw(rng, &self.arrivals, p0, exposure, harm, &mut steps);
            self.steps.push(steps);
            return counts;
        }
        let multiplier =
            |rng: &mut R, burst: &Option<Gamma<f64>>| burst.as_ref().map_or(1.0, |g| g.sample(rng));
        let total = self.arrivals.sample(rng) as u64;
        let candidate_requests = binomial(rng, total, exposure);
        let baseline_requests = total - candidate_requests;
        let p_candidate = p0 * harm * multiplier(rng, &self.burst);
        let p_baseline = p0 * multiplier(rng, &self.burst);
        Cohorts {
            candidate: Counts {
                requests: candidate_requests,
                errors: binomial(rng, candidate_requests, p_candidate),
            },
            baseline: Counts {
                requests: baseline_requests,
                errors: binomial(rng, baseline_requests, p_baseline),
            },
        }
    }
}

impl Population {
    fn draw<R: Rng + ?Sized>(
        &mut self,
        rng: &mut R,
        arrivals: &Poisson<f64>,
        p0: f64,
        exposure: f64,
        harm: f64,
        steps: &mut Vec<UserStep>,
    ) -> Cohorts {
        // Each request comes from a user drawn by its share (Poisson splitting: every
        // user's count is Poisson, independently); with replicas, the requests go to
        // them in turn, in the order they arrive.
        let replicas = self.users.replicas.max(1);
        let total = arrivals.sample(rng) as u64;
        for _ in 0..total {
            let u = rng.random::<f64>();
            let user = self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1);
            let i = user * replicas as usize + (self.sent % u64::from(replicas)) as usize;
            self.sent += 1;
            if self.requests[i] == 0 {
                self.touched.push(i as u32);
            }
            self.requests[i] += 1;
        }
        let gamma = (!self.users.persistent).then(|| {
            let shape = 1.0 / (self.users.cv * self.users.cv);
            Gamma::new(shape, 1.0 / shape).expect("a positive coefficient of variation")
        });
        let mut out = Cohorts::default();
        for &key in &self.touched {
            let user = key as usize / replicas as usize;
            let requests_of = |r: u32| self.requests[user * replicas as usize + r as usize];
            let n_user: u32 = (0..replicas).map(requests_of).sum();
            let n = u64::from(self.requests[key as usize]);
            let candidate = self.assignment[user] < exposure;
            let g = match &gamma {
                // One request: its error probability is `p0·E[G] = p0` (the multiplier
                // matters only through requests that share it).
                Some(_) if n_user == 1 => 1.0,
                Some(g) => {
                    if self.interval_multipliers[user].is_nan() {
                        self.interval_multipliers[user] = g.sample(rng);
                    }
                    self.interval_multipliers[user]
                }
                None => self.multipliers[user],
            };
            let p = p0 * g * if candidate { harm } else { 1.0 };
            let errors = binomial(rng, n, p);
            let cohort = if candidate {
                &mut out.candidate
            } else {
                &mut out.baseline
            };
            cohort.requests += n;
            cohort.errors += errors;
            steps.push(UserStep {
                key,
                candidate,
                requests: n as u32,
                errors: errors as u32,
            });
        }
        for &key in &self.touched {
            self.requests[key as usize] = 0;
            self.interval_multipliers[key as usize / replicas as usize] = f64::NAN;
        }
        self.touched.clear();
        out
    }
}

/// The candidate's harm: from `onset_minute` on (in look intervals: minutes on a plan with
/// a look per minute), its error probability is `multiplier` times the baseline's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Regression {
    /// Candidate error probability over baseline error probability (1 = no harm).
    pub multiplier: f64,
    /// Minutes after the start of the rollout when the harm begins (0 = from the start).
    /// The minute `onset_minute + 1` (one-based) is the first one affected.
    pub onset_minute: u32,
}

/// Draws the per-interval cohort counts of one whole rollout on the schedule (every
/// interval, whether or not a rule would have stopped earlier), so every rule judges the
/// same traffic. `source` keeps drawing the same rollout's traffic afterwards (a rollout
/// the engine holds past the schedule).
pub fn simulate_rollout<R: Rng + ?Sized>(
    rng: &mut R,
    source: &mut TrafficSource,
    schedule: &Schedule,
    regression: &Regression,
) -> Vec<Cohorts> {
    let minutes = schedule.total_minutes();
    let mut out = Vec::with_capacity(minutes as usize);
    for index in 0..minutes {
        let (stage, _) = schedule.locate(index).expect("index within the schedule");
        let exposure = schedule.stages[stage].exposure;
        out.push(source.draw(rng, exposure, regression.harm_at(index)));
    }
    out
}

impl Regression {
    /// The candidate's error multiplier in the zero-based interval `index`.
    pub fn harm_at(&self, index: u32) -> f64 {
        if index >= self.onset_minute {
            self.multiplier
        } else {
            1.0
        }
    }
}

fn binomial<R: Rng + ?Sized>(rng: &mut R, n: u64, p: f64) -> u64 {
    let p = p.clamp(0.0, 1.0);
    Binomial::new(n, p)
        .expect("a probability in [0, 1]")
        .sample(rng)
}
