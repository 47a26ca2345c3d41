//! TLS trust for registries: the system CA bundle (or `SSL_CERT_FILE`),
//! the registry's `ca_file`, and `/etc/containers/certs.d/HOST/*.crt` or
//! `/etc/docker/certs.d/HOST/*.crt` as podman and docker read them.
//!
//! One addition to ordinary WebPKI checking: a certificate the user trusted
//! explicitly (from `ca_file`, `SSL_CERT_FILE` or certs.d) and that the
//! server presents as its own is accepted even when it is a self-signed CA
//! certificate, which WebPKI refuses ("CA used as end entity") but which is
//! how most lab registries are set up (`openssl req -x509`). That is exact
//! pinning: the bytes must be equal, and the handshake signature is still
//! checked, so only the holder of that certificate's key gets through.
//!
//! `tls_verify = false` accepts any certificate (signatures still checked);
//! it exists for lab registries only and is never the default.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::RegistryError;

/// Builds the rustls config for one registry.
pub fn client_config(
    registry: &str,
    bundle: Option<&Path>,
    ca_file: Option<&Path>,
    verify: bool,
) -> Result<Arc<ClientConfig>, RegistryError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    let mut pinned: Vec<CertificateDer<'static>> = Vec::new();
    if let Some(b) = bundle {
        let certs = load(b, true)?;
        // SSL_CERT_FILE may be a lab registry's own certificate: pinnable.
        if std::env::var_os("SSL_CERT_FILE").is_some_and(|f| Path::new(&f) == b) {
            pinned.extend(certs.iter().cloned());
        }
        roots.add_parsable_certificates(certs);
    }
    let mut explicit: Vec<PathBuf> = ca_file.map(Path::to_path_buf).into_iter().collect();
    for dir in ["/etc/containers/certs.d", "/etc/docker/certs.d"] {
        if let Ok(entries) = std::fs::read_dir(Path::new(dir).join(registry)) {
            explicit.extend(
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "crt")),
            );
        }
    }
    for (i, path) in explicit.iter().enumerate() {
        let certs = load(path, i == 0 && ca_file.is_some())?;
        pinned.extend(certs.iter().cloned());
        roots.add_parsable_certificates(certs);
    }
    let webpki = if roots.is_empty() {
        None
    } else {
        Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| RegistryError::CaFile {
                    path: bundle.unwrap_or(Path::new("-")).into(),
                    detail: e.to_string(),
                })?,
        )
    };
    let verifier = Verifier {
        webpki,
        pinned,
        verify,
        algorithms: provider.signature_verification_algorithms,
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Reads PEM certificates. A missing optional file is no error; a required
/// file must hold at least one certificate.
fn load(path: &Path, required: bool) -> Result<Vec<CertificateDer<'static>>, RegistryError> {
    let bad = |detail: String| RegistryError::CaFile {
        path: path.to_path_buf(),
        detail,
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if !required && e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(bad(e.to_string())),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("{e:?}")))?;
    if required && certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(certs)
}

#[derive(Debug)]
struct Verifier {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    pinned: Vec<CertificateDer<'static>>,
    verify: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !self.verify
            || self
                .pinned
                .iter()
                .any(|p| p.as_ref() == end_entity.as_ref())
        {
            return Ok(ServerCertVerified::assertion());
        }
        match &self.webpki {
            Some(w) => w.verify_server_cert(end_entity, intermediates, server_name, ocsp, now),
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
