//! The key service's certificate authority (`docs/keyservice-api.md` "Identities"): one CA
//! (ECDSA P-256) that issues the server certificate and one client certificate per host.
//!
//! The CA's private key is kept sealed under the root key in the store; its certificate is
//! `ca.pem` in the data directory, the trust anchor for clients and for host certificates.
//!
//! Lifetimes: the CA is valid for [`CA_DAYS`] (10 years), the server and host certificates for
//! a [`Validity`] the administrator chooses (default [`DEFAULT_CERT_DAYS`], one year), each
//! starting an hour in the past to absorb clock skew. A certificate near its end is renewed
//! (`host renew`, `server-cert renew`) without re-enrolling volumes: a host is known by name.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

/// Days the CA certificate is valid for (10 years).
pub const CA_DAYS: u32 = 3650;

/// Default days a server or host certificate is valid for (`--cert-days`).
pub const DEFAULT_CERT_DAYS: u32 = 365;

/// Longest `--cert-days` accepted (the CA's own lifetime).
pub const MAX_CERT_DAYS: u32 = CA_DAYS;

/// The period a certificate is valid in (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// First instant it is valid.
    pub not_before: OffsetDateTime,
    /// Last instant it is valid.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clock skew between the service and its clients) to `days` days from
    /// now.
    pub fn days(days: u32) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(i64::from(days)),
        }
    }

    fn apply(&self, p: &mut CertificateParams) {
        p.not_before = self.not_before;
        p.not_after = self.not_after;
    }
}

/// A certificate and its private key, both PEM.
pub struct Issued {
    /// `-----BEGIN CERTIFICATE-----`.
    pub cert_pem: String,
    /// The certificate's DER bytes (for the fingerprint).
    pub cert_der: Vec<u8>,
    /// `-----BEGIN PRIVATE KEY-----` (PKCS#8); secret.
    pub key_pem: Zeroizing<String>,
}

/// Certificate generation failed (rcgen's reason).
#[derive(Debug, thiserror::Error)]
#[error("certificate generation: {0}")]
pub struct PkiError(String);

fn err(e: rcgen::Error) -> PkiError {
    PkiError(e.to_string())
}

/// The CA's parameters; the same every time, so an [`Issuer`] can be rebuilt from them and the
/// stored key without parsing the certificate.
fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "nbdcrypt-keyd CA");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn serial() -> Result<SerialNumber, PkiError> {
    let mut s = [0u8; 16];
    getrandom::fill(&mut s).map_err(|e| PkiError(e.to_string()))?;
    s[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&s))
}

/// A new self-signed CA, valid for [`CA_DAYS`].
///
/// Errors: [`PkiError`].
pub fn new_ca() -> Result<Issued, PkiError> {
    let key = KeyPair::generate().map_err(err)?;
    let mut p = ca_params();
    p.serial_number = Some(serial()?);
    Validity::days(CA_DAYS).apply(&mut p);
    let cert = p.self_signed(&key).map_err(err)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        cert_der: cert.der().to_vec(),
        key_pem: Zeroizing::new(key.serialize_pem()),
    })
}

fn issue(ca_key_pem: &str, mut p: CertificateParams, v: &Validity) -> Result<Issued, PkiError> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(err)?;
    let issuer = Issuer::new(ca_params(), ca_key);
    let key = KeyPair::generate().map_err(err)?;
    p.serial_number = Some(serial()?);
    v.apply(&mut p);
    let cert = p.signed_by(&key, &issuer).map_err(err)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        cert_der: cert.der().to_vec(),
        key_pem: Zeroizing::new(key.serialize_pem()),
    })
}

/// The server certificate for `names` (DNS names or IP addresses, as clients will dial them),
/// valid in `v`.
///
/// Errors: [`PkiError`] (a name that is neither a DNS name nor an IP address, ...).
pub fn server_cert(ca_key_pem: &str, names: &[String], v: &Validity) -> Result<Issued, PkiError> {
    let mut p = CertificateParams::new(names.to_vec()).map_err(err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "nbdcrypt-keyd");
    p.distinguished_name = dn;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    issue(ca_key_pem, p, v)
}

