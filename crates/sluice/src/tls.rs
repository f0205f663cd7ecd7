//! TLS for the listeners, with rustls on the `ring` provider: the certificate chain and
//! private key come from PEM files (`tls.cert_file`, `tls.key_file`) and are read again
//! when either file changes, checked at most once a second at a handshake, so renewing a
//! certificate needs no restart. A renewal that does not load (a half-written file, a key
//! that does not match) is logged and the previous certificate stays in use.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::ServerConfig;
use rustls::crypto::ring::sign::any_supported_type;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// How often a handshake may look at the files' modification times.
const CHECK_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// Modification times of the certificate and key files when they were read.
    stamps: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

/// The listeners' certificate, reloaded when its files change.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    loaded: Mutex<Loaded>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| format!("{}: {e}", cert_file.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert_file.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate", cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("{}: {e}", key_file.display()))?;
    let signing = any_supported_type(&key).map_err(|e| format!("{}: {e}", key_file.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        format!(
            "{} does not match {}: {e}",
            key_file.display(),
            cert_file.display()
        )
    })?;
    Ok(certified)
}

impl ReloadingCert {
    /// Reads the files now; an error if they do not make a certificate and its key.
    pub fn open(cert_file: &Path, key_file: &Path) -> Result<ReloadingCert, String> {
        let key = load(cert_file, key_file)?;
        Ok(ReloadingCert {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            loaded: Mutex::new(Loaded {
                key: Arc::new(key),
                stamps: (modified(cert_file), modified(key_file)),
                checked: Instant::now(),
            }),
        })
    }

    /// The certificate to present, read again first if its files changed.
    fn current(&self) -> Arc<CertifiedKey> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if loaded.checked.elapsed() >= CHECK_EVERY {
            loaded.checked = Instant::now();
            let stamps = (modified(&self.cert_file), modified(&self.key_file));
            if stamps != loaded.stamps {
                match load(&self.cert_file, &self.key_file) {
                    Ok(key) => {
                        tracing::info!(cert = %self.cert_file.display(), "TLS certificate reloaded");
                        loaded.key = Arc::new(key);
                        loaded.stamps = stamps;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS certificate not reloaded; the previous one stays");
                    }
                }
            }
        }
        Arc::clone(&loaded.key)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The TLS settings shared by every listener: the server certificate and, if client
/// certificates are asked for, the CAs they are checked against.
#[derive(Debug, Clone)]
pub struct Tls {
    cert: Arc<ReloadingCert>,
    clients: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    // ring builds with a plain C compiler in seconds; aws-lc-rs (rustls' default, with
    // post-quantum key exchange) needs cmake and builds slowly on 2 cores.
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Tls {
    /// Reads the certificate and key, and the client CAs if given. `required`: a client
    /// without a certificate is refused (else it may go on without one).
    pub fn open(
        cert_file: &Path,
        key_file: &Path,
        client_ca_file: Option<&Path>,
        required: bool,
    ) -> Result<Tls, String> {
        let cert = Arc::new(ReloadingCert::open(cert_file, key_file)?);
        let clients = match client_ca_file {
            None => None,
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(ca)
                    .map_err(|e| format!("{}: {e}", ca.display()))?
                {
                    let c = c.map_err(|e| format!("{}: {e}", ca.display()))?;
                    roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!("{}: no CA certificate", ca.display()));
                }
                let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                );
                let builder = if required {
                    builder
                } else {
                    builder.allow_unauthenticated()
                };
                Some(
                    builder
                        .build()
                        .map_err(|e| format!("{}: {e}", ca.display()))?,
                )
            }
        };
        Ok(Tls { cert, clients })
    }

    /// An acceptor offering `alpn` protocols (TLS 1.2 and 1.3).
    pub fn acceptor(&self, alpn: &[&[u8]]) -> Result<TlsAcceptor, String> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match &self.clients {
            Some(v) => builder.with_client_cert_verifier(Arc::clone(v)),
            None => builder.with_no_client_auth(),
        };
        let mut config =
            builder.with_cert_resolver(Arc::clone(&self.cert) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// Which name of a client certificate is the user EXTERNAL logs in as (RabbitMQ's
/// `ssl_cert_login_from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertLogin {
    /// The whole subject in RFC 4514 form, most specific first
    /// (`CN=alice,OU=dev,O=example`), RabbitMQ's default.
    DistinguishedName,
    /// The subject's common name.
    CommonName,
}

/// Short names of the usual attribute types, as RFC 4514 strings use them.
fn attribute_name(oid: &str) -> String {
    match oid {
        "2.5.4.3" => "CN",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "STREET",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        other => return other.to_string(),
    }
    .to_string()
}

/// A value escaped as RFC 4514 asks.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The user name a verified client certificate logs in as, if the client presented one.
pub fn peer_user(conn: &rustls::ServerConnection, from: CertLogin) -> Option<String> {
    let der = conn.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let subject = cert.subject();
    match from {
        CertLogin::CommonName => {
            let cn = subject.iter_common_name().next()?;
            cn.as_str().ok().map(str::to_string)
        }
        CertLogin::DistinguishedName => {
            let rdns: Vec<String> = subject
                .iter_rdn()
                .map(|rdn| {
                    rdn.iter()
                        .map(|a| {
                            let name = attribute_name(&a.attr_type().to_id_string());
                            let value = a.as_str().map(escape).unwrap_or_default();
                            format!("{name}={value}")
                        })
                        .collect::<Vec<_>>()
                        .join("+")
                })
                .collect();
            (!rdns.is_empty()).then(|| rdns.into_iter().rev().collect::<Vec<_>>().join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Writes a fresh certificate and key, stamped `age_s` seconds from now (so a change
    /// shows whatever the file system's time resolution).
    fn write_cert(dir: &Path, name: &str, age_s: u64) -> (PathBuf, PathBuf, Vec<u8>) {
        let made = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
        let when = SystemTime::now() + Duration::from_secs(age_s);
        for p in [&cert, &key] {
            std::fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(when)
                .unwrap();
        }
        (cert, key, made.cert.der().to_vec())
    }

    /// A renewed certificate is presented once its files change, without a restart; a
    /// broken renewal keeps the previous one.
    #[test]
    fn a_renewed_certificate_is_picked_up_and_a_broken_one_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, first) = write_cert(dir.path(), "first.test", 0);
        let r = ReloadingCert::open(&cert, &key).unwrap();
        assert_eq!(r.current().cert.first().unwrap().as_ref(), &first[..]);
        let (_, _, second) = write_cert(dir.path(), "second.test", 10);
        r.loaded.lock().unwrap().checked -= CHECK_EVERY;
        assert_eq!(r.current().cert.first().unwrap().as_ref(), &second[..]);
        std::fs::write(&key, b"-----BEGIN PRIVATE KEY-----\ngarbage\n").unwrap();
        let later = SystemTime::now() + Duration::from_secs(20);
        std::fs::File::options()
            .write(true)
            .open(&key)
            .unwrap()
            .set_modified(later)
            .unwrap();
        r.loaded.lock().unwrap().checked -= CHECK_EVERY;
        assert_eq!(r.current().cert.first().unwrap().as_ref(), &second[..]);
        assert!(ReloadingCert::open(&cert, &key).is_err());
    }
}
