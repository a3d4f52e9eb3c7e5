//! The last verified CRL, kept in the data directory so that a node started while the
//! rendezvous is unreachable still refuses the certificates it knew to be revoked.

use std::io::Write;
use std::path::{Path, PathBuf};

use peerchat_pki::{CaCertificate, Crl};

/// The file (in the data directory) holding the CRL, DER.
pub const CRL_FILE: &str = "crl.der";

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(CRL_FILE)
}

/// The saved CRL, if there is one and it verifies against `ca`; a file that does not verify is
/// ignored (and said so in the log), never trusted.
pub fn load(data_dir: &Path, ca: &CaCertificate) -> Option<Crl> {
    let der = match std::fs::read(path(data_dir)) {
        Ok(der) => der,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(error = %e, "the saved CRL cannot be read");
            return None;
        }
    };
    match Crl::from_der(&der, ca) {
        Ok(crl) => Some(crl),
        Err(e) => {
            tracing::warn!(error = %e, "the saved CRL does not verify; ignored");
            None
        }
    }
}

/// Saves `crl` durably: written to a temporary file, synced, then renamed over the old one, so
/// a crash leaves the old CRL or the new one, never half of one.
pub fn save(data_dir: &Path, crl: &Crl) -> std::io::Result<()> {
    let target = path(data_dir);
    let partial = target.with_extension("partial");
    let mut file = std::fs::File::create(&partial)?;
    file.write_all(crl.der())?;
    file.sync_all()?;
    std::fs::rename(&partial, &target)?;
    if let Ok(dir) = std::fs::File::open(data_dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::{Duration, SystemTime};

    use peerchat_pki::{CertificateAuthority, RevokedEntry, Serial};
    use rand::rngs::OsRng;

    use super::*;

    #[test]
    fn a_saved_crl_loads_and_one_from_another_ca_or_damaged_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let ca = CertificateAuthority::generate("crl file CA", now, &mut OsRng).unwrap();
        let other = CertificateAuthority::generate("another CA", now, &mut OsRng).unwrap();
        assert!(load(dir.path(), ca.certificate()).is_none(), "none yet");

        let revoked = RevokedEntry {
            serial: Serial::random(&mut OsRng),
            revoked_at: now,
        };
        let crl = ca
            .sign_crl(
                std::slice::from_ref(&revoked),
                3,
                now,
                now + Duration::from_secs(3600),
            )
            .unwrap();
        save(dir.path(), &crl).unwrap();
        let loaded = load(dir.path(), ca.certificate()).unwrap();
        assert_eq!(loaded.number(), 3);
        assert!(loaded.is_revoked(&revoked.serial));
        assert!(load(dir.path(), other.certificate()).is_none());

        let mut der = crl.der().to_vec();
        let last = der.len() - 1;
        der[last] ^= 1;
        std::fs::write(dir.path().join(CRL_FILE), der).unwrap();
        assert!(load(dir.path(), ca.certificate()).is_none());
    }
}
