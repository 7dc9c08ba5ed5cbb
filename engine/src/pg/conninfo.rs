//! `cluster.conninfo`, read the way libpq reads it, and never shown with its password.
//!
//! `tokio-postgres` parses most of libpq's connection string but not everything operators
//! write in one: `sslmode=verify-ca|verify-full` and `sslrootcert=` (it rejects the former and
//! ignores the latter), and it neither reads `PGPASSWORD` nor a password file. This module
//! takes those keys out of the string, passes the rest to `tokio-postgres`, and supplies what
//! libpq would:
//! - **TLS**: `sslmode` `disable`, `allow`/`prefer` (TLS when offered, certificate not
//!   checked), `require` (TLS, not checked unless a root certificate is given, as libpq
//!   does), `verify-ca` (chain checked against `sslrootcert`), `verify-full` (chain and host
//!   name). `sslrootcert` defaults to `$PGSSLROOTCERT`, then `~/.postgresql/root.crt`.
//! - **Password** when the string has none: `$PGPASSWORD`, else the password file
//!   (`passfile=`, `$PGPASSFILE`, else `~/.pgpass`) with libpq's matching
//!   (`host:port:database:user:password`, `*` wildcards, `\` escapes, a socket directory
//!   matching `localhost`), ignored with a warning when group or others can read it.
//!
//! Every message that shows a connection string shows [`redact`]ed text: errors end up in
//! PostgreSQL's log and in monitoring.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// How to use TLS, from `sslmode` and `sslrootcert`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPolicy {
    /// The mode libpq would use.
    pub mode: SslMode,
    /// CA certificates (PEM) to check the server against, if any.
    pub root_cert: Option<PathBuf>,
}

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it (`allow` and `prefer`).
    Prefer,
    /// TLS required; the certificate is checked only when a root certificate is given.
    Require,
    /// TLS required, certificate chain checked.
    VerifyCa,
    /// TLS required, chain and host name checked.
    VerifyFull,
}

/// A connection string ready for `tokio-postgres`.
#[derive(Debug)]
pub struct Conninfo {
    /// Everything `tokio-postgres` understands, password filled in when found.
    pub config: tokio_postgres::Config,
    /// TLS policy.
    pub tls: TlsPolicy,
    /// The string as the user wrote it, password hidden.
    pub redacted: String,
}

/// `conninfo` with every password replaced by `********` (key/value and URI forms).
pub fn redact(conninfo: &str) -> String {
    if conninfo.starts_with("postgres://") || conninfo.starts_with("postgresql://") {
        return redact_uri(conninfo);
    }
    match split(conninfo) {
        Ok(pairs) => pairs
            .iter()
            .map(|(k, v)| {
                if k == "password" {
                    format!("{k}=********")
                } else {
                    format!("{k}={}", quote(v))
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
        // Unparseable: show no value at all rather than risk showing a password.
        Err(_) => "(connection string not shown: it does not parse)".into(),
    }
}

fn redact_uri(uri: &str) -> String {
    let mut out = uri.to_string();
    // user:password@ in the authority.
    if let Some(scheme_end) = out.find("://") {
        let rest = &out[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            if let Some(colon) = rest[..at].find(':') {
                let start = scheme_end + 3 + colon + 1;
                out.replace_range(start..scheme_end + 3 + at, "********");
            }
        }
    }
    // password=... in the query.
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let query = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some(("password", _)) => "password=********".to_string(),
                _ => p.to_string(),
            })
            .collect::<Vec<_>>()
            .join("&");
        out = format!("{head}{query}");
    }
    out
}

/// True when the string carries a password.
pub fn has_password(conninfo: &str) -> bool {
    if conninfo.starts_with("postgres://") || conninfo.starts_with("postgresql://") {
        return redact_uri(conninfo) != conninfo;
    }
    // Unparseable: assume the worst (callers use this to keep secrets private).
    split(conninfo).map_or(true, |p| p.iter().any(|(k, _)| k == "password"))
}

