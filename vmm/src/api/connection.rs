//! Serves the requests of one client connection, one after the other.
//!
//! Each connection runs on its own thread, so an idle or slow client holds
//! only its own thread; the VMM sees requests one at a time on its channel.

use std::io::{self, Read};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, warn};
use vmm_sys_util::eventfd::EventFd;

use super::http::{HttpError, Request, RequestParser, Response};
use super::routes::{self, ApiRequest};
use super::server::{ApiCall, ApiResponse, ServerOptions};
use super::{error_chain, fault_body};

/// What every connection thread shares with the server.
pub(crate) struct Context {
    pub(crate) handler: Sender<ApiCall>,
    pub(crate) wake: Arc<EventFd>,
    pub(crate) options: ServerOptions,
    pub(crate) stopping: Arc<AtomicBool>,
    pub(crate) active: Arc<AtomicUsize>,
}

impl Clone for Context {
    fn clone(&self) -> Self {
        Context {
            handler: self.handler.clone(),
            wake: Arc::clone(&self.wake),
            options: self.options,
            stopping: Arc::clone(&self.stopping),
            active: Arc::clone(&self.active),
        }
    }
}

/// Why no request could be read.
enum ReadFailure {
    /// The bytes are not an acceptable request; answer and close.
    Http(HttpError),
    /// The client was too slow; `partial` if a request had begun.
    TimedOut { partial: bool },
    /// The client closed in the middle of a request.
    Truncated,
    /// The socket failed.
    Io(io::Error),
}

impl From<HttpError> for ReadFailure {
    fn from(err: HttpError) -> Self {
        ReadFailure::Http(err)
    }
}

/// Serves `stream` until the client closes, errs or times out.
pub(crate) fn serve(mut stream: UnixStream, ctx: &Context) {
    if let Err(err) = stream.set_write_timeout(Some(ctx.options.request_timeout)) {
        warn!("cannot set a write timeout on an API connection: {err}");
        return;
    }
    let mut parser = RequestParser::new();
    loop {
        let request = match read_request(&mut stream, &mut parser, &ctx.options) {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(failure) => return refuse(&mut stream, failure),
        };
        let keep_alive = request.keep_alive() && !ctx.stopping.load(Ordering::SeqCst);
        let response = answer(&request, ctx);
        debug!(
            "API {} {} -> {}",
            request.method, request.target, response.status
        );
        if response.write_to(&mut stream, keep_alive).is_err() {
            return;
        }
        if !keep_alive {
            return linger(&mut stream);
        }
    }
}

/// Answers a failed read, if an answer is due, and ends the connection.
fn refuse(stream: &mut UnixStream, failure: ReadFailure) {
    let (status, message) = match failure {
        ReadFailure::Http(err) => (err.status(), err.to_string()),
        ReadFailure::TimedOut { partial: true } => (
            408,
            "the request did not arrive in time: send it whole".to_string(),
        ),
        ReadFailure::TimedOut { partial: false } | ReadFailure::Truncated => return,
        ReadFailure::Io(err) => return debug!("API connection failed: {err}"),
    };
    debug!("API request refused with {status}: {message}");
    let response = Response::json(status, &fault_body(&message));
    if response.write_to(stream, false).is_ok() {
        linger(stream);
    }
}

/// Longest wait for a refused client to finish sending before closing.
const LINGER: Duration = Duration::from_millis(100);

