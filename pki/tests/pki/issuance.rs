use std::time::Duration;

use ed25519_dalek::SigningKey;
use peerchat_pki::{
    CertificateAuthority, CsrError, HostName, IssueError, VerifyError, build_csr, verify,
};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, SanType,
};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::support::{TestSigner, days, identity, new_ca, rng, t0, user};

#[test]
fn given_a_csr_when_issued_then_verify_returns_username_key_serial_and_expiry() {
    let ca = new_ca(t0());
    let (key, cert) = identity(&ca, "alice", t0());

    let peer = verify(
        std::slice::from_ref(&cert.der),
        ca.certificate(),
        None,
        t0(),
    )
    .unwrap();

    assert_eq!(peer.username, user("alice"));
    assert_eq!(peer.identity_key, key.verifying_key());
    assert_eq!(peer.serial, cert.serial);
    assert_eq!(peer.not_after, t0() + days(30));
    assert_eq!(cert.serial.as_bytes().len(), 16, "128-bit serial");
}

#[test]
fn issued_fields_are_the_cas_choice() {
    let ca = new_ca(t0());
    let (_, cert) = identity(&ca, "alice", t0());
    let (_, x509) = X509Certificate::from_der(&cert.der).unwrap();

    assert!(!x509.is_ca());
    let eku = x509.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let sans: Vec<String> = x509
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(sans, vec!["URI(peerchat://user/alice)".to_owned()]);
    assert_eq!(
        x509.validity().not_after.timestamp(),
        (t0() + days(30))
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    );
    assert!(
        x509.validity().not_before.timestamp()
            < t0()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64
    );
    assert!(
        x509.validity().not_before.timestamp() > 1_700_000_000,
        "not rcgen's 1975 default"
    );
}

#[test]
fn serials_differ_between_certificates() {
    let ca = new_ca(t0());
    let (_, a) = identity(&ca, "alice", t0());
    let (_, b) = identity(&ca, "alice", t0());
    assert_ne!(a.serial, b.serial);
}

#[test]
fn a_certificate_from_a_foreign_ca_is_rejected() {
    let ca = new_ca(t0());
    let foreign = new_ca(t0());
    let (_, cert) = identity(&foreign, "alice", t0());
    assert_eq!(
        verify(&[cert.der], ca.certificate(), None, t0()),
        Err(VerifyError::UnknownIssuer)
    );
}

#[test]
fn a_foreign_ca_with_the_same_name_is_still_rejected() {
    // Same subject name, different key: only the signature tells them apart.
    let ca = CertificateAuthority::generate("same name", t0(), &mut rng()).unwrap();
    let impostor = CertificateAuthority::generate("same name", t0(), &mut rng()).unwrap();
    let (_, cert) = identity(&impostor, "alice", t0());
    assert_eq!(
        verify(&[cert.der], ca.certificate(), None, t0()),
        Err(VerifyError::UnknownIssuer)
    );
}

#[test]
fn validity_is_checked_against_the_given_time() {
    let ca = new_ca(t0());
    let (_, cert) = identity(&ca, "alice", t0());
    let chain = [cert.der];

    assert!(verify(&chain, ca.certificate(), None, t0() + days(29)).is_ok());
    assert_eq!(
        verify(&chain, ca.certificate(), None, t0() + days(31)),
        Err(VerifyError::Expired)
    );
    assert_eq!(
        verify(
            &chain,
            ca.certificate(),
            None,
            t0() - Duration::from_secs(3600)
        ),
        Err(VerifyError::NotYetValid)
    );
    // A verifier whose clock is a minute behind still accepts a fresh certificate.
    assert!(
        verify(
            &chain,
            ca.certificate(),
            None,
            t0() - Duration::from_secs(60)
        )
        .is_ok()
    );
}

