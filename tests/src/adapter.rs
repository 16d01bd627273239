//! The adapter's side of the tests: `dropstock-http` started on a free loopback port against the test
//! cluster, an HTTP and a WebSocket client, the failure envelope, and a relay that cuts the adapter off
//! from the database.
//!
//! By default the adapter runs inside the test process, from its library (`dropstock_http::serve`), with
//! the same flags the binary takes. Tests that signal it, restart it or read its log start the real
//! binary instead (`Options::process`): `DROPSTOCK_HTTP_BIN`, by default `target/debug/dropstock-http`
//! of this workspace (build it first with `cargo build -p dropstock-http`).

use std::net::{SocketAddr, TcpListener};

use clap::Parser;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_postgres::Client;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

use crate::db::{database_url, unique, wait_for, wait_until};
use crate::pooler::{self, PgBouncer};

pub const ADMIN_TOKEN: &str = "test-admin-token";
pub const JWT_SECRET: &str = "test-jwt-secret-0123456789";

pub fn binary() -> PathBuf {
    std::env::var_os("DROPSTOCK_HTTP_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/dropstock-http")
        })
}

/// A port nothing listens on right now. The server that is given it binds it a moment later; on a test
/// machine nothing else races for loopback ports.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free local port")
        .port()
}

/// A running adapter, stopped when dropped.
pub struct Adapter {
    running: Running,
    pub port: u16,
    pub base: String,
    http: reqwest::Client,
    /// The PgBouncer its requests go through, when the tests run behind one (`pooler::requested`).
    pub pooler: Option<PgBouncer>,
}

/// Where the adapter runs.
enum Running {
    /// A task of the test's runtime; the sender tells it to shut down.
    InProcess {
        shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    },
    /// The binary, with its output in `log`.
    Process { child: Child, log: PathBuf },
}

/// How an adapter is started: its settings (by their environment names, as the binary reads them) on top
/// of the database URL and the port, and whether to run the binary.
#[derive(Default, Clone)]
pub struct Options {
    pub env: Vec<(String, String)>,
    pub database_url: Option<String>,
    pub process: bool,
}

impl Options {
    pub fn admin() -> Self {
        Options::default().with("DROPSTOCK_ADMIN_TOKEN", ADMIN_TOKEN)
    }

    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The real binary rather than the library: for tests that signal it, restart it or read its log.
    pub fn process(mut self) -> Self {
        self.process = true;
        self
    }

