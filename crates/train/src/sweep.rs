//! Hyperparameter search: a declared space, seeded sampling, and a scheduler for random search
//! and (synchronous) successive halving. The scheduler is pure bookkeeping — it hands out
//! [`TrialTask`]s and takes [`TrialResult`]s — so the same logic drives trials run in one process
//! (`resnet sweep`) and trials spread over a cluster's workers (`coordinator --sweep`).

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{TrainConfig, TrainError};

/// How one parameter is drawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Dist {
    /// Uniform in `[lo, hi]`.
    Uniform([f64; 2]),
    /// Log-uniform in `[lo, hi]` (both > 0): learning rates, weight decay.
    LogUniform([f64; 2]),
    /// An integer uniform in `[lo, hi]`.
    IntUniform([i64; 2]),
    /// One of the listed values (numbers, strings, booleans).
    Choice(Vec<Value>),
}

/// The search space: run-config fields by dotted path (`optim.lr`, `label_smoothing`,
/// `batch_size`, `data.augment.cutout`, ...) and their distributions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpace {
    /// Parameters, sampled in name order.
    pub params: BTreeMap<String, Dist>,
}

/// Search strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SweepMethod {
    /// Every trial trains the full run.
    Random,
    /// Successive halving: every trial trains `min_epochs`; the best 1/eta go on to
    /// `min_epochs * eta`, and so on up to the run's epochs (ASHA's rungs, synchronously).
    Halving,
}

impl std::str::FromStr for SweepMethod {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "random" => Ok(Self::Random),
            "halving" | "asha" => Ok(Self::Halving),
            o => Err(TrainError::Config(format!(
                "unknown sweep method '{o}', expected random or halving"
            ))),
        }
    }
}

/// One sampled trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// 0-based index.
    pub id: usize,
    /// Seed of both the sample and the trial's training run.
    pub seed: u64,
    /// Sampled values by path.
    pub params: BTreeMap<String, Value>,
    /// The full run configuration (`epochs` = the sweep's longest rung).
    pub config: TrainConfig,
}

/// Work for a runner: train `trial` until `epochs` epochs are done (continuing its own earlier
/// run when it has one).
#[derive(Debug, Clone, PartialEq)]
pub struct TrialTask {
    /// The trial.
    pub trial: Trial,
    /// Rung index (0 for random search).
    pub rung: usize,
    /// Epochs to reach.
    pub epochs: usize,
}

/// What a trial achieved at a rung.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialResult {
    /// Epochs trained.
    pub epochs: usize,
    /// Test accuracy at the end (the ranking metric).
    pub accuracy: f64,
    /// Test loss (breaks ties).
    pub loss: f64,
    /// Parameter hash of the final weights (reproducibility check).
    pub param_hash: String,
    /// Training seconds.
    pub seconds: f64,
}

/// A trial's place in the sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialStatus {
    /// The trial.
    pub trial: Trial,
    /// Its latest result.
    pub result: Option<TrialResult>,
    /// Highest rung finished.
    pub rungs_done: usize,
    /// Still competing.
    pub alive: bool,
    /// Being trained right now.
    pub running: bool,
}

/// The answer to "what next?".
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Train this.
    Task(Box<TrialTask>),
    /// Nothing free now: wait for running trials to report.
    Wait,
    /// The sweep is over.
    Done,
}

/// Derives trial `i`'s seed from the sweep seed (63 bits: TOML integers are signed).
pub fn trial_seed(sweep_seed: u64, i: usize) -> u64 {
    let mut z = sweep_seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) >> 1
}

