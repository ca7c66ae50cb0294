//! Replication over TCP on loopback: plain TCP against mutual TLS 1.3, in
//! the same run, and the time a connection takes to come up. Results in
//! `BENCHMARKS.md`.
//!
//! - `tcp/plain` and `tcp/tls`: two regions, `ap-northeast` and
//!   `eu-central`, each with its own `TcpTransport` on 127.0.0.1
//!   (`insecure_plaintext` or `bind` with a certificate from one test CA),
//!   on a multi-thread tokio runtime with 2 worker threads. `N` increments
//!   of a `GCounter` at Tokyo, write `i` on key `i % 1000`, timed from the
//!   first write until Frankfurt has applied the last one (a session read
//!   that waits for Tokyo's last write token). Fresh transports and regions
//!   every iteration, connected (first anti-entropy exchange over) outside
//!   the timing; afterwards Frankfurt's values are checked to sum to `N`.
//! - `handshake/plain` and `handshake/tls`: two bound transports, timed
//!   from `add_peer` on both until both have reported the other `Up`: TCP
//!   connect, (TLS handshake with both certificate chains verified,) and
//!   the hellos. Bind and certificate loading are outside the timing.
//!
//! After criterion's groups, `summary` prints the median rates over every
//! iteration run (warm-up included), the TLS / plain ratio, and the median
//! handshake times.
//!
//! Run with `cargo bench --bench tls` (about a minute).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use archipelago::crdt::GCounter;
use archipelago::region::Region;
use archipelago::session::{Session, SessionToken};
use archipelago::transport::{TcpTransport, TlsConfig, Transport, TransportEvent};
use criterion::{Criterion, SamplingMode, Throughput};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::runtime::Runtime;

/// Updates per iteration.
const N: u64 = 200_000;
/// Keys written.
const KEYS: u64 = 1000;
/// The writer yields to the scheduler after this many writes (as in
/// `benches/engine.rs`).
const YIELD_EVERY: u64 = 128;
const TABLE: &str = "hits";
const TOKYO: &str = "ap-northeast";
const FRANKFURT: &str = "eu-central";

static RATES: Mutex<BTreeMap<&'static str, Vec<f64>>> = Mutex::new(BTreeMap::new());
static HANDSHAKES: Mutex<BTreeMap<&'static str, Vec<Duration>>> = Mutex::new(BTreeMap::new());

/// Plain TCP, or TLS with the two regions' configs.
#[derive(Clone)]
enum Security {
    Plain,
    Tls {
        tokyo: TlsConfig,
        frankfurt: TlsConfig,
    },
}

impl Security {
    fn name(&self) -> &'static str {
        match self {
            Security::Plain => "plain",
            Security::Tls { .. } => "tls",
        }
    }

    async fn bind(&self, region: &str) -> TcpTransport {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        match self {
            Security::Plain => TcpTransport::insecure_plaintext(region, addr).await,
            Security::Tls { tokyo, frankfurt } => {
                let tls = if region == TOKYO { tokyo } else { frankfurt };
                TcpTransport::bind(region, addr, tls.clone()).await
            }
        }
        .expect("bind")
    }

    /// Tokyo and Frankfurt, bound, not yet peered.
    async fn pair(&self) -> (TcpTransport, TcpTransport) {
        (self.bind(TOKYO).await, self.bind(FRANKFURT).await)
    }
}

/// One CA, and a certificate for each region.
fn tls() -> Security {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "bench CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let config = |region: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![region.to_owned()]).unwrap();
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &issuer).unwrap().pem();
        TlsConfig::from_pem(
            ca_pem.as_bytes(),
            cert.as_bytes(),
            key.serialize_pem().as_bytes(),
        )
        .unwrap()
    };
    Security::Tls {
        tokyo: config(TOKYO),
        frankfurt: config(FRANKFURT),
    }
}

