//! The trust layer against real TLS handshakes with in-process rustls servers.

mod support;

use std::os::unix::fs::symlink;
use std::sync::Arc;
use std::time::Duration;

use support::{TestCa, TestServer, Versions, ca_dir, eventually, server_config};
use tokio::io::AsyncReadExt;
use trustscale::trust::inspect::handshake;
use trustscale::trust::{
    FailureKind, FileStatus, Secret, ServerIdentity, TlsContext, TlsSettings, TlsVersion,
    TrustError, TrustFactory, TrustOptions, UnsafeSslPolicy,
};

const T: Duration = Duration::from_secs(5);

fn options(dirs: &[&std::path::Path]) -> TrustOptions {
    TrustOptions::default()
        .ca_dirs(dirs.iter().map(|d| d.to_path_buf()))
        .system_roots(false)
}

fn factory(dirs: &[&std::path::Path]) -> TrustFactory {
    TrustFactory::new(options(dirs)).unwrap()
}

async fn server_of(ca: &TestCa) -> TestServer {
    TestServer::start(server_config(&ca.server(), Versions::Both, None)).await
}

/// Handshakes with the context's own rustls config (no diagnostics wrapper) and reads the greeting.
async fn plain_connect(ctx: &TlsContext, server: &TestServer) -> std::io::Result<String> {
    let tcp = tokio::net::TcpStream::connect(server.addr).await?;
    let mut tls = ctx.connect("localhost", tcp).await?;
    let mut buf = [0u8; 6];
    tls.read_exact(&mut buf).await?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

async fn kind_of(ctx: &TlsContext, target: &str) -> Option<FailureKind> {
    handshake(ctx, target, T).await.error.map(|e| e.kind)
}

#[tokio::test]
async fn custom_ca_folder_is_trusted() {
    let ca = TestCa::new("folder CA");
    let dir = ca_dir();
    ca.write_pem(&dir.path().join("ca.crt"));
    let server = server_of(&ca).await;
    let ctx = factory(&[dir.path()])
        .context(&TlsSettings::default(), "t")
        .unwrap();
    assert_eq!(plain_connect(&ctx, &server).await.unwrap(), "hello\n");
    let report = handshake(&ctx, &server.target(), T).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(
        report.chain.len(),
        2,
        "the full chain is presented and recorded"
    );
}

#[tokio::test]
async fn wrong_ca_is_rejected_as_unknown_issuer() {
    let trusted = TestCa::new("trusted CA");
    let other = TestCa::new("other CA");
    let dir = ca_dir();
    trusted.write_pem(&dir.path().join("ca.crt"));
    let server = server_of(&other).await;
    let ctx = factory(&[dir.path()])
        .context(&TlsSettings::default(), "t")
        .unwrap();
    assert!(plain_connect(&ctx, &server).await.is_err());
    let report = handshake(&ctx, &server.target(), T).await;
    let err = report.error.expect("must fail");
    assert_eq!(err.kind, FailureKind::UnknownIssuer);
    assert!(
        err.message.contains(&dir.path().display().to_string()),
        "names the folders: {}",
        err.message
    );
    assert!(
        err.message.contains("1 anchors"),
        "counts the anchors: {}",
        err.message
    );
    assert_eq!(
        report.chain[0].issuer, "CN=other CA",
        "shows who issued the presented certificate"
    );
}

#[tokio::test]
async fn several_folders_are_merged() {
    let (a, b) = (TestCa::new("A"), TestCa::new("B"));
    let (da, db) = (ca_dir(), ca_dir());
    a.write_pem(&da.path().join("a.pem"));
    b.write_pem(&db.path().join("b.pem"));
    let f = factory(&[da.path(), db.path()]);
    assert_eq!(f.anchors().custom_count(), 2);
    let ctx = f.context(&TlsSettings::default(), "t").unwrap();
    for ca in [&a, &b] {
        let server = server_of(ca).await;
        assert!(handshake(&ctx, &server.target(), T).await.ok, "{}", ca.name);
    }
}

#[tokio::test]
async fn a_three_certificate_bundle_and_a_der_file_are_trusted() {
    let cas: Vec<TestCa> = (0..3)
        .map(|i| TestCa::new(&format!("bundle {i}")))
        .collect();
    let der_ca = TestCa::new("der");
    let dir = ca_dir();
    let bundle: String = cas.iter().map(|c| c.cert_pem.clone()).collect();
    std::fs::write(dir.path().join("bundle.pem"), bundle).unwrap();
    std::fs::write(dir.path().join("single.der"), der_ca.cert_der.as_ref()).unwrap();
    let f = factory(&[dir.path()]);
    assert_eq!(f.anchors().custom_count(), 4);
    let ctx = f.context(&TlsSettings::default(), "t").unwrap();
    for ca in [&cas[2], &der_ca] {
        let server = server_of(ca).await;
        assert!(handshake(&ctx, &server.target(), T).await.ok, "{}", ca.name);
    }
}

#[tokio::test]
async fn bad_files_are_reported_per_file_while_the_rest_load() {
    let good = TestCa::new("good");
    let expired = TestCa::with_validity("expired", Some((-60, -1)));
    let dir = ca_dir();
    let p = dir.path();
    good.write_pem(&p.join("good.pem"));
    expired.write_pem(&p.join("expired.pem"));
    std::fs::write(p.join("garbage.pem"), "this is not a certificate").unwrap();
    std::fs::write(p.join("empty.pem"), "").unwrap();
    std::fs::write(
        p.join("truncated.pem"),
        &good.cert_pem[..good.cert_pem.len() / 2],
    )
    .unwrap();
    std::fs::write(p.join("key.pem"), good.server().key_pem).unwrap();
    std::fs::write(p.join("huge.pem"), vec![b'A'; 5 * 1024 * 1024]).unwrap();
    symlink(p.join("missing-target"), p.join("dangling.pem")).unwrap();
    std::fs::create_dir(p.join("subdir")).unwrap();
    std::fs::write(p.join("..hidden-by-kubernetes"), "not read").unwrap();

    let f = factory(&[p]);
    let anchors = f.anchors();
    let cases = [
        ("good.pem", FileStatus::Loaded, ""),
        ("expired.pem", FileStatus::Rejected, "expired"),
        (
            "garbage.pem",
            FileStatus::Rejected,
            "neither PEM nor a DER certificate",
        ),
        ("empty.pem", FileStatus::Rejected, "empty"),
        ("truncated.pem", FileStatus::Rejected, "truncated PEM"),
        ("key.pem", FileStatus::Rejected, "private key"),
        ("huge.pem", FileStatus::Rejected, "limit"),
        ("dangling.pem", FileStatus::Rejected, "dangling symlink"),
    ];
    for (name, status, reason) in cases {
        let report = anchors
            .files()
            .iter()
            .find(|r| r.path.file_name().unwrap() == name)
            .unwrap_or_else(|| panic!("{name} not reported"));
        assert_eq!(report.status, status, "{name}: {report:?}");
        assert!(
            report.reason.clone().unwrap_or_default().contains(reason),
            "{name}: {report:?}"
        );
    }
    assert_eq!(
        anchors.files().len(),
        cases.len(),
        "directories and `..` entries are skipped silently"
    );
    assert_eq!(anchors.custom_count(), 1);
    assert_eq!(f.stats().rejected_files, 7);
    let server = server_of(&good).await;
    assert!(
        handshake(
            &f.context(&TlsSettings::default(), "t").unwrap(),
            &server.target(),
            T
        )
        .await
        .ok
    );
}

#[tokio::test]
async fn duplicates_are_removed_and_a_missing_folder_is_not_an_error() {
    let ca = TestCa::new("dup");
    let dir = ca_dir();
    ca.write_pem(&dir.path().join("one.pem"));
    ca.write_pem(&dir.path().join("two.pem"));
    let missing = dir.path().join("does-not-exist");
    let f = factory(&[dir.path(), &missing]);
    assert_eq!(f.anchors().len(), 1);
    assert!(!f.anchors().folders()[1].present);
}

/// Lays out a folder the way the kubelet mounts a Secret: `..<ts>/file`, `..data -> ..<ts>`,
/// `file -> ..data/file`.
fn kube_publish(dir: &std::path::Path, version: &str, files: &[(&str, &str)]) {
    let ts = dir.join(format!("..{version}"));
    std::fs::create_dir(&ts).unwrap();
    for (name, content) in files {
        std::fs::write(ts.join(name), content).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for (name, _) in files {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
}

#[tokio::test]
async fn kubernetes_secret_layout_is_read_and_reread_after_the_data_swap() {
    let (old, new) = (TestCa::new("old"), TestCa::new("new"));
    let dir = ca_dir();
    kube_publish(dir.path(), "2026_01_01", &[("ca.crt", &old.cert_pem)]);
    let f = TrustFactory::new(options(&[dir.path()]).watch(true)).unwrap();
    assert_eq!(
        f.anchors().files().len(),
        1,
        "only ca.crt is read: {:?}",
        f.anchors().files()
    );
    let (old_server, new_server) = (server_of(&old).await, server_of(&new).await);
    let ctx = f.context(&TlsSettings::default(), "t").unwrap();
    assert!(handshake(&ctx, &old_server.target(), T).await.ok);
    assert!(!handshake(&ctx, &new_server.target(), T).await.ok);

    let before = f.anchors().generation();
    kube_publish(dir.path(), "2026_02_02", &[("ca.crt", &new.cert_pem)]);
    eventually("the swapped Secret is read", T, || {
        f.anchors().generation() > before
    })
    .await;
    let ctx = f.context(&TlsSettings::default(), "t").unwrap();
    assert!(handshake(&ctx, &new_server.target(), T).await.ok);
    assert_eq!(
        kind_of(&ctx, &old_server.target()).await,
        Some(FailureKind::UnknownIssuer)
    );
}

#[tokio::test]
async fn a_ca_file_added_at_run_time_is_trusted_without_restart() {
    let ca = TestCa::new("late");
    let dir = ca_dir();
    let f = TrustFactory::new(options(&[dir.path()]).watch(true)).unwrap();
    let mut generations = f.subscribe();
    let server = server_of(&ca).await;
    let before = f.context(&TlsSettings::default(), "t").unwrap();
    assert_eq!(
        kind_of(&before, &server.target()).await,
        Some(FailureKind::UnknownIssuer)
    );
    ca.write_pem(&dir.path().join("late.pem"));
    tokio::time::timeout(T, generations.changed())
        .await
        .expect("reload announced")
        .unwrap();
    let after = f.context(&TlsSettings::default(), "t").unwrap();
    assert!(handshake(&after, &server.target(), T).await.ok);
    assert!(
        !handshake(&before, &server.target(), T).await.ok,
        "a context already handed out keeps its trust"
    );
}

#[tokio::test]
async fn a_failed_reload_keeps_the_last_good_anchors() {
    let ca = TestCa::new("kept");
    let parent = ca_dir();
    let dir = parent.path().join("ca");
    std::fs::create_dir(&dir).unwrap();
    ca.write_pem(&dir.join("ca.pem"));
    let f = factory(&[&dir]);
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::write(&dir, "a file where a folder should be").unwrap();
    let err = f.reload().unwrap_err();
    assert!(matches!(err, TrustError::CaFolder { .. }), "{err}");
    assert_eq!(f.anchors().custom_count(), 1);
    let stats = f.stats();
    assert_eq!(stats.failed_reloads, 1);
    assert!(
        stats
            .last_reload_error
            .unwrap()
            .contains(&dir.display().to_string())
    );
}

#[tokio::test]
async fn a_trigger_ca_is_trusted_by_that_trigger_only_even_under_concurrency() {
    let private = TestCa::new("trigger A's own CA");
    let dir = ca_dir();
    let ca_file = dir.path().join("a-ca.pem");
    private.write_pem(&ca_file);
    let f = factory(&[]);
    let server = Arc::new(server_of(&private).await);
    let with_ca = TlsSettings {
        ca: Some(private.cert_pem.clone()),
        ..Default::default()
    };
    let with_ca_path = TlsSettings {
        ca: Some(ca_file.display().to_string()),
        ..Default::default()
    };
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (f, server) = (f.clone(), Arc::clone(&server));
        let settings = match i % 3 {
            0 => with_ca.clone(),
            1 => with_ca_path.clone(),
            _ => TlsSettings::default(),
        };
        tasks.push(tokio::spawn(async move {
            let ctx = f.context(&settings, &format!("trigger-{i}")).unwrap();
            (
                i,
                handshake(&ctx, &server.target(), T)
                    .await
                    .error
                    .map(|e| e.kind),
            )
        }));
    }
    for task in tasks {
        let (i, result) = task.await.unwrap();
        if i % 3 == 2 {
            assert_eq!(
                result,
                Some(FailureKind::UnknownIssuer),
                "trigger {i} must not trust another trigger's CA"
            );
        } else {
            assert_eq!(result, None, "trigger {i}");
        }
    }
    assert_eq!(
        f.anchors().len(),
        0,
        "the shared anchors never gained the trigger's CA"
    );
}

#[tokio::test]
async fn tls12_only_server_fails_against_a_tls13_minimum() {
    let ca = TestCa::new("versions");
    let dir = ca_dir();
    ca.write_pem(&dir.path().join("ca.pem"));
    let server = TestServer::start(server_config(&ca.server(), Versions::Only12, None)).await;
    let strict =
        TrustFactory::new(options(&[dir.path()]).client_min_tls(TlsVersion::Tls13)).unwrap();
    let ctx = strict.context(&TlsSettings::default(), "t").unwrap();
    let err = handshake(&ctx, &server.target(), T)
        .await
        .error
        .expect("must fail");
    assert_eq!(err.kind, FailureKind::ProtocolVersion, "{err}");
    assert!(err.message.contains("TLS13"), "{err}");
    // Positive control: the default minimum (TLS12) talks to the same server.
    let ctx = factory(&[dir.path()])
        .context(&TlsSettings::default(), "t")
        .unwrap();
    let report = handshake(&ctx, &server.target(), T).await;
    assert_eq!(report.version.as_deref(), Some("TLSv1_2"), "{report:?}");
}

#[tokio::test]
async fn hostname_mismatch_is_classified_and_server_name_fixes_it() {
    let ca = TestCa::new("names");
    let dir = ca_dir();
    ca.write_pem(&dir.path().join("ca.pem"));
    let server = TestServer::start(server_config(
        &ca.server_for(&["redis.internal"]),
        Versions::Both,
        None,
    ))
    .await;
    let f = factory(&[dir.path()]);
    let err = handshake(
        &f.context(&TlsSettings::default(), "t").unwrap(),
        &server.target(),
        T,
    )
    .await
    .error
    .unwrap();
    assert_eq!(err.kind, FailureKind::HostnameMismatch);
    assert!(
        err.message.contains("redis.internal") && err.message.contains("localhost"),
        "{err}"
    );
    let named = TlsSettings {
        server_name: Some("redis.internal".into()),
        ..Default::default()
    };
    assert!(
        handshake(&f.context(&named, "t").unwrap(), &server.target(), T)
            .await
            .ok
    );
    // serverName is not a way around the CA: a wrong name still fails.
    let wrong = TlsSettings {
        server_name: Some("other.internal".into()),
        ..Default::default()
    };
    assert_eq!(
        kind_of(&f.context(&wrong, "t").unwrap(), &server.target()).await,
        Some(FailureKind::HostnameMismatch)
    );
}

#[tokio::test]
async fn an_expired_server_certificate_is_classified() {
    let ca = TestCa::new("clock");
    let dir = ca_dir();
    ca.write_pem(&dir.path().join("ca.pem"));
    let server = TestServer::start(server_config(&ca.expired_server(), Versions::Both, None)).await;
    let ctx = factory(&[dir.path()])
        .context(&TlsSettings::default(), "t")
        .unwrap();
    assert_eq!(
        kind_of(&ctx, &server.target()).await,
        Some(FailureKind::Expired)
    );
}

#[tokio::test]
#[tracing_test::traced_test]
async fn unsafe_ssl_reaches_an_untrusted_server_and_warns_once_per_trigger() {
    let untrusted = TestCa::new("untrusted");
    let server = server_of(&untrusted).await;
    let f = factory(&[]);
    let settings = TlsSettings {
        unsafe_ssl: Some(true),
        ..Default::default()
    };
    for _ in 0..3 {
        let ctx = f.context(&settings, "default/orders#0").unwrap();
        assert!(ctx.is_unsafe());
        assert_eq!(plain_connect(&ctx, &server).await.unwrap(), "hello\n");
    }
    f.context(&settings, "default/payments#1").unwrap();
    logs_assert(|lines: &[&str]| {
        let count = |t: &str| {
            lines
                .iter()
                .filter(|l| l.contains("unsafeSsl is deprecated") && l.contains(t))
                .count()
        };
        match (count("default/orders#0"), count("default/payments#1")) {
            (1, 1) => Ok(()),
            other => Err(format!("expected one warning per trigger, got {other:?}")),
        }
    });
    assert!(
        logs_contain("serverName"),
        "the warning names the alternatives"
    );
    let stats = f.stats();
    assert_eq!((stats.unsafe_ssl_triggers, stats.unsafe_ssl_uses), (2, 4));
    // Negative control: the same server without unsafeSsl is refused.
    let safe = f
        .context(&TlsSettings::default(), "default/orders#0")
        .unwrap();
    assert_eq!(
        kind_of(&safe, &server.target()).await,
        Some(FailureKind::UnknownIssuer)
    );
}

#[tokio::test]
async fn the_forbid_policy_refuses_unsafe_ssl() {
    let f = TrustFactory::new(options(&[]).unsafe_ssl(UnsafeSslPolicy::Forbid)).unwrap();
    let settings = TlsSettings {
        unsafe_ssl: Some(true),
        ..Default::default()
    };
    let err = f.context(&settings, "prod/orders#0").unwrap_err();
    assert!(matches!(err, TrustError::UnsafeSslForbidden { .. }));
    assert!(err.to_string().contains("prod/orders#0"), "{err}");
    assert_eq!(f.stats().unsafe_ssl_refused, 1);
}

fn encrypt_key(leaf: &support::Leaf, password: &str) -> String {
    use pkcs8::der::EncodePem;
    let info = pkcs8::PrivateKeyInfo::try_from(leaf.key_der.as_slice()).unwrap();
    // PBKDF2-SHA256 + AES-256-CBC, as `openssl pkcs8 -topk8 -v2 aes-256-cbc` writes it.
    let params =
        pkcs8::pkcs5::pbes2::Parameters::pbkdf2_sha256_aes256cbc(2048, &[7u8; 16], &[9u8; 16])
            .unwrap();
    let enc = info.encrypt_with_params(params, password).unwrap();
    let enc = pkcs8::EncryptedPrivateKeyInfo::try_from(enc.as_bytes()).unwrap();
    enc.to_pem(pkcs8::LineEnding::LF).unwrap()
}

#[tokio::test]
async fn an_encrypted_client_key_works_with_the_right_password_only() {
    let ca = TestCa::new("mtls");
    let dir = ca_dir();
    ca.write_pem(&dir.path().join("ca.pem"));
    let server = TestServer::start(server_config(&ca.server(), Versions::Both, Some(&ca))).await;
    let client = ca.client("scaler");
    let f = factory(&[dir.path()]);
    let mut settings = TlsSettings {
        cert: Some(client.cert_pem.clone()),
        key: Some(Secret::new(encrypt_key(&client, "s3cret"))),
        key_password: Some(Secret::new("s3cret")),
        ..Default::default()
    };
    assert!(
        handshake(&f.context(&settings, "t").unwrap(), &server.target(), T)
            .await
            .ok
    );
    settings.key_password = Some(Secret::new("wrong"));
    let err = f.context(&settings, "t").unwrap_err().to_string();
    assert!(
        err.contains("keyPassword") && err.contains("wrong password"),
        "{err}"
    );
    settings.key_password = None;
    let err = f.context(&settings, "t").unwrap_err().to_string();
    assert!(err.contains("keyPassword is not set"), "{err}");
}

#[tokio::test]
async fn a_client_certificate_is_required_sent_and_checked() {
    let ca = TestCa::new("mtls");
    let stranger = TestCa::new("stranger");
    let dir = ca_dir();
    ca.write_pem(&dir.path().join("ca.pem"));
    let server = TestServer::start(server_config(&ca.server(), Versions::Both, Some(&ca))).await;
    let f = factory(&[dir.path()]);
    let none = f.context(&TlsSettings::default(), "t").unwrap();
    assert_eq!(
        kind_of(&none, &server.target()).await,
        Some(FailureKind::ClientCertRequired)
    );
    let foreign = stranger.client("intruder");
    let foreign = TlsSettings {
        cert: Some(foreign.cert_pem.clone()),
        key: Some(Secret::new(foreign.key_pem.clone())),
        ..Default::default()
    };
    assert_eq!(
        kind_of(&f.context(&foreign, "t").unwrap(), &server.target()).await,
        Some(FailureKind::ClientCertRejected)
    );
    let good = ca.client("scaler");
    let good = TlsSettings {
        cert: Some(good.cert_pem.clone()),
        key: Some(Secret::new(good.key_pem.clone())),
        ..Default::default()
    };
    assert!(
        handshake(&f.context(&good, "t").unwrap(), &server.target(), T)
            .await
            .ok
    );
}

#[tokio::test]
async fn a_key_that_does_not_match_the_certificate_is_refused() {
    let ca = TestCa::new("mismatch");
    let (a, b) = (ca.client("a"), ca.client("b"));
    let settings = TlsSettings {
        cert: Some(a.cert_pem.clone()),
        key: Some(Secret::new(b.key_pem.clone())),
        ..Default::default()
    };
    let err = factory(&[])
        .context(&settings, "t")
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not match"), "{err}");
    let only_cert = TlsSettings {
        cert: Some(a.cert_pem.clone()),
        ..Default::default()
    };
    assert!(
        factory(&[])
            .context(&only_cert, "t")
            .unwrap_err()
            .to_string()
            .contains("`key` is not")
    );
}

#[tokio::test]
async fn identical_settings_share_one_config_and_a_different_ca_does_not() {
    let ca = TestCa::new("share");
    let dir = ca_dir();
    ca.write_pem(&dir.path().join("ca.pem"));
    let f = factory(&[dir.path()]);
    let a = f.context(&TlsSettings::default(), "a").unwrap();
    let b = f.context(&TlsSettings::default(), "b").unwrap();
    assert!(Arc::ptr_eq(&a.rustls_config(), &b.rustls_config()));
    assert_eq!(a.fingerprint(), b.fingerprint());
    let other = TestCa::new("other");
    let c = f
        .context(
            &TlsSettings {
                ca: Some(other.cert_pem.clone()),
                ..Default::default()
            },
            "c",
        )
        .unwrap();
    assert!(!Arc::ptr_eq(&a.rustls_config(), &c.rustls_config()));
    assert_ne!(a.fingerprint(), c.fingerprint());
    let stats = f.stats();
    assert_eq!((stats.contexts_built, stats.cache_hits), (2, 1));
    // A reload that changes nothing keeps the generation, so contexts stay shared.
    f.reload().unwrap();
    let d = f.context(&TlsSettings::default(), "d").unwrap();
    assert!(Arc::ptr_eq(&a.rustls_config(), &d.rustls_config()));
}

#[tokio::test]
async fn the_internal_server_requires_a_client_certificate_from_its_own_ca_only() {
    let internal = TestCa::new("internal");
    let other = TestCa::new("other");
    let leaf = internal.server();
    let f = factory(&[]);
    let server_tls = Arc::new(
        f.server_tls(
            ServerIdentity {
                chain: leaf.chain.clone(),
                key: leaf.key(),
            },
            std::slice::from_ref(&internal.cert_der),
        )
        .unwrap(),
    );
    let st = Arc::clone(&server_tls);
    let server = TestServer::start_with(move || st.config()).await;
    let dir = ca_dir();
    internal.write_pem(&dir.path().join("internal.pem"));
    let clients = factory(&[dir.path()]);
    let with = |leaf: &support::Leaf| TlsSettings {
        cert: Some(leaf.cert_pem.clone()),
        key: Some(Secret::new(leaf.key_pem.clone())),
        ..Default::default()
    };
    let none = clients.context(&TlsSettings::default(), "t").unwrap();
    assert_eq!(
        kind_of(&none, &server.target()).await,
        Some(FailureKind::ClientCertRequired)
    );
    let foreign = clients.context(&with(&other.client("x")), "t").unwrap();
    assert_eq!(
        kind_of(&foreign, &server.target()).await,
        Some(FailureKind::ClientCertRejected)
    );
    let ok = clients
        .context(&with(&internal.client("operator")), "t")
        .unwrap();
    let report = handshake(&ok, &server.target(), T).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(
        report.version.as_deref(),
        Some("TLSv1_3"),
        "the service minimum is TLS13 by default"
    );

    // A TLS 1.2-only client, even with a good certificate, is refused by the TLS13 default.
    let tls12_only = {
        let client = internal.client("old");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(internal.cert_der.clone()).unwrap();
        let cfg = rustls::ClientConfig::builder_with_provider(support::provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(client.chain.clone(), client.key())
            .unwrap();
        Arc::new(cfg)
    };
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let err = tokio_rustls::TlsConnector::from(tls12_only)
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap_err();
    assert_eq!(
        trustscale::trust::classify(&err, None, "svc").kind,
        FailureKind::ProtocolVersion
    );

    // Swapping the identity at run time: new handshakes see the new certificate.
    let next = internal.server();
    server_tls
        .update(
            ServerIdentity {
                chain: next.chain.clone(),
                key: next.key(),
            },
            std::slice::from_ref(&internal.cert_der),
        )
        .unwrap();
    let report = handshake(&ok, &server.target(), T).await;
    assert!(report.ok);
    let serial = |leaf: &support::Leaf| {
        let (_, c) = x509_parser::parse_x509_certificate(leaf.cert_der.as_ref()).unwrap();
        c.raw_serial_as_string()
    };
    assert_eq!(report.chain[0].serial, serial(&next));
    // A mismatched pair is refused and the current one keeps serving.
    let err = server_tls
        .update(
            ServerIdentity {
                chain: leaf.chain.clone(),
                key: next.key(),
            },
            std::slice::from_ref(&internal.cert_der),
        )
        .unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    assert_eq!(
        handshake(&ok, &server.target(), T).await.chain[0].serial,
        serial(&next)
    );
}

#[tokio::test]
async fn a_certificate_that_is_not_a_ca_never_issues_and_is_trusted_only_as_itself() {
    let self_signed = TestCa::not_a_ca("a self-signed server");
    let dir = ca_dir();
    self_signed.write_pem(&dir.path().join("self-signed.crt"));
    let f = factory(&[dir.path()]);
    let anchors = f.anchors();
    let file = &anchors.files()[0];
    assert!(
        file.reason
            .as_deref()
            .is_some_and(|r| r.contains("is not a CA (CA:FALSE)")),
        "{file:?}"
    );
    let ctx = f.context(&TlsSettings::default(), "t").unwrap();
    // What OpenSSL refuses: a server certificate that the CA:FALSE certificate signed.
    let issued =
        TestServer::start(server_config(&self_signed.server(), Versions::Both, None)).await;
    assert_eq!(
        kind_of(&ctx, &issued.target()).await,
        Some(FailureKind::UnknownIssuer)
    );
    // The self-signed certificate itself, presented by its server: trusted as itself.
    let itself =
        TestServer::start(server_config(&self_signed.as_leaf(), Versions::Both, None)).await;
    assert_eq!(plain_connect(&ctx, &itself).await.unwrap(), "hello\n");
    // Another self-signed certificate, not in the folder: refused.
    let stranger = TestServer::start(server_config(
        &TestCa::not_a_ca("a stranger").as_leaf(),
        Versions::Both,
        None,
    ))
    .await;
    assert_eq!(
        kind_of(&ctx, &stranger.target()).await,
        Some(FailureKind::UnknownIssuer)
    );
    // The same rules for a trigger's own `ca`.
    let no_folder = factory(&[]);
    let with_ca = no_folder
        .context(
            &TlsSettings {
                ca: Some(self_signed.cert_pem.clone()),
                ..Default::default()
            },
            "t",
        )
        .unwrap();
    assert_eq!(plain_connect(&with_ca, &itself).await.unwrap(), "hello\n");
    assert_eq!(
        kind_of(&with_ca, &issued.target()).await,
        Some(FailureKind::UnknownIssuer)
    );
}
