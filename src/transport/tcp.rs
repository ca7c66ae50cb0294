//! Regions on different machines, over TCP: mutual TLS 1.3 by default,
//! plaintext only when asked for by name.
//!
//! [`TcpTransport::bind`] listens on an address as a region, with the
//! region's [`TlsConfig`] (feature `tls`, on by default); its peers must
//! present certificates from the same CA naming the regions they claim.
//! [`TcpTransport::add_peer`] names a peer region and the address it listens
//! on. Each pair of regions keeps one connection: the region whose name
//! sorts lower dials, the other accepts. The dialer reconnects, with capped
//! exponential backoff ([`TcpTransport::RECONNECT_DELAY_MIN`] doubling to
//! [`TcpTransport::RECONNECT_DELAY_MAX`]), for as long as the transport
//! lives.
//!
//! ```
//! use archipelago::transport::{TcpTransport, Transport, TransportEvent};
//!
//! let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! runtime.block_on(async {
//!     // Plaintext, for brevity: see `tests/tls.rs` and `examples/tls_regions.rs`
//!     // for the same over mutual TLS (`TcpTransport::bind`).
//!     let localhost = "127.0.0.1:0".parse().unwrap();
//!     let mut tokyo = TcpTransport::insecure_plaintext("ap-northeast", localhost).await?;
//!     let mut frankfurt = TcpTransport::insecure_plaintext("eu-central", localhost).await?;
//!     frankfurt.add_peer("ap-northeast", tokyo.local_addr());
//!     tokyo.add_peer("eu-central", frankfurt.local_addr()); // "ap-…" < "eu-…": Tokyo dials
//!
//!     assert_eq!(tokyo.recv().await, Some(TransportEvent::Up("eu-central".into())));
//!     assert_eq!(frankfurt.recv().await, Some(TransportEvent::Up("ap-northeast".into())));
//!
//!     tokyo.send("eu-central", b"delta".to_vec());
//!     assert_eq!(
//!         frankfurt.recv().await,
//!         Some(TransportEvent::Frame { from: "ap-northeast".into(), frame: b"delta".to_vec() })
//!     );
//!     assert_eq!(tokyo.stats().frames_sent, 1);
//!     assert_eq!(frankfurt.stats().bytes_received, 5);
//!     Ok::<(), std::io::Error>(())
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A [`TcpTransport`] handed to a [`Region`](crate::region::Region) is still
//! reachable through a [`TcpHandle`] ([`TcpTransport::handle`]): to add
//! peers later, to reload the TLS config and to read the [`TcpStats`].
//!
//! [`TcpTransport`] documents the protocol, the guarantees and the limits;
//! [`TlsConfig`]'s module page the identity rules and certificate rotation.
//!
//! [`TlsConfig`]: super::TlsConfig

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

#[cfg(feature = "tls")]
use super::tls::{self, TlsConfig, TlsError, TlsFailure};
use super::{Transport, TransportEvent};
use crate::wire::FRAME_BYTES_MAX;

mod connection;
mod handshake;

use handshake::{HandshakeError, accept_loop, dial_loop};

/// The magic bytes that open every hello.
pub const TCP_MAGIC: [u8; 8] = *b"ARCHIPEL";

/// The version of the TCP protocol (handshake and framing) this build
/// speaks; a hello with another version is refused.
pub const TCP_PROTOCOL_VERSION: u16 = 1;

