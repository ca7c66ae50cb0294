//! Regions on different machines, over TCP.
//!
//! [`TcpTransport::bind`] listens on an address; [`TcpTransport::add_peer`]
//! names a peer region and the address it listens on. Each pair of regions
//! keeps one connection: the region whose name sorts lower dials, the other
//! accepts. The dialer reconnects, with capped exponential backoff
//! ([`TcpTransport::RECONNECT_DELAY_MIN`] doubling to
//! [`TcpTransport::RECONNECT_DELAY_MAX`]), for as long as the transport
//! lives.
//!
//! ```
//! use archipelago::transport::{TcpTransport, Transport, TransportEvent};
//!
//! let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! runtime.block_on(async {
//!     let mut tokyo = TcpTransport::bind("ap-northeast", "127.0.0.1:0".parse().unwrap()).await?;
//!     let mut frankfurt = TcpTransport::bind("eu-central", "127.0.0.1:0".parse().unwrap()).await?;
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
//! peers later and to read the [`TcpStats`].
//!
//! [`TcpTransport`] documents the protocol, the guarantees and the limits.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use super::{Transport, TransportEvent};
use crate::wire::FRAME_BYTES_MAX;

/// The magic bytes that open every hello.
pub const TCP_MAGIC: [u8; 8] = *b"ARCHIPEL";

/// The version of the TCP protocol (handshake and framing) this build
/// speaks; a hello with another version is refused.
pub const TCP_PROTOCOL_VERSION: u16 = 1;

/// A region's transport over TCP: one connection per pair of regions,
/// dialed by the region whose name sorts lower, redialed while it lives.
///
/// # Protocol
///
/// All integers are little-endian.
///
/// 1. **Handshake.** The dialer sends a hello: the magic bytes
///    [`TCP_MAGIC`], a `u16` protocol version ([`TCP_PROTOCOL_VERSION`]),
///    its region name as a `u16` length (1 to [`TcpTransport::NAME_BYTES_MAX`])
///    and that many bytes of UTF-8. The acceptor checks it and answers with
///    its own hello; the dialer checks that it reached the region it meant
///    to. The acceptor refuses (closes the connection, counted in
///    [`TcpStats::connections_refused`] and logged at `warn` as "rejected
///    input") a wrong magic, a version it does not speak, a name that is not
///    UTF-8, not a configured peer or not one that should dial it, and a
///    hello not complete within [`TcpTransport::HANDSHAKE_TIMEOUT`].
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
/// - **`send` never waits.** Each connection has a queue of
///   [`TcpTransport::SEND_QUEUE_FRAMES_MAX`] frames, drained by a writer that
///   batches them into few writes (flushing when the queue is empty;
///   `TCP_NODELAY` is set). A frame to a peer not connected, to a full
///   queue, empty or longer than `FRAME_BYTES_MAX`, or left in the queue
///   when the connection ends is dropped and counted in
///   [`TcpStats::frames_dropped`]; the engine retransmits.
/// - **Back-pressure on receive.** Frames wait in one channel of
///   [`TcpTransport::EVENTS_LEN_MAX`] events for
///   [`recv`](Transport::recv); when it is full, reading from the sockets
///   pauses (TCP slows the sender down) rather than buffering without
///   bound.
/// - **Bounded handshakes.** At most [`TcpTransport::HANDSHAKES_PENDING_MAX`]
///   inbound connections may be in their handshake at once; more are refused.
/// - **Dropping** the transport (as a region's engine does when it stops)
///   stops every task it started: the listener, the dialers and the
///   connections, which the peers see close. A [`TcpHandle`] does not keep
///   them alive.
/// - **No authentication or encryption.** Any host that can reach the port
///   can claim a configured peer's name (its connection then replaces the
///   real peer's until that one reconnects). Run it on a private network or
///   inside a tunnel (WireGuard, mTLS sidecar).
///
/// # Known limits
///
/// - A host that holds all [`TcpTransport::HANDSHAKES_PENDING_MAX`]
///   handshake slots with idle connections keeps real peers out (there is
///   no per-address limit).
/// - Memory held is bounded in frames, not bytes: up to
///   [`TcpTransport::EVENTS_LEN_MAX`] received and
///   [`TcpTransport::SEND_QUEUE_FRAMES_MAX`] queued frames per peer, each up
///   to `FRAME_BYTES_MAX`.
/// - A connection whose peer vanished without closing it is noticed only
///   when TCP gives up on a write (no keepalive, no idle timeout).
/// - Dropping the transport stops its tasks the next time the runtime runs
///   them: the port is free once the runtime has polled the listener's task
///   again, not at the drop itself.
/// - `frames_sent` counts frames handed to the socket's buffer; frames lost
///   in it when a connection fails are not counted as dropped.
pub struct TcpTransport {
    handle: TcpHandle,
    events: mpsc::Receiver<TransportEvent>,
    /// Never sent on: dropping it tells every task to stop.
    _shutdown: watch::Sender<()>,
}

