//! Trust-layer figures: factory start with 100 CA files, cached `context()`, memory of
//! 10,000 triggers sharing settings, and CA-folder change → new anchors.
//!
//! `cargo bench --bench trust` (criterion timings, then the memory and reload figures).

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::Criterion;
use trustscale::trust::{TlsSettings, TrustFactory, TrustOptions};

mod support;

fn write_cas(dir: &Path, n: usize) {
    for i in 0..n {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("bench CA {i}"));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join(format!("ca-{i:03}.pem")), cert.pem()).unwrap();
    }
}

fn timings(c: &mut Criterion, dir: &Path) {
    let opts = TrustOptions::default().ca_dirs([dir]);
    c.bench_function("factory: system roots + 100 CA files", |b| {
        b.iter(|| black_box(TrustFactory::new(opts.clone()).unwrap()))
    });
    let factory = TrustFactory::new(opts.clone()).unwrap();
    let settings = TlsSettings::default();
    let _held = factory.context(&settings, "bench").unwrap();
    c.bench_function("context(): settings already seen", |b| {
        b.iter(|| black_box(factory.context(black_box(&settings), "bench").unwrap()))
    });
    let with_ca = TlsSettings {
        ca: Some(std::fs::read_to_string(dir.join("ca-000.pem")).unwrap()),
        ..Default::default()
    };
    let _held2 = factory.context(&with_ca, "bench").unwrap();
    c.bench_function("context(): seen, with an inline trigger CA", |b| {
        b.iter(|| black_box(factory.context(black_box(&with_ca), "bench").unwrap()))
    });
}

fn memory(dir: &Path) {
    let factory = TrustFactory::new(TrustOptions::default().ca_dirs([dir])).unwrap();
    let settings = TlsSettings::default();
    let mut held = Vec::with_capacity(10_000);
    held.push(factory.context(&settings, "trigger-0").unwrap());
    let before = support::rss_kib();
    for i in 1..10_000 {
        held.push(factory.context(&settings, &format!("trigger-{i}")).unwrap());
    }
    let after = support::rss_kib();
    let stats = factory.stats();
    let configs: std::collections::HashSet<*const rustls::ClientConfig> = held
        .iter()
        .map(|c| std::sync::Arc::as_ptr(&c.rustls_config()))
        .collect();
    println!(
        "10,000 triggers, identical settings: {} rustls config(s), {} context(s) built, RSS growth {} KiB ({} anchors)",
        configs.len(),
        stats.contexts_built,
        after.saturating_sub(before),
        stats.anchors
    );
}

fn reload(dir: &Path) {
    let factory = TrustFactory::new(TrustOptions::default().ca_dirs([dir]).watch(true)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let extra = tempfile::tempdir().unwrap();
    write_cas(extra.path(), 20);
    let mut samples = Vec::new();
    for i in 0..20 {
        let mut rx = factory.subscribe();
        rx.borrow_and_update();
        let src = extra.path().join(format!("ca-{i:03}.pem"));
        let start = Instant::now();
        std::fs::copy(&src, dir.join(format!("added-{i:03}.pem"))).unwrap();
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), rx.changed()).await })
            .expect("reload within 10 s")
            .unwrap();
        samples.push(start.elapsed());
    }
    samples.sort();
    println!(
        "CA folder change -> new anchors (20 samples, 100+ files): median {:?}, max {:?}",
        samples[samples.len() / 2],
        samples[samples.len() - 1]
    );
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    write_cas(dir.path(), 100);
    let mut c = Criterion::default().configure_from_args();
    timings(&mut c, dir.path());
    c.final_summary();
    memory(dir.path());
    reload(dir.path());
}
