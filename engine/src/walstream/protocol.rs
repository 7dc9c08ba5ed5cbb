//! The walreceiver side of PostgreSQL's streaming replication protocol, over one physical
//! replication connection (`replication=true`).
//!
//! Why not a crate: upstream `tokio-postgres` has no replication support (no CopyBoth, no
//! `replication=` startup parameter), and the forks that add it are unmaintained or pinned to
//! other `tokio-postgres` versions than the one the rest of pgcairn uses. What a physical
//! walreceiver needs is small: the startup handshake (trust, cleartext, MD5 or SCRAM-SHA-256,
//! TLS as `sslmode` says), a handful of simple-query replication commands (`IDENTIFY_SYSTEM`,
//! `SHOW`, `CREATE_REPLICATION_SLOT`, `TIMELINE_HISTORY`, `START_REPLICATION`) and, inside
//! CopyBoth, three message kinds (XLogData and keepalives from the server, standby status
//! updates from us). Message encoding and SCRAM come from `postgres-protocol` (the
//! rust-postgres project's, already in the tree under `tokio-postgres`); the backend messages
//! are parsed here because its parser does not know `CopyBothResponse`.
//!
//! TLS runs here too (`tokio-rustls` with the configuration [`crate::pg::tls`] builds), not
//! through `tokio-postgres-rustls`, whose stream keeps the server certificate's hash private:
//! SCRAM channel binding (`SCRAM-SHA-256-PLUS`, `tls-server-end-point`) needs it. As libpq:
//! `channel_binding=prefer` (the default) binds when the connection uses TLS and the server
//! offers it; `require` refuses a connection without TLS, a server that does not offer
//! `SCRAM-SHA-256-PLUS`, and any authentication that ends without it (trust, password, MD5:
//! a server in the middle could otherwise just skip it); `disable` never binds.
//!
//! Reading is cancel-safe: [`ReplicationConnection::read_message`] only appends to an
//! internal buffer and parses from it, so a `select!` or timeout around it loses nothing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, BytesMut};
use postgres_protocol::authentication::sasl;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_postgres::config::ChannelBinding;

use crate::pg::conninfo::{Conninfo, SslMode};
use crate::types::Lsn;

/// Why talking to the server failed.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The connection could not be made or broke.
    #[error("connection to {target}: {source}")]
    Io {
        target: String,
        #[source]
        source: std::io::Error,
    },
    /// The server answered with an error.
    #[error("server error {code}: {message}")]
    Server { code: String, message: String },
    /// Authentication could not proceed (method unsupported, password missing).
    #[error("authentication: {0}")]
    Auth(String),
    /// The server sent something this client does not understand.
    #[error("protocol: {0}")]
    Protocol(String),
}

impl ProtocolError {
    /// SQLSTATE of a server error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ProtocolError::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    /// True when retrying cannot help: bad credentials, missing privileges, a server that
    /// does not allow replication connections from us, or a misconfiguration (class 28, 42).
    pub fn is_permanent(&self) -> bool {
        match self {
            ProtocolError::Auth(_) => true,
            ProtocolError::Server { code, .. } => {
                code.starts_with("28") || code.starts_with("42") && code != "42710"
            }
            _ => false,
        }
    }
}

type Result<T, E = ProtocolError> = std::result::Result<T, E>;

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A message from the server, as far as this client cares.
#[derive(Debug)]
pub enum BackendMessage {
    /// `R`: an authentication request (code, rest of the body).
    Auth(i32, Vec<u8>),
    /// `E`: an error.
    Error(ProtocolError),
    /// `T`: a row description (ignored: replication results are text).
    RowDescription,
    /// `D`: a data row (text columns, `None` for NULL).
    DataRow(Vec<Option<String>>),
    /// `C`: a command completed.
    CommandComplete,
    /// `Z`: ready for a query.
    ReadyForQuery,
    /// `W`: CopyBoth started (START_REPLICATION).
    CopyBoth,
    /// `H`: CopyOut started.
    CopyOut,
    /// `d`: copy data.
    CopyData(bytes::Bytes),
    /// `c`: copy done.
    CopyDone,
    /// Anything else (notices, parameter status, backend key data): ignored.
    Other(u8),
}

