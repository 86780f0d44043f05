//! The sweep's scheduler: random search trains every trial to the end; successive halving
//! trains all to the first rung and keeps the best `1/eta` at each. Pure bookkeeping, with no
//! clock and no I/O, so every rule is a table test.

use serde::{Deserialize, Serialize};

use super::Trial;
use crate::SpecError;

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
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "random" => Ok(Self::Random),
            "halving" | "asha" => Ok(Self::Halving),
            o => Err(SpecError::Config(format!(
                "unknown sweep method '{o}', expected random or halving"
            ))),
        }
    }
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
    ) -> Result<Self, SpecError> {
        if trials.is_empty() {
            return Err(SpecError::Config("a sweep needs at least one trial".into()));
        }
        let rungs = match method {
            SweepMethod::Random => vec![max_epochs],
            SweepMethod::Halving => {
                if eta < 2 || min_epochs == 0 || min_epochs > max_epochs {
                    return Err(SpecError::Config(format!(
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

    /// `completed` (trained every rung), `stopped` (halving dropped it) or `failed`.
    pub fn status_of(&self, t: &TrialStatus) -> &'static str {
        match (&t.result, t.alive) {
            (None, _) => "failed",
            (Some(_), true) if t.rungs_done == self.rungs.len() => "completed",
            (Some(_), _) => "stopped",
        }
    }

    /// Trials best first (accuracy, then loss; unfinished last).
    pub fn leaderboard(&self) -> Vec<&TrialStatus> {
        let mut v: Vec<&TrialStatus> = self.trials.iter().collect();
        v.sort_by(|a, b| rank(a).total_cmp_pair(&rank(b)));
        v
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
    use crate::sweep::test_support::{result, SPACE};
    use crate::sweep::SweepSpace;
    use crate::TrainConfig;

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
