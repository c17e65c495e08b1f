//! A small HTTP/1.1 server of our own for fault injection (std threads, one request per
//! connection, `Connection: close`) on 127.0.0.1: each route answers what its handler
//! says, and a [`Reply`] can misbehave in one chosen way (cut short, no length, endless,
//! silent, trickled). It records every request, so a test can count what a client asked
//! for. Stopped when dropped.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// The query string, without its `?` (empty when there is none).
    pub query: String,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first byte asked for by `Range: bytes=N-`.
    pub fn range_start(&self) -> Option<u64> {
        self.header("Range")?
            .strip_prefix("bytes=")?
            .strip_suffix('-')?
            .parse()
            .ok()
    }
}

/// What to answer. `Content-Length` is the body's length unless `close_delimited`; a
/// `HEAD` gets the headers only.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Send only this many bytes of the body, then close (the declared length stays).
    pub cut: Option<usize>,
    /// Declare no length: the body ends when the connection closes.
    pub close_delimited: bool,
    /// After the body, send zeros for ever, 64 KiB every this long (until the client
    /// goes away).
    pub endless: Option<Duration>,
    /// Read the request, then say nothing (a server that accepts and never answers).
    pub silent: bool,
    /// Send the body in this many pieces, this long apart.
    pub trickle: Option<(usize, Duration)>,
}

impl Reply {
    pub fn new(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            cut: None,
            close_delimited: false,
            endless: None,
            silent: false,
            trickle: None,
        }
    }

    pub fn trickle(mut self, pieces: usize, pace: Duration) -> Reply {
        self.trickle = Some((pieces, pace));
        self
    }

    pub fn endless(mut self, pace: Duration) -> Reply {
        self.endless = Some(pace);
        self.close_delimited = true;
        self
    }

    pub fn silent(mut self) -> Reply {
        self.silent = true;
        self
    }

    pub fn header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }

    pub fn body(mut self, b: &[u8]) -> Reply {
        self.body = b.to_vec();
        self
    }

    pub fn cut(mut self, n: usize) -> Reply {
        self.cut = Some(n);
        self
    }

    pub fn close_delimited(mut self) -> Reply {
        self.close_delimited = true;
        self
    }
}

/// Answers one path: gets the request and how many times (1-based) this method and path
/// were asked for, this one included.
pub type Handler = Box<dyn Fn(&Seen, usize) -> Reply + Send + Sync>;

/// A fault-injecting server on 127.0.0.1, stopped when dropped.
pub struct FaultServer {
    /// `127.0.0.1:PORT`
    pub addr: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl FaultServer {
    pub fn start(routes: Vec<(String, Handler)>) -> FaultServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap().to_string();
        let routes: Arc<HashMap<String, Handler>> = Arc::new(routes.into_iter().collect());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (seen, stop) = (seen.clone(), stop.clone());
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (routes, seen) = (routes.clone(), seen.clone());
                    thread::spawn(move || serve(conn, &routes, &seen));
                }
            });
        }
        FaultServer { addr, seen, stop }
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The requests with this method and path.
    pub fn requests(&self, method: &str, path: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|r| r.method == method && r.path == path)
            .collect()
    }

    /// The `Range` headers sent for `path`, in order (`None` for requests without one).
    pub fn ranges(&self, path: &str) -> Vec<Option<String>> {
        self.requests("GET", path)
            .iter()
            .map(|r| r.header("Range").map(str::to_string))
            .collect()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
    }
}

/// One connection: read the request head, answer, close.
fn serve(mut conn: TcpStream, routes: &HashMap<String, Handler>, seen: &Mutex<Vec<Seen>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
    let Some(req) = read_request(&mut conn) else {
        return;
    };
    let nth = {
        let mut s = seen.lock().unwrap();
        s.push(req.clone());
        s.iter()
            .filter(|r| r.method == req.method && r.path == req.path)
            .count()
    };
    let reply = match routes.get(&req.path) {
        Some(h) => h(&req, nth),
        None => Reply::new(404),
    };
    if reply.silent {
        // Hold the connection open, answering nothing, until the client gives up.
        let _ = conn.set_read_timeout(Some(Duration::from_secs(120)));
        let mut scratch = [0u8; 4096];
        while matches!(conn.read(&mut scratch), Ok(n) if n > 0) {}
        return;
    }
    let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !reply.close_delimited {
        head.push_str(&format!("Content-Length: {}\r\n", reply.body.len()));
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut out = head.into_bytes();
    if let (Some((pieces, pace)), true) = (reply.trickle, req.method != "HEAD") {
        if conn.write_all(&out).is_err() {
            return;
        }
        for piece in reply
            .body
            .chunks(reply.body.len().div_ceil(pieces.max(1)).max(1))
        {
            thread::sleep(pace);
            if conn.write_all(piece).and_then(|_| conn.flush()).is_err() {
                return;
            }
        }
        out.clear();
    } else if req.method != "HEAD" {
        let n = reply.cut.unwrap_or(reply.body.len()).min(reply.body.len());
        out.extend_from_slice(&reply.body[..n]);
    }
    if conn.write_all(&out).and_then(|_| conn.flush()).is_err() {
        return;
    }
    if let (Some(pace), true) = (reply.endless, req.method != "HEAD") {
        let zeros = vec![0u8; 64 << 10];
        while conn.write_all(&zeros).is_ok() {
            thread::sleep(pace);
        }
        return;
    }
    let _ = conn.shutdown(Shutdown::Write);
    // Let the client close first: closing with its bytes unread would send a reset, and
    // a reset can throw away what was sent before it.
    let mut scratch = [0u8; 4096];
    while matches!(conn.read(&mut scratch), Ok(n) if n > 0) {}
}

fn read_request(conn: &mut TcpStream) -> Option<Seen> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 || buf.len() > 64 << 10 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    let head = text.split("\r\n\r\n").next()?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (path, query) = (path.to_string(), query.to_string());
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Some(Seen {
        method,
        path,
        query,
        headers,
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        307 => "Temporary Redirect",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        500 => "Internal Server Error",
        _ => "Other",
    }
}

/// Serve `body` in full, or from `Range: bytes=N-` with `206` and a `Content-Range`.
pub fn with_range(req: &Seen, body: &[u8]) -> Reply {
    let len = body.len();
    match req.range_start() {
        Some(from) if (from as usize) < len => Reply::new(206)
            .header("Content-Range", &format!("bytes {from}-{}/{len}", len - 1))
            .body(&body[from as usize..]),
        Some(_) => Reply::new(416).header("Content-Range", &format!("bytes */{len}")),
        None => Reply::new(200).body(body),
    }
}
