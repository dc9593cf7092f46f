//! Every example in `configs/` must load: parse, validate, and resolve its `env:`
//! references (given dummy values), and pass `start`'s GPU check, so the shipped examples
//! never rot.

// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use llmgw::config::Config;
use std::path::Path;

#[test]
fn every_shipped_config_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("configs/ exists") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read config");
        // Give every `env:VAR` a value, as a user would have exported it.
        for part in text.split("\"env:").skip(1) {
            let var: String = part.chars().take_while(|c| *c != '"').collect();
            std::env::set_var(&var, "dummy-value-for-test");
        }
        let cfg = match Config::load(&path) {
            Ok(c) => c,
            Err(e) => panic!("{} does not load: {e}", path.display()),
        };
        // …and `start` would submit it: no more GPUs than its [slurm] asks for.
        if let Err(e) = llmgw::placement::check_request(&cfg.config, &text, &cfg.source_name) {
            panic!("`llmgw start` refuses {}: {e}", path.display());
        }
        seen += 1;
    }
    assert!(
        seen >= 3,
        "expected the shipped example configs, found {seen}"
    );
}
