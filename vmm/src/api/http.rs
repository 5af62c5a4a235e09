//! A small HTTP/1.1 request parser and response writer for the control API.
//!
//! Written by hand rather than taken from a crate: the API only needs
//! `Content-Length` bodies on a local socket, and owning the parser gives full
//! control of the limits (head size, body size, what a malformed request
//! costs) that keep one misbehaving client from disturbing the VMM, without
//! adding a dependency tree to the binary. Chunked bodies are refused.

use std::io::{self, Write};

/// Longest request head (request line and headers) accepted, in bytes.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Largest request body accepted, in bytes; the API's bodies are a few paths.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How much of a malformed line an error message quotes back.
const EXCERPT_CHARS: usize = 60;

/// Why bytes from a client are not an acceptable HTTP request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The head did not end within [`MAX_HEAD_BYTES`].
    #[error("the request head is longer than {limit} bytes: send shorter headers")]
    HeadTooLarge { limit: usize },
    /// `Content-Length` is above [`MAX_BODY_BYTES`].
    #[error("the request body of {length} bytes is larger than the {limit}-byte limit")]
    BodyTooLarge { length: u64, limit: usize },
    /// The head is not text.
    #[error("the request head is not valid UTF-8 text")]
    NotText,
    /// The first line is not `METHOD /path HTTP/1.x`.
    #[error("the request line {line:?} is not of the form `METHOD /path HTTP/1.1`")]
    BadRequestLine { line: String },
    /// The version is not HTTP/1.0 or HTTP/1.1.
    #[error("HTTP version {version:?} is not supported: use HTTP/1.1")]
    BadVersion { version: String },
    /// A header line is not `Name: value`.
    #[error("the header line {line:?} is not of the form `Name: value`")]
    BadHeader { line: String },
    /// `Content-Length` is not one decimal number.
    #[error("Content-Length {value:?} is not one decimal byte count")]
    BadContentLength { value: String },
    /// The request uses `Transfer-Encoding`, which this server does not decode.
    #[error("Transfer-Encoding {value:?} is not supported: send the body with a Content-Length")]
    TransferEncoding { value: String },
}

impl HttpError {
    /// The status code that answers this error.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::HeadTooLarge { .. } => 431,
            HttpError::BodyTooLarge { .. } => 413,
            HttpError::BadVersion { .. } => 505,
            HttpError::TransferEncoding { .. } => 501,
            _ => 400,
        }
    }
}

/// The HTTP versions the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0: the connection closes after each response unless asked otherwise.
    Http10,
    /// HTTP/1.1: the connection stays open unless asked otherwise.
    Http11,
}

/// One complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method token, as sent (methods are case-sensitive).
    pub method: String,
    /// The request target, starting with `/`.
    pub target: String,
    /// The protocol version of the request.
    pub version: Version,
    /// Header names in lower case, with their values trimmed.
    pub headers: Vec<(String, String)>,
    /// The body, exactly `Content-Length` bytes.
    pub body: Vec<u8>,
}

impl Request {
    /// The value of the first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Whether the client wants the connection kept open after the response.
    pub fn keep_alive(&self) -> bool {
        let has = |token: &str| {
            self.header("connection").is_some_and(|value| {
                value
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case(token))
            })
        };
        match self.version {
            Version::Http11 => !has("close"),
            Version::Http10 => has("keep-alive"),
        }
    }
}

/// The parsed head of a request whose body may still be arriving.
#[derive(Debug)]
struct Head {
    method: String,
    target: String,
    version: Version,
    headers: Vec<(String, String)>,
    head_len: usize,
    body_len: usize,
    continue_sent: bool,
}

/// An incremental request parser: feed it bytes as they arrive, take whole
/// requests out. Pipelined requests come out one after the other.
#[derive(Debug, Default)]
pub struct RequestParser {
    buf: Vec<u8>,
    head: Option<Head>,
}

