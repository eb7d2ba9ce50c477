//! Refuses a request whose length is ambiguous: one that carries both
//! `Content-Length` and `Transfer-Encoding` (RFC 9112 §6.3). A proxy in
//! front may frame such a request by the one header and this server by the
//! other, and the bytes between the two framings would be read as another
//! request (request smuggling). hyper drops `Content-Length` and reads the
//! body as chunked, so the handlers cannot see that both were sent: the
//! check sits on the connection's bytes instead.
//!
//! [`GuardedIo`] wraps a connection and follows the framing of the requests
//! read through it ([`Framing`]); hyper is given each head only once it is
//! whole and checked. When a head carries both headers, hyper is given in
//! its place a request for [`AMBIGUOUS_PATH`] with `Connection: close`,
//! and nothing after it: the router answers it 400 problem+json after
//! every answer before it, in order, and hyper then closes the connection.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The longest request head held back; a longer one is given to hyper as
/// it comes, which refuses it (431) itself.
const HEAD_MAX: usize = 64 * 1024;

/// The path hyper is asked for in place of an ambiguous request.
pub const AMBIGUOUS_PATH: &str = "/_seatledger/ambiguous-request-length";

/// What hyper reads in place of an ambiguous request.
const SUBSTITUTE: &[u8] =
    b"GET /_seatledger/ambiguous-request-length HTTP/1.1\r\nhost: seatledger\r\nconnection: close\r\n\r\n";

/// Where the reader is in the stream of requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a head (the bytes so far are in `Framing::head`).
    Head,
    /// This many body bytes remain.
    Fixed(u64),
    /// Inside a chunked body.
    Chunked(Chunk),
    /// Framing is no longer followed (an upgrade, a head hyper will refuse,
    /// a malformed chunk): hyper has the last word on what follows.
    Untracked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// The size line: the size so far, whether an extension started, and
    /// whether a CR was just seen.
    Size {
        size: u64,
        digits: bool,
        extension: bool,
    },
    /// This many data bytes of the chunk remain.
    Data(u64),
    /// The CRLF after a chunk's data (`true`: the CR was seen).
    DataEnd(bool),
    /// The trailer section: the length of the current line.
    Trailer(usize),
}

/// What [`Framing::feed`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing wrong so far.
    Fine,
    /// A head with both `Content-Length` and `Transfer-Encoding`: the
    /// bytes from it on are not passed.
    Ambiguous,
}

/// Follows request framing over a byte stream, head by head.
#[derive(Debug)]
pub struct Framing {
    state: State,
    /// The head being read, held back until it is whole.
    head: Vec<u8>,
}

impl Default for Framing {
    fn default() -> Self {
        Framing {
            state: State::Head,
            head: Vec::new(),
        }
    }
}

impl Framing {
    /// Follows `bytes`, the next bytes of the connection, appending to
    /// `pass` the ones that may be given to hyper: body bytes at once, a
    /// head once it is whole and not ambiguous.
    pub fn feed(&mut self, bytes: &[u8], pass: &mut Vec<u8>) -> Verdict {
        let mut at = 0;
        while at < bytes.len() {
            match self.state {
                State::Untracked => {
                    pass.extend_from_slice(&bytes[at..]);
                    return Verdict::Fine;
                }
                State::Head => {
                    let rest = &bytes[at..];
                    // The head ends at the first blank line (hyper, like
                    // httparse, takes a bare LF as a line end too).
                    let end = find_head_end(&self.head, rest);
                    let take = end.unwrap_or(rest.len());
                    self.head.extend_from_slice(&rest[..take]);
                    at += take;
                    if end.is_some() {
                        if self.head_done() {
                            return Verdict::Ambiguous;
                        }
                        pass.append(&mut self.head);
                    } else if self.head.len() > HEAD_MAX {
                        pass.append(&mut self.head);
                        self.state = State::Untracked;
                    }
                }
                State::Fixed(remaining) => {
                    let take = remaining.min((bytes.len() - at) as u64) as usize;
                    pass.extend_from_slice(&bytes[at..at + take]);
                    at += take;
                    self.state = match remaining - take as u64 {
                        0 => State::Head,
                        left => State::Fixed(left),
                    };
                }
                State::Chunked(chunk) => {
                    let used = self.chunked(chunk, &bytes[at..]);
                    pass.extend_from_slice(&bytes[at..at + used]);
                    at += used;
                }
            }
        }
        Verdict::Fine
    }

