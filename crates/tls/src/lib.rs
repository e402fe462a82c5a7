//! Certificates of the mesh: a CA per mesh, one certificate per node whose subject names the
//! node, and the rustls configurations for mutual TLS on QUIC links.
//!
//! The dialling side knows an address, not a name, so it checks the server's chain against the
//! mesh CA but not the name; both sides then check, after the Hello, that the peer's
//! certificate is valid for the name it claims ([`cert_names`]). A certificate from another CA,
//! or none, fails the TLS handshake itself.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use thiserror::Error;

/// ALPN protocol of mesh links.
pub const ALPN: &[u8] = b"meshgate/1";

/// Problems with certificate files.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A file exists already and would be overwritten.
    #[error("{0} exists already; remove it first to replace it")]
    Exists(PathBuf),
    /// A file does not hold what it should.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why it is not usable.
        reason: String,
    },
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_new(path: &Path, contents: &str, private: bool) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    if private {
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            TlsError::Exists(path.to_path_buf())
        } else {
            io(path)(e)
        }
    })?;
    f.write_all(contents.as_bytes()).map_err(io(path))
}

fn read(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(io(path))
}

/// Creates `ca.pem` and `ca.key` in `dir` (created if missing). Refuses to overwrite.
pub fn init_ca(dir: &Path) -> Result<PathBuf, TlsError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    let cert_path = dir.join("ca.pem");
    let key_path = dir.join("ca.key");
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(TlsError::Exists(p.clone()));
        }
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "meshgate mesh CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let cert = params.self_signed(&key)?;
    write_new(&key_path, &key.serialize_pem(), true)?;
    write_new(&cert_path, &cert.pem(), false)?;
    Ok(cert_path)
}

/// Creates `<name>.pem` and `<name>.key` in `dir`, signed by the CA there. The certificate's
/// common name and DNS subject-alternative name are the node name. Refuses to overwrite.
pub fn issue(dir: &Path, name: &str) -> Result<PathBuf, TlsError> {
    check_name(name).map_err(|reason| TlsError::Invalid {
        path: dir.join(format!("{name}.pem")),
        reason,
    })?;
    let ca_key_path = dir.join("ca.key");
    let ca_cert_path = dir.join("ca.pem");
    let ca_key = KeyPair::from_pem(&read(&ca_key_path)?).map_err(|e| TlsError::Invalid {
        path: ca_key_path.clone(),
        reason: e.to_string(),
    })?;
    let issuer =
        Issuer::from_ca_cert_pem(&read(&ca_cert_path)?, ca_key).map_err(|e| TlsError::Invalid {
            path: ca_cert_path.clone(),
            reason: e.to_string(),
        })?;
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(TlsError::Exists(p.clone()));
        }
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.subject_alt_names = vec![SanType::DnsName(name.try_into()?)];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Every node is both a TLS server (accepting links) and a client (dialling them).
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let cert = params.signed_by(&key, &issuer)?;
    write_new(&key_path, &key.serialize_pem(), true)?;
    write_new(&cert_path, &cert.pem(), false)?;
    Ok(cert_path)
}

/// Node names double as DNS names in certificates.
pub fn check_name(name: &str) -> Result<(), String> {
    if ServerName::try_from(name).is_err() || name.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "{name:?} cannot name a node certificate: use letters, digits, '-' and '.'"
        ));
    }
    Ok(())
}

/// True if `cert` is valid for node `name` (its subject-alternative names include it).
pub fn cert_names(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(sn) = ServerName::try_from(name) else {
        return false;
    };
    ee.verify_is_valid_for_subject_name(&sn).is_ok()
}

/// The loaded TLS material of a node.
#[derive(Clone)]
pub struct MeshTls {
    /// Accepting side: client certificates required, signed by the mesh CA.
    pub server: Arc<rustls::ServerConfig>,
    /// Dialling side: presents the node certificate, checks the server's chain.
    pub client: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeshTls")
    }
}

