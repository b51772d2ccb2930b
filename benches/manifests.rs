//! The largest manifest the operator accepts, loaded and built: a file just under the
//! 4 MiB cap (`MAX_MANIFEST_BYTES`) of ScaledObjects with a metrics-api trigger each,
//! parsed, resolved and every trigger built with the registry (not polled), as the
//! operator does on a manifest change. Prints the median and worst of 5 rounds and the
//! process's peak RSS.
//!
//! `cargo bench --bench manifests`

use std::time::Instant;

use trustscale::scaler::BuildContext;
use trustscale::trust::{TrustFactory, TrustOptions};
use trustscale_operator::manifest::{self, Env, MAX_MANIFEST_BYTES};

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("largest.yaml");
    let mut text = String::new();
    let mut n = 0;
    loop {
        let doc = format!(
            "---\nkind: ScaledObject\nmetadata: {{name: so-{n}, namespace: bench}}\nspec:\n  pollingInterval: 30\n  triggers:\n    - type: metrics-api\n      metadata: {{url: \"https://metrics-{n}.example.com/q\", valueLocation: queue.depth, targetValue: \"5\"}}\n"
        );
        if (text.len() + doc.len()) as u64 >= MAX_MANIFEST_BYTES {
            break;
        }
        text.push_str(&doc);
        n += 1;
    }
    std::fs::write(&file, &text).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let registry = trustscale_operator::builtins::registry();
    let ctx = BuildContext {
        trust: TrustFactory::new(TrustOptions::default().ca_dirs(Vec::<std::path::PathBuf>::new()))
            .unwrap(),
    };
    let env = Env::from_pairs(std::iter::empty::<(String, String)>());
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let set = manifest::load(std::slice::from_ref(&file));
        assert!(set.problems.is_empty(), "{:?}", set.problems.first());
        let objects = set.scaled_objects(&env);
        assert_eq!(objects.len(), n);
        let parsed = start.elapsed();
        let built = rt.block_on(async {
            let mut built = 0;
            for so in &objects {
                for t in so.triggers.iter().flatten() {
                    let s = registry.build(t, &ctx).await.unwrap();
                    s.close().await;
                    built += 1;
                }
            }
            built
        });
        assert_eq!(built, n);
        rounds.push((parsed, start.elapsed()));
    }
    rounds.sort_by_key(|r| r.1);
    let (median, worst) = (rounds[rounds.len() / 2], rounds[rounds.len() - 1]);
    println!(
        "largest manifest: {:.2} MiB, {n} ScaledObjects; loaded and resolved in {:.0} ms (median of 5), every trigger built: {:.0} ms median, {:.0} ms worst; peak RSS {:.0} MiB",
        text.len() as f64 / (1024.0 * 1024.0),
        median.0.as_secs_f64() * 1e3,
        median.1.as_secs_f64() * 1e3,
        worst.1.as_secs_f64() * 1e3,
        peak_rss_mib()
    );
}
