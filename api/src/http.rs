//! Serving HTTP on the listener with the limits a service exposed to many
//! clients needs against slow and abusive ones (`axum::serve` sets none):
//!
//! - **header read timeout**: a connection must deliver a whole request head
//!   within `header_read_timeout` of being accepted, and of its previous
//!   response (so an idle keep-alive connection is closed after as long);
//!   else it is closed. A trickle of header bytes does not extend it.
//! - **body read timeout**: a request body must arrive whole within
//!   `body_read_timeout` of its head; else the request is answered 408
//!   `body_timeout` and the connection closed.
//! - **connection limit**: at most `max_connections` connections are served
//!   at once; beyond, new connections wait in the listen backlog until one
//!   closes (they are not accepted and dropped).
//! - **a request answered before its body was read** (401, 404, 405, 415
//!   come before the body extractor) gets `Connection: close`: hyper will
//!   not wait for the unread rest of the body and closes the connection,
//!   and without the header a client would send its next request on it.
//! - header size: hyper's limits (100 headers, ~400 KiB of buffered head):
//!   a larger head is answered 431 and the connection closed.
//!
//! HTTP/1.1 only: clients speak it, and HTTP/2 (with TLS) is the job of
//! the reverse proxy in front. (Detecting HTTP/2 on a plain connection
//! waits for the client's first bytes without any timeout, which is what a
//! connection that sends nothing exploits.)
//!
//! Shutdown is graceful: the listener closes, each connection finishes its
//! in-flight request (HTTP/1.1 keep-alive connections close after it), and
//! `serve` returns once every connection is gone.

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// The limits `serve` applies (flags `--header-read-timeout-s`,
/// `--body-read-timeout-s`, `--max-connections`).
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_connections: usize,
}

/// What `serve` serves: a tower service of axum requests (the router).
pub trait App:
    tower::Service<
        axum::extract::Request,
        Response = axum::response::Response,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> App for S where
    S: tower::Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains.
pub async fn serve<S: App>(
    listener: TcpListener,
    app: S,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let builder = Arc::new(builder);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // Connections watch `stop` to begin their graceful shutdown, and each
    // holds a clone of `open`'s receiver: once all are dropped, every
    // connection is done.
    let (stop, stopped) = watch::channel(false);
    let (open_tx, open_rx) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: the condition
                    // passes as connections close; do not spin meanwhile.
                    tracing::warn!(error = %error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = request_service(app.clone(), peer, limits.body_read_timeout);
        let builder = builder.clone();
        let stopped = stopped.clone();
        let open = open_rx.clone();
        tokio::spawn(async move {
            drive(&builder, stream, service, stopped, peer).await;
            drop(permit);
            drop(open);
        });
    }
    drop(listener);
    let _ = stop.send(true);
    drop(open_rx);
    open_tx.closed().await;
}

/// What serves each request of a connection from `peer`: the app, with the
/// peer's address, a deadline on reading the body, and `Connection: close`
/// on an answer given before the body was read.
fn request_service<S: App>(
    app: S,
    peer: std::net::SocketAddr,
    body_read_timeout: Duration,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = axum::response::Response,
    Error = Infallible,
    Future: Send + 'static,
> + Send
       + 'static {
    hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let read = Arc::new(AtomicBool::new(true));
        let mut request = request.map(|body| {
            if hyper::body::Body::is_end_stream(&body) {
                Body::new(body)
            } else {
                read.store(false, Ordering::Relaxed);
                Body::new(DeadlineBody::new(body, body_read_timeout, read.clone()))
            }
        });
        request.extensions_mut().insert(ConnectInfo(peer));
        let response = app.clone().oneshot(request);
        async move {
            let mut response = response.await?;
            if !read.load(Ordering::Relaxed) {
                // Answered before its body was read (401, 404, 405,
                // 415, ...): hyper closes the connection rather than
                // wait for the rest of the body, so say so, or the
                // client sends its next request on a connection the
                // server is closing and sees it dropped unanswered.
                response.headers_mut().insert(
                    axum::http::header::CONNECTION,
                    axum::http::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, Infallible>(response)
        }
    })
}

/// Serves one connection until it ends, or, once `stopped` turns true,
/// until its graceful shutdown finishes.
async fn drive<S>(
    builder: &hyper::server::conn::http1::Builder,
    stream: tokio::net::TcpStream,
    service: S,
    mut stopped: watch::Receiver<bool>,
    peer: std::net::SocketAddr,
) where
    S: hyper::service::Service<
        hyper::Request<Incoming>,
        Response = axum::response::Response,
        Error = Infallible,
    >,
{
    let connection = builder.serve_connection(
        TokioIo::new(crate::framing::GuardedIo::new(stream)),
        service,
    );
    tokio::pin!(connection);
    let mut stopping = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(peer = %peer, error = %error, "connection ended with an error");
                }
                return;
            }
            changed = stopped.changed(), if !stopping => {
                if changed.is_err() || *stopped.borrow() {
                    stopping = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// The error a request body gives once its deadline passed; extractors
/// answer it 408 `body_timeout` (see [`is_body_timeout`]).
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within the body read timeout")]
pub struct BodyTimeout;

/// Whether `error` (or one of its sources) is a [`BodyTimeout`].
pub fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<BodyTimeout>() {
            return true;
        }
        current = error.source();
    }
    false
}

/// A request body that fails with [`BodyTimeout`] when it is not complete
/// by its deadline (a total bound: a trickle of bytes does not extend it).
/// The timer is made only if the body is not already buffered when read.
/// `read` turns true once the body was read to its end.
struct DeadlineBody {
    inner: Incoming,
    deadline: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    read: Arc<AtomicBool>,
}

impl DeadlineBody {
    fn new(inner: Incoming, timeout: Duration, read: Arc<AtomicBool>) -> DeadlineBody {
        DeadlineBody {
            inner,
            deadline: Instant::now() + timeout,
            timer: None,
            read,
        }
    }
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            if frame.is_none() || this.inner.is_end_stream() {
                this.read.store(true, Ordering::Relaxed);
            }
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