/// A handle on a [`TcpTransport`] that stays usable once the transport is
/// handed to a region: add peers, read counters. Clones share the
/// transport; a handle does not keep the transport's tasks running.
#[derive(Clone)]
pub struct TcpHandle {
    shared: Arc<Shared>,
}

/// Counters of a [`TcpTransport`], since it was bound.
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
    /// Inbound connections refused during the handshake.
    pub connections_refused: u64,
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
}

struct Shared {
    name: String,
    local_addr: SocketAddr,
    runtime: tokio::runtime::Handle,
    events: mpsc::Sender<TransportEvent>,
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
    queue: mpsc::Sender<Vec<u8>>,
    /// Dropping it ends the connection's task (which then reports `Down`).
    kill: Option<oneshot::Sender<()>>,
}

impl TcpTransport {
    /// Frames one connection's send queue holds; more are dropped.
    pub const SEND_QUEUE_FRAMES_MAX: usize = 4096;

    /// Events (mostly frames) waiting for [`recv`](Transport::recv); when
    /// full, reading from the sockets pauses.
    pub const EVENTS_LEN_MAX: usize = 1024;

    /// The longest region name a hello carries, in bytes.
    pub const NAME_BYTES_MAX: usize = 255;

    /// How long a connection may take to connect and complete its
    /// handshake.
    pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

    /// Inbound connections that may be in their handshake at once.
    pub const HANDSHAKES_PENDING_MAX: usize = 64;

    /// The first wait before a dialer tries again.
    pub const RECONNECT_DELAY_MIN: Duration = Duration::from_millis(50);

    /// The longest wait between two attempts of a dialer.
    pub const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(2);

    /// Listens on `addr` (port 0 picks a free port) as the region `name`.
    /// The listener and every connection run as tasks on the current tokio
    /// runtime, until the transport is dropped.
    ///
    /// # Errors
    /// The listener's I/O error, or [`io::ErrorKind::InvalidInput`] when
    /// `name` is empty or longer than [`TcpTransport::NAME_BYTES_MAX`]
    /// bytes.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub async fn bind(name: &str, addr: SocketAddr) -> io::Result<TcpTransport> {
        check_name(name)?;
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let (events_tx, events) = mpsc::channel(Self::EVENTS_LEN_MAX);
        let (shutdown_tx, shutdown) = watch::channel(());
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            local_addr,
            runtime: tokio::runtime::Handle::current(),
            events: events_tx,
            shutdown,
            handshakes: Arc::new(Semaphore::new(Self::HANDSHAKES_PENDING_MAX)),
            peers: Mutex::new(BTreeMap::new()),
            next_connection: AtomicU64::new(0),
            counters: Counters::default(),
        });
        shared.spawn(accept_loop(Arc::clone(&shared), listener));
        tracing::info!(region = name, %local_addr, "tcp transport listening");
        Ok(TcpTransport {
            handle: TcpHandle { shared },
            events,
            _shutdown: shutdown_tx,
        })
    }

    /// A handle to add peers and read counters once the transport is
    /// handed to a region.
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

