//! `trustscale operator`: runs ScaledObjects from manifests, serves their metrics over
//! mutual TLS, and keeps its internal certificates current.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use trustscale_operator::authn::RequestHeaderOptions;
use trustscale_operator::cluster::ClusterOptions;
use trustscale_operator::controller::KubeOptions;
use trustscale_operator::leader::LeaderOptions;
use trustscale_operator::manifest::Env;
use trustscale_operator::pki::PkiOptions;
use trustscale_operator::{Operator, OperatorConfig, builtins};

use super::TrustArgs;

fn parse_bool_flag(s: &str) -> Result<bool, String> {
    trustscale::trust::parse_go_bool("--enable-cert-rotation", s).map_err(|e| e.to_string())
}

#[derive(Args, Debug)]
pub struct OperatorArgs {
    /// Manifest files or folders with ScaledObjects, TriggerAuthentications and Secrets
    /// (repeatable; watched: changes apply without a restart). File mode only.
    #[arg(long = "manifests", value_name = "PATH")]
    manifests: Vec<PathBuf>,
    /// Cluster mode: ScaledObjects, TriggerAuthentications and
    /// ClusterTriggerAuthentications from the Kubernetes API; HPAs, /scale and status
    /// written as KEDA writes them. Default: on when running in a pod
    /// (KUBERNETES_SERVICE_HOST is set) and no --manifests are given.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool_flag)]
    kube: Option<bool>,
    /// Cluster mode: only this namespace (KEDA's WATCH_NAMESPACE; empty: all).
    #[arg(
        long,
        value_name = "NAMESPACE",
        env = "WATCH_NAMESPACE",
        default_value = ""
    )]
    watch_namespace: String,
    /// Cluster mode: how often every ScaledObject is reconciled even without a change
    /// (its Secrets, ConfigMaps and scale target are read again then).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    resync_period: Duration,
    /// Cluster mode: act (HPAs, /scale, status, finalizers) even when an installed KEDA
    /// is found (its keda-operator Deployment, or the APIService pointing at it).
    #[arg(long)]
    take_over_from_keda: bool,
    /// Elect one leader among the replicas with a coordination.k8s.io Lease: only it
    /// polls and acts; the others answer the metrics API through it.
    #[arg(long, value_name = "BOOL", default_value = "false", num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool_flag)]
    leader_elect: bool,
    /// The Lease's name (in the operator's namespace).
    #[arg(long, value_name = "NAME", default_value = "trustscale-operator")]
    leader_election_id: String,
    /// How long a Lease holds without renewal.
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    leader_election_lease_duration: Duration,
    /// How long the leader tries to renew before it steps down.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    leader_election_renew_deadline: Duration,
    /// How often candidates try and the leader renews.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    leader_election_retry_period: Duration,
    #[command(flatten)]
    trust: TrustArgs,
    /// Folder of the internal certificates (ca.crt, ca.key, tls.crt, tls.key).
    #[arg(long, value_name = "DIR", default_value = "/certs")]
    cert_dir: PathBuf,
    /// Generate and rotate the internal certificates (false: bring your own, e.g.
    /// cert-manager; they are watched and reloaded).
    #[arg(long, value_name = "BOOL", default_value = "true", num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool_flag)]
    enable_cert_rotation: bool,
    /// Address of the mutual-TLS metrics API.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:6443")]
    listen: SocketAddr,
    /// Address of the Prometheus metrics (plain HTTP; empty to disable).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8080")]
    metrics_bind_address: String,
    /// Address of /healthz, /livez and /readyz (plain HTTP, for the kubelet; empty to
    /// disable).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8081")]
    health_probe_bind_address: String,
    /// Address of the validating admission webhook (HTTPS with the internal certificate,
    /// no client certificate asked for; empty to disable).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:9443")]
    webhook_bind_address: String,
    /// A folder whose files triggers' `ca`, `cert` and `key` may name (repeatable; none:
    /// those parameters take PEM only, as KEDA takes them from Secrets). Files that resolve
    /// into --cert-dir are refused whatever this says.
    #[arg(long = "allow-file-params", value_name = "DIR")]
    allow_file_params: Vec<PathBuf>,
    /// The CA bundle that signs the kube-apiserver's front-proxy client certificate
    /// (turns on request-header authentication of the aggregation layer; watched).
    #[arg(long, value_name = "FILE")]
    requestheader_client_ca_file: Option<PathBuf>,
    /// Common names a front-proxy certificate may have (comma-separated or repeated;
    /// empty: any).
    #[arg(
        long,
        value_name = "NAMES",
        value_delimiter = ',',
        requires = "requestheader_client_ca_file"
    )]
    requestheader_allowed_names: Vec<String>,
    /// Headers naming the user (the first one set wins) [default: X-Remote-User].
    #[arg(long, value_name = "HEADERS", value_delimiter = ',', requires = "requestheader_client_ca_file", value_parser = header_name)]
    requestheader_username_headers: Vec<String>,
    /// Headers naming the user's groups [default: X-Remote-Group].
    #[arg(long, value_name = "HEADERS", value_delimiter = ',', requires = "requestheader_client_ca_file", value_parser = header_name)]
    requestheader_group_headers: Vec<String>,
    /// Prefixes of headers with extra user attributes [default: X-Remote-Extra-].
    #[arg(long, value_name = "PREFIXES", value_delimiter = ',', requires = "requestheader_client_ca_file", value_parser = header_name)]
    requestheader_extra_headers_prefix: Vec<String>,
    /// In a cluster, do not read the request-header settings from ConfigMap
    /// kube-system/extension-apiserver-authentication (without --requestheader-client-ca-file
    /// they are read and followed).
    #[arg(long)]
    authentication_skip_lookup: bool,
    /// The kubeconfig to reach the cluster with (else KUBECONFIG, else the pod's service
    /// account; without any of them the operator runs in file mode only).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// The Service in front of this installation: only an APIService and webhooks that
    /// point at it get the caBundle.
    #[arg(long, value_name = "NAME", default_value = "trustscale")]
    service_name: String,
    /// The APIService whose caBundle is kept current.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "v1beta1.external.metrics.k8s.io"
    )]
    apiservice_name: String,
    /// The ValidatingWebhookConfiguration whose caBundle is kept current.
    #[arg(long, value_name = "NAME", default_value = "trustscale-admission")]
    webhook_configuration_name: String,
    /// With rotation in a cluster, the Secret (in the operator's namespace) every replica
    /// keeps the internal certificates in; --cert-dir is then its working copy and must
    /// be writable. Empty: the folder alone (one replica).
    #[arg(long, value_name = "NAME", default_value = "kedaorg-certs")]
    cert_secret_name: String,
    /// DNS names for the generated serving certificate (repeatable; localhost,
    /// 127.0.0.1 and ::1 are always included).
    #[arg(long = "service-dns-name", value_name = "NAME")]
    service_dns_names: Vec<String>,
    /// Lifetime of a generated CA.
    #[arg(long, value_name = "DURATION", default_value = "10years", value_parser = lifetime)]
    ca_lifetime: Lifetime,
    /// Lifetime of a generated serving certificate (renewed at 70 %).
    #[arg(long, value_name = "DURATION", default_value = "1year", value_parser = lifetime)]
    cert_lifetime: Lifetime,
}

