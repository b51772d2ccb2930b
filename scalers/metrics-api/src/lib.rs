//! The `metrics-api` scaler of trustscale: reads a number from an HTTP(S) endpoint.
//!
//! Parameters as KEDA: `url`, `valueLocation`, `format` (json|xml|yaml|prometheus),
//! `targetValue`, `activationTargetValue`, `timeout` (ms), `authMode`/`authModes`
//! (apiKey, basic, bearer, tls; several comma-separated), `method` (header|query),
//! `keyParamName`, and the TLS settings. Added: `maxBodySize` (default 4Mi): a larger
//! body is an error, not an unbounded read.
//!
//! The HTTP client is built from the factory's rustls configuration only, and shared by
//! every trigger with the same trust fingerprint and timeout.

#![forbid(unsafe_code)]

mod extract;

use async_trait::async_trait;

pub use extract::{Format, extract};

use trustscale::scaler::httpclient::{self, HostLimit, HttpClients};
use trustscale::scaler::{
    BuildContext, ErrorKind, MetricSpec, Param, Params, Poll, Scaler, ScalerBuilder, ScalerError,
    Tracked, TriggerSpec,
};
use trustscale::trust::{Secret, TlsContext};

/// Default cap on the response body.
pub const DEFAULT_MAX_BODY: u64 = 4 * 1024 * 1024;

/// The parameters of `metrics-api` (besides the TLS settings).
pub const PARAMETERS: &[Param] = &[
    Param::new("url", "The endpoint, `http://` or `https://`."),
    Param::new(
        "valueLocation",
        "Where the value is: a GJSON path (json), a dot path (yaml, xml; `@attr` for an attribute), or a metric selector (prometheus).",
    ),
    Param::new("format", "The body's format.")
        .default("json")
        .one_of(&["json", "xml", "yaml", "prometheus"]),
    Param::new("targetValue", "The target value per replica (a quantity)."),
    Param::new(
        "activationTargetValue",
        "The value above which the trigger is active.",
    )
    .default("0"),
    Param::new(
        "timeout",
        "Request timeout in milliseconds (default: KEDA_HTTP_DEFAULT_TIMEOUT, else 3000).",
    ),
    Param::new(
        "maxBodySize",
        "The largest body read; a larger one is an error.",
    )
    .default("4Mi"),
    Param::new(
        "authMode",
        "Authentication, comma-separated: apiKey, basic, bearer, tls.",
    ),
    Param::new("authModes", "Same as `authMode`."),
    Param::new("method", "apiKey: where the key goes.")
        .default("header")
        .one_of(&["header", "query"]),
    Param::new(
        "keyParamName",
        "apiKey: the header (default X-API-KEY) or query parameter (default api_key) name.",
    ),
    Param::secret("apiKey", "apiKey: the key."),
    Param::secret("username", "basic: the user name."),
    Param::secret("password", "basic: the password."),
    Param::secret("token", "bearer: the token."),
    Param::secret("bearerToken", "bearer: the token (older name)."),
];

/// Builds `metrics-api` scalers; owns the shared HTTP clients.
#[derive(Default)]
pub struct MetricsApiBuilder {
    clients: HttpClients,
}

impl MetricsApiBuilder {
    /// HTTP clients alive now (each with its own connection pool).
    #[must_use]
    pub fn live_clients(&self) -> usize {
        self.clients.live()
    }
}

enum Auth {
    ApiKey {
        key: Secret,
        in_query: bool,
        name: String,
    },
    Basic {
        username: Secret,
        password: Secret,
    },
    Bearer {
        token: Secret,
    },
}

/// The `metrics-api` scaler.
pub struct MetricsApiScaler {
    label: String,
    url: reqwest::Url,
    format: Format,
    value_location: String,
    spec: MetricSpec,
    activation: f64,
    max_body: u64,
    auth: Vec<Auth>,
    /// Rebuilt when the trust anchors change.
    client: Tracked<reqwest::Client>,
    /// The bound on requests in flight to the host.
    limit: HostLimit,
    timeout_ms: u64,
}