/// A region's transport over TCP: one connection per pair of regions,
/// dialed by the region whose name sorts lower, redialed while it lives.
///
/// # Security
///
/// [`TcpTransport::bind`] (feature `tls`) runs every connection over
/// **mutual TLS 1.3**: a peer is accepted only if its certificate chains to
/// the configured CA bundle and names the region it claims (see
/// [`TlsConfig`](super::TlsConfig)). A peer that fails gets no frame through
/// to the engine: its connection is closed before the engine hears of it
/// (no [`TransportEvent::Up`]), counted in [`TcpStats::tls_refused`] by
/// reason, and logged at `warn` ("rejected input") with the reason.
///
/// [`TcpTransport::insecure_plaintext`] runs the same protocol over plain
/// TCP: **no authentication and no encryption**. Any host that can reach
/// the port can claim a configured peer's name (its connection then
/// replaces the real peer's until that one reconnects) and read or forge
/// the traffic. Use it only on a private network you trust, or inside a
/// tunnel (WireGuard, an mTLS sidecar).
///
/// # Protocol
///
/// All integers are little-endian. Under TLS, everything below runs inside
/// the TLS session, which is established first.
///
/// 1. **Handshake.** The dialer sends a hello: the magic bytes
///    [`TCP_MAGIC`], a `u16` protocol version ([`TCP_PROTOCOL_VERSION`]),
///    its region name as a `u16` length (1 to [`TcpTransport::NAME_BYTES_MAX`])
///    and that many bytes of UTF-8. The acceptor checks it and answers with
///    its own hello; the dialer checks that it reached the region it meant
///    to. The acceptor refuses (closes the connection, counted in
///    [`TcpStats::connections_refused`] and logged at `warn` as "rejected
///    input") a wrong magic, a version it does not speak, a name that is not
///    UTF-8, not a configured peer or not one that should dial it, under TLS
///    a name the client's certificate does not carry, and a handshake (TCP,
///    TLS and hellos) not complete within [`TcpConfig::handshake_timeout`].
/// 2. **Frames**, each way: a `u32` length, then that many bytes. A length
///    of 0 or above [`wire::FRAME_BYTES_MAX`](crate::wire::FRAME_BYTES_MAX)
///    closes the connection (counted in [`TcpStats::frames_refused`]); the
///    frame's buffer grows with the bytes that arrive, never from the length
///    alone.
///
/// # Guarantees
///
/// - **Events.** After a handshake the engine gets [`TransportEvent::Up`],
///   then the peer's frames in order, then [`TransportEvent::Down`] when the
///   connection ends. A new connection from a peer already connected
///   replaces the old one: the engine sees `Down` for the old one, then `Up`
///   for the new one, never the other way round, and no frame of the old
///   one after that `Up` (what it had read but not delivered is dropped).
/// - **`send` never waits; a full send queue drops.** Each connection has
///   a queue of at most [`TcpConfig::send_queue_bytes_max`] bytes (each
///   frame counted as its length plus [`TcpTransport::QUEUE_ENTRY_BYTES`]),
///   drained by a writer that batches frames into few writes (flushing when
///   the queue is empty; `TCP_NODELAY` is set). A frame that would take the
///   queue past its bound is dropped, except into an empty queue (so one
///   frame longer than the bound still goes). A frame to a peer not
///   connected, to a full queue, empty or longer than `FRAME_BYTES_MAX`, or
///   left in the queue when the connection ends is dropped and counted in
///   [`TcpStats::frames_dropped`]; the engine retransmits, and past its own
///   outbox bound falls back to anti-entropy. A slow peer therefore costs
///   at most the bound, never more.
/// - **A full receive queue pushes back.** Frames read from a peer and not
///   yet taken by [`recv`](Transport::recv) hold at most
///   [`TcpConfig::recv_queue_bytes_max`] bytes per peer (counted the same
///   way; a frame longer than the bound waits until that peer has nothing
///   else queued). When a peer's share is full, reading from its socket
///   pauses (TCP slows the sender down) rather than buffering without
///   bound; other peers go on. All peers' events also share one channel
///   of [`TcpTransport::EVENTS_LEN_MAX`] events.
/// - **Bounded handshakes.** At most [`TcpConfig::pending_handshakes_max`]
///   inbound connections may be in their handshake at once; more are
///   closed at once (counted in [`TcpStats::handshakes_over_limit`]). A
///   handshake that takes longer than [`TcpConfig::handshake_timeout`] is
///   closed (counted in [`TcpStats::handshakes_timed_out`]).
/// - **Dropping** the transport (as a region's engine does when it stops)
///   stops every task it started: the listener, the dialers and the
///   connections, which the peers see close. A [`TcpHandle`] does not keep
///   them alive.
///
/// # Known limits
///
/// - A host that holds all [`TcpConfig::pending_handshakes_max`] handshake
///   slots with idle connections keeps real peers out for up to
///   [`TcpConfig::handshake_timeout`] at a time (there is no per-address
///   limit).
/// - Per peer, memory is bounded by the two queue bounds plus one frame
///   being read and the 64 KiB read and write buffers (and, under TLS,
///   rustls' record buffers).
/// - A connection whose peer vanished without closing it is noticed only
///   when TCP gives up on a write (no keepalive, no idle timeout).
/// - Dropping the transport stops its tasks the next time the runtime runs
///   them: the port is free once the runtime has polled the listener's task
///   again, not at the drop itself.
/// - `frames_sent` counts frames handed to the socket's (or TLS session's)
///   buffer; frames lost in it when a connection fails are not counted as
///   dropped.
pub struct TcpTransport {
    handle: TcpHandle,
    events: mpsc::Receiver<Event>,
    /// Never sent on: dropping it tells every task to stop.
    _shutdown: watch::Sender<()>,
}