/// Inside CopyBoth: what the server streams.
#[derive(Debug)]
pub enum StreamMessage {
    /// `w`: WAL bytes starting at `start`; `wal_end` is the server's end of WAL.
    XLogData {
        start: Lsn,
        wal_end: Lsn,
        data: bytes::Bytes,
    },
    /// `k`: a keepalive; `reply_requested` asks for a status update now.
    Keepalive { wal_end: Lsn, reply_requested: bool },
}

/// What IDENTIFY_SYSTEM says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    /// The database system identifier (decimal, as pg_control shows it).
    pub system_identifier: String,
    /// The server's current timeline.
    pub timeline: u32,
    /// The server's current WAL flush position.
    pub xlogpos: Lsn,
}

/// How a START_REPLICATION stream ended when the server ended it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineEnd {
    /// The timeline that follows, and where it starts (`None`: the server sent no result,
    /// for example because it is shutting down).
    pub next: Option<(u32, Lsn)>,
}

/// One physical replication connection.
pub struct ReplicationConnection {
    stream: Box<dyn Stream>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    target: String,
}

impl std::fmt::Debug for ReplicationConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConnection")
            .field("target", &self.target)
            .finish()
    }
}

/// Microseconds since 2000-01-01, PostgreSQL's timestamp epoch.
fn pg_now() -> i64 {
    const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .saturating_sub(Duration::from_secs(PG_EPOCH_UNIX_SECS));
    since.as_micros() as i64
}

fn io_err(target: &str) -> impl Fn(std::io::Error) -> ProtocolError + '_ {
    move |source| ProtocolError::Io {
        target: target.to_string(),
        source,
    }
}

fn encode_err(e: std::io::Error) -> ProtocolError {
    ProtocolError::Protocol(format!("cannot encode a message: {e}"))
}

/// Reads a NUL-terminated string.
fn cstr(buf: &mut &[u8]) -> Result<String> {
    let end = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| ProtocolError::Protocol("unterminated string".into()))?;
    let s = String::from_utf8_lossy(&buf[..end]).into_owned();
    *buf = &buf[end + 1..];
    Ok(s)
}

fn parse_error_fields(mut body: &[u8]) -> ProtocolError {
    let (mut code, mut message, mut detail) = (String::new(), String::new(), String::new());
    while let Some((&field, rest)) = body.split_first() {
        if field == 0 {
            break;
        }
        body = rest;
        let Ok(value) = cstr(&mut body) else { break };
        match field {
            b'C' => code = value,
            b'M' => message = value,
            b'D' => detail = value,
            _ => {}
        }
    }
    if !detail.is_empty() {
        message = format!("{message} ({detail})");
    }
    ProtocolError::Server { code, message }
}

/// Parses one framed message from `buf`, if a whole one is there.
pub fn parse_backend(buf: &mut BytesMut) -> Result<Option<BackendMessage>> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(ProtocolError::Protocol(format!(
            "message {:?} with length {len}",
            tag as char
        )));
    }
    let total = 1 + len as usize;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(total);
    frame.advance(5);
    let body = frame.freeze();
    let short = || ProtocolError::Protocol(format!("message {:?} is truncated", tag as char));
    Ok(Some(match tag {
        b'R' => {
            if body.len() < 4 {
                return Err(short());
            }
            let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            BackendMessage::Auth(code, body[4..].to_vec())
        }
        b'E' => BackendMessage::Error(parse_error_fields(&body)),
        b'T' => BackendMessage::RowDescription,
        b'D' => {
            let mut b = &body[..];
            if b.len() < 2 {
                return Err(short());
            }
            let n = b.get_i16();
            let mut cols = Vec::with_capacity(n.max(0) as usize);
            for _ in 0..n {
                if b.len() < 4 {
                    return Err(short());
                }
                let l = b.get_i32();
                if l < 0 {
                    cols.push(None);
                } else {
                    let l = l as usize;
                    if b.len() < l {
                        return Err(short());
                    }
                    cols.push(Some(String::from_utf8_lossy(&b[..l]).into_owned()));
                    b.advance(l);
                }
            }
            BackendMessage::DataRow(cols)
        }
        b'C' => BackendMessage::CommandComplete,
        b'Z' => BackendMessage::ReadyForQuery,
        b'W' => BackendMessage::CopyBoth,
        b'H' => BackendMessage::CopyOut,
        b'd' => BackendMessage::CopyData(body),
        b'c' => BackendMessage::CopyDone,
        other => BackendMessage::Other(other),
    }))
}

