//! A minimal blocking client for the control API, used by `hiber pause`,
//! `hiber resume`, `hiber snapshot` and by tests.
//!
//! One request per connection (`Connection: close`), which keeps the
//! response framing simple and leaves no idle connection on the server.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::http::{self, HttpError};

/// How long [`request`] waits for an answer: longer than the server waits
/// for the VMM, so a slow snapshot ends with the server's message.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(330);
/// Largest response head accepted.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Largest response body accepted.
const MAX_RESPONSE_BODY: usize = 1024 * 1024;

/// Why a request to a Hiber process failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket path.
    #[error(
        "no Hiber process is listening on {}: start one with hiber run --api-sock {}",
        path.display(), path.display()
    )]
    NoServer { path: PathBuf },
    /// Connecting failed for another reason (permissions, path too long...).
    #[error("cannot connect to the API socket {}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The server did not answer in time.
    #[error("the Hiber process on {} did not answer within {} s", path.display(), secs)]
    Timeout { path: PathBuf, secs: u64 },
    /// Sending or receiving failed.
    #[error("the exchange with the Hiber process on {} failed", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The answer is not HTTP as this client understands it.
    #[error("the answer from {} is not a valid HTTP response: {reason}", path.display())]
    BadResponse { path: PathBuf, reason: String },
    /// The answer's body is not JSON.
    #[error("the answer from {} has a body that is not JSON", path.display())]
    BadJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Sends one request and returns the status and JSON body (if any).
///
/// `path` is the HTTP path, such as `/vm`. Waits up to [`DEFAULT_TIMEOUT`].
pub fn request(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<(u16, Option<serde_json::Value>), ClientError> {
    request_with_timeout(sock, method, path, body, DEFAULT_TIMEOUT)
}

/// [`request`] with an explicit time limit for the answer.
pub fn request_with_timeout(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<(u16, Option<serde_json::Value>), ClientError> {
    let exchange = Exchange { sock, timeout };
    let mut stream = exchange.connect()?;
    let body = body.map(|value| value.to_string()).unwrap_or_default();
    let text = encode_request(method, path, &body);
    stream
        .write_all(text.as_bytes())
        .map_err(|e| exchange.io(e))?;
    let (status, body) = exchange.read_response(&mut stream)?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok((status, None));
    }
    let json = serde_json::from_slice(&body).map_err(|source| ClientError::BadJson {
        path: sock.to_path_buf(),
        source,
    })?;
    Ok((status, Some(json)))
}

/// The `fault_message` of an error body, if it has one.
pub fn fault_message(body: Option<&serde_json::Value>) -> Option<&str> {
    body?.get("fault_message")?.as_str()
}

fn encode_request(method: &str, path: &str, body: &str) -> String {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if !body.is_empty() {
        text.push_str("Content-Type: application/json\r\nAccept: application/json\r\n");
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    text
}

/// One request's socket path and time limit, for error reporting.
struct Exchange<'a> {
    sock: &'a Path,
    timeout: Duration,
}

impl Exchange<'_> {
    fn connect(&self) -> Result<UnixStream, ClientError> {
        let path = self.sock.to_path_buf();
        let stream = UnixStream::connect(self.sock).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                ClientError::NoServer { path: path.clone() }
            }
            _ => ClientError::Connect {
                path: path.clone(),
                source,
            },
        })?;
        stream
            .set_read_timeout(Some(self.timeout))
            .map_err(|e| self.io(e))?;
        stream
            .set_write_timeout(Some(self.timeout))
            .map_err(|e| self.io(e))?;
        Ok(stream)
    }

    fn io(&self, source: io::Error) -> ClientError {
        let path = self.sock.to_path_buf();
        match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout {
                path,
                secs: self.timeout.as_secs(),
            },
            _ => ClientError::Io { path, source },
        }
    }

    fn bad(&self, reason: impl Into<String>) -> ClientError {
        ClientError::BadResponse {
            path: self.sock.to_path_buf(),
            reason: reason.into(),
        }
    }

    /// Reads the final response (skipping 1xx interim ones): status and body.
    fn read_response(&self, stream: &mut UnixStream) -> Result<(u16, Vec<u8>), ClientError> {
        let mut buf = Vec::new();
        loop {
            let head_len = self.read_head(stream, &mut buf)?;
            let head = std::str::from_utf8(&buf[..head_len - 4])
                .map_err(|_| self.bad("the head is not UTF-8 text"))?;
            let (status, headers) = self.parse_head(head)?;
            buf.drain(..head_len);
            if (100..200).contains(&status) {
                continue;
            }
            let body = self.read_body(stream, buf, status, &headers)?;
            return Ok((status, body));
        }
    }

    /// Reads until `buf` holds a whole head; returns its length with CRLFCRLF.
    fn read_head(&self, stream: &mut UnixStream, buf: &mut Vec<u8>) -> Result<usize, ClientError> {
        loop {
            if let Some(end) = http::find(buf, b"\r\n\r\n") {
                return Ok(end + 4);
            }
            if buf.len() > MAX_RESPONSE_HEAD {
                return Err(self.bad("the head is too long"));
            }
            if self.read_more(stream, buf)? == 0 {
                return Err(self.bad("the server closed the connection before answering"));
            }
        }
    }

    fn parse_head(&self, head: &str) -> Result<(u16, Vec<(String, String)>), ClientError> {
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        let status = parts.next().and_then(|s| s.parse::<u16>().ok());
        let Some(status) = status.filter(|s| (100..600).contains(s)) else {
            return Err(self.bad(format!("bad status line {status_line:?}")));
        };
        if !version.starts_with("HTTP/1.") {
            return Err(self.bad(format!("bad status line {status_line:?}")));
        }
        let headers = http::parse_header_lines(lines).map_err(|e| self.bad(e.to_string()))?;
        Ok((status, headers))
    }

    fn read_body(
        &self,
        stream: &mut UnixStream,
        mut buf: Vec<u8>,
        status: u16,
        headers: &[(String, String)],
    ) -> Result<Vec<u8>, ClientError> {
        if !http::carries_body(status) {
            return Ok(Vec::new());
        }
        let length = match http::find_header(headers, "content-length") {
            Some(_) => Some(response_length(headers).map_err(|e| self.bad(e.to_string()))?),
            None => None,
        };
        while length.is_none_or(|l| buf.len() < l) {
            if buf.len() > MAX_RESPONSE_BODY {
                return Err(self.bad("the body is too large"));
            }
            if self.read_more(stream, &mut buf)? == 0 {
                if length.is_some() {
                    return Err(self.bad("the server closed the connection mid-body"));
                }
                break;
            }
        }
        buf.truncate(length.unwrap_or(buf.len()));
        Ok(buf)
    }

    fn read_more(&self, stream: &mut UnixStream, buf: &mut Vec<u8>) -> Result<usize, ClientError> {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk) {
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io(e)),
            }
        }
    }
}