/// One iteration: fresh regions over `security`, `N` writes at Tokyo, until
/// Frankfurt has them all. Returns the time.
async fn replicate(security: &Security) -> Duration {
    let (tokyo_tcp, frankfurt_tcp) = security.pair().await;
    tokyo_tcp.add_peer(FRANKFURT, frankfurt_tcp.local_addr());
    frankfurt_tcp.add_peer(TOKYO, tokyo_tcp.local_addr());
    let build = |name: &str, tcp| {
        Region::builder(name)
            .transport(tcp)
            .config(common::roomy_config())
            .build()
            .expect("region")
    };
    let tokyo = build(TOKYO, tokyo_tcp);
    let frankfurt = build(FRANKFURT, frankfurt_tcp);
    let table_t = tokyo.table::<u64, GCounter>(TABLE).unwrap();
    let table_f = frankfurt.table::<u64, GCounter>(TABLE).unwrap();
    common::connected(&[&tokyo, &frankfurt]).await;
    let writer = tokio::spawn(async move {
        let started = Instant::now();
        let mut last = SessionToken::new();
        for i in 0..N {
            last = table_t
                .update(&(i % KEYS), |c, ctx| c.apply(|c| c.inc(ctx.replica(), 1)))
                .await
                .expect("write");
            if i % YIELD_EVERY == YIELD_EVERY - 1 {
                tokio::task::yield_now().await;
            }
        }
        let mut session = Session::new();
        session.record_write(&last);
        table_f
            .read_session(&((N - 1) % KEYS), &mut session)
            .await
            .expect("Frankfurt catches up");
        (started.elapsed(), table_f)
    });
    let (elapsed, table_f) = writer.await.expect("writer");
    let mut total = 0;
    for key in 0..KEYS {
        total += table_f.read(&key).await.unwrap().map_or(0, |c| c.value());
    }
    assert_eq!(total, N, "Frankfurt holds every increment");
    assert_eq!(frankfurt.stats().rejected_frames, 0);
    tokyo.shutdown().await;
    frankfurt.shutdown().await;
    elapsed
}

/// Waits for `transport`'s first `Up`.
async fn up(transport: &mut TcpTransport) {
    loop {
        match transport.recv().await.expect("open") {
            TransportEvent::Up(_) => return,
            _ => continue,
        }
    }
}

/// One connection coming up, both ways reported.
async fn handshake(security: &Security) -> Duration {
    let (mut tokyo, mut frankfurt) = security.pair().await;
    let started = Instant::now();
    frankfurt.add_peer(TOKYO, tokyo.local_addr());
    tokyo.add_peer(FRANKFURT, frankfurt.local_addr());
    up(&mut tokyo).await;
    up(&mut frankfurt).await;
    started.elapsed()
}

fn bench_replication(c: &mut Criterion, rt: &Runtime, modes: &[Security]) {
    let mut g = c.benchmark_group("tcp");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Elements(N));
    for security in modes {
        g.bench_function(security.name(), |bench| {
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let elapsed = rt.block_on(replicate(security));
                    total += elapsed;
                    let rate = N as f64 / elapsed.as_secs_f64();
                    RATES
                        .lock()
                        .unwrap()
                        .entry(security.name())
                        .or_default()
                        .push(rate);
                }
                total
            });
        });
    }
    g.finish();
}

fn bench_handshake(c: &mut Criterion, rt: &Runtime, modes: &[Security]) {
    let mut g = c.benchmark_group("handshake");
    g.sample_size(20)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(3));
    for security in modes {
        g.bench_function(security.name(), |bench| {
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let elapsed = rt.block_on(handshake(security));
                    total += elapsed;
                    HANDSHAKES
                        .lock()
                        .unwrap()
                        .entry(security.name())
                        .or_default()
                        .push(elapsed);
                }
                total
            });
        });
    }
    g.finish();
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn summary() {
    let rates = RATES.lock().unwrap();
    let handshakes = HANDSHAKES.lock().unwrap();
    println!(
        "\n== tls bench summary: {N} updates per iteration, medians over every iteration (warm-up included) =="
    );
    let rate = |name| rates.get(name).map_or(f64::NAN, |r| median(r.clone()));
    for name in ["plain", "tls"] {
        let runs = rates.get(name).map_or(0, Vec::len);
        println!(
            "replication {name:<5} {:>6.3} M updates/s ({runs} runs)",
            rate(name) / 1e6
        );
    }
    println!(
        "tls / plain       {:>6.2}x (target >= 0.8x)",
        rate("tls") / rate("plain")
    );
    for name in ["plain", "tls"] {
        let times: Vec<f64> = handshakes
            .get(name)
            .map(|h| h.iter().map(Duration::as_secs_f64).collect())
            .unwrap_or_default();
        let runs = times.len();
        println!(
            "handshake {name:<5}   {:>7.3} ms ({runs} runs)",
            median(times) * 1e3
        );
    }
}

fn main() {
    let rt = common::runtime();
    let modes = [Security::Plain, tls()];
    let mut c = Criterion::default().configure_from_args();
    bench_replication(&mut c, &rt, &modes);
    bench_handshake(&mut c, &rt, &modes);
    c.final_summary();
    summary();
}