impl TcpHandle {
    /// This region's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The address the transport listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
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
                Some(connection) => match connection.queue.try_send(frame) {
                    Ok(()) => None,
                    Err(mpsc::error::TrySendError::Full(_)) => Some("send queue full"),
                    Err(mpsc::error::TrySendError::Closed(_)) => Some("connection closing"),
                },
            }
        };
        if let Some(cause) = dropped {
            Counters::bump(&shared.counters.frames_dropped, 1);
            tracing::debug!(region = %shared.name, peer, bytes = len, cause, "frame dropped");
        }
    }

    async fn recv(&mut self) -> Option<TransportEvent> {
        self.events.recv().await
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

    /// Makes the connection `id` the one to `peer` and reports it `Up`
    /// (after `Down` for the connection it replaces). False when the
    /// transport is closing or `peer` is no longer configured.
    async fn install(
        &self,
        peer: &str,
        id: u64,
        queue: mpsc::Sender<Vec<u8>>,
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
            kill: Some(kill),
        };
        if slot.connection.replace(connection).is_some() {
            tracing::info!(region = %self.name, peer, "connection replaced by a new one");
            down.send(TransportEvent::Down(peer.to_owned()));
        }
        up.send(TransportEvent::Up(peer.to_owned()));
        Some(killed)
    }

    /// Reports a frame of connection `id` from `peer`, unless that
    /// connection was replaced: the check and the send happen under the
    /// lock `install` reports under, so no frame of a replaced connection
    /// follows its successor's `Up`. False once it was replaced.
    async fn deliver(&self, peer: &str, id: u64, frame: Vec<u8>) -> bool {
        let Ok(permit) = self.events.reserve().await else {
            return false;
        };
        let peers = self.lock();
        if !is_current(&peers, peer, id) {
            return false;
        }
        permit.send(TransportEvent::Frame {
            from: peer.to_owned(),
            frame,
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
            permit.send(TransportEvent::Down(peer.to_owned()));
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
}

/// True when `id` is the connection to `peer`.
fn is_current(peers: &BTreeMap<String, Peer>, peer: &str, id: u64) -> bool {
    peers
        .get(peer)
        .and_then(|p| p.connection.as_ref())
        .is_some_and(|c| c.id == id)
}

/// Why a handshake failed.
enum HandshakeError {
    Io(io::Error),
    /// The other side broke the protocol.
    Refused(String),
    TimedOut,
}

impl From<io::Error> for HandshakeError {
    fn from(error: io::Error) -> Self {
        HandshakeError::Io(error)
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Io(error) => write!(f, "{error}"),
            HandshakeError::Refused(reason) => f.write_str(reason),
            HandshakeError::TimedOut => write!(
                f,
                "handshake not complete within {:?}",
                TcpTransport::HANDSHAKE_TIMEOUT
            ),
        }
    }
}

async fn write_hello<W: AsyncWrite + Unpin>(writer: &mut W, name: &str) -> io::Result<()> {
    let len = u16::try_from(name.len())
        .ok()
        .filter(|&len| usize::from(len) <= TcpTransport::NAME_BYTES_MAX)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "region name too long"))?;
    let mut hello = Vec::with_capacity(TCP_MAGIC.len() + 4 + name.len());
    hello.extend_from_slice(&TCP_MAGIC);
    hello.extend_from_slice(&TCP_PROTOCOL_VERSION.to_le_bytes());
    hello.extend_from_slice(&len.to_le_bytes());
    hello.extend_from_slice(name.as_bytes());
    writer.write_all(&hello).await?;
    writer.flush().await
}

