//! Two regions exporting their metrics (feature `metrics`) to Prometheus.
//!
//! ```sh
//! cargo run --example prometheus --features metrics            # one scrape, then exit
//! cargo run --example prometheus --features metrics -- --serve # keep serving /metrics
//! ```
//!
//! The library only records through the `metrics` facade; the service
//! installs the exporter it already uses, here `metrics-exporter-prometheus`
//! with its HTTP listener on 127.0.0.1:9000. Every series is described in
//! the `region` module's "Metrics" table.

use std::net::SocketAddr;
use std::time::Duration;

use archipelago::crdt::GCounter;
use archipelago::region::Region;
use archipelago::transport::{ChannelNetwork, LinkFaults};
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LISTEN: &str = "127.0.0.1:9000";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let serve = std::env::args().any(|a| a == "--serve");
    let addr: SocketAddr = LISTEN.parse()?;
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()?;

    let net = ChannelNetwork::new(7);
    // A WAN-like link: 80 ms each way.
    let wan = LinkFaults::default().latency(Duration::from_millis(80));
    net.set_faults_all(wan);
    let tokyo = Region::builder("ap-northeast")
        .transport(net.endpoint("ap-northeast"))
        .build()?;
    let frankfurt = Region::builder("eu-central")
        .transport(net.endpoint("eu-central"))
        .build()?;
    let likes = tokyo.table::<String, GCounter>("likes")?;
    for n in 0..100u64 {
        likes
            .update(&format!("post-{}", n % 10), |c, ctx| {
                c.apply(|c| c.inc(ctx.replica(), 1))
            })
            .await?;
    }
    // The engine publishes its metrics once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let scrape = scrape(addr).await?;
    println!("http://{LISTEN}/metrics:");
    for line in scrape
        .lines()
        .filter(|l| l.starts_with("archipelago_replication_lag"))
    {
        println!("  {line}");
    }
    assert!(
        scrape.contains("archipelago_replication_lag_seconds{"),
        "the lag series is exported"
    );
    if serve {
        println!("serving http://{LISTEN}/metrics; Ctrl-C to stop");
        std::future::pending::<()>().await;
    }
    tokyo.shutdown().await;
    frankfurt.shutdown().await;
    Ok(())
}

/// One `GET /metrics`, as Prometheus would.
async fn scrape(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    Ok(body)
}
