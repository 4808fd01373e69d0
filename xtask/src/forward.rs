//! A TCP port on the host's loopback forwarded into a lab namespace, so that a browser on the host
//! can open the console of a daemon that listens inside the namespace (`cargo xtask run`).
//!
//! Connections to the namespace are made from one thread that has joined its network namespace
//! (setns(2)); a socket keeps the namespace it was created in, so the streams can then be relayed
//! from ordinary threads. Only the host's loopback listens: nothing else leaves the namespaces.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};

/// The forward; it stops accepting when dropped (connections already open finish by themselves).
pub struct Forward {
    pub local: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

type Request = (SocketAddr, mpsc::Sender<io::Result<TcpStream>>);

/// Listens on 127.0.0.1:`port` (or any free port when that one is taken) and relays each connection
/// to `target` inside network namespace `ns`.
pub fn start(ns: &str, port: u16, target: SocketAddr) -> Result<Forward> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .or_else(|_| TcpListener::bind(("127.0.0.1", 0)))
        .context("could not listen on the host's loopback for the console forward")?;
    let local = listener.local_addr()?;
    let ns_file = std::fs::File::open(format!("/var/run/netns/{ns}"))
        .with_context(|| format!("network namespace {ns} is not there"))?;
    let (req_tx, req_rx) = mpsc::channel::<Request>();
    let (ready_tx, ready_rx) = mpsc::channel();
    thread::spawn(move || {
        // SAFETY: setns(2) on this thread only, with a namespace file we hold open.
        let rc = unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) };
        let _ = ready_tx.send(if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        });
        if rc != 0 {
            return;
        }
        for (addr, reply) in req_rx {
            let _ = reply.send(TcpStream::connect_timeout(&addr, Duration::from_secs(5)));
        }
    });
    ready_rx
        .recv()
        .context("the namespace thread died")?
        .with_context(|| format!("could not enter network namespace {ns}"))?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    listener.set_nonblocking(true)?;
    thread::spawn(move || {
        while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
            match listener.accept() {
                Ok((client, _)) => {
                    let _ = client.set_nonblocking(false);
                    let (tx, rx) = mpsc::channel();
                    if req_tx.send((target, tx)).is_err() {
                        break;
                    }
                    match rx.recv() {
                        Ok(Ok(upstream)) => relay(client, upstream),
                        _ => drop(client),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(50))
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    });
    Ok(Forward { local, stop })
}

/// Copies both ways until either side closes.
fn relay(a: TcpStream, b: TcpStream) {
    let _ = a.set_nodelay(true);
    let _ = b.set_nodelay(true);
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let pipe = |mut from: TcpStream, mut to: TcpStream| {
        thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        })
    };
    pipe(a, b2);
    pipe(b, a2);
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::process::Command;

    use super::*;

    /// Removes the test namespace however the test ends.
    struct Ns(String);
    impl Drop for Ns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    #[test]
    fn forwards_host_loopback_into_a_namespace() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root (network namespaces)");
            return;
        }
        let ns = Ns(format!("ngfwd-{}", std::process::id()));
        assert!(
            Command::new("ip")
                .args(["netns", "add", &ns.0])
                .status()
                .unwrap()
                .success()
        );
        let lo = ["netns", "exec", &ns.0, "ip", "link", "set", "lo", "up"];
        assert!(Command::new("ip").args(lo).status().unwrap().success());
        // An echo server on the namespace's loopback, which the host cannot reach by itself.
        let (tx, rx) = mpsc::channel();
        let name = ns.0.clone();
        thread::spawn(move || {
            let f = std::fs::File::open(format!("/var/run/netns/{name}")).unwrap();
            // SAFETY: setns(2) on this thread only.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            let (mut c, _) = l.accept().unwrap();
            let mut buf = [0u8; 5];
            c.read_exact(&mut buf).unwrap();
            c.write_all(&buf).unwrap();
        });
        let inner = rx.recv().unwrap();
        let fwd = start(&ns.0, 0, inner).unwrap();
        assert!(fwd.local.ip().is_loopback());
        let mut c = TcpStream::connect(fwd.local).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"hello").unwrap();
        let mut back = [0u8; 5];
        c.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"hello");
    }
}