/// Reads a hello and returns the sender's name.
async fn read_hello<R: AsyncRead + Unpin>(reader: &mut R) -> Result<String, HandshakeError> {
    let mut magic = [0; TCP_MAGIC.len()];
    reader.read_exact(&mut magic).await?;
    if magic != TCP_MAGIC {
        return Err(HandshakeError::Refused("wrong magic bytes".into()));
    }
    let mut version = [0; 2];
    reader.read_exact(&mut version).await?;
    let version = u16::from_le_bytes(version);
    if version != TCP_PROTOCOL_VERSION {
        return Err(HandshakeError::Refused(format!(
            "protocol version {version} (this build speaks {TCP_PROTOCOL_VERSION})"
        )));
    }
    let mut len = [0; 2];
    reader.read_exact(&mut len).await?;
    let len = usize::from(u16::from_le_bytes(len));
    if len == 0 || len > TcpTransport::NAME_BYTES_MAX {
        return Err(HandshakeError::Refused(format!(
            "region name of {len} bytes (1 to {} allowed)",
            TcpTransport::NAME_BYTES_MAX
        )));
    }
    let mut name = vec![0; len];
    reader.read_exact(&mut name).await?;
    String::from_utf8(name).map_err(|_| HandshakeError::Refused("region name is not UTF-8".into()))
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => match Arc::clone(&shared.handshakes).try_acquire_owned() {
                Ok(permit) => {
                    let shared_for_task = Arc::clone(&shared);
                    shared.spawn(async move {
                        let peer = accept_one(&shared_for_task, stream, addr).await;
                        drop(permit);
                        if let Some((peer, stream)) = peer {
                            run_connection(&shared_for_task, &peer, stream).await;
                        }
                    });
                }
                Err(_) => {
                    Counters::bump(&shared.counters.connections_refused, 1);
                    tracing::warn!(region = %shared.name, %addr, reason = "too many pending handshakes", "rejected input");
                }
            },
            Err(error) => {
                // Out of file descriptors, say: wait rather than spin.
                tracing::warn!(region = %shared.name, %error, "accept failed");
                tokio::time::sleep(TcpTransport::RECONNECT_DELAY_MIN).await;
            }
        }
    }
}

/// The handshake of an inbound connection: the peer's name, or `None` if
/// it was refused.
async fn accept_one(
    shared: &Shared,
    mut stream: TcpStream,
    addr: SocketAddr,
) -> Option<(String, TcpStream)> {
    let handshake = async {
        stream.set_nodelay(true)?;
        let name = read_hello(&mut stream).await?;
        if let Some(reason) = shared.refusal(&name) {
            return Err(HandshakeError::Refused(reason));
        }
        write_hello(&mut stream, &shared.name).await?;
        Ok(name)
    };
    let result = tokio::time::timeout(TcpTransport::HANDSHAKE_TIMEOUT, handshake)
        .await
        .unwrap_or(Err(HandshakeError::TimedOut));
    match result {
        Ok(name) => {
            Counters::bump(&shared.counters.connections_accepted, 1);
            Some((name, stream))
        }
        Err(error) => {
            Counters::bump(&shared.counters.connections_refused, 1);
            if let HandshakeError::Io(error) = &error {
                tracing::debug!(region = %shared.name, %addr, %error, "inbound handshake failed");
            } else {
                tracing::warn!(region = %shared.name, %addr, reason = %error, "rejected input");
            }
            None
        }
    }
}

/// Keeps a connection to `peer` (which sorts above us) for as long as the
/// transport lives.
async fn dial_loop(shared: Arc<Shared>, peer: String) {
    let mut delay = TcpTransport::RECONNECT_DELAY_MIN;
    loop {
        let Some(addr) = shared.lock().get(&peer).map(|p| p.addr) else {
            return;
        };
        match dial(&shared, &peer, addr).await {
            Ok(stream) => {
                Counters::bump(&shared.counters.connections_dialed, 1);
                delay = TcpTransport::RECONNECT_DELAY_MIN;
                run_connection(&shared, &peer, stream).await;
            }
            Err(error) => {
                if let HandshakeError::Refused(reason) = &error {
                    tracing::warn!(region = %shared.name, %peer, %addr, %reason, "rejected input");
                }
                tracing::debug!(region = %shared.name, %peer, %addr, %error, retry_in = ?delay, "reconnect attempt failed");
            }
        }
        tokio::time::sleep(delay).await;
        delay = delay
            .saturating_mul(2)
            .min(TcpTransport::RECONNECT_DELAY_MAX);
    }
}

async fn dial(shared: &Shared, peer: &str, addr: SocketAddr) -> Result<TcpStream, HandshakeError> {
    let handshake = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        write_hello(&mut stream, &shared.name).await?;
        let name = read_hello(&mut stream).await?;
        if name != peer {
            return Err(HandshakeError::Refused(format!(
                "dialed {peer:?}, reached {name:?}"
            )));
        }
        Ok(stream)
    };
    tokio::time::timeout(TcpTransport::HANDSHAKE_TIMEOUT, handshake)
        .await
        .unwrap_or(Err(HandshakeError::TimedOut))
}

