//! The leaderboard as `results.csv` and as an aligned text table.
//!
//! An `impl` block of [`SweepScheduler`] in a file of its own: these are views of the
//! scheduler's state through its public methods only (`leaderboard`, `status_of`), kept apart so
//! the bookkeeping in scheduler.rs stays short.

use super::SweepScheduler;

impl SweepScheduler {
    /// The leaderboard as CSV: rank, trial, seed, one column per parameter, epochs, accuracy,
    /// loss, status, param_hash. Values are quoted where they must be (a list-valued parameter
    /// such as `finetune.freeze`, or a string with a comma or a quote), so every row has the
    /// header's columns.
    pub fn results_csv(&self) -> String {
        let board = self.leaderboard();
        let names: Vec<String> = board
            .first()
            .map(|t| t.trial.params.keys().cloned().collect())
            .unwrap_or_default();
        let mut w = csv::Writer::from_writer(Vec::new());
        let mut header = vec!["rank".to_string(), "trial".into(), "seed".into()];
        header.extend(names.iter().cloned());
        header.extend(["epochs", "accuracy", "loss", "status", "param_hash"].map(String::from));
        // Writing to a Vec cannot fail (no I/O); a failure would be a bug in the csv crate.
        let write = |w: &mut csv::Writer<Vec<u8>>, row: &[String]| {
            w.write_record(row).expect("CSV into memory");
        };
        write(&mut w, &header);
        for (i, t) in board.iter().enumerate() {
            let r = t.result.as_ref();
            let mut row = vec![
                (i + 1).to_string(),
                t.trial.id.to_string(),
                t.trial.seed.to_string(),
            ];
            row.extend(names.iter().map(|n| {
                t.trial.params.get(n).map_or(String::new(), |v| match v {
                    // A string as itself, everything else (numbers, lists, booleans) as JSON.
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
            }));
            row.extend([
                r.map_or(String::new(), |r| r.epochs.to_string()),
                r.map_or(String::new(), |r| format!("{:.6}", r.accuracy)),
                r.map_or(String::new(), |r| format!("{:.6}", r.loss)),
                self.status_of(t).to_string(),
                r.map_or(String::new(), |r| r.param_hash.clone()),
            ]);
            write(&mut w, &row);
        }
        let bytes = w.into_inner().expect("CSV into memory");
        String::from_utf8(bytes).expect("CSV of UTF-8 fields is UTF-8")
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::test_support::result;
    use crate::sweep::{SweepMethod, SweepSpace};
    use crate::TrainConfig;

    /// A list-valued parameter (and a string with a comma) must not break the columns: every
    /// row parses back with the header's width, and the values round-trip.
    #[test]
    fn list_valued_parameters_stay_in_their_column() {
        let space = SweepSpace::from_toml(
            r#"
[params]
"finetune.freeze" = { choice = [["stem", "layer1"], ["stem"]] }
"optim.lr" = { log_uniform = [1e-3, 1e-1] }
"#,
        )
        .expect("space");
        let trials = (0..4)
            .map(|i| space.trial(&TrainConfig::default(), 3, i).expect("trial"))
            .collect();
        let mut s = SweepScheduler::new(trials, SweepMethod::Random, 1, 3, 1).expect("sched");
        for id in 0..4 {
            s.report(id, 0, result(1, id as f64 / 10.0));
        }
        let text = s.results_csv();
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let header = r.headers().expect("header").clone();
        assert_eq!(
            header.iter().collect::<Vec<_>>(),
            [
                "rank",
                "trial",
                "seed",
                "finetune.freeze",
                "optim.lr",
                "epochs",
                "accuracy",
                "loss",
                "status",
                "param_hash"
            ]
        );
        let rows: Vec<csv::StringRecord> = r.records().map(|r| r.expect("row")).collect();
        assert_eq!(rows.len(), 4);
        for row in &rows {
            assert_eq!(row.len(), header.len(), "{row:?}");
            let freeze: serde_json::Value = serde_json::from_str(&row[3]).expect("a JSON list");
            assert!(freeze.is_array(), "{freeze}");
            assert!(row[4].parse::<f64>().is_ok(), "{row:?}");
            assert_eq!(&row[8], "completed");
        }
        // Best first: trial 3 had the highest accuracy.
        assert_eq!(&rows[0][1], "3");
        assert!(
            text.contains("\"[\"\"stem\"\""),
            "quoted with doubled quotes: {text}"
        );
    }
}
