//! The everyday clients that no packaged tool plays well: small Python scripts written into the lab's
//! work dir. Each one binds the source address it is given and ends after SECS on its own (the step's
//! `timeout` is only the last resort).

/// `udp_send.py SRC DST PORT MODE SECS ARGS...`: UDP that is not a flood.
/// - `rtp CALLS`: CALLS voice calls, one socket each to PORT, PORT+2, ..., a 172-byte datagram (RTP
///   header + 20 ms of G.711) every 20 ms per call: 50 packets/s a call.
/// - `query RATE SIZE`: DNS/NTP-like clients: one new socket (source port) per datagram of SIZE bytes,
///   at RATE per second on average (Poisson arrivals).
/// - `quic BURSTS BURST`: QUIC-like page loads: BURSTS times a second a new connection sends BURST
///   datagrams of 1200 bytes back to back (handshake and requests, padded as QUIC pads), then half as
///   many small ones (acknowledgements) over the next 100 ms.
pub const UDP_SEND: &str = r#"import random, socket, sys, time
src, dst, port, mode, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
end = time.monotonic() + secs

def sock():
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind((src, 0))
    return s

def send(s, data, to):
    try:
        s.sendto(data, to)
    except OSError:
        pass  # an ICMP error from a port without a listener: the next one still goes

if mode == "rtp":
    calls = [sock() for _ in range(int(sys.argv[6]))]
    t = time.monotonic()
    seq = 0
    while t < end:
        for i, s in enumerate(calls):
            send(s, seq.to_bytes(12, "big") + bytes(160), (dst, port + 2 * i))
        seq += 1
        t += 0.02
        d = t - time.monotonic()
        if d > 0:
            time.sleep(d)
elif mode == "query":
    rate, size = float(sys.argv[6]), int(sys.argv[7])
    while time.monotonic() < end:
        s = sock()
        send(s, random.randbytes(size), (dst, port))
        s.close()
        time.sleep(random.expovariate(rate))
elif mode == "quic":
    bursts, burst = float(sys.argv[6]), int(sys.argv[7])
    while time.monotonic() < end:
        s = sock()
        for _ in range(burst):
            send(s, random.randbytes(1200), (dst, port))
        for _ in range(burst // 2):
            send(s, random.randbytes(50), (dst, port))
            time.sleep(0.1 / max(1, burst // 2))
        s.close()
        time.sleep(max(0.0, 1.0 / bursts - 0.1))
else:
    sys.exit("unknown mode " + mode)
"#;

/// `http_client.py SRC DST PORT SECS N INTERVAL PATH`: one persistent HTTP/1.1 connection that does N
/// requests for PATH back to back every INTERVAL seconds: API polling (N=1), or a long-lived
/// connection that goes quiet and resumes (INTERVAL longer than the detector's window).
pub const HTTP_CLIENT: &str = r#"import http.client, sys, time
src, dst, port, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
n, interval, path = int(sys.argv[5]), float(sys.argv[6]), sys.argv[7]
end = time.monotonic() + secs
c = None
while time.monotonic() < end:
    for _ in range(n):
        try:
            if c is None:
                c = http.client.HTTPConnection(dst, port, timeout=3, source_address=(src, 0))
            c.request("GET", path)
            c.getresponse().read()
        except (OSError, http.client.HTTPException):
            c = None
    time.sleep(interval)
"#;

/// `probe.py SRC DST SECS INTERVAL PORT...`: a monitoring system's service checks every INTERVAL
/// seconds: per TCP port a connection that reads the banner (ssh) or sends a HEAD request (others)
/// and reads the answer, as check_ssh and check_http do.
pub const PROBE: &str = r#"import socket, sys, time
src, dst, secs, interval = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
ports = [int(p) for p in sys.argv[5:]]
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
end = time.monotonic() + secs
while time.monotonic() < end:
    for p in ports:
        try:
            s = socket.create_connection((dst, p), timeout=2, source_address=(src, 0))
            if p == 22:
                s.recv(256)
                s.sendall(b"SSH-2.0-check_ssh\r\n")
            else:
                s.sendall(b"HEAD / HTTP/1.0\r\n\r\n")
                s.recv(4096)
            s.close()
        except OSError:
            pass
    time.sleep(interval)
"#;