/// Runs an established connection to `peer` until it ends or is replaced.
async fn run_connection(shared: &Shared, peer: &str, stream: TcpStream) {
    let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    let (queue_tx, mut queue) = mpsc::channel(TcpTransport::SEND_QUEUE_FRAMES_MAX);
    let Some(killed) = shared.install(peer, id, queue_tx).await else {
        return;
    };
    tracing::info!(region = %shared.name, peer, "connected");
    let (read, write) = stream.into_split();
    let reason = tokio::select! {
        reason = read_frames(shared, peer, id, read) => reason,
        reason = write_frames(shared, &mut queue, write) => reason,
        _ = killed => "replaced or closed locally".to_owned(),
    };
    queue.close();
    let mut left = 0;
    while queue.try_recv().is_ok() {
        left += 1;
    }
    Counters::bump(&shared.counters.frames_dropped, left);
    shared.uninstall(peer, id).await;
    tracing::info!(region = %shared.name, peer, %reason, frames_dropped = left, "disconnected");
}

/// Reads frames until the connection ends; returns why it did.
async fn read_frames(shared: &Shared, peer: &str, id: u64, read: OwnedReadHalf) -> String {
    const READ_BUFFER_BYTES: usize = 64 * 1024;
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, read);
    loop {
        let mut len = [0; 4];
        if let Err(error) = reader.read_exact(&mut len).await {
            return if error.kind() == io::ErrorKind::UnexpectedEof {
                "closed by the peer".to_owned()
            } else {
                error.to_string()
            };
        }
        let len = u32::from_le_bytes(len);
        let Some(len) = usize::try_from(len)
            .ok()
            .filter(|&len| len > 0 && len <= FRAME_BYTES_MAX)
        else {
            Counters::bump(&shared.counters.frames_refused, 1);
            tracing::warn!(region = %shared.name, peer, len, reason = "frame length out of bounds", "rejected input");
            return format!("refused a frame length of {len}");
        };
        // Grow with what arrives, not with what the prefix claims.
        let mut frame = Vec::with_capacity(len.min(READ_BUFFER_BYTES));
        let limit = u64::try_from(len).unwrap_or(u64::MAX);
        if let Err(error) = (&mut reader).take(limit).read_to_end(&mut frame).await {
            return error.to_string();
        }
        if frame.len() != len {
            return format!(
                "closed by the peer {} bytes into a {len}-byte frame",
                frame.len()
            );
        }
        Counters::bump(&shared.counters.frames_received, 1);
        Counters::bump(&shared.counters.bytes_received, limit);
        if !shared.deliver(peer, id, frame).await {
            return "replaced, or the transport closed".to_owned();
        }
    }
}

/// Writes queued frames, flushing whenever the queue runs empty; returns
/// why it stopped.
async fn write_frames(
    shared: &Shared,
    queue: &mut mpsc::Receiver<Vec<u8>>,
    write: OwnedWriteHalf,
) -> String {
    const WRITE_BUFFER_BYTES: usize = 64 * 1024;
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER_BYTES, write);
    while let Some(frame) = queue.recv().await {
        let mut next = Some(frame);
        while let Some(frame) = next {
            if let Err(error) = write_frame(shared, &mut writer, &frame).await {
                Counters::bump(&shared.counters.frames_dropped, 1);
                return error.to_string();
            }
            next = queue.try_recv().ok();
        }
        if let Err(error) = writer.flush().await {
            return error.to_string();
        }
    }
    "send queue closed".to_owned()
}

async fn write_frame(
    shared: &Shared,
    writer: &mut BufWriter<OwnedWriteHalf>,
    frame: &[u8],
) -> io::Result<()> {
    // `send` only queues frames of 1..=FRAME_BYTES_MAX bytes.
    debug_assert!(!frame.is_empty() && frame.len() <= FRAME_BYTES_MAX);
    let len = u32::try_from(frame.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too long"))?;
    writer.write_all(&len.to_le_bytes()).await?;
    writer.write_all(frame).await?;
    Counters::bump(&shared.counters.frames_sent, 1);
    Counters::bump(&shared.counters.bytes_sent, u64::from(len));
    Ok(())
}
