//! TLS for the PostgreSQL connection of backups, checks and restore points.
//!
//! `sslmode` and `sslrootcert` in `cluster.conninfo` decide, as libpq does (parsed in
//! [`crate::pg::conninfo`]): `disable` connects in clear; `prefer` (the default) uses TLS when
//! the server offers it; `require` refuses a server without TLS, and like libpq checks the
//! certificate chain only when a root certificate is given (`sslrootcert`, `PGSSLROOTCERT`);
//! `verify-ca` checks the chain; `verify-full` the chain and the host name.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::error::{Error, Result};
use crate::pg::conninfo::{SslMode, TlsPolicy};

/// Accepts any server certificate but still checks handshake signatures (libpq `require`).
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Checks the chain against the roots but accepts any host name (libpq `verify-ca`).
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

fn load_roots(path: &std::path::Path) -> Result<rustls::RootCertStore> {
    let what = format!("sslrootcert {}", path.display());
    let pem = std::fs::read(path).map_err(|e| Error::Config(format!("{what}: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        let cert: CertificateDer<'static> =
            cert.map_err(|e| Error::Config(format!("{what}: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| Error::Config(format!("{what}: {e}")))?;
    }
    if roots.is_empty() {
        return Err(Error::Config(format!("{what}: no certificate in it")));
    }
    Ok(roots)
}

/// The TLS connector for `tokio-postgres`, per `sslmode` and `sslrootcert` (see
/// [`crate::pg::conninfo`]): `verify-full` checks chain and host name, `verify-ca` the chain,
/// `require`/`prefer` with a root certificate the chain (as libpq does), without one nothing.
pub fn connector(policy: &TlsPolicy) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(
        client_config(policy)?,
    ))
}

/// The rustls client configuration [`connector`] uses, for code that runs TLS itself (the
/// replication connection, which needs the server certificate for SCRAM channel binding).
pub fn client_config(policy: &TlsPolicy) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS setup: {e}")))?;
    let config = match (&policy.root_cert, policy.mode) {
        (Some(path), SslMode::VerifyFull) => builder
            .with_root_certificates(load_roots(path)?)
            .with_no_client_auth(),
        (Some(path), _) => {
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(load_roots(path)?),
                provider,
            )
            .build()
            .map_err(|e| Error::Config(format!("TLS setup: {e}")))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(verifier)))
                .with_no_client_auth()
        }
        (None, SslMode::VerifyCa | SslMode::VerifyFull) => {
            return Err(Error::Config(
                "sslmode=verify-ca/verify-full needs sslrootcert (or PGSSLROOTCERT)".into(),
            ))
        }
        (None, _) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// The `tls-server-end-point` channel binding of a server certificate (RFC 5929 section 4.1):
/// its DER hashed with the hash of its signature algorithm, SHA-256 for MD5 and SHA-1. `None`
/// for a signature algorithm without a hash of its own (Ed25519) or a certificate that does
/// not parse: such a server cannot be bound to.
pub fn server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    use x509_cert::der::oid::db::rfc5912::{
        ECDSA_WITH_SHA_256, ECDSA_WITH_SHA_384, ECDSA_WITH_SHA_512, ID_SHA_1, ID_SHA_256,
        ID_SHA_384, ID_SHA_512, SHA_1_WITH_RSA_ENCRYPTION, SHA_256_WITH_RSA_ENCRYPTION,
        SHA_384_WITH_RSA_ENCRYPTION, SHA_512_WITH_RSA_ENCRYPTION,
    };
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(cert_der).ok()?;
    match cert.signature_algorithm.oid {
        ID_SHA_1
        | ID_SHA_256
        | SHA_1_WITH_RSA_ENCRYPTION
        | SHA_256_WITH_RSA_ENCRYPTION
        | ECDSA_WITH_SHA_256 => Some(sha2::Sha256::digest(cert_der).to_vec()),
        ID_SHA_384 | SHA_384_WITH_RSA_ENCRYPTION | ECDSA_WITH_SHA_384 => {
            Some(sha2::Sha384::digest(cert_der).to_vec())
        }
        ID_SHA_512 | SHA_512_WITH_RSA_ENCRYPTION | ECDSA_WITH_SHA_512 => {
            Some(sha2::Sha512::digest(cert_der).to_vec())
        }
        _ => None,
    }
}
