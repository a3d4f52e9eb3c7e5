use std::time::Duration;

use peerchat_pki::{Crl, CrlError, RevokedEntry, TrustStore, VerifyError, verify};

use crate::support::{days, identity, new_ca, t0};

#[test]
fn a_revoked_certificate_is_rejected_and_others_are_not() {
    let ca = new_ca(t0());
    let (_, alice) = identity(&ca, "alice", t0());
    let (_, bob) = identity(&ca, "bob", t0());
    let crl = ca
        .sign_crl(
            &[RevokedEntry {
                serial: alice.serial.clone(),
                revoked_at: t0(),
            }],
            1,
            t0(),
            t0() + days(7),
        )
        .unwrap();

    assert!(crl.is_revoked(&alice.serial));
    assert!(!crl.is_revoked(&bob.serial));
    assert_eq!(
        verify(
            std::slice::from_ref(&alice.der),
            ca.certificate(),
            Some(&crl),
            t0() + Duration::from_secs(60)
        ),
        Err(VerifyError::Revoked)
    );
    assert!(
        verify(
            std::slice::from_ref(&bob.der),
            ca.certificate(),
            Some(&crl),
            t0() + Duration::from_secs(60)
        )
        .is_ok()
    );
    // Without the CRL the same certificate still verifies: revocation is the CRL's job.
    assert!(verify(&[alice.der], ca.certificate(), None, t0()).is_ok());
}

#[test]
fn an_expired_crl_fails_closed() {
    let ca = new_ca(t0());
    let (_, bob) = identity(&ca, "bob", t0());
    let crl = ca.sign_crl(&[], 1, t0(), t0() + days(1)).unwrap();
    assert_eq!(
        verify(&[bob.der], ca.certificate(), Some(&crl), t0() + days(2)),
        Err(VerifyError::CrlExpired)
    );
}

#[test]
fn a_crl_round_trips_through_der_and_pem() {
    let ca = new_ca(t0());
    let (_, alice) = identity(&ca, "alice", t0());
    let crl = ca
        .sign_crl(
            &[RevokedEntry {
                serial: alice.serial.clone(),
                revoked_at: t0(),
            }],
            7,
            t0(),
            t0() + days(7),
        )
        .unwrap();
    for parsed in [
        Crl::from_der(crl.der(), ca.certificate()).unwrap(),
        Crl::from_pem(&crl.to_pem(), ca.certificate()).unwrap(),
    ] {
        assert_eq!(parsed.number(), 7);
        assert_eq!(parsed.this_update(), t0());
        assert_eq!(parsed.next_update(), t0() + days(7));
        assert_eq!(
            parsed.revoked().collect::<Vec<_>>(),
            vec![RevokedEntry {
                serial: alice.serial.clone(),
                revoked_at: t0()
            }]
        );
    }
}

#[test]
fn a_crl_from_another_ca_or_tampered_is_refused() {
    let ca = new_ca(t0());
    let other = new_ca(t0());
    let crl = other.sign_crl(&[], 1, t0(), t0() + days(7)).unwrap();
    assert!(matches!(
        Crl::from_der(crl.der(), ca.certificate()),
        Err(CrlError::WrongIssuer | CrlError::BadSignature)
    ));

    let good = ca.sign_crl(&[], 1, t0(), t0() + days(7)).unwrap();
    let mut tampered = good.der().to_vec();
    let n = tampered.len();
    tampered[n - 1] ^= 0x01;
    assert!(matches!(
        Crl::from_der(&tampered, ca.certificate()),
        Err(CrlError::BadSignature)
    ));
    assert!(matches!(
        Crl::from_der(b"junk", ca.certificate()),
        Err(CrlError::Malformed)
    ));
}

#[test]
fn the_trust_store_swaps_crls_and_refuses_rollback() {
    let ca = new_ca(t0());
    let (_, alice) = identity(&ca, "alice", t0());
    let store = TrustStore::new(ca.certificate().clone());
    let chain = [alice.der.clone()];

    let empty = ca.sign_crl(&[], 1, t0(), t0() + days(7)).unwrap();
    store.set_crl(empty.clone()).unwrap();
    assert!(store.verify(&chain, t0()).is_ok());

    let revoking = ca
        .sign_crl(
            &[RevokedEntry {
                serial: alice.serial.clone(),
                revoked_at: t0(),
            }],
            2,
            t0(),
            t0() + days(7),
        )
        .unwrap();
    store.set_crl(revoking).unwrap();
    assert_eq!(store.verify(&chain, t0()), Err(VerifyError::Revoked));

    assert!(matches!(
        store.set_crl(empty),
        Err(CrlError::Older {
            current: 2,
            offered: 1
        })
    ));
    assert_eq!(
        store.verify(&chain, t0()),
        Err(VerifyError::Revoked),
        "rollback must change nothing"
    );
}

#[test]
fn a_crl_of_another_ca_is_not_used_for_this_one() {
    let ca = new_ca(t0());
    let other = new_ca(t0());
    let (_, alice) = identity(&ca, "alice", t0());
    let crl = other.sign_crl(&[], 1, t0(), t0() + days(7)).unwrap();
    assert!(matches!(
        verify(
            std::slice::from_ref(&alice.der),
            ca.certificate(),
            Some(&crl),
            t0()
        ),
        Err(VerifyError::Invalid(_))
    ));
}
