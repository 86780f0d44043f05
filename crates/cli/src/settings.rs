//! Layered run configuration: defaults < TOML file < RESNET_CLUSTER__* env vars < CLI flags.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use resnet_train::TrainConfig;

use crate::args::RunArgs;

/// Resolves the run configuration from every layer; validation happens in the trainer.
pub fn resolve(args: &RunArgs) -> Result<TrainConfig> {
    let mut cfg = layered(args.config.as_deref())?;
    apply_flags(&mut cfg, args)?;
    Ok(cfg)
}

/// Defaults, then the optional TOML file, then the environment.
pub fn layered(file: Option<&Path>) -> Result<TrainConfig> {
    layered_over(&TrainConfig::default(), file)
}

/// `base`, then the optional TOML file, then the environment.
fn layered_over(base: &TrainConfig, file: Option<&Path>) -> Result<TrainConfig> {
    let defaults = config::Config::try_from(base).context("serialising defaults")?;
    let mut builder = config::Config::builder().add_source(defaults);
    if let Some(f) = file {
        anyhow::ensure!(f.is_file(), "--config {}: file not found", f.display());
        builder = builder.add_source(config::File::from(f).format(config::FileFormat::Toml));
    }
    builder = builder.add_source(
        config::Environment::with_prefix("RESNET_CLUSTER")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true),
    );
    let merged = builder.build().with_context(|| match file {
        Some(f) => format!("reading {}", f.display()),
        None => "reading RESNET_CLUSTER__* environment".into(),
    })?;
    merged
        .try_deserialize::<TrainConfig>()
        .with_context(|| match file {
            Some(f) => format!("{}: invalid run config", f.display()),
            None => "invalid run config in RESNET_CLUSTER__* environment".into(),
        })
}

fn apply_flags(cfg: &mut TrainConfig, a: &RunArgs) -> Result<()> {
    fn set<T: Clone>(slot: &mut T, v: &Option<T>) {
        if let Some(v) = v {
            *slot = v.clone();
        }
    }
    if let Some(d) = a.dataset {
        cfg.data.dataset = d.into();
    }
    set(&mut cfg.data.dir, &a.data);
    cfg.data.download |= a.download;
    set(&mut cfg.model.depth, &a.depth);
    if let Some(s) = a.stem {
        cfg.model.stem = s.into();
    }
    set(&mut cfg.model.width, &a.width);
    set(&mut cfg.epochs, &a.epochs);
    set(&mut cfg.batch_size, &a.batch_size);
    set(&mut cfg.optim.lr, &a.lr);
    if let Some(o) = a.optimizer {
        cfg.optim.kind = o.into();
    }
    set(&mut cfg.optim.weight_decay, &a.weight_decay);
    set(&mut cfg.optim.momentum, &a.momentum);
    cfg.optim.nesterov |= a.nesterov;
    if let Some(s) = a.schedule {
        cfg.schedule.kind = s.into();
    }
    set(&mut cfg.schedule.step_epochs, &a.step_epochs);
    set(&mut cfg.schedule.gamma, &a.gamma);
    set(&mut cfg.schedule.warmup_epochs, &a.warmup_epochs);
    set(&mut cfg.label_smoothing, &a.label_smoothing);
    if a.max_steps.is_some() {
        cfg.max_steps = a.max_steps;
    }
    if a.train_limit.is_some() {
        cfg.data.train_limit = a.train_limit;
    }
    if a.test_limit.is_some() {
        cfg.data.test_limit = a.test_limit;
    }
    set(&mut cfg.seed, &a.seed);
    if a.no_augment {
        cfg.data.augment = resnet_data::AugmentConfig::none();
    }
    set(&mut cfg.loader_workers, &a.loader_workers);
    if a.checkpoint_steps.is_some() {
        cfg.checkpoint_steps = a.checkpoint_steps;
    }
    if a.checkpoint_minutes.is_some() {
        cfg.checkpoint_minutes = a.checkpoint_minutes;
    }
    cfg.freeze_bn |= a.freeze_bn;
    if let Some(p) = a.on_nonfinite {
        cfg.on_nonfinite = p.into();
    }
    if let Some(w) = a.grad_wire {
        cfg.grad_wire = w.into();
    }
    if let Some(o) = a.overlap {
        cfg.overlap = o == crate::args::Toggle::On;
    }
    if let Some(mb) = a.bucket_mb {
        cfg.bucket_mb = mb;
    }
    if let Some(p) = a.conv_precision {
        cfg.conv_precision = p.into();
    }
    set(&mut cfg.schedule.cycle_epochs, &a.cycle_epochs);
    set(&mut cfg.schedule.patience, &a.patience);
    set(&mut cfg.model.dropout, &a.dropout);
    let aug = &mut cfg.data.augment;
    set(&mut aug.cutout, &a.cutout);
    set(&mut aug.rotation, &a.rotation);
    set(&mut aug.scale, &a.scale);
    if let Some(j) = &a.color_jitter {
        let v: Vec<f64> = j
            .split(',')
            .map(|x| x.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .ok()
            .filter(|v: &Vec<f64>| v.len() == 3)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "--color-jitter '{j}': expected three numbers brightness,contrast,saturation, e.g. 0.4,0.4,0.4"
                )
            })?;
        [aug.brightness, aug.contrast, aug.saturation] = [v[0], v[1], v[2]];
    }
    set(&mut cfg.mix.mixup_alpha, &a.mixup);
    set(&mut cfg.mix.cutmix_alpha, &a.cutmix);
    if a.pretrained.is_some() {
        cfg.finetune.pretrained = a.pretrained.clone();
    }
    set(&mut cfg.finetune.freeze, &a.freeze);
    set(&mut cfg.finetune.backbone_lr_scale, &a.backbone_lr_scale);
    Ok(())
}

