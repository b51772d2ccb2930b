//! The bad-input corpus, run through `trustscale probe` and through a running
//! `trustscale operator`.
//!
//! `tests/corpus/manifests/` holds what can be committed (documents with out-of-range
//! numbers, duplicates, secrets in odd places, parameters naming FIFOs, devices and
//! folders, symlinks to a device, a folder and nowhere, text that is not UTF-8); the
//! test adds what cannot be: a FIFO manifest, a 5 MiB manifest and one nested 100,000
//! levels deep, and the FIFO a trigger's `ca` names. Every input must give a clear error
//! naming its file, trigger or parameter, nothing may panic or hang, no secret may reach
//! the output or the logs, and the good ScaledObjects must keep polling.

mod support;

use support::free_port;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Values planted in the corpus that must never be printed.
const SECRETS: &[&str] = &[
    "HUNTER2PASS",
    "QUERYSECRET",
    "S3CR3TKEYMATERIAL",
    "JUSTASECRETVALUE",
    "ODDPLACESECRET",
];

struct Corpus {
    dir: tempfile::TempDir,
    _source: support::PythonHttp,
}

/// The corpus in a folder of its own, with the source URL and the FIFO filled in.
fn corpus() -> Corpus {
    let source = support::python_http(&[("stats.json", r#"{"queue":{"depth":4}}"#)]);
    let url = format!("http://127.0.0.1:{}/stats.json", source.port);
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let fifo = dir.path().join("ca-fifo");
    support::mkfifo(&fifo);
    let committed = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/corpus/manifests"
    ));
    for entry in std::fs::read_dir(committed).unwrap() {
        let entry = entry.unwrap();
        let to = manifests.join(entry.file_name());
        if entry.file_type().unwrap().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), &to).unwrap();
            continue;
        }
        let bytes = std::fs::read(entry.path()).unwrap();
        let bytes = match String::from_utf8(bytes) {
            Ok(text) => text
                .replace("SOURCE_URL", &url)
                .replace("FIFO_PATH", &fifo.display().to_string())
                .into_bytes(),
            Err(e) => e.into_bytes(),
        };
        std::fs::write(&to, bytes).unwrap();
    }
    support::mkfifo(&manifests.join("fifo.yaml"));
    let huge = format!(
        "kind: ConfigMap\nmetadata: {{name: huge}}\ndata:\n  a: \"{}\"\n",
        "x".repeat(5 << 20)
    );
    std::fs::write(manifests.join("huge.yaml"), huge).unwrap();
    let deep = format!(
        "kind: ConfigMap\nmetadata: {{name: deep}}\ndata: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    std::fs::write(manifests.join("deep.yaml"), deep).unwrap();
    // The good ScaledObject every run must keep polling.
    std::fs::write(
        manifests.join("good.yaml"),
        format!("kind: ScaledObject\nmetadata: {{name: good, namespace: corpus}}\nspec:\n  pollingInterval: 1\n  triggers:\n    - type: metrics-api\n      metadata: {{url: \"{url}\", valueLocation: queue.depth, targetValue: \"2\"}}\n"),
    )
    .unwrap();
    Corpus {
        dir,
        _source: source,
    }
}

impl Corpus {
    fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }
}

/// Runs a command to its end within `bound`, killing it (and failing) if it hangs.
fn run_bounded(cmd: &mut Command, bound: Duration) -> (Option<i32>, String, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > bound {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "hung for {bound:?}:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_no_secret(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{what} shows the secret {s}:\n{text}");
    }
    assert!(!text.contains("panicked"), "{what} shows a panic:\n{text}");
}

/// What every run must report: (file, document, part of the message, what it is about).
const EXPECTED_PROBLEMS: &[(&str, u64, &str, &str)] = &[
    (
        "fifo.yaml",
        0,
        "cannot read: a FIFO, not a regular file",
        "a FIFO manifest",
    ),
    (
        "zero-link.yaml",
        0,
        "cannot read: a device, not a regular file",
        "a symlink to /dev/zero",
    ),
    (
        "dir-link.yaml",
        0,
        "cannot read: a directory, not a regular file",
        "a symlink to a folder",
    ),
    (
        "dangling.yaml",
        0,
        "cannot read: No such file",
        "a dangling symlink",
    ),
    (
        "huge.yaml",
        0,
        "larger than the 4194304-byte limit",
        "an oversized manifest",
    ),
    ("deep.yaml", 1, "nested too deeply", "100,000 levels"),
    (
        "not-utf8.yaml",
        0,
        "cannot read: not UTF-8 text",
        "not UTF-8",
    ),
    (
        "out-of-range.yaml",
        1,
        "ScaledObject corpus/too-big: spec.pollingInterval: 17000000000000000000 is out of range",
        "an out-of-range number",
    ),
    (
        "duplicate-b.yaml",
        1,
        "ScaledObject corpus/dup is defined again; the first definition",
        "a duplicate",
    ),
];

