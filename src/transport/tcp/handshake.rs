//! The connection handshake: the magic, the protocol version and the
//! region's name (inside TLS when it is on), for dialed and accepted
//! connections alike, and the loops that dial and accept.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::connection::run_connection;
use super::*;

/// Why a handshake failed.
pub(super) enum HandshakeError {
    Io(io::Error),
    /// The other side broke the protocol.
    Refused(String),
    TimedOut,
    /// The peer's TLS identity failed (or it refused ours).
    #[cfg(feature = "tls")]
    Tls {
        failure: TlsFailure,
        detail: String,
    },
}

impl From<io::Error> for HandshakeError {
    fn from(error: io::Error) -> Self {
        #[cfg(feature = "tls")]
        if let Some(failure) = TlsFailure::of(&error) {
            return HandshakeError::Tls {
                failure,
                detail: error.to_string(),
            };
        }
        HandshakeError::Io(error)
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Io(error) => write!(f, "{error}"),
            HandshakeError::Refused(reason) => f.write_str(reason),
            HandshakeError::TimedOut => f.write_str("handshake not complete within the timeout"),
            #[cfg(feature = "tls")]
            HandshakeError::Tls { failure, detail } => write!(f, "{failure}: {detail}"),
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

/// A connection past its handshake.
enum Established {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    TlsServer(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    #[cfg(feature = "tls")]
    TlsClient(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Established {
    /// Runs the connection to `peer` until it ends or is replaced.
    async fn run(self, shared: &Shared, peer: &str) {
        match self {
            Established::Plain(stream) => {
                let (read, write) = stream.into_split();
                run_connection(shared, peer, read, write).await;
            }
            #[cfg(feature = "tls")]
            Established::TlsServer(stream) => {
                let (read, write) = tokio::io::split(*stream);
                run_connection(shared, peer, read, write).await;
            }
            #[cfg(feature = "tls")]
            Established::TlsClient(stream) => {
                let (read, write) = tokio::io::split(*stream);
                run_connection(shared, peer, read, write).await;
            }
        }
    }
}

pub(super) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => match Arc::clone(&shared.handshakes).try_acquire_owned() {
                Ok(permit) => {
                    let shared_for_task = Arc::clone(&shared);
                    shared.spawn(async move {
                        let peer = accept_one(&shared_for_task, stream, addr).await;
                        drop(permit);
                        if let Some((peer, established)) = peer {
                            established.run(&shared_for_task, &peer).await;
                        }
                    });
                }
                Err(_) => {
                    drop(stream);
                    Counters::bump(&shared.counters.connections_refused, 1);
                    Counters::bump(&shared.counters.handshakes_over_limit, 1);
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

/// The handshake of an inbound connection: the peer's name and the
/// connection, or `None` if it was refused.
async fn accept_one(
    shared: &Shared,
    stream: TcpStream,
    addr: SocketAddr,
) -> Option<(String, Established)> {
    let result = tokio::time::timeout(
        shared.config.handshake_timeout,
        accept_handshake(shared, stream),
    )
    .await
    .unwrap_or(Err(HandshakeError::TimedOut));
    match result {
        Ok((name, established)) => {
            Counters::bump(&shared.counters.connections_accepted, 1);
            Some((name, established))
        }
        Err(error) => {
            shared.handshake_failed(&error, addr, None, true);
            None
        }
    }
}

async fn accept_handshake(
    shared: &Shared,
    mut stream: TcpStream,
) -> Result<(String, Established), HandshakeError> {
    stream.set_nodelay(true)?;
    #[cfg(feature = "tls")]
    if let Some(config) = shared.tls() {
        let mut stream = tokio_rustls::TlsAcceptor::from(Arc::clone(&config.server))
            .accept(stream)
            .await?;
        let name = read_hello(&mut stream).await?;
        // The chain was verified by rustls; now its name against the claim.
        let names = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(<[_]>::first)
            .is_some_and(|cert| tls::certificate_names(cert, &name));
        if !names {
            return Err(HandshakeError::Tls {
                failure: TlsFailure::WrongName,
                detail: format!("the client claims {name:?}, its certificate does not name it"),
            });
        }
        if let Some(reason) = shared.refusal(&name) {
            return Err(HandshakeError::Refused(reason));
        }
        write_hello(&mut stream, &shared.name).await?;
        return Ok((name, Established::TlsServer(Box::new(stream))));
    }
    let name = read_hello(&mut stream).await?;
    if let Some(reason) = shared.refusal(&name) {
        return Err(HandshakeError::Refused(reason));
    }
    write_hello(&mut stream, &shared.name).await?;
    Ok((name, Established::Plain(stream)))
}

/// Keeps a connection to `peer` (which sorts above us) for as long as the
/// transport lives.
pub(super) async fn dial_loop(shared: Arc<Shared>, peer: String) {
    let mut delay = TcpTransport::RECONNECT_DELAY_MIN;
    loop {
        let Some(addr) = shared.lock().get(&peer).map(|p| p.addr) else {
            return;
        };
        let result =
            tokio::time::timeout(shared.config.handshake_timeout, dial(&shared, &peer, addr))
                .await
                .unwrap_or(Err(HandshakeError::TimedOut));
        match result {
            Ok(established) => {
                Counters::bump(&shared.counters.connections_dialed, 1);
                delay = TcpTransport::RECONNECT_DELAY_MIN;
                established.run(&shared, &peer).await;
            }
            Err(HandshakeError::Io(error)) => {
                tracing::debug!(region = %shared.name, %peer, %addr, %error, retry_in = ?delay, "reconnect attempt failed");
            }
            Err(error) => shared.handshake_failed(&error, addr, Some(&peer), false),
        }
        tokio::time::sleep(delay).await;
        delay = delay
            .saturating_mul(2)
            .min(TcpTransport::RECONNECT_DELAY_MAX);
    }
}

async fn dial(
    shared: &Shared,
    peer: &str,
    addr: SocketAddr,
) -> Result<Established, HandshakeError> {
    let check = |name: String| {
        if name == peer {
            Ok(())
        } else {
            Err(HandshakeError::Refused(format!(
                "dialed {peer:?}, reached {name:?}"
            )))
        }
    };
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    #[cfg(feature = "tls")]
    if let Some(config) = shared.tls() {
        // The server name is the peer's: rustls checks that the acceptor's
        // certificate chains to our CA and names the region we dial.
        let server_name = tls::server_name(peer).map_err(|error| HandshakeError::Tls {
            failure: TlsFailure::WrongName,
            detail: error.to_string(),
        })?;
        let mut stream = tokio_rustls::TlsConnector::from(Arc::clone(&config.client))
            .connect(server_name, stream)
            .await?;
        write_hello(&mut stream, &shared.name).await?;
        check(read_hello(&mut stream).await?)?;
        return Ok(Established::TlsClient(Box::new(stream)));
    }
    let mut stream = stream;
    write_hello(&mut stream, &shared.name).await?;
    check(read_hello(&mut stream).await?)?;
    Ok(Established::Plain(stream))
}
