//! Command-line interface.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod certs;
mod inspect;
mod operator;
mod probe;

/// A TLS trust layer for event-driven autoscaling.
#[derive(Parser, Debug)]
#[command(name = "trustscale", version, about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Inspect and test trust: anchors, CA folders, handshakes.
    #[command(subcommand)]
    Trust(TrustCommand),
    /// Build every trigger of KEDA-format manifests and poll each once.
    ///
    /// Exit status 0 only if every trigger succeeded.
    Probe(probe::ProbeArgs),
    /// Run ScaledObjects, serve their metrics over mutual TLS, keep internal certs current.
    Operator(Box<operator::OperatorArgs>),
    /// Internal certificates: the caBundle, and what the folder holds.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Read the operator's metrics API (mutual TLS with the internal certificates).
    #[command(subcommand)]
    Metrics(MetricsCommand),
    /// The trigger types compiled into this build, and their parameters.
    Scalers(ScalersArgs),
}

#[derive(Args, Debug)]
struct ScalersArgs {
    /// Only this trigger type.
    #[arg(value_name = "TYPE")]
    type_name: Option<String>,
}

#[derive(Subcommand, Debug)]
enum CertsCommand {
    /// Print base64(ca.crt), for an APIService or webhook caBundle.
    CaBundle(certs::CertDirArgs),
    /// Show subjects, SANs, serials, validity, and whether the set is consistent.
    Inspect(certs::InspectArgs),
}

#[derive(Subcommand, Debug)]
enum MetricsCommand {
    /// GET one external metric of a ScaledObject.
    Get(certs::MetricsGetArgs),
}

#[derive(Subcommand, Debug)]
enum TrustCommand {
    /// Show the trust anchors and CA files, and optionally test one handshake.
    ///
    /// Exit status: 0 all is well; 1 the handshake failed; 2 bad arguments or
    /// configuration; 3 some CA files were rejected (no handshake failure).
    Inspect(inspect::InspectArgs),
}

/// Options shared by every command that builds a trust factory.
#[derive(Args, Debug, Clone)]
pub struct TrustArgs {
    /// A custom CA folder (repeatable); default /custom/ca.
    #[arg(long = "ca-dir", value_name = "DIR")]
    pub ca_dirs: Vec<PathBuf>,
    /// Minimum TLS version of clients (TLS12 | TLS13; TLS10/TLS11 act as TLS12).
    /// Default: $KEDA_HTTP_MIN_TLS_VERSION, else TLS12.
    #[arg(long = "min-tls", value_name = "VERSION")]
    pub min_tls: Option<String>,
    /// Leave out the system's root certificates.
    #[arg(long)]
    pub no_system_roots: bool,
    /// What a trigger's `unsafeSsl: true` does: allow-with-warning (KEDA's behaviour) or
    /// forbid (the trigger fails, and the admission webhook denies it).
    #[arg(
        long = "unsafe-ssl-policy",
        value_name = "POLICY",
        default_value = "allow-with-warning"
    )]
    pub unsafe_ssl_policy: trustscale::trust::UnsafeSslPolicy,
}

impl TrustArgs {
    /// Options for the factory from flags and environment.
    pub fn options(&self) -> anyhow::Result<trustscale::trust::TrustOptions> {
        use trustscale::trust::{TlsVersion, TrustOptions};
        let mut options = TrustOptions::from_env()?;
        if let Some(v) = &self.min_tls {
            options.client_min_tls = TlsVersion::parse_named("--min-tls", v)?;
        }
        if !self.ca_dirs.is_empty() {
            options.ca_dirs = self.ca_dirs.clone();
        }
        options.system_roots = !self.no_system_roots;
        options.unsafe_ssl = self.unsafe_ssl_policy;
        Ok(options)
    }
}

/// Logs on stderr: `RUST_LOG`, else `info` for the long-running operator and `warn` for
/// one-shot commands (whose answer is their output; `trust inspect` also leaves out the
/// per-file CA warnings, which its report already holds); colours only on a terminal.
fn init_logging(format: LogFormat, level: &str) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // lapin logs every failed connection at ERROR itself; scalers report those
        // failures, classified, so its own lines are off unless RUST_LOG asks for them.
        tracing_subscriber::EnvFilter::new(format!("{level},lapin=off,notify=warn"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `trustscale scalers [TYPE]`: the parameters of each compiled-in trigger type, from the
/// table each scaler declares (the same table that parses them).
fn scalers(args: &ScalersArgs) -> anyhow::Result<ExitCode> {
    let registry = trustscale_operator::builtins::registry();
    let types: Vec<&str> = match &args.type_name {
        Some(t) if registry.contains(t) => vec![t.as_str()],
        Some(t) => anyhow::bail!(
            "unknown trigger type {t:?}; this build knows: {}",
            registry.types().collect::<Vec<_>>().join(", ")
        ),
        None => registry.types().collect(),
    };
    for t in types {
        println!("## {t}\n");
        println!(
            "{}",
            trustscale::scaler::params::markdown(registry.parameters(t).unwrap_or(&[]))
        );
    }
    println!("## TLS parameters (every type)\n");
    println!(
        "{}",
        trustscale::scaler::params::markdown(trustscale::scaler::TLS_PARAMS)
    );
    Ok(ExitCode::SUCCESS)
}

/// `--version`: the version and the scalers compiled in.
fn long_version() -> &'static str {
    let text = format!(
        "{}\nscalers: {}",
        env!("CARGO_PKG_VERSION"),
        trustscale_operator::builtins::types().join(", ")
    );
    Box::leak(text.into_boxed_str())
}

/// How long a thread of the runtime's blocking pool waits for work before it ends (tokio's
/// default is 10 s). A broker fault grows the pool: every cluster's and consumer group's
/// read blocks a thread until librdkafka's timeout, a hundred of them at once. Once the
/// broker is back, the pool hands its work out in turn (so the soak shows), no thread waits
/// 10 s, and the pool keeps every thread (their stacks, and the allocator's per-thread
/// caches) for good: 17 threads before a Kafka front's kill, 112 for the five minutes
/// after. With a short wait the pool shrinks back to what the polls need. A thread costs
/// some tens of microseconds to start again.
const BLOCKING_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs the command line.
pub fn main() -> ExitCode {
    use clap::{CommandFactory as _, FromArgMatches as _};
    let matches = Cli::command().long_version(long_version()).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let level = match cli.command {
        Command::Operator(_) => "info",
        Command::Trust(_) => "warn,trustscale::trust::ca_files=off",
        _ => "warn",
    };
    init_logging(cli.log_format, level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Trust(TrustCommand::Inspect(args)) => inspect::run(args).await,
            Command::Probe(args) => probe::run(args).await,
            Command::Operator(args) => operator::run(*args).await,
            Command::Certs(CertsCommand::CaBundle(args)) => certs::ca_bundle(&args),
            Command::Certs(CertsCommand::Inspect(args)) => certs::inspect(&args),
            Command::Metrics(MetricsCommand::Get(args)) => certs::metrics_get(&args).await,
            Command::Scalers(args) => scalers(&args),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
