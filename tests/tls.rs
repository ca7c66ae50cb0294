//! Regions over mutual TLS 1.3 on 127.0.0.1: two regions replicate, and a
//! peer without a certificate, with one from another CA, or with a valid
//! one that names another region gets no frame through to the engine, on
//! either side of a connection. Handshakes are bounded in time and number,
//! certificates load from PEM files, and a reloaded CA bundle applies to
//! the next connections.
//!
//! Real time, real sockets: every wait polls a condition, bounded by
//! `WAIT_MAX`. Every region runs on the default `RegionConfig`.

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use archipelago::crdt::GCounter;
use archipelago::region::{Region, RegionStats};
use archipelago::transport::{
    TCP_MAGIC, TCP_PROTOCOL_VERSION, TcpConfig, TcpHandle, TcpTransport, TlsConfig, TlsError,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKYO: &str = "ap-northeast";
const FRANKFURT: &str = "eu-central";
/// A real region of the same CA, configured in Frankfurt, never started.
const GHOST: &str = "af-south";

use common::{WAIT_MAX, eventually, localhost};

/// A test certificate authority.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A certificate naming `region` (DNS SAN), for client and server use:
    /// (certificate PEM, private key PEM).
    fn issue(&self, region: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![region.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, region);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// `region`'s config: this CA's certificate naming it, trusting `trust`.
    fn tls(&self, region: &str, trust: &str) -> TlsConfig {
        let (cert, key) = self.issue(region);
        TlsConfig::from_pem(trust.as_bytes(), cert.as_bytes(), key.as_bytes()).unwrap()
    }
}

/// Tokyo and Frankfurt over mutual TLS, certificates from `ca`.
async fn tokyo_and_frankfurt(ca: &Ca) -> (TcpTransport, TcpTransport) {
    let tokyo = TcpTransport::bind(TOKYO, localhost(), ca.tls(TOKYO, &ca.pem))
        .await
        .unwrap();
    let frankfurt = TcpTransport::bind(FRANKFURT, localhost(), ca.tls(FRANKFURT, &ca.pem))
        .await
        .unwrap();
    tokyo.add_peer(FRANKFURT, frankfurt.local_addr());
    frankfurt.add_peer(TOKYO, tokyo.local_addr());
    (tokyo, frankfurt)
}

fn region(name: &str, transport: TcpTransport) -> Region {
    Region::builder(name).transport(transport).build().unwrap()
}

async fn hits(region: &Region) -> u64 {
    region
        .table::<String, GCounter>("hits")
        .unwrap()
        .read("page")
        .await
        .unwrap()
        .map_or(0, |c| c.value())
}

async fn hit(region: &Region, n: u64) {
    region
        .table::<String, GCounter>("hits")
        .unwrap()
        .update("page", |c, ctx| c.apply(|c| c.inc(ctx.replica(), n)))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_regions_replicate_over_mutual_tls() {
    let ca = Ca::new("archipelago test CA");
    let (tokyo_tcp, frankfurt_tcp) = tokyo_and_frankfurt(&ca).await;
    let (th, fh) = (tokyo_tcp.handle(), frankfurt_tcp.handle());
    assert!(th.is_tls() && fh.is_tls());
    let tokyo = region(TOKYO, tokyo_tcp);
    let frankfurt = region(FRANKFURT, frankfurt_tcp);
    for _ in 0..20 {
        hit(&tokyo, 1).await;
        hit(&frankfurt, 2).await;
    }
    eventually("both regions to have all 60 hits", || async {
        hits(&tokyo).await == 60 && hits(&frankfurt).await == 60
    })
    .await;
    eventually("equal applied vectors", || async {
        tokyo.applied() == frankfurt.applied()
    })
    .await;
    let (ts, fs) = (th.stats(), fh.stats());
    assert_eq!(ts.connections_dialed, 1, "{ts:?}");
    assert_eq!(fs.connections_accepted, 1, "{fs:?}");
    assert_eq!(ts.tls_refused.total() + fs.tls_refused.total(), 0);
    assert_eq!(fs.connections_refused, 0, "{fs:?}");
    assert!(ts.frames_sent > 0 && fs.frames_received > 0);
    assert_eq!(
        tokyo.stats().rejected_frames + frankfurt.stats().rejected_frames,
        0
    );
    tokyo.shutdown().await;
    frankfurt.shutdown().await;
}

/// Frankfurt alone, accepting Tokyo and the ghost, neither of them
/// running: whatever reaches its engine came from a stranger.
async fn lone_frankfurt(ca: &Ca) -> (Region, TcpHandle) {
    let tcp = TcpTransport::bind(FRANKFURT, localhost(), ca.tls(FRANKFURT, &ca.pem))
        .await
        .unwrap();
    tcp.add_peer(TOKYO, "127.0.0.1:9".parse().unwrap());
    tcp.add_peer(GHOST, "127.0.0.1:9".parse().unwrap());
    let handle = tcp.handle();
    (region(FRANKFURT, tcp), handle)
}

fn hello(name: &str) -> Vec<u8> {
    let mut hello = TCP_MAGIC.to_vec();
    hello.extend_from_slice(&TCP_PROTOCOL_VERSION.to_le_bytes());
    hello.extend_from_slice(&u16::try_from(name.len()).unwrap().to_le_bytes());
    hello.extend_from_slice(name.as_bytes());
    hello
}

/// A client config trusting `trust`, presenting `identity` (certificate
/// and key PEM) if given.
fn stranger_config(trust: &str, identity: Option<(String, String)>) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(trust.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    }
}

/// Connects to `addr` over TLS with `config`, claims `claim` in a hello,
/// sends a frame, and waits for the connection to be closed on it.
async fn stranger(addr: SocketAddr, config: rustls::ClientConfig, claim: &str) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let server = ServerName::try_from(FRANKFURT).unwrap();
    // Under TLS 1.3 the client's side of the handshake completes before the
    // server has checked the client's certificate: the refusal shows as
    // the connection closing.
    let Ok(mut tls) = connector.connect(server, tcp).await else {
        return;
    };
    let mut out = hello(claim);
    let frame = b"a frame that must not reach the engine";
    out.extend_from_slice(&u32::try_from(frame.len()).unwrap().to_le_bytes());
    out.extend_from_slice(frame);
    let _ = tls.write_all(&out).await;
    let _ = tls.flush().await;
    let mut buf = [0; 256];
    let read = tokio::time::timeout(WAIT_MAX, tls.read(&mut buf)).await;
    let closed = match read {
        Ok(Ok(0) | Err(_)) => Ok(()),
        Ok(Ok(_)) => panic!("the acceptor answered a stranger"),
        Err(elapsed) => Err(elapsed),
    };
    assert!(closed.is_ok(), "the stranger's connection was not closed");
}