#[test]
fn a_tampered_csr_is_rejected() {
    let ca = new_ca(t0());
    let key = SigningKey::generate(&mut rng());
    let csr = build_csr(&key, &user("alice")).unwrap();

    // Flip a bit in the signature (the last bytes) and in the signed content (the key).
    let mut bad_sig = csr.clone();
    let last = bad_sig.len() - 1;
    bad_sig[last] ^= 1;
    let mut bad_body = csr.clone();
    let key_at = csr
        .windows(32)
        .position(|w| w == key.verifying_key().as_bytes())
        .unwrap();
    bad_body[key_at] ^= 1;

    for bad in [bad_sig, bad_body] {
        let err = ca
            .issue_peer(&bad, &user("alice"), t0(), days(30), &mut rng())
            .unwrap_err();
        assert!(
            matches!(
                err,
                IssueError::Csr(CsrError::BadSignature | CsrError::UnsupportedKey)
            ),
            "{err:?}"
        );
    }
    let err = ca
        .issue_peer(
            &csr[..csr.len() - 3],
            &user("alice"),
            t0(),
            days(30),
            &mut rng(),
        )
        .unwrap_err();
    assert!(
        matches!(err, IssueError::Csr(CsrError::Malformed)),
        "{err:?}"
    );
    let err = ca
        .issue_peer(b"not a csr", &user("alice"), t0(), days(30), &mut rng())
        .unwrap_err();
    assert!(
        matches!(err, IssueError::Csr(CsrError::Malformed)),
        "{err:?}"
    );
}

#[test]
fn a_csr_signed_by_another_key_is_rejected() {
    // Proof of possession: the CSR carries alice's public key but mallory signed it.
    let ca = new_ca(t0());
    let alice = SigningKey::generate(&mut rng());
    let mallory = TestSigner::new(SigningKey::generate(&mut rng()));
    let csr_alice = build_csr(&alice, &user("alice")).unwrap();
    let csr_mallory = {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "alice");
        params.serialize_request(&mallory).unwrap().der().to_vec()
    };
    // Splice mallory's signature onto alice's request body.
    let sig_len = 64;
    let mut forged = csr_alice.clone();
    let n = forged.len();
    forged[n - sig_len..].copy_from_slice(&csr_mallory[csr_mallory.len() - sig_len..]);
    let err = ca
        .issue_peer(&forged, &user("alice"), t0(), days(30), &mut rng())
        .unwrap_err();
    assert!(
        matches!(err, IssueError::Csr(CsrError::BadSignature)),
        "{err:?}"
    );
}

#[test]
fn a_csr_asking_for_ca_rights_and_other_names_yields_a_leaf_that_cannot_sign() {
    let ca = new_ca(t0());
    let signer = TestSigner::new(SigningKey::generate(&mut rng()));
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "alice");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.subject_alt_names = vec![
        SanType::URI("peerchat://user/alice".try_into().unwrap()),
        SanType::DnsName("rendezvous.example".try_into().unwrap()),
    ];
    let csr = params.serialize_request(&signer).unwrap();

    let leaf = ca
        .issue_peer(csr.der(), &user("alice"), t0(), days(30), &mut rng())
        .unwrap();

    let (_, x509) = X509Certificate::from_der(&leaf.der).unwrap();
    assert!(!x509.is_ca());
    assert_eq!(
        x509.subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .len(),
        1
    );

    // Use the leaf's key to sign a certificate for "bob": no verifier may accept it.
    let mut forged = CertificateParams::default();
    forged.subject_alt_names = vec![SanType::URI("peerchat://user/bob".try_into().unwrap())];
    forged.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    forged.not_before = time::OffsetDateTime::from(t0() - days(1));
    forged.not_after = time::OffsetDateTime::from(t0() + days(1));
    let issuer = Issuer::from_ca_cert_der(&leaf.der, &signer).unwrap();
    let bob_key = TestSigner::new(SigningKey::generate(&mut rng()));
    let bob = forged.signed_by(&bob_key, &issuer).unwrap();

    let result = verify(
        &[bob.der().clone(), leaf.der.clone()],
        ca.certificate(),
        None,
        t0(),
    );
    assert!(result.is_err(), "a leaf acted as a CA: {result:?}");
}

