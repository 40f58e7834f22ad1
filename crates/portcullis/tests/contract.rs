//! The API contract, checked by a tool nobody here wrote: Schemathesis (PyPI) reads the real
//! server's `/openapi.json` and sends what the document allows and what it forbids to every
//! operation, with every check it has (undocumented statuses and content types, answers that do
//! not match their schemas, valid requests refused, invalid ones accepted, resources still there
//! after a `DELETE`, missing authentication ignored, server errors…), in its coverage, fuzzing and
//! stateful phases. A fixed seed and a bounded number of examples per operation keep it
//! repeatable and short (about 15 s on two cores).
//!
//! `.ci/run` installs the pinned Schemathesis; the test is skipped only where there is no
//! `python3` at all. Its settings are `schemathesis.toml` at the repository root, which a person
//! running `schemathesis run` from the repository gets too.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::*;

/// The Schemathesis `.ci/run` installs.
const SCHEMATHESIS: &str = "4.32.5";

/// Runs Schemathesis's command line through the `python3` on the path.
fn schemathesis() -> Command {
    let mut command = Command::new("python3");
    command.args([
        "-c",
        "import sys; from schemathesis.cli import schemathesis; \
         sys.exit(schemathesis(prog_name='schemathesis'))",
    ]);
    command
}

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_contract_holds_under_schemathesis_with_every_check() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!(
            "SKIPPED: no python3 on this machine, so no Schemathesis (.ci/run installs it: \
             python3 -m pip install 'schemathesis=={SCHEMATHESIS}')"
        );
        return;
    }
    let version = schemathesis()
        .arg("--version")
        .output()
        .expect("python3 runs");
    assert!(
        version.status.success(),
        "Schemathesis is not installed for python3: python3 -m pip install \
         'schemathesis=={SCHEMATHESIS}' (.ci/run does it)\n{}",
        String::from_utf8_lossy(&version.stderr)
    );
    let shown = String::from_utf8_lossy(&version.stdout);
    assert!(
        shown.contains(SCHEMATHESIS),
        "Schemathesis {SCHEMATHESIS} is the one this test is pinned to, found: {shown}"
    );

    let dir = data_dir();
    let key = create_key(&dir, "contract");
    let server = Server::start(&dir).await;
    let repository = repository();
    let reports = tempfile::tempdir().unwrap();
    // Run from a directory of its own: Schemathesis keeps a cache (`.schemathesis/`) where it runs.
    let mut child = schemathesis()
        .current_dir(reports.path())
        .arg("--config-file")
        .arg(repository.join("schemathesis.toml"))
        .arg("run")
        .arg(format!("{}/openapi.json", server.base))
        .args(["--header", &format!("Authorization: Bearer {key}")])
        .args(["--checks", "all"])
        .args(["--seed", "20261202"])
        .args(["--max-examples", "30"])
        .args(["--workers", "1"])
        .args(["--generation-database", "none"])
        .args(["--request-timeout", "10"])
        .arg("--no-color")
        .args(["--report", "junit", "--report-dir"])
        .arg(reports.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).unwrap();
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(170) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!(
                "Schemathesis ran for more than 170 s:\n{}",
                reader.join().unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let output = reader.join().unwrap();
    let mut errors = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut errors)
        .unwrap();
    server.stop();
    // What it covered, for the log of the run.
    for line in output.lines().filter(|l| {
        l.contains("generated,") || l.contains("Tested:") || l.contains("No issues found")
    }) {
        println!("schemathesis: {}", line.trim());
    }
    assert!(
        status.success(),
        "Schemathesis found problems with the API against its OpenAPI document ({status}):\n\
         {output}\n{errors}"
    );
    // Its closing line: "No issues found in …", or "N warning(s) in …" for its heuristics about
    // test data (an operation whose valid requests all met sessions that were not there or had
    // ended in that run); a failure or an error would be counted there.
    let closing = output
        .lines()
        .rev()
        .find(|l| l.starts_with("===="))
        .unwrap_or_default();
    assert!(
        !closing.contains("failure") && !closing.contains("error"),
        "Schemathesis found problems:\n{output}"
    );
    if output.contains("WARNINGS") {
        println!("schemathesis: {}", closing.trim_matches(['=', ' ']));
    }
    assert!(
        output.contains("Tested: 11"),
        "Schemathesis did not test every operation:\n{output}"
    );
}