/// The limits of a [`TcpTransport`], each with its unit in its name.
/// [`TcpConfig::default`] is safe for regions on the open internet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpConfig {
    /// How long a connection may take to connect and complete its
    /// handshake (TCP, TLS and hellos), either way.
    pub handshake_timeout: Duration,
    /// Inbound connections that may be in their handshake at once; more
    /// are closed at once.
    pub pending_handshakes_max: usize,
    /// Bytes one connection's send queue holds; a frame that does not fit
    /// is dropped (see [`TcpTransport`]'s guarantees).
    pub send_queue_bytes_max: usize,
    /// Bytes of one peer's frames read and waiting for
    /// [`recv`](Transport::recv); when full, reading from that peer pauses.
    pub recv_queue_bytes_max: usize,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            handshake_timeout: Duration::from_secs(5),
            pending_handshakes_max: 64,
            send_queue_bytes_max: 16 << 20,
            recv_queue_bytes_max: 16 << 20,
        }
    }
}

impl TcpConfig {
    fn check(&self) -> io::Result<()> {
        let invalid = |what: &str| {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("TcpConfig::{what} must be above 0"),
            ))
        };
        if self.handshake_timeout.is_zero() {
            return invalid("handshake_timeout");
        }
        if self.pending_handshakes_max == 0 {
            return invalid("pending_handshakes_max");
        }
        if self.send_queue_bytes_max == 0 {
            return invalid("send_queue_bytes_max");
        }
        if self.recv_queue_bytes_max == 0 {
            return invalid("recv_queue_bytes_max");
        }
        Ok(())
    }

    /// The receive bound as semaphore permits (one per byte).
    fn recv_permits(&self) -> u32 {
        let max = self.recv_queue_bytes_max.min(Semaphore::MAX_PERMITS);
        u32::try_from(max).unwrap_or(u32::MAX)
    }
}

/// A handle on a [`TcpTransport`] that stays usable once the transport is
/// handed to a region: add peers, reload the TLS config, read counters.
/// Clones share the transport; a handle does not keep the transport's
/// tasks running.
#[derive(Clone)]
pub struct TcpHandle {
    shared: Arc<Shared>,
}

/// Counters of a [`TcpTransport`], since it was bound (but
/// [`send_queue_bytes`](TcpStats::send_queue_bytes), a level).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Frames written to a connection.
    pub frames_sent: u64,
    /// Bytes of the frames written (length prefixes not included).
    pub bytes_sent: u64,
    /// Frames read from a connection and handed on to `recv`.
    pub frames_received: u64,
    /// Bytes of the frames read (length prefixes not included).
    pub bytes_received: u64,
    /// Frames given to `send` that were not written: no connection, a full
    /// queue, a bad length, or still queued when the connection ended.
    pub frames_dropped: u64,
    /// Length prefixes refused (0 or above the frame limit); each closed
    /// its connection.
    pub frames_refused: u64,
    /// Inbound connections whose handshake succeeded.
    pub connections_accepted: u64,
    /// Outbound connections whose handshake succeeded.
    pub connections_dialed: u64,
    /// Inbound connections refused or failed during the handshake, for
    /// any reason (those below included).
    pub connections_refused: u64,
    /// Handshakes (inbound or outbound) not complete within
    /// [`TcpConfig::handshake_timeout`].
    pub handshakes_timed_out: u64,
    /// Inbound connections closed at once because
    /// [`TcpConfig::pending_handshakes_max`] handshakes were under way.
    pub handshakes_over_limit: u64,
    /// Connections (inbound or outbound) this transport closed because the
    /// peer's TLS identity failed its checks, by reason.
    pub tls_refused: TlsRefusals,
    /// Bytes queued to send, over all connections, now.
    pub send_queue_bytes: u64,
}

