//! `resnet profile`: enumerates every convolution of the model and times each pass.

mod common;

use common::resnet_ok;

#[test]
fn profile_lists_every_convolution_of_the_model_with_its_passes() {
    for (depth, stem, convs) in [(18, "cifar", 20), (50, "imagenet", 53)] {
        let depth_s = depth.to_string();
        let out = resnet_ok(&[
            "profile",
            "--depth",
            &depth_s,
            "--stem",
            stem,
            "--width",
            "4",
            "--batch-size",
            "2",
            "--image-size",
            "16",
            "--repeats",
            "1",
            "--json",
        ]);
        let p: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON profile");
        let layers = p["layers"].as_array().expect("layers");
        let count: u64 = layers
            .iter()
            .map(|l| l["count"].as_u64().expect("count"))
            .sum();
        // ResNet-18: stem + 16 block convs + 3 projections; ResNet-50: stem + 48 + 4.
        assert_eq!(count, convs, "resnet{depth}: convolutions seen");
        for (i, l) in layers.iter().enumerate() {
            assert!(l["macs"].as_u64().expect("macs") > 0);
            for imp in ["burn", "gemm"] {
                for pass in ["forward", "grad_weight"] {
                    assert!(
                        l[imp][pass].as_f64().expect("seconds") > 0.0,
                        "{imp} {pass}"
                    );
                }
                // The stem's input is the image: its input gradient is never computed.
                let dx = l[imp]["grad_input"].as_f64().expect("seconds");
                assert_eq!(dx > 0.0, i > 0, "{imp} grad_input of layer {i}");
            }
        }
        let step = p["step"].as_array().expect("step");
        assert!(step[0].as_f64().expect("forward") > 0.0);
        assert!(step[1].as_f64().expect("backward") > 0.0);
    }
}
