//! The CONNECT front's sockets. A Unix socket (kube-apiserver's `uds` transport) is bound in a
//! private 0700 directory, given mode 0660 there and renamed into place, so it is never
//! reachable with looser permissions; a stale socket left by a dead daemon is replaced, a live one is not. A
//! TCP listener always speaks TLS and requires a client certificate signed by `--client-ca`
//! (kube-apiserver's `tcp` transport dials with mTLS).

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::UnixListener;
use tokio_rustls::TlsAcceptor;

use crate::error::ConfigError;

/// Binds the CONNECT socket at `path` (mode 0660, parent directories created).
pub fn bind_uds(path: &Path) -> Result<UnixListener, ConfigError> {
    bind_uds_mode(path, 0o660, "proxy socket")
}

/// Binds a Unix socket at `path` with `mode`; `what` names it in errors. A stale socket is
/// replaced; a live one or a non-socket file is not.
pub fn bind_uds_mode(
    path: &Path,
    mode: u32,
    what: &'static str,
) -> Result<UnixListener, ConfigError> {
    let err = |reason: String| ConfigError::File {
        what,
        path: path.to_path_buf(),
        reason,
    };
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .map_err(|e| err(format!("cannot create its directory: {e}")))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(err(
                    "another process is serving on it; stop that one or choose another path".into(),
                ));
            }
            std::fs::remove_file(path)
                .map_err(|e| err(format!("cannot remove the stale socket: {e}")))?;
        }
        Ok(_) => {
            return Err(err(
                "it exists and is not a socket; refusing to replace it".into()
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e.to_string())),
    }
    // Bind inside a fresh private directory (0700) next to the target, set the mode there,
    // then rename into place: the socket never exists, reachable, with a wider mode than
    // `mode` (a bind follows the umask), and no name we bind can be planted beforehand.
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let private = tempfile::Builder::new()
        .prefix(".kube-ssh-tunnel-bind.")
        .tempdir_in(dir)
        .map_err(|e| err(format!("cannot create a private directory next to it: {e}")))?;
    let tmp = private.path().join("sock");
    let listener = UnixListener::bind(&tmp).map_err(|e| err(e.to_string()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| err(e.to_string()))?;
    drop(private);
    Ok(listener)
}

/// A TLS acceptor that presents `cert`/`key` and requires client certificates from `client_ca`.
pub fn mtls_acceptor(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<TlsAcceptor, ConfigError> {
    let file_err = |what: &'static str, path: &Path, reason: String| ConfigError::File {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| file_err("TLS certificate", cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_err(
            "TLS certificate",
            cert,
            "no PEM certificate in it".into(),
        ));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| file_err("TLS key", key, e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(client_ca)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| file_err("client CA", client_ca, e.to_string()))?;
    if cas.is_empty() {
        return Err(file_err(
            "client CA",
            client_ca,
            "no PEM certificate in it".into(),
        ));
    }
    for c in cas {
        roots
            .add(c)
            .map_err(|e| file_err("client CA", client_ca, e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| file_err("client CA", client_ca, e.to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Invalid(format!("TLS set-up failed: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            file_err(
                "TLS key",
                key,
                format!("does not match the certificate or is unusable: {e}"),
            )
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn a_socket_is_never_seen_in_its_directory_with_another_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.sock");
        let stop = Arc::new(AtomicBool::new(false));
        let seen_wrong = Arc::new(std::sync::Mutex::new(Vec::new()));
        let watcher = {
            let (d, stop, seen) = (dir.path().to_path_buf(), stop.clone(), seen_wrong.clone());
            std::thread::spawn(move || {
                let mut looks = 0u64;
                while !stop.load(Ordering::Acquire) && looks < 5_000_000 {
                    looks += 1;
                    let Ok(entries) = std::fs::read_dir(&d) else {
                        continue;
                    };
                    for e in entries.flatten() {
                        if let Ok(m) = std::fs::symlink_metadata(e.path())
                            && m.file_type().is_socket()
                            && m.permissions().mode() & 0o777 != 0o660
                        {
                            seen.lock().unwrap().push(format!(
                                "{:?} {:o}",
                                e.path(),
                                m.permissions().mode()
                            ));
                        }
                    }
                }
            })
        };
        for _ in 0..300 {
            let l = bind_uds(&path).unwrap();
            drop(l);
            std::fs::remove_file(&path).unwrap();
        }
        stop.store(true, Ordering::Release);
        watcher.join().unwrap();
        let seen = seen_wrong.lock().unwrap();
        assert!(
            seen.is_empty(),
            "sockets seen with another mode: {:?}",
            &seen[..seen.len().min(5)]
        );
        // Nothing but the target is ever left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