impl SweepSpace {
    /// Reads a TOML space: a `[params]` table of `path = { log_uniform = [lo, hi] }` entries.
    pub fn from_toml(text: &str) -> Result<Self, TrainError> {
        let space: SweepSpace =
            toml::from_str(text).map_err(|e| TrainError::Config(format!("sweep space: {e}")))?;
        if space.params.is_empty() {
            return Err(TrainError::Config("sweep space: [params] is empty".into()));
        }
        for (name, d) in &space.params {
            let bad = |m: &str| Err(TrainError::Config(format!("sweep space: {name}: {m}")));
            match d {
                Dist::Uniform([lo, hi]) if !(lo <= hi) => return bad("needs lo <= hi"),
                Dist::LogUniform([lo, hi]) if !(*lo > 0.0 && lo <= hi) => {
                    return bad("log_uniform needs 0 < lo <= hi")
                }
                Dist::IntUniform([lo, hi]) if lo > hi => return bad("needs lo <= hi"),
                Dist::Choice(v) if v.is_empty() => return bad("choice needs at least one value"),
                _ => {}
            }
        }
        Ok(space)
    }

    /// Samples every parameter from `seed`.
    pub fn sample(&self, seed: u64) -> BTreeMap<String, Value> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        self.params
            .iter()
            .map(|(name, d)| {
                let v = match d {
                    Dist::Uniform([lo, hi]) => Value::from(lo + (hi - lo) * rng.random::<f64>()),
                    Dist::LogUniform([lo, hi]) => {
                        let (a, b) = (lo.ln(), hi.ln());
                        Value::from((a + (b - a) * rng.random::<f64>()).exp())
                    }
                    Dist::IntUniform([lo, hi]) => Value::from(rng.random_range(*lo..=*hi)),
                    Dist::Choice(vs) => vs[rng.random_range(0..vs.len())].clone(),
                };
                (name.clone(), v)
            })
            .collect()
    }

    /// Trial `i` of a sweep: its seed, sample and validated config (`base` with the sample set
    /// and the trial seed as the training seed).
    pub fn trial(
        &self,
        base: &TrainConfig,
        sweep_seed: u64,
        i: usize,
    ) -> Result<Trial, TrainError> {
        let seed = trial_seed(sweep_seed, i);
        let params = self.sample(seed);
        let mut config = apply(base, &params)?;
        config.seed = seed;
        config.validate()?;
        Ok(Trial {
            id: i,
            seed,
            params,
            config,
        })
    }
}

/// `base` with each dotted path set to its value; unknown paths and ill-typed values are errors
/// naming the path.
pub fn apply(
    base: &TrainConfig,
    params: &BTreeMap<String, Value>,
) -> Result<TrainConfig, TrainError> {
    let mut doc = serde_json::to_value(base).map_err(|e| TrainError::Config(e.to_string()))?;
    for (path, v) in params {
        let mut slot = &mut doc;
        for part in path.split('.') {
            slot = slot
                .as_object_mut()
                .and_then(|o| o.get_mut(part))
                .ok_or_else(|| {
                    TrainError::Config(format!(
                        "sweep parameter '{path}': the run config has no field '{part}' there"
                    ))
                })?;
        }
        *slot = v.clone();
    }
    serde_json::from_value(doc).map_err(|e| {
        TrainError::Config(format!(
            "sweep parameters {params:?} do not fit the run config: {e}"
        ))
    })
}

/// The scheduler: which trial trains how far next, and which ones stop.
#[derive(Debug, Clone)]
pub struct SweepScheduler {
    rungs: Vec<usize>,
    eta: usize,
    trials: Vec<TrialStatus>,
}

impl SweepScheduler {
    /// A sweep over `trials`. Random search trains each to `max_epochs`; halving uses rungs
    /// `min_epochs * eta^k` below `max_epochs`, then `max_epochs`.
    pub fn new(
        trials: Vec<Trial>,
        method: SweepMethod,
        min_epochs: usize,
        eta: usize,
        max_epochs: usize,
    ) -> Result<Self, TrainError> {
        if trials.is_empty() {
            return Err(TrainError::Config(
                "a sweep needs at least one trial".into(),
            ));
        }
        let rungs = match method {
            SweepMethod::Random => vec![max_epochs],
            SweepMethod::Halving => {
                if eta < 2 || min_epochs == 0 || min_epochs > max_epochs {
                    return Err(TrainError::Config(format!(
                        "halving needs eta >= 2 and 1 <= min_epochs <= epochs (got eta {eta}, min_epochs {min_epochs}, epochs {max_epochs})"
                    )));
                }
                let mut r = vec![];
                let mut e = min_epochs;
                while e < max_epochs {
                    r.push(e);
                    e *= eta;
                }
                r.push(max_epochs);
                r
            }
        };
        Ok(Self {
            rungs,
            eta,
            trials: trials
                .into_iter()
                .map(|trial| TrialStatus {
                    trial,
                    result: None,
                    rungs_done: 0,
                    alive: true,
                    running: false,
                })
                .collect(),
        })
    }

