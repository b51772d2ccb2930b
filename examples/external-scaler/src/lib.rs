//! `header-value`: a scaler that reads a number from an HTTP response header, written
//! against the trustscale SDK alone.
//!
//! Its parameters are declared once ([`PARAMETERS`]): parsing, defaults, the unknown-key
//! warning and the documentation come from that table, with the same lookup order,
//! quantities and error messages as the built-in scalers. Its HTTP client comes from the
//! SDK's shared pool, built from the `TrustFactory`'s context, so custom CA folders, the
//! minimum TLS version and the `unsafeSsl` policy apply to it for free.
#![forbid(unsafe_code)]
#![allow(dead_code)]

use std::sync::Arc;

use async_trait::async_trait;
use trustscale::scaler::httpclient::{self, HttpClients};
use trustscale::scaler::{
    BuildContext, ErrorKind, MetricSpec, Param, Params, Poll, Scaler, ScalerBuilder, ScalerError,
    TriggerSpec, parse_quantity,
};
use trustscale::trust::TlsContext;

/// The parameters of `header-value` (besides the TLS settings every scaler takes).
pub const PARAMETERS: &[Param] = &[
    Param::new("url", "The endpoint, `http://` or `https://`."),
    Param::new("header", "The response header that holds the number.").default("x-queue-depth"),
    Param::new("targetValue", "The target value per replica.").default("10"),
    Param::new(
        "activationTargetValue",
        "The value above which the trigger is active.",
    )
    .default("0"),
];

/// Builds `header-value` scalers; owns the shared HTTP clients.
#[derive(Default)]
pub struct HeaderValueBuilder {
    clients: HttpClients,
}

/// Reads `header` of a GET on `url` as the metric.
pub struct HeaderValue {
    label: String,
    url: String,
    target: String,
    header: String,
    client: Arc<httpclient::Client>,
    tls: Option<TlsContext>,
    spec: MetricSpec,
    activation: f64,
}

#[async_trait]
impl ScalerBuilder for HeaderValueBuilder {
    async fn build(
        &self,
        spec: &TriggerSpec,
        ctx: &BuildContext,
    ) -> Result<Box<dyn Scaler>, ScalerError> {
        let p = Params::new(spec, PARAMETERS);
        let url = p.required("url")?;
        let secure = match url.split_once("://") {
            Some(("https", _)) => true,
            Some(("http", _)) => false,
            _ => {
                return Err(ScalerError::config(
                    p.trigger(),
                    "url",
                    "must be http:// or https://",
                ));
            }
        };
        let header = p.required("header")?;
        let target = p.quantity_value("targetValue")?;
        let activation = p.quantity_value("activationTargetValue")?;
        // The one trust path: the TLS settings (ca, cert, key, unsafeSsl, serverName, ...)
        // go to the factory, whose context the shared client is built from.
        let tls = p.tls_context(ctx, &p.tls()?, secure, "the url is plain http://")?;
        let client = self.clients.get(tls.as_ref(), 3000, p.trigger())?;
        p.warn_unknown();
        Ok(Box::new(HeaderValue {
            label: spec.label.clone(),
            spec: MetricSpec {
                name: spec.metric_name(&format!("header-{header}")),
                target,
                metric_type: spec.metric_type,
            },
            target: url
                .split("://")
                .nth(1)
                .and_then(|rest| rest.split('/').next())
                .unwrap_or_default()
                .to_string(),
            url,
            header,
            client,
            tls,
            activation,
        }))
    }

    fn parameters(&self) -> &'static [Param] {
        PARAMETERS
    }
}

#[async_trait]
impl Scaler for HeaderValue {
    fn metric_specs(&self) -> Vec<MetricSpec> {
        vec![self.spec.clone()]
    }

    async fn poll(&self) -> Result<Poll, ScalerError> {
        let resp = self.client.get(&self.url).send().await.map_err(|e| {
            httpclient::request_error(&self.label, e, self.tls.as_ref(), &self.target, 3000)
        })?;
        let text = resp
            .headers()
            .get(&self.header)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ScalerError::new(
                    ErrorKind::Source,
                    &self.label,
                    format!("{} answered without a {} header", self.target, self.header),
                )
            })?;
        let value = parse_quantity(text)
            .map_err(|e| ScalerError::new(ErrorKind::Source, &self.label, e))?;
        Ok(Poll::single(&self.spec.name, value, self.activation))
    }
}
