//! The smuggling and framing corpus: raw bytes through the real gateway, over loopback,
//! to an instance that records exactly what reaches it.
//!
//! Two tables. [`requests`]: a client's HTTP/1.1 bytes, the statuses the client must
//! get, and every request the instance may see (none at all, or exactly these, with
//! their targets, bodies and chosen header fields). [`responses`]: an instance's bytes,
//! and what the client must get. The instance parses what it receives strictly (RFC
//! 9112: one `Host`, one framing), so a request the gateway framed ambiguously, or a
//! second request hidden in a body, shows up as a difference. On every row, whatever it
//! expects: no field named or valued `forged` reaches the instance (in headers or
//! trailers), and no request for a target with `smuggled` in it.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// === the instance ===

/// One request as the instance parsed it off the wire.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
}

impl Received {
    fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Everything that reached the instance.
#[derive(Debug, Default)]
struct Log {
    /// Every byte received, on any connection.
    raw: Vec<u8>,
    requests: Vec<Received>,
    /// Bytes the instance could not read as a request, and why.
    unreadable: Vec<String>,
}

enum Parsed {
    Request(Received, usize),
    Partial,
    Invalid(String),
}

/// Reads one request off the front of `buf` as a strict HTTP/1.1 server would.
fn parse_request(buf: &[u8]) -> Parsed {
    let mut slots = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut slots);
    let head = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(e) => return Parsed::Invalid(format!("head: {e}")),
    };
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let mut received = Received {
        method: req.method.unwrap_or("").to_owned(),
        target: req.path.unwrap_or("").to_owned(),
        headers,
        body: Vec::new(),
        trailers: Vec::new(),
    };
    let lengths = received.header("content-length");
    let codings = received.header("transfer-encoding");
    if !lengths.is_empty() && !codings.is_empty() {
        return Parsed::Invalid("both Content-Length and Transfer-Encoding".into());
    }
    if lengths.len() > 1 || codings.len() > 1 {
        return Parsed::Invalid("framing given twice".into());
    }
    if received.header("host").len() != 1 {
        return Parsed::Invalid("not exactly one Host".into());
    }
    let rest = &buf[head..];
    if let Some(coding) = codings.first() {
        if !coding.eq_ignore_ascii_case("chunked") {
            return Parsed::Invalid(format!("transfer coding {coding:?}"));
        }
        return match dechunk(rest) {
            Parsed::Request(body, n) => {
                received.body = body.body;
                received.trailers = body.trailers;
                Parsed::Request(received, head + n)
            }
            other => other,
        };
    }
    let length = match lengths.first() {
        None => 0,
        Some(l) if !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()) => match l.parse() {
            Ok(n) => n,
            Err(_) => return Parsed::Invalid(format!("Content-Length {l:?}")),
        },
        Some(l) => return Parsed::Invalid(format!("Content-Length {l:?}")),
    };
    if rest.len() < length {
        return Parsed::Partial;
    }
    received.body = rest[..length].to_vec();
    Parsed::Request(received, head + length)
}

/// A chunked body off the front of `buf`: its data in `body`, its trailer fields.
fn dechunk(buf: &[u8]) -> Parsed {
    let mut out = Received {
        method: String::new(),
        target: String::new(),
        headers: Vec::new(),
        body: Vec::new(),
        trailers: Vec::new(),
    };
    let line = |at: usize| {
        buf[at..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|end| (&buf[at..at + end], at + end + 2))
    };
    let mut at = 0;
    loop {
        let Some((size_line, next)) = line(at) else {
            return Parsed::Partial;
        };
        let digits = size_line.split(|&b| b == b';').next().unwrap_or_default();
        let size = std::str::from_utf8(digits)
            .ok()
            .filter(|d| !d.is_empty() && d.len() <= 15)
            .and_then(|d| usize::from_str_radix(d, 16).ok());
        let Some(size) = size else {
            return Parsed::Invalid(format!("chunk size {size_line:?}"));
        };
        at = next;
        if size == 0 {
            break;
        }
        if buf.len() < at + size + 2 {
            return Parsed::Partial;
        }
        out.body.extend_from_slice(&buf[at..at + size]);
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Parsed::Invalid("chunk data not followed by CRLF".into());
        }
        at += size + 2;
    }
    loop {
        let Some((field, next)) = line(at) else {
            return Parsed::Partial;
        };
        at = next;
        if field.is_empty() {
            return Parsed::Request(out, at);
        }
        let field = String::from_utf8_lossy(field);
        let (name, value) = field.split_once(':').unwrap_or((&field, ""));
        out.trailers
            .push((name.to_ascii_lowercase(), value.trim().to_owned()));
    }
}