/// Nothing of the stranger reached Frankfurt's engine.
fn assert_engine_saw_nothing(stats: &RegionStats, tcp: &TcpHandle) {
    assert!(
        stats.peers.iter().all(|p| !p.connected),
        "{:?}",
        stats.peers
    );
    assert!(
        stats.peers.iter().all(|p| p.replica.is_none()),
        "{:?}",
        stats.peers
    );
    assert_eq!(stats.rejected_frames, 0);
    assert_eq!(stats.stale_frames, 0);
    assert_eq!(stats.refused_handshakes, 0);
    assert_eq!(stats.batches_applied, 0);
    let tcp = tcp.stats();
    assert_eq!(tcp.frames_received, 0, "{tcp:?}");
    assert_eq!(tcp.connections_accepted, 0, "{tcp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_a_certificate_gets_no_frame_through() {
    let ca = Ca::new("archipelago test CA");
    let (frankfurt, tcp) = lone_frankfurt(&ca).await;
    stranger(tcp.local_addr(), stranger_config(&ca.pem, None), TOKYO).await;
    eventually("the refusal to be counted", || async {
        tcp.stats().tls_refused.no_certificate == 1
    })
    .await;
    let stats = tcp.stats();
    assert_eq!(stats.tls_refused.total(), 1, "{stats:?}");
    assert_eq!(stats.connections_refused, 1, "{stats:?}");
    assert_engine_saw_nothing(&frankfurt.stats(), &tcp);
    frankfurt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_gets_no_frame_through() {
    let ca = Ca::new("archipelago test CA");
    let other = Ca::new("some other CA");
    let (frankfurt, tcp) = lone_frankfurt(&ca).await;
    // A certificate naming Tokyo, from a CA Frankfurt does not trust.
    let config = stranger_config(&ca.pem, Some(other.issue(TOKYO)));
    stranger(tcp.local_addr(), config, TOKYO).await;
    eventually("the refusal to be counted", || async {
        tcp.stats().tls_refused.untrusted_certificate == 1
    })
    .await;
    let stats = tcp.stats();
    assert_eq!(stats.tls_refused.total(), 1, "{stats:?}");
    assert_engine_saw_nothing(&frankfurt.stats(), &tcp);
    frankfurt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_certificate_claiming_another_region_gets_no_frame_through() {
    let ca = Ca::new("archipelago test CA");
    let (frankfurt, tcp) = lone_frankfurt(&ca).await;
    // The ghost's own, valid certificate, claiming to be Tokyo.
    let config = stranger_config(&ca.pem, Some(ca.issue(GHOST)));
    stranger(tcp.local_addr(), config, TOKYO).await;
    eventually("the refusal to be counted", || async {
        tcp.stats().tls_refused.wrong_name == 1
    })
    .await;
    let stats = tcp.stats();
    assert_eq!(stats.tls_refused.total(), 1, "{stats:?}");
    assert_engine_saw_nothing(&frankfurt.stats(), &tcp);
    frankfurt.shutdown().await;
}

/// The dialer's side: Tokyo dials Frankfurt's address, where a region of
/// the same CA with another name listens, then one with Frankfurt's name
/// from another CA. Tokyo refuses both, and its engine hears of neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialer_refuses_an_acceptor_that_is_not_the_region_it_dialled() {
    let ca = Ca::new("archipelago test CA");
    let other = Ca::new("some other CA");
    let impostor = TcpTransport::bind("eu-west", localhost(), ca.tls("eu-west", &ca.pem))
        .await
        .unwrap();
    // Accepts "ap-northeast": sorts below it.
    impostor.add_peer(TOKYO, "127.0.0.1:9".parse().unwrap());
    let tokyo_tcp = TcpTransport::bind(TOKYO, localhost(), ca.tls(TOKYO, &ca.pem))
        .await
        .unwrap();
    let th = tokyo_tcp.handle();
    tokyo_tcp.add_peer(FRANKFURT, impostor.local_addr());
    let tokyo = region(TOKYO, tokyo_tcp);
    eventually("Tokyo to refuse the wrongly named acceptor", || async {
        th.stats().tls_refused.wrong_name >= 1
    })
    .await;
    // Frankfurt's name, another CA (which trusts Tokyo's, so only Tokyo's
    // check stands in the way).
    let both = format!("{}{}", ca.pem, other.pem);
    let forged = TcpTransport::bind(FRANKFURT, localhost(), other.tls(FRANKFURT, &both))
        .await
        .unwrap();
    forged.add_peer(TOKYO, "127.0.0.1:9".parse().unwrap());
    th.add_peer(FRANKFURT, forged.local_addr());
    eventually("Tokyo to refuse the untrusted acceptor", || async {
        th.stats().tls_refused.untrusted_certificate >= 1
    })
    .await;
    let stats = tokyo.stats();
    assert_eq!(th.stats().connections_dialed, 0, "{:?}", th.stats());
    assert!(
        stats
            .peers
            .iter()
            .all(|p| !p.connected && p.replica.is_none())
    );
    assert_eq!(stats.rejected_frames + stats.stale_frames, 0);
    assert_eq!(impostor.stats().connections_accepted, 0);
    assert_eq!(forged.stats().connections_accepted, 0);
    tokyo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_are_bounded_in_time_and_number() {
    let ca = Ca::new("archipelago test CA");
    let config = TcpConfig {
        handshake_timeout: Duration::from_secs(2),
        pending_handshakes_max: 2,
        ..TcpConfig::default()
    };
    let tcp =
        TcpTransport::bind_with_config(FRANKFURT, localhost(), ca.tls(FRANKFURT, &ca.pem), config)
            .await
            .unwrap();
    let handle = tcp.handle();
    // Two idle connections hold both slots; a third is closed at once.
    let idle = [
        TcpStream::connect(tcp.local_addr()).await.unwrap(),
        TcpStream::connect(tcp.local_addr()).await.unwrap(),
    ];
    // Let the listener take them (a pause, not a bound on anything).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = TcpStream::connect(tcp.local_addr()).await.unwrap();
    let mut buf = [0; 16];
    let closed = tokio::time::timeout(Duration::from_secs(1), third.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0) | Err(_))),
        "the third connection was not closed at once: {closed:?}"
    );
    assert_eq!(handle.stats().handshakes_over_limit, 1);
    // The idle two are closed once the timeout passes.
    for mut stream in idle {
        let closed = tokio::time::timeout(WAIT_MAX, stream.read(&mut buf)).await;
        assert!(matches!(closed, Ok(Ok(0) | Err(_))), "{closed:?}");
    }
    eventually("both timeouts to be counted", || async {
        handle.stats().handshakes_timed_out == 2
    })
    .await;
    assert_eq!(handle.stats().connections_refused, 3);
    drop(tcp);
}

