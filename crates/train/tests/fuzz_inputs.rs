//! Property tests of the run's text and binary inputs: a sweep space (TOML), a run
//! configuration (TOML), and a model record's bytes. Any input is accepted or refused with a
//! message; none panics.

use proptest::prelude::*;
use resnet_train::record_io::tensor_shapes;
use resnet_train::sweep::SweepSpace;
use resnet_train::TrainConfig;

/// A TOML number as a sweep space or config might spell it, odd ones included.
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<f64>().prop_map(|x| format!("{x:?}")),
        any::<i64>().prop_map(|x| x.to_string()),
        Just("inf".to_string()),
        Just("-inf".to_string()),
        Just("nan".to_string()),
        Just("0".to_string()),
        Just("1e308".to_string()),
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("optim.lr".to_string()),
        Just("optim.momentum".to_string()),
        Just("optim.weight_decay".to_string()),
        Just("batch_size".to_string()),
        Just("epochs".to_string()),
        Just("model.width".to_string()),
        Just("data.image_size".to_string()),
        Just("finetune.freeze".to_string()),
        Just("\"no.such\"".to_string()),
        "[a-z_.]{1,12}",
    ]
}

fn dist() -> impl Strategy<Value = String> {
    prop_oneof![
        (number(), number()).prop_map(|(a, b)| format!("{{ uniform = [{a}, {b}] }}")),
        (number(), number()).prop_map(|(a, b)| format!("{{ log_uniform = [{a}, {b}] }}")),
        (any::<i64>(), any::<i64>()).prop_map(|(a, b)| format!("{{ int_uniform = [{a}, {b}] }}")),
        proptest::collection::vec(number(), 0..4)
            .prop_map(|v| format!("{{ choice = [{}] }}", v.join(", "))),
        Just("{ choice = [\"a\", true, [1]] }".to_string()),
        ".{0,12}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn any_sweep_space_is_read_and_sampled_or_refused_without_panic(
        entries in proptest::collection::vec((path(), dist()), 0..4),
        sweep_seed in any::<u64>(),
    ) {
        let text = format!(
            "[params]\n{}",
            entries.iter().map(|(p, d)| format!("{p} = {d}\n")).collect::<String>()
        );
        if let Ok(space) = SweepSpace::from_toml(&text) {
            let base = TrainConfig::default();
            for i in 0..3 {
                // A sampled config is valid or an error naming the field.
                if let Ok(t) = space.trial(&base, sweep_seed, i) {
                    prop_assert!(t.config.validate().is_ok());
                }
            }
        }
    }

    #[test]
    fn arbitrary_text_as_a_sweep_space_never_panics(text in ".{0,200}") {
        let _ = SweepSpace::from_toml(&text);
    }

    #[test]
    fn any_run_config_toml_is_valid_or_refused_without_panic(
        entries in proptest::collection::vec((path(), number()), 0..6),
    ) {
        // Dotted keys nest as TOML tables; repeated keys are TOML errors, also fine.
        let text: String = entries.iter().map(|(p, v)| format!("{p} = {v}\n")).collect();
        if let Ok(cfg) = toml::from_str::<TrainConfig>(&text) {
            let _ = cfg.validate();
        }
    }

    #[test]
    fn arbitrary_bytes_as_a_model_record_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        let _ = tensor_shapes(&bytes);
    }
}
