//! A framed protocol connection over any byte stream (TLS or plaintext TCP): the preamble
//! exchange, then message frames in both directions. Reading is cancel-safe, so a session can
//! `select!` on it together with its timers and outbound queue.

use std::io;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec, LengthDelimitedCodecError};

use super::frame::{self, Codec, Compression, Wire, PREAMBLE_LEN};
use super::message::{ErrorCode, Message, ProtocolError};

/// Each direction's frame buffer holds memory only while a frame is in it: it starts empty,
/// grows to the frame being read or written (the length prefix says how much), and is given
/// back once the frame is through. A registry holds a reader and a writer per connection, and
/// a connection is idle nearly all the time (one report every few seconds): kept, the buffers
/// were 2 KiB of every connected instance (BENCHMARKS.md, "Memory per connected instance").
/// What it costs: an allocation or two per frame.
const IDLE_BUFFER: usize = 0;

/// Why reading the next message failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
}

/// Reading half of a connection.
pub struct FrameReader<R> {
    inner: FramedRead<R, LengthDelimitedCodec>,
    wire: Wire,
    max_frame: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(read: R, max_frame: usize) -> Self {
        // Start empty (tokio-util's default is 8 KiB): [`IDLE_BUFFER`].
        let inner = FramedRead::with_capacity(read, frame::length_codec(max_frame), IDLE_BUFFER);
        FrameReader { inner, wire: Wire::JSON, max_frame }
    }

    /// The next message; `None` when the peer closed the connection cleanly. Cancel-safe.
    pub async fn next(&mut self) -> Option<Result<Message, ReadError>> {
        let item = self.inner.next().await?;
        release_if_empty(self.inner.read_buffer_mut());
        Some(match item {
            Ok(bytes) => self.wire.decode(&bytes, self.max_frame).map_err(ReadError::from),
            Err(e) if e.get_ref().is_some_and(|inner| inner.is::<LengthDelimitedCodecError>()) => {
                Err(ReadError::Protocol(ProtocolError::new(
                    ErrorCode::FrameTooLarge,
                    format!("frame exceeds the maximum of {} bytes", self.max_frame),
                )))
            }
            Err(e) => Err(ReadError::Io(e)),
        })
    }

    pub fn set_codec(&mut self, codec: Codec) {
        self.wire.codec = codec;
    }

    /// Frames after this call may be compressed (and carry the frame header).
    pub fn set_compression(&mut self, compression: Option<Compression>) {
        self.wire.compression = compression;
    }
}

/// Writing half of a connection.
pub struct FrameWriter<W> {
    inner: FramedWrite<W, LengthDelimitedCodec>,
    wire: Wire,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(write: W, max_frame: usize) -> Self {
        // Our own outgoing frames (query results over a large fleet) may exceed the peer's
        // inbound limit; the writer allows 64x the limit and the peer decides.
        // Start empty, as the reader does ([`IDLE_BUFFER`]), but still batch up to 8 KiB
        // before writing.
        let mut inner =
            FramedWrite::with_capacity(write, frame::length_codec(max_frame.saturating_mul(64)), IDLE_BUFFER);
        inner.set_backpressure_boundary(8 * 1024);
        FrameWriter { inner, wire: Wire::JSON }
    }

    /// Encodes and sends one message, flushing it.
    pub async fn send(&mut self, msg: &Message) -> io::Result<()> {
        self.inner.send(self.wire.encode(msg)).await?;
        release_if_empty(self.inner.write_buffer_mut());
        Ok(())
    }

    /// Queues a message without flushing; call `flush` after a batch.
    pub async fn feed(&mut self, msg: &Message) -> io::Result<()> {
        self.inner.feed(self.wire.encode(msg)).await
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        SinkExt::<Bytes>::flush(&mut self.inner).await?;
        release_if_empty(self.inner.write_buffer_mut());
        Ok(())
    }