/// A fresh directory under the target's temp dir.
fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("archipelago-tls-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configs_load_from_pem_files_and_bad_ones_are_refused() {
    let ca = Ca::new("archipelago test CA");
    let dir = temp_dir("files");
    let (cert, key) = ca.issue(TOKYO);
    std::fs::write(dir.join("ca.pem"), &ca.pem).unwrap();
    std::fs::write(dir.join("tokyo.pem"), &cert).unwrap();
    std::fs::write(dir.join("tokyo.key"), &key).unwrap();
    let tls = TlsConfig::from_pem_files(
        dir.join("ca.pem"),
        dir.join("tokyo.pem"),
        dir.join("tokyo.key"),
    )
    .unwrap();
    assert!(tls.names(TOKYO) && !tls.names(FRANKFURT));
    let builder = TlsConfig::builder()
        .ca_pem_file(dir.join("ca.pem"))
        .unwrap();
    builder
        .identity_pem_files(dir.join("tokyo.pem"), dir.join("tokyo.key"))
        .unwrap();

    // A certificate that does not name the region bound.
    let error = TcpTransport::bind(FRANKFURT, localhost(), tls.clone())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
    let source = error.get_ref().unwrap().downcast_ref::<TlsError>().unwrap();
    assert!(matches!(source, TlsError::CertificateDoesNotName(n) if n == FRANKFURT));
    // A region name no certificate can carry.
    let error = TcpTransport::bind("eu central", localhost(), tls.clone())
        .await
        .unwrap_err();
    let source = error.get_ref().unwrap().downcast_ref::<TlsError>().unwrap();
    assert!(matches!(source, TlsError::NameNotDns(_)), "{source}");
    // Files that are missing or not PEM.
    assert!(matches!(
        TlsConfig::from_pem_files(
            dir.join("nope.pem"),
            dir.join("tokyo.pem"),
            dir.join("tokyo.key")
        ),
        Err(TlsError::Read { .. })
    ));
    assert!(matches!(
        TlsConfig::from_pem(b"not pem", cert.as_bytes(), key.as_bytes()),
        Err(TlsError::Pem { .. })
    ));
    assert!(matches!(
        TlsConfig::from_pem(ca.pem.as_bytes(), cert.as_bytes(), b""),
        Err(TlsError::Pem { .. })
    ));
    // A key that is not the certificate's.
    let (_, other_key) = ca.issue(TOKYO);
    assert!(matches!(
        TlsConfig::from_pem(ca.pem.as_bytes(), cert.as_bytes(), other_key.as_bytes()),
        Err(TlsError::Identity(_))
    ));
    std::fs::remove_dir_all(dir).unwrap();
}

