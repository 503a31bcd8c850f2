//! TLS on the control plane: the coordinator's certificate and key, and what the workers it
//! starts trust and check.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;

#[derive(Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// Serve the control plane over TLS with this certificate chain (PEM); needs --tls-key.
    /// Workers then connect with `--tls-ca`
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// CA certificate (PEM) the workers trust: given to workers started here, and shown in
    /// the command for external ones [default: --tls-cert itself, right for a self-signed
    /// certificate]
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,

    /// Name in the certificate that locally started workers check [default: localhost]
    #[arg(long, value_name = "NAME", requires = "tls_cert")]
    pub tls_domain: Option<String>,
}

/// The control plane's TLS: the server's identity, and what local workers trust and check.
pub struct TlsSettings {
    pub server: tonic::transport::ServerTlsConfig,
    pub ca_path: PathBuf,
    pub domain: String,
}

impl TlsSettings {
    /// The settings of `--tls-*`, with their files read and checked; None without `--tls-cert`.
    pub fn from_args(args: &TlsArgs) -> anyhow::Result<Option<Self>> {
        let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
            return Ok(None);
        };
        let read = |p: &Path, what: &str| {
            std::fs::read(p).with_context(|| format!("cannot read the TLS {what} {}", p.display()))
        };
        let cert_pem = read(cert, "certificate (--tls-cert)")?;
        let key_pem = read(key, "private key (--tls-key)")?;
        for (pem, p, marker) in [
            (&cert_pem, cert, "CERTIFICATE-----"),
            (&key_pem, key, "PRIVATE KEY-----"),
        ] {
            if !String::from_utf8_lossy(pem).contains(marker) {
                bail!(
                    "{} is not a PEM file with a \"-----BEGIN ...{marker}\" block",
                    p.display()
                );
            }
        }
        let ca_path = run::dir::absolute(args.tls_ca.as_deref().unwrap_or(cert));
        read(&ca_path, "CA certificate (--tls-ca)")?;
        Ok(Some(TlsSettings {
            server: tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(cert_pem, key_pem)),
            ca_path,
            domain: args
                .tls_domain
                .clone()
                .unwrap_or_else(|| "localhost".into()),
        }))
    }
}
