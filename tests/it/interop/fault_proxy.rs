//! A TCP fault proxy between tokend and the authorization server's token endpoint: it passes
//! connections through, refuses them (its listener closed: "connection refused"), or answers
//! `503 Service Unavailable` with `Retry-After: 1` itself; those faults never reach the server.
//! One more fault does: it forwards the next request and loses the server's reply.
//! Switching away from pass-through also cuts the connections already passed through, so a
//! pooled keep-alive connection cannot slip past a fault.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward to the server.
    PassThrough,
    /// Nothing listens: connections are refused.
    Refuse,
    /// Answer every request with `503` and `Retry-After: 1`.
    Unavailable,
    /// Forward the next request, read the server's whole reply, and close the connection
    /// without sending it on (a reply lost on the way back); then pass through again.
    LoseNextReply,
}

/// How many connections the proxy handled in each way.
#[derive(Debug, Default)]
pub struct Counters {
    pub passed: AtomicU64,
    pub answered_503: AtomicU64,
    pub replies_lost: AtomicU64,
}

/// The running proxy; stops when dropped.
pub struct FaultProxy {
    pub addr: SocketAddr,
    mode: Arc<watch::Sender<Fault>>,
    pub counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    // The same port is taken again after a refusal phase.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(64)
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port in front of `upstream`, passing through.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = listen(SocketAddr::from(([127, 0, 0, 1], 0))).expect("proxy listens");
        let addr = listener.local_addr().expect("proxy address");
        let mode = Arc::new(watch::Sender::new(Fault::PassThrough));
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(run(listener, upstream, Arc::clone(&mode), Arc::clone(&counters)));
        FaultProxy { addr, mode, counters, task }
    }

    /// `url` (an endpoint of the upstream server) with the proxy's address instead.
    pub fn url_for(&self, url: &str) -> String {
        let mut url = url::Url::parse(url).expect("endpoint URL");
        url.set_port(Some(self.addr.port())).expect("port");
        url.to_string()
    }

    /// Switches what the proxy does from now on.
    pub fn set(&self, fault: Fault) {
        self.mode.send_replace(fault);
    }

    pub fn passed(&self) -> u64 {
        self.counters.passed.load(Ordering::Relaxed)
    }

    pub fn answered_503(&self) -> u64 {
        self.counters.answered_503.load(Ordering::Relaxed)
    }

    pub fn replies_lost(&self) -> u64 {
        self.counters.replies_lost.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(listener: TcpListener, upstream: SocketAddr, control: Arc<watch::Sender<Fault>>, counters: Arc<Counters>) {
    let mut mode = control.subscribe();
    let addr = listener.local_addr().expect("address");
    let mut listener = Some(listener);
    loop {
        let fault = *mode.borrow_and_update();
        if fault == Fault::Refuse {
            // Close the listener: connection attempts are refused by the kernel.
            listener = None;
            if mode.changed().await.is_err() {
                return;
            }
            continue;
        }
        let active = match &mut listener {
            Some(l) => l,
            slot => slot.insert(listen(addr).expect("proxy listens again on its port")),
        };
        tokio::select! {
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            accepted = active.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (mode, counters) = (mode.clone(), Arc::clone(&counters));
                match fault {
                    Fault::PassThrough => {
                        tokio::spawn(pass_through(stream, upstream, mode, counters));
                    }
                    Fault::Unavailable => {
                        tokio::spawn(answer_503(stream, counters));
                    }
                    Fault::LoseNextReply => {
                        // Only this connection: the ones after it pass through.
                        control.send_replace(Fault::PassThrough);
                        tokio::spawn(lose_reply(stream, upstream, counters));
                    }
                    Fault::Refuse => {}
                }
            }
        }
    }
}

async fn pass_through(mut client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Fault>, c: Arc<Counters>) {
    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
    c.passed.fetch_add(1, Ordering::Relaxed);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        // A fault from now on: cut this (possibly pooled) connection too.
        _ = mode.wait_for(|m| *m != Fault::PassThrough) => {}
    }
}

/// Reads one HTTP/1.1 message (head and `Content-Length` body); `None` if the peer closes first.
async fn read_message(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
    Some(buffer)
}

/// Reads one request, answers 503 with `Retry-After: 1`, closes.
async fn answer_503(mut stream: TcpStream, c: Arc<Counters>) {
    if read_message(&mut stream).await.is_none() {
        return;
    }
    let body = "<html><body>maintenance</body></html>";
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    c.answered_503.fetch_add(1, Ordering::Relaxed);
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Forwards one request, reads the server's whole reply, and closes the client's connection
/// without a byte of it.
async fn lose_reply(mut client: TcpStream, upstream: SocketAddr, c: Arc<Counters>) {
    let Some(request) = read_message(&mut client).await else { return };
    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
    if server.write_all(&request).await.is_err() {
        return;
    }
    if read_message(&mut server).await.is_some() {
        c.replies_lost.fetch_add(1, Ordering::Relaxed);
    }
    // Dropping both: the client sees its connection closed before any reply.
}