/// How the instance answers each request it reads.
#[derive(Clone, Copy)]
struct Answer {
    bytes: &'static [u8],
    /// Close the connection once the answer is written.
    close: bool,
}

const OK: Answer = Answer {
    bytes: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    close: false,
};

/// A function instance that records every byte it receives and answers each request
/// it can read with the same bytes.
struct Recorder {
    addr: SocketAddr,
    log: Arc<Mutex<Log>>,
}

impl Recorder {
    async fn start(answer: Answer) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        let shared = log.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, shared.clone(), answer));
            }
        });
        Recorder { addr, log }
    }
}

async fn serve(mut stream: TcpStream, log: Arc<Mutex<Log>>, answer: Answer) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match parse_request(&buf) {
            Parsed::Request(request, used) => {
                log.lock().requests.push(request);
                buf.drain(..used);
                if stream.write_all(answer.bytes).await.is_err() || answer.close {
                    return;
                }
                continue;
            }
            Parsed::Invalid(why) => {
                log.lock()
                    .unreadable
                    .push(format!("{why}: {:?}", String::from_utf8_lossy(&buf)));
                return;
            }
            Parsed::Partial => {}
        }
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                if !buf.is_empty() {
                    log.lock()
                        .unreadable
                        .push(format!("cut short: {:?}", String::from_utf8_lossy(&buf)));
                }
                return;
            }
            Ok(n) => n,
        };
        log.lock().raw.extend_from_slice(&chunk[..n]);
        buf.extend_from_slice(&chunk[..n]);
    }
}

// === the client ===

/// One response as the client parsed it.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The body ended as its framing says (not cut by the close).
    complete: bool,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn error_code(&self) -> Option<i64> {
        let json: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        json["errorCode"].as_i64()
    }
}

/// Writes `request` on a new connection and reads until the gateway closes it (or
/// `patience` passes): the responses, in order.
async fn exchange(addr: SocketAddr, request: &[u8], head: bool, patience: Duration) -> Vec<Reply> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The gateway may answer and close before all of it is written (a head too large).
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let _ = tokio::time::timeout(patience, async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    parse_replies(&answer, head)
}

fn parse_replies(mut bytes: &[u8], head: bool) -> Vec<Reply> {
    let mut replies = Vec::new();
    while !bytes.is_empty() {
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut res = httparse::Response::new(&mut slots);
        let Ok(httparse::Status::Complete(n)) = res.parse(bytes) else {
            replies.push(Reply {
                status: 0,
                headers: Vec::new(),
                body: bytes.to_vec(),
                complete: false,
            });
            break;
        };
        let status = res.code.unwrap_or(0);
        let headers: Vec<(String, String)> = res
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        bytes = &bytes[n..];
        if (100..200).contains(&status) {
            continue;
        }
        let mut reply = Reply {
            status,
            headers,
            body: Vec::new(),
            complete: true,
        };
        if head || status == 204 || status == 304 {
            replies.push(reply);
            continue;
        }
        if reply.header("transfer-encoding").is_some() {
            match dechunk(bytes) {
                Parsed::Request(body, used) => {
                    reply.body = body.body;
                    bytes = &bytes[used..];
                }
                _ => {
                    reply.complete = false;
                    reply.body = bytes.to_vec();
                    bytes = &[];
                }
            }
        } else if let Some(length) = reply.header("content-length") {
            let length: usize = length.trim().parse().unwrap_or(usize::MAX);
            let take = length.min(bytes.len());
            reply.complete = take == length;
            reply.body = bytes[..take].to_vec();
            bytes = &bytes[take..];
        } else {
            reply.body = bytes.to_vec();
            bytes = &[];
        }
        replies.push(reply);
    }
    replies
}

// === the gateway ===