/// The `Content-Length` of a response, which may exceed the request limit.
fn response_length(headers: &[(String, String)]) -> Result<usize, HttpError> {
    let value = http::find_header(headers, "content-length").unwrap_or("0");
    let bad = || HttpError::BadContentLength {
        value: value.to_string(),
    };
    let length: usize = value.parse().map_err(|_| bad())?;
    if length > MAX_RESPONSE_BODY {
        return Err(bad());
    }
    Ok(length)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::thread;

    use crate::api::test_dir::TestDir;

    /// Serves one connection with `reply` after reading the request head.
    fn one_shot_server(dir: &TestDir, reply: &'static [u8]) -> PathBuf {
        let sock = dir.path().join("one.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut buf = Vec::new();
            while http::find(&buf, b"\r\n\r\n").is_none() {
                let mut chunk = [0u8; 512];
                let n = stream.read(&mut chunk).unwrap();
                buf.extend_from_slice(&chunk[..n]);
            }
            stream.write_all(reply).unwrap();
        });
        sock
    }

    #[test]
    fn a_missing_socket_names_the_fix() {
        let dir = TestDir::new("client-missing");
        let sock = dir.path().join("nobody.sock");
        let err = request(&sock, "GET", "/", None).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ClientError::NoServer { .. }), "{err:?}");
        assert!(
            text.contains("start one with hiber run --api-sock"),
            "{text}"
        );
        assert!(text.contains("nobody.sock"), "{text}");
    }

    #[test]
    fn reads_a_body_without_content_length_until_close() {
        let dir = TestDir::new("client-eof");
        let sock = one_shot_server(&dir, b"HTTP/1.1 200 OK\r\n\r\n{\"a\": 1}");
        let (status, body) = request(&sock, "GET", "/", None).unwrap();
        assert_eq!((status, body), (200, Some(serde_json::json!({"a": 1}))));
    }

    #[test]
    fn skips_interim_responses_and_ignores_a_204_body() {
        let dir = TestDir::new("client-interim");
        let reply = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        let sock = one_shot_server(&dir, reply);
        assert_eq!(request(&sock, "PATCH", "/vm", None).unwrap(), (204, None));
    }

    #[test]
    fn a_garbled_answer_is_reported() {
        let dir = TestDir::new("client-garbled");
        let sock = one_shot_server(&dir, b"SMTP ready\r\n\r\n");
        let err = request(&sock, "GET", "/", None).unwrap_err();
        assert!(matches!(err, ClientError::BadResponse { .. }), "{err:?}");
        let dir = TestDir::new("client-short");
        let sock = one_shot_server(&dir, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}");
        let err = request(&sock, "GET", "/", None).unwrap_err();
        assert!(err.to_string().contains("mid-body"), "{err}");
    }

    #[test]
    fn a_silent_server_times_out() {
        let dir = TestDir::new("client-silent");
        let sock = dir.path().join("silent.sock");
        let _listener = UnixListener::bind(&sock).unwrap();
        let timeout = Duration::from_millis(100);
        let err = request_with_timeout(&sock, "GET", "/", None, timeout).unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
    }

    #[test]
    fn the_request_is_framed_with_its_length() {
        let text = encode_request("PUT", "/vm", "{}");
        assert!(text.starts_with("PUT /vm HTTP/1.1\r\n"), "{text}");
        assert!(text.ends_with("Content-Length: 2\r\n\r\n{}"), "{text}");
        assert!(text.contains("Connection: close\r\n"), "{text}");
    }

    #[test]
    fn fault_messages_are_extracted() {
        let body = serde_json::json!({"fault_message": "nope"});
        assert_eq!(fault_message(Some(&body)), Some("nope"));
        assert_eq!(fault_message(None), None);
    }
}