/// Connections refused for their peer's TLS identity, by reason (see
/// [`TcpStats::tls_refused`]). Always zero on a plaintext transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TlsRefusals {
    /// The client presented no certificate.
    pub no_certificate: u64,
    /// The certificate does not chain to the CA bundle, or is expired, not
    /// yet valid, badly signed or malformed.
    pub untrusted_certificate: u64,
    /// The certificate chains to the CA but does not name the region the
    /// peer claims in its hello (as acceptor) or the region dialled (as
    /// dialer).
    pub wrong_name: u64,
    /// Not a TLS 1.3 handshake this side can complete (plaintext or
    /// garbage, an old protocol version, no common cipher suite).
    pub handshake_failed: u64,
}

impl TlsRefusals {
    /// All refusals, whatever the reason.
    pub fn total(&self) -> u64 {
        self.no_certificate + self.untrusted_certificate + self.wrong_name + self.handshake_failed
    }
}

#[derive(Default)]
struct Counters {
    frames_sent: AtomicU64,
    bytes_sent: AtomicU64,
    frames_received: AtomicU64,
    bytes_received: AtomicU64,
    frames_dropped: AtomicU64,
    frames_refused: AtomicU64,
    connections_accepted: AtomicU64,
    connections_dialed: AtomicU64,
    connections_refused: AtomicU64,
    handshakes_timed_out: AtomicU64,
    handshakes_over_limit: AtomicU64,
    tls_no_certificate: AtomicU64,
    tls_untrusted_certificate: AtomicU64,
    tls_wrong_name: AtomicU64,
    tls_handshake_failed: AtomicU64,
}

/// What the transport hands `recv`, with the receive-queue bytes it holds
/// (released when `recv` takes it).
struct Event {
    event: TransportEvent,
    _held: Option<OwnedSemaphorePermit>,
}

/// How connections are secured.
enum Security {
    Plaintext,
    #[cfg(feature = "tls")]
    Tls(Mutex<TlsConfig>),
}

struct Shared {
    name: String,
    local_addr: SocketAddr,
    config: TcpConfig,
    security: Security,
    runtime: tokio::runtime::Handle,
    events: mpsc::Sender<Event>,
    shutdown: watch::Receiver<()>,
    handshakes: Arc<Semaphore>,
    peers: Mutex<BTreeMap<String, Peer>>,
    next_connection: AtomicU64,
    counters: Counters,
}

/// A configured peer.
struct Peer {
    addr: SocketAddr,
    /// Whether a dialer task runs for it (we dial peers that sort higher).
    dialing: bool,
    connection: Option<Connection>,
}

/// The live connection to a peer.
struct Connection {
    id: u64,
    queue: mpsc::UnboundedSender<Vec<u8>>,
    /// Bytes in `queue` (frames plus `QUEUE_ENTRY_BYTES` each).
    queued_bytes: Arc<AtomicUsize>,
    /// Dropping it ends the connection's task (which then reports `Down`).
    kill: Option<oneshot::Sender<()>>,
}

impl TcpTransport {
    /// Events (mostly frames) of all peers waiting for
    /// [`recv`](Transport::recv); when full, reading from the sockets
    /// pauses.
    pub const EVENTS_LEN_MAX: usize = 1024;

    /// Bytes a queued frame is charged beyond its length (its buffer's
    /// header and the queue's slot), so that a flood of tiny frames is
    /// bounded too.
    pub const QUEUE_ENTRY_BYTES: usize = 64;

    /// The longest region name a hello carries, in bytes.
    pub const NAME_BYTES_MAX: usize = 255;

    /// The first wait before a dialer tries again.
    pub const RECONNECT_DELAY_MIN: Duration = Duration::from_millis(50);

    /// The longest wait between two attempts of a dialer.
    pub const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(2);

    /// Listens on `addr` (port 0 picks a free port) as the region `name`,
    /// over mutual TLS 1.3 with `tls`, and the default [`TcpConfig`]. The
    /// listener and every connection run as tasks on the current tokio
    /// runtime, until the transport is dropped.
    ///
    /// # Errors
    /// The listener's I/O error, or [`io::ErrorKind::InvalidInput`] (its
    /// source a [`TlsError`]) when `name` is empty, longer than
    /// [`TcpTransport::NAME_BYTES_MAX`] bytes, not a DNS name, or not named
    /// by `tls`'s certificate.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    #[cfg(feature = "tls")]
    pub async fn bind(name: &str, addr: SocketAddr, tls: TlsConfig) -> io::Result<TcpTransport> {
        Self::bind_with_config(name, addr, tls, TcpConfig::default()).await
    }