impl RequestParser {
    /// An empty parser.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the client.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Whether part of a request has arrived but not all of it.
    pub fn has_partial(&self) -> bool {
        self.head.is_some() || self.buf.iter().any(|b| !matches!(b, b'\r' | b'\n'))
    }

    /// The next complete request, `None` if more bytes are needed.
    pub fn next_request(&mut self) -> Result<Option<Request>, HttpError> {
        if self.head.is_none() {
            self.head = self.parse_head()?;
        }
        let Some(head) = &self.head else {
            return Ok(None);
        };
        let end = head.head_len + head.body_len;
        if self.buf.len() < end {
            return Ok(None);
        }
        let Some(head) = self.head.take() else {
            return Ok(None);
        };
        let body = self.buf[head.head_len..end].to_vec();
        self.buf.drain(..end);
        Ok(Some(Request {
            method: head.method,
            target: head.target,
            version: head.version,
            headers: head.headers,
            body,
        }))
    }

    /// True once per request whose client sent `Expect: 100-continue` and
    /// now waits for the interim `100 Continue` before sending its body.
    pub fn take_continue(&mut self) -> bool {
        let buffered = self.buf.len();
        let Some(head) = self.head.as_mut() else {
            return false;
        };
        let expects = find_header(&head.headers, "expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        let waiting = buffered < head.head_len + head.body_len;
        if expects && waiting && !head.continue_sent {
            head.continue_sent = true;
            return true;
        }
        false
    }

    fn parse_head(&mut self) -> Result<Option<Head>, HttpError> {
        self.skip_leading_blank_lines();
        let Some(end) = find(&self.buf, b"\r\n\r\n") else {
            if self.buf.len() > MAX_HEAD_BYTES {
                return Err(HttpError::HeadTooLarge {
                    limit: MAX_HEAD_BYTES,
                });
            }
            return Ok(None);
        };
        let head_len = end + 4;
        if head_len > MAX_HEAD_BYTES {
            return Err(HttpError::HeadTooLarge {
                limit: MAX_HEAD_BYTES,
            });
        }
        let text = std::str::from_utf8(&self.buf[..end]).map_err(|_| HttpError::NotText)?;
        parse_head_text(text, head_len).map(Some)
    }

    /// Drops the empty lines a client may send between requests (RFC 9112 2.2).
    fn skip_leading_blank_lines(&mut self) {
        let blank = self
            .buf
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        let even = blank - blank % 2;
        if even > 0 && self.buf[..even].chunks(2).all(|pair| pair == b"\r\n") {
            self.buf.drain(..even);
        }
    }
}

fn parse_head_text(text: &str, head_len: usize) -> Result<Head, HttpError> {
    let mut lines = text.split("\r\n");
    let (method, target, version) = parse_request_line(lines.next().unwrap_or(""))?;
    let headers = parse_header_lines(lines)?;
    if let Some(value) = find_header(&headers, "transfer-encoding") {
        return Err(HttpError::TransferEncoding {
            value: excerpt(value),
        });
    }
    let body_len = content_length(&headers)?;
    Ok(Head {
        method,
        target,
        version,
        headers,
        head_len,
        body_len,
        continue_sent: false,
    })
}

fn parse_request_line(line: &str) -> Result<(String, String, Version), HttpError> {
    let bad = || HttpError::BadRequestLine {
        line: excerpt(line),
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if !is_token(method) || !target.starts_with('/') || target.contains(char::is_control) {
        return Err(bad());
    }
    let version = match version {
        "HTTP/1.1" => Version::Http11,
        "HTTP/1.0" => Version::Http10,
        v if v.starts_with("HTTP/") => {
            return Err(HttpError::BadVersion {
                version: excerpt(v),
            })
        }
        _ => return Err(bad()),
    };
    Ok((method.to_string(), target.to_string(), version))
}

/// Parses `Name: value` lines into lower-case names and trimmed values.
pub(crate) fn parse_header_lines<'a>(
    lines: impl Iterator<Item = &'a str>,
) -> Result<Vec<(String, String)>, HttpError> {
    let mut headers = Vec::new();
    for line in lines {
        let bad = || HttpError::BadHeader {
            line: excerpt(line),
        };
        let (name, value) = line.split_once(':').ok_or_else(bad)?;
        if !is_token(name) || value.contains(|c: char| c.is_control() && c != '\t') {
            return Err(bad());
        }
        let value = value.trim_matches(|c| c == ' ' || c == '\t');
        headers.push((name.to_ascii_lowercase(), value.to_string()));
    }
    Ok(headers)
}

/// The body length from `Content-Length`; repeated headers must agree.
pub(crate) fn content_length(headers: &[(String, String)]) -> Result<usize, HttpError> {
    let mut length: Option<u64> = None;
    for (_, value) in headers.iter().filter(|(name, _)| name == "content-length") {
        let bad = || HttpError::BadContentLength {
            value: excerpt(value),
        };
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let parsed: u64 = value.parse().map_err(|_| bad())?;
        if length.is_some_and(|l| l != parsed) {
            return Err(bad());
        }
        length = Some(parsed);
    }
    let length = length.unwrap_or(0);
    if length > MAX_BODY_BYTES as u64 {
        return Err(HttpError::BodyTooLarge {
            length,
            limit: MAX_BODY_BYTES,
        });
    }
    Ok(length as usize)
}

pub(crate) fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The first position of `needle` in `haystack`.
pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// An RFC 9110 token: the characters allowed in methods and header names.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The start of `s`, short enough to quote back in an error message.
fn excerpt(s: &str) -> String {
    let mut out: String = s.chars().take(EXCERPT_CHARS).collect();
    if s.chars().count() > EXCERPT_CHARS {
        out.push_str("...");
    }
    out
}

/// A response ready to be written to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Extra headers (the writer adds Content-Length, Connection, Server).
    pub headers: Vec<(String, String)>,
    /// The body; never sent for statuses that cannot carry one (1xx, 204, 304).
    pub body: Vec<u8>,
}

