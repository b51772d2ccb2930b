//! The metrics-api scaler against in-process HTTPS servers (rustls) with test CAs.

mod support;

use support::http::{HttpsServer, Request, Response};
use support::{TestCa, Versions, ca_dir, server_config};
use trustscale::scaler::{BuildContext, ErrorKind, Poll, ScalerError, TriggerSpec};
use trustscale::trust::{TlsVersion, TrustFactory, TrustOptions};

fn spec(meta: &[(&str, &str)]) -> TriggerSpec {
    support::trigger("api", 0, "metrics-api", meta)
}

fn ctx(dir: &std::path::Path) -> BuildContext {
    BuildContext {
        trust: TrustFactory::new(TrustOptions::default().ca_dirs([dir])).unwrap(),
    }
}

async fn poll(ctx: &BuildContext, spec: TriggerSpec) -> Result<Poll, ScalerError> {
    trustscale_operator::builtins::registry()
        .build(&spec, ctx)
        .await?
        .poll()
        .await
}

struct Setup {
    ca: TestCa,
    dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let ca = TestCa::new("metrics CA");
    let dir = ca_dir();
    ca.write_pem(&dir.path().join("ca.crt"));
    Setup { ca, dir }
}

#[tokio::test]
async fn each_format_is_read_over_https_trusted_through_the_ca_folder() {
    let s = setup();
    let server = HttpsServer::start(
        server_config(&s.ca.server(), Versions::Both, None),
        |r: &Request| match r.path.as_str() {
            "/json" => Response::ok(r#"{"queue":{"depth":12,"items":[1,2,3]}}"#),
            "/yaml" => Response::ok("queue:\n  depth: 1.5k\n"),
            "/xml" => Response::ok("<stats><queue><depth>7</depth></queue></stats>"),
            "/prom" => {
                Response::ok("# TYPE jobs gauge\njobs{queue=\"low\"} 3\njobs{queue=\"high\"} 11\n")
            }
            _ => Response::status(404),
        },
    )
    .await;
    let c = ctx(s.dir.path());
    let cases = [
        ("json", "/json", "json", "queue.depth", 12.0),
        ("json count", "/json", "json", "queue.items.#", 3.0),
        ("yaml quantity", "/yaml", "yaml", "queue.depth", 1500.0),
        ("xml", "/xml", "xml", "stats.queue.depth", 7.0),
        (
            "prometheus selector",
            "/prom",
            "prometheus",
            "jobs{queue=\"high\"}",
            11.0,
        ),
    ];
    for (name, path, format, loc, want) in cases {
        let url = server.url(path);
        let p = poll(
            &c,
            spec(&[
                ("url", &url),
                ("format", format),
                ("valueLocation", loc),
                ("targetValue", "5"),
                ("activationTargetValue", "10"),
            ]),
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(p.metrics[0].value, want, "{name}");
        assert_eq!(p.active, want > 10.0, "{name}");
    }
    let url = server.url("/json");
    let p = poll(
        &c,
        spec(&[
            ("url", &url),
            ("valueLocation", "queue.depth"),
            ("targetValue", "5"),
        ]),
    )
    .await
    .unwrap();
    assert_eq!(
        p.metrics[0].name, "s0-metric-api-queue-depth",
        "KEDA's metric name"
    );
}

#[tokio::test]
async fn each_auth_mode_is_sent_and_checked_by_the_server() {
    let s = setup();
    let check = |r: &Request| {
        let h = |k: &str| r.headers.get(k).cloned().unwrap_or_default();
        let ok = match r.path.as_str() {
            "/apikey-header" => h("x-api-key") == "k1",
            "/apikey-custom" => h("x-token") == "k1",
            "/apikey-query" => r.query == "api_key=k1",
            "/basic" => h("authorization") == "Basic dXNlcjpwYXNz", // user:pass
            "/bearer" => h("authorization") == "Bearer t0k",
            "/both" => h("x-api-key") == "k1" && h("authorization") == "Basic dXNlcjpwYXNz",
            "/mtls" => true,
            _ => false,
        };
        if ok {
            Response::ok(r#"{"v": 4}"#)
        } else {
            Response::status(401)
        }
    };
    let server =
        HttpsServer::start(server_config(&s.ca.server(), Versions::Both, None), check).await;
    let mtls = HttpsServer::start(
        server_config(&s.ca.server(), Versions::Both, Some(&s.ca)),
        check,
    )
    .await;
    let c = ctx(s.dir.path());
    let client = s.ca.client("scaler");
    let base = |url: String, extra: &[(&str, &str)]| {
        let mut m = vec![
            ("url", url.as_str()),
            ("valueLocation", "v"),
            ("targetValue", "1"),
        ];
        m.extend_from_slice(extra);
        spec(&m)
    };
    let cases: Vec<(&str, TriggerSpec)> = vec![
        (
            "apiKey header",
            base(server.url("/apikey-header"), &[("authMode", "apiKey")]).with_auth("apiKey", "k1"),
        ),
        (
            "apiKey custom header",
            base(
                server.url("/apikey-custom"),
                &[("authMode", "apiKey"), ("keyParamName", "X-Token")],
            )
            .with_auth("apiKey", "k1"),
        ),
        (
            "apiKey query",
            base(
                server.url("/apikey-query"),
                &[("authMode", "apiKey"), ("method", "query")],
            )
            .with_auth("apiKey", "k1"),
        ),
        (
            "basic",
            base(server.url("/basic"), &[("authMode", "basic")])
                .with_auth("username", "user")
                .with_auth("password", "pass"),
        ),
        (
            "bearer",
            base(server.url("/bearer"), &[("authMode", "bearer")]).with_auth("token", "t0k"),
        ),
        (
            "apiKey and basic together",
            base(server.url("/both"), &[("authModes", "apiKey,basic")])
                .with_auth("apiKey", "k1")
                .with_auth("username", "user")
                .with_auth("password", "pass"),
        ),
        (
            "tls client certificate",
            base(mtls.url("/mtls"), &[("authMode", "tls")])
                .with_auth("cert", client.cert_pem.clone())
                .with_auth("key", client.key_pem.clone()),
        ),
    ];
    for (name, spec) in cases {
        let p = poll(&c, spec)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(p.metrics[0].value, 4.0, "{name}");
    }
    // Negative controls: a wrong key is `auth`; no client certificate is `client_cert_required`.
    let err = poll(
        &c,
        base(server.url("/apikey-header"), &[("authMode", "apiKey")]).with_auth("apiKey", "wrong"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Auth, "{err}");
    let err = poll(&c, base(mtls.url("/mtls"), &[])).await.unwrap_err();
    assert_eq!(err.kind.as_str(), "client_cert_required", "{err}");
    // A client certificate from another CA is refused by the same server.
    let stranger = TestCa::new("stranger").client("scaler");
    let err = poll(
        &c,
        base(mtls.url("/mtls"), &[("authMode", "tls")])
            .with_auth("cert", stranger.cert_pem.clone())
            .with_auth("key", stranger.key_pem.clone()),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind.as_str(), "client_cert_rejected", "{err}");
    let err = poll(&c, base(server.url("/basic"), &[("authMode", "basic")]))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Config);
    assert!(err.message.contains("username"), "{err}");
}

#[tokio::test]
async fn trust_failures_are_classified_and_unsafe_ssl_still_connects() {
    let s = setup();
    let other = TestCa::new("other");
    let untrusted = HttpsServer::start(
        server_config(&other.server(), Versions::Both, None),
        |_: &Request| Response::ok("{\"v\":1}"),
    )
    .await;
    let old = HttpsServer::start(
        server_config(&s.ca.server(), Versions::Only12, None),
        |_: &Request| Response::ok("{\"v\":1}"),
    )
    .await;
    let c = ctx(s.dir.path());
    let trig = |url: String, extra: &[(&str, &str)]| {
        let mut m = vec![
            ("url", url.as_str()),
            ("valueLocation", "v"),
            ("targetValue", "1"),
        ];
        m.extend_from_slice(extra);
        spec(&m)
    };
    let err = poll(&c, trig(untrusted.url("/"), &[])).await.unwrap_err();
    assert_eq!(err.kind.as_str(), "unknown_issuer", "{err}");
    let value = |r: Result<Poll, ScalerError>| r.map(|p| p.metrics[0].value);
    assert_eq!(
        value(poll(&c, trig(untrusted.url("/"), &[("unsafeSsl", "true")])).await).unwrap(),
        1.0
    );
    assert_eq!(c.trust.stats().unsafe_ssl_triggers, 1);
    assert_eq!(
        value(poll(&c, trig(old.url("/"), &[])).await).unwrap(),
        1.0,
        "TLS12 minimum talks to a TLS 1.2 server"
    );
    let strict = BuildContext {
        trust: TrustFactory::new(
            TrustOptions::default()
                .ca_dirs([s.dir.path()])
                .client_min_tls(TlsVersion::Tls13),
        )
        .unwrap(),
    };
    let err = poll(&strict, trig(old.url("/"), &[])).await.unwrap_err();
    assert_eq!(err.kind.as_str(), "protocol_version", "{err}");
    // A certificate for another name, and an expired one, from the trusted CA.
    let other_name = HttpsServer::start(
        server_config(&s.ca.server_for(&["other.internal"]), Versions::Both, None),
        |_: &Request| Response::ok(r#"{"v": 1}"#),
    )
    .await;
    let err = poll(&c, trig(other_name.url("/"), &[])).await.unwrap_err();
    assert_eq!(err.kind.as_str(), "hostname_mismatch", "{err}");
    let expired = HttpsServer::start(
        server_config(&s.ca.expired_server(), Versions::Both, None),
        |_: &Request| Response::ok(r#"{"v": 1}"#),
    )
    .await;
    let err = poll(&c, trig(expired.url("/"), &[])).await.unwrap_err();
    assert_eq!(err.kind.as_str(), "expired", "{err}");
    // Its twin: the TLS 1.3 minimum does connect, to a TLS 1.3 server.
    let modern = HttpsServer::start(
        server_config(&s.ca.server(), Versions::Only13, None),
        |_: &Request| Response::ok(r#"{"v": 1}"#),
    )
    .await;
    assert_eq!(
        value(poll(&strict, trig(modern.url("/"), &[])).await).unwrap(),
        1.0
    );
}

#[tokio::test]
async fn oversized_and_malformed_bodies_and_bad_paths_are_clear_errors() {
    let s = setup();
    let server = HttpsServer::start(
        server_config(&s.ca.server(), Versions::Both, None),
        |r: &Request| match r.path.as_str() {
            "/big" => Response::ok(format!("{{\"v\":1,\"pad\":\"{}\"}}", "x".repeat(64 * 1024))),
            "/broken" => Response::ok("{\"v\":"),
            "/down" => Response::status(503),
            _ => Response::ok("{\"v\":{\"w\":1}}"),
        },
    )
    .await;
    let c = ctx(s.dir.path());
    let trig = |path: &str, loc: &str, extra: &[(&str, &str)]| {
        let url = server.url(path);
        let mut m = vec![
            ("url", url.as_str()),
            ("valueLocation", loc),
            ("targetValue", "1"),
        ];
        m.extend_from_slice(extra);
        spec(&m)
    };
    let cases = [
        (
            "oversized body",
            trig("/big", "v", &[("maxBodySize", "16Ki")]),
            ErrorKind::Source,
            "maxBodySize",
        ),
        (
            "malformed JSON",
            trig("/broken", "v", &[]),
            ErrorKind::Source,
            "not valid JSON",
        ),
        (
            "path to nothing",
            trig("/ok", "nope.deeper", &[]),
            ErrorKind::Source,
            "matches nothing",
        ),
        (
            "path to an object",
            trig("/ok", "v", &[]),
            ErrorKind::Source,
            "must point to a number",
        ),
        (
            "server error",
            trig("/down", "v", &[]),
            ErrorKind::Source,
            "503",
        ),
        (
            "bad format",
            trig("/ok", "v", &[("format", "csv")]),
            ErrorKind::Config,
            "format",
        ),
        (
            "bad target",
            trig("/ok", "v", &[("targetValue", "lots")]),
            ErrorKind::Config,
            "targetValue",
        ),
    ];
    for (name, spec, kind, text) in cases {
        let err = poll(&c, spec).await.unwrap_err();
        assert_eq!(err.kind, kind, "{name}: {err}");
        assert!(err.to_string().contains(text), "{name}: {err}");
        assert!(
            err.to_string().starts_with("test/api#0 (metrics-api)"),
            "{name} names the trigger: {err}"
        );
    }
    // The default cap (4 MiB) lets the 64 KiB body through.
    assert!(poll(&c, trig("/big", "v", &[])).await.is_ok());
}

#[tokio::test]
async fn triggers_with_the_same_trust_share_one_http_client() {
    use trustscale::scaler::ScalerBuilder;
    let s = setup();
    let server = HttpsServer::start(
        server_config(&s.ca.server(), Versions::Both, None),
        |_: &Request| Response::ok("{\"v\":2}"),
    )
    .await;
    let c = ctx(s.dir.path());
    let builder = trustscale_metrics_api::MetricsApiBuilder::default();
    let url = server.url("/");
    let mut scalers = Vec::new();
    for _ in 0..20 {
        scalers.push(
            builder
                .build(
                    &spec(&[("url", &url), ("valueLocation", "v"), ("targetValue", "1")]),
                    &c,
                )
                .await
                .unwrap(),
        );
    }
    for s in &scalers {
        assert_eq!(s.poll().await.unwrap().metrics[0].value, 2.0);
    }
    assert_eq!(builder.live_clients(), 1);
}

#[tokio::test]
async fn an_api_key_in_the_query_never_reaches_an_error_message() {
    let s = setup();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("https://localhost:{closed}/stats");
    let spec = spec(&[
        ("url", &url),
        ("valueLocation", "v"),
        ("targetValue", "1"),
        ("authMode", "apiKey"),
        ("method", "query"),
    ])
    .with_auth("apiKey", "TOPSECRETKEY");
    let err = poll(&ctx(s.dir.path()), spec).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::CONNECTION, "{err}");
    assert!(!format!("{err} {err:?}").contains("TOPSECRETKEY"), "{err}");
}

#[tokio::test]
async fn a_plain_http_source_is_read_and_a_redirect_to_https_is_not_trusted_blindly() {
    // Served by python's http.server: plaintext, no TLS anywhere.
    let source = support::python_http(&[("stats.json", r#"{"queue":{"depth":17}}"#)]);
    let dir = ca_dir();
    let c = ctx(dir.path());
    let url = format!("http://127.0.0.1:{}/stats.json", source.port);
    let p = poll(
        &c,
        spec(&[
            ("url", &url),
            ("valueLocation", "queue.depth"),
            ("targetValue", "5"),
        ]),
    )
    .await
    .expect("a plain http:// source polls");
    assert_eq!(p.metrics[0].value, 17.0);
    // Its twin: the same path that the server does not have is a source error (the
    // client really asked this server).
    let err = poll(
        &c,
        spec(&[
            (
                "url",
                &format!("http://127.0.0.1:{}/missing.json", source.port),
            ),
            ("valueLocation", "queue.depth"),
            ("targetValue", "5"),
        ]),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Source, "{err}");
    assert!(err.message.contains("404"), "{err}");

    // A plaintext source that redirects to an https:// server signed by a CA nobody
    // trusts: the redirect fails verification instead of bypassing the factory.
    let s = setup();
    let https = HttpsServer::start(
        server_config(&s.ca.server(), Versions::Both, None),
        |_: &Request| Response::ok(r#"{"queue":{"depth":99}}"#),
    )
    .await;
    let target = https.url("/stats");
    let redirect = HttpsServer::start_plain(move |_: &Request| Response {
        status: 302,
        body: Vec::new(),
        location: Some(target.clone()),
    })
    .await;
    let err = poll(
        &c,
        spec(&[
            ("url", &redirect.plain_url("/go")),
            ("valueLocation", "queue.depth"),
            ("targetValue", "5"),
        ]),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.kind,
        ErrorKind::Transport(trustscale::trust::FailureKind::UnknownIssuer),
        "{err}"
    );
}

/// A plain HTTP/1.1 server that holds every request until it is opened (never, if it
/// never is) and then answers `{"v":1}`, counting the connections it accepted and the
/// requests it holds.
struct HeldServer {
    port: u16,
    connections: Arc<AtomicUsize>,
    held: Arc<AtomicUsize>,
    most_at_once: Arc<AtomicUsize>,
    open: Arc<tokio::sync::Notify>,
    opened: Arc<std::sync::atomic::AtomicBool>,
    tasks: Arc<std::sync::Mutex<tokio::task::JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl HeldServer {
    async fn start() -> HeldServer {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections: Arc<AtomicUsize> = Arc::default();
        let held: Arc<AtomicUsize> = Arc::default();
        let most_at_once: Arc<AtomicUsize> = Arc::default();
        let open: Arc<tokio::sync::Notify> = Arc::default();
        let opened: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let tasks: Arc<std::sync::Mutex<tokio::task::JoinSet<()>>> = Arc::default();
        let (c, h, m) = (
            Arc::clone(&connections),
            Arc::clone(&held),
            Arc::clone(&most_at_once),
        );
        let (open_, opened_, tasks_) = (Arc::clone(&open), Arc::clone(&opened), Arc::clone(&tasks));
        let accept = tokio::spawn(async move {
            loop {
                // A failed accept (out of descriptors) is not the end of the server.
                let Ok((tcp, _)) = listener.accept().await else {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (h, m, open, opened) = (
                    Arc::clone(&h),
                    Arc::clone(&m),
                    Arc::clone(&open_),
                    Arc::clone(&opened_),
                );
                tasks_.lock().unwrap().spawn(async move {
                    let mut io = tokio::io::BufReader::new(tcp);
                    loop {
                        let mut line = String::new();
                        // The request line and headers, up to the blank line.
                        loop {
                            line.clear();
                            match io.read_line(&mut line).await {
                                Ok(0) | Err(_) => return,
                                Ok(_) if line.trim().is_empty() => break,
                                Ok(_) => {}
                            }
                        }
                        let now = h.fetch_add(1, Ordering::SeqCst) + 1;
                        m.fetch_max(now, Ordering::SeqCst);
                        let notified = open.notified();
                        if !opened.load(Ordering::SeqCst) {
                            notified.await;
                        }
                        h.fetch_sub(1, Ordering::SeqCst);
                        let body = "{\"v\":1}";
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if io.get_mut().write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        HeldServer {
            port,
            connections,
            held,
            most_at_once,
            open,
            opened,
            tasks,
            accept,
        }
    }

    /// Answers everything held and everything to come.
    fn open(&self) {
        self.opened.store(true, Ordering::SeqCst);
        self.open.notify_waiters();
    }

    /// Waits (at most 30 s) until `n` requests are held.
    async fn wait_held(&self, n: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.held.load(Ordering::SeqCst) < n {
            assert!(
                std::time::Instant::now() < deadline,
                "{n} requests never reached the server (it holds {})",
                self.held.load(Ordering::SeqCst)
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

impl Drop for HeldServer {
    fn drop(&mut self) {
        self.accept.abort();
        self.tasks.lock().unwrap().abort_all();
    }
}

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_to_one_host_are_bounded_and_the_rest_wait_their_turn() {
    use trustscale::scaler::ScalerBuilder;
    use trustscale::scaler::httpclient::MAX_IN_FLIGHT_PER_HOST;
    let dir = ca_dir();
    let c = ctx(dir.path());
    let builder = Arc::new(trustscale_metrics_api::MetricsApiBuilder::default());
    let over = 44;
    let build = |url: String, timeout: &'static str| {
        let (builder, c) = (Arc::clone(&builder), c.clone());
        async move {
            let meta = [
                ("url", url.as_str()),
                ("valueLocation", "v"),
                ("targetValue", "1"),
                ("timeout", timeout),
            ];
            Arc::new(builder.build(&spec(&meta), &c).await.unwrap())
        }
    };
    {
        // A host that holds every request: the bound's worth reach it, the rest wait,
        // and once it answers, every poll is answered.
        let server = HeldServer::start().await;
        let url = format!("http://127.0.0.1:{}/", server.port);
        let mut polls = Vec::new();
        for _ in 0..MAX_IN_FLIGHT_PER_HOST + over {
            let s = build(url.clone(), "60000").await;
            polls.push(tokio::spawn(async move { s.poll().await }));
        }
        server.wait_held(MAX_IN_FLIGHT_PER_HOST).await;
        // Give the others every chance to get through (they would, without the bound).
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert_eq!(
            server.held.load(Ordering::SeqCst),
            MAX_IN_FLIGHT_PER_HOST,
            "requests in flight to one host"
        );
        server.open();
        for p in polls {
            assert_eq!(p.await.unwrap().unwrap().metrics[0].value, 1.0);
        }
        let most = server.most_at_once.load(Ordering::SeqCst);
        assert!(
            most <= MAX_IN_FLIGHT_PER_HOST,
            "{most} requests in flight to one host"
        );
    }

    // A host that never answers: with the bound's worth of polls in flight to it (by
    // clients of another timeout: the bound is the host's), the next polls wait for a
    // turn only as long as their timeout, and fail as a request that timed out does.
    let dead = HeldServer::start().await;
    let url = format!("http://127.0.0.1:{}/", dead.port);
    let mut holders = Vec::new();
    for _ in 0..MAX_IN_FLIGHT_PER_HOST {
        let s = build(url.clone(), "60000").await;
        holders.push(tokio::spawn(async move { s.poll().await }));
    }
    dead.wait_held(MAX_IN_FLIGHT_PER_HOST).await;
    let connections = dead.connections.load(Ordering::SeqCst);
    let mut waiting = Vec::new();
    for _ in 0..over {
        let s = build(url.clone(), "500").await;
        waiting.push(tokio::spawn(async move { s.poll().await }));
    }
    for r in waiting {
        let e = r.await.unwrap().unwrap_err();
        assert_eq!(e.kind, ErrorKind::CONNECTION, "{e}");
        assert!(
            e.message.contains("waited 500 ms for a turn") && e.message.contains("in flight"),
            "{e}"
        );
    }
    assert_eq!(
        dead.connections.load(Ordering::SeqCst),
        connections,
        "a poll without a turn reached the host"
    );
    for h in holders {
        h.abort();
    }
}