/// Drains what the client still sends, for a moment, before the socket is
/// closed: closing a Unix socket with unread data resets the connection,
/// and the client may then never read the answer just written.
fn linger(stream: &mut UnixStream) {
    let _ = stream.shutdown(Shutdown::Write);
    if stream.set_read_timeout(Some(LINGER)).is_err() {
        return;
    }
    let start = Instant::now();
    let mut sink = [0u8; 4096];
    while start.elapsed() < LINGER {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Reads until `parser` holds a whole request, within the configured times.
///
/// `Ok(None)` means the client closed (or stayed idle too long) between
/// requests, which is an ordinary end of a connection.
fn read_request(
    stream: &mut UnixStream,
    parser: &mut RequestParser,
    options: &ServerOptions,
) -> Result<Option<Request>, ReadFailure> {
    let idle_since = Instant::now();
    let mut started = parser.has_partial().then(Instant::now);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(request) = parser.next_request()? {
            return Ok(Some(request));
        }
        if parser.take_continue() {
            Response::empty(100)
                .write_to(stream, true)
                .map_err(ReadFailure::Io)?;
        }
        let timeout = match started {
            Some(start) => remaining(options.request_timeout, start),
            None => remaining(options.idle_timeout, idle_since),
        };
        let partial = started.is_some();
        let n = read_some(stream, &mut chunk, timeout, partial)?;
        if n == 0 {
            return if partial {
                Err(ReadFailure::Truncated)
            } else {
                Ok(None)
            };
        }
        started.get_or_insert_with(Instant::now);
        parser.feed(&chunk[..n]);
    }
}

fn remaining(limit: Duration, since: Instant) -> Option<Duration> {
    limit
        .checked_sub(since.elapsed())
        .filter(|left| !left.is_zero())
}

/// One read with a timeout; an idle timeout reads as a clean close.
fn read_some(
    stream: &mut UnixStream,
    chunk: &mut [u8],
    timeout: Option<Duration>,
    partial: bool,
) -> Result<usize, ReadFailure> {
    let timed_out = || ReadFailure::TimedOut { partial };
    let Some(timeout) = timeout else {
        return Err(timed_out());
    };
    stream
        .set_read_timeout(Some(timeout))
        .map_err(ReadFailure::Io)?;
    loop {
        match stream.read(chunk) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(timed_out())
            }
            Err(e) => return Err(ReadFailure::Io(e)),
        }
    }
}

/// The response to one well-formed HTTP request.
fn answer(request: &Request, ctx: &Context) -> Response {
    match routes::parse_request(&request.method, &request.target, &request.body) {
        Ok(api_request) => to_http(dispatch(api_request, ctx)),
        Err(err) => {
            let response = Response::json(err.status(), &fault_body(&error_chain(&err)));
            match err.allow() {
                Some(allow) => response.with_header("Allow", allow),
                None => response,
            }
        }
    }
}

/// Hands `request` to the VMM thread and waits for its answer.
fn dispatch(request: ApiRequest, ctx: &Context) -> ApiResponse {
    let (reply, answer) = mpsc::channel();
    if ctx.handler.send(ApiCall { request, reply }).is_err() {
        return ApiResponse::error(503, "the VMM is shutting down and takes no more requests");
    }
    if let Err(err) = ctx.wake.write(1) {
        warn!("cannot wake the VMM thread for an API request: {err}");
    }
    let timeout = ctx.options.reply_timeout;
    match answer.recv_timeout(timeout) {
        Ok(response) => response,
        Err(RecvTimeoutError::Timeout) => ApiResponse::error(
            504,
            format!(
                "the VMM did not answer within {} s; the operation may still complete: \
                 check GET / before retrying",
                timeout.as_secs()
            ),
        ),
        Err(RecvTimeoutError::Disconnected) => {
            ApiResponse::error(500, "the VMM dropped the request without answering it")
        }
    }
}

fn to_http(response: ApiResponse) -> Response {
    match &response.body {
        Some(body) => Response::json(response.status, body),
        None => Response::empty(response.status),
    }
}

/// Answers a connection that cannot be served now with 503 and closes it.
pub(crate) fn turn_away(mut stream: UnixStream, message: &str) {
    let _ = stream.set_write_timeout(Some(LINGER));
    let response = Response::json(503, &fault_body(message));
    if response.write_to(&mut stream, false).is_ok() {
        linger(&mut stream);
    }
}