/// An event function `f` and a web function `web` (at `/web`, and at any path of host
/// `web.test`), both on `instance`.
async fn gateway_for(instance: SocketAddr) -> scf_gateway::RunningGateway {
    gateway(&format!(
        "[[functions]]\nname = \"f\"\ninstances = [\"{instance}\"]\n\
         [[functions]]\nname = \"web\"\ntype = \"http\"\ninstances = [\"{instance}\"]\n\
         [[routes]]\npath_prefix = \"/web\"\nfunction = \"web\"\n\
         [[routes]]\nhost = \"web.test\"\npath_prefix = \"/\"\nfunction = \"web\"\n"
    ))
    .await
}

/// How long a row waits for the gateway to close the connection: every row's request
/// ends in `Connection: close` or an error that closes it.
const PATIENCE: Duration = Duration::from_secs(20);

/// What went wrong on a row.
#[derive(Default)]
struct Problems {
    /// A smuggled request or a forged field reached the instance.
    never: Vec<String>,
    /// The row's own expectations.
    row: Vec<String>,
}

/// Runs each row, and fails with every row that did not hold or on which something
/// reached the instance that never may.
async fn run_table<R>(
    rows: Vec<R>,
    name: impl Fn(&R) -> &'static str,
    run: impl AsyncFn(&R) -> Problems,
) {
    let mut broken = Vec::new();
    for row in &rows {
        let Problems { never, row: wrong } = run(row).await;
        let wrong: Vec<String> = never.into_iter().chain(wrong).collect();
        if !wrong.is_empty() {
            broken.push(format!("{}: {}", name(row), wrong.join("; ")));
        }
    }
    assert!(
        broken.is_empty(),
        "{} of {} rows broken:\n{}",
        broken.len(),
        rows.len(),
        broken.join("\n")
    );
}

// === requests ===

/// What the instance must see of one request.
struct Sees {
    target: &'static str,
    body: &'static [u8],
    /// Fields it must carry with exactly this value, or (`None`) must not carry.
    fields: &'static [(&'static str, Option<&'static str>)],
}

const fn invoke(body: &'static [u8]) -> Sees {
    Sees {
        target: "/event-invoke",
        body,
        fields: &[],
    }
}

struct RequestRow {
    name: &'static str,
    bytes: Vec<u8>,
    /// The status of each response the client gets, in order.
    statuses: &'static [u16],
    /// Every request the instance sees, in order; none at all (not a byte) when empty.
    sees: Vec<Sees>,
}

const INVOKE: &str = "POST /v1/functions/f/invocations HTTP/1.1\r\nHost: gw\r\n";
/// A last request closing the connection, after a possible smuggling attempt: if it is
/// answered, the gateway read the bytes before it as the client framed them.
const LAST: &str = "GET /web/last HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n";
const SEES_LAST: Sees = Sees {
    target: "/web/last",
    body: b"",
    fields: &[],
};

fn invoke_with(fields: &str, body: &str) -> Vec<u8> {
    format!("{INVOKE}{fields}Connection: close\r\n\r\n{body}").into_bytes()
}

/// A request hidden in a body: never to reach an instance as a request.
const HIDDEN: &str = "GET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n";
/// The end of a chunked body, then a hidden request.
const CHUNKS_HIDDEN: &str = "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n";

