//! Every bound the server enforces, in one place.

use std::time::Duration;

/// Sizes, quotas, lifetimes and rates. [`Limits::default`] is what the binary uses.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Largest mailbox envelope.
    pub max_envelope_bytes: usize,
    /// Most envelopes waiting for one recipient.
    pub mailbox_max_envelopes: u32,
    /// Most bytes waiting for one recipient.
    pub mailbox_max_bytes: u64,
    /// Most envelopes from one sender waiting for one recipient.
    pub mailbox_max_envelopes_per_sender: u32,
    /// Most bytes from one sender waiting for one recipient.
    pub mailbox_max_bytes_per_sender: u64,
    /// How long an envelope waits before it is dropped unread.
    pub mailbox_expiry: Duration,
    /// Longest long-poll on the mailbox.
    pub max_mailbox_wait: Duration,
    /// Most one-time prekeys stored per user (extra uploads are ignored).
    pub max_one_time_prekeys: u32,
    /// Most one-time prekeys in one upload.
    pub max_prekey_batch: usize,
    /// Below this many one-time prekeys a user's supply is "low".
    pub low_prekey_threshold: u32,
    /// Most addresses one presence announcement may carry.
    pub max_addresses: usize,
    /// Longest address.
    pub max_address_len: usize,
    /// Longest presence TTL.
    pub max_presence_ttl: Duration,
    /// Lifetime of issued peer certificates.
    pub certificate_validity: Duration,
    /// Lifetime of each CRL (a new one is signed well before).
    pub crl_validity: Duration,
    /// Registrations and logins per source network (IPv4 /24, IPv6 /48): burst and refill
    /// period per request.
    pub auth_per_prefix: Rate,
    /// Registrations from everyone together: many addresses do not buy many accounts.
    pub registrations: Rate,
    /// Login attempts per account from one source network: a guesser elsewhere does not lock
    /// the owner out.
    pub login_per_account_prefix: Rate,
    /// Login attempts per account from all networks together: the ceiling a guesser with many
    /// networks meets.
    pub login_per_account: Rate,
    /// Lookups and bundle fetches per caller.
    pub lookups_per_user: Rate,
    /// One-time prekeys one caller may take of one target's (a session needs one); past it,
    /// bundles carry the signed prekey only.
    pub one_time_prekeys_per_pair: Rate,
    /// Deposits per caller.
    pub deposits_per_user: Rate,
    /// Argon2id memory cost in KiB (time cost 2, one lane).
    pub argon2_memory_kib: u32,
    /// Most connections open at once from one source (an IPv4 address or an IPv6 /64),
    /// counted from the TCP accept, TLS handshake included. Further ones are closed at once,
    /// so one source cannot take the slots everyone else needs.
    pub max_connections_per_source: usize,
    /// A connection with no request in flight for this long is closed by the server. A
    /// request's headers must also arrive within it (they are not a request in flight yet).
    pub idle_timeout: Duration,
    /// Time a client has to send a request's headers on HTTP/1 once it has started one.
    pub header_read_timeout: Duration,
    /// Time a client has to send a request's body once its headers are in.
    pub body_read_timeout: Duration,
    /// Largest parked file (sealed bytes: 100 MiB of plaintext and the chunks' tags).
    pub blob_max_bytes: u64,
    /// Most bytes of parked files one user may hold at once.
    pub blob_quota_bytes: u64,
    /// How long a parked file is kept when not every reader fetched it.
    pub blob_expiry: Duration,
}

/// A token bucket: `burst` requests at once, then one per `period`.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    /// Requests allowed at once.
    pub burst: u32,
    /// Time to earn one more.
    pub period: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 256 * 1024,
            max_envelope_bytes: 128 * 1024,
            mailbox_max_envelopes: 1000,
            mailbox_max_bytes: 16 * 1024 * 1024,
            mailbox_max_envelopes_per_sender: 250,
            mailbox_max_bytes_per_sender: 4 * 1024 * 1024,
            mailbox_expiry: Duration::from_secs(30 * 24 * 3600),
            max_mailbox_wait: Duration::from_secs(30),
            max_one_time_prekeys: 200,
            max_prekey_batch: 100,
            low_prekey_threshold: 20,
            max_addresses: 16,
            max_address_len: 256,
            max_presence_ttl: Duration::from_secs(3600),
            certificate_validity: peerchat_pki::DEFAULT_PEER_VALIDITY,
            crl_validity: Duration::from_secs(7 * 24 * 3600),
            auth_per_prefix: Rate {
                burst: 10,
                period: Duration::from_secs(6),
            },
            registrations: Rate {
                burst: 60,
                period: Duration::from_secs(1),
            },
            login_per_account_prefix: Rate {
                burst: 5,
                period: Duration::from_secs(60),
            },
            login_per_account: Rate {
                burst: 50,
                period: Duration::from_secs(10),
            },
            // A group of 200 is set up with a lookup and a bundle per member.
            lookups_per_user: Rate {
                burst: 240,
                period: Duration::from_millis(50),
            },
            one_time_prekeys_per_pair: Rate {
                burst: 3,
                period: Duration::from_secs(3600),
            },
            // A message to a group of 200 whose members are all offline.
            deposits_per_user: Rate {
                burst: 240,
                period: Duration::from_millis(50),
            },
            argon2_memory_kib: 19 * 1024,
            max_connections_per_source: 64,
            idle_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            blob_max_bytes: 100 * 1024 * 1024 + 4096 * 16,
            blob_quota_bytes: 256 * 1024 * 1024,
            blob_expiry: Duration::from_secs(48 * 3600),
        }
    }
}