/// An address flag where empty turns the listener off.
fn optional_addr(flag: &str, value: &str) -> anyhow::Result<Option<SocketAddr>> {
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .with_context(|| format!("{flag} {value:?}"))
}

fn header_name(s: &str) -> Result<String, String> {
    let s = s.trim();
    hyper::header::HeaderName::from_bytes(s.as_bytes())
        .map(|_| s.to_string())
        .map_err(|_| format!("{s:?} is not a valid HTTP header name"))
}

/// A lifetime as the user typed it (`90d`) and its value; messages echo the text.
#[derive(Clone, Debug)]
struct Lifetime {
    text: String,
    value: Duration,
}

fn lifetime(text: &str) -> Result<Lifetime, String> {
    humantime::parse_duration(text)
        .map(|value| Lifetime {
            text: text.to_string(),
            value,
        })
        .map_err(|e| e.to_string())
}

pub async fn run(args: OperatorArgs) -> anyhow::Result<ExitCode> {
    if args.cert_lifetime.value < Duration::from_secs(2) {
        // X.509 validity has one-second resolution.
        anyhow::bail!(
            "--cert-lifetime must be at least 2s (got {})",
            args.cert_lifetime.text
        );
    }
    if args.cert_lifetime.value >= args.ca_lifetime.value {
        anyhow::bail!(
            "--cert-lifetime ({}) must be shorter than --ca-lifetime ({})",
            args.cert_lifetime.text,
            args.ca_lifetime.text
        );
    }
    let kube = args.kube.unwrap_or(
        std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() && args.manifests.is_empty(),
    );
    if !kube && args.manifests.is_empty() {
        anyhow::bail!("--manifests is required in file mode (or give --kube for cluster mode)");
    }
    if kube && !args.manifests.is_empty() {
        anyhow::bail!(
            "--manifests and --kube exclude each other: cluster mode reads the Kubernetes API only"
        );
    }
    let leader = &args;
    if leader.leader_elect
        && !(leader.leader_election_retry_period < leader.leader_election_renew_deadline
            && leader.leader_election_renew_deadline < leader.leader_election_lease_duration)
    {
        anyhow::bail!(
            "leader election needs --leader-election-retry-period < --leader-election-renew-deadline < --leader-election-lease-duration"
        );
    }
    let leader_election = args.leader_elect.then(|| {
        let mut o = LeaderOptions::new(&args.leader_election_id, "");
        o.lease_duration = args.leader_election_lease_duration;
        o.renew_deadline = args.leader_election_renew_deadline;
        o.retry_period = args.leader_election_retry_period;
        o
    });
    let kube = kube.then(|| KubeOptions {
        watch_namespace: Some(args.watch_namespace.clone()).filter(|n| !n.is_empty()),
        resync: args.resync_period.max(Duration::from_secs(1)),
        take_over: args.take_over_from_keda,
    });
    let metrics_listen = optional_addr("--metrics-bind-address", &args.metrics_bind_address)?;
    let health_listen = optional_addr(
        "--health-probe-bind-address",
        &args.health_probe_bind_address,
    )?;
    let webhook_listen = optional_addr("--webhook-bind-address", &args.webhook_bind_address)?;
    let request_header = args.requestheader_client_ca_file.map(|file| {
        let mut o = RequestHeaderOptions::new(file);
        o.allowed_names = args
            .requestheader_allowed_names
            .into_iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
        let set = |given: Vec<String>, default: &mut Vec<String>| {
            if !given.is_empty() {
                *default = given;
            }
        };
        set(args.requestheader_username_headers, &mut o.username_headers);
        set(args.requestheader_group_headers, &mut o.group_headers);
        set(
            args.requestheader_extra_headers_prefix,
            &mut o.extra_headers_prefixes,
        );
        o
    });
    let config = OperatorConfig::new(args.manifests, args.cert_dir)
        .trust(args.trust.options()?)
        .cert_rotation(args.enable_cert_rotation)
        .pki(PkiOptions {
            ca_lifetime: args.ca_lifetime.value,
            cert_lifetime: args.cert_lifetime.value,
            dns_names: args.service_dns_names,
        })
        .listen(args.listen)
        .metrics_listen(metrics_listen)
        .health_listen(health_listen)
        .webhook_listen(webhook_listen)
        .allow_file_params(args.allow_file_params)
        .request_header(request_header)
        .authentication_skip_lookup(args.authentication_skip_lookup)
        .cluster(Some(ClusterOptions {
            kubeconfig: args.kubeconfig,
            namespace: None,
            service_name: args.service_name,
            apiservice_name: args.apiservice_name,
            webhook_configuration_name: args.webhook_configuration_name,
            cert_secret_name: Some(args.cert_secret_name).filter(|n| !n.is_empty()),
        }))
        .kube(kube)
        .leader_election(leader_election)
        .env(Env::process());
    let operator = Operator::start(config, builtins::registry()).await?;
    operator.run_until_signal().await;
    Ok(ExitCode::SUCCESS)
}
