//! The examples run as a user runs them (`cargo test` builds them first).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn example(name: &str) -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_trustscale"));
    let path = bin.parent().unwrap().join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds the examples; run it without target filters",
        path.display()
    );
    path
}

fn run(name: &str) -> String {
    let mut child = Command::new(example(name))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            panic!("example {name} did not finish in 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "example {name} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn the_quickstart_shows_trust_decisions_and_rotation() {
    let out = run("quickstart");
    assert!(
        out.contains("queue depth  35 -> metric    35 ->  4 replicas"),
        "{out}"
    );
    assert!(
        out.contains("queue depth 120 -> metric   120 -> 10 replicas"),
        "{out}"
    );
    assert!(out.contains(": 0 failed"), "{out}");
    assert!(out.contains("Done:"), "{out}");
}

#[test]
fn the_custom_scaler_example_runs() {
    let out = run("custom_scaler");
    assert!(out.contains("= 42 -> 9 replicas"), "{out}");
    assert!(
        out.contains("the operator's mutual-TLS API serves it: 42"),
        "{out}"
    );
}

#[test]
fn the_embedding_example_runs() {
    let out = run("embed_operator");
    assert!(out.contains("-> 7 replicas"), "{out}");
    assert!(out.contains("refused by this program's policy"), "{out}");
}
