//! The TCP sink: JSON lines streamed to a collector (`tcp:HOST:PORT`), one connection kept open
//! and made again with backoff when it breaks. Sending goes through a relay thread, so a collector
//! that is down costs the sensor nothing, and what the bounded buffer cannot hold is counted.
//!
//! Delivery is at least once per interval: a batch whose write failed is sent whole again on the
//! next connection (a collector reads lines, and a line cut by the broken connection ends that
//! connection's stream). Bytes the kernel had accepted for a peer that then vanished are lost
//! with it: plain TCP has no acknowledgement a sender can see.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    str::FromStr,
    time::Duration,
};

use thiserror::Error;

use crate::{
    relay::{Failure, Relay, Transport},
    report::Record,
    sink::{Sink, SinkError},
};

#[derive(Debug, Error)]
#[error("bad TCP address {0:?}: write tcp:HOST:PORT (e.g. tcp:127.0.0.1:5170 or tcp:[::1]:5170)")]
/// A bad `tcp:` address (the text as written).
pub struct TcpTargetError(String);

/// Where to stream: a host name or address and a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpTarget {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl FromStr for TcpTarget {
    type Err = TcpTargetError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || TcpTargetError(text.to_string());
        let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty()
            || host.contains(['/', ' '])
            || (host.contains(':') && !text.starts_with('['))
        {
            return Err(bad());
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(bad)?;
        Ok(Self {
            host: host.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for TcpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "tcp:[{}]:{}", self.host, self.port)
        } else {
            write!(f, "tcp:{}:{}", self.host, self.port)
        }
    }
}

/// Streams every interval's records as JSON lines.
pub struct TcpSink {
    relay: Relay,
    buf: Vec<u8>,
}

impl TcpSink {
    /// Starts the sending thread; the first connection is made at the first interval.
    pub fn start(target: TcpTarget, max_bytes: u64) -> Self {
        let relay = Relay::start(target.to_string(), max_bytes, move || {
            Ok(Connection {
                target,
                stream: None,
            })
        });
        Self {
            relay,
            buf: Vec::new(),
        }
    }
}

impl Sink for TcpSink {
    fn write_interval(&mut self, records: &[Record]) -> Result<(), SinkError> {
        self.buf.clear();
        for record in records {
            serde_json::to_writer(&mut self.buf, record)?;
            self.buf.push(b'\n');
        }
        // serde_json writes UTF-8 only.
        let text = String::from_utf8_lossy(&self.buf).into_owned();
        self.relay.push(text, records.len() as u64)
    }

    fn dropped_records(&self) -> u64 {
        self.relay.dropped_records()
    }
}

struct Connection {
    target: TcpTarget,
    stream: Option<TcpStream>,
}

/// A collector that closed its end (or reset it) shows as a readable end of stream: worth
/// knowing before writing into a connection whose bytes would go nowhere. A collector sends
/// nothing, so anything it did send is read and ignored.
fn peer_gone(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let mut scratch = [0u8; 512];
    let gone = loop {
        match (&*stream).read(&mut scratch) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break true,
        }
    };
    stream.set_nonblocking(false).is_err() || gone
}

impl Connection {
    fn connect(&self, timeout: Duration) -> Result<TcpStream, Failure> {
        let address = format!("{}:{}", self.target.host, self.target.port);
        let addrs: Vec<SocketAddr> = (self.target.host.as_str(), self.target.port)
            .to_socket_addrs()
            .map_err(|e| Failure::Retry(format!("cannot resolve {address} ({e})")))?
            .collect();
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(Failure::Retry(match last {
            Some(e) => format!("cannot connect to {address} ({e})"),
            None => format!("{address} resolves to no address"),
        }))
    }
}

impl Transport for Connection {
    fn send(&mut self, batch: &str, timeout: Duration) -> Result<(), Failure> {
        if self.stream.as_ref().is_some_and(peer_gone) {
            self.stream = None;
        }
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => self.stream.insert(self.connect(timeout)?),
        };
        let written = stream
            .set_write_timeout(Some(timeout))
            .and_then(|()| stream.write_all(batch.as_bytes()));
        if let Err(e) = written {
            self.stream = None;
            return Err(Failure::Retry(format!(
                "the connection to {} broke ({e})",
                self.target
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_bad_ones_say_the_form() {
        let t: TcpTarget = "127.0.0.1:5170".parse().expect("v4");
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 5170));
        let t: TcpTarget = "[::1]:9".parse().expect("v6");
        assert_eq!(
            (t.host.as_str(), t.port, t.to_string()),
            ("::1", 9, "tcp:[::1]:9".into())
        );
        let t: TcpTarget = "collector.example:5170".parse().expect("name");
        assert_eq!(t.to_string(), "tcp:collector.example:5170");
        for bad in [
            "",
            "host",
            "host:",
            ":5170",
            "host:0",
            "host:70000",
            "::1:5170",
            "a/b:1",
        ] {
            let e = bad.parse::<TcpTarget>().expect_err(bad).to_string();
            assert!(e.contains("tcp:HOST:PORT"), "{e}");
        }
    }

    #[test]
    fn a_closed_peer_is_seen_before_writing_and_the_batch_goes_to_the_next_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut conn = Connection {
            target: TcpTarget {
                host: "127.0.0.1".into(),
                port,
            },
            stream: None,
        };
        let timeout = Duration::from_secs(5);
        conn.send("one\n", timeout).expect("first connection");
        let (mut first, _) = listener.accept().expect("accept");
        let mut got = [0u8; 4];
        first.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"one\n");
        drop(first);
        // Without the check the write below would succeed into a dead connection and be lost.
        std::thread::sleep(Duration::from_millis(50));
        conn.send("two\n", timeout).expect("second connection");
        let (mut second, _) = listener.accept().expect("accept again");
        second.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"two\n");
    }

    #[test]
    fn no_collector_is_a_retry_not_a_loss() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let mut conn = Connection {
            target: TcpTarget {
                host: "127.0.0.1".into(),
                port,
            },
            stream: None,
        };
        match conn.send("x\n", Duration::from_secs(1)) {
            Err(Failure::Retry(why)) => assert!(why.contains("cannot connect"), "{why}"),
            other => panic!("expected a retry, got {other:?}"),
        }
    }
}
