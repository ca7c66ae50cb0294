//! Moving frames between regions.
//!
//! The region engine speaks to its peers through a [`Transport`]: it sends
//! encoded frames to a peer by name and receives [`TransportEvent`]s: frames,
//! and peers coming up or going down. A transport may lose, delay, duplicate
//! or reorder frames; the engine's acknowledgements, retransmission and
//! anti-entropy make up for all of it.
//!
//! - [`ChannelNetwork`]: an in-process mesh over tokio channels, with
//!   per-link fault injection (latency, jitter, loss, duplication,
//!   reordering, one-way and two-way partitions), deterministic from a seed.
//! - [`TcpTransport`] (feature `tcp`, on by default): regions on different machines, over TCP: mutual
//!   TLS 1.3 with [`TlsConfig`] (feature `tls`, on by default), or plain
//!   TCP for private networks when asked for by name
//!   ([`TcpTransport::insecure_plaintext`]).

mod channel;
#[cfg(feature = "tcp")]
mod tcp;
#[cfg(feature = "tls")]
mod tls;

pub use channel::{ChannelEndpoint, ChannelNetwork, LinkFaults, NetworkStats};
#[cfg(feature = "tcp")]
pub use tcp::{
    TCP_MAGIC, TCP_PROTOCOL_VERSION, TcpConfig, TcpHandle, TcpStats, TcpTransport, TlsRefusals,
};
#[cfg(feature = "tls")]
pub use tls::{TlsConfig, TlsConfigBuilder, TlsError, WantsCa, WantsIdentity};

use std::future::Future;

/// What a transport reports to the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportEvent {
    /// The peer can be reached (again). The engine starts a catch-up.
    Up(String),
    /// The peer cannot be reached.
    Down(String),
    /// A frame arrived from the peer.
    Frame {
        /// Its sender.
        from: String,
        /// The bytes, as the sender's `wire` encoded them.
        frame: Vec<u8>,
    },
}

/// A region's connection to its peers.
///
/// Implementations never block in [`send`](Transport::send): a frame that
/// cannot be sent now is dropped (and counted by the transport), as a
/// network would drop it.
///
/// The engine's handshake binds a peer's name to its replica id and
/// incarnation for the life of a connection (from its `Up` to its `Down`).
/// So an implementation must deliver no frame of a connection after the
/// `Up` of its successor: a frame of a peer's previous process arriving
/// after its new process greeted could rebind the name to the dead one.
/// `TcpTransport` and `ChannelNetwork` both guarantee it.
pub trait Transport: Send + 'static {
    /// This region's name.
    fn local(&self) -> &str;

    /// The peers this transport knows of, reachable or not.
    fn peers(&self) -> Vec<String>;

    /// Sends `frame` to `peer`, without waiting. Frames to unknown or
    /// unreachable peers are dropped.
    fn send(&self, peer: &str, frame: Vec<u8>);

    /// The next event; `None` once the transport is closed for good.
    fn recv(&mut self) -> impl Future<Output = Option<TransportEvent>> + Send;
}