/// Parses the payload of a CopyData message inside START_REPLICATION.
pub fn parse_stream(data: bytes::Bytes) -> Result<Option<StreamMessage>> {
    let Some(&kind) = data.first() else {
        return Err(ProtocolError::Protocol("empty CopyData".into()));
    };
    let short =
        || ProtocolError::Protocol(format!("streaming message {:?} is truncated", kind as char));
    match kind {
        b'w' => {
            if data.len() < 25 {
                return Err(short());
            }
            let mut h = &data[1..25];
            let start = Lsn(h.get_u64());
            let wal_end = Lsn(h.get_u64());
            Ok(Some(StreamMessage::XLogData {
                start,
                wal_end,
                data: data.slice(25..),
            }))
        }
        b'k' => {
            if data.len() < 18 {
                return Err(short());
            }
            let mut h = &data[1..18];
            let wal_end = Lsn(h.get_u64());
            let _send_time = h.get_i64();
            Ok(Some(StreamMessage::Keepalive {
                wal_end,
                reply_requested: h.get_u8() != 0,
            }))
        }
        _ => Ok(None), // future message kinds: ignore, as the walreceiver does
    }
}

/// Encodes a standby status update (`r`): `written` and `flushed` are what is durable in the
/// repository; nothing is ever applied, so apply is reported as invalid (0), as
/// `pg_receivewal` does.
pub fn status_update(written: Lsn, flushed: Lsn, reply_requested: bool) -> BytesMut {
    let mut b = BytesMut::with_capacity(34);
    b.put_u8(b'r');
    b.put_u64(written.0);
    b.put_u64(flushed.0);
    b.put_u64(0);
    b.put_i64(pg_now());
    b.put_u8(u8::from(reply_requested));
    b
}

/// Quotes an identifier for a replication command.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// What TLS negotiated: the server certificate's `tls-server-end-point` hash, when it has one
/// (see [`crate::pg::tls::server_end_point`]).
#[derive(Debug)]
struct TlsSession {
    end_point: Option<Vec<u8>>,
}

/// SSLRequest, then the TLS handshake if the server agrees (else the plain stream, when
/// `sslmode` allows). Returns the stream and, with TLS, the session.
async fn start_tls(
    mut plain: Box<dyn Stream>,
    target: &str,
    conninfo: &Conninfo,
    host: &str,
) -> Result<(Box<dyn Stream>, Option<TlsSession>)> {
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    plain.write_all(&buf).await.map_err(io_err(target))?;
    let mut answer = [0u8; 1];
    plain
        .read_exact(&mut answer)
        .await
        .map_err(io_err(target))?;
    if answer[0] != b'S' {
        if matches!(conninfo.tls.mode, SslMode::Prefer) {
            return Ok((plain, None));
        }
        return Err(ProtocolError::Auth(format!(
            "{target} does not accept TLS, and sslmode requires it"
        )));
    }
    let config = crate::pg::tls::client_config(&conninfo.tls)
        .map_err(|e| ProtocolError::Auth(e.to_string()))?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| ProtocolError::Auth(format!("TLS: host name {host:?}: {e}")))?;
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, plain)
        .await
        .map_err(|e| ProtocolError::Auth(format!("TLS handshake with {host}: {e}")))?;
    let end_point = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|cert| crate::pg::tls::server_end_point(cert));
    Ok((Box::new(tls), Some(TlsSession { end_point })))
}