impl Response {
    /// A response without a body.
    pub fn empty(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A response carrying `value` as its JSON body.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        let headers = vec![("Content-Type".to_string(), "application/json".to_string())];
        Response {
            status,
            headers,
            body: value.to_string().into_bytes(),
        }
    }

    /// The same response with one more header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Writes the response; `keep_alive` false adds `Connection: close`.
    pub fn write_to<W: Write>(&self, out: &mut W, keep_alive: bool) -> io::Result<()> {
        let mut bytes = self.head(keep_alive).into_bytes();
        if carries_body(self.status) {
            bytes.extend_from_slice(&self.body);
        }
        out.write_all(&bytes)?;
        out.flush()
    }

    fn head(&self, keep_alive: bool) -> String {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nServer: hiber\r\n",
            self.status,
            reason(self.status)
        );
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if carries_body(self.status) {
            head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        head.push_str(if keep_alive {
            "Connection: keep-alive\r\n"
        } else {
            "Connection: close\r\n"
        });
        head.push_str("\r\n");
        head
    }
}

/// Whether a response with this status has a body (RFC 9110 6.4.1).
pub(crate) fn carries_body(status: u16) -> bool {
    !(100..200).contains(&status) && status != 204 && status != 304
}

/// The reason phrase for the status codes the API uses.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(bytes: &[u8]) -> Result<Vec<Request>, HttpError> {
        let mut parser = RequestParser::new();
        parser.feed(bytes);
        let mut out = Vec::new();
        while let Some(request) = parser.next_request()? {
            out.push(request);
        }
        Ok(out)
    }

    fn parse_one(bytes: &[u8]) -> Result<Request, HttpError> {
        let mut requests = parse_all(bytes)?;
        assert_eq!(requests.len(), 1, "expected one request in {bytes:?}");
        Ok(requests.remove(0))
    }

    #[test]
    fn parses_a_get_without_body() {
        let r = parse_one(b"GET / HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n").unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.target, "/");
        assert_eq!(r.version, Version::Http11);
        assert_eq!(r.header("host"), Some("localhost"));
        assert!(r.body.is_empty());
    }

    #[test]
    fn parses_a_body_fed_one_byte_at_a_time() {
        let raw = b"PATCH /vm HTTP/1.1\r\nContent-Length: 18\r\n\r\n{\"state\":\"Paused\"}";
        let mut parser = RequestParser::new();
        for (i, byte) in raw.iter().enumerate() {
            assert_eq!(
                parser.next_request().unwrap(),
                None,
                "complete too early at byte {i}"
            );
            parser.feed(std::slice::from_ref(byte));
        }
        let request = parser.next_request().unwrap().unwrap();
        assert_eq!(request.body, b"{\"state\":\"Paused\"}");
        assert!(!parser.has_partial());
    }

    #[test]
    fn pipelined_requests_come_out_in_order() {
        let raw = b"PUT /a HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}GET /b HTTP/1.1\r\n\r\n\
                    GET /c HTTP/1.1\r\n";
        let mut parser = RequestParser::new();
        parser.feed(raw);
        assert_eq!(parser.next_request().unwrap().unwrap().target, "/a");
        assert_eq!(parser.next_request().unwrap().unwrap().target, "/b");
        assert_eq!(parser.next_request().unwrap(), None);
        assert!(parser.has_partial());
        parser.feed(b"\r\n");
        assert_eq!(parser.next_request().unwrap().unwrap().target, "/c");
    }

    #[test]
    fn a_body_without_content_length_is_read_as_the_next_request() {
        let raw = b"PUT /snapshot/create HTTP/1.1\r\n\r\n{\"snapshot_path\": \"x\"}\r\n\r\n";
        let mut parser = RequestParser::new();
        parser.feed(raw);
        assert!(parser.next_request().unwrap().unwrap().body.is_empty());
        let err = parser.next_request().unwrap_err();
        assert!(matches!(err, HttpError::BadRequestLine { .. }), "{err:?}");
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn a_too_large_body_is_refused_before_it_arrives() {
        let raw = format!(
            "PUT /vm HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY_BYTES + 1
        );
        let err = parse_all(raw.as_bytes()).unwrap_err();
        assert_eq!(err.status(), 413);
        let raw = format!("PUT /vm HTTP/1.1\r\nContent-Length: {MAX_BODY_BYTES}\r\n\r\n");
        assert_eq!(parse_all(raw.as_bytes()).unwrap(), vec![]);
    }

    #[test]
    fn a_too_long_head_is_refused_with_or_without_its_end() {
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(parse_all(long.as_bytes()).unwrap_err().status(), 431);
        let ended = format!("{long}\r\n");
        assert_eq!(parse_all(ended.as_bytes()).unwrap_err().status(), 431);
    }

    #[test]
    fn malformed_request_lines_are_refused() {
        for raw in [
            "GET\r\n\r\n",
            "GET /\r\n\r\n",
            "GET / HTTP/1.1 extra\r\n\r\n",
            "GET vm HTTP/1.1\r\n\r\n",
            "G(T / HTTP/1.1\r\n\r\n",
            "GET  / HTTP/1.1\r\n\r\n",
            "GET / FTP/1.1\r\n\r\n",
        ] {
            let err = parse_all(raw.as_bytes()).unwrap_err();
            assert!(
                matches!(err, HttpError::BadRequestLine { .. }),
                "{raw:?}: {err:?}"
            );
        }
        let err = parse_all(b"GET / HTTP/2.0\r\n\r\n").unwrap_err();
        assert_eq!(err.status(), 505);
        let err = parse_all(b"GET /\xff HTTP/1.1\r\n\r\n").unwrap_err();
        assert_eq!(err, HttpError::NotText);
    }

    #[test]
    fn malformed_headers_are_refused() {
        for raw in [
            "GET / HTTP/1.1\r\nNoColon\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            "GET / HTTP/1.1\r\n: x\r\n\r\n",
        ] {
            let err = parse_all(raw.as_bytes()).unwrap_err();
            assert!(
                matches!(err, HttpError::BadHeader { .. }),
                "{raw:?}: {err:?}"
            );
        }
    }

    #[test]
    fn content_length_must_be_one_number() {
        for value in ["-1", "1 2", "0x10", "", "+3", "99999999999999999999999"] {
            let raw = format!("PUT / HTTP/1.1\r\nContent-Length: {value}\r\n\r\n");
            let err = parse_all(raw.as_bytes()).unwrap_err();
            assert!(
                matches!(err, HttpError::BadContentLength { .. }),
                "{value:?}: {err:?}"
            );
        }
        let twice = b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab";
        assert!(parse_all(twice).is_err());
        let agree = b"PUT / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab";
        assert_eq!(parse_one(agree).unwrap().body, b"ab");
    }

    #[test]
    fn chunked_bodies_are_not_implemented() {
        let raw = b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
        assert_eq!(parse_all(raw).unwrap_err().status(), 501);
    }

    #[test]
    fn blank_lines_between_requests_are_skipped() {
        let r = parse_one(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(r.target, "/");
        let mut parser = RequestParser::new();
        parser.feed(b"\r\n");
        assert!(!parser.has_partial());
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_header() {
        let ka = |raw: &[u8]| parse_one(raw).unwrap().keep_alive();
        assert!(ka(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn continue_is_offered_once_while_the_body_is_missing() {
        let mut parser = RequestParser::new();
        parser.feed(b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(parser.next_request().unwrap(), None);
        assert!(parser.take_continue());
        assert!(!parser.take_continue());
        parser.feed(b"{}");
        assert_eq!(parser.next_request().unwrap().unwrap().body, b"{}");
        assert!(!parser.take_continue());
    }

    #[test]
    fn error_messages_quote_only_an_excerpt() {
        let raw = format!("{}\r\n\r\n", "x".repeat(1000));
        let message = parse_all(raw.as_bytes()).unwrap_err().to_string();
        assert!(message.len() < 200, "{message}");
    }

    /// Mutated requests, split at random points: the parser may refuse them
    /// but must never panic or hand out more bytes than it was fed.
    #[test]
    fn mutated_input_never_panics() {
        let seed = b"PUT /snapshot/load HTTP/1.1\r\nContent-Length: 4\r\nX: y\r\n\r\n{}{}";
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..5000 {
            let mut bytes = seed.to_vec();
            for _ in 0..(next() % 6) {
                let at = (next() as usize) % bytes.len();
                bytes[at] = b"\r\n :0123456789/\x00\xffa"[(next() % 16) as usize];
            }
            let split = (next() as usize) % bytes.len();
            let mut parser = RequestParser::new();
            parser.feed(&bytes[..split]);
            let _ = parser.next_request();
            parser.feed(&bytes[split..]);
            while let Ok(Some(request)) = parser.next_request() {
                assert!(request.body.len() <= bytes.len());
            }
        }
    }

    #[test]
    fn no_content_responses_carry_no_length_or_body() {
        let mut out = Vec::new();
        let mut response = Response::empty(204);
        response.body = b"ignored".to_vec();
        response.write_to(&mut out, true).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 204 No Content\r\n"), "{text}");
        assert!(!text.contains("Content-Length"), "{text}");
        assert!(text.ends_with("Connection: keep-alive\r\n\r\n"), "{text}");
    }

    #[test]
    fn json_responses_carry_type_length_and_close() {
        let mut out = Vec::new();
        let value = serde_json::json!({"fault_message": "no"});
        Response::json(400, &value)
            .with_header("Allow", "GET")
            .write_to(&mut out, false)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        let body = value.to_string();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(
            text.contains("Content-Type: application/json\r\n"),
            "{text}"
        );
        assert!(text.contains("Allow: GET\r\n"), "{text}");
        assert!(
            text.contains(&format!("Content-Length: {}\r\n", body.len())),
            "{text}"
        );
        assert!(
            text.ends_with(&format!("Connection: close\r\n\r\n{body}")),
            "{text}"
        );
    }
}
