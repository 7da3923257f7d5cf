//! The HTTP/1.1 client the OTLP exporters post through: one request per
//! connection, every step under one deadline, the response bounded.
//!
//! Why not the exporter's reqwest/hyper client: the collector is a remote
//! party we do not control, and what we need from it is small (a status
//! line, `Retry-After`, a short body). A blocking client on the exporter's
//! own thread, cut off by deadlines we set, cannot hold the event loop, and
//! keeps the build free of a second HTTP stack and its TLS libraries.
//! Plain `http://` only: run a collector on the node (the usual DaemonSet
//! agent) for TLS to the backend.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream, ToSocketAddrs as _},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response};
use opentelemetry_http::{HttpClient, HttpError, ResponseBodyTooLarge};

/// Response head (status line and headers) kept at most.
const MAX_HEAD: usize = 16 * 1024;
/// Response body kept at most (a partial-success message is a few hundred
/// bytes; anything longer is refused, not buffered).
const MAX_BODY: usize = 64 * 1024;
/// Bytes written per `write`: the deadline is checked between them, so a
/// collector that reads a byte a second is cut off in time.
const WRITE_CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct Client {
    /// Connecting, per address tried.
    pub connect_timeout: Duration,
    /// The whole exchange: connect, send, receive.
    pub request_timeout: Duration,
}

#[derive(Debug)]
struct Error(String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

fn err(msg: impl Into<String>) -> HttpError {
    Box::new(Error(msg.into()))
}

#[async_trait::async_trait]
impl HttpClient for Client {
    /// Blocks the calling thread (the SDK's export thread or our log
    /// worker, never the event loop) for at most `request_timeout`.
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        self.send_blocking(&request)
    }
}

impl Client {
    fn send_blocking(&self, request: &Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let deadline = Instant::now() + self.request_timeout;
        let uri = request.uri();
        if uri.scheme_str() != Some("http") {
            return Err(err(format!(
                "{uri}: only http:// collectors are supported (send to a collector on this node)"
            )));
        }
        let host = uri.host().ok_or_else(|| err(format!("{uri}: no host")))?;
        let port = uri.port_u16().unwrap_or(80);
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        // Name resolution blocks (getaddrinfo has no deadline): this runs
        // on an export thread, so a slow resolver delays exports only.
        let host_for_lookup = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = (host_for_lookup, port)
            .to_socket_addrs()
            .map_err(|e| err(format!("{host}: {e}")))?
            .collect();
        let mut stream = None;
        let mut last = String::from("no address");
        for addr in addrs {
            let left = remaining(deadline)?;
            match TcpStream::connect_timeout(&addr, left.min(self.connect_timeout)) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        let mut stream =
            stream.ok_or_else(|| err(format!("connecting to {host}:{port}: {last}")))?;
        let _ = stream.set_nodelay(true);

        let mut head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            uri.authority().map(|a| a.as_str()).unwrap_or(host),
            request.body().len()
        );
        for (name, value) in request.headers() {
            // Header values come from our own configuration (content type,
            // OTEL_EXPORTER_OTLP_HEADERS); a CR or LF would split the request.
            let Ok(v) = value.to_str() else { continue };
            if v.contains(['\r', '\n']) {
                continue;
            }
            head.push_str(&format!("{}: {v}\r\n", name.as_str()));
        }
        head.push_str("\r\n");
        write_all(&mut stream, head.as_bytes(), deadline)?;
        for chunk in request.body().chunks(WRITE_CHUNK) {
            write_all(&mut stream, chunk, deadline)?;
        }

        let mut buf = Vec::with_capacity(1024);
        let mut tmp = [0u8; 8192];
        loop {
            if let Some(parsed) = parse_response(&buf)? {
                match parsed {
                    Parsed::Complete(resp) => return Ok(resp),
                    Parsed::NeedBody => {}
                }
            }
            stream
                .set_read_timeout(Some(remaining(deadline)?))
                .map_err(|e| err(e.to_string()))?;
            let n = match stream.read(&mut tmp) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(err("the collector did not answer in time"));
                }
                Err(e) => return Err(err(format!("reading the response: {e}"))),
            };
            if n == 0 {
                // Closed: what we have is the whole response (no length).
                return match parse_eof(&buf)? {
                    Some(resp) => Ok(resp),
                    None => Err(err(
                        "the collector closed the connection without a response",
                    )),
                };
            }
            if buf.len() + n > MAX_HEAD + MAX_BODY {
                return Err(Box::new(ResponseBodyTooLarge::new()));
            }
            buf.extend_from_slice(&tmp[..n]);
        }
    }
}

fn remaining(deadline: Instant) -> Result<Duration, HttpError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(err("the collector did not take the request in time"))
    } else {
        Ok(left)
    }
}

fn write_all(stream: &mut TcpStream, mut data: &[u8], deadline: Instant) -> Result<(), HttpError> {
    while !data.is_empty() {
        stream
            .set_write_timeout(Some(remaining(deadline)?))
            .map_err(|e| err(e.to_string()))?;
        match stream.write(data) {
            Ok(0) => return Err(err("the collector closed the connection")),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(err(format!("sending to the collector: {e}"))),
        }
    }
    Ok(())
}

#[derive(Debug)]
enum Parsed {
    Complete(Response<Bytes>),
    /// The head is in; the body's `Content-Length` is not yet.
    NeedBody,
}

/// A response's status line and headers.
struct Head {
    builder: http::response::Builder,
    /// Where the body starts in the buffer.
    body_at: usize,
    length: Option<usize>,
    chunked: bool,
}