/// `--resume latest`: the newest checkpoint under `--out`, else under the newest run in `runs/`
/// (`auto` is [`resume_target`]'s).
pub fn resolve_resume(spec: &str, out: Option<&Path>) -> Result<PathBuf> {
    let base = if spec == "latest" {
        match out {
            Some(o) => o.to_path_buf(),
            None => newest_run(Path::new("runs"))
                .context("--resume latest: no run with checkpoints under runs/; pass --out DIR or a checkpoint path")?,
        }
    } else {
        PathBuf::from(spec)
    };
    Ok(resnet_train::resolve_checkpoint(&base)?)
}

fn newest_run(runs: &Path) -> Option<PathBuf> {
    std::fs::read_dir(runs)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("checkpoints").is_dir())
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

/// What `--resume SPEC` continues from: `Some(spec)`, or None when `auto` finds no checkpoint
/// under `--out` (then the run starts fresh, so one command serves a first start and every
/// restart, as a Kubernetes Job's restarts need).
pub fn resume_target(spec: &str, out: Option<&Path>) -> Result<Option<String>> {
    if spec != "auto" {
        return Ok(Some(spec.to_string()));
    }
    let out = out.context(
        "--resume auto needs --out DIR: the run directory whose newest checkpoint it continues",
    )?;
    if resnet_train::list_checkpoints(&out.join("checkpoints")).is_empty() {
        crate::say!(
            "--resume auto: no checkpoint under {}; starting a new run",
            out.display()
        );
        Ok(None)
    } else {
        Ok(Some("latest".into()))
    }
}

/// With `--resume`, the run's configuration is the checkpoint's. Run flags (and `--config`, and
/// the `RESNET_CLUSTER__*` environment with them) may repeat the command that started the run,
/// but not change it: laid over the saved configuration they must leave it as it is, apart from
/// what a resumed run may change (`--epochs`, `--max-steps`, `--data`). The error lists every
/// setting that would change.
pub fn check_resume_unchanged(a: &RunArgs, saved: &TrainConfig) -> Result<()> {
    let given = fixed_by_resume_run(a);
    if given.is_empty() {
        return Ok(());
    }
    let mut wanted = layered_over(saved, a.config.as_deref())?;
    apply_flags(&mut wanted, a)?;
    wanted.epochs = saved.epochs;
    wanted.max_steps = saved.max_steps;
    wanted.data.dir = saved.data.dir.clone();
    let mut diffs = Vec::new();
    config_diff(
        &serde_json::to_value(saved)?,
        &serde_json::to_value(&wanted)?,
        "",
        &mut diffs,
    );
    anyhow::ensure!(
        diffs.is_empty(),
        "--resume continues a run with the configuration saved in its checkpoint; {} would \
         change it: {} (with --resume only --epochs, --max-steps and --data may change)",
        given.join(", "),
        diffs.join("; ")
    );
    Ok(())
}

