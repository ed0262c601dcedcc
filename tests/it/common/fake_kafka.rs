//! A Kafka broker that speaks just enough of the protocol for a client to send its SASL
//! credentials, and records every byte it receives: ApiVersions (any version, answered in the
//! flexible v3 format or v0), SaslHandshake (PLAIN offered), then whatever the client sends,
//! SaslAuthenticate included. It never serves a topic. Used to prove what a client would send to
//! a broker a tenant names.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const API_VERSIONS: i16 = 18;
const SASL_HANDSHAKE: i16 = 17;
const SASL_AUTHENTICATE: i16 = 36;

pub struct FakeKafka {
    /// `127.0.0.1:port`.
    pub address: String,
    received: Arc<Mutex<Vec<u8>>>,
    connections: Arc<Mutex<usize>>,
}

impl FakeKafka {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("addr").to_string();
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let (r, c) = (received.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                *c.lock().expect("lock") += 1;
                tokio::spawn(serve(stream, r.clone()));
            }
        });
        Self { address, received, connections }
    }

    /// Every byte received on every connection so far.
    pub fn received(&self) -> Vec<u8> {
        self.received.lock().expect("lock").clone()
    }

    pub fn saw(&self, needle: &str) -> bool {
        self.received().windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    pub fn connections(&self) -> usize {
        *self.connections.lock().expect("lock")
    }
}

async fn serve(mut stream: TcpStream, received: Arc<Mutex<Vec<u8>>>) {
    loop {
        let mut size = [0u8; 4];
        if stream.read_exact(&mut size).await.is_err() {
            return;
        }
        let len = i32::from_be_bytes(size).clamp(0, 1 << 20) as usize;
        let mut request = vec![0u8; len];
        if stream.read_exact(&mut request).await.is_err() {
            return;
        }
        {
            let mut all = received.lock().expect("lock");
            all.extend_from_slice(&size);
            all.extend_from_slice(&request);
        }
        if request.len() < 8 {
            return;
        }
        let api_key = i16::from_be_bytes([request[0], request[1]]);
        let version = i16::from_be_bytes([request[2], request[3]]);
        let correlation = &request[4..8];
        let body = match api_key {
            API_VERSIONS => api_versions(version),
            SASL_HANDSHAKE => {
                // error 0, mechanisms [PLAIN]
                let mut b = vec![0, 0, 0, 0, 0, 1];
                b.extend_from_slice(&5i16.to_be_bytes());
                b.extend_from_slice(b"PLAIN");
                b
            }
            SASL_AUTHENTICATE => {
                // error 0, no message, no auth bytes, (v1) session lifetime 0
                let mut b = vec![0, 0, 0xff, 0xff, 0, 0, 0, 0];
                if version >= 1 {
                    b.extend_from_slice(&0i64.to_be_bytes());
                }
                b
            }
            // Anything else (metadata…): hang up; the client reconnects and authenticates again.
            _ => return,
        };
        let mut response = Vec::with_capacity(8 + body.len());
        response.extend_from_slice(&((4 + body.len()) as i32).to_be_bytes());
        response.extend_from_slice(correlation);
        response.extend_from_slice(&body);
        if stream.write_all(&response).await.is_err() {
            return;
        }
    }
}

/// An ApiVersions answer offering ApiVersions 0–3, SaslHandshake 0–1, SaslAuthenticate 0–1 and
/// Metadata 0–4, in the format of the request's version.
fn api_versions(version: i16) -> Vec<u8> {
    let keys: [(i16, i16, i16); 4] =
        [(API_VERSIONS, 0, 3), (SASL_HANDSHAKE, 0, 1), (SASL_AUTHENTICATE, 0, 1), (3, 0, 4)];
    let mut b = vec![0, 0]; // error code
    if version >= 3 {
        b.push(keys.len() as u8 + 1); // compact array length (uvarint n+1)
        for (key, min, max) in keys {
            b.extend_from_slice(&key.to_be_bytes());
            b.extend_from_slice(&min.to_be_bytes());
            b.extend_from_slice(&max.to_be_bytes());
            b.push(0); // tagged fields
        }
        b.extend_from_slice(&0i32.to_be_bytes()); // throttle time
        b.push(0); // tagged fields
    } else {
        b.extend_from_slice(&(keys.len() as i32).to_be_bytes());
        for (key, min, max) in keys {
            b.extend_from_slice(&key.to_be_bytes());
            b.extend_from_slice(&min.to_be_bytes());
            b.extend_from_slice(&max.to_be_bytes());
        }
        if version >= 1 {
            b.extend_from_slice(&0i32.to_be_bytes());
        }
    }
    b
}