    /// Epochs of each rung.
    pub fn rungs(&self) -> &[usize] {
        &self.rungs
    }

    /// Every trial's status.
    pub fn trials(&self) -> &[TrialStatus] {
        &self.trials
    }

    /// The rung everyone alive is working on (the lowest unfinished).
    fn current_rung(&self) -> Option<usize> {
        self.trials
            .iter()
            .filter(|t| t.alive)
            .map(|t| t.rungs_done)
            .min()
            .filter(|&r| r < self.rungs.len())
    }

    /// The next task, if any is free.
    pub fn next_task(&mut self) -> Next {
        self.next_preferring(&[])
    }

    /// The next task, preferring the trials in `prefer` (a worker that already holds a trial's
    /// checkpoint continues it instead of retraining it from scratch).
    pub fn next_preferring(&mut self, prefer: &[usize]) -> Next {
        let Some(rung) = self.current_rung() else {
            return Next::Done;
        };
        let epochs = self.rungs[rung];
        let free = |t: &TrialStatus| t.alive && !t.running && t.rungs_done == rung;
        let pick = self
            .trials
            .iter()
            .position(|t| free(t) && prefer.contains(&t.trial.id))
            .or_else(|| self.trials.iter().position(free));
        match pick.map(|i| &mut self.trials[i]) {
            Some(t) => {
                t.running = true;
                Next::Task(Box::new(TrialTask {
                    trial: t.trial.clone(),
                    rung,
                    epochs,
                }))
            }
            None => Next::Wait,
        }
    }

    /// Records a finished task; when a rung is complete, keeps the best `ceil(n / eta)`.
    pub fn report(&mut self, trial: usize, rung: usize, result: TrialResult) {
        if let Some(t) = self.trials.iter_mut().find(|t| t.trial.id == trial) {
            t.running = false;
            t.rungs_done = rung + 1;
            t.result = Some(result);
        }
        self.promote(rung);
    }

    /// Drops a trial whose training failed; the sweep goes on without it.
    pub fn fail(&mut self, trial: usize) {
        let Some(t) = self.trials.iter_mut().find(|t| t.trial.id == trial) else {
            return;
        };
        t.running = false;
        t.alive = false;
        let rung = t.rungs_done;
        self.promote(rung);
    }

    /// When every live trial finished `rung`, stops all but the best `ceil(n / eta)`.
    fn promote(&mut self, rung: usize) {
        let alive: Vec<usize> = (0..self.trials.len())
            .filter(|&i| self.trials[i].alive)
            .collect();
        let rung_complete = alive.iter().all(|&i| self.trials[i].rungs_done > rung);
        if rung_complete && rung + 1 < self.rungs.len() {
            let mut ranked = alive.clone();
            ranked.sort_by(|&a, &b| rank(&self.trials[a]).total_cmp_pair(&rank(&self.trials[b])));
            let keep = alive.len().div_ceil(self.eta);
            for &i in &ranked[keep..] {
                self.trials[i].alive = false;
            }
        }
    }

    /// Gives a task back unfinished (its runner failed): it will be handed out again.
    pub fn release(&mut self, trial: usize) {
        if let Some(t) = self.trials.iter_mut().find(|t| t.trial.id == trial) {
            t.running = false;
        }
    }

