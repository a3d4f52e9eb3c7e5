//! OpenSSL as an independent implementation: it must accept what we issue, read the names we
//! write, compute the same fingerprint and honour our CRLs.

use std::path::Path;
use std::process::Command;

use peerchat_pki::RevokedEntry;

use crate::support::{days, identity, new_ca};

fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed (.ci/run installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn openssl_verifies_an_issued_leaf_and_reads_its_uri_san() {
    let now = std::time::SystemTime::now();
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(now);
    let (_, leaf) = identity(&ca, "alice", now);
    std::fs::write(dir.path().join("ca.pem"), ca.certificate().to_pem()).unwrap();
    std::fs::write(dir.path().join("leaf.pem"), leaf.to_pem()).unwrap();

    let (ok, out) = openssl(dir.path(), &["verify", "-CAfile", "ca.pem", "leaf.pem"]);
    assert!(ok, "{out}");
    assert!(out.contains("leaf.pem: OK"), "{out}");

    let (ok, text) = openssl(dir.path(), &["x509", "-in", "leaf.pem", "-noout", "-text"]);
    assert!(ok, "{text}");
    assert!(text.contains("URI:peerchat://user/alice"), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{text}"
    );
    assert!(text.contains("ED25519"), "{text}");

    let (ok, text) = openssl(dir.path(), &["x509", "-in", "ca.pem", "-noout", "-text"]);
    assert!(ok && text.contains("CA:TRUE, pathlen:0"), "{text}");

    let (ok, fp) = openssl(
        dir.path(),
        &["x509", "-in", "ca.pem", "-noout", "-fingerprint", "-sha256"],
    );
    assert!(ok, "{fp}");
    assert!(
        fp.contains(&ca.certificate().fingerprint().to_string()),
        "{fp} vs {}",
        ca.certificate().fingerprint()
    );
}

#[test]
fn openssl_rejects_a_leaf_from_another_ca_and_a_revoked_one() {
    let now = std::time::SystemTime::now();
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(now);
    let other = new_ca(now);
    let (_, foreign) = identity(&other, "alice", now);
    let (_, revoked) = identity(&ca, "bob", now);
    let crl = ca
        .sign_crl(
            &[RevokedEntry {
                serial: revoked.serial.clone(),
                revoked_at: now,
            }],
            1,
            now,
            now + days(7),
        )
        .unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.certificate().to_pem()).unwrap();
    std::fs::write(dir.path().join("foreign.pem"), foreign.to_pem()).unwrap();
    std::fs::write(dir.path().join("revoked.pem"), revoked.to_pem()).unwrap();
    std::fs::write(dir.path().join("crl.pem"), crl.to_pem()).unwrap();

    let (ok, out) = openssl(dir.path(), &["verify", "-CAfile", "ca.pem", "foreign.pem"]);
    assert!(!ok, "{out}");

    let (ok, out) = openssl(
        dir.path(),
        &[
            "crl", "-in", "crl.pem", "-CAfile", "ca.pem", "-noout", "-text",
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("verify OK"), "{out}");
    assert!(
        out.to_uppercase()
            .contains(&revoked.serial.to_hex().to_uppercase()),
        "{out}"
    );

    let (ok, out) = openssl(
        dir.path(),
        &[
            "verify",
            "-CAfile",
            "ca.pem",
            "-crl_check",
            "-CRLfile",
            "crl.pem",
            "revoked.pem",
        ],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("certificate revoked"), "{out}");
}