impl ReplicationConnection {
    /// Connects as `conninfo` says, with `replication=true`, trying each host in turn.
    pub async fn connect(conninfo: &Conninfo, application_name: &str) -> Result<Self> {
        let config = &conninfo.config;
        let hosts = config.get_hosts();
        if hosts.is_empty() {
            return Err(ProtocolError::Protocol(
                "cluster.conninfo names no host: add host=/var/run/postgresql or host=NAME".into(),
            ));
        }
        let ports = config.get_ports();
        let mut last = None;
        for (i, host) in hosts.iter().enumerate() {
            let port = ports
                .get(i)
                .or_else(|| ports.first())
                .copied()
                .unwrap_or(5432);
            match Self::connect_one(conninfo, host, port, application_name).await {
                Ok(c) => return Ok(c),
                Err(e) if e.is_permanent() => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one host"))
    }

    async fn connect_one(
        conninfo: &Conninfo,
        host: &tokio_postgres::config::Host,
        port: u16,
        application_name: &str,
    ) -> Result<Self> {
        use tokio_postgres::config::Host;
        let config = &conninfo.config;
        let timeout = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(Duration::from_secs(30));
        let (stream, target, tls_host): (Box<dyn Stream>, String, Option<String>) = match host {
            Host::Tcp(name) => {
                let target = format!("{name}:{port}");
                let s = tokio::time::timeout(
                    timeout,
                    tokio::net::TcpStream::connect((name.as_str(), port)),
                )
                .await
                .map_err(|_| ProtocolError::Io {
                    target: target.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
                })?
                .map_err(io_err(&target))?;
                let _ = s.set_nodelay(true);
                (Box::new(s), target, Some(name.clone()))
            }
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                let target = path.display().to_string();
                let s = tokio::net::UnixStream::connect(&path)
                    .await
                    .map_err(io_err(&target))?;
                (Box::new(s), target, None)
            }
        };
        let (stream, tls) = match tls_host {
            Some(name) if conninfo.tls.mode != SslMode::Disable => {
                start_tls(stream, &target, conninfo, &name).await?
            }
            _ => (stream, None),
        };
        let mut conn = ReplicationConnection {
            stream,
            rbuf: BytesMut::with_capacity(64 << 10),
            wbuf: BytesMut::new(),
            target,
        };
        conn.startup(conninfo, application_name, tls).await?;
        Ok(conn)
    }

    async fn startup(
        &mut self,
        conninfo: &Conninfo,
        application_name: &str,
        tls: Option<TlsSession>,
    ) -> Result<()> {
        let config = &conninfo.config;
        let binding = config.get_channel_binding();
        if binding == ChannelBinding::Require && tls.is_none() {
            return Err(ProtocolError::Auth(format!(
                "channel_binding=require, but the connection to {} does not use TLS: channel binding \
                 needs it (connect with host=NAME and sslmode=require or stricter, not a Unix socket)",
                self.target
            )));
        }
        let mut bound = false;
        let refuse_unbound = |how: &str| {
            ProtocolError::Auth(format!(
                "channel_binding=require, but the server authenticated with {how}, not \
                 SCRAM-SHA-256-PLUS: set scram-sha-256 for this connection in pg_hba.conf \
                 (or relax channel_binding)"
            ))
        };
        let user = config
            .get_user()
            .map(str::to_string)
            .or_else(|| std::env::var("PGUSER").ok())
            .or_else(|| std::env::var("USER").ok())
            .ok_or_else(|| {
                ProtocolError::Auth("no user in cluster.conninfo and no $PGUSER or $USER".into())
            })?;
        let app = config.get_application_name().unwrap_or(application_name);
        let params = [
            ("user", user.as_str()),
            ("replication", "true"),
            ("application_name", app),
        ];
        let mut buf = BytesMut::new();
        frontend::startup_message(params.iter().copied(), &mut buf).map_err(encode_err)?;
        self.send(&buf).await?;
        let password = config.get_password().map(<[u8]>::to_vec);
        let need_password = || {
            password.clone().ok_or_else(|| {
                ProtocolError::Auth(format!(
                    "the server asks user {user:?} for a password and none was found \
                     (conninfo password=, $PGPASSWORD or the password file)"
                ))
            })
        };
        loop {
            match self.read_message().await? {
                BackendMessage::Auth(0, _) if binding == ChannelBinding::Require && !bound => {
                    return Err(refuse_unbound("no password (trust or peer)"));
                }
                BackendMessage::Auth(0, _) => {}
                BackendMessage::Auth(3 | 5, _) if binding == ChannelBinding::Require => {
                    return Err(refuse_unbound("a password or MD5 hash"));
                }
                BackendMessage::Auth(3, _) => {
                    let mut b = BytesMut::new();
                    frontend::password_message(&need_password()?, &mut b).map_err(encode_err)?;
                    self.send(&b).await?;
                }
                BackendMessage::Auth(5, salt) => {
                    let salt: [u8; 4] = salt
                        .get(..4)
                        .and_then(|s| s.try_into().ok())
                        .ok_or_else(|| ProtocolError::Protocol("MD5 salt missing".into()))?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        user.as_bytes(),
                        &need_password()?,
                        salt,
                    );
                    let mut b = BytesMut::new();
                    frontend::password_message(hash.as_bytes(), &mut b).map_err(encode_err)?;
                    self.send(&b).await?;
                }
                BackendMessage::Auth(10, mechanisms) => {
                    bound = self
                        .scram(&mechanisms, &need_password()?, tls.as_ref(), binding)
                        .await?;
                }
                BackendMessage::Auth(code, _) => {
                    return Err(ProtocolError::Auth(format!(
                        "the server asks for authentication method {code}, which pgcairn does not support \
                         (use trust, peer, password, md5 or scram-sha-256 in pg_hba.conf)"
                    )))
                }
                BackendMessage::Error(e) => return Err(e),
                BackendMessage::ReadyForQuery => return Ok(()),
                _ => {}
            }
        }
    }