/// A connection string of `pairs`, every value quoted: a value from elsewhere (a database
/// name read from a restored cluster) stays one value, whatever it holds. Given to `psql -d`
/// or `pgbench`, which treat an argument with `=` as a connection string whose host, port and
/// user override their own options: a database named `host=/var/run/postgresql dbname=x`,
/// passed alone, would connect to another server.
pub fn keyword_values(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote(v: &str) -> String {
    if !v.is_empty() && !v.contains([' ', '\'', '\\']) {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// libpq's key/value syntax: `key = value` pairs, values optionally single-quoted with `\`
/// escapes.
fn split(s: &str) -> std::result::Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut it = s.chars().peekable();
    loop {
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        if it.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = it.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            it.next();
        }
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        if it.next() != Some('=') {
            return Err(format!("missing \"=\" after {key:?}"));
        }
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        let mut value = String::new();
        if it.peek() == Some(&'\'') {
            it.next();
            loop {
                match it.next() {
                    None => return Err(format!("unterminated quoted value of {key:?}")),
                    Some('\'') => break,
                    Some('\\') => value.push(it.next().ok_or("trailing backslash")?),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = it.peek() {
                if c.is_whitespace() {
                    break;
                }
                it.next();
                if c == '\\' {
                    value.push(it.next().ok_or("trailing backslash")?);
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// Parses `conninfo` and fills in what libpq would (see the module docs).
pub fn parse(conninfo: &str) -> Result<Conninfo> {
    let redacted = redact(conninfo);
    let bad = |why: String| {
        Error::Config(format!(
            "cluster.conninfo {redacted:?} is not a valid connection string: {why}"
        ))
    };
    let is_uri = conninfo.starts_with("postgres://") || conninfo.starts_with("postgresql://");
    let (mut config, mut mode, mut root_cert, mut passfile): (
        tokio_postgres::Config,
        Option<String>,
        Option<PathBuf>,
        Option<PathBuf>,
    ) = if is_uri {
        let c: tokio_postgres::Config = conninfo
            .parse()
            .map_err(|e: tokio_postgres::Error| bad(e.to_string()))?;
        (c, None, None, None)
    } else {
        let mut rest = Vec::new();
        let (mut mode, mut root, mut pass) = (None, None, None);
        for (k, v) in split(conninfo).map_err(bad)? {
            match k.as_str() {
                "sslmode" => mode = Some(v),
                "sslrootcert" => root = Some(PathBuf::from(v)),
                "passfile" => pass = Some(PathBuf::from(v)),
                _ => rest.push(format!("{k}={}", quote(&v))),
            }
        }
        let c: tokio_postgres::Config = rest
            .join(" ")
            .parse()
            .map_err(|e: tokio_postgres::Error| bad(e.to_string()))?;
        (c, mode, root, pass)
    };
    if mode.is_none() {
        mode = std::env::var("PGSSLMODE").ok().filter(|m| !m.is_empty());
    }
    let mode = match mode.as_deref() {
        None => match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => SslMode::Disable,
            tokio_postgres::config::SslMode::Require => SslMode::Require,
            _ => SslMode::Prefer,
        },
        Some("disable") => SslMode::Disable,
        Some("allow" | "prefer") => SslMode::Prefer,
        Some("require") => SslMode::Require,
        Some("verify-ca") => SslMode::VerifyCa,
        Some("verify-full") => SslMode::VerifyFull,
        Some(other) => {
            return Err(bad(format!(
                "sslmode {other:?}: use disable, allow, prefer, require, verify-ca or verify-full"
            )))
        }
    };
    config.ssl_mode(match mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    if root_cert.is_none() {
        root_cert = std::env::var_os("PGSSLROOTCERT")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
    }
    if root_cert.is_none() && matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) {
        let default = home().map(|h| h.join(".postgresql/root.crt"));
        root_cert =
            Some(default.filter(|p| p.is_file()).ok_or_else(|| {
                bad(format!(
                "sslmode={} needs a root certificate: set sslrootcert= in the connection string \
                 or PGSSLROOTCERT (libpq's default ~/.postgresql/root.crt does not exist)",
                if mode == SslMode::VerifyCa { "verify-ca" } else { "verify-full" }
            ))
            })?);
    }
    if config.get_password().is_none() {
        if let Some(pw) = std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty()) {
            config.password(pw);
        } else {
            if passfile.is_none() {
                passfile = std::env::var_os("PGPASSFILE")
                    .filter(|p| !p.is_empty())
                    .map(PathBuf::from)
                    .or_else(|| home().map(|h| h.join(".pgpass")));
            }
            if let Some(pf) = passfile {
                if let Some(pw) = password_from_file(&pf, &config) {
                    config.password(pw);
                }
            }
        }
    }
    Ok(Conninfo {
        config,
        tls: TlsPolicy { mode, root_cert },
        redacted,
    })
}

/// The password for `config` in a libpq password file, if any line matches.
fn password_from_file(path: &Path, config: &tokio_postgres::Config) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "password file {} has group or world access; ignoring it (chmod 0600 it, as libpq asks)",
            path.display()
        );
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        // A Unix socket directory matches "localhost", as in libpq.
        Some(tokio_postgres::config::Host::Unix(_)) | None => "localhost".to_string(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let user = config.get_user().unwrap_or_default().to_string();
    let db = config
        .get_dbname()
        .map(str::to_string)
        .unwrap_or_else(|| user.clone());
    lookup_password(&text, [&host, &port, &db, &user])
}

/// libpq's `.pgpass` matching: the first line whose four fields match (`*` matches anything).
fn lookup_password(text: &str, want: [&str; 4]) -> Option<String> {
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields = Vec::with_capacity(5);
        let mut cur = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        cur.push(n);
                    }
                }
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut cur)),
                c => cur.push(c),
            }
        }
        fields.push(cur);
        if fields.len() != 5 {
            continue;
        }
        if fields[..4]
            .iter()
            .zip(want)
            .all(|(f, w)| f == "*" || f == w)
        {
            return Some(fields[4].clone());
        }
    }
    None
}