/// A client certificate and a new key for host `name` (subject CN = `name`), valid in `v`.
///
/// Errors: [`PkiError`].
pub fn host_cert(ca_key_pem: &str, name: &str, v: &Validity) -> Result<Issued, PkiError> {
    issue(ca_key_pem, host_params(name), v)
}

/// Certificate parameters of host `name`: subject CN = `name`, client authentication only.
fn host_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p
}

/// SHA-256 of a certificate's DER bytes, lowercase hex: how the store recognises a host.
pub fn fingerprint(der: &[u8]) -> String {
    hex(&Sha256::digest(der))
}

/// Lowercase hex of `b`.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A P-256 public key as the uncompressed point (65 bytes, `0x04 ‖ X ‖ Y`), as a host sends
/// it to redeem a join token: the host keeps the private key.
struct P256Public<'a>(&'a [u8]);

impl rcgen::PublicKeyData for P256Public<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// Checks that `point` is a P-256 public key as a host sends it: uncompressed (65 bytes,
/// `0x04 ‖ X ‖ Y`), coordinates below the field prime, on the curve (so neither (0,0) nor the
/// point at infinity).
///
/// Errors: [`PkiError`] naming which of these failed.
pub fn check_p256_point(point: &[u8]) -> Result<(), PkiError> {
    if point.len() != 65 || point[0] != 4 {
        return Err(PkiError(
            "the public key is not an uncompressed P-256 point (65 bytes, 0x04 first)".into(),
        ));
    }
    p256::PublicKey::from_sec1_bytes(point)
        .map(|_| ())
        .map_err(|_| PkiError("the public key is not a point on the P-256 curve".into()))
}

/// A client certificate for host `name` over the host's own P-256 public key `point`
/// (uncompressed, 65 bytes), valid in `v`: PEM and DER.
///
/// Errors: [`PkiError`] for a key that is not an uncompressed P-256 point on the curve
/// ([`check_p256_point`]).
pub fn host_cert_for_key(
    ca_key_pem: &str,
    name: &str,
    point: &[u8],
    v: &Validity,
) -> Result<(String, Vec<u8>), PkiError> {
    check_p256_point(point)?;
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(err)?;
    let issuer = Issuer::new(ca_params(), ca_key);
    let mut p = host_params(name);
    p.serial_number = Some(serial()?);
    v.apply(&mut p);
    let cert = p.signed_by(&P256Public(point), &issuer).map_err(err)?;
    Ok((cert.pem(), cert.der().to_vec()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Points that are not P-256 public keys: (0,0), a valid point with Y changed (off the
    /// curve), coordinates of all ones (not below the field prime), compressed, short.
    pub(crate) fn bad_points() -> Vec<(&'static str, Vec<u8>)> {
        let mut zero = vec![0u8; 65];
        zero[0] = 4;
        let mut off = KeyPair::generate().unwrap().public_key_raw().to_vec();
        off[64] ^= 1;
        let mut ones = vec![0xffu8; 65];
        ones[0] = 4;
        let valid = KeyPair::generate().unwrap().public_key_raw().to_vec();
        let mut compressed = valid[..33].to_vec();
        compressed[0] = 2;
        vec![
            ("(0,0)", zero),
            ("off the curve", off),
            ("coordinates >= p", ones),
            ("compressed", compressed),
            ("short", vec![4u8; 10]),
            ("empty", vec![]),
        ]
    }

    #[test]
    fn only_points_on_p256_are_keys() {
        for (what, p) in bad_points() {
            assert!(check_p256_point(&p).is_err(), "{what}");
        }
        let valid = KeyPair::generate().unwrap();
        check_p256_point(valid.public_key_raw()).unwrap();
        let ca = new_ca().unwrap();
        let mut zero = vec![0u8; 65];
        zero[0] = 4;
        let v = Validity::days(1);
        assert!(host_cert_for_key(&ca.key_pem, "h", &zero, &v).is_err());
        host_cert_for_key(&ca.key_pem, "h", valid.public_key_raw(), &v).unwrap();
    }
}