    /// A whole head has been read: decides how its body is framed; true
    /// when it is ambiguous.
    fn head_done(&mut self) -> bool {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut request = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(_)) = request.parse(&self.head) else {
            self.state = State::Untracked;
            return false;
        };
        let mut content_length = None;
        let mut transfer_encoding = None;
        let mut upgrade = request.method == Some("CONNECT");
        for header in request.headers.iter() {
            if header.name.eq_ignore_ascii_case("content-length") {
                content_length = Some(header.value);
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                transfer_encoding = Some(header.value);
            } else if header.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        self.state = match (content_length, transfer_encoding) {
            (Some(_), Some(_)) => return true,
            _ if upgrade => State::Untracked,
            (None, Some(value)) => {
                let last = value.rsplit(|b| *b == b',').next().unwrap_or_default();
                if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    State::Chunked(Chunk::Size {
                        size: 0,
                        digits: false,
                        extension: false,
                    })
                } else {
                    State::Untracked
                }
            }
            (Some(value), None) => match std::str::from_utf8(value)
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok())
            {
                Some(0) => State::Head,
                Some(length) => State::Fixed(length),
                None => State::Untracked,
            },
            (None, None) => State::Head,
        };
        false
    }

    /// Follows a chunked body over `bytes`; returns how many it used.
    fn chunked(&mut self, chunk: Chunk, bytes: &[u8]) -> usize {
        let byte = bytes[0];
        let next = match chunk {
            Chunk::Size {
                size,
                digits,
                extension,
            } => match byte {
                b'\n' if digits && size == 0 => State::Chunked(Chunk::Trailer(0)),
                b'\n' if digits => State::Chunked(Chunk::Data(size)),
                b'\r' | b';' | b' ' | b'\t' if digits => State::Chunked(Chunk::Size {
                    size,
                    digits,
                    extension: true,
                }),
                _ if extension => State::Chunked(chunk),
                _ => match (byte as char).to_digit(16) {
                    Some(digit) if size >> 59 == 0 => State::Chunked(Chunk::Size {
                        size: size * 16 + u64::from(digit),
                        digits: true,
                        extension,
                    }),
                    _ => State::Untracked,
                },
            },
            Chunk::Data(remaining) => {
                let take = remaining.min(bytes.len() as u64);
                self.state = State::Chunked(match remaining - take {
                    0 => Chunk::DataEnd(false),
                    left => Chunk::Data(left),
                });
                return take as usize;
            }
            Chunk::DataEnd(false) if byte == b'\r' => State::Chunked(Chunk::DataEnd(true)),
            Chunk::DataEnd(_) if byte == b'\n' => State::Chunked(Chunk::Size {
                size: 0,
                digits: false,
                extension: false,
            }),
            Chunk::DataEnd(_) => State::Untracked,
            Chunk::Trailer(length) => match byte {
                b'\n' if length == 0 => State::Head,
                b'\n' => State::Chunked(Chunk::Trailer(0)),
                b'\r' => State::Chunked(Chunk::Trailer(length)),
                _ => State::Chunked(Chunk::Trailer(length + 1)),
            },
        };
        self.state = next;
        1
    }
}

/// Where in `rest` the head whose first bytes are `held` ends (just after
/// its blank line), if it does. Empty lines before a request line are part
/// of no head but are held with it (hyper skips them).
fn find_head_end(held: &[u8], rest: &[u8]) -> Option<usize> {
    // The last three bytes held and the new ones, scanned for "\n\r\n" or
    // "\n\n" after some request-line byte.
    let tail = &held[held.len().saturating_sub(3)..];
    let mut started = held.iter().any(|b| *b != b'\r' && *b != b'\n');
    let mut previous: [u8; 3] = [0; 3];
    for (index, byte) in tail.iter().enumerate() {
        previous[index + 3 - tail.len()] = *byte;
    }
    for (index, byte) in rest.iter().enumerate() {
        if *byte != b'\r' && *byte != b'\n' {
            started = true;
        }
        let blank = *byte == b'\n'
            && (previous[2] == b'\n' || (previous[2] == b'\r' && previous[1] == b'\n'));
        if started && blank {
            return Some(index + 1);
        }
        previous = [previous[1], previous[2], *byte];
    }
    None
}

/// A connection whose requests are checked by [`Framing`] as hyper reads
/// them.
pub struct GuardedIo<T> {
    inner: T,
    framing: Framing,
    /// Bytes checked and not yet given to hyper, from `given` on.
    pass: Vec<u8>,
    given: usize,
    /// An ambiguous request was seen: after `pass`, nothing more.
    ended: bool,
}

