//! RabbitMQ scaler figures against the TLS fixture nodes (`fixtures/brokers.sh start`):
//! 1,000 triggers with identical settings (AMQP connections on the broker, resident memory
//! per trigger), and 1,000 polls with two broker restarts in between (connections open at
//! the end). The restarts use the TLS 1.2 node, `tsrabbit12`.
//!
//! `cargo bench --bench rabbitmq`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use trustscale::scaler::{BuildContext, Scaler, ScalerBuilder, TriggerSpec};
use trustscale::trust::{TrustFactory, TrustOptions};
use trustscale_rabbitmq::RabbitMqBuilder;

mod support;

struct Env(BTreeMap<String, String>);

impl Env {
    fn load() -> Env {
        Env(support::fixture_env())
    }
    fn get(&self, k: &str) -> &str {
        self.0
            .get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("{k} missing from the fixture env"))
    }
}

fn ctl(env: &Env, args: &[&str]) -> String {
    let out = std::process::Command::new(env.get("RABBITMQCTL"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn connections(env: &Env, node: &str, needle: &str) -> usize {
    ctl(
        env,
        &[
            "-n",
            node,
            "list_connections",
            "client_properties",
            "--no-table-headers",
            "-q",
        ],
    )
    .lines()
    .filter(|l| l.contains(needle))
    .count()
}

fn spec(so: &str, index: usize, host: &str, queue: &str) -> TriggerSpec {
    support::trigger(
        so,
        index,
        "rabbitmq",
        &[
            ("host", host),
            ("queueName", queue),
            ("mode", "QueueLength"),
            ("value", "10"),
        ],
    )
}

fn main() {
    let env = Env::load();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(env.get("TRUSTSCALE_CA_CERT"), dir.path().join("ca.crt")).unwrap();
    let ctx = BuildContext {
        trust: TrustFactory::new(TrustOptions::default().ca_dirs([dir.path()])).unwrap(),
    };
    let queue = "bench-queue";
    let declare = |node: &str| {
        ctl(
            &env,
            &[
                "-n",
                node,
                "eval",
                &format!(
                    "rabbit_amqqueue:declare(rabbit_misc:r(<<\"/\">>, queue, <<\"{queue}\">>), false, false, [], none, <<\"bench\">>)."
                ),
            ],
        );
    };
    let node_a = env.get("RABBITMQ_NODENAME").to_string();
    let node_b = env.get("RABBITMQ12_NODENAME").to_string();
    declare(&node_a);

    // 1,000 triggers, identical settings.
    let host_a = format!(
        "amqps://admin:adminpass@localhost:{}/",
        env.get("RABBITMQ_AMQPS_PORT")
    );
    let so = format!("bench-{}", std::process::id());
    let builder = RabbitMqBuilder::default();
    let rss_before = support::rss_kib();
    let scalers: Vec<Box<dyn Scaler>> = (0..1000)
        .map(|i| {
            rt.block_on(builder.build(&spec(&so, i, &host_a, queue), &ctx))
                .unwrap()
        })
        .collect();
    let start = Instant::now();
    let results = rt.block_on(futures_util::future::join_all(
        scalers.iter().map(|s| s.poll()),
    ));
    let round = start.elapsed();
    let rss_after = support::rss_kib();
    let failed = results.iter().filter(|r| r.is_err()).count();
    println!(
        "1,000 rabbitmq triggers, identical settings: {} shared AMQP client(s), {} AMQP connection(s) on the broker, one poll round {round:?} with {failed} failures, RSS +{} KiB ({:.2} KiB per trigger)",
        builder.live_amqp_clients(),
        connections(&env, &node_a, &so),
        rss_after.saturating_sub(rss_before),
        rss_after.saturating_sub(rss_before) as f64 / 1000.0
    );
    drop(scalers);

    // 1,000 polls with two broker restarts in between.
    declare(&node_b);
    let host_b = format!(
        "amqps://admin:adminpass@localhost:{}/",
        env.get("RABBITMQ12_AMQPS_PORT")
    );
    let so_b = format!("bench-restart-{}", std::process::id());
    let builder = RabbitMqBuilder::default();
    let scaler = rt
        .block_on(builder.build(&spec(&so_b, 0, &host_b, queue), &ctx))
        .unwrap();
    rt.block_on(scaler.poll()).unwrap();
    let before = connections(&env, &node_b, &so_b);
    let (mut ok, mut failed) = (0, 0);
    for i in 0..1000 {
        if i == 333 || i == 666 {
            ctl(&env, &["-n", &node_b, "stop_app"]);
            ctl(&env, &["-n", &node_b, "start_app"]);
            declare(&node_b);
        }
        match rt.block_on(scaler.poll()) {
            Ok(_) => ok += 1,
            Err(_) => failed += 1,
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let after = connections(&env, &node_b, &so_b);
    println!(
        "1,000 polls with two restarts of the broker: {ok} succeeded, {failed} failed, AMQP connections open before {before}, after {after}; connections opened in all: {}",
        builder.amqp_clients()[0].connects()
    );
}