fn request_rows() -> Vec<RequestRow> {
    let refused = |name, bytes: Vec<u8>| RequestRow {
        name,
        bytes,
        statuses: &[400],
        sees: vec![],
    };
    // Framed by a length and by chunks: read by its chunks alone, the length removed,
    // and the connection closed after the answer (RFC 9112 §6.3), so whatever the length
    // would have framed is never read as a request. The HTTP layer removes the length
    // before the gateway sees the request, so this is not the contract's 400.
    let reframed = |name, bytes: Vec<u8>, body: &'static [u8]| RequestRow {
        name,
        bytes,
        statuses: &[200],
        sees: vec![invoke(body)],
    };
    let long_target = format!(
        "POST /v1/functions/f/invocations?pad={} HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\
         Connection: close\r\n\r\n{{}}",
        "p".repeat(9 * 1024)
    );
    let pad: String = (0..70)
        .map(|i| format!("X-Pad-{i}: {}\r\n", "p".repeat(1000)))
        .collect();
    let big_head = format!("{INVOKE}{pad}Content-Length: 2\r\nConnection: close\r\n\r\n{{}}");
    vec![
        RequestRow {
            name: "a plain invocation",
            bytes: invoke_with("Content-Length: 2\r\n", "{}"),
            statuses: &[200],
            sees: vec![invoke(b"{}")],
        },
        RequestRow {
            name: "a chunked invocation",
            bytes: invoke_with("Transfer-Encoding: chunked\r\n", "2\r\n{}\r\n0\r\n\r\n"),
            statuses: &[200],
            sees: vec![invoke(b"{}")],
        },
        reframed(
            "CL then TE",
            invoke_with(
                "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n",
            ),
            b"",
        ),
        reframed(
            "TE then CL",
            invoke_with(
                "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
                "8\r\nSMUGGLED\r\n0\r\n\r\n",
            ),
            b"SMUGGLED",
        ),
        // Any other framing in doubt: refused, and the connection closed with it.
        refused(
            "two differing CLs",
            invoke_with("Content-Length: 2\r\nContent-Length: 40\r\n", "{}"),
        ),
        refused(
            "a CL list that disagrees",
            invoke_with("Content-Length: 2, 40\r\n", "{}"),
        ),
        refused(
            "TE chunked, identity",
            invoke_with(
                "Transfer-Encoding: chunked, identity\r\n",
                "2\r\n{}\r\n0\r\n\r\n",
            ),
        ),
        refused(
            "TE identity",
            invoke_with("Transfer-Encoding: identity\r\n", "{}"),
        ),
        refused(
            "TE xchunked",
            invoke_with("Transfer-Encoding: xchunked\r\n", "2\r\n{}\r\n0\r\n\r\n"),
        ),
        refused(
            "TE gzip, chunked (a coding the instance would never be told of)",
            invoke_with(
                "Transfer-Encoding: gzip, chunked\r\n",
                "2\r\n{}\r\n0\r\n\r\n",
            ),
        ),
        refused(
            "TE chunked twice",
            invoke_with(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                "2\r\n{}\r\n0\r\n\r\n",
            ),
        ),
        refused(
            "TE on an obs-fold line",
            invoke_with(
                "X-A: b\r\nTransfer-Encoding:\r\n chunked\r\n",
                "2\r\n{}\r\n0\r\n\r\n",
            ),
        ),
        refused(
            "an obs-fold continuation line",
            invoke_with("X-A: b\r\n c\r\nContent-Length: 2\r\n", "{}"),
        ),
        refused(
            "a bare CR in a field",
            invoke_with(
                "X-A: b\rTransfer-Encoding: chunked\r\nContent-Length: 2\r\n",
                "{}",
            ),
        ),
        refused(
            "a NUL in a field value",
            invoke_with("X-A: b\0c\r\nContent-Length: 2\r\n", "{}"),
        ),
        refused(
            "a space before the colon",
            invoke_with("Transfer-Encoding : chunked\r\nContent-Length: 2\r\n", "{}"),
        ),
        // RFC 9112 §2.2 lets a recipient read a bare LF as a line end; the instance gets
        // the request re-encoded with CRLF.
        RequestRow {
            name: "a bare LF ending the request line",
            bytes: b"POST /v1/functions/f/invocations HTTP/1.1\nHost: gw\r\nContent-Length: 2\r\n\
                     Connection: close\r\n\r\n{}"
                .to_vec(),
            statuses: &[200],
            sees: vec![invoke(b"{}")],
        },
        // `_` spellings of framing names are plain fields to the gateway, and never
        // reach the instance (which might fold them into the real ones).
        RequestRow {
            name: "Transfer_Encoding and Content_Length spellings",
            bytes: invoke_with(
                "Transfer_Encoding: chunked\r\nContent_Length: 40\r\nContent-Length: 2\r\n",
                "{}",
            ),
            statuses: &[200],
            sees: vec![Sees {
                target: "/event-invoke",
                body: b"{}",
                fields: &[
                    ("transfer_encoding", None),
                    ("content_length", None),
                    ("content-length", Some("2")),
                ],
            }],
        },
        refused(
            "missing Host",
            b"POST /v1/functions/f/invocations HTTP/1.1\r\nContent-Length: 2\r\n\
              Connection: close\r\n\r\n{}"
                .to_vec(),
        ),
        refused(
            "two Hosts",
            invoke_with("Host: forged.test\r\nContent-Length: 2\r\n", "{}"),
        ),
        RequestRow {
            name: "an absolute-form target names the host",
            bytes: b"GET http://web.test/page HTTP/1.1\r\nHost: elsewhere.test\r\n\
                     Connection: close\r\n\r\n"
                .to_vec(),
            statuses: &[200],
            sees: vec![Sees {
                target: "/page",
                body: b"",
                fields: &[("host", Some("web.test"))],
            }],
        },
        RequestRow {
            name: "an absolute-form target without a path",
            bytes: b"GET http://web.test?x=1 HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n"
                .to_vec(),
            statuses: &[200],
            sees: vec![Sees {
                target: "/?x=1",
                body: b"",
                fields: &[("host", Some("web.test"))],
            }],
        },
        RequestRow {
            name: "a URI over 8 KB",
            bytes: long_target.into_bytes(),
            statuses: &[414],
            sees: vec![],
        },
        RequestRow {
            name: "a head over 64 KB",
            bytes: big_head.into_bytes(),
            statuses: &[431],
            sees: vec![],
        },
        // The client's own malformed chunked body: its fault (400), and nothing of it
        // reaches the instance.
        RequestRow {
            name: "a chunk size that is not hex",
            bytes: invoke_with("Transfer-Encoding: chunked\r\n", "zz\r\n{}\r\n0\r\n\r\n"),
            statuses: &[400],
            sees: vec![],
        },
        RequestRow {
            name: "an overflowing chunk size",
            bytes: invoke_with(
                "Transfer-Encoding: chunked\r\n",
                "fffffffffffffffffff\r\n{}\r\n0\r\n\r\n",
            ),
            statuses: &[400],
            sees: vec![],
        },
        RequestRow {
            name: "chunk data without its CRLF",
            bytes: invoke_with("Transfer-Encoding: chunked\r\n", "2\r\n{}XX0\r\n\r\n"),
            statuses: &[400],
            sees: vec![],
        },
        // Trailers are dropped: none of their fields can pass for a header.
        RequestRow {
            name: "trailers carrying X-Scf-*, Host and framing",
            bytes: invoke_with(
                "Transfer-Encoding: chunked\r\nTrailer: X-Scf-Request-Id, Host\r\n",
                "2\r\n{}\r\n0\r\nX-Scf-Request-Id: forged\r\nx_scf_secret_key: forged\r\n\
                 Host: forged.test\r\nContent-Length: 99\r\nTransfer-Encoding: forged\r\n\r\n",
            ),
            statuses: &[200],
            sees: vec![invoke(b"{}")],
        },
        RequestRow {
            name: "forged X-Scf-* fields",
            bytes: invoke_with(
                "X-Scf-Request-Id: forged\r\nX_SCF_SECRET_KEY: forged\r\nx-scf-name: forged\r\n\
                 Content-Length: 2\r\n",
                "{}",
            ),
            statuses: &[200],
            sees: vec![invoke(b"{}")],
        },
        // Pipelining: a request hidden in a body is body bytes of one request.
        RequestRow {
            name: "a request inside a Content-Length body",
            bytes: format!(
                "{INVOKE}Content-Length: {}\r\n\r\n{HIDDEN}{LAST}",
                HIDDEN.len()
            )
            .into_bytes(),
            statuses: &[200, 200],
            sees: vec![invoke(HIDDEN.as_bytes()), SEES_LAST],
        },
        RequestRow {
            name: "a request inside a chunk",
            bytes: format!(
                "{INVOKE}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{CHUNKS_HIDDEN}\r\n0\r\n\r\n{LAST}",
                CHUNKS_HIDDEN.len()
            )
            .into_bytes(),
            statuses: &[200, 200],
            sees: vec![invoke(CHUNKS_HIDDEN.as_bytes()), SEES_LAST],
        },
        RequestRow {
            name: "a GET whose body is a request",
            bytes: format!(
                "GET /web/a HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\n\r\n{HIDDEN}{LAST}",
                HIDDEN.len()
            )
            .into_bytes(),
            statuses: &[200, 200],
            sees: vec![
                Sees {
                    target: "/web/a",
                    body: HIDDEN.as_bytes(),
                    fields: &[],
                },
                SEES_LAST,
            ],
        },
        RequestRow {
            name: "CL.TE: a request after the empty chunked body",
            bytes: format!(
                "{INVOKE}Content-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{CHUNKS_HIDDEN}{LAST}",
                CHUNKS_HIDDEN.len()
            )
            .into_bytes(),
            statuses: &[200],
            sees: vec![invoke(b"")],
        },
        RequestRow {
            name: "TE.CL: a request inside the chunk",
            bytes: format!(
                "{INVOKE}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n\
                 {:x}\r\n{HIDDEN}\r\n0\r\n\r\n{LAST}",
                HIDDEN.len()
            )
            .into_bytes(),
            statuses: &[200],
            sees: vec![invoke(HIDDEN.as_bytes())],
        },
        RequestRow {
            name: "a request after a bare-LF chunk extension",
            bytes: format!(
                "{INVOKE}Transfer-Encoding: chunked\r\n\r\n\
                 2;\nGET /smuggled HTTP/1.1\r\n{{}}\r\n0\r\n\r\n{LAST}"
            )
            .into_bytes(),
            statuses: &[400],
            sees: vec![],
        },
    ]
}