/// Checks that `problems` (as probe and the API print them) holds every expected one.
fn assert_problems(problems: &serde_json::Value, text: &str) {
    let problems = problems
        .as_array()
        .unwrap_or_else(|| panic!("no problems list:\n{text}"));
    for (file, document, message, what) in EXPECTED_PROBLEMS {
        let found = problems.iter().any(|p| {
            p["file"]
                .as_str()
                .is_some_and(|f| f.ends_with(&format!("/{file}")))
                && p["document"] == *document
                && p["message"].as_str().is_some_and(|m| m.contains(message))
        });
        assert!(
            found,
            "{what} is not reported ({file}, document {document}, {message:?}):\n{text}"
        );
    }
}

#[test]
fn probe_reports_every_bad_input_and_still_polls_the_good_ones() {
    let c = corpus();
    let (code, stdout, stderr) = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_trustscale"))
            .args([
                "probe",
                "--json",
                "--timeout",
                "5",
                "--ca-dir",
                "/nonexistent",
                "-f",
            ])
            .arg(c.manifests()),
        Duration::from_secs(60),
    );
    assert_eq!(
        code,
        Some(1),
        "some triggers fail, nothing crashes:\n{stdout}\n{stderr}"
    );
    assert_no_secret("probe's output", &stdout);
    assert_no_secret("probe's log", &stderr);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_problems(&json["problems"], &stdout);
    let trigger = |so: &str, index: u64| {
        json["triggers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["scaledObject"] == so && t["index"] == index)
            .unwrap_or_else(|| panic!("no trigger {so}#{index}:\n{stdout}"))
            .clone()
    };
    for so in ["corpus/good", "corpus/after-broken", "corpus/dup"] {
        assert_eq!(trigger(so, 0)["value"], 4.0, "{so} polls:\n{stdout}");
    }
    let message = |so: &str, index: u64| {
        trigger(so, index)["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        message("corpus/paths", 0).contains("parameter ca")
            && message("corpus/paths", 0).contains("a FIFO"),
        "{}",
        message("corpus/paths", 0)
    );
    assert!(
        message("corpus/paths", 1).contains("parameter ca: cannot read /dev/zero: a device"),
        "{}",
        message("corpus/paths", 1)
    );
    assert!(
        message("corpus/paths", 2).contains("parameter ca: cannot read /usr: a directory"),
        "{}",
        message("corpus/paths", 2)
    );
    assert!(
        message("corpus/paths", 3).contains("unknown trigger type \"no-such-type\""),
        "{}",
        message("corpus/paths", 3)
    );
    assert_eq!(trigger("corpus/leaky", 0)["error"]["kind"], "connection");
    assert!(
        message("corpus/leaky", 1).contains("parameter key"),
        "{}",
        message("corpus/leaky", 1)
    );
    assert!(
        message("corpus/leaky", 2).contains("parameter key"),
        "{}",
        message("corpus/leaky", 2)
    );
    assert_eq!(
        trigger("corpus/leaky", 3)["value"],
        4.0,
        "a misspelt key does not stop the trigger"
    );
}

#[test]
fn a_running_operator_reports_every_bad_input_keeps_serving_and_stops_on_sigterm() {
    let c = corpus();
    let certs = tempfile::tempdir().unwrap();
    let log = c.dir.path().join("operator.log");
    let api = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_trustscale"))
        .args([
            "--log-format",
            "json",
            "operator",
            "--ca-dir",
            "/nonexistent",
        ])
        .args([
            "--metrics-bind-address",
            "",
            "--webhook-bind-address",
            "127.0.0.1:0",
            "--health-probe-bind-address",
            "",
        ])
        .args(["--listen", &format!("127.0.0.1:{api}")])
        .arg("--manifests")
        .arg(c.manifests())
        .arg("--cert-dir")
        .arg(certs.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let status = || support::curl_api(api, certs.path(), "/scaledobjects");
    let start = Instant::now();
    let text = loop {
        let text = status();
        let polled = |so: &str| {
            serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .is_some_and(|j| {
                    j["scaledObjects"].as_array().is_some_and(|a| {
                        a.iter()
                            .any(|o| o["scaledObject"] == so && o["triggers"][0]["value"] == 4.0)
                    })
                })
        };
        if polled("corpus/good") && polled("corpus/after-broken") && polled("corpus/dup") {
            break text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the good ScaledObjects are not all polled: {text}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_no_secret("the API's /scaledobjects", &text);
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_problems(&json["problems"], &text);
    // Still polling rounds later (the FIFO parameter stalls nothing): the good
    // ScaledObject's last poll moves on, with its value.
    let last_poll = |text: &str| {
        serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|j| {
                j["scaledObjects"].as_array().and_then(|a| {
                    a.iter()
                        .find(|o| {
                            o["scaledObject"] == "corpus/good" && o["triggers"][0]["value"] == 4.0
                        })
                        .map(|o| o["lastPoll"].to_string())
                })
            })
    };
    let first = last_poll(&text).expect("the good ScaledObject was polled");
    let start = Instant::now();
    while last_poll(&status()).is_none_or(|t| t == first) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the good ScaledObject stopped polling"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let start = Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("SIGTERM did not stop the operator within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(0));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_no_secret("the operator's log", &logged);
    assert!(
        logged.contains("trigger is failing"),
        "failing triggers are logged at warn:\n{logged}"
    );
}

/// The inotify watches a running operator holds (from /proc: every inotify descriptor's
/// `wd:` lines).
fn inotify_watches(pid: u32) -> usize {
    let mut n = 0;
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy() == "anon_inode:inotify")
        {
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            n += info
                .lines()
                .filter(|l| l.starts_with("inotify wd:"))
                .count();
        }
    }
    n
}

