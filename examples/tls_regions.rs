//! Two regions over mutual TLS 1.3, and a stranger refused.
//!
//! ```text
//! cargo run --release --example tls_regions
//! ```
//!
//! The example plays the operator first: it makes a CA and one certificate
//! per region with `rcgen` (each naming its region as a DNS name), and
//! writes them as PEM files to a temporary directory. Then Tokyo and
//! Frankfurt load their files with `TlsConfig::from_pem_files`, listen on
//! two ports of 127.0.0.1 and replicate a stock counter. Last, two
//! strangers try to join Frankfurt as Tokyo: one with a certificate from
//! another CA, one with a valid certificate of this CA naming another
//! region. Both are refused during the handshake; Frankfurt's engine hears
//! of neither, and its transport counts why.

use std::error::Error;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use archipelago::crdt::PnCounter;
use archipelago::region::Region;
use archipelago::transport::{TcpTransport, TlsConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

const TOKYO: &str = "ap-northeast";
const FRANKFURT: &str = "eu-central";

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let dir = std::env::temp_dir().join(format!("archipelago-tls-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run(&dir).await;
    std::fs::remove_dir_all(&dir)?;
    result
}

async fn run(dir: &Path) -> Result<(), Box<dyn Error>> {
    // The operator: one CA, a certificate per region.
    let ca = Ca::new("archipelago example CA")?;
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.pem)?;
    let tokyo_files = ca.issue_files(dir, TOKYO, TOKYO)?;
    let frankfurt_files = ca.issue_files(dir, FRANKFURT, FRANKFURT)?;
    println!("CA and certificates written to {}", dir.display());

    // Each region loads its files and listens over mutual TLS.
    let localhost: SocketAddr = "127.0.0.1:0".parse()?;
    let tokyo_tls = TlsConfig::from_pem_files(&ca_file, &tokyo_files.0, &tokyo_files.1)?;
    let frankfurt_tls =
        TlsConfig::from_pem_files(&ca_file, &frankfurt_files.0, &frankfurt_files.1)?;
    let tokyo_tcp = TcpTransport::bind(TOKYO, localhost, tokyo_tls).await?;
    let frankfurt_tcp = TcpTransport::bind(FRANKFURT, localhost, frankfurt_tls).await?;
    tokyo_tcp.add_peer(FRANKFURT, frankfurt_tcp.local_addr());
    frankfurt_tcp.add_peer(TOKYO, tokyo_tcp.local_addr());
    let frankfurt_addr = frankfurt_tcp.local_addr();
    let frankfurt_handle = frankfurt_tcp.handle();
    let tokyo = Region::builder(TOKYO).transport(tokyo_tcp).build()?;
    let frankfurt = Region::builder(FRANKFURT)
        .transport(frankfurt_tcp)
        .build()?;

    let stock_t = tokyo.table::<String, PnCounter>("stock")?;
    let stock_f = frankfurt.table::<String, PnCounter>("stock")?;
    stock_t
        .update("matcha", |s, ctx| s.apply(|s| s.inc(ctx.replica(), 20)))
        .await?;
    stock_f
        .update("matcha", |s, ctx| s.apply(|s| s.dec(ctx.replica(), 3)))
        .await?;
    wait_until("the regions to converge", || {
        tokyo.applied() == frankfurt.applied()
    })
    .await?;
    for (name, table) in [(TOKYO, &stock_t), (FRANKFURT, &stock_f)] {
        let stock = table.read("matcha").await?.map_or(0, |s| s.value());
        println!("{name:<12} stock {stock} (20 - 3), over mutual TLS");
    }

    // Stranger 1: a transport of its own under Tokyo's name, with a
    // certificate from another CA (it trusts ours, so only Frankfurt's
    // check stands in its way).
    let other_ca = Ca::new("some other CA")?;
    let bundle = format!("{}{}", ca.pem, other_ca.pem);
    let stranger = TcpTransport::bind(TOKYO, localhost, other_ca.tls(TOKYO, &bundle)?).await?;
    stranger.add_peer(FRANKFURT, frankfurt_addr); // "ap-…" < "eu-…": it dials
    wait_until("stranger 1 to be refused", || {
        frankfurt_handle.stats().tls_refused.untrusted_certificate > 0
    })
    .await?;
    drop(stranger);
    println!("stranger 1 (Tokyo's name, another CA's certificate): refused");

    // Stranger 2: a valid certificate of our CA, for "ap-southeast",
    // claiming to be Tokyo in its hello. `TcpTransport::bind` would not
    // even start under a name its certificate lacks, so it speaks the
    // protocol by hand.
    claim_as(frankfurt_addr, &ca, "ap-southeast", TOKYO).await?;
    wait_until("stranger 2 to be refused", || {
        frankfurt_handle.stats().tls_refused.wrong_name > 0
    })
    .await?;
    println!("stranger 2 (a valid certificate for ap-southeast, claiming {TOKYO}): refused");

    let stats = frankfurt_handle.stats();
    println!(
        "{FRANKFURT} refused {} connections (TLS identity: {:?}); accepted {} (Tokyo's)",
        stats.connections_refused, stats.tls_refused, stats.connections_accepted
    );
    let engine = frankfurt.stats();
    println!(
        "{FRANKFURT}'s engine: peers {:?}, frames rejected {}: the strangers never reached it",
        engine
            .peers
            .iter()
            .map(|p| (&p.name, p.connected))
            .collect::<Vec<_>>(),
        engine.rejected_frames
    );

    tokyo.shutdown().await;
    frankfurt.shutdown().await;
    Ok(())
}

/// Polls `done` every 5 ms; an error after 10 s.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> Result<(), Box<dyn Error>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        if tokio::time::Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// A certificate authority of the example.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Result<Ca, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params.self_signed(&key)?.pem();
        Ok(Ca {
            issuer: Issuer::new(params, key),
            pem,
        })
    }

    /// A certificate naming `region` (a DNS name subject alternative name)
    /// and its key, as PEM.
    fn issue(&self, region: &str) -> Result<(String, String), rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![region.to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, region);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        Ok((
            params.signed_by(&key, &self.issuer)?.pem(),
            key.serialize_pem(),
        ))
    }

    /// [`Ca::issue`] written to `<file>.pem` and `<file>.key` in `dir`.
    fn issue_files(
        &self,
        dir: &Path,
        file: &str,
        region: &str,
    ) -> Result<(PathBuf, PathBuf), Box<dyn Error>> {
        let (cert, key) = self.issue(region)?;
        let paths = (
            dir.join(format!("{file}.pem")),
            dir.join(format!("{file}.key")),
        );
        std::fs::write(&paths.0, cert)?;
        std::fs::write(&paths.1, key)?;
        Ok(paths)
    }

    /// A config from memory: a certificate naming `region`, trusting
    /// `bundle`.
    fn tls(&self, region: &str, bundle: &str) -> Result<TlsConfig, Box<dyn Error>> {
        let (cert, key) = self.issue(region)?;
        Ok(TlsConfig::from_pem(
            bundle.as_bytes(),
            cert.as_bytes(),
            key.as_bytes(),
        )?)
    }
}

/// Connects to `addr` over TLS with a certificate of `ca` naming `region`,
/// sends a hello claiming `claim`, and returns once the connection closes.
async fn claim_as(
    addr: SocketAddr,
    ca: &Ca,
    region: &str,
    claim: &str,
) -> Result<(), Box<dyn Error>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (cert, key) = ca.issue(region)?;
    let mut roots = rustls::RootCertStore::empty();
    for root in CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
        roots.add(root?)?;
    }
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(key.as_bytes())?)?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let mut tls = connector
        .connect(ServerName::try_from(FRANKFURT)?, tcp)
        .await?;
    let mut hello = archipelago::transport::TCP_MAGIC.to_vec();
    hello.extend_from_slice(&archipelago::transport::TCP_PROTOCOL_VERSION.to_le_bytes());
    hello.extend_from_slice(&u16::try_from(claim.len())?.to_le_bytes());
    hello.extend_from_slice(claim.as_bytes());
    tls.write_all(&hello).await?;
    tls.flush().await?;
    let mut answer = [0; 64];
    // Closed (or reset) without an answer.
    let answered = matches!(tls.read(&mut answer).await, Ok(n) if n > 0);
    if answered {
        return Err("Frankfurt answered the stranger".into());
    }
    Ok(())
}
