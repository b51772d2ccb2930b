//! The TLS brokers started by `fixtures/brokers.sh start`: their ports and PKI.
//!
//! Tests that need them FAIL (never skip) when they are not running, and say how to start them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub struct Fixtures {
    vars: HashMap<String, String>,
}

fn env_file() -> PathBuf {
    match std::env::var_os("TRUSTSCALE_FIXTURE_DIR") {
        Some(dir) => PathBuf::from(dir).join("env"),
        None => Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/fixtures/env"
        ))
        .to_path_buf(),
    }
}

impl Fixtures {
    /// The running fixtures; panics with instructions when they are not there.
    pub fn get() -> &'static Fixtures {
        static F: OnceLock<Fixtures> = OnceLock::new();
        F.get_or_init(|| {
            let path = env_file();
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!(
                    "the broker fixtures are not running ({}: {e}); start them with `fixtures/brokers.sh start`",
                    path.display()
                )
            });
            let vars = text
                .lines()
                .filter_map(|l| l.strip_prefix("export "))
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
                .collect();
            Fixtures { vars }
        })
    }

    pub fn var(&self, name: &str) -> String {
        self.vars.get(name).cloned().unwrap_or_else(|| {
            panic!("fixture variable {name} is missing; re-run `fixtures/brokers.sh start`")
        })
    }

    pub fn port(&self, name: &str) -> u16 {
        let port: u16 = self.var(name).parse().unwrap();
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            panic!(
                "fixture {name} (port {port}) is not listening; start the brokers with `fixtures/brokers.sh start`"
            );
        }
        port
    }

    pub fn pki(&self, file: &str) -> PathBuf {
        PathBuf::from(self.var("TRUSTSCALE_PKI_DIR")).join(file)
    }

    pub fn pem(&self, file: &str) -> String {
        std::fs::read_to_string(self.pki(file)).unwrap()
    }

    /// A fresh CA folder holding the fixture root CA.
    pub fn ca_dir(&self) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(self.pki("ca.crt"), dir.path().join("ca.crt")).unwrap();
        dir
    }
}
