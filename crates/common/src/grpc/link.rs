//! One HTTP/2 connection to one endpoint, on the `h2` crate itself.
//!
//! tonic's `Channel` hands each call to a buffer task, which hands it to
//! hyper's client, which hands it to the connection's task and pipes the
//! request body from a task of its own: three hand-offs between tasks,
//! each a wake-up of another thread when the runtime is idle. Here a call
//! is written to the connection by the task that makes it (`h2` shares the
//! connection's state under a lock), so the only task between a caller
//! and the socket is the one that reads and writes it. Measured on the
//! gateway's bench (`hyper proxy` against one on this path): about 25 µs
//! less per call at one in flight, and less CPU per call under load.
//!
//! Every tenx RPC is unary, so a request's body is read whole (at most
//! [`MAX_REQUEST`] bytes, what a tenx server accepts) and sent with its
//! end. The connection is made at the first call and made again after it
//! closed; the call's deadline is the shorter of its `grpc-timeout` and
//! the link's own.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http_body_util::{BodyExt, Limited};
use hyper::body::Frame;
use tonic::body::Body;

/// The largest request body sent: tonic's default limit of a decoded
/// message (4 MiB), which every tenx server keeps, and its 5-byte frame
/// header. A bigger one could only be refused by the upstream.
pub const MAX_REQUEST: usize = 4 * 1024 * 1024 + 5;

/// hyper's defaults for an HTTP/2 client, which tonic's `Channel` used.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
const MAX_HEADER_LIST: u32 = 16 * 1024;

/// Why a call over a [`Link`] failed: the status its caller gets (through
/// the error's source, which tonic's clients look for) and whether the
/// instance can have seen the call at all.
#[derive(Debug)]
pub struct LinkError {
    cause: Cause,
    /// The call may have reached the instance (it must not be sent again
    /// elsewhere unless the caller says it may run twice).
    sent: bool,
    /// The instance (not the caller's request) failed: a reason to leave
    /// it out of rotation for a while.
    instance_failed: bool,
}

#[derive(Debug)]
enum Cause {
    Status(tonic::Status),
    /// The call's deadline passed (tonic's own error for it, which its
    /// clients report as "Timeout expired").
    Timeout(tonic::TimeoutExpired),
}

impl LinkError {
    fn unsent(status: tonic::Status) -> Self {
        Self { cause: Cause::Status(status), sent: false, instance_failed: true }
    }

    fn sent(status: tonic::Status) -> Self {
        Self { cause: Cause::Status(status), sent: true, instance_failed: true }
    }

    /// A failure of the caller's own request (its body), not the instance.
    fn callers(status: tonic::Status) -> Self {
        Self { cause: Cause::Status(status), sent: true, instance_failed: false }
    }

    fn timeout() -> Self {
        Self { cause: Cause::Timeout(tonic::TimeoutExpired(())), sent: true, instance_failed: true }
    }

    /// Whether the instance certainly never ran the call: the connection
    /// could not be made, or closed before the call was written, or the
    /// instance refused the stream (`REFUSED_STREAM`, or left it out of
    /// those its GOAWAY said it would still run).
    pub fn never_sent(&self) -> bool {
        !self.sent
    }

    /// Whether the failure says something about the instance (not about
    /// the caller's request).
    pub fn instance_failed(&self) -> bool {
        self.instance_failed
    }

    /// Whether the call's deadline passed.
    pub fn timed_out(&self) -> bool {
        matches!(self.cause, Cause::Timeout(_))
    }

    /// The status a caller sees for this failure.
    pub fn status(&self) -> tonic::Status {
        match &self.cause {
            Cause::Status(status) => tonic::Status::new(status.code(), status.message()),
            Cause::Timeout(timeout) => tonic::Status::cancelled(timeout.to_string()),
        }
    }

    /// An error of `h2` on a call: unsent when the stream was refused or
    /// the instance's GOAWAY left it out.
    fn of_h2(what: &str, error: h2::Error) -> Self {
        let refused =
            error.reason() == Some(h2::Reason::REFUSED_STREAM) || (error.is_go_away() && error.is_remote());
        let status = tonic::Status::unavailable(format!("{what}: {error}"));
        if refused { Self::unsent(status) } else { Self::sent(status) }
    }
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.cause {
            Cause::Status(status) => f.write_str(status.message()),
            Cause::Timeout(timeout) => write!(f, "{timeout}"),
        }
    }
}

impl std::error::Error for LinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.cause {
            Cause::Status(status) => Some(status),
            Cause::Timeout(timeout) => Some(timeout),
        }
    }
}