/// Rotation without a restart: Frankfurt trusts only the old CA, so Tokyo,
/// whose certificate comes from the new one, is refused; once Frankfurt
/// reloads a bundle holding both, Tokyo's next dial gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_ca_bundle_applies_to_the_next_connections() {
    let old = Ca::new("old CA");
    let new = Ca::new("new CA");
    let both = format!("{}{}", old.pem, new.pem);
    let frankfurt_tcp = TcpTransport::bind(FRANKFURT, localhost(), old.tls(FRANKFURT, &old.pem))
        .await
        .unwrap();
    let tokyo_tcp = TcpTransport::bind(TOKYO, localhost(), new.tls(TOKYO, &both))
        .await
        .unwrap();
    let (th, fh) = (tokyo_tcp.handle(), frankfurt_tcp.handle());
    frankfurt_tcp.add_peer(TOKYO, tokyo_tcp.local_addr());
    tokyo_tcp.add_peer(FRANKFURT, frankfurt_tcp.local_addr());
    let tokyo = region(TOKYO, tokyo_tcp);
    let frankfurt = region(FRANKFURT, frankfurt_tcp);
    eventually("Frankfurt to refuse the new CA's certificate", || async {
        fh.stats().tls_refused.untrusted_certificate >= 1
    })
    .await;
    assert_eq!(fh.stats().connections_accepted, 0);

    // Frankfurt keeps its certificate and trusts both CAs.
    let (cert, key) = old.issue(FRANKFURT);
    let rotated = TlsConfig::from_pem(both.as_bytes(), cert.as_bytes(), key.as_bytes()).unwrap();
    assert!(matches!(
        fh.reload_tls(new.tls(TOKYO, &both)),
        Err(TlsError::CertificateDoesNotName(_))
    ));
    fh.reload_tls(rotated).unwrap();
    hit(&tokyo, 7).await;
    eventually("Tokyo's write to reach Frankfurt", || async {
        hits(&frankfurt).await == 7
    })
    .await;
    assert_eq!(fh.stats().connections_accepted, 1);
    assert_eq!(th.stats().connections_dialed, 1);
    tokyo.shutdown().await;
    frankfurt.shutdown().await;
}