/// The leaves where `saved` and `given` differ, as `path: checkpoint X, given Y`.
fn config_diff(
    saved: &serde_json::Value,
    given: &serde_json::Value,
    path: &str,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (saved, given) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                config_diff(
                    a.get(k).unwrap_or(&Value::Null),
                    b.get(k).unwrap_or(&Value::Null),
                    &p,
                    out,
                );
            }
        }
        (a, b) if a != b => out.push(format!("{path}: checkpoint {a}, given {b}")),
        _ => {}
    }
}

/// Loads the state of the checkpoint `--resume SPEC` names and applies the only flags a resumed
/// run honours (`--epochs`, `--max-steps`, `--data`): a resumed run keeps its configuration;
/// only how long it runs and where the data lives may change. Prints where it resumes from.
pub fn load_resume(
    spec: &str,
    out: Option<&Path>,
    a: &crate::args::RunArgs,
) -> Result<(PathBuf, resnet_train::TrainState)> {
    let dir = resolve_resume(spec, out)?;
    let mut state = resnet_train::load_state(&dir)?;
    if let Some(e) = a.epochs {
        state.config.epochs = e;
    }
    if a.max_steps.is_some() {
        state.config.max_steps = a.max_steps;
    }
    if let Some(d) = &a.data {
        state.config.data.dir = d.clone();
    }
    crate::say!(
        "resuming from {} (step {}, epoch {})",
        dir.display(),
        state.global_step,
        state.epoch + 1
    );
    Ok((dir, state))
}

/// Run flags given that a resumed run takes from its checkpoint instead (they may only repeat
/// it: [`check_resume_unchanged`]).
pub fn fixed_by_resume_run(a: &RunArgs) -> Vec<&'static str> {
    let given = [
        ("--freeze-bn", a.freeze_bn),
        ("--on-nonfinite", a.on_nonfinite.is_some()),
        ("--conv-precision", a.conv_precision.is_some()),
        ("--config", a.config.is_some()),
        ("--dataset", a.dataset.is_some()),
        ("--download", a.download),
        ("--depth", a.depth.is_some()),
        ("--stem", a.stem.is_some()),
        ("--width", a.width.is_some()),
        ("--batch-size", a.batch_size.is_some()),
        ("--lr", a.lr.is_some()),
        ("--optimizer", a.optimizer.is_some()),
        ("--weight-decay", a.weight_decay.is_some()),
        ("--momentum", a.momentum.is_some()),
        ("--nesterov", a.nesterov),
        ("--schedule", a.schedule.is_some()),
        ("--step-epochs", a.step_epochs.is_some()),
        ("--gamma", a.gamma.is_some()),
        ("--warmup-epochs", a.warmup_epochs.is_some()),
        ("--label-smoothing", a.label_smoothing.is_some()),
        ("--train-limit", a.train_limit.is_some()),
        ("--test-limit", a.test_limit.is_some()),
        ("--seed", a.seed.is_some()),
        ("--no-augment", a.no_augment),
        ("--loader-workers", a.loader_workers.is_some()),
        ("--checkpoint-steps", a.checkpoint_steps.is_some()),
        ("--checkpoint-minutes", a.checkpoint_minutes.is_some()),
        ("--cycle-epochs", a.cycle_epochs.is_some()),
        ("--patience", a.patience.is_some()),
        ("--dropout", a.dropout.is_some()),
        ("--cutout", a.cutout.is_some()),
        ("--rotation", a.rotation.is_some()),
        ("--scale", a.scale.is_some()),
        ("--color-jitter", a.color_jitter.is_some()),
        ("--mixup", a.mixup.is_some()),
        ("--cutmix", a.cutmix.is_some()),
        ("--pretrained", a.pretrained.is_some()),
        ("--freeze", a.freeze.is_some()),
        ("--backbone-lr-scale", a.backbone_lr_scale.is_some()),
    ];
    given
        .into_iter()
        .filter(|(_, g)| *g)
        .map(|(n, _)| n)
        .collect()
}
