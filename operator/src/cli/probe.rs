//! `trustscale probe`: build every trigger of every ScaledObject, poll each once.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use futures_util::StreamExt;
use serde::Serialize;
use trustscale::scaler::{BuildContext, ErrorKind, ScalerError};
use trustscale::trust::TrustFactory;
use trustscale_operator::builtins;
use trustscale_operator::engine::ErrorOut;
use trustscale_operator::manifest::{self, Env, LoadProblem};

use super::TrustArgs;

#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// Manifest files or folders (repeatable).
    #[arg(short = 'f', long = "file", value_name = "PATH", required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    trust: TrustArgs,
    /// How long one poll may take, in seconds.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TriggerOut {
    scaled_object: String,
    index: usize,
    #[serde(rename = "type")]
    type_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    metric: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    active: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorOut>,
    /// Metadata keys the scaler does not know (typos are otherwise silent).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unknown_parameters: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Summary {
    triggers: usize,
    ok: usize,
    failed: usize,
    problems: usize,
    unknown_parameters: usize,
}

#[derive(Serialize)]
struct Output {
    triggers: Vec<TriggerOut>,
    problems: Vec<LoadProblem>,
    summary: Summary,
}

pub async fn run(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    for path in &args.files {
        if let Err(e) = std::fs::metadata(path) {
            // A path that is not there is a usage error (exit 2), not a failed probe.
            anyhow::bail!("{}: {e}", path.display());
        }
    }
    tracing::info!(
        "probe reads the files its triggers name (ca, cert, key) as the user running it"
    );
    let factory = TrustFactory::new(args.trust.options()?)?;
    let set = manifest::load(&args.files);
    let registry = builtins::registry();
    let ctx = BuildContext { trust: factory };
    let timeout = Duration::from_secs(args.timeout);

    let mut jobs = Vec::new();
    // probe runs as the user, on the user's own files: their environment resolves.
    for so in set.scaled_objects(&Env::process()) {
        for (index, (trigger, type_name)) in
            so.triggers.into_iter().zip(so.trigger_types).enumerate()
        {
            jobs.push((so.id.to_string(), index, type_name, trigger));
        }
    }
    let registry = &registry;
    let ctx = &ctx;
    let mut triggers: Vec<TriggerOut> = futures_util::stream::iter(jobs)
        .map(|(so, index, type_name, trigger)| async move {
            let mut out = TriggerOut {
                scaled_object: so,
                index,
                type_name,
                metric: None,
                value: None,
                active: None,
                error: None,
                unknown_parameters: Vec::new(),
            };
            if let Ok(spec) = &trigger
                && let Some(declared) = registry.parameters(&spec.type_name)
            {
                out.unknown_parameters = trustscale::scaler::Params::new(spec, declared).unknown();
            }
            let result: Result<_, ErrorOut> = async {
                let spec = trigger.map_err(|e| ErrorOut::from(&e))?;
                let scaler = registry
                    .build(&spec, ctx)
                    .await
                    .map_err(|e| ErrorOut::from(&e))?;
                let poll = match tokio::time::timeout(timeout, scaler.poll()).await {
                    Ok(r) => r,
                    Err(_) => Err(ScalerError::new(
                        ErrorKind::CONNECTION,
                        &spec.label,
                        format!("no answer within {timeout:?}"),
                    )),
                };
                scaler.close().await;
                poll.map_err(|e| ErrorOut::from(&e))
            }
            .await;
            match result {
                Ok(poll) => {
                    if let Some(m) = poll.metrics.first() {
                        out.metric = Some(m.name.clone());
                        out.value = Some(m.value);
                    }
                    out.active = Some(poll.active);
                }
                Err(e) => out.error = Some(e),
            }
            out
        })
        .buffer_unordered(64)
        .collect()
        .await;
    triggers.sort_by(|a, b| (&a.scaled_object, a.index).cmp(&(&b.scaled_object, b.index)));
    let failed = triggers.iter().filter(|t| t.error.is_some()).count();
    let summary = Summary {
        triggers: triggers.len(),
        ok: triggers.len() - failed,
        failed,
        problems: set.problems.len(),
        unknown_parameters: triggers.iter().map(|t| t.unknown_parameters.len()).sum(),
    };
    let out = Output {
        triggers,
        problems: set.problems,
        summary,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for p in &out.problems {
            println!("MANIFEST  {p}");
        }
        if out.triggers.is_empty() {
            println!("no triggers found");
        }
        for t in &out.triggers {
            match &t.error {
                None => println!(
                    "OK        {}#{} ({}) {} = {} ({})",
                    t.scaled_object,
                    t.index,
                    t.type_name,
                    t.metric.as_deref().unwrap_or("?"),
                    t.value.unwrap_or_default(),
                    if t.active == Some(true) {
                        "active"
                    } else {
                        "inactive"
                    }
                ),
                Some(e) => println!(
                    "FAILED    {}#{} ({}) [{}] {}",
                    t.scaled_object, t.index, t.type_name, e.kind, e.message
                ),
            }
            if !t.unknown_parameters.is_empty() {
                println!(
                    "          unknown parameters (ignored): {}",
                    t.unknown_parameters.join(", ")
                );
            }
        }
        let s = &out.summary;
        println!(
            "{} triggers: {} OK, {} failed; {} manifest problems; {} unknown parameters",
            s.triggers, s.ok, s.failed, s.problems, s.unknown_parameters
        );
    }
    let all_ok = out.problems.is_empty()
        && !out.triggers.is_empty()
        && out.triggers.iter().all(|t| t.error.is_none());
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
