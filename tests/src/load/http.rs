//! One keep-alive HTTP/1.1 connection per simulated buyer's device, on hyper's low-level client: exactly
//! one TCP connection per client and no pool in between, so N clients are N connections to the adapter.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A request gets this long before it counts as failed; the adapter answers 503 itself after 5 s.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Connection {
    address: SocketAddr,
    host: String,
    sender: Option<SendRequest<Full<Bytes>>>,
}

#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
    pub took: Duration,
}

impl Connection {
    pub fn new(address: SocketAddr) -> Self {
        Connection {
            address,
            host: address.to_string(),
            sender: None,
        }
    }

    /// Opens the TCP connection now (it is opened lazily otherwise), so a run can start every client
    /// connected before the clock starts.
    pub async fn open(&mut self) -> Result<(), String> {
        if self
            .sender
            .as_ref()
            .is_some_and(|sender| !sender.is_closed())
        {
            return Ok(());
        }
        self.sender = None;
        let stream = TcpStream::connect(self.address)
            .await
            .map_err(|error| format!("connect: {error}"))?;
        // Small requests and answers: Nagle's delay would dominate the latency on loopback.
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|error| format!("handshake: {error}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        self.sender = Some(sender);
        Ok(())
    }

    /// POSTs a JSON body; on a transport error the connection is dropped and reopened by the next call.
    pub async fn post_json(&mut self, path: &str, body: String) -> Result<Answer, String> {
        self.open().await?;
        let request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(HOST, &self.host)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|error| format!("request: {error}"))?;
        let Some(sender) = self.sender.as_mut() else {
            return Err("not connected".to_owned());
        };
        let started = Instant::now();
        let exchange = async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(Ok((status, body))) => Ok(Answer {
                status,
                body,
                took: started.elapsed(),
            }),
            Ok(Err(error)) => {
                self.sender = None;
                Err(format!("http: {error}"))
            }
            Err(_) => {
                self.sender = None;
                Err("timeout".to_owned())
            }
        }
    }
}

/// The `code` of an error envelope (`{"success":false,"message":…,"code":"DS020"}`), if any.
/// Whether an error envelope carries `code` (the adapter writes compact JSON: `"code":"DS020"`): the
/// answer most requests of a sold-out run get, told without parsing, so that the load tool's own work
/// per sold-out answer is about what it is per 404 and the ratio measures the adapter.
pub fn has_error_code(body: &[u8], code: &str) -> bool {
    const KEY: &[u8] = br#""code":""#;
    let Some(at) = body.windows(KEY.len()).position(|window| window == KEY) else {
        return false;
    };
    let value = &body[at + KEY.len()..];
    value.starts_with(code.as_bytes()) && value.get(code.len()) == Some(&b'"')
}

pub fn error_code(body: &[u8]) -> Option<String> {
    let envelope: serde_json::Value = serde_json::from_slice(body).ok()?;
    envelope.get("code")?.as_str().map(str::to_owned)
}

/// `data.id` of a success envelope: the hold's id in a reservation's answer.
pub fn data_id(body: &[u8]) -> Option<String> {
    let envelope: serde_json::Value = serde_json::from_slice(body).ok()?;
    envelope.get("data")?.get("id")?.as_str().map(str::to_owned)
}
