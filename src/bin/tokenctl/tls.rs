//! TLS towards tokend: which CA vouches for the daemon's certificate (`--ca-file`, else the
//! system roots) and which client certificate, if any, identifies us.

use std::path::Path;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::cli::*;
use crate::failure::*;

/// Whether `addr` asks for TLS (`https://`, in any case).
pub(crate) fn is_https(addr: &str) -> bool {
    addr.get(..8).is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}

/// The client TLS settings for `--addr`, or `None` for a plain-text address.
///
/// An `https://` address trusts `--ca-file` alone when given (a private CA: a public one cannot
/// then vouch for tokend's name), else the system roots. The TLS flags on a plain-text address
/// are refused (exit 2) rather than ignored, so nobody believes a plain connection is verified.
/// An unreadable or empty CA file exits 2; an unreadable client certificate or key exits 4, as
/// an unreadable bearer token file does. Messages name the file, never its contents.
pub(crate) fn client_tls(cli: &Cli) -> Outcome<Option<ClientTlsConfig>> {
    if !is_https(&cli.addr) {
        let flag = match (&cli.ca_file, &cli.cert_file) {
            (Some(_), _) => "--ca-file (TOKENCTL_CA_FILE)",
            (None, Some(_)) => "--cert-file (TOKENCTL_CERT_FILE)",
            (None, None) => return Ok(None),
        };
        let what = format!("{flag} needs an https:// address, not {:?}", cli.addr);
        return Err(Failure::new(2, what, Some("address tokend's TLS port with --addr https://host:port".to_owned())));
    }
    let mut tls = ClientTlsConfig::new();
    tls = match &cli.ca_file {
        Some(path) => tls.ca_certificate(read_ca(path)?),
        None => tls.with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (&cli.cert_file, &cli.key_file) {
        tls = tls.identity(read_identity(cert, key)?);
    }
    Ok(Some(tls))
}

/// Reads the CA certificates from `path`; at least one must be there.
fn read_ca(path: &Path) -> Outcome<Certificate> {
    let pem =
        std::fs::read(path).map_err(|e| Failure::new(2, format!("reading --ca-file {}: {e}", path.display()), None))?;
    let certs = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>();
    match certs {
        Ok(certs) if !certs.is_empty() => Ok(Certificate::from_pem(pem)),
        Ok(_) => Err(Failure::new(2, format!("--ca-file {}: no PEM certificate in the file", path.display()), None)),
        Err(e) => Err(Failure::new(2, format!("--ca-file {}: {e}", path.display()), None)),
    }
}

/// Reads the client certificate chain and its private key. The key's bytes go to tonic only;
/// a parse error names the file and the PEM problem, not the key.
fn read_identity(cert: &Path, key: &Path) -> Outcome<Identity> {
    let read = |flag: &str, path: &Path| {
        std::fs::read(path).map_err(|e| Failure::new(4, format!("reading {flag} {}: {e}", path.display()), None))
    };
    let (cert_pem, key_pem) = (read("--cert-file", cert)?, read("--key-file", key)?);
    match CertificateDer::pem_slice_iter(&cert_pem).collect::<Result<Vec<_>, _>>() {
        Ok(certs) if !certs.is_empty() => {}
        Ok(_) => return Err(Failure::new(4, format!("--cert-file {}: no PEM certificate", cert.display()), None)),
        Err(e) => return Err(Failure::new(4, format!("--cert-file {}: {e}", cert.display()), None)),
    }
    if let Err(e) = PrivateKeyDer::from_pem_slice(&key_pem) {
        return Err(Failure::new(4, format!("--key-file {}: no usable private key: {e}", key.display()), None));
    }
    Ok(Identity::from_pem(cert_pem, key_pem))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn cli(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from([&["tokenctl"], args, &["list"]].concat())
    }

    /// Only `https://` asks for TLS; the scheme's case does not matter.
    #[test]
    fn https_is_the_tls_scheme() {
        assert!(is_https("https://tokend.example:50051"));
        assert!(is_https("HTTPS://tokend.example"));
        assert!(!is_https("http://127.0.0.1:50051"));
        assert!(!is_https("unix:/run/tokend/tokend.sock"));
        assert!(!is_https("https:"));
    }

    /// A certificate needs its key and a key its certificate (exit 2 from clap).
    #[test]
    fn cert_and_key_go_together() {
        assert!(cli(&["--cert-file", "c.pem"]).is_err());
        assert!(cli(&["--key-file", "c.key"]).is_err());
        assert!(cli(&["--cert-file", "c.pem", "--key-file", "c.key"]).is_ok());
    }

    /// TLS flags on a plain-text address are refused, not silently ignored; nothing asks for
    /// TLS on a plain-text address without them.
    #[test]
    fn tls_flags_need_https() {
        let plain = cli(&["--addr", "http://127.0.0.1:1", "--ca-file", "ca.pem"]).unwrap();
        assert_eq!(client_tls(&plain).err().map(|f| f.code), Some(2));
        let unix = cli(&["--addr", "unix:/tmp/t.sock", "--cert-file", "c", "--key-file", "k"]).unwrap();
        assert_eq!(client_tls(&unix).err().map(|f| f.code), Some(2));
        assert!(client_tls(&cli(&["--addr", "http://127.0.0.1:1"]).unwrap()).unwrap().is_none());
    }

    /// A missing or empty CA file is a usage error naming the file; a key file that holds no
    /// key is refused without quoting what it holds.
    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let failure = read_ca(&missing).err().unwrap();
        assert_eq!(failure.code, 2);
        assert!(failure.line.contains("missing.pem"), "{}", failure.line);
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert_eq!(read_ca(&empty).err().map(|f| f.code), Some(2));
        let not_a_key = dir.path().join("not-a-key.pem");
        std::fs::write(&not_a_key, "s3cret-looking text").unwrap();
        let failure = read_identity(&not_a_key, &not_a_key).err().unwrap();
        assert_eq!(failure.code, 4);
        assert!(!failure.line.contains("s3cret"), "{}", failure.line);
    }
}