/// An upstream URL the link cannot use.
#[derive(Debug, thiserror::Error)]
#[error("{url}: {reason}")]
pub struct BadUrl {
    url: String,
    reason: &'static str,
}

/// How a link connects and how long a call may take.
#[derive(Debug, Clone, Copy)]
pub struct LinkSettings {
    pub connect_timeout: Duration,
    /// The longest a call waits for its answer's headers (a shorter
    /// `grpc-timeout` wins).
    pub timeout: Duration,
}

/// The connection now in use, and which one it is (so the task that
/// drives it clears it only if no newer one replaced it).
struct Current {
    id: u64,
    sender: h2::client::SendRequest<Bytes>,
}

/// One endpoint's HTTP/2 connection (see the module).
pub struct Link {
    url: String,
    scheme: Scheme,
    authority: Authority,
    settings: LinkSettings,
    current: Arc<Mutex<Option<Current>>>,
    /// One connection attempt at a time; the others wait for its outcome.
    connecting: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Link {
    /// A link to `url` (`http://host:port`), connected at its first call.
    pub fn new(url: &str, settings: LinkSettings) -> Result<Self, BadUrl> {
        let bad = |reason| BadUrl { url: url.to_owned(), reason };
        let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(bad("only http:// is supported (TLS ends in front of tenx)"));
        }
        let authority = uri.authority().cloned().ok_or_else(|| bad("no host"))?;
        if authority.port_u16().is_none() {
            return Err(bad("no port"));
        }
        Ok(Self {
            url: url.to_owned(),
            scheme: Scheme::HTTP,
            authority,
            settings,
            current: Arc::default(),
            connecting: tokio::sync::Mutex::new(()),
            next_id: AtomicU64::new(0),
        })
    }

    fn in_use(&self) -> Option<(u64, h2::client::SendRequest<Bytes>)> {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        current.as_ref().map(|c| (c.id, c.sender.clone()))
    }

    /// Connection `id` closed before taking a call: it is forgotten, and
    /// the call, never written, may go anywhere.
    fn closed(&self, id: u64, error: &h2::Error) -> LinkError {
        forget(&self.current, id);
        LinkError::unsent(tonic::Status::unavailable(format!(
            "the connection to {} closed: {error}",
            self.url
        )))
    }

    /// The connection in use, or a new one.
    async fn connection(&self) -> Result<(u64, h2::client::SendRequest<Bytes>), LinkError> {
        if let Some(found) = self.in_use() {
            return Ok(found);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(found) = self.in_use() {
            return Ok(found);
        }
        match tokio::time::timeout(self.settings.connect_timeout, self.connect()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(LinkError::unsent(tonic::Status::unavailable(format!(
                "connecting to {}: no answer within {} ms",
                self.url,
                self.settings.connect_timeout.as_millis()
            )))),
        }
    }

    async fn connect(&self) -> Result<(u64, h2::client::SendRequest<Bytes>), LinkError> {
        let unreachable = |error: &dyn std::fmt::Display| {
            LinkError::unsent(tonic::Status::unavailable(format!("connecting to {}: {error}", self.url)))
        };
        let stream =
            tokio::net::TcpStream::connect(self.authority.as_str()).await.map_err(|e| unreachable(&e))?;
        stream.set_nodelay(true).map_err(|e| unreachable(&e))?;
        let (sender, connection) = h2::client::Builder::new()
            .enable_push(false)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .max_header_list_size(MAX_HEADER_LIST)
            .handshake::<_, Bytes>(stream)
            .await
            .map_err(|e| unreachable(&e))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(Current { id, sender: sender.clone() });
        let (current, url) = (Arc::downgrade(&self.current), self.url.clone());
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(upstream = %url, %error, "upstream connection closed");
            }
            if let Some(current) = current.upgrade() {
                forget(&current, id);
            }
        });
        Ok((id, sender))
    }

    /// Sends one unary call and returns its answer as it comes (headers
    /// now, the message and trailers as the body).
    pub async fn call(&self, request: http::Request<Body>) -> Result<http::Response<Body>, LinkError> {
        let deadline = super::timeout::of(request.headers())
            .map_or(self.settings.timeout, |asked| asked.min(self.settings.timeout));
        let (mut parts, body) = request.into_parts();
        let body = read_whole(body).await?;
        let path = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(self.scheme.clone());
        uri.authority = Some(self.authority.clone());
        uri.path_and_query = Some(path);
        parts.uri = http::Uri::from_parts(uri)
            .map_err(|e| LinkError::callers(tonic::Status::internal(e.to_string())))?;
        parts.version = http::Version::HTTP_2;
        strip_connection_headers(&mut parts.headers);
        // The instance learns the deadline too (a tonic server ends the
        // call past it), not only this side.
        if !parts.headers.contains_key(super::timeout::GRPC_TIMEOUT) {
            parts.headers.insert(super::timeout::GRPC_TIMEOUT, super::timeout::header(deadline));
        }
        let head = http::Request::from_parts(parts, ());
        match tokio::time::timeout(deadline, self.exchange(head, body)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(LinkError::timeout()),
        }
    }

    async fn exchange(
        &self,
        head: http::Request<()>,
        body: Bytes,
    ) -> Result<http::Response<Body>, LinkError> {
        let (id, sender) = self.connection().await?;
        // A connection that closed (or is going away) takes no new call:
        // it was never written, so it is safe anywhere.
        let mut sender = sender.ready().await.map_err(|error| self.closed(id, &error))?;
        let end = body.is_empty();
        let (response, mut stream) =
            sender.send_request(head, end).map_err(|error| self.closed(id, &error))?;
        if !end {
            stream.send_data(body, true).map_err(|e| LinkError::of_h2(&self.url, e))?;
        }
        let response = response.await.map_err(|e| LinkError::of_h2(&self.url, e))?;
        Ok(response.map(|recv| Body::new(Answer { recv, trailers_next: false })))
    }
}

