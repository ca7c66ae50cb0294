//! An established connection: length-prefixed frames read into the
//! transport's events, and written from the peer's bounded queue.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};

use super::*;

/// Runs an established connection to `peer` until it ends or is replaced.
pub(super) async fn run_connection<R, W>(shared: &Shared, peer: &str, read: R, write: W)
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    let (queue_tx, mut queue) = mpsc::unbounded_channel();
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    let Some(killed) = shared
        .install(peer, id, queue_tx, Arc::clone(&queued_bytes))
        .await
    else {
        return;
    };
    tracing::info!(region = %shared.name, peer, tls = !matches!(shared.security, Security::Plaintext), "connected");
    let reason = tokio::select! {
        reason = read_frames(shared, peer, id, read) => reason,
        reason = write_frames(shared, &mut queue, &queued_bytes, write) => reason,
        _ = killed => "replaced or closed locally".to_owned(),
    };
    queue.close();
    let mut left = 0;
    while let Ok(frame) = queue.try_recv() {
        queued_bytes.fetch_sub(charge(frame.len()), Ordering::AcqRel);
        left += 1;
    }
    Counters::bump(&shared.counters.frames_dropped, left);
    shared.uninstall(peer, id).await;
    tracing::info!(region = %shared.name, peer, %reason, frames_dropped = left, "disconnected");
}

/// Reads frames until the connection ends; returns why it did.
async fn read_frames<R: AsyncRead + Unpin>(
    shared: &Shared,
    peer: &str,
    id: u64,
    read: R,
) -> String {
    const READ_BUFFER_BYTES: usize = 64 * 1024;
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, read);
    let permits = shared.config.recv_permits();
    let queue = Arc::new(Semaphore::new(permits as usize));
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
        // Room in this peer's receive queue before reading the body, so the
        // frame being read counts too; a frame above the bound waits for an
        // empty queue. Reading pauses meanwhile: TCP pushes back.
        let cost = u32::try_from(charge(len)).unwrap_or(u32::MAX).min(permits);
        let Ok(held) = Arc::clone(&queue).acquire_many_owned(cost).await else {
            return "receive queue closed".to_owned();
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
        if !shared.deliver(peer, id, frame, held).await {
            return "replaced, or the transport closed".to_owned();
        }
    }
}

/// Writes queued frames, flushing whenever the queue runs empty; returns
/// why it stopped.
async fn write_frames<W: AsyncWrite + Unpin>(
    shared: &Shared,
    queue: &mut mpsc::UnboundedReceiver<Vec<u8>>,
    queued_bytes: &AtomicUsize,
    write: W,
) -> String {
    const WRITE_BUFFER_BYTES: usize = 64 * 1024;
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER_BYTES, write);
    while let Some(frame) = queue.recv().await {
        let mut next = Some(frame);
        while let Some(frame) = next {
            queued_bytes.fetch_sub(charge(frame.len()), Ordering::AcqRel);
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

async fn write_frame<W: AsyncWrite + Unpin>(
    shared: &Shared,
    writer: &mut BufWriter<W>,
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