    fn setting(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl Adapter {
    /// An adapter with the admin token set, as most tests want one, and the default rate limits (so a
    /// 429 under an honest load is a finding).
    pub async fn start() -> Adapter {
        Adapter::start_with(Options::admin()).await
    }

    pub async fn start_with(mut options: Options) -> Adapter {
        // Behind PgBouncer in transaction mode, as an operator would run it: requests through the pooler
        // as unnamed statements, LISTEN straight to PostgreSQL. A test that names its own database URL (a
        // relay it cuts) keeps it.
        let pooler = if pooler::requested() && options.database_url.is_none() {
            let bouncer = PgBouncer::start().await;
            options.database_url = Some(bouncer.url());
            options = options
                .with("DROPSTOCK_LISTEN_DATABASE_URL", &database_url())
                .with("DROPSTOCK_STATEMENTS", "unnamed");
            Some(bouncer)
        } else {
            None
        };
        let port = free_port();
        let running = if options.process {
            spawn(&options, port)
        } else {
            run_in_process(&options, port).await
        };
        let adapter = Adapter {
            running,
            port,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            pooler,
        };
        adapter.wait_healthy().await;
        adapter
    }

    /// What the binary printed; an adapter in the test process logs nowhere.
    pub fn log(&self) -> String {
        match &self.running {
            Running::Process { log, .. } => std::fs::read_to_string(log).unwrap_or_default(),
            Running::InProcess { .. } => "(the adapter runs in the test process)".into(),
        }
    }

    fn child(&mut self) -> &mut Child {
        match &mut self.running {
            Running::Process { child, .. } => child,
            Running::InProcess { .. } => {
                panic!("only an adapter started as a process has one: use Options::process")
            }
        }
    }

    pub fn pid(&mut self) -> u32 {
        self.child().id()
    }

    /// The Prometheus text `/metrics` answers.
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Polls `/healthz` until it answers 200; fails after 20 s.
    async fn wait_healthy(&self) {
        let healthy = wait_until(Duration::from_secs(20), || async {
            matches!(self.http.get(self.url("/healthz")).send().await, Ok(r) if r.status() == 200)
        })
        .await;
        assert!(
            healthy,
            "adapter not healthy within 20 s; log:\n{}",
            self.log()
        );
    }

    /// Waits until the adapter's LISTEN connection is up, so a NOTIFY sent now is relayed.
    pub async fn wait_listening(&self) {
        let listening = wait_until(Duration::from_secs(20), || async {
            let (status, body) = self.get("/healthz").await;
            status == 200 && body["data"]["listening"] == true
        })
        .await;
        assert!(
            listening,
            "adapter not listening within 20 s; log:\n{}",
            self.log()
        );
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        read(self.http.get(self.url(path)).send().await.unwrap()).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        read(
            self.http
                .post(self.url(path))
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    pub async fn post_as(&self, path: &str, bearer: &str, body: Value) -> (u16, Value) {
        let request = self
            .http
            .post(self.url(path))
            .bearer_auth(bearer)
            .json(&body);
        read(request.send().await.unwrap()).await
    }

    /// POST /api/drops with the admin token.
    pub async fn create_drop(&self, body: Value) -> Value {
        let (status, answer) = self.post_as("/api/drops", ADMIN_TOKEN, body).await;
        assert_eq!(status, 201, "create drop: {answer}");
        answer["data"].clone()
    }

    /// An open drop with `stock` units and a unique name; its id.
    pub async fn open_drop(&self, stock: i32) -> String {
        let drop = self
            .create_drop(
                json!({"name": unique("adapter drop"), "price": 25.5, "totalStock": stock}),
            )
            .await;
        id(&drop)
    }

    /// POST /api/users (open in the default mode); the buyer's id.
    pub async fn new_buyer(&self) -> String {
        let (status, answer) = self
            .post("/api/users", json!({"username": unique("buyer")}))
            .await;
        assert_eq!(status, 201, "create user: {answer}");
        id(&answer["data"])
    }

    /// POST /api/users; the buyer's id and inbox key (the secret that opens their inbox on the feed).
    pub async fn new_buyer_with_inbox(&self) -> (String, String) {
        let (status, answer) = self
            .post("/api/users", json!({"username": unique("buyer")}))
            .await;
        assert_eq!(status, 201, "create user: {answer}");
        let key = answer["data"]["inboxKey"]
            .as_str()
            .unwrap_or_else(|| panic!("no inboxKey in {answer}"))
            .to_owned();
        (id(&answer["data"]), key)
    }

    pub async fn get_as(&self, path: &str, bearer: &str) -> (u16, Value) {
        read(
            self.http
                .get(self.url(path))
                .bearer_auth(bearer)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    pub async fn reserve(&self, drop: &str, buyer: &str) -> (u16, Value) {
        self.post(
            "/api/reservations",
            json!({"dropId": drop, "userId": buyer}),
        )
        .await
    }

    pub async fn ws(&self, query: &str) -> Feed {
        let url = format!("ws://127.0.0.1:{}/ws{query}", self.port);
        let (socket, _) = tokio_tungstenite::connect_async(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
        Feed {
            socket,
            socketio: false,
        }
    }

    /// A Socket.IO client of `/socket.io/` over WebSocket, connected to the default namespace.
    pub async fn socketio(&self) -> Feed {
        let url = format!(
            "ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket",
            self.port
        );
        let (mut socket, _) = tokio_tungstenite::connect_async(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
        crate::load::watch::socketio_handshake(&mut socket)
            .await
            .unwrap_or_else(|e| panic!("Socket.IO handshake on {url}: {e}"));
        Feed {
            socket,
            socketio: true,
        }
    }

    /// A Socket.IO client that connects to the default namespace with `auth` (`{inboxKey}` or `{token}`),
    /// or the server's refusal of it (a connect error's packet).
    pub async fn socketio_with_auth(&self, auth: &Value) -> Result<Feed, String> {
        let url = format!(
            "ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket",
            self.port
        );
        let (mut socket, _) = tokio_tungstenite::connect_async(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
        let within = Duration::from_secs(5);
        let next_text = async |socket: &mut WebSocketStream<MaybeTlsStream<TcpStream>>| loop {
            match tokio::time::timeout(within, socket.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => return text.as_str().to_owned(),
                Ok(Some(Ok(_))) => continue,
                other => panic!("no Socket.IO packet within {within:?}: {other:?}"),
            }
        };
        let open = next_text(&mut socket).await;
        assert!(
            open.starts_with("0{"),
            "not an Engine.IO open packet: {open}"
        );
        socket
            .send(Message::Text(format!("40{auth}").into()))
            .await
            .unwrap();
        loop {
            let packet = next_text(&mut socket).await;
            if packet.starts_with("40") {
                return Ok(Feed {
                    socket,
                    socketio: true,
                });
            }
            if packet.starts_with("44") {
                return Err(packet);
            }
        }
    }

    /// A client whose receive buffer is tiny, so that once it stops reading the server's writes to it
    /// stall after a few megabytes rather than after everything the kernel would otherwise buffer.
    pub async fn ws_with_small_buffer(&self, query: &str) -> Feed {
        let url = format!("ws://127.0.0.1:{}/ws{query}", self.port);
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket
            .connect(([127, 0, 0, 1], self.port).into())
            .await
            .unwrap();
        let (socket, _) = tokio_tungstenite::client_async(&url, MaybeTlsStream::Plain(stream))
            .await
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
        Feed {
            socket,
            socketio: false,
        }
    }

    /// Sends SIGTERM, as a process manager stopping the adapter would.
    pub fn terminate(&mut self) {
        let pid = self.child().id();
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; its exit status.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let child = self.child();
        let exited = wait_for(within, || {
            let status = child.try_wait().unwrap();
            async move { status }
        })
        .await;
        exited.unwrap_or_else(|| {
            panic!(
                "adapter still running after {within:?}; log:\n{}",
                self.log()
            )
        })
    }
}

impl Drop for Adapter {
    fn drop(&mut self) {
        match &mut self.running {
            Running::Process { child, log } => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_file(log);
            }
            Running::InProcess { shutdown } => {
                if let Some(shutdown) = shutdown.take() {
                    let _ = shutdown.send(());
                }
            }
        }
    }
}

/// The binary on `port`, with exactly the settings in `options` (none inherited from the test's own
/// environment) and its output in a file.
fn spawn(options: &Options, port: u16) -> Running {
    let binary = binary();
    assert!(
        binary.exists(),
        "{} does not exist: run `cargo build -p dropstock-http` (or set DROPSTOCK_HTTP_BIN)",
        binary.display()
    );
    let log = std::env::temp_dir().join(format!("dropstock-http-test-{port}.log"));
    let log_file = std::fs::File::create(&log).unwrap();
    let mut command = Command::new(&binary);
    command
        .env_remove("DROPSTOCK_ADMIN_TOKEN")
        .env_remove("DROPSTOCK_JWT_SECRET")
        .env_remove("DROPSTOCK_CORS_ORIGINS")
        .env_remove("DROPSTOCK_JWT_ISSUER")
        .env_remove("DROPSTOCK_JWT_AUDIENCE")
        .env_remove("DROPSTOCK_LISTEN_DATABASE_URL")
        .env_remove("DROPSTOCK_STATEMENTS")
        .env(
            "DATABASE_URL",
            options.database_url.clone().unwrap_or_else(database_url),
        )
        .env("DROPSTOCK_LISTEN", format!("127.0.0.1:{port}"))
        .env("DROPSTOCK_POOL_SIZE", "8")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file);
    for (key, value) in &options.env {
        command.env(key, value);
    }
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    Running::Process { child, log }
}

/// The adapter's library serving `port` from a task of the test's runtime. The settings go through the
/// binary's own flag parser (`--admin-token` for `DROPSTOCK_ADMIN_TOKEN`, and so on), so defaults and
/// checks are the binary's; the secrets the binary would read from the environment are set only when
/// the test asks for them.
async fn run_in_process(options: &Options, port: u16) -> Running {
    let mut arguments = vec![
        "dropstock-http".to_string(),
        "--database-url".into(),
        options.database_url.clone().unwrap_or_else(database_url),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--pool-size".into(),
        "8".into(),
    ];
    for (key, value) in &options.env {
        let name = key
            .trim_start_matches("DROPSTOCK_")
            .to_lowercase()
            .replace('_', "-");
        arguments.push(format!("--{name}"));
        arguments.push(value.clone());
    }
    let mut config = dropstock_http::Config::try_parse_from(&arguments)
        .unwrap_or_else(|e| panic!("adapter settings {arguments:?}: {e}"));
    if options.setting("DROPSTOCK_ADMIN_TOKEN").is_none() {
        config.admin_token = None;
    }
    if options.setting("DROPSTOCK_JWT_SECRET").is_none() {
        config.jwt_secret = None;
    }
    if options.setting("DROPSTOCK_CORS_ORIGINS").is_none() {
        config.cors_origins.clear();
    }
    let app = dropstock_http::App::connect(&config)
        .await
        .unwrap_or_else(|e| panic!("the adapter cannot start: {e}"));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the adapter's port");
    let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(dropstock_http::serve(listener, app, async move {
        let _ = stop.await;
    }));
    Running::InProcess {
        shutdown: Some(shutdown),
    }
}

pub async fn read(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// The `id` of an answer, checked to be a UUID. Ids stay strings in the tests: they go into JSON bodies
/// and paths and are compared with JSON values.
pub fn id(value: &Value) -> String {
    match value["id"].as_str() {
        Some(id) if Uuid::parse_str(id).is_ok() => id.to_owned(),
        _ => panic!("no id in {value}"),
    }
}

/// An id nothing has.
pub fn new_id() -> String {
    Uuid::new_v4().to_string()
}

/// Asserts a failure envelope: status, `code`, and a message containing `fragment`.
#[track_caller]
pub fn assert_refused(answer: &(u16, Value), status: u16, code: &str, fragment: &str) {
    let (got, body) = answer;
    assert_eq!(*got, status, "status of {body}");
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["code"], code, "{body}");
    let message = body["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message in {body}"));
    assert!(
        message.contains(fragment),
        "message {message:?} should mention {fragment:?}"
    );
}

/// One WebSocket client of `/ws`, or of `/socket.io/`.
pub struct Feed {
    pub socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Socket.IO framing: each event reads as `{"event": name, "args": [payload…]}`.
    socketio: bool,
}

impl Feed {
    /// The next JSON text message within `within`; None on timeout. Pings are answered by the library
    /// (WebSocket pings) or here (Engine.IO pings).
    pub async fn next_message(&mut self, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .ok()?;
            match frame {
                Some(Ok(Message::Text(text))) if self.socketio => match text.as_str() {
                    "2" => self.socket.send(Message::Text("3".into())).await.unwrap(),
                    packet => match packet.strip_prefix("42") {
                        Some(event) => {
                            let mut args: Vec<Value> = serde_json::from_str(event).unwrap();
                            let name = args.remove(0);
                            return Some(json!({"event": name, "args": args}));
                        }
                        None => assert!(packet != "41", "the server disconnected the client"),
                    },
                },
                Some(Ok(Message::Text(text))) => {
                    return Some(serde_json::from_str(text.as_str()).unwrap())
                }
                Some(Ok(Message::Close(frame))) => panic!("server closed the feed: {frame:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("feed failed: {e}"),
                None => panic!("feed ended"),
            }
        }
    }

    /// The first message within `within` that `wanted` accepts, skipping others (other tests' drops share
    /// the feed); panics naming `what` if none comes.
    pub async fn expect(
        &mut self,
        within: Duration,
        what: &str,
        wanted: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_message(left).await {
                Some(message) if wanted(&message) => return message,
                Some(message) => skipped.push(message),
                None => panic!("no {what} within {within:?}; got instead: {skipped:?}"),
            }
        }
    }

    /// The snapshot every client gets first.
    pub async fn snapshot(&mut self) -> Value {
        let message = self
            .next_message(Duration::from_secs(5))
            .await
            .expect("a snapshot on connect");
        assert_eq!(message["type"], "snapshot", "first message: {message}");
        message
    }

    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}

/// Waits until the background worker has announced `drop` (its first notice is committed, so it
/// reaches the adapter before any notice sent after this returns). A test that stands in for the worker
/// calls it first: otherwise the worker's own notice of the new drop (seq 1) can arrive after the test's,
/// and a client that is behind keeps only the latest stock level of a drop, which would be seq 1.
pub async fn wait_announced(db: &Client, drop: &str) {
    let announced = crate::db::wait_until(Duration::from_secs(10), || async {
        db.query_opt(
            "SELECT FROM dropstock.feed_state WHERE drop_id = $1::text::uuid AND seq > 0",
            &[&drop],
        )
        .await
        .unwrap()
        .is_some()
    })
    .await;
    assert!(
        announced,
        "the worker did not announce drop {drop} within 10 s"
    );
}

/// What the background worker publishes, for tests that stand in for it.
pub async fn notify(db: &Client, payload: &Value) {
    db.execute("SELECT pg_notify('dropstock', $1)", &[&payload.to_string()])
        .await
        .unwrap();
}

/// A TCP relay between the adapter and the database that the test can cut and restore, to show what
/// clients see while the database is unreachable without stopping the shared cluster.
pub struct Relay {
    pub port: u16,
    open: Arc<std::sync::atomic::AtomicBool>,
    links: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start() -> Relay {
        let target: SocketAddr = {
            let url = database_url();
            let config: tokio_postgres::Config = url.parse().unwrap();
            let port = config.get_ports().first().copied().unwrap_or(5432);
            format!("127.0.0.1:{port}").parse().unwrap()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let links = Arc::new(std::sync::Mutex::new(Vec::new()));
        let accept = {
            let (open, links) = (open.clone(), links.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    if !open.load(std::sync::atomic::Ordering::SeqCst) {
                        continue; // dropped: the adapter sees the connection refused by a closed socket
                    }
                    let link = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    links.lock().unwrap().push(link.abort_handle());
                }
            })
        };
        Relay {
            port,
            open,
            links,
            accept,
        }
    }

    pub fn url(&self) -> String {
        let mut config: tokio_postgres::Config = database_url().parse().unwrap();
        config.port(self.port);
        let user = config.get_user().unwrap_or("postgres").to_owned();
        let database = config.get_dbname().unwrap_or("postgres").to_owned();
        format!("postgresql://{user}@127.0.0.1:{}/{database}", self.port)
    }

    /// Severs every open link and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    pub fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// Sends a text message on a raw feed socket (for tests of what the server ignores).
pub async fn say(feed: &mut Feed, text: &str) {
    feed.socket.send(Message::Text(text.into())).await.unwrap();
}
