//! Every fuzz seed and every input a fuzzer ever crashed on, run through its harness.
//!
//! - The harnesses are the fuzz targets' own (`fuzz/src/lib.rs`), so a regression here is the
//!   crash the fuzzer found; see docs/FUZZING.md for the campaigns.
//! - Inputs live in `fuzz/seeds/<target>/` and `fuzz/regressions/<target>/`.

#[path = "../fuzz/src/lib.rs"]
mod harness;

use harness::Target;
use std::path::Path;

fn inputs(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut v: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    v.sort();
    v
}

#[test]
fn seeds_and_past_crashes_run_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut ran = 0;
    for t in Target::ALL {
        let seeds = inputs(&root.join("seeds").join(t.name()));
        assert!(!seeds.is_empty(), "no seeds for {}", t.name());
        for p in seeds
            .iter()
            .chain(&inputs(&root.join("regressions").join(t.name())))
        {
            let data = std::fs::read(p).expect("read input");
            eprintln!("{}: {}", t.name(), p.display());
            t.run(&data);
            ran += 1;
        }
    }
    assert!(ran > Target::ALL.len());
}