/// Loads `ca.pem`, `<name>.pem` and `<name>.key` from `dir`.
pub fn load(dir: &Path, name: &str) -> Result<MeshTls, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca_path = dir.join("ca.pem");
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));
    let invalid = |path: &Path, reason: String| TlsError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let ca: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(read(&ca_path)?.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| invalid(&ca_path, e.to_string()))?;
    if ca.is_empty() {
        return Err(invalid(&ca_path, "no certificate in the file".into()));
    }
    let mut roots = RootCertStore::empty();
    for c in ca {
        roots.add(c).map_err(|e| invalid(&ca_path, e.to_string()))?;
    }
    let roots = Arc::new(roots);
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(read(&cert_path)?.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| invalid(&cert_path, e.to_string()))?;
    let Some(first) = chain.first() else {
        return Err(invalid(&cert_path, "no certificate in the file".into()));
    };
    if !cert_names(first, name) {
        return Err(invalid(
            &cert_path,
            format!("the certificate does not name node {name:?}"),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(read(&key_path)?.as_bytes())
        .map_err(|e| invalid(&key_path, e.to_string()))?;

    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| invalid(&ca_path, e.to_string()))?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    server.max_early_data_size = 0;

    let inner =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| invalid(&ca_path, e.to_string()))?;
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
        .with_client_auth_cert(chain, key)?;
    client.alpn_protocols = vec![ALPN.to_vec()];
    Ok(MeshTls {
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

/// The app id a client certificate names: its first DNS subject-alternative name, as
/// `meshgate cert issue --name APP_ID` writes it.
pub fn certificate_app(der: &[u8]) -> Option<String> {
    let cert = CertificateDer::from(der);
    let ee = webpki::EndEntityCert::try_from(&cert).ok()?;
    ee.valid_dns_names().next().map(str::to_string)
}

/// TLS towards clients (MQTT over TLS): the node presents `cert` (PEM chain) with `key`; with
/// `client_ca`, every client must present a certificate signed by it (its name is then the
/// client's app id, see [`certificate_app`]). TLS 1.2 and 1.3.
pub fn client_facing(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let invalid = |path: &Path, reason: String| TlsError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(read(cert)?.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| invalid(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(invalid(cert, "no certificate in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_slice(read(key)?.as_bytes())
        .map_err(|e| invalid(key, e.to_string()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let config = match client_ca {
        Some(ca_path) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(read(ca_path)?.as_bytes()) {
                let c = c.map_err(|e| invalid(ca_path, e.to_string()))?;
                roots.add(c).map_err(|e| invalid(ca_path, e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(invalid(ca_path, "no certificate in the file".into()));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| invalid(ca_path, e.to_string()))?;
            builder
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key_der)?
        }
        None => builder
            .with_no_client_auth()
            .with_single_cert(chain, key_der)?,
    };
    Ok(Arc::new(config))
}

/// Checks the server's chain against the mesh CA, but not its name: the dialler knows only an
/// address. The name is checked against the peer's Hello once the link is up.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // rustls checks the chain first and the name last, so a name error means the chain is
        // good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Ok(v) => Ok(v),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_load_and_name_checks() {
        let d = tempfile::tempdir().unwrap();
        init_ca(d.path()).unwrap();
        assert!(matches!(init_ca(d.path()), Err(TlsError::Exists(_))));
        issue(d.path(), "edge-a").unwrap();
        assert!(matches!(
            issue(d.path(), "edge-a"),
            Err(TlsError::Exists(_))
        ));
        assert!(issue(d.path(), "bad name").is_err());
        load(d.path(), "edge-a").unwrap();
        let pem = fs::read_to_string(d.path().join("edge-a.pem")).unwrap();
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert!(cert_names(&der, "edge-a"));
        assert!(!cert_names(&der, "edge-b"));
        // A certificate for one name loaded as another is refused.
        fs::copy(d.path().join("edge-a.pem"), d.path().join("x.pem")).unwrap();
        fs::copy(d.path().join("edge-a.key"), d.path().join("x.key")).unwrap();
        let e = load(d.path(), "x").unwrap_err().to_string();
        assert!(e.contains("does not name node"), "{e}");
    }
}