#[test]
fn a_csr_for_another_username_is_rejected() {
    let ca = new_ca(t0());
    let key = SigningKey::generate(&mut rng());
    let csr = build_csr(&key, &user("mallory")).unwrap();
    let err = ca
        .issue_peer(&csr, &user("alice"), t0(), days(30), &mut rng())
        .unwrap_err();
    assert!(
        matches!(err, IssueError::WrongUsername { ref requested, .. } if requested == "mallory"),
        "{err:?}"
    );

    // CN right, SAN URI wrong.
    let signer = TestSigner::new(SigningKey::generate(&mut rng()));
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "alice");
    params.subject_alt_names = vec![SanType::URI("peerchat://user/bob".try_into().unwrap())];
    let csr = params.serialize_request(&signer).unwrap();
    let err = ca
        .issue_peer(csr.der(), &user("alice"), t0(), days(30), &mut rng())
        .unwrap_err();
    assert!(
        matches!(err, IssueError::WrongUsername { ref requested, .. } if requested == "bob"),
        "{err:?}"
    );

    // No name at all.
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(&signer).unwrap();
    let err = ca
        .issue_peer(csr.der(), &user("alice"), t0(), days(30), &mut rng())
        .unwrap_err();
    assert!(matches!(err, IssueError::MissingUsername), "{err:?}");
}

#[test]
fn a_csr_with_a_non_ed25519_key_is_rejected() {
    let ca = new_ca(t0());
    let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "alice");
    let csr = params.serialize_request(&p256).unwrap();
    let err = ca
        .issue_peer(csr.der(), &user("alice"), t0(), days(30), &mut rng())
        .unwrap_err();
    assert!(
        matches!(err, IssueError::Csr(CsrError::UnsupportedKey)),
        "{err:?}"
    );
}

#[test]
fn a_server_certificate_is_not_a_peer_certificate() {
    let ca = new_ca(t0());
    let key = SigningKey::generate(&mut rng());
    let cert = ca
        .issue_server(
            &key.verifying_key(),
            &[HostName::parse("localhost"), HostName::parse("127.0.0.1")],
            t0(),
            days(30),
            &mut rng(),
        )
        .unwrap();
    let (_, x509) = X509Certificate::from_der(&cert.der).unwrap();
    let sans: Vec<String> = x509
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(
        sans,
        vec![
            "DNSName(localhost)".to_owned(),
            "IPAddress(7f:00:00:01)".to_owned()
        ]
    );
    assert_eq!(
        verify(&[cert.der], ca.certificate(), None, t0()),
        Err(VerifyError::NotAPeerCertificate)
    );
}

#[test]
fn server_certificates_need_valid_names() {
    let ca = new_ca(t0());
    let key = SigningKey::generate(&mut rng());
    let pk = key.verifying_key();
    assert!(matches!(
        ca.issue_server(&pk, &[], t0(), days(1), &mut rng()),
        Err(IssueError::NoHostNames)
    ));
    assert!(matches!(
        ca.issue_server(
            &pk,
            &[HostName::parse("bad name/")],
            t0(),
            days(1),
            &mut rng()
        ),
        Err(IssueError::BadHostName(_))
    ));
}

#[test]
fn the_ca_certificate_itself_is_not_a_peer() {
    let ca = new_ca(t0());
    let err = verify(
        &[ca.certificate().der().clone()],
        ca.certificate(),
        None,
        t0(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::NotAPeerCertificate | VerifyError::UnknownIssuer | VerifyError::Invalid(_)
        ),
        "{err:?}"
    );
}

#[test]
fn debug_output_shows_no_private_key() {
    let ca = new_ca(t0());
    let (key, cert) = identity(&ca, "alice", t0());
    let secret_hex: String = key.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
    let secret_dec = format!("{:?}", key.to_bytes());
    let credentials = peerchat_pki::tls::Credentials::new(vec![cert.der.clone()], key.clone());

    for shown in [
        format!("{key:?}"),
        format!("{ca:?}"),
        format!("{credentials:?}"),
        format!("{cert:?}"),
    ] {
        assert!(!shown.to_lowercase().contains(&secret_hex), "{shown}");
        assert!(!shown.contains(&secret_dec), "{shown}");
        assert!(
            !shown.contains(&secret_dec[1..secret_dec.len() - 1]),
            "{shown}"
        );
    }
}