async fn run_request_row(row: &RequestRow) -> Problems {
    let instance = Recorder::start(OK).await;
    let gw = gateway_for(instance.addr).await;
    let replies = exchange(gw.listen_addr(), &row.bytes, false, PATIENCE).await;
    gw.shutdown().await;
    let log = instance.log.lock();
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    let mut problems = check_instance(&log);
    let wrong = &mut problems.row;
    if statuses != row.statuses {
        wrong.push(format!(
            "statuses {statuses:?}, expected {:?}",
            row.statuses
        ));
    }
    if row.sees.is_empty() {
        if !log.raw.is_empty() {
            wrong.push(format!(
                "the instance got {} bytes: {:?}",
                log.raw.len(),
                String::from_utf8_lossy(&log.raw[..log.raw.len().min(300)])
            ));
        }
    } else {
        let got: Vec<(&str, &str)> = log
            .requests
            .iter()
            .map(|r| (r.method.as_str(), r.target.as_str()))
            .collect();
        if log.requests.len() != row.sees.len() {
            wrong.push(format!("the instance saw {got:?}"));
        }
        for (seen, expected) in log.requests.iter().zip(&row.sees) {
            if seen.target != expected.target || seen.body != expected.body {
                wrong.push(format!(
                    "the instance saw {} {} with body {:?}, expected {} with {:?}",
                    seen.method,
                    seen.target,
                    String::from_utf8_lossy(&seen.body),
                    expected.target,
                    String::from_utf8_lossy(expected.body)
                ));
            }
            for (name, value) in expected.fields {
                let values = seen.header(name);
                let holds = match value {
                    None => values.is_empty(),
                    Some(v) => values == [*v],
                };
                if !holds {
                    wrong.push(format!("{name}: {values:?}, expected {value:?}"));
                }
            }
        }
    }
    problems
}