    /// Flushes and shuts down the write side (TLS close_notify, then FIN).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.flush().await?;
        self.inner.get_mut().shutdown().await
    }

    pub fn set_codec(&mut self, codec: Codec) {
        self.wire.codec = codec;
    }

    /// Frames after this call are compressed above the wire's threshold.
    pub fn set_compression(&mut self, compression: Option<Compression>) {
        self.wire.compression = compression;
    }

    /// Only frames whose body exceeds `bytes` are compressed.
    pub fn set_compress_threshold(&mut self, bytes: usize) {
        self.wire.threshold = bytes;
    }
}

/// Gives back a frame buffer's memory once no frame is in it ([`IDLE_BUFFER`]). An empty
/// buffer holds no bytes, so nothing read or queued is lost. Its capacity is not the test: an
/// empty buffer left after a frame was split off may still share that frame's allocation.
fn release_if_empty(buffer: &mut BytesMut) {
    if buffer.is_empty() {
        *buffer = BytesMut::new();
    }
}

/// Both halves, after the preamble exchange.
pub struct Connection<S> {
    pub reader: FrameReader<ReadHalf<S>>,
    pub writer: FrameWriter<WriteHalf<S>>,
}

impl<S: AsyncRead + AsyncWrite> Connection<S> {
    pub fn new(stream: S, max_frame: usize) -> Self {
        let (r, w) = tokio::io::split(stream);
        Connection { reader: FrameReader::new(r, max_frame), writer: FrameWriter::new(w, max_frame) }
    }

    /// Switches both directions to the codec and compression negotiated in hello/welcome.
    pub fn set_wire(&mut self, codec: Codec, compression: Option<Compression>) {
        self.reader.set_codec(codec);
        self.reader.set_compression(compression);
        self.writer.set_codec(codec);
        self.writer.set_compression(compression);
    }
}

/// Client side of the preamble exchange: offers our version range and returns the version the
/// registry picked. A registry that refuses the version answers with its own preamble followed
/// by an error frame, which is returned as the error.
pub async fn client_preamble<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    max_frame: usize,
) -> Result<u16, ReadError> {
    stream.write_all(&frame::encode_preamble(frame::PROTOCOL_MIN, frame::PROTOCOL_MAX)).await?;
    stream.flush().await?;
    let mut p = [0u8; PREAMBLE_LEN];
    stream.read_exact(&mut p).await?;
    let (_, picked) = frame::parse_preamble(&p)?;
    if picked < frame::PROTOCOL_MIN || picked > frame::PROTOCOL_MAX {
        // The registry sends its preamble then an error frame; surface that error.
        let mut reader = FrameReader::new(&mut *stream, max_frame);
        if let Some(Ok(Message::Error(e))) = reader.next().await {
            return Err(ProtocolError::new(e.code, e.message).into());
        }
        return Err(ProtocolError::new(
            ErrorCode::UnsupportedVersion,
            format!("registry picked protocol version {picked}, which this client does not speak"),
        )
        .into());
    }
    Ok(picked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::message::Ping;

    /// Both frame buffers give their memory back once a frame is through, and frames still
    /// arrive whole and in order, one at a time or several in one read.
    #[tokio::test]
    async fn frame_buffers_hold_no_memory_between_frames() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let mut writer = FrameWriter::new(a, 1 << 20);
        let mut reader = FrameReader::new(b, 1 << 20);
        let idle = |r: &FrameReader<_>, w: &FrameWriter<_>| {
            (r.inner.read_buffer().capacity(), w.inner.write_buffer().capacity())
        };
        assert_eq!(idle(&reader, &writer), (0, 0), "new buffers hold nothing");
        writer.send(&Message::Ping(Ping { id: 1 })).await.expect("send");
        assert_eq!(idle(&reader, &writer).1, 0, "the writer's buffer after a frame is sent");
        for id in 2..=4 {
            writer.feed(&Message::Ping(Ping { id })).await.expect("feed");
        }
        writer.flush().await.expect("flush");
        assert_eq!(idle(&reader, &writer).1, 0, "the writer's buffer after a batch is flushed");
        for id in 1..=4 {
            match reader.next().await {
                Some(Ok(Message::Ping(p))) => assert_eq!(p.id, id),
                other => panic!("expected ping {id}, got {other:?}"),
            }
        }
        assert_eq!(idle(&reader, &writer).0, 0, "the reader's buffer after the last frame");
    }
}