impl<T> GuardedIo<T> {
    pub fn new(inner: T) -> Self {
        GuardedIo {
            inner,
            framing: Framing::default(),
            pass: Vec::new(),
            given: 0,
            ended: false,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.given < this.pass.len() {
                let n = buf.remaining().min(this.pass.len() - this.given);
                buf.put_slice(&this.pass[this.given..this.given + n]);
                this.given += n;
                if this.given == this.pass.len() {
                    this.pass.clear();
                    this.given = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.ended {
                // Nothing more is read. Not the end of the stream either:
                // hyper would drop the answer it is writing. It closes the
                // connection itself after answering (`connection: close`).
                return Poll::Pending;
            }
            let mut bytes = [0_u8; 8192];
            let mut read = ReadBuf::new(&mut bytes);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            if this.framing.feed(read.filled(), &mut this.pass) == Verdict::Ambiguous {
                tracing::debug!("a request with both Content-Length and Transfer-Encoding");
                this.pass.extend_from_slice(SUBSTITUTE);
                this.ended = true;
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A request of the given framing, with `body`.
    fn request(body: &[u8], chunked: Option<usize>) -> Vec<u8> {
        let mut out = b"POST /api/v1/x HTTP/1.1\r\nHost: a\r\n".to_vec();
        match chunked {
            None => {
                out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
                out.extend_from_slice(body);
            }
            Some(size) => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                for piece in body.chunks(size.max(1)) {
                    out.extend_from_slice(format!("{:x};ext=1\r\n", piece.len()).as_bytes());
                    out.extend_from_slice(piece);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\nX-Trailer: 1\r\n\r\n");
            }
        }
        out
    }

    /// Feeds `stream` in reads of `splits` sizes; what was passed, and
    /// whether an ambiguous request was found.
    fn run(stream: &[u8], splits: &[usize]) -> (Vec<u8>, bool) {
        let mut framing = Framing::default();
        let mut pass = Vec::new();
        let mut at = 0;
        for size in splits.iter().cycle() {
            if at >= stream.len() {
                break;
            }
            let end = (at + size).min(stream.len());
            if framing.feed(&stream[at..end], &mut pass) == Verdict::Ambiguous {
                return (pass, true);
            }
            at = end;
        }
        (pass, false)
    }

    const AMBIGUOUS: &[u8] =
        b"POST /x HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    proptest! {
        /// Any run of well-framed requests (bodies full of CRLFs and header
        /// look-alikes included), fed in any split, is fine; an ambiguous
        /// request after them is found where it starts.
        #[test]
        fn ambiguous_requests_are_found_wherever_the_reads_split(
            requests in proptest::collection::vec(
                (proptest::collection::vec(
                    prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'a'), Just(b':'), any::<u8>()], 0..200),
                 proptest::option::of(1_usize..50)),
                0..6),
            splits in proptest::collection::vec(1_usize..64, 1..40),
        ) {
            let mut stream = Vec::new();
            for (body, chunked) in &requests {
                let mut body = body.clone();
                body.extend_from_slice(b"\r\n\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
                stream.extend(request(&body, *chunked));
            }
            let fine = stream.clone();
            prop_assert_eq!(run(&fine, &splits), (fine.clone(), false), "all passed, in order");
            stream.extend_from_slice(AMBIGUOUS);
            stream.extend_from_slice(b"GET /after HTTP/1.1\r\n\r\n");
            prop_assert_eq!(run(&stream, &splits), (fine, true), "nothing from it on");
        }
    }

    #[test]
    fn either_order_of_the_two_headers_is_ambiguous() {
        for head in [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"[..],
            &b"POST / HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: gzip, chunked\r\n\r\n"[..],
        ] {
            assert_eq!(run(head, &[1000]), (Vec::new(), true));
        }
        let get = b"\r\nGET / HTTP/1.1\nHost: a\n\n";
        assert_eq!(run(get, &[1]), (get.to_vec(), false));
        // A head not yet whole is held back.
        assert_eq!(run(&get[..10], &[3]), (Vec::new(), false));
    }

    #[test]
    fn the_substitute_is_a_request_for_the_ambiguous_path() {
        let mut headers = [httparse::EMPTY_HEADER; 4];
        let mut request = httparse::Request::new(&mut headers);
        assert!(request.parse(SUBSTITUTE).unwrap().is_complete());
        assert_eq!(request.path, Some(AMBIGUOUS_PATH));
    }
}
