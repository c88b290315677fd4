//! Loopback ports for the `tokend` binaries the tests start as child processes (crash, interop).
//!
//! Those take their ports from the command line, so the test picks a free one and the child binds
//! it later, and again after every restart. Meanwhile the in-process daemons, fake providers and
//! clients of the tests running beside it bind port 0, which the kernel serves from its ephemeral
//! range: a port picked from that range could be handed to one of them in between, and the child
//! would then fail to bind it, or the test would find another test's daemon answering there. So
//! the picks come from just below the ephemeral range, where port 0 never lands, and no port is
//! handed out twice in this process.

use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

/// Where the kernel's ephemeral range starts (Linux's default when it cannot be read).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// A loopback port that is free now, below the ephemeral range, and not handed out before by
/// this process.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let top = u32::from(ephemeral_start());
    let bottom = top.saturating_sub(8192).max(1024);
    assert!(bottom + 1024 <= top, "the ephemeral port range starts too low ({top}) to pick ports below it");
    let span = top - bottom;
    // Start somewhere in the block, so test processes running at once rarely try the same ports.
    let offset = std::process::id() % span;
    for _ in 0..span {
        let port = bottom + (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = u16::try_from(port).expect("ports fit in u16");
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {bottom}..{top}");
}
