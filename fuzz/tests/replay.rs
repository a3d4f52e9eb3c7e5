//! Replays every saved input of every target: the seeds, what the fuzzer's campaigns kept, and
//! each input that once crashed a target (kept after its fix). A panic names the file.

use std::path::{Path, PathBuf};

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

#[test]
fn every_saved_input_of_every_target_passes() {
    for (name, target) in peerchat_fuzz::TARGETS {
        let dir = corpus(name);
        let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{name} has no saved inputs");
        for input in &inputs {
            let data = std::fs::read(input).unwrap();
            if std::panic::catch_unwind(|| target(&data)).is_err() {
                panic!("{name} fails on {}", input.display());
            }
        }
    }
}

#[test]
fn the_seeds_are_saved_and_accepted_where_valid() {
    for (name, target) in peerchat_fuzz::TARGETS {
        let seeds = peerchat_fuzz::seeds(name);
        assert!(!seeds.is_empty(), "{name} has no seeds");
        for (i, seed) in seeds.iter().enumerate() {
            target(seed);
            let saved = corpus(name).join(format!("seed-{i:02}"));
            assert_eq!(
                std::fs::read(&saved).ok().as_deref(),
                Some(seed.as_slice()),
                "{} is not the current seed: write the seeds with `cargo run -p peerchat-fuzz --bin seeds`",
                saved.display()
            );
        }
    }
}
