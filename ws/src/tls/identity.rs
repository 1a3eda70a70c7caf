//! Certificates and keys, from PEM files to the rustls configuration new handshakes use.
//!
//! Loading is the only fallible part of TLS that an operator meets, so every failure names the
//! file and what is wrong with it: unreadable, no certificate in it, no private key in it, a key
//! that does not belong to the certificate, a certificate that does not name the SNI host it is
//! given for. A reload (SIGHUP in hioload-echo) builds a whole new [`TlsAcceptor`] first and
//! swaps it in only if every file loaded: a bad file leaves the running one in force.
//!
//! One choice is made here for every listener: rustls with the *ring* crypto provider (builds
//! with a C compiler alone, no cmake or Go; the smaller of rustls's two providers to build),
//! TLS 1.3 and 1.2 with rustls's default cipher suites, ALPN `http/1.1` (the only protocol a
//! WebSocket upgrade runs on), no session resumption (no session cache shared by the workers,
//! so no lock between them; each handshake is a full one), no early data.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// A certificate chain and its private key, as PEM file paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    /// The certificate chain, end-entity certificate first (PEM, one or more `CERTIFICATE`).
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: PathBuf,
}

/// What a TLS listener serves: a default certificate, and optionally one per SNI host name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Served when the client names no host, or one that `sni` does not list.
    pub default: CertFiles,
    /// Certificates by the host name a client asks for (SNI), each checked to name its host.
    pub sni: Vec<(String, CertFiles)>,
}

impl TlsFiles {
    /// One certificate for every client.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        TlsFiles {
            default: CertFiles {
                cert: cert.into(),
                key: key.into(),
            },
            sni: Vec::new(),
        }
    }
}

/// Why certificates could not be loaded; the message names the file and the fix.
#[derive(Debug)]
pub struct TlsError(String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// The rustls configuration new TLS connections start from (shared by every shard; a reload
/// swaps the whole of it). Compared by identity: two acceptors are equal if they are the same
/// loaded configuration.
#[derive(Clone)]
pub struct TlsAcceptor {
    config: Arc<ServerConfig>,
}

impl fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsAcceptor").finish_non_exhaustive()
    }
}

impl PartialEq for TlsAcceptor {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.config, &other.config)
    }
}

impl Eq for TlsAcceptor {}

impl TlsAcceptor {
    /// Loads every certificate and key `files` names and builds the configuration.
    pub fn load(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
        // rustls marks ring's provider deprecated because it lacks post-quantum key exchange
        // (X25519MLKEM768, aws-lc-rs only); classical X25519/P-256 is what we offer.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let default = Arc::new(load_pair(&files.default, &provider)?);
        let mut by_name = HashMap::new();
        for (name, pair) in &files.sni {
            let key = load_pair(pair, &provider)?;
            let mut check = rustls::server::ResolvesServerCertUsingSni::new();
            check.add(name, key.clone()).map_err(|e| {
                TlsError(format!(
                    "TLS certificate {} cannot serve SNI host {name:?}: {e}",
                    pair.cert.display()
                ))
            })?;
            by_name.insert(name.to_ascii_lowercase(), Arc::new(key));
        }
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(format!("TLS configuration: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SniResolver { default, by_name }));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        config.max_early_data_size = 0;
        Ok(TlsAcceptor {
            config: Arc::new(config),
        })
    }

    /// The rustls configuration.
    pub fn config(&self) -> &Arc<ServerConfig> {
        &self.config
    }
}

/// The certificate for a client: by the host name it asked for, else the default one.
#[derive(Debug)]
struct SniResolver {
    default: Arc<CertifiedKey>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let named = hello.server_name().and_then(|name| {
            // Host names are case-insensitive; look up without allocating for the usual
            // lower-case name.
            if name.bytes().any(|b| b.is_ascii_uppercase()) {
                self.by_name.get(&name.to_ascii_lowercase())
            } else {
                self.by_name.get(name)
            }
        });
        Some(named.unwrap_or(&self.default).clone())
    }
}

/// Loads one chain and its key, and checks that they belong together.
fn load_pair(files: &CertFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = load_chain(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        TlsError(format!(
            "TLS key {}: {}",
            files.key.display(),
            pem_problem(&e, "no private key (PKCS#8, RSA or EC) in it")
        ))
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        TlsError(format!(
            "TLS key {} does not fit certificate {}: {e}",
            files.key.display(),
            files.cert.display()
        ))
    })
}

fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let fail = |e: &rustls::pki_types::pem::Error| {
        TlsError(format!(
            "TLS certificate {}: {}",
            path.display(),
            pem_problem(e, "no certificate in it")
        ))
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(&e))?;
    if chain.is_empty() {
        return Err(fail(&rustls::pki_types::pem::Error::NoItemsFound));
    }
    Ok(chain)
}

fn pem_problem(e: &rustls::pki_types::pem::Error, none: &str) -> String {
    match e {
        rustls::pki_types::pem::Error::NoItemsFound => none.to_string(),
        rustls::pki_types::pem::Error::Io(io) => format!("cannot read it: {io}"),
        other => format!("not valid PEM: {other:?}"),
    }
}
