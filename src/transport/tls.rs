//! Mutual TLS 1.3 for [`TcpTransport`](super::TcpTransport) (feature `tls`).
//!
//! [`TlsConfig`] documents what is checked and how to rotate certificates.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;

#[cfg(doc)]
use super::TcpTransport;

/// A region's TLS identity and trust, for [`TcpTransport::bind`]: the CA
/// bundle its peers' certificates must chain to, and its own certificate
/// chain and private key. Cheap to clone.
///
/// It is built from PEM, in memory or from files, in two typed steps (CA
/// first, then the identity), so a config that would skip verifying the
/// peer cannot be built at all:
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (ca_pem, cert_pem, key_pem) = archipelago_doc_certs();
/// use archipelago::transport::TlsConfig;
///
/// let tls = TlsConfig::builder()
///     .ca_pem(ca_pem.as_bytes())?           // whom to trust
///     .identity_pem(cert_pem.as_bytes(), key_pem.as_bytes())?; // who we are
/// assert!(tls.names("ap-northeast"));
/// # Ok(()) }
/// # fn archipelago_doc_certs() -> (String, String, String) {
/// #     let ca_key = rcgen::KeyPair::generate().unwrap();
/// #     let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
/// #     ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
/// #     let ca = ca.self_signed(&ca_key).unwrap();
/// #     let issuer = rcgen::Issuer::new(rcgen::CertificateParams::new(Vec::<String>::new()).unwrap(), ca_key);
/// #     let key = rcgen::KeyPair::generate().unwrap();
/// #     let cert = rcgen::CertificateParams::new(vec!["ap-northeast".to_owned()]).unwrap()
/// #         .signed_by(&key, &issuer).unwrap();
/// #     (ca.pem(), cert.pem(), key.serialize_pem())
/// # }
/// ```
///
/// # Identity
///
/// A region's certificate names the region by a **DNS name** subject
/// alternative name equal to its region name (`ap-northeast`), so under
/// TLS a region name must be a valid DNS name (ASCII letters, digits,
/// hyphens and dots; [`TcpTransport::bind`] refuses others, and refuses a certificate that does not name its own
/// region). Names match as DNS names do: without regard to ASCII case, and
/// a wildcard certificate (`*.regions.example`) names every region one
/// label below it; so do not give two regions names that differ only in
/// case, and issue wildcards only if every holder may be every region.
///
/// A peer is accepted only when both hold, on both sides of a connection:
/// - its certificate chains to the configured CA bundle (and is within its
///   validity period), checked by rustls' WebPKI verifier;
/// - its certificate names the region it claims: the dialer connects to the
///   peer's name as the TLS server name, so rustls checks the acceptor's
///   certificate against the region it meant to reach; the acceptor checks
///   the dialer's certificate against the name in the dialer's hello,
///   before answering it.
///
/// Only TLS 1.3 is spoken, with the `ring` provider's cipher suites. There
/// is no session resumption: every connection verifies the full chain
/// against the CA bundle in force when it starts.
///
/// # Rotation
///
/// [`TcpHandle::reload_tls`](super::TcpHandle::reload_tls) swaps in a new
/// config (a new CA bundle, a new certificate, or both) without a restart.
/// It applies to connections that start after it: established connections
/// keep the identity they authenticated with until they end. To roll a CA,
/// first give every region a bundle holding the old and the new CA, then
/// new certificates, then a bundle with only the new CA.
#[derive(Clone)]
pub struct TlsConfig {
    pub(crate) server: Arc<rustls::ServerConfig>,
    pub(crate) client: Arc<rustls::ClientConfig>,
    /// The end-entity certificate this region presents.
    certificate: CertificateDer<'static>,
}

/// Builds a [`TlsConfig`] in two steps: [`ca_pem`](TlsConfigBuilder::ca_pem)
/// (the verifier), then [`identity_pem`](TlsConfigBuilder::identity_pem)
/// (the certificate). Each step is a type: there is no way to skip one.
pub struct TlsConfigBuilder<State> {
    state: State,
}

/// The first state of a [`TlsConfigBuilder`]: it wants the CA bundle.
pub struct WantsCa(());

/// The second state of a [`TlsConfigBuilder`]: it has the CA bundle and
/// wants this region's certificate and key.
pub struct WantsIdentity {
    roots: Arc<RootCertStore>,
}

