//! A small TCP proxy standing in for the load balancer in front of the
//! replicas: each accepted connection goes to one replica, whole, and a
//! replica that refuses connections (killed) is skipped, as a load balancer's
//! health check would.
//!
//! It reads a connection's first line to tell a manager's tunnel
//! (`GET /rpc/_tunnel`) from other requests, only to choose a replica and to
//! record the connection; the bytes pass through unchanged.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Which replica a new connection goes to.
#[derive(Debug, Clone, Copy)]
pub enum Policy {
    /// Round robin, tunnels and other connections each in their own turn
    /// (so managers started one after the other spread their tunnels over
    /// the replicas whatever their other calls do), starting at `first`.
    RoundRobin { first: usize },
    /// Tunnels to replica `tunnel`, every other connection to `rest`.
    Split { tunnel: usize, rest: usize },
}

/// One proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    /// Numbered in accept order.
    pub id: usize,
    /// The replica it went to (its index).
    pub replica: usize,
    /// Whether it is a manager's tunnel.
    pub tunnel: bool,
    /// Whether it is still open.
    pub open: bool,
}

struct Shared {
    replicas: Vec<SocketAddr>,
    policy: Policy,
    /// The next turn of tunnels ([0]) and of other connections ([1]).
    turns: [AtomicUsize; 2],
    conns: Mutex<Vec<Conn>>,
}

/// A running proxy; stops when dropped.
pub struct Proxy {
    pub url: String,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(replicas: Vec<SocketAddr>, policy: Policy) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Shared {
            replicas,
            policy,
            turns: [AtomicUsize::new(0), AtomicUsize::new(0)],
            conns: Mutex::default(),
        });
        let accepting = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(serve(accepting.clone(), client));
            }
        });
        Proxy { url, shared, task }
    }

    /// Every connection so far.
    pub fn conns(&self) -> Vec<Conn> {
        self.shared.conns.lock().unwrap().clone()
    }

    /// The open tunnels.
    pub fn open_tunnels(&self) -> Vec<Conn> {
        self.conns()
            .into_iter()
            .filter(|c| c.tunnel && c.open)
            .collect()
    }

    /// Whether connection `id` is still open.
    pub fn is_open(&self, id: usize) -> bool {
        self.conns().iter().any(|c| c.id == id && c.open)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(shared: Arc<Shared>, mut client: TcpStream) {
    // The request line, or whatever arrived within a few seconds.
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read_head = async {
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 8192 {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        true
    };
    match tokio::time::timeout(Duration::from_secs(10), read_head).await {
        Ok(true) => {}
        _ => return,
    }
    let tunnel = head.starts_with(b"GET /rpc/_tunnel");
    let first = match shared.policy {
        Policy::RoundRobin { first } => {
            first + shared.turns[usize::from(!tunnel)].fetch_add(1, Ordering::Relaxed)
        }
        Policy::Split { tunnel: t, rest } => {
            if tunnel {
                t
            } else {
                rest
            }
        }
    };
    let n = shared.replicas.len();
    let mut upstream = None;
    for k in 0..n {
        let replica = (first + k) % n;
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_secs(2),
            TcpStream::connect(shared.replicas[replica]),
        )
        .await
        {
            upstream = Some((replica, s));
            break;
        }
    }
    let Some((replica, mut upstream)) = upstream else {
        return;
    };
    let id = {
        let mut conns = shared.conns.lock().unwrap();
        let id = conns.len();
        conns.push(Conn {
            id,
            replica,
            tunnel,
            open: true,
        });
        id
    };
    if upstream.write_all(&head).await.is_ok() {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    }
    shared.conns.lock().unwrap()[id].open = false;
}