/// What holds on every row, whatever it expects.
fn check_instance(log: &Log) -> Problems {
    let mut problems = Problems::default();
    problems.row.extend(
        log.unreadable
            .iter()
            .map(|u| format!("the instance could not read what it got: {u}")),
    );
    let wrong = &mut problems.never;
    for r in &log.requests {
        if r.target.contains("smuggled") {
            wrong.push(format!(
                "a smuggled request reached the instance: {}",
                r.target
            ));
        }
        for (name, value) in r.headers.iter().chain(&r.trailers) {
            if name.contains("forged") || value.contains("forged") {
                wrong.push(format!("{name}: {value} reached the instance"));
            }
        }
        if !r.trailers.is_empty() {
            wrong.push(format!("trailers reached the instance: {:?}", r.trailers));
        }
    }
    problems
}

/// Every request row, through the gateway to a recording instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests() {
    run_table(request_rows(), |row| row.name, run_request_row).await;
}

// === responses ===

struct ResponseRow {
    name: &'static str,
    /// What the instance answers; the connection closes after it when `close`.
    answer: Answer,
    /// The client's request is `HEAD /web/x` rather than an invocation.
    head: bool,
    status: u16,
    /// The contract's `errorCode` of an error answer.
    error_code: Option<i64>,
    /// The body the client gets, whole; `None` when it is an error body or does not
    /// matter.
    body: Option<&'static [u8]>,
    /// Whether the body ends as its framing says (a cut one does not).
    complete: bool,
    /// Fields the client must get with this value, or (`None`) must not get.
    fields: &'static [(&'static str, Option<&'static str>)],
    /// Invoke twice, on two connections: both must get the same.
    twice: bool,
    /// A 502/405 answer also holds: the instance failed before the gateway could tell
    /// the client anything else.
    or_bad_gateway: bool,
    /// No reply at all also holds: the response failed after its head was handed to
    /// the client's connection but before any of it was written out, so the connection
    /// is cut as it would be mid-body.
    or_cut: bool,
}