/// Why a [`TlsConfig`] could not be built or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// PEM text that does not parse, or that holds none of what it should.
    #[error("{what}: {reason}")]
    Pem {
        /// Which input: "CA bundle", "certificate chain" or "private key".
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A CA certificate that cannot be a trust anchor.
    #[error("CA bundle: {0}")]
    Ca(String),
    /// The certificate chain or key refused by rustls (a key that does not
    /// match the certificate, an unsupported key type).
    #[error("certificate or key: {0}")]
    Identity(String),
    /// A region name that is not a DNS name, so no certificate can name it.
    #[error("region name {0:?} is not a DNS name: no certificate can name it")]
    NameNotDns(String),
    /// This region's own certificate does not name the region.
    #[error("this region's certificate does not name {0:?}")]
    CertificateDoesNotName(String),
    /// [`reload_tls`](super::TcpHandle::reload_tls) on a transport built
    /// with [`insecure_plaintext`](super::TcpTransport::insecure_plaintext).
    #[error("this transport is plaintext: it has no TLS config to reload")]
    Plaintext,
}

impl TlsConfig {
    /// The typed builder: CA bundle first, then this region's identity.
    pub fn builder() -> TlsConfigBuilder<WantsCa> {
        TlsConfigBuilder { state: WantsCa(()) }
    }

