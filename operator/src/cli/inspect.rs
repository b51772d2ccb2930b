//! `trustscale trust inspect`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use trustscale::trust::inspect::{self, HandshakeReport};
use trustscale::trust::{FileReport, FileStatus, Secret, TlsSettings, TrustFactory};

use super::TrustArgs;

#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    trust: TrustArgs,
    /// Do one handshake with HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    connect: Option<String>,
    /// Verify the server's certificate against this name instead of the host.
    #[arg(long, value_name = "NAME", requires = "connect")]
    server_name: Option<String>,
    /// An extra CA for this handshake only (like a trigger's `ca`).
    #[arg(long, value_name = "FILE", requires = "connect")]
    ca: Option<PathBuf>,
    /// Client certificate (chain) for mutual TLS.
    #[arg(long, value_name = "FILE", requires_all = ["key", "connect"])]
    cert: Option<PathBuf>,
    /// Client private key.
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// A file holding the password of an encrypted key.
    #[arg(long, value_name = "FILE", requires = "key")]
    key_password_file: Option<PathBuf>,
    /// Skip certificate verification (deprecated; shows what unsafeSsl does).
    #[arg(long, requires = "connect")]
    unsafe_ssl: bool,
    /// Connect and handshake timeout, in seconds.
    #[arg(long, default_value_t = 5)]
    timeout: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AnchorsOut {
    total: usize,
    system: usize,
    system_unparsable: usize,
    system_errors: Vec<String>,
    custom: usize,
    generation: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PolicyOut {
    client_min_tls: String,
    client_min_tls_effective: String,
    service_min_tls: String,
    unsafe_ssl: String,
    ca_dirs: Vec<FolderOut>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FolderOut {
    path: PathBuf,
    present: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Output {
    anchors: AnchorsOut,
    policy: PolicyOut,
    files: Vec<FileReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    handshake: Option<HandshakeReport>,
}

pub async fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let options = args.trust.options()?;
    let factory = TrustFactory::new(options)?;
    let anchors = factory.anchors();
    let opts = factory.options();
    let mut out = Output {
        anchors: AnchorsOut {
            total: anchors.len(),
            system: anchors.system_count(),
            system_unparsable: anchors.system_unparsable(),
            system_errors: anchors.system_errors().to_vec(),
            custom: anchors.custom_count(),
            generation: anchors.generation(),
        },
        policy: PolicyOut {
            client_min_tls: opts.client_min_tls.to_string(),
            client_min_tls_effective: opts.client_min_tls.effective().to_string(),
            service_min_tls: opts.service_min_tls.to_string(),
            unsafe_ssl: format!("{:?}", opts.unsafe_ssl),
            ca_dirs: anchors
                .folders()
                .iter()
                .map(|f| FolderOut {
                    path: f.path.clone(),
                    present: f.present,
                })
                .collect(),
        },
        files: anchors.files().to_vec(),
        handshake: None,
    };
    if let Some(target) = &args.connect {
        let path_str = |p: &PathBuf| p.to_string_lossy().into_owned();
        let key_password = match &args.key_password_file {
            Some(p) => Some(Secret::new(
                std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("--key-password-file {}: {e}", p.display()))?
                    .trim_end_matches(['\n', '\r'])
                    .to_string(),
            )),
            None => None,
        };
        let settings = TlsSettings {
            ca: args.ca.as_ref().map(path_str),
            cert: args.cert.as_ref().map(path_str),
            key: args.key.as_ref().map(|p| Secret::new(path_str(p))),
            key_password,
            unsafe_ssl: Some(args.unsafe_ssl),
            server_name: args.server_name.clone(),
            ..TlsSettings::default()
        };
        let ctx = factory.context(&settings, "trust inspect")?;
        out.handshake =
            Some(inspect::handshake(&ctx, target, Duration::from_secs(args.timeout)).await);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_text(&out);
    }
    let handshake_failed = out.handshake.as_ref().is_some_and(|h| !h.ok);
    let rejected = out.files.iter().any(|f| f.status != FileStatus::Loaded);
    Ok(if handshake_failed {
        ExitCode::from(1)
    } else if rejected {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_text(out: &Output) {
    let a = &out.anchors;
    println!(
        "Trust anchors: {} ({} system, {} custom; generation {})",
        a.total, a.system, a.custom, a.generation
    );
    if a.system_unparsable > 0 {
        println!(
            "  {} system certificates could not be used",
            a.system_unparsable
        );
    }
    for e in &a.system_errors {
        println!("  system store problem: {e}");
    }
    let p = &out.policy;
    println!(
        "Policy: client minimum {} (enforced {}), service minimum {}, unsafeSsl {}",
        p.client_min_tls, p.client_min_tls_effective, p.service_min_tls, p.unsafe_ssl
    );
    println!("CA folders:");
    for f in &p.ca_dirs {
        println!(
            "  {} {}",
            f.path.display(),
            if f.present { "" } else { "(missing)" }
        );
    }
    if out.files.is_empty() {
        println!("  (no files)");
    }
    for f in &out.files {
        let status = match f.status {
            FileStatus::Loaded => "loaded",
            FileStatus::Partial => "PARTIAL",
            FileStatus::Rejected => "REJECTED",
        };
        print!(
            "  {status:<8} {} ({} new anchors)",
            f.path.display(),
            f.certificates
        );
        match &f.reason {
            Some(r) => println!(": {r}"),
            None => println!(),
        }
    }
    if let Some(h) = &out.handshake {
        println!("Handshake with {}:", h.target);
        if let Some(v) = &h.version {
            println!(
                "  version {v}, cipher suite {}",
                h.cipher_suite.as_deref().unwrap_or("?")
            );
        }
        for (i, c) in h.chain.iter().enumerate() {
            println!("  [{i}] subject {}", c.subject);
            println!("      issuer  {}", c.issuer);
            println!("      valid   {} .. {}", c.not_before, c.not_after);
            if !c.names.is_empty() {
                println!("      names   {}", c.names.join(", "));
            }
        }
        match &h.error {
            None => println!("  OK ({} ms)", h.elapsed_ms),
            Some(e) => println!("  FAILED [{}]: {}", e.kind, e.message),
        }
    }
}