    /// [`TcpTransport::bind`] with other limits than the default ones.
    ///
    /// # Errors
    /// As [`TcpTransport::bind`], and [`io::ErrorKind::InvalidInput`] for a
    /// limit of 0.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    #[cfg(feature = "tls")]
    pub async fn bind_with_config(
        name: &str,
        addr: SocketAddr,
        tls: TlsConfig,
        config: TcpConfig,
    ) -> io::Result<TcpTransport> {
        check_name(name)?;
        tls.check_names(name).map_err(invalid_tls)?;
        Self::start(name, addr, Security::Tls(Mutex::new(tls)), config).await
    }

    /// Listens on `addr` as the region `name` over **plain TCP: no
    /// authentication, no encryption**. Any host that reaches the port can
    /// claim to be a configured peer and read or forge what it carries:
    /// only for a private network you trust, or inside a tunnel. The
    /// default [`TcpConfig`]; otherwise as [`TcpTransport::bind`].
    ///
    /// # Errors
    /// The listener's I/O error, or [`io::ErrorKind::InvalidInput`] when
    /// `name` is empty or longer than [`TcpTransport::NAME_BYTES_MAX`]
    /// bytes.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub async fn insecure_plaintext(name: &str, addr: SocketAddr) -> io::Result<TcpTransport> {
        Self::insecure_plaintext_with_config(name, addr, TcpConfig::default()).await
    }

    /// [`TcpTransport::insecure_plaintext`] with other limits than the
    /// default ones.
    ///
    /// # Errors
    /// As [`TcpTransport::insecure_plaintext`], and
    /// [`io::ErrorKind::InvalidInput`] for a limit of 0.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub async fn insecure_plaintext_with_config(
        name: &str,
        addr: SocketAddr,
        config: TcpConfig,
    ) -> io::Result<TcpTransport> {
        check_name(name)?;
        Self::start(name, addr, Security::Plaintext, config).await
    }

    async fn start(
        name: &str,
        addr: SocketAddr,
        security: Security,
        config: TcpConfig,
    ) -> io::Result<TcpTransport> {
        config.check()?;
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let (events_tx, events) = mpsc::channel(Self::EVENTS_LEN_MAX);
        let (shutdown_tx, shutdown) = watch::channel(());
        let tls = !matches!(security, Security::Plaintext);
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            local_addr,
            handshakes: Arc::new(Semaphore::new(config.pending_handshakes_max)),
            config,
            security,
            runtime: tokio::runtime::Handle::current(),
            events: events_tx,
            shutdown,
            peers: Mutex::new(BTreeMap::new()),
            next_connection: AtomicU64::new(0),
            counters: Counters::default(),
        });
        shared.spawn(accept_loop(Arc::clone(&shared), listener));
        if tls {
            tracing::info!(region = name, %local_addr, "tcp transport listening (mutual TLS)");
        } else {
            tracing::warn!(region = name, %local_addr, "tcp transport listening in insecure plaintext: no authentication, no encryption");
        }
        Ok(TcpTransport {
            handle: TcpHandle { shared },
            events,
            _shutdown: shutdown_tx,
        })
    }

    /// A handle to add peers, reload TLS and read counters once the
    /// transport is handed to a region.
    pub fn handle(&self) -> TcpHandle {
        self.handle.clone()
    }

    /// The address the transport listens on (with the port picked, if 0
    /// was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }

    /// See [`TcpHandle::add_peer`].
    pub fn add_peer(&self, name: &str, addr: SocketAddr) {
        self.handle.add_peer(name, addr);
    }

    /// The transport's counters.
    pub fn stats(&self) -> TcpStats {
        self.handle.stats()
    }
}

#[cfg(feature = "tls")]
fn invalid_tls(error: TlsError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, error)
}

impl TcpHandle {
    /// This region's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The address the transport listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The limits the transport runs with.
    pub fn config(&self) -> &TcpConfig {
        &self.shared.config
    }

    /// Whether connections run over mutual TLS (false for
    /// [`TcpTransport::insecure_plaintext`]).
    pub fn is_tls(&self) -> bool {
        !matches!(self.shared.security, Security::Plaintext)
    }

