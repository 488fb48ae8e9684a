//! A throwaway certificate authority for the demo's mutual-TLS CONNECT listener (and the
//! tests): a CA, a serving certificate for the listener and a client certificate standing in
//! for kube-apiserver's. Production deployments bring their own PKI.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A CA that issues serving and client certificates.
pub struct Ca {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    /// The CA certificate, PEM.
    pub cert_pem: String,
}

fn other(e: rcgen::Error) -> io::Error {
    io::Error::other(format!("cannot make a certificate: {e}"))
}

impl Ca {
    /// A new self-signed CA called `name`.
    pub fn new(name: &str) -> io::Result<Ca> {
        let key = rcgen::KeyPair::generate().map_err(other)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(other)?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).map_err(other)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            params,
            key,
        })
    }

    /// Issues a certificate for `sans` (IPs or DNS names), for a client or a server; writes
    /// NAME.crt and NAME.key (0600) into `dir` and returns their paths.
    pub fn issue(
        &self,
        dir: &Path,
        name: &str,
        sans: &[String],
        client: bool,
    ) -> io::Result<(PathBuf, PathBuf)> {
        let key = rcgen::KeyPair::generate().map_err(other)?;
        let mut params = rcgen::CertificateParams::new(sans.to_vec()).map_err(other)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).map_err(other)?;
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem())?;
        std::fs::write(&k, key.serialize_pem())?;
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600))?;
        Ok((c, k))
    }

    /// Writes the CA certificate to `path`.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, &self.cert_pem)
    }
}