#[test]
fn a_ca_folder_that_links_to_usr_costs_no_more_watches_than_an_empty_one() {
    let work = tempfile::tempdir().unwrap();
    let (ca, m, certs) = (
        work.path().join("ca"),
        work.path().join("m"),
        work.path().join("certs"),
    );
    std::fs::create_dir_all(&ca).unwrap();
    std::fs::create_dir_all(&m).unwrap();
    std::os::unix::fs::symlink("/usr", ca.join("usr-link")).unwrap();
    std::os::unix::fs::symlink("/", ca.join("root-link")).unwrap();
    let health = free_port();
    let child = support::Child(
        Command::new(env!("CARGO_BIN_EXE_trustscale"))
            .arg("operator")
            .arg("--manifests")
            .arg(&m)
            .arg("--cert-dir")
            .arg(&certs)
            .arg("--ca-dir")
            .arg(&ca)
            .args(["--listen", "127.0.0.1:0", "--metrics-bind-address", ""])
            .args([
                "--health-probe-bind-address",
                &format!("127.0.0.1:{health}"),
            ])
            .args(["--webhook-bind-address", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    support::wait_for("ready", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", health)).is_ok()
    });
    // One each: the CA folder, the manifests, the certificate folder (set up as the
    // operator starts, not all before its health port answers). The links are not
    // followed into /usr or /.
    support::wait_for("the folders are watched", Duration::from_secs(20), || {
        inotify_watches(child.0.id()) >= 3
    });
    std::thread::sleep(Duration::from_secs(1));
    let watches = inotify_watches(child.0.id());
    eprintln!("{watches} inotify watches");
    assert!((3..=4).contains(&watches), "{watches} inotify watches");
}

#[test]
fn a_manifest_folder_that_cannot_be_listed_keeps_the_running_scaled_objects() {
    // As an unprivileged user, so that taking away the folder's permissions is real.
    let source = support::python_http(&[("stats.json", r#"{"queue":{"depth":5}}"#)]);
    let work = tempfile::tempdir().unwrap();
    let (m, certs) = (work.path().join("m"), work.path().join("certs"));
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(
        m.join("so.yaml"),
        format!(
            "kind: ScaledObject\nmetadata: {{name: kept, namespace: listing}}\nspec:\n  pollingInterval: 1\n  triggers:\n    - type: metrics-api\n      metadata: {{url: \"http://127.0.0.1:{}/stats.json\", valueLocation: queue.depth, targetValue: \"1\"}}\n",
            source.port
        ),
    )
    .unwrap();
    let chown = |p: &Path| {
        assert!(
            Command::new("chown")
                .args(["-R", "65532:65532"])
                .arg(p)
                .status()
                .unwrap()
                .success()
        );
    };
    std::fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    chown(&m);
    std::fs::create_dir_all(&certs).unwrap();
    chown(&certs);
    let api = free_port();
    let log = work.path().join("operator.log");
    let _op = support::Child(
        Command::new("setpriv")
            .args(["--reuid=65532", "--regid=65532", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_trustscale"))
            .arg("operator")
            .arg("--manifests")
            .arg(&m)
            .arg("--cert-dir")
            .arg(&certs)
            .args(["--ca-dir", "/nonexistent"])
            .args([
                "--listen",
                &format!("127.0.0.1:{api}"),
                "--metrics-bind-address",
                "",
            ])
            .args([
                "--health-probe-bind-address",
                "",
                "--webhook-bind-address",
                "",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("setpriv (util-linux) runs"),
    );
    let served = || -> bool {
        serde_json::from_str::<serde_json::Value>(&support::curl_api(api, &certs, "/scaledobjects"))
            .is_ok_and(|json| {
                json["scaledObjects"][0]["scaledObject"] == "listing/kept"
                    && json["scaledObjects"][0]["triggers"][0]["value"].as_f64() == Some(5.0)
            })
    };
    support::wait_for("the ScaledObject polls", Duration::from_secs(30), served);
    // The folder can no longer be listed (the operator is not root): it says so, and the
    // ScaledObject it runs stays.
    std::fs::set_permissions(&m, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    support::wait_for(
        "the failed listing is reported",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(&log)
                .is_ok_and(|l| l.contains("the last good ones keep running"))
        },
    );
    assert!(
        served(),
        "the ScaledObject is still served after the listing failed"
    );
    std::fs::set_permissions(&m, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}
