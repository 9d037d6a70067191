//! Every example config loads (`--mode validate`), so the examples cannot rot.

use std::path::Path;

#[test]
fn every_example_config_validates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let config = entry.unwrap().path().join("config.yaml");
        if !config.exists() {
            continue;
        }
        seen += 1;
        let out = wasp_tests::run_wasp(&["--mode", "validate", "-c", config.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}: {}",
            config.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(seen >= 3, "found only {seen} example configs");
}