#[async_trait]
impl ScalerBuilder for MetricsApiBuilder {
    async fn build(
        &self,
        spec: &TriggerSpec,
        ctx: &BuildContext,
    ) -> Result<Box<dyn Scaler>, ScalerError> {
        let p = Params::new(spec, PARAMETERS);
        let label = spec.label.clone();
        let url_text = p.required("url")?;
        let url = reqwest::Url::parse(&url_text).map_err(|e| {
            ScalerError::config(
                &label,
                "url",
                format!(
                    "{:?} is not a URL: {e}",
                    trustscale::scaler::redact_url(&url_text)
                ),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ScalerError::config(
                &label,
                "url",
                "must be http:// or https://",
            ));
        }
        let value_location = p.required("valueLocation")?;
        let format = Format::parse(&p.choice("format")?)
            .ok_or_else(|| ScalerError::config(&label, "format", "unknown"))?;
        let target = p.quantity_value("targetValue")?;
        let activation = p.quantity_value("activationTargetValue")?;
        let timeout_ms = p
            .parse("timeout")?
            .unwrap_or_else(httpclient::default_timeout_ms);
        let max_body = p.quantity_value("maxBodySize")? as u64;

        let modes = p
            .get("authModes")
            .or_else(|| p.get("authMode"))
            .unwrap_or_default();
        let mut auth = Vec::new();
        let mut wants_tls = false;
        for mode in modes.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            match mode {
                "apiKey" => {
                    let method = p.choice("method")?;
                    let in_query = method == "query";
                    let default_name = if in_query { "api_key" } else { "X-API-KEY" };
                    auth.push(Auth::ApiKey {
                        key: Secret::new(p.get("apiKey").ok_or_else(|| {
                            ScalerError::config(&label, "apiKey", "is required by authMode apiKey")
                        })?),
                        in_query,
                        name: p
                            .get("keyParamName")
                            .unwrap_or_else(|| default_name.to_string()),
                    });
                }
                "basic" => auth.push(Auth::Basic {
                    username: Secret::new(p.get("username").ok_or_else(|| {
                        ScalerError::config(&label, "username", "is required by authMode basic")
                    })?),
                    password: Secret::new(p.get("password").unwrap_or_default()),
                }),
                "bearer" => auth.push(Auth::Bearer {
                    token: Secret::new(
                        p.get("token")
                            .or_else(|| p.get("bearerToken"))
                            .ok_or_else(|| {
                                ScalerError::config(
                                    &label,
                                    "token",
                                    "is required by authMode bearer",
                                )
                            })?,
                    ),
                }),
                "tls" => wants_tls = true,
                other => {
                    return Err(ScalerError::config(
                        &label,
                        "authMode",
                        format!("{other:?} is not one of: apiKey, basic, bearer, tls"),
                    ));
                }
            }
        }
        let settings = p.tls()?;
        if wants_tls && (settings.cert.is_none() || settings.key.is_none()) {
            return Err(ScalerError::config(
                &label,
                "cert/key",
                "authMode tls needs both `cert` and `key`",
            ));
        }
        if !wants_tls && settings.cert.is_some() {
            tracing::warn!(trigger = %label, "a client certificate is set without authMode tls; it is used anyway");
        }
        let tls = p.tls_context(
            ctx,
            &settings,
            url.scheme() == "https",
            "the url is plain http://",
        )?;
        let client = self
            .clients
            .tracked(ctx, &settings, tls, timeout_ms, &label)?;
        let limit = self.clients.host_limit(&httpclient::target_of(&url));
        p.warn_unknown();
        let metric_name = spec.metric_name(&format!("metric-api-{value_location}"));
        Ok(Box::new(MetricsApiScaler {
            label,
            url,
            format,
            value_location,
            spec: MetricSpec {
                name: metric_name,
                target,
                metric_type: spec.metric_type,
            },
            activation,
            max_body,
            auth,
            client,
            limit,
            timeout_ms,
        }))
    }

    fn parameters(&self) -> &'static [Param] {
        PARAMETERS
    }
}

impl MetricsApiScaler {
    fn target(&self) -> String {
        httpclient::target_of(&self.url)
    }

    async fn fetch(&self) -> Result<Vec<u8>, ScalerError> {
        let mut url = self.url.clone();
        let mut req_headers = Vec::new();
        for auth in &self.auth {
            if let Auth::ApiKey {
                key,
                in_query: true,
                name,
            } = auth
            {
                url.query_pairs_mut().append_pair(name, key.expose());
            } else if let Auth::ApiKey {
                key,
                in_query: false,
                name,
            } = auth
            {
                req_headers.push((name.clone(), key.expose().to_string()));
            }
        }
        let (client, tls) = self.client.current()?;
        let turn = self.limit.turn(&self.label, self.timeout_ms).await?;
        let mut req = client.get(url);
        if let Some(left) = turn.remaining {
            req = req.timeout(left);
        }
        for (name, value) in req_headers {
            req = req.header(name, value);
        }
        for auth in &self.auth {
            req = match auth {
                Auth::Basic { username, password } => {
                    req.basic_auth(username.expose(), Some(password.expose()))
                }
                Auth::Bearer { token } => req.bearer_auth(token.expose()),
                Auth::ApiKey { .. } => req,
            };
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| self.request_error(e, tls.as_ref()))?;
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(ScalerError::new(
                ErrorKind::Auth,
                &self.label,
                format!("{} answered {status}", self.target()),
            ));
        }
        if !status.is_success() {
            return Err(ScalerError::new(
                ErrorKind::Source,
                &self.label,
                format!("{} answered {status}", self.target()),
            ));
        }
        httpclient::read_capped(&mut resp, self.max_body)
            .await
            .map_err(|e| {
                ScalerError::new(ErrorKind::Source, &self.label, format!("{e} (maxBodySize)"))
            })
    }

    fn request_error(&self, e: reqwest::Error, tls: Option<&TlsContext>) -> ScalerError {
        httpclient::request_error(&self.label, e, tls, &self.target(), self.timeout_ms)
    }
}

#[async_trait]
impl Scaler for MetricsApiScaler {
    fn metric_specs(&self) -> Vec<MetricSpec> {
        vec![self.spec.clone()]
    }

    async fn poll(&self) -> Result<Poll, ScalerError> {
        let body = self.fetch().await?;
        let value = extract(self.format, &body, &self.value_location)
            .map_err(|e| ScalerError::new(ErrorKind::Source, &self.label, e))?;
        Ok(Poll::single(&self.spec.name, value, self.activation))
    }
}