    /// Replaces the TLS config (CA bundle, certificate and key) without a
    /// restart. Connections that start afterwards, either way, use the new
    /// one; established connections keep the identity they authenticated
    /// with until they end.
    ///
    /// # Errors
    /// [`TlsError::CertificateDoesNotName`] when the new certificate does
    /// not name this region, [`TlsError::Plaintext`] on a plaintext
    /// transport; the old config stays.
    #[cfg(feature = "tls")]
    pub fn reload_tls(&self, tls: TlsConfig) -> Result<(), TlsError> {
        let Security::Tls(current) = &self.shared.security else {
            return Err(TlsError::Plaintext);
        };
        tls.check_names(&self.shared.name)?;
        *current.lock().unwrap_or_else(PoisonError::into_inner) = tls;
        tracing::info!(region = %self.shared.name, "TLS config reloaded: applies to new connections");
        Ok(())
    }

    /// Makes `name`, listening on `addr`, a peer: if `name` sorts above this
    /// region's name, this transport dials it (and keeps redialing); else
    /// it accepts `name`'s connections. Adding a peer again updates its
    /// address (a connection to the old address is closed). This region's
    /// own name is ignored, with a warning. Once the transport is dropped,
    /// this does nothing.
    pub fn add_peer(&self, name: &str, addr: SocketAddr) {
        let shared = &self.shared;
        if name == shared.name {
            tracing::warn!(region = %shared.name, "add_peer: a region is not its own peer");
            return;
        }
        if let Err(error) = check_name(name) {
            tracing::warn!(region = %shared.name, peer = name, %error, "add_peer: the name cannot be sent in a hello");
        }
        #[cfg(feature = "tls")]
        if let (Security::Tls(_), Err(error)) = (&shared.security, tls::server_name(name)) {
            tracing::warn!(region = %shared.name, peer = name, %error, "add_peer: no certificate can name this peer");
        }
        let dials = shared.name.as_str() < name;
        let mut peers = shared.lock();
        let peer = peers.entry(name.to_owned()).or_insert(Peer {
            addr,
            dialing: false,
            connection: None,
        });
        if peer.addr != addr {
            peer.addr = addr;
            if let Some(connection) = peer.connection.as_mut().filter(|_| dials) {
                // Close it; the dialer reads the new address on its next
                // attempt.
                connection.kill = None;
            }
        }
        if dials && !peer.dialing {
            peer.dialing = true;
            shared.spawn(dial_loop(Arc::clone(shared), name.to_owned()));
        }
        drop(peers);
        tracing::info!(region = %shared.name, peer = name, %addr, dials, "peer added");
    }

    /// The configured peers, connected or not.
    pub fn peers(&self) -> Vec<String> {
        self.shared.lock().keys().cloned().collect()
    }

    /// The transport's counters.
    pub fn stats(&self) -> TcpStats {
        let c = &self.shared.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let send_queue_bytes = self
            .shared
            .lock()
            .values()
            .filter_map(|p| p.connection.as_ref())
            .map(|c| c.queued_bytes.load(Ordering::Relaxed) as u64)
            .sum();
        TcpStats {
            frames_sent: get(&c.frames_sent),
            bytes_sent: get(&c.bytes_sent),
            frames_received: get(&c.frames_received),
            bytes_received: get(&c.bytes_received),
            frames_dropped: get(&c.frames_dropped),
            frames_refused: get(&c.frames_refused),
            connections_accepted: get(&c.connections_accepted),
            connections_dialed: get(&c.connections_dialed),
            connections_refused: get(&c.connections_refused),
            handshakes_timed_out: get(&c.handshakes_timed_out),
            handshakes_over_limit: get(&c.handshakes_over_limit),
            tls_refused: TlsRefusals {
                no_certificate: get(&c.tls_no_certificate),
                untrusted_certificate: get(&c.tls_untrusted_certificate),
                wrong_name: get(&c.tls_wrong_name),
                handshake_failed: get(&c.tls_handshake_failed),
            },
            send_queue_bytes,
        }
    }
}

impl Transport for TcpTransport {
    fn local(&self) -> &str {
        &self.handle.shared.name
    }

    fn peers(&self) -> Vec<String> {
        self.handle.peers()
    }

