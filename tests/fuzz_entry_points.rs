//! The fuzz entry points (`walkeeper::fuzzing`, the same functions the
//! libFuzzer targets in fuzz/ call) on arbitrary inputs, so the ordinary
//! suite exercises every decoder of outside input on stable, plus every
//! input kept in fuzz/corpus and every crash reproducer in fuzz/artifacts
//! (each crash fuzzing found stays a regression test here). See
//! tools/FUZZING.md.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use walkeeper::fuzzing;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Every target has its libFuzzer binary, and every kept input (corpus and
/// crash reproducers) runs through its target without a finding.
#[test]
fn kept_inputs_pass_their_targets() {
    for (name, target) in fuzzing::TARGETS {
        let bin = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        assert!(bin.exists(), "no fuzz target {}", bin.display());
        for kind in ["corpus", "artifacts"] {
            let Ok(dir) = std::fs::read_dir(fuzz_dir().join(kind).join(name)) else {
                continue;
            };
            for entry in dir {
                let path = entry.expect("directory entry").path();
                let data = std::fs::read(&path).expect("readable input");
                let run = std::panic::catch_unwind(|| target(&data));
                assert!(run.is_ok(), "{name} fails on {}", path.display());
            }
        }
    }
}

macro_rules! entry_points {
    ($($name:ident: $cases:expr, $max_len:expr;)*) => {$(
        proptest! {
            #![proptest_config(ProptestConfig {
                cases: $cases,
                failure_persistence: None,
                ..ProptestConfig::default()
            })]
            #[test]
            fn $name(data in proptest::collection::vec(any::<u8>(), 0..$max_len)) {
                fuzzing::$name(&data);
            }
        }
    )*};
}

// Cases per entry point: about a second each on a loaded 2-core machine.
entry_points! {
    startup: 4000, 512;
    frontend: 4000, 512;
    backend: 4000, 512;
    replication_command: 4000, 256;
    proposer_codec: 4000, 512;
    proposer_message: 6000, 256;
    stored_values: 4000, 512;
    text_values: 4000, 128;
    conninfo: 4000, 256;
    auth: 4000, 256;
    acceptor_session: 1000, 1024;
    proposer_session: 1000, 1024;
}
