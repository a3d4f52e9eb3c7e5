//! Random bearer secrets: the API token and the window's one-time codes and session cookies.
//! Its own module, so that the API and the window both use it without depending on each other.

use rand::RngCore;
use rand::rngs::OsRng;

/// A fresh random token: 256 bits from the OS, hex.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
