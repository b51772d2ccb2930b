//! A RabbitMQ restart under a polling scaler: the next poll after the broker is back
//! succeeds, and no connection leaks. Uses the TLS 1.2 node (`tsrabbit12`), which only
//! one other test touches (see `.config/nextest.toml`).

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::fixtures::Fixtures;
use support::rabbit::{Mgmt, connections_named_on, rabbitmqctl};
use trustscale::scaler::{BuildContext, ErrorKind, ObjectRef, ScalerBuilder, TriggerSpec};
use trustscale::trust::{TrustFactory, TrustOptions};
use trustscale_rabbitmq::RabbitMqBuilder;

async fn wait_listening(port: u16) {
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("port {port} did not come back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_survive_two_broker_restarts_without_leaking_connections() {
    let fx = Fixtures::get();
    let node = fx.var("RABBITMQ12_NODENAME");
    let amqps_port = fx.port("RABBITMQ12_AMQPS_PORT");
    let mgmt_port = fx.port("RABBITMQ12_MGMT_PORT");
    let queue = format!("restart-{}", std::process::id());
    let so = format!("restart-so-{}", std::process::id());
    let dir = fx.ca_dir();
    let ctx = BuildContext {
        trust: TrustFactory::new(TrustOptions::default().ca_dirs([dir.path()])).unwrap(),
    };
    let builder = RabbitMqBuilder::default();
    let spec = |host: String| {
        let meta: BTreeMap<String, String> = [("host", host), ("queueName", queue.clone())]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        TriggerSpec::new(
            ObjectRef {
                namespace: "test".into(),
                name: so.clone(),
            },
            0,
            "rabbitmq",
            meta,
        )
    };
    let amqp = builder
        .build(
            &spec(format!("amqps://admin:adminpass@localhost:{amqps_port}/")),
            &ctx,
        )
        .await
        .unwrap();
    let http = builder
        .build(
            &spec(format!("https://admin:adminpass@localhost:{mgmt_port}/")),
            &ctx,
        )
        .await
        .unwrap();

    for round in 1..=2 {
        // A fresh node database may be used after a restart: (re)create the queue each round.
        let mgmt = Mgmt::new("RABBITMQ12_MGMT_URL");
        mgmt.create_queue(&queue).await;
        mgmt.publish(&queue, round).await;
        assert_eq!(
            amqp.poll().await.unwrap().metrics[0].value,
            round as f64,
            "round {round} before the restart"
        );
        assert!(http.poll().await.is_ok());
        assert_eq!(connections_named_on(&node, &so), 1);

        rabbitmqctl(&["-n", &node, "stop_app"]);
        let err = amqp.poll().await.unwrap_err();
        assert_eq!(
            err.kind,
            ErrorKind::CONNECTION,
            "round {round}, broker down: {err}"
        );
        assert_eq!(http.poll().await.unwrap_err().kind, ErrorKind::CONNECTION);
        rabbitmqctl(&["-n", &node, "start_app"]);
        wait_listening(amqps_port).await;
        wait_listening(mgmt_port).await;

        let mgmt = Mgmt::new("RABBITMQ12_MGMT_URL");
        mgmt.create_queue(&queue).await;
        let p = amqp
            .poll()
            .await
            .unwrap_or_else(|e| panic!("round {round}: the first poll after the restart: {e}"));
        // The queue was made again, empty: exactly 0, not "some value".
        assert_eq!(p.metrics[0].value, 0.0, "round {round}");
        let h = http
            .poll()
            .await
            .unwrap_or_else(|e| panic!("round {round}: HTTPS after the restart: {e}"));
        assert_eq!(h.metrics[0].value, 0.0, "round {round}");
        assert_eq!(
            connections_named_on(&node, &so),
            1,
            "round {round}: exactly one connection after the restart"
        );
    }
    assert_eq!(
        builder.amqp_clients()[0].connects(),
        3,
        "one connection per broker life"
    );
    Mgmt::new("RABBITMQ12_MGMT_URL").delete_queue(&queue).await;
}