/// Status line and headers of `buf`, once they are all there.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, HttpError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err(err("the collector's response head is too long"));
        }
        return Ok(None);
    };
    if end > MAX_HEAD {
        return Err(err("the collector's response head is too long"));
    }
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| err("response head is not text"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(err("the collector's response is not HTTP/1.x"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..1000).contains(s))
        .ok_or_else(|| err("the collector's status line has no status code"))?;
    let mut builder = Response::builder().status(status);
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            builder = builder.header(n, v);
        }
    }
    Ok(Some(Head {
        builder,
        body_at: end + 4,
        length,
        chunked,
    }))
}

/// A whole response in `buf`, when its length says it is complete.
fn parse_response(buf: &[u8]) -> Result<Option<Parsed>, HttpError> {
    let Some(Head {
        builder,
        body_at,
        length,
        chunked,
    }) = parse_head(buf)?
    else {
        return Ok(None);
    };
    let body = &buf[body_at..];
    let response = |b: &[u8]| {
        builder
            .body(Bytes::copy_from_slice(b))
            .map_err(|e| err(e.to_string()))
    };
    match length {
        Some(n) if n > MAX_BODY => Err(Box::new(ResponseBodyTooLarge::new())),
        Some(n) if body.len() >= n => Ok(Some(Parsed::Complete(response(&body[..n])?))),
        Some(_) => Ok(Some(Parsed::NeedBody)),
        // A chunked body is not decoded: only the status matters to the
        // exporter, and a partial-success message is an optional detail.
        None if chunked => Ok(Some(Parsed::Complete(response(&[])?))),
        // No length: the body runs to the close (we asked for one).
        None => Ok(Some(Parsed::NeedBody)),
    }
}

/// The response once the collector closed the connection.
fn parse_eof(buf: &[u8]) -> Result<Option<Response<Bytes>>, HttpError> {
    let Some(Head {
        builder,
        body_at,
        length,
        ..
    }) = parse_head(buf)?
    else {
        return Ok(None);
    };
    let body = &buf[body_at..];
    if let Some(n) = length
        && body.len() < n
    {
        return Err(err("the collector closed the connection mid-response"));
    }
    let body = &body[..length.unwrap_or(body.len()).min(body.len())];
    builder
        .body(Bytes::copy_from_slice(body))
        .map(Some)
        .map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> Response<Bytes> {
        match parse_response(buf).unwrap() {
            Some(Parsed::Complete(r)) => r,
            other => panic!("not complete: {other:?}"),
        }
    }

    #[test]
    fn a_collector_ok_with_a_length_is_complete() {
        let r = complete(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 2\r\n\r\nab");
        assert_eq!(r.status(), 200);
        assert_eq!(r.body().as_ref(), b"ab");
    }

    #[test]
    fn half_a_head_or_body_waits_for_more() {
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Le")
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab").unwrap(),
            Some(Parsed::NeedBody)
        ));
    }

    #[test]
    fn retry_after_reaches_the_exporter() {
        let r = complete(b"HTTP/1.1 503 Busy\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "7");
    }

    #[test]
    fn a_body_to_the_close_is_taken_at_eof() {
        let r = parse_eof(b"HTTP/1.0 200 OK\r\n\r\nxyz").unwrap().unwrap();
        assert_eq!(r.body().as_ref(), b"xyz");
        assert!(parse_eof(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nxyz").is_err());
        assert!(parse_eof(b"HTTP/1.1 20").unwrap().is_none());
    }

    #[test]
    fn hostile_responses_are_refused_not_buffered() {
        // A 10 MB body announced: refused before it is read.
        let big = b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n";
        assert!(parse_response(big).is_err());
        // A head that never ends.
        let mut endless = b"HTTP/1.1 200 OK\r\n".to_vec();
        endless.extend(std::iter::repeat_n(b'x', MAX_HEAD + 1));
        assert!(parse_response(&endless).is_err());
        // Not HTTP, or no status.
        assert!(parse_response(b"SSH-2.0-x\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 abc\r\n\r\n").is_err());
        // A header with a control character is skipped, the rest kept.
        let r = complete(b"HTTP/1.1 200 OK\r\nX-Evil: a\x01b\r\nContent-Length: 0\r\n\r\n");
        assert!(r.headers().get("x-evil").is_none());
    }

    #[test]
    fn an_unreachable_or_silent_collector_fails_within_the_deadline() {
        let client = Client {
            connect_timeout: Duration::from_millis(300),
            request_timeout: Duration::from_millis(500),
        };
        // Accepts (the kernel's backlog) and never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1/logs", silent.local_addr().unwrap());
        let req = Request::post(url).body(Bytes::from_static(b"x")).unwrap();
        let start = Instant::now();
        assert!(client.send_blocking(&req).is_err());
        // The deadline holds (a correctness bound, far above the 0.5 s
        // asked, not a speed claim).
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
        // Nothing listens.
        let port = silent.local_addr().unwrap().port();
        drop(silent);
        let req = Request::post(format!("http://127.0.0.1:{port}/v1/logs"))
            .body(Bytes::new())
            .unwrap();
        assert!(client.send_blocking(&req).is_err());
        // https is refused with what to do.
        let req = Request::post("https://127.0.0.1:1/v1/logs")
            .body(Bytes::new())
            .unwrap();
        let e = client.send_blocking(&req).unwrap_err().to_string();
        assert!(e.contains("only http://"), "{e}");
    }
}