/// A request's body, read whole: at most [`MAX_REQUEST`] bytes. A body
/// that is larger, or breaks off, is the caller's failure.
pub(crate) async fn read_whole(body: Body) -> Result<Bytes, LinkError> {
    match Limited::new(body, MAX_REQUEST).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(LinkError::callers(
            tonic::Status::resource_exhausted(format!("the request is larger than {MAX_REQUEST} bytes")),
        )),
        Err(error) => {
            Err(LinkError::callers(tonic::Status::cancelled(format!("the request's body failed: {error}"))))
        }
    }
}

fn forget(current: &Mutex<Option<Current>>, id: u64) {
    let mut current = current.lock().unwrap_or_else(PoisonError::into_inner);
    if current.as_ref().is_some_and(|c| c.id == id) {
        *current = None;
    }
}

/// Headers HTTP/2 forbids (RFC 9113 §8.2.2), which a request translated
/// from HTTP/1.1 (gRPC-Web) may carry; `h2` refuses a request with any.
/// `content-length` goes too: the body sent is the one read, whatever a
/// translation did to it.
fn strip_connection_headers(headers: &mut http::HeaderMap) {
    use http::header::{CONNECTION, CONTENT_LENGTH, TE, TRANSFER_ENCODING, UPGRADE};
    for name in [CONNECTION, TRANSFER_ENCODING, UPGRADE, CONTENT_LENGTH] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    if headers.get(TE).is_some_and(|te| te != "trailers") {
        headers.remove(TE);
    }
}

/// An answer's body: its data, then its trailers (gRPC's status).
struct Answer {
    recv: h2::RecvStream,
    trailers_next: bool,
}

impl hyper::body::Body for Answer {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.trailers_next {
            match self.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    // Read: the window opens again for the next message.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                Poll::Ready(None) => self.trailers_next = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        match self.recv.poll_trailers(cx) {
            Poll::Ready(Ok(Some(trailers))) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(error)) => Poll::Ready(Some(Err(error))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_http2_forbids_are_not_sent() {
        let mut headers = http::HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
            ("content-length", "12"),
            ("te", "gzip"),
            ("authorization", "Bearer t"),
        ] {
            headers.insert(k, http::HeaderValue::from_static(v));
        }
        strip_connection_headers(&mut headers);
        let left: Vec<&str> = headers.keys().map(http::HeaderName::as_str).collect();
        assert_eq!(left, ["authorization"]);
        let mut grpc = http::HeaderMap::new();
        grpc.insert("te", http::HeaderValue::from_static("trailers"));
        strip_connection_headers(&mut grpc);
        assert_eq!(grpc.get("te").map(|v| v.as_bytes()), Some(&b"trailers"[..]), "gRPC's own te stays");
    }

    #[test]
    fn only_plain_http_urls_with_a_port_make_a_link() {
        let settings =
            LinkSettings { connect_timeout: Duration::from_secs(1), timeout: Duration::from_secs(1) };
        assert!(Link::new("http://auth:50051", settings).is_ok());
        assert!(Link::new("http://10.0.0.5:50051", settings).is_ok());
        for bad in ["https://auth:50051", "http://auth", "auth:50051", "not a url", ""] {
            assert!(Link::new(bad, settings).is_err(), "{bad}");
        }
    }
}