    /// SCRAM-SHA-256, bound to the TLS session when it can be and `binding` allows (see the
    /// module docs); returns whether it was bound.
    async fn scram(
        &mut self,
        mechanisms: &[u8],
        password: &[u8],
        tls: Option<&TlsSession>,
        binding: ChannelBinding,
    ) -> Result<bool> {
        let offered: Vec<&[u8]> = mechanisms
            .split(|&b| b == 0)
            .filter(|m| !m.is_empty())
            .collect();
        let plus_offered = offered.contains(&sasl::SCRAM_SHA_256_PLUS.as_bytes());
        let end_point = tls.and_then(|t| t.end_point.clone());
        let (mechanism, cb) =
            match (binding, plus_offered, end_point) {
                (ChannelBinding::Disable, _, _) => {
                    (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unsupported())
                }
                (_, true, Some(hash)) => (
                    sasl::SCRAM_SHA_256_PLUS,
                    sasl::ChannelBinding::tls_server_end_point(hash),
                ),
                (ChannelBinding::Require, false, _) => {
                    return Err(ProtocolError::Auth(format!(
                        "channel_binding=require, but {} does not offer SCRAM-SHA-256-PLUS",
                        self.target
                    )))
                }
                (ChannelBinding::Require, true, None) => return Err(ProtocolError::Auth(
                    "channel_binding=require, but the server certificate's signature algorithm \
                     names no hash for tls-server-end-point (RFC 5929; Ed25519, for one): use an \
                     RSA or ECDSA certificate, or relax channel_binding"
                        .into(),
                )),
                // Binding is possible on our side but the server does not offer it: "y" tells a
                // server that did offer it (a downgrade in the middle) to refuse.
                (_, false, Some(_)) => (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unrequested()),
                (_, _, None) => (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unsupported()),
            };
        let bound = mechanism == sasl::SCRAM_SHA_256_PLUS;
        if !offered.contains(&mechanism.as_bytes()) {
            return Err(ProtocolError::Auth(
                "the server offers no SASL mechanism pgcairn supports (SCRAM-SHA-256)".into(),
            ));
        }
        let mut scram = sasl::ScramSha256::new(password, cb);
        let mut b = BytesMut::new();
        frontend::sasl_initial_response(mechanism, scram.message(), &mut b).map_err(encode_err)?;
        self.send(&b).await?;
        match self.read_message().await? {
            BackendMessage::Auth(11, data) => scram
                .update(&data)
                .map_err(|e| ProtocolError::Auth(format!("SCRAM: {e}")))?,
            BackendMessage::Error(e) => return Err(e),
            other => {
                return Err(ProtocolError::Protocol(format!(
                    "expected SASL continue, got {other:?}"
                )))
            }
        }
        let mut b = BytesMut::new();
        frontend::sasl_response(scram.message(), &mut b).map_err(encode_err)?;
        self.send(&b).await?;
        match self.read_message().await? {
            BackendMessage::Auth(12, data) => scram
                .finish(&data)
                .map(|()| bound)
                .map_err(|e| ProtocolError::Auth(format!("SCRAM: the server's proof: {e}"))),
            BackendMessage::Error(e) => Err(e),
            other => Err(ProtocolError::Protocol(format!(
                "expected SASL final, got {other:?}"
            ))),
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(io_err(&self.target))?;
        self.stream.flush().await.map_err(io_err(&self.target))
    }

    /// Reads the next message (cancel-safe, see the module docs).
    pub async fn read_message(&mut self) -> Result<BackendMessage> {
        loop {
            if let Some(m) = parse_backend(&mut self.rbuf)? {
                return Ok(m);
            }
            let n = self
                .stream
                .read_buf(&mut self.rbuf)
                .await
                .map_err(io_err(&self.target))?;
            if n == 0 {
                return Err(ProtocolError::Io {
                    target: self.target.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the server closed the connection",
                    ),
                });
            }
        }
    }