/// Connects with `conninfo` (TLS per its sslmode, see [`crate::pg::tls`]); the connection runs
/// on a spawned task until the client is dropped.
pub async fn connect(conninfo: &str) -> Result<tokio_postgres::Client> {
    let parsed = parse(conninfo)?;
    let (config, redacted) = (parsed.config, parsed.redacted);
    let failed = |e: tokio_postgres::Error| {
        Error::Config(format!(
            "cannot connect to PostgreSQL with cluster.conninfo {redacted:?}: {e}"
        ))
    };
    // Unix sockets never negotiate TLS.
    let (client, connection) = if parsed.tls.mode == SslMode::Disable {
        let (c, conn) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(failed)?;
        (c, futures::future::Either::Left(conn))
    } else {
        let (c, conn) = config
            .connect(crate::pg::tls::connector(&parsed.tls)?)
            .await
            .map_err(failed)?;
        (c, futures::future::Either::Right(conn))
    };
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!("PostgreSQL connection ended: {e}");
        }
    });
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_value_stays_one_value() {
        let evil = "host=/var/run/postgresql dbname=postgres ' \\ port=5432";
        let c = keyword_values(&[
            ("host", "/tmp/drill socket"),
            ("port", "6543"),
            ("dbname", evil),
        ]);
        let pairs = split(&c).unwrap();
        assert_eq!(
            pairs,
            vec![
                ("host".to_string(), "/tmp/drill socket".to_string()),
                ("port".to_string(), "6543".to_string()),
                ("dbname".to_string(), evil.to_string()),
            ],
            "{c}"
        );
    }

    #[test]
    fn a_password_in_conninfo_never_reaches_a_message() {
        let r = redact("host=db user=bk password=s3cr3t dbname=postgres");
        assert!(!r.contains("s3cr3t"), "{r}");
        assert!(
            r.contains("password=********") && r.contains("host=db"),
            "{r}"
        );
        let r = redact("host=db password='with space' user=x");
        assert!(!r.contains("with space"), "{r}");
        let r = redact("postgresql://bk:s3cr3t@db:5432/postgres?password=other&sslmode=require");
        assert!(!r.contains("s3cr3t") && !r.contains("other"), "{r}");
        assert!(r.contains("sslmode=require"), "{r}");
        assert!(!redact("host='unterminated password=x").contains("password=x"));
        assert!(has_password("password=x host=y"));
        assert!(!has_password("host=y user=z"));
        assert!(
            !has_password("host = y  user='z'"),
            "spacing and quoting are not a password"
        );
        assert!(has_password("postgresql://u:pw@h/db"));
        assert!(!has_password("postgresql://u@h/db"));
    }

    #[test]
    fn verify_full_and_sslrootcert_are_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, b"").unwrap();
        let c = parse(&format!(
            "host=db.example user=bk dbname=postgres sslmode=verify-full sslrootcert={}",
            ca.display()
        ))
        .unwrap();
        assert_eq!(c.tls.mode, SslMode::VerifyFull);
        assert_eq!(c.tls.root_cert.as_deref(), Some(ca.as_path()));
        let c = parse(&format!(
            "host=db user=bk sslmode=verify-ca sslrootcert='{}'",
            ca.display()
        ))
        .unwrap();
        assert_eq!(c.tls.mode, SslMode::VerifyCa);
        let e = parse("host=db user=bk sslmode=bogus password=pw").unwrap_err();
        assert!(!e.to_string().contains("=pw"), "{e}");
    }

    #[test]
    fn pgpass_lines_match_as_libpq_matches_them() {
        let text = "# comment\nother:5432:*:bk:wrong\n*:5432:postgres:bk:pa\\:ss\nlocalhost:*:*:*:fallback\n";
        assert_eq!(
            lookup_password(text, ["db", "5432", "postgres", "bk"]).as_deref(),
            Some("pa:ss")
        );
        assert_eq!(
            lookup_password(text, ["localhost", "5433", "x", "y"]).as_deref(),
            Some("fallback")
        );
        assert_eq!(lookup_password(text, ["db", "5433", "x", "y"]), None);
    }

    #[test]
    fn a_password_file_readable_by_others_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let pf = dir.path().join("pgpass");
        std::fs::write(&pf, "*:*:*:*:pw\n").unwrap();
        std::fs::set_permissions(&pf, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = parse(&format!("host=db user=bk passfile={}", pf.display())).unwrap();
        if std::env::var_os("PGPASSWORD").is_none() {
            assert_eq!(c.config.get_password(), None);
        }
        std::fs::set_permissions(&pf, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = parse(&format!("host=db user=bk passfile={}", pf.display())).unwrap();
        if std::env::var_os("PGPASSWORD").is_none() {
            assert_eq!(c.config.get_password(), Some(&b"pw"[..]));
        }
    }
}