const RESPONSE: ResponseRow = ResponseRow {
    name: "",
    answer: OK,
    head: false,
    status: 200,
    error_code: None,
    body: None,
    complete: true,
    fields: &[],
    twice: false,
    or_bad_gateway: false,
    or_cut: false,
};

const fn answer(bytes: &'static [u8]) -> Answer {
    Answer {
        bytes,
        close: false,
    }
}

const fn answer_then_close(bytes: &'static [u8]) -> Answer {
    Answer { bytes, close: true }
}

fn bad_gateway(name: &'static str, answer: Answer) -> ResponseRow {
    ResponseRow {
        name,
        answer,
        status: 502,
        error_code: Some(405),
        ..RESPONSE
    }
}

fn response_rows() -> Vec<ResponseRow> {
    vec![
        ResponseRow {
            name: "a plain response",
            body: Some(b"ok"),
            twice: true,
            ..RESPONSE
        },
        ResponseRow {
            name: "CL and TE: framed by its chunks, without the length",
            answer: answer(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
                  5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            ),
            body: Some(b"hello world"),
            twice: true,
            ..RESPONSE
        },
        ResponseRow {
            name: "TE and CL: framed by its chunks, without the length",
            answer: answer(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 1000\r\n\r\n\
                  5\r\nhello\r\n0\r\n\r\n",
            ),
            body: Some(b"hello"),
            fields: &[("content-length", None)],
            twice: true,
            ..RESPONSE
        },
        bad_gateway(
            "two differing CLs",
            answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nokk"),
        ),
        ResponseRow {
            name: "two equal CLs",
            answer: answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok"),
            body: Some(b"ok"),
            ..RESPONSE
        },
        bad_gateway(
            "TE gzip, chunked",
            answer(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
                  3\r\n\x1f\x8b\x08\r\n0\r\n\r\n",
            ),
        ),
        bad_gateway(
            "TE chunked, identity",
            answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
        ),
        bad_gateway(
            "TE identity",
            answer_then_close(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nok"),
        ),
        bad_gateway(
            "TE xchunked",
            answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
        ),
        bad_gateway(
            "TE in an HTTP/1.0 response",
            answer_then_close(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ),
        ResponseRow {
            name: "a broken chunk before the head went out",
            ..bad_gateway(
                "",
                answer_then_close(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            )
        },
        ResponseRow {
            name: "an overflowing chunk size before the head went out",
            ..bad_gateway(
                "",
                answer_then_close(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                      fffffffffffffffffff\r\nok\r\n",
                ),
            )
        },
        bad_gateway(
            "an obs-fold line",
            answer(b"HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\nContent-Length: 2\r\n\r\nok"),
        ),
        bad_gateway(
            "a NUL in a field value",
            answer(b"HTTP/1.1 200 OK\r\nX-A: b\0c\r\nContent-Length: 2\r\n\r\nok"),
        ),
        bad_gateway(
            "a status that is not a number",
            answer(b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nok"),
        ),
        bad_gateway(
            "not HTTP at all",
            answer_then_close(b"SSH-2.0-OpenSSH_9.6\r\n"),
        ),
        bad_gateway("closed before answering", answer_then_close(b"")),
        bad_gateway(
            "a protocol switch",
            answer(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"),
        ),
        ResponseRow {
            name: "interim 100 and 103 before the answer",
            answer: answer(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
                  HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            ),
            body: Some(b"ok"),
            twice: true,
            ..RESPONSE
        },
        ResponseRow {
            name: "no framing: the body runs to the close",
            answer: answer_then_close(b"HTTP/1.1 200 OK\r\nX-A: b\r\n\r\nall of it, to the close"),
            body: Some(b"all of it, to the close"),
            twice: true,
            ..RESPONSE
        },
        ResponseRow {
            name: "HTTP/1.0 without framing",
            answer: answer_then_close(b"HTTP/1.0 200 OK\r\n\r\nten-style"),
            body: Some(b"ten-style"),
            ..RESPONSE
        },
        ResponseRow {
            name: "a CL longer than what came before the close",
            answer: answer_then_close(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"),
            complete: false,
            or_bad_gateway: true,
            or_cut: true,
            ..RESPONSE
        },
        ResponseRow {
            name: "a 204 with a length has no body",
            answer: answer(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
            status: 204,
            body: Some(b""),
            twice: true,
            ..RESPONSE
        },
        ResponseRow {
            name: "a HEAD response with a length has no body",
            answer: answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"),
            head: true,
            body: Some(b""),
            twice: true,
            ..RESPONSE
        },
        ResponseRow {
            name: "credentials and the request id from the instance never reach the client",
            answer: answer(
                b"HTTP/1.1 200 OK\r\nX-Scf-Secret-Key: forged\r\nX-Scf-Session-Token: forged\r\n\
                  X-Scf-Request-Id: forged\r\nConnection: close, X-Private\r\nX-Private: forged\r\n\
                  Content-Length: 2\r\n\r\nok",
            ),
            body: Some(b"ok"),
            fields: &[
                ("x-scf-secret-key", None),
                ("x-scf-session-token", None),
                ("x-private", None),
            ],
            ..RESPONSE
        },
        ResponseRow {
            name: "bytes after a complete response never answer the next request",
            answer: answer(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\
                  HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged",
            ),
            body: Some(b"ok"),
            twice: true,
            ..RESPONSE
        },
    ]
}

async fn run_response_row(row: &ResponseRow) -> Problems {
    let instance = Recorder::start(row.answer).await;
    let gw = gateway_for(instance.addr).await;
    let request: &[u8] = if row.head {
        b"HEAD /web/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
    } else {
        b"POST /v1/functions/f/invocations HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\
          Connection: close\r\n\r\n{}"
    };
    let mut wrong = Vec::new();
    for round in 0..if row.twice { 2 } else { 1 } {
        let replies = exchange(gw.listen_addr(), request, row.head, PATIENCE).await;
        if row.or_cut && replies.is_empty() {
            continue;
        }
        let [reply] = &replies[..] else {
            wrong.push(format!(
                "round {round}: {} replies: {replies:?}",
                replies.len()
            ));
            continue;
        };
        if row.or_bad_gateway && reply.status == 502 && reply.error_code() == Some(405) {
            continue;
        }
        if reply.status != row.status {
            wrong.push(format!("round {round}: status {}", reply.status));
        }
        if let Some(code) = row.error_code {
            if reply.error_code() != Some(code) {
                wrong.push(format!("round {round}: errorCode {:?}", reply.error_code()));
            }
        }
        if let Some(body) = row.body {
            if reply.body != body {
                let got = String::from_utf8_lossy(&reply.body);
                wrong.push(format!("round {round}: body {got:?}"));
            }
        }
        if reply.complete != row.complete {
            wrong.push(format!("round {round}: complete: {}", reply.complete));
        }
        for (name, value) in row.fields {
            if reply.header(name) != *value {
                wrong.push(format!("round {round}: {name}: {:?}", reply.header(name)));
            }
        }
    }
    gw.shutdown().await;
    Problems {
        never: Vec::new(),
        row: wrong,
    }
}

/// Every response row: an instance's bytes, and what the client gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses() {
    run_table(response_rows(), |row| row.name, run_response_row).await;
}