    /// Runs a simple query and returns its rows (text columns).
    pub async fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        self.wbuf.clear();
        frontend::query(sql, &mut self.wbuf).map_err(encode_err)?;
        let b = std::mem::take(&mut self.wbuf);
        self.send(&b).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.read_message().await? {
                BackendMessage::DataRow(r) => rows.push(r),
                BackendMessage::Error(e) => error = Some(e),
                BackendMessage::ReadyForQuery => break,
                BackendMessage::CopyBoth | BackendMessage::CopyOut => {
                    return Err(ProtocolError::Protocol(format!(
                        "{sql:?} unexpectedly started a copy"
                    )))
                }
                _ => {}
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity> {
        let rows = self.query("IDENTIFY_SYSTEM").await?;
        let row = rows
            .first()
            .filter(|r| r.len() >= 3)
            .ok_or_else(|| ProtocolError::Protocol("IDENTIFY_SYSTEM returned no row".into()))?;
        let col = |i: usize| row[i].clone().unwrap_or_default();
        let timeline = col(1).parse().map_err(|_| {
            ProtocolError::Protocol(format!("IDENTIFY_SYSTEM timeline {:?}", col(1)))
        })?;
        let xlogpos = col(2).parse().map_err(|_| {
            ProtocolError::Protocol(format!("IDENTIFY_SYSTEM xlogpos {:?}", col(2)))
        })?;
        Ok(SystemIdentity {
            system_identifier: col(0),
            timeline,
            xlogpos,
        })
    }

    /// `SHOW name` (allowed on a replication connection).
    pub async fn show(&mut self, name: &str) -> Result<String> {
        let rows = self.query(&format!("SHOW {name}")).await?;
        rows.first()
            .and_then(|r| r.first().cloned().flatten())
            .ok_or_else(|| ProtocolError::Protocol(format!("SHOW {name} returned nothing")))
    }

    /// Creates a physical slot that reserves WAL now; an existing slot is fine (`false`).
    pub async fn create_physical_slot(&mut self, slot: &str) -> Result<bool> {
        match self
            .query(&format!(
                "CREATE_REPLICATION_SLOT {} PHYSICAL RESERVE_WAL",
                quote_ident(slot)
            ))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("42710") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `TIMELINE_HISTORY tli`: the history file's name and content.
    pub async fn timeline_history(&mut self, tli: u32) -> Result<(String, Vec<u8>)> {
        let rows = self.query(&format!("TIMELINE_HISTORY {tli}")).await?;
        let row = rows
            .first()
            .filter(|r| r.len() >= 2)
            .ok_or_else(|| ProtocolError::Protocol("TIMELINE_HISTORY returned no row".into()))?;
        Ok((
            row[0].clone().unwrap_or_default(),
            row[1].clone().unwrap_or_default().into_bytes(),
        ))
    }

    /// `START_REPLICATION SLOT s PHYSICAL lsn TIMELINE tli`; on success the connection is in
    /// CopyBoth mode.
    pub async fn start_replication(
        &mut self,
        slot: Option<&str>,
        start: Lsn,
        tli: u32,
    ) -> Result<()> {
        let slot = slot
            .map(|s| format!("SLOT {} ", quote_ident(s)))
            .unwrap_or_default();
        let sql = format!("START_REPLICATION {slot}PHYSICAL {start} TIMELINE {tli}");
        self.wbuf.clear();
        frontend::query(&sql, &mut self.wbuf).map_err(encode_err)?;
        let b = std::mem::take(&mut self.wbuf);
        self.send(&b).await?;
        loop {
            match self.read_message().await? {
                BackendMessage::CopyBoth => return Ok(()),
                BackendMessage::Error(e) => {
                    // Drain to ReadyForQuery so the error is the one reported.
                    loop {
                        if let BackendMessage::ReadyForQuery = self.read_message().await? {
                            return Err(e);
                        }
                    }
                }
                BackendMessage::ReadyForQuery => {
                    return Err(ProtocolError::Protocol(format!(
                        "{sql} returned without streaming"
                    )))
                }
                _ => {}
            }
        }
    }

    /// Sends a standby status update (CopyData).
    pub async fn send_status(&mut self, written: Lsn, flushed: Lsn) -> Result<()> {
        let payload = status_update(written, flushed, false);
        let mut b = BytesMut::new();
        frontend::CopyData::new(&payload[..])
            .map_err(encode_err)?
            .write(&mut b);
        self.send(&b).await
    }

    /// After the server's CopyDone: answers with CopyDone and reads the result set that
    /// names the next timeline, up to ReadyForQuery.
    pub async fn finish_stream(&mut self) -> Result<TimelineEnd> {
        let mut b = BytesMut::new();
        frontend::copy_done(&mut b);
        self.send(&b).await?;
        let mut next = None;
        loop {
            match self.read_message().await? {
                BackendMessage::DataRow(r) if r.len() >= 2 => {
                    let tli = r[0].as_deref().and_then(|t| t.parse().ok());
                    let lsn = r[1].as_deref().and_then(|l| l.parse().ok());
                    if let (Some(t), Some(l)) = (tli, lsn) {
                        next = Some((t, l));
                    }
                }
                BackendMessage::Error(e) => return Err(e),
                BackendMessage::ReadyForQuery => return Ok(TimelineEnd { next }),
                _ => {}
            }
        }
    }

    /// Ends the stream from our side (CopyDone) and closes the connection politely.
    pub async fn close(mut self) {
        let mut b = BytesMut::new();
        frontend::copy_done(&mut b);
        frontend::terminate(&mut b);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.send(&b)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u8(tag);
        b.put_i32(body.len() as i32 + 4);
        b.put_slice(body);
        b
    }

    #[test]
    fn frames_are_parsed_only_when_whole() {
        let mut body = vec![b'w'];
        body.extend_from_slice(&0x0100_0000u64.to_be_bytes());
        body.extend_from_slice(&0x0200_0000u64.to_be_bytes());
        body.extend_from_slice(&0i64.to_be_bytes());
        body.extend_from_slice(b"WAL!");
        let whole = frame(b'd', &body);
        let mut buf = BytesMut::from(&whole[..10]);
        assert!(parse_backend(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&whole[10..]);
        let Some(BackendMessage::CopyData(d)) = parse_backend(&mut buf).unwrap() else {
            panic!("copy data expected")
        };
        assert!(buf.is_empty());
        match parse_stream(d).unwrap() {
            Some(StreamMessage::XLogData {
                start,
                wal_end,
                data,
            }) => {
                assert_eq!(start, Lsn(0x0100_0000));
                assert_eq!(wal_end, Lsn(0x0200_0000));
                assert_eq!(&data[..], b"WAL!");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn server_errors_keep_code_message_and_detail() {
        let mut buf = frame(
            b'E',
            b"SERROR\0C42704\0Mreplication slot \"x\" does not exist\0Dsome detail\0\0",
        );
        let Some(BackendMessage::Error(e)) = parse_backend(&mut buf).unwrap() else {
            panic!()
        };
        assert_eq!(e.code(), Some("42704"));
        assert!(
            e.to_string().contains("does not exist (some detail)"),
            "{e}"
        );
        assert!(e.is_permanent());
        let exists = ProtocolError::Server {
            code: "42710".into(),
            message: String::new(),
        };
        assert!(!exists.is_permanent());
    }

    #[test]
    fn status_update_carries_the_flush_position_and_no_apply() {
        let b = status_update(Lsn(5), Lsn(7), true);
        assert_eq!(b.len(), 34);
        assert_eq!(b[0], b'r');
        assert_eq!(u64::from_be_bytes(b[1..9].try_into().unwrap()), 5);
        assert_eq!(u64::from_be_bytes(b[9..17].try_into().unwrap()), 7);
        assert_eq!(u64::from_be_bytes(b[17..25].try_into().unwrap()), 0);
        assert_eq!(b[33], 1);
    }

    #[test]
    fn keepalives_and_negative_lengths() {
        let mut k = vec![b'k'];
        k.extend_from_slice(&9u64.to_be_bytes());
        k.extend_from_slice(&0i64.to_be_bytes());
        k.push(1);
        assert!(matches!(
            parse_stream(bytes::Bytes::from(k)).unwrap(),
            Some(StreamMessage::Keepalive {
                wal_end: Lsn(9),
                reply_requested: true
            })
        ));
        let mut bad = BytesMut::from(&[b'd', 0, 0, 0, 1][..]);
        assert!(parse_backend(&mut bad).is_err());
        assert!(parse_stream(bytes::Bytes::from_static(b"w123")).is_err());
    }
}
