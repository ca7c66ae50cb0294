//! Two regions over TCP: one process per region, or both in this one.
//!
//! With no arguments, Tokyo and Frankfurt run here, on two ports of
//! 127.0.0.1: each sells stock, and a session read in Frankfurt sees a
//! write just made in Tokyo.
//!
//! ```text
//! cargo run --release --example tcp_regions
//! ```
//!
//! On two machines, run one region on each, naming the other:
//!
//! ```text
//! cargo run --release --example tcp_regions -- ap-northeast 0.0.0.0:7100 eu-central 10.0.0.2:7100
//! cargo run --release --example tcp_regions -- eu-central 0.0.0.0:7100 ap-northeast 10.0.0.1:7100
//! ```
//!
//! Each then writes a sale every second and prints the stock both have
//! sold. This example runs `TcpTransport::insecure_plaintext`: no
//! authentication, no encryption, so keep it on a private network.
//! `examples/tls_regions.rs` shows the default, mutual TLS.

use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use archipelago::crdt::PnCounter;
use archipelago::region::Region;
use archipelago::session::Session;
use archipelago::transport::TcpTransport;

const TOKYO: &str = "ap-northeast";
const FRANKFURT: &str = "eu-central";

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => both_here().await,
        [name, listen, peer, peer_addr] => {
            one_region(name, listen.parse()?, peer, peer_addr.parse()?).await
        }
        _ => Err("arguments: NAME LISTEN_ADDR PEER_NAME PEER_ADDR, or none".into()),
    }
}

async fn both_here() -> Result<(), Box<dyn Error>> {
    let localhost: SocketAddr = "127.0.0.1:0".parse()?;
    let tokyo_tcp = TcpTransport::insecure_plaintext(TOKYO, localhost).await?;
    let frankfurt_tcp = TcpTransport::insecure_plaintext(FRANKFURT, localhost).await?;
    tokyo_tcp.add_peer(FRANKFURT, frankfurt_tcp.local_addr());
    frankfurt_tcp.add_peer(TOKYO, tokyo_tcp.local_addr());
    println!(
        "{TOKYO} on {}, {FRANKFURT} on {}",
        tokyo_tcp.local_addr(),
        frankfurt_tcp.local_addr()
    );
    let tokyo = Region::builder(TOKYO).transport(tokyo_tcp).build()?;
    let frankfurt = Region::builder(FRANKFURT)
        .transport(frankfurt_tcp)
        .build()?;

    let stock_t = tokyo.table::<String, PnCounter>("stock")?;
    let stock_f = frankfurt.table::<String, PnCounter>("stock")?;
    stock_t
        .update("matcha", |s, ctx| s.apply(|s| s.inc(ctx.replica(), 20)))
        .await?;
    let mut session = Session::new();
    stock_t
        .update_session("matcha", &mut session, |s, ctx| {
            s.apply(|s| s.dec(ctx.replica(), 3))
        })
        .await?;
    // The customer's next request lands in Frankfurt.
    let seen = stock_f.read_session("matcha", &mut session).await?;
    println!(
        "session read in {FRANKFURT} after a sale in {TOKYO}: stock {}",
        seen.map_or(0, |s| s.value())
    );
    stock_f
        .update("matcha", |s, ctx| s.apply(|s| s.dec(ctx.replica(), 2)))
        .await?;
    while tokyo.applied() != frankfurt.applied() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for (name, table) in [(TOKYO, &stock_t), (FRANKFURT, &stock_f)] {
        let stock = table.read("matcha").await?.map_or(0, |s| s.value());
        println!("{name:<12} stock {stock} (20 - 3 - 2)");
    }
    tokyo.shutdown().await;
    frankfurt.shutdown().await;
    Ok(())
}

async fn one_region(
    name: &str,
    listen: SocketAddr,
    peer: &str,
    peer_addr: SocketAddr,
) -> Result<(), Box<dyn Error>> {
    let tcp = TcpTransport::insecure_plaintext(name, listen).await?;
    tcp.add_peer(peer, peer_addr);
    let region = Region::builder(name).transport(tcp).build()?;
    let stock = region.table::<String, PnCounter>("stock")?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        stock
            .update("matcha", |s, ctx| s.apply(|s| s.dec(ctx.replica(), 1)))
            .await?;
        let sold = stock.read("matcha").await?.map_or(0, |s| -s.value());
        let connected = region.stats().peers.iter().any(|p| p.connected);
        println!("{name}: {sold} sold in all (peer connected: {connected})");
    }
}