    /// A config from PEM text in memory: `ca_pem` the CA bundle (one or
    /// more `CERTIFICATE` sections), `cert_pem` this region's certificate
    /// chain (its own certificate first, then any intermediates) and
    /// `key_pem` its private key (PKCS#8, PKCS#1 or SEC1).
    ///
    /// # Errors
    /// [`TlsError::Pem`], [`TlsError::Ca`] or [`TlsError::Identity`].
    pub fn from_pem(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<TlsConfig, TlsError> {
        Self::builder()
            .ca_pem(ca_pem)?
            .identity_pem(cert_pem, key_pem)
    }

    /// [`TlsConfig::from_pem`] from three files.
    ///
    /// # Errors
    /// [`TlsError::Read`] for a file that cannot be read, else as
    /// [`TlsConfig::from_pem`].
    pub fn from_pem_files(
        ca: impl AsRef<Path>,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<TlsConfig, TlsError> {
        Self::builder()
            .ca_pem(&read(ca.as_ref())?)?
            .identity_pem(&read(cert.as_ref())?, &read(key.as_ref())?)
    }

    /// Whether this region's certificate names `region` (as a DNS name, the
    /// way peers check it).
    pub fn names(&self, region: &str) -> bool {
        certificate_names(&self.certificate, region)
    }

    /// Checks that `region` can be named by a certificate and that ours
    /// names it.
    pub(crate) fn check_names(&self, region: &str) -> Result<(), TlsError> {
        server_name(region)?;
        if self.names(region) {
            Ok(())
        } else {
            Err(TlsError::CertificateDoesNotName(region.to_owned()))
        }
    }
}

impl TlsConfigBuilder<WantsCa> {
    /// The CA bundle, as PEM text: the certificates peers must chain to.
    ///
    /// # Errors
    /// [`TlsError::Pem`] when it holds no certificate or does not parse,
    /// [`TlsError::Ca`] for a certificate that cannot be a trust anchor.
    pub fn ca_pem(self, pem: &[u8]) -> Result<TlsConfigBuilder<WantsIdentity>, TlsError> {
        let certs = certificates(pem, "CA bundle")?;
        let mut roots = RootCertStore::empty();
        for cert in certs {
            roots
                .add(cert)
                .map_err(|error| TlsError::Ca(error.to_string()))?;
        }
        Ok(TlsConfigBuilder {
            state: WantsIdentity {
                roots: Arc::new(roots),
            },
        })
    }

    /// [`ca_pem`](Self::ca_pem) from a file.
    ///
    /// # Errors
    /// [`TlsError::Read`], else as [`ca_pem`](Self::ca_pem).
    pub fn ca_pem_file(
        self,
        path: impl AsRef<Path>,
    ) -> Result<TlsConfigBuilder<WantsIdentity>, TlsError> {
        self.ca_pem(&read(path.as_ref())?)
    }
}

impl TlsConfigBuilder<WantsIdentity> {
    /// This region's certificate chain (its own certificate first) and
    /// private key, as PEM text; completes the config.
    ///
    /// # Errors
    /// [`TlsError::Pem`] when either does not parse or holds nothing,
    /// [`TlsError::Identity`] when rustls refuses them (say, a key that does
    /// not match the certificate).
    pub fn identity_pem(self, cert_pem: &[u8], key_pem: &[u8]) -> Result<TlsConfig, TlsError> {
        let chain = certificates(cert_pem, "certificate chain")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|error| TlsError::Pem {
            what: "private key",
            reason: pem_reason(&error),
        })?;
        build(self.state.roots, chain, key)
    }

    /// [`identity_pem`](Self::identity_pem) from two files.
    ///
    /// # Errors
    /// [`TlsError::Read`], else as [`identity_pem`](Self::identity_pem).
    pub fn identity_pem_files(
        self,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<TlsConfig, TlsError> {
        self.identity_pem(&read(cert.as_ref())?, &read(key.as_ref())?)
    }
}

fn build(
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<TlsConfig, TlsError> {
    let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
    let identity = |error: rustls::Error| TlsError::Identity(error.to_string());
    let certificate = chain.first().cloned().ok_or_else(|| TlsError::Pem {
        what: "certificate chain",
        reason: "no certificate".into(),
    })?;

    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
            .build()
            .map_err(|error| TlsError::Ca(error.to_string()))?;
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(identity)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(identity)?;
    // No resumption: every connection verifies the chain against the CA
    // bundle in force (a resumed session would skip a reloaded bundle).
    server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    server.send_tls13_tickets = 0;

    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(identity)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(identity)?;
    client.resumption = rustls::client::Resumption::disabled();

    Ok(TlsConfig {
        server: Arc::new(server),
        client: Arc::new(client),
        certificate,
    })
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn certificates(pem: &[u8], what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Pem {
            what,
            reason: pem_reason(&error),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            reason: "no CERTIFICATE section".into(),
        });
    }
    Ok(certs)
}

fn pem_reason(error: &rustls::pki_types::pem::Error) -> String {
    match error {
        rustls::pki_types::pem::Error::NoItemsFound => "no section of the expected kind".into(),
        other => other.to_string(),
    }
}

/// `region` as the TLS server name a dialer asks for.
pub(crate) fn server_name(region: &str) -> Result<ServerName<'static>, TlsError> {
    DnsName::try_from(region.to_owned())
        .map(ServerName::DnsName)
        .map_err(|_| TlsError::NameNotDns(region.to_owned()))
}

/// Whether `certificate` (already verified to chain to the CA) names
/// `region`, by webpki's DNS name matching.
pub(crate) fn certificate_names(certificate: &CertificateDer<'_>, region: &str) -> bool {
    let Ok(name) = server_name(region) else {
        return false;
    };
    webpki::EndEntityCert::try_from(certificate)
        .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
}

/// Why the TLS part of a handshake failed, as counted in
/// [`TlsRefusals`](super::TlsRefusals).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TlsFailure {
    /// The peer presented no certificate.
    NoCertificate,
    /// Its certificate does not chain to the CA bundle, or is expired,
    /// not yet valid, badly signed or malformed.
    Untrusted,
    /// Its certificate chains to the CA but does not name the region it
    /// claims (or that we dialled).
    WrongName,
    /// Not a TLS 1.3 handshake we can complete (garbage, an old version,
    /// no common cipher suite).
    Handshake,
    /// The peer refused us (it sent an alert): counted on its side.
    PeerRefused,
}

impl TlsFailure {
    /// The failure behind a TLS handshake's I/O error; `None` for a plain
    /// I/O error (a reset, end of stream).
    pub(crate) fn of(error: &io::Error) -> Option<TlsFailure> {
        use rustls::{CertificateError, Error};
        let error = error.get_ref()?.downcast_ref::<Error>()?;
        Some(match error {
            Error::NoCertificatesPresented => TlsFailure::NoCertificate,
            Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => TlsFailure::WrongName,
            Error::InvalidCertificate(_) => TlsFailure::Untrusted,
            Error::AlertReceived(_) => TlsFailure::PeerRefused,
            _ => TlsFailure::Handshake,
        })
    }
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsFailure::NoCertificate => "no client certificate",
            TlsFailure::Untrusted => "certificate not trusted (another CA, expired or malformed)",
            TlsFailure::WrongName => "certificate does not name the region",
            TlsFailure::Handshake => "TLS handshake failed",
            TlsFailure::PeerRefused => "the peer refused our TLS handshake",
        })
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig").finish_non_exhaustive()
    }
}
