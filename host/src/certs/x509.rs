//! Reading certificates: the validity period and DNS names of a DER
//! certificate, a served key from a PEM bundle, and the time format the
//! certificate logs use. Shared by the three sources (files, ACME, dev CA)
//! and the admin API; kept apart from the resolver in [`super`] so that
//! file reads as the certificates' public face.

use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow};
use rustls::sign::CertifiedKey;

use super::crypto_provider;
use super::renewal::Validity;
use crate::base::names::normalize_name;

/// The validity period of a DER certificate.
pub fn validity_of(der: &[u8]) -> Result<Validity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|err| anyhow!("cannot parse the certificate: {err}"))?;
    let secs = |t: i64| {
        let secs = u64::try_from(t).unwrap_or(0);
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    };
    Ok(Validity {
        not_before: secs(cert.validity().not_before.timestamp()),
        not_after: secs(cert.validity().not_after.timestamp()),
    })
}

/// The DNS names (subjectAltName) of a DER certificate, lowercase.
pub fn dns_names_of(der: &[u8]) -> Result<Vec<String>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|err| anyhow!("cannot parse the certificate: {err}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|err| anyhow!("invalid subjectAltName extension: {err}"))?;
    Ok(san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => Some(normalize_name(dns)),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// The issuer of a DER certificate, as a distinguished name
/// (`CN=…, O=…`), for the dashboard.
pub fn issuer_of(der: &[u8]) -> Result<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|err| anyhow!("cannot parse the certificate: {err}"))?;
    Ok(cert.issuer().to_string())
}

/// Formats a time as RFC 3339 (UTC, seconds), for logs.
pub fn format_time(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t)
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{t}"))
}

/// Builds a [`CertifiedKey`] from a PEM bundle holding one private key and
/// the certificate chain (leaf first), as the ACME store keeps them.
pub fn certified_key_from_pem(pem: &[u8]) -> Result<(CertifiedKey, Validity)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let key = PrivateKeyDer::from_pem_slice(pem).context("no private key in the PEM data")?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .context("invalid certificate in the PEM data")?;
    let leaf = chain.first().context("no certificate in the PEM data")?;
    let validity = validity_of(leaf)?;
    let key = CertifiedKey::from_der(chain, key, &crypto_provider())
        .context("the private key does not fit the certificate")?;
    Ok((key, validity))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_format_as_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(format_time(t), "2023-11-14T22:13:20Z");
    }
}
