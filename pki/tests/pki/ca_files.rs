use std::fs;
use std::os::unix::fs::PermissionsExt;

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use peerchat_pki::{CaCertificate, CaError, CertificateAuthority, verify};

use crate::support::{identity, new_ca, rng, t0};

#[test]
fn a_saved_ca_loads_back_and_keeps_issuing_verifiable_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(t0());
    ca.save(dir.path()).unwrap();

    let mode = fs::metadata(dir.path().join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let loaded = CertificateAuthority::load(dir.path()).unwrap();
    assert_eq!(loaded.certificate(), ca.certificate());
    assert_eq!(
        loaded.certificate().fingerprint(),
        ca.certificate().fingerprint()
    );

    // Certificates from the loaded CA verify against the original certificate and vice versa.
    let (_, cert) = identity(&loaded, "alice", t0());
    assert!(verify(&[cert.der], ca.certificate(), None, t0()).is_ok());
    let crl = loaded
        .sign_crl(&[], 1, t0(), t0() + crate::support::days(1))
        .unwrap();
    assert!(peerchat_pki::Crl::from_der(crl.der(), ca.certificate()).is_ok());
}

#[test]
fn load_or_generate_creates_once_then_loads() {
    let dir = tempfile::tempdir().unwrap();
    let (first, created) =
        CertificateAuthority::load_or_generate(dir.path(), "ca", t0(), &mut rng()).unwrap();
    assert!(created);
    let (second, created) =
        CertificateAuthority::load_or_generate(dir.path(), "ca", t0(), &mut rng()).unwrap();
    assert!(!created);
    assert_eq!(first.certificate(), second.certificate());
}

#[test]
fn a_key_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    new_ca(t0()).save(dir.path()).unwrap();
    fs::set_permissions(dir.path().join("ca.key"), fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        CertificateAuthority::load(dir.path()),
        Err(CaError::KeyPermissions(_))
    ));
}

#[test]
fn a_key_from_another_ca_is_refused() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    new_ca(t0()).save(a.path()).unwrap();
    new_ca(t0()).save(b.path()).unwrap();
    fs::copy(b.path().join("ca.key"), a.path().join("ca.key")).unwrap();
    assert!(matches!(
        CertificateAuthority::load(a.path()),
        Err(CaError::KeyMismatch)
    ));
}

#[test]
fn only_a_self_signed_ed25519_ca_is_accepted_as_a_root() {
    let ca = new_ca(t0());
    let (_, leaf) = identity(&ca, "alice", t0());
    assert!(matches!(
        CaCertificate::from_der(&leaf.der),
        Err(CaError::NotACa(_))
    ));
    assert!(matches!(
        CaCertificate::from_pem("garbage"),
        Err(CaError::NotACa(_))
    ));
    assert_eq!(
        CaCertificate::from_pem(&ca.certificate().to_pem()).unwrap(),
        *ca.certificate()
    );
}

#[test]
fn the_ca_debug_output_does_not_show_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(t0());
    ca.save(dir.path()).unwrap();
    let pem = fs::read_to_string(dir.path().join("ca.key")).unwrap();
    let key = SigningKey::from_pkcs8_pem(&pem).unwrap();
    let secret_hex: String = key.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
    let shown = format!("{ca:?}");
    assert!(!shown.contains(&secret_hex));
    assert!(!shown.contains(&format!("{:?}", key.to_bytes())[1..20]));
    assert!(!shown.contains("PRIVATE"));
}