    /// Trials best first (accuracy, then loss; unfinished last).
    pub fn leaderboard(&self) -> Vec<&TrialStatus> {
        let mut v: Vec<&TrialStatus> = self.trials.iter().collect();
        v.sort_by(|a, b| rank(a).total_cmp_pair(&rank(b)));
        v
    }
}

impl SweepScheduler {
    /// `completed` (trained every rung), `stopped` (halving dropped it) or `failed`.
    pub fn status_of(&self, t: &TrialStatus) -> &'static str {
        match (&t.result, t.alive) {
            (None, _) => "failed",
            (Some(_), true) if t.rungs_done == self.rungs.len() => "completed",
            (Some(_), _) => "stopped",
        }
    }

    /// The leaderboard as CSV: rank, trial, seed, one column per parameter, epochs, accuracy,
    /// loss, status, param_hash.
    pub fn results_csv(&self) -> String {
        let board = self.leaderboard();
        let names: Vec<String> = board
            .first()
            .map(|t| t.trial.params.keys().cloned().collect())
            .unwrap_or_default();
        let mut csv = format!(
            "rank,trial,seed,{},epochs,accuracy,loss,status,param_hash\n",
            names.join(",")
        );
        for (i, t) in board.iter().enumerate() {
            let vals: Vec<String> = names
                .iter()
                .map(|n| {
                    t.trial
                        .params
                        .get(n)
                        .map_or(String::new(), |v| v.to_string())
                })
                .collect();
            let r = t.result.as_ref();
            csv.push_str(&format!(
                "{},{},{},{},{},{},{},{},{}\n",
                i + 1,
                t.trial.id,
                t.trial.seed,
                vals.join(","),
                r.map_or(String::new(), |r| r.epochs.to_string()),
                r.map_or(String::new(), |r| format!("{:.6}", r.accuracy)),
                r.map_or(String::new(), |r| format!("{:.6}", r.loss)),
                self.status_of(t),
                r.map_or("", |r| r.param_hash.as_str()),
            ));
        }
        csv
    }

    /// The leaderboard as an aligned text table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:>4} {:>5} {:>7} {:>9} {:>9} {:>10}  params\n",
            "rank", "trial", "epochs", "accuracy", "loss", "status"
        );
        for (i, t) in self.leaderboard().iter().enumerate() {
            let (e, a, l) = t
                .result
                .as_ref()
                .map_or((0, f64::NAN, f64::NAN), |r| (r.epochs, r.accuracy, r.loss));
            let p: Vec<String> = t
                .trial
                .params
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            s.push_str(&format!(
                "{:>4} {:>5} {:>7} {:>9.4} {:>9.4} {:>10}  {}\n",
                i + 1,
                t.trial.id,
                e,
                a,
                l,
                self.status_of(t),
                p.join(" ")
            ));
        }
        s
    }
}

/// Sort key: more epochs first (later rungs outrank earlier ones), then accuracy, then loss.
fn rank(t: &TrialStatus) -> (f64, f64, f64) {
    match &t.result {
        Some(r) => (-(r.epochs as f64), -r.accuracy, r.loss),
        None => (f64::INFINITY, f64::INFINITY, f64::INFINITY),
    }
}

trait PairCmp {
    fn total_cmp_pair(&self, other: &Self) -> std::cmp::Ordering;
}

