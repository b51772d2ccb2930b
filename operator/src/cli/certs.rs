//! `trustscale certs ...` and `trustscale metrics get`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use base64::Engine as _;
use clap::Args;
use serde::Serialize;
use trustscale::trust::inspect::CertSummary;
use trustscale_operator::pki;

#[derive(Args, Debug)]
pub struct CertDirArgs {
    /// Folder of the internal certificates.
    #[arg(long, value_name = "DIR", default_value = "/certs")]
    cert_dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    dir: CertDirArgs,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// `certs ca-bundle`: the base64 of ca.crt, ready for an APIService's caBundle.
pub fn ca_bundle(args: &CertDirArgs) -> anyhow::Result<ExitCode> {
    let path = args.cert_dir.join(pki::CA_CRT);
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    trustscale::trust::material::certificates_for("ca", &bytes)
        .with_context(|| path.display().to_string())?;
    println!(
        "{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InspectOut {
    dir: PathBuf,
    ca: Vec<CertSummary>,
    chain: Vec<CertSummary>,
    ca_key_present: bool,
    valid: bool,
    problem: Option<String>,
}

/// `certs inspect`: subjects, SANs, serials, validity, and whether the set is consistent.
pub fn inspect(args: &InspectArgs) -> anyhow::Result<ExitCode> {
    let dir = &args.dir.cert_dir;
    let set = pki::load(dir)?;
    let check = pki::validate(dir, &set, SystemTime::now());
    let out = InspectOut {
        dir: dir.clone(),
        ca: set.ca.iter().filter_map(CertSummary::from_der).collect(),
        chain: set.chain.iter().filter_map(CertSummary::from_der).collect(),
        ca_key_present: set.ca_key.is_some(),
        valid: check.is_ok(),
        problem: check.err().map(|e| e.to_string()),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let show = |title: &str, certs: &[CertSummary]| {
            for (i, c) in certs.iter().enumerate() {
                println!("{title}[{i}] subject {}", c.subject);
                println!("        issuer  {}", c.issuer);
                println!("        serial  {}", c.serial);
                println!("        valid   {} .. {}", c.not_before, c.not_after);
                if !c.names.is_empty() {
                    println!("        names   {}", c.names.join(", "));
                }
            }
        };
        show("ca.crt ", &out.ca);
        show("tls.crt", &out.chain);
        println!(
            "ca.key  {}",
            if out.ca_key_present {
                "present"
            } else {
                "absent"
            }
        );
        match &out.problem {
            None => {
                println!("OK: tls.key matches tls.crt, which chains to ca.crt and is valid now")
            }
            Some(p) => println!("PROBLEM: {p}"),
        }
    }
    Ok(if out.valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[derive(Args, Debug)]
pub struct MetricsGetArgs {
    #[command(flatten)]
    dir: CertDirArgs,
    /// The operator's API address.
    #[arg(long, value_name = "HOST:PORT")]
    server: String,
    /// Namespace of the ScaledObject.
    namespace: String,
    /// Metric name (`s0-...`).
    metric: String,
    /// ScaledObject name.
    #[arg(long, value_name = "NAME")]
    scaledobject: String,
}

/// `metrics get`: the mTLS client of the API, with tls.crt/tls.key/ca.crt.
pub async fn metrics_get(args: &MetricsGetArgs) -> anyhow::Result<ExitCode> {
    let dir = &args.dir.cert_dir;
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))
    };
    let ca = read(pki::CA_CRT)?;
    let settings = trustscale::trust::TlsSettings {
        ca: Some(ca),
        cert: Some(read(pki::TLS_CRT)?),
        key: Some(trustscale::trust::Secret::new(read(pki::TLS_KEY)?)),
        ..Default::default()
    };
    let mut options = trustscale::trust::TrustOptions::from_env()?
        .system_roots(false)
        .ca_dirs(Vec::<PathBuf>::new());
    options.client_min_tls = options.service_min_tls;
    let factory = trustscale::trust::TrustFactory::new(options)?;
    let ctx = factory.context(&settings, "metrics get")?;
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured((*ctx.rustls_config()).clone())
        .timeout(Duration::from_secs(10))
        .build()?;
    let url = format!(
        "https://{}/apis/external.metrics.k8s.io/v1beta1/namespaces/{}/{}?labelSelector=scaledobject.keda.sh%2Fname%3D{}",
        args.server, args.namespace, args.metric, args.scaledobject
    );
    let resp = client.get(&url).send().await.map_err(|e| {
        let failure = trustscale::trust::classify(&e, Some(&ctx), &args.server);
        anyhow::anyhow!("{failure}")
    })?;
    let status = resp.status();
    let body = resp.text().await?;
    println!("{body}");
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