    fn send(&self, peer: &str, frame: Vec<u8>) {
        let shared = &self.handle.shared;
        let len = frame.len();
        let dropped = if len == 0 || len > FRAME_BYTES_MAX {
            Some("bad frame length")
        } else {
            match shared.lock().get(peer).and_then(|p| p.connection.as_ref()) {
                None => Some("not connected"),
                Some(connection) => shared.enqueue(connection, frame),
            }
        };
        if let Some(cause) = dropped {
            Counters::bump(&shared.counters.frames_dropped, 1);
            tracing::debug!(region = %shared.name, peer, bytes = len, cause, "frame dropped");
        }
    }

    async fn recv(&mut self) -> Option<TransportEvent> {
        // Dropping the permit gives the frame's bytes back to its peer's
        // receive queue.
        self.events.recv().await.map(|event| event.event)
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        // The tasks stop when `_shutdown` drops; close the queues now so
        // that nothing more is accepted meanwhile.
        let shared = &self.handle.shared;
        for peer in shared.lock().values_mut() {
            peer.connection = None;
        }
        tracing::info!(region = %shared.name, "tcp transport closed");
    }
}

impl fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.handle.fmt(f)
    }
}

impl fmt::Debug for TcpHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpTransport")
            .field("local", &self.shared.name)
            .field("local_addr", &self.shared.local_addr)
            .field("tls", &self.is_tls())
            .field("peers", &self.peers())
            .finish_non_exhaustive()
    }
}

fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name.len() > TcpTransport::NAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a region name must have 1 to {} bytes, {name:?} has {}",
                TcpTransport::NAME_BYTES_MAX,
                name.len()
            ),
        ));
    }
    Ok(())
}

impl Counters {
    fn bump(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }
}