impl PairCmp for (f64, f64, f64) {
    fn total_cmp_pair(&self, o: &Self) -> std::cmp::Ordering {
        self.0
            .total_cmp(&o.0)
            .then(self.1.total_cmp(&o.1))
            .then(self.2.total_cmp(&o.2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPACE: &str = r#"
[params]
"optim.lr" = { log_uniform = [1e-3, 1e-1] }
label_smoothing = { uniform = [0.0, 0.2] }
batch_size = { choice = [16, 32] }
"data.augment.cutout" = { int_uniform = [0, 8] }
"#;

    fn result(epochs: usize, acc: f64) -> TrialResult {
        TrialResult {
            epochs,
            accuracy: acc,
            loss: 1.0 - acc,
            param_hash: String::new(),
            seconds: 0.0,
        }
    }

    #[test]
    fn samples_are_reproducible_in_range_and_applied() {
        let space = SweepSpace::from_toml(SPACE).expect("space");
        let base = TrainConfig::default();
        for i in 0..20 {
            let t = space.trial(&base, 9, i).expect("trial");
            assert_eq!(t, space.trial(&base, 9, i).expect("again"));
            assert!((1e-3..=1e-1).contains(&t.config.optim.lr));
            assert!((0.0..=0.2).contains(&t.config.label_smoothing));
            assert!([16, 32].contains(&t.config.batch_size));
            assert!(t.config.data.augment.cutout <= 8);
            assert_eq!(t.config.seed, t.seed);
        }
        assert_ne!(
            space.trial(&base, 9, 0).expect("t").params,
            space.trial(&base, 9, 1).expect("t").params
        );
    }

    #[test]
    fn bad_spaces_and_paths_are_named() {
        let e = SweepSpace::from_toml("[params]\nlr = { log_uniform = [0.0, 1.0] }")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("lr") && e.contains("log_uniform"), "{e}");
        let space = SweepSpace::from_toml("[params]\n\"optim.lrr\" = { uniform = [0.1, 0.2] }")
            .expect("parses");
        let e = space
            .trial(&TrainConfig::default(), 1, 0)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("optim.lrr") && e.contains("'lrr'"), "{e}");
    }

    #[test]
    fn halving_keeps_the_best_third_at_each_rung() {
        let space = SweepSpace::from_toml(SPACE).expect("space");
        let trials: Vec<Trial> = (0..9)
            .map(|i| space.trial(&TrainConfig::default(), 1, i).expect("trial"))
            .collect();
        let mut s = SweepScheduler::new(trials, SweepMethod::Halving, 1, 3, 9).expect("sched");
        assert_eq!(s.rungs(), &[1, 3, 9]);
        // Rung 0: all nine, accuracy = id / 10.
        let mut tasks = vec![];
        while let Next::Task(t) = s.next_task() {
            tasks.push(t);
        }
        assert_eq!(tasks.len(), 9);
        assert_eq!(s.next_task(), Next::Wait);
        for t in &tasks {
            s.report(
                t.trial.id,
                t.rung,
                result(t.epochs, t.trial.id as f64 / 10.0),
            );
        }
        let mut ids = vec![];
        while let Next::Task(t) = s.next_task() {
            assert_eq!((t.rung, t.epochs), (1, 3));
            ids.push(t.trial.id);
        }
        ids.sort();
        assert_eq!(ids, vec![6, 7, 8]);
        for (id, acc) in [(6, 0.9), (7, 0.5), (8, 0.7)] {
            s.report(id, 1, result(3, acc));
        }
        match s.next_task() {
            Next::Task(t) => {
                assert_eq!((t.trial.id, t.rung, t.epochs), (6, 2, 9));
                s.report(6, 2, result(9, 0.95));
            }
            other => panic!("expected the last rung, got {other:?}"),
        }
        assert_eq!(s.next_task(), Next::Done);
        let board: Vec<usize> = s.leaderboard().iter().map(|t| t.trial.id).collect();
        assert_eq!(&board[..3], &[6, 8, 7]);
    }

    #[test]
    fn released_tasks_are_handed_out_again() {
        let space = SweepSpace::from_toml(SPACE).expect("space");
        let t = space.trial(&TrainConfig::default(), 1, 0).expect("trial");
        let mut s = SweepScheduler::new(vec![t], SweepMethod::Random, 1, 3, 2).expect("sched");
        let Next::Task(task) = s.next_task() else {
            panic!("task")
        };
        assert_eq!(task.epochs, 2);
        assert_eq!(s.next_task(), Next::Wait);
        s.release(0);
        assert!(matches!(s.next_task(), Next::Task(_)));
    }
}
