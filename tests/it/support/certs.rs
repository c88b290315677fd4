//! `Ca`: a throwaway certificate authority made with rcgen, for tests that run tokend's gRPC
//! port with TLS and present client certificates to it.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// A CA that signs server and client certificates.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    /// A new self-signed CA with this common name.
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        Ca { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA") }
    }

    /// (certificate PEM, key PEM) for these subject alternative names (an IP address string
    /// becomes an IP address name).
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let names = names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let cert = CertificateParams::new(names).expect("params").signed_by(&key, &self.issuer).expect("signed");
        (cert.pem(), key.serialize_pem())
    }

    /// The CA's own certificate (PEM).
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes the CA's certificate to `dir/file`; returns its path.
    pub fn write_pem(&self, dir: &Path, file: &str) -> PathBuf {
        let path = dir.join(file);
        std::fs::write(&path, self.pem()).expect("write CA");
        path
    }

    /// Issues a certificate for `names` and writes it to `dir/<stem>.pem` and its key to
    /// `dir/<stem>.key`; returns both paths.
    pub fn write_issued(&self, dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let (cert, key) = self.issue(names);
        let (cert_path, key_path) = (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}.key")));
        std::fs::write(&cert_path, cert).expect("write certificate");
        std::fs::write(&key_path, key).expect("write key");
        (cert_path, key_path)
    }
}