/// The bytes a queued frame of `len` bytes is charged.
fn charge(len: usize) -> usize {
    len.saturating_add(TcpTransport::QUEUE_ENTRY_BYTES)
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Peer>> {
        // Every mutation completes under the lock: poisoning is ignored.
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `task` until it ends or the transport is dropped.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut shutdown = self.shutdown.clone();
        self.runtime.spawn(async move {
            tokio::select! {
                // Never sent on: this returns once the sender is dropped.
                _ = shutdown.changed() => {}
                () = task => {}
            }
        });
    }

    /// Queues `frame` on `connection` if it fits its byte bound (or the
    /// queue is empty); else why it was dropped.
    fn enqueue(&self, connection: &Connection, frame: Vec<u8>) -> Option<&'static str> {
        let cost = charge(frame.len());
        let max = self.config.send_queue_bytes_max;
        let fits =
            connection
                .queued_bytes
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                    (queued == 0 || queued.saturating_add(cost) <= max).then(|| queued + cost)
                });
        if fits.is_err() {
            return Some("send queue full");
        }
        if connection.queue.send(frame).is_err() {
            connection.queued_bytes.fetch_sub(cost, Ordering::AcqRel);
            return Some("connection closing");
        }
        None
    }

    /// Makes the connection `id` the one to `peer` and reports it `Up`
    /// (after `Down` for the connection it replaces). `None` when the
    /// transport is closing or `peer` is no longer configured.
    async fn install(
        &self,
        peer: &str,
        id: u64,
        queue: mpsc::UnboundedSender<Vec<u8>>,
        queued_bytes: Arc<AtomicUsize>,
    ) -> Option<oneshot::Receiver<()>> {
        // Reserve before locking: the events are sent under the lock, so
        // that no other connection's events come between.
        let down = self.events.reserve().await.ok()?;
        let up = self.events.reserve().await.ok()?;
        let (kill, killed) = oneshot::channel();
        let mut peers = self.lock();
        let slot = peers.get_mut(peer)?;
        let connection = Connection {
            id,
            queue,
            queued_bytes,
            kill: Some(kill),
        };
        if slot.connection.replace(connection).is_some() {
            tracing::info!(region = %self.name, peer, "connection replaced by a new one");
            down.send(Event {
                event: TransportEvent::Down(peer.to_owned()),
                _held: None,
            });
        }
        up.send(Event {
            event: TransportEvent::Up(peer.to_owned()),
            _held: None,
        });
        Some(killed)
    }

    /// Reports a frame of connection `id` from `peer`, unless that
    /// connection was replaced: the check and the send happen under the
    /// lock `install` reports under, so no frame of a replaced connection
    /// follows its successor's `Up`. False once it was replaced.
    async fn deliver(
        &self,
        peer: &str,
        id: u64,
        frame: Vec<u8>,
        held: OwnedSemaphorePermit,
    ) -> bool {
        let Ok(permit) = self.events.reserve().await else {
            return false;
        };
        let peers = self.lock();
        if !is_current(&peers, peer, id) {
            return false;
        }
        permit.send(Event {
            event: TransportEvent::Frame {
                from: peer.to_owned(),
                frame,
            },
            _held: Some(held),
        });
        true
    }

    /// Reports `peer` `Down` if `id` is still its connection.
    async fn uninstall(&self, peer: &str, id: u64) {
        let current = |peers: &BTreeMap<String, Peer>| is_current(peers, peer, id);
        if !current(&self.lock()) {
            return; // replaced: its successor owns the peer's state
        }
        let Ok(permit) = self.events.reserve().await else {
            return;
        };
        let mut peers = self.lock();
        if current(&peers) {
            if let Some(slot) = peers.get_mut(peer) {
                slot.connection = None;
            }
            permit.send(Event {
                event: TransportEvent::Down(peer.to_owned()),
                _held: None,
            });
        }
    }

    /// Why `name`, having sent a valid hello, may not connect to us.
    fn refusal(&self, name: &str) -> Option<String> {
        let peers = self.lock();
        if !peers.contains_key(name) {
            Some(format!("unknown region {name:?}"))
        } else if name > self.name.as_str() {
            Some(format!(
                "region {name:?} sorts above {:?}, so it accepts rather than dials",
                self.name
            ))
        } else {
            None
        }
    }

    /// The TLS config in force, if the transport runs TLS.
    #[cfg(feature = "tls")]
    fn tls(&self) -> Option<TlsConfig> {
        match &self.security {
            Security::Plaintext => None,
            Security::Tls(tls) => Some(tls.lock().unwrap_or_else(PoisonError::into_inner).clone()),
        }
    }

    /// Counts and logs a failed handshake (`inbound`: one we accepted).
    fn handshake_failed(
        &self,
        error: &HandshakeError,
        addr: SocketAddr,
        peer: Option<&str>,
        inbound: bool,
    ) {
        let c = &self.counters;
        if inbound {
            Counters::bump(&c.connections_refused, 1);
        }
        let peer = peer.unwrap_or("?");
        match error {
            HandshakeError::Io(error) => {
                tracing::debug!(region = %self.name, peer, %addr, %error, inbound, "handshake failed");
            }
            HandshakeError::TimedOut if inbound => {
                Counters::bump(&c.handshakes_timed_out, 1);
                tracing::warn!(region = %self.name, peer, %addr, inbound, reason = %error, "rejected input");
            }
            HandshakeError::TimedOut => {
                // A peer that is down, most likely: the dialer retries.
                Counters::bump(&c.handshakes_timed_out, 1);
                tracing::debug!(region = %self.name, peer, %addr, inbound, reason = %error, "dial timed out");
            }
            HandshakeError::Refused(reason) => {
                tracing::warn!(region = %self.name, peer, %addr, inbound, %reason, "rejected input");
            }
            #[cfg(feature = "tls")]
            HandshakeError::Tls { failure, detail } => {
                let counter = match failure {
                    TlsFailure::NoCertificate => Some(&c.tls_no_certificate),
                    TlsFailure::Untrusted => Some(&c.tls_untrusted_certificate),
                    TlsFailure::WrongName => Some(&c.tls_wrong_name),
                    TlsFailure::Handshake => Some(&c.tls_handshake_failed),
                    TlsFailure::PeerRefused => None, // counted on its side
                };
                if let Some(counter) = counter {
                    Counters::bump(counter, 1);
                    tracing::warn!(region = %self.name, peer, %addr, inbound, reason = %failure, %detail, "rejected input: TLS peer refused");
                } else {
                    tracing::warn!(region = %self.name, peer, %addr, inbound, reason = %failure, %detail, "TLS handshake refused by the peer");
                }
            }
        }
    }
}

/// True when `id` is the connection to `peer`.
fn is_current(peers: &BTreeMap<String, Peer>, peer: &str, id: u64) -> bool {
    peers
        .get(peer)
        .and_then(|p| p.connection.as_ref())
        .is_some_and(|c| c.id == id)
}
