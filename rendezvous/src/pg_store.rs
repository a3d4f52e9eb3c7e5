//! The Postgres-protocol adapter of the [`Store`] port (`sqlx`), for several rendezvous
//! instances sharing one database: PostgreSQL for one site, CockroachDB or YugabyteDB, which
//! speak the same protocol, beyond. The migrations under `rendezvous/migrations/` are applied at
//! connect.
//!
//! Every statement commits before its method returns (so [`Store::flush`] has nothing left to
//! do). What must hold across instances is decided by the database: a one-time prekey is taken
//! by one `DELETE … RETURNING` of a row the others skip (`FOR UPDATE SKIP LOCKED`), quotas are
//! checked and charged in one serializable transaction (retried when the database reports a
//! conflict), CRL numbers come from one counter row, a TOTP step is recorded by a
//! compare-and-set. Changes other instances must hear of go out with `NOTIFY` and come in
//! through one `LISTEN` connection per instance.

use std::time::{Duration, UNIX_EPOCH};

use peerchat_pki::{RevokedEntry, Serial, Username};
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{PgConnection, Row};
use tokio::sync::broadcast;

use crate::store::{
    Account, Change, Deposit, OneTimePreKeyRecord, Presence, Quota, SignedPreKeyRecord, Store,
    StoreError, StoredEnvelope, TotpSecret, TotpState,
};

/// The channel instances notify each other on.
const CHANNEL: &str = "peerchat_rendezvous";

/// How many times a transaction the database aborted for a conflict is tried again.
const MAX_ATTEMPTS: u32 = 64;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The store on a Postgres-protocol database.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    changes: broadcast::Sender<Change>,
}

fn backend(e: sqlx::Error) -> StoreError {
    // sqlx's messages name the statement's parameters by position only, never their values.
    StoreError::Backend(e.to_string())
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

/// Whether the database aborted the transaction for a conflict with another one (it is then
/// safe, and meant, to run it again).
fn conflict(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|code| code == "40001" || code == "40P01")
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn username(raw: String) -> Result<Username, StoreError> {
    Username::new(&raw).map_err(|_| corrupt("a stored username"))
}

fn key32(bytes: Vec<u8>, what: &str) -> Result<[u8; 32], StoreError> {
    <[u8; 32]>::try_from(bytes).map_err(|_| corrupt(what))
}

fn account_of(row: &PgRow) -> Result<Account, StoreError> {
    let get = |e: sqlx::Error| backend(e);
    let totp = match row
        .try_get::<Option<Vec<u8>>, _>("totp_secret")
        .map_err(get)?
    {
        None => None,
        Some(secret) => Some(TotpState {
            secret: if row.try_get::<bool, _>("totp_sealed").map_err(get)? {
                TotpSecret::Sealed(secret)
            } else {
                TotpSecret::Plain(secret)
            },
            confirmed: row.try_get("totp_confirmed").map_err(get)?,
            last_step: uint(row.try_get("totp_last_step").map_err(get)?),
        }),
    };
    Ok(Account {
        username: username(row.try_get("username").map_err(get)?)?,
        password_hash: row.try_get("password_hash").map_err(get)?,
        identity_key: key32(row.try_get("identity_key").map_err(get)?, "identity key")?,
        peer_id: row.try_get("peer_id").map_err(get)?,
        certificate: row.try_get("certificate").map_err(get)?,
        serial: Serial::from_be_bytes(&row.try_get::<Vec<u8>, _>("serial").map_err(get)?),
        totp,
        created_at: uint(row.try_get("created_at").map_err(get)?),
    })
}

/// Binds `account`'s columns as `$1`…`$11`, in the order of the `accounts` table: username,
/// password hash, identity key, peer id, certificate, serial, TOTP secret, sealed, confirmed,
/// last step, creation time.
fn bind_account<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    account: &'q Account,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let (secret, sealed, confirmed, last_step) = match &account.totp {
        None => (None, false, false, 0),
        Some(t) => {
            let (secret, sealed) = match &t.secret {
                TotpSecret::Sealed(s) => (s.as_slice(), true),
                TotpSecret::Plain(s) => (s.as_slice(), false),
            };
            (Some(secret), sealed, t.confirmed, int(t.last_step))
        }
    };
    query
        .bind(account.username.as_str())
        .bind(&account.password_hash)
        .bind(&account.identity_key[..])
        .bind(&account.peer_id)
        .bind(&account.certificate)
        .bind(account.serial.as_bytes())
        .bind(secret)
        .bind(sealed)
        .bind(confirmed)
        .bind(last_step)
        .bind(int(account.created_at))
}

fn envelope_of(row: &PgRow) -> Result<StoredEnvelope, StoreError> {
    let get = |e: sqlx::Error| backend(e);
    Ok(StoredEnvelope {
        id: <[u8; 16]>::try_from(row.try_get::<Vec<u8>, _>("id").map_err(get)?)
            .map_err(|_| corrupt("envelope id"))?,
        sender: username(row.try_get("sender").map_err(get)?)?,
        envelope: row.try_get("envelope").map_err(get)?,
        deposited_at: uint(row.try_get("deposited_at").map_err(get)?),
        expires_at: uint(row.try_get("expires_at").map_err(get)?),
        sender_key: row
            .try_get::<Option<Vec<u8>>, _>("sender_key")
            .map_err(get)?
            .map(|k| key32(k, "sender key"))
            .transpose()?,
    })
}

/// Runs `$body` (an async block over the transaction `$tx`, giving `Result<T, sqlx::Error>`)
/// in a serializable transaction, again when the database aborts it for a conflict.
macro_rules! serializable {
    ($pool:expr, |$tx:ident| $body:expr) => {{
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = async {
                let mut $tx = $pool.begin().await?;
                sqlx::query("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                    .execute(&mut *$tx)
                    .await?;
                let value = $body;
                $tx.commit().await?;
                Ok::<_, sqlx::Error>(value)
            }
            .await;
            match outcome {
                Err(e) if conflict(&e) && attempt < MAX_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(u64::from(attempt.min(20)))).await;
                }
                other => break other.map_err(backend),
            }
        }
    }};
}

impl PgStore {
    /// Connects to `url` (`postgres://user:password@host:port/database`), applies the
    /// migrations not applied yet, and starts listening for the other instances' changes.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(backend)?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Backend(format!("applying the migrations: {e}")))?;
        let (changes, _) = broadcast::channel(1024);
        let mut listener = PgListener::connect_with(&pool).await.map_err(backend)?;
        listener.listen(CHANNEL).await.map_err(backend)?;
        tokio::spawn(listen(listener, changes.clone()));
        Ok(Self { pool, changes })
    }

    /// The connection pool (for the operator's checks and for tests).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn count_prekeys(conn: &mut PgConnection, username: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT COUNT(*) FROM one_time_prekeys WHERE username = $1")
            .bind(username)
            .fetch_one(conn)
            .await
    }
}

/// Forwards the notifications of the other instances (and our own) to the service. A lost
/// connection is re-established by `PgListener`; what was published meanwhile is unknown, so
/// the service is told to look again at everything.
async fn listen(mut listener: PgListener, changes: broadcast::Sender<Change>) {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                let payload = notification.payload();
                let change = match payload.split_once(':') {
                    Some(("m", name)) => Username::new(name).ok().map(Change::Mailbox),
                    Some(("c", number)) => number.parse().ok().map(Change::Crl),
                    _ => None,
                };
                match change {
                    Some(change) => {
                        let _ = changes.send(change);
                    }
                    None => tracing::warn!("an unknown notification on the rendezvous channel"),
                }
            }
            Ok(None) => {
                tracing::warn!("the database's notification connection was lost; reconnecting");
                let _ = changes.send(Change::Missed);
            }
            Err(e) => {
                tracing::warn!(error = %e, "listening for other instances failed; retrying");
                let _ = changes.send(Change::Missed);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

impl Store for PgStore {
    async fn create_account(&self, account: &Account) -> Result<bool, StoreError> {
        let inserted = bind_account(
            sqlx::query(
                "INSERT INTO accounts (username, password_hash, identity_key, peer_id, \
                 certificate, serial, totp_secret, totp_sealed, totp_confirmed, totp_last_step, \
                 created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                 ON CONFLICT (username) DO NOTHING",
            ),
            account,
        )
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(inserted.rows_affected() == 1)
    }

    async fn account(&self, username: &Username) -> Result<Option<Account>, StoreError> {
        sqlx::query("SELECT * FROM accounts WHERE username = $1")
            .bind(username.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
            .map(|row| account_of(&row))
            .transpose()
    }

    async fn update_account(&self, account: &Account) -> Result<(), StoreError> {
        self.update_account_where(account, None).await.map(|_| ())
    }

    async fn count_accounts(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok(uint(n))
    }

    async fn record_certificate(
        &self,
        username: &Username,
        serial: &Serial,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO certificates (username, serial) VALUES ($1, $2) \
             ON CONFLICT (username, serial) DO NOTHING",
        )
        .bind(username.as_str())
        .bind(serial.as_bytes())
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn certificates_of(&self, username: &Username) -> Result<Vec<Serial>, StoreError> {
        let serials: Vec<Vec<u8>> =
            sqlx::query_scalar("SELECT serial FROM certificates WHERE username = $1")
                .bind(username.as_str())
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
        Ok(serials.iter().map(|s| Serial::from_be_bytes(s)).collect())
    }

    async fn revoke(&self, serial: &Serial, at: u64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO revocations (serial, revoked_at) VALUES ($1, $2) \
             ON CONFLICT (serial) DO NOTHING",
        )
        .bind(serial.as_bytes())
        .bind(int(at))
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn is_revoked(&self, serial: &Serial) -> Result<bool, StoreError> {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT revoked_at FROM revocations WHERE serial = $1")
                .bind(serial.as_bytes())
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
        Ok(found.is_some())
    }

    async fn revoked(&self) -> Result<Vec<RevokedEntry>, StoreError> {
        let rows = sqlx::query("SELECT serial, revoked_at FROM revocations")
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|row| {
                let serial: Vec<u8> = row.try_get("serial").map_err(backend)?;
                let at: i64 = row.try_get("revoked_at").map_err(backend)?;
                Ok(RevokedEntry {
                    serial: Serial::from_be_bytes(&serial),
                    revoked_at: UNIX_EPOCH + Duration::from_secs(uint(at)),
                })
            })
            .collect()
    }

    async fn next_crl_number(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "UPDATE counters SET value = value + 1 WHERE name = 'crl_number' RETURNING value",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok(uint(n))
    }

    async fn set_signed_prekey(
        &self,
        username: &Username,
        key: &SignedPreKeyRecord,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO signed_prekeys (username, id, public_key, signature) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (username) DO UPDATE SET id = excluded.id, \
             public_key = excluded.public_key, signature = excluded.signature",
        )
        .bind(username.as_str())
        .bind(i64::from(key.id))
        .bind(&key.public_key[..])
        .bind(&key.signature)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn signed_prekey(
        &self,
        username: &Username,
    ) -> Result<Option<SignedPreKeyRecord>, StoreError> {
        let row =
            sqlx::query("SELECT id, public_key, signature FROM signed_prekeys WHERE username = $1")
                .bind(username.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
        row.map(|row| {
            Ok(SignedPreKeyRecord {
                id: u32::try_from(row.try_get::<i64, _>("id").map_err(backend)?)
                    .map_err(|_| corrupt("prekey id"))?,
                public_key: key32(row.try_get("public_key").map_err(backend)?, "prekey")?,
                signature: row.try_get("signature").map_err(backend)?,
            })
        })
        .transpose()
    }

    async fn add_one_time_prekeys(
        &self,
        username: &Username,
        keys: &[OneTimePreKeyRecord],
        max: u32,
    ) -> Result<u32, StoreError> {
        let name = username.as_str();
        let count = serializable!(self.pool, |tx| {
            let mut count = Self::count_prekeys(&mut tx, name).await?;
            for k in keys {
                let known: Option<i64> = sqlx::query_scalar(
                    "SELECT id FROM one_time_prekeys WHERE username = $1 AND id = $2",
                )
                .bind(name)
                .bind(i64::from(k.id))
                .fetch_optional(&mut *tx)
                .await?;
                if known.is_none() && count >= i64::from(max) {
                    break;
                }
                sqlx::query(
                    "INSERT INTO one_time_prekeys (username, id, public_key) VALUES ($1, $2, $3) \
                     ON CONFLICT (username, id) DO UPDATE SET public_key = excluded.public_key",
                )
                .bind(name)
                .bind(i64::from(k.id))
                .bind(&k.public_key[..])
                .execute(&mut *tx)
                .await?;
                if known.is_none() {
                    count += 1;
                }
            }
            count
        })?;
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }

    async fn take_one_time_prekey(
        &self,
        username: &Username,
    ) -> Result<Option<OneTimePreKeyRecord>, StoreError> {
        loop {
            // The row is locked by the subquery; a concurrent taker skips it and takes the next.
            let row = sqlx::query(
                "DELETE FROM one_time_prekeys WHERE username = $1 AND id = \
                 (SELECT id FROM one_time_prekeys WHERE username = $1 ORDER BY id LIMIT 1 \
                 FOR UPDATE SKIP LOCKED) RETURNING id, public_key",
            )
            .bind(username.as_str())
            .fetch_optional(&self.pool)
            .await;
            match row {
                Ok(Some(row)) => {
                    return Ok(Some(OneTimePreKeyRecord {
                        id: u32::try_from(row.try_get::<i64, _>("id").map_err(backend)?)
                            .map_err(|_| corrupt("prekey id"))?,
                        public_key: key32(row.try_get("public_key").map_err(backend)?, "prekey")?,
                    }));
                }
                // Every remaining key was locked by other takers at that moment: if any is
                // left once they are done, try again.
                Ok(None) => {
                    let mut conn = self.pool.acquire().await.map_err(backend)?;
                    if Self::count_prekeys(&mut conn, username.as_str())
                        .await
                        .map_err(backend)?
                        == 0
                    {
                        return Ok(None);
                    }
                }
                Err(e) if conflict(&e) => {}
                Err(e) => return Err(backend(e)),
            }
        }
    }

    async fn count_one_time_prekeys(&self, username: &Username) -> Result<u32, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(backend)?;
        let n = Self::count_prekeys(&mut conn, username.as_str())
            .await
            .map_err(backend)?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    async fn clear_prekeys(&self, username: &Username) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        for table in ["signed_prekeys", "one_time_prekeys"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE username = $1"))
                .bind(username.as_str())
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn set_presence(
        &self,
        username: &Username,
        presence: &Presence,
    ) -> Result<(), StoreError> {
        let addresses =
            serde_json::to_string(&presence.addresses).map_err(|e| corrupt(&e.to_string()))?;
        sqlx::query(
            "INSERT INTO presence (username, addresses, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (username) DO UPDATE SET addresses = excluded.addresses, \
             expires_at = excluded.expires_at",
        )
        .bind(username.as_str())
        .bind(addresses)
        .bind(int(presence.expires_at))
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn presence(&self, username: &Username) -> Result<Option<Presence>, StoreError> {
        let row = sqlx::query("SELECT addresses, expires_at FROM presence WHERE username = $1")
            .bind(username.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.map(|row| {
            let addresses: String = row.try_get("addresses").map_err(backend)?;
            Ok(Presence {
                addresses: serde_json::from_str(&addresses)
                    .map_err(|_| corrupt("presence addresses"))?,
                expires_at: uint(row.try_get("expires_at").map_err(backend)?),
            })
        })
        .transpose()
    }

    async fn deposit(
        &self,
        recipient: &Username,
        envelope: &StoredEnvelope,
        quota: Quota,
    ) -> Result<Deposit, StoreError> {
        let size = int(envelope.envelope.len() as u64);
        serializable!(self.pool, |tx| {
            let known: Option<i64> =
                sqlx::query_scalar("SELECT size FROM envelopes WHERE recipient = $1 AND id = $2")
                    .bind(recipient.as_str())
                    .bind(&envelope.id[..])
                    .fetch_optional(&mut *tx)
                    .await?;
            if known.is_some() {
                Deposit::Duplicate
            } else {
                let totals = "SELECT COUNT(*), CAST(COALESCE(SUM(size), 0) AS BIGINT) \
                              FROM envelopes WHERE recipient = $1";
                let (count, bytes): (i64, i64) = sqlx::query_as(totals)
                    .bind(recipient.as_str())
                    .fetch_one(&mut *tx)
                    .await?;
                let (from_sender, sender_bytes): (i64, i64) =
                    sqlx::query_as(&format!("{totals} AND sender = $2"))
                        .bind(recipient.as_str())
                        .bind(envelope.sender.as_str())
                        .fetch_one(&mut *tx)
                        .await?;
                if count >= i64::from(quota.max_envelopes)
                    || bytes + size > int(quota.max_bytes)
                    || from_sender >= i64::from(quota.max_envelopes_per_sender)
                    || sender_bytes + size > int(quota.max_bytes_per_sender)
                {
                    Deposit::QuotaExceeded
                } else {
                    sqlx::query(
                        "INSERT INTO envelopes (recipient, id, sender, envelope, size, \
                         deposited_at, expires_at, sender_key) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    )
                    .bind(recipient.as_str())
                    .bind(&envelope.id[..])
                    .bind(envelope.sender.as_str())
                    .bind(&envelope.envelope)
                    .bind(size)
                    .bind(int(envelope.deposited_at))
                    .bind(int(envelope.expires_at))
                    .bind(envelope.sender_key.as_ref().map(|k| &k[..]))
                    .execute(&mut *tx)
                    .await?;
                    Deposit::Stored
                }
            }
        })
    }

    async fn mailbox(
        &self,
        recipient: &Username,
        now: u64,
        limit: usize,
    ) -> Result<Vec<StoredEnvelope>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, sender, envelope, deposited_at, expires_at, sender_key FROM envelopes \
             WHERE recipient = $1 AND expires_at > $2 ORDER BY seq LIMIT $3",
        )
        .bind(recipient.as_str())
        .bind(int(now))
        .bind(int(limit as u64))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(envelope_of).collect()
    }

    async fn ack(&self, recipient: &Username, id: &[u8; 16]) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM envelopes WHERE recipient = $1 AND id = $2")
            .bind(recipient.as_str())
            .bind(&id[..])
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn purge_expired(&self, now: u64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM envelopes WHERE expires_at <= $1")
            .bind(int(now))
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected())
    }

    async fn count_envelopes(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM envelopes")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok(uint(n))
    }

    async fn latest_crl(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let row: Option<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT number, der FROM crls ORDER BY number DESC LIMIT 1")
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
        Ok(row.map(|(n, der)| (uint(n), der)))
    }

    async fn save_crl(&self, number: u64, der: &[u8]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        sqlx::query(
            "INSERT INTO crls (number, der) VALUES ($1, $2) ON CONFLICT (number) DO NOTHING",
        )
        .bind(int(number))
        .bind(der)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        // Only the newest few are worth keeping.
        sqlx::query("DELETE FROM crls WHERE number < $1")
            .bind(int(number.saturating_sub(16)))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn update_account_if_step(
        &self,
        account: &Account,
        prior_step: u64,
    ) -> Result<bool, StoreError> {
        self.update_account_where(account, Some(prior_step)).await
    }

    async fn publish(&self, change: Change) -> Result<(), StoreError> {
        let payload = match change {
            Change::Mailbox(owner) => format!("m:{owner}"),
            Change::Crl(number) => format!("c:{number}"),
            Change::Missed => return Ok(()),
        };
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    fn changes(&self) -> Option<broadcast::Receiver<Change>> {
        Some(self.changes.subscribe())
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Every write committed before its method returned.
        Ok(())
    }
}

impl PgStore {
    /// Replaces the account's record; with `prior_step`, only if its TOTP step is still that.
    async fn update_account_where(
        &self,
        account: &Account,
        prior_step: Option<u64>,
    ) -> Result<bool, StoreError> {
        let condition = match prior_step {
            Some(_) => " AND totp_last_step = $12",
            None => "",
        };
        let statement = format!(
            "UPDATE accounts SET password_hash = $2, identity_key = $3, peer_id = $4, \
             certificate = $5, serial = $6, totp_secret = $7, totp_sealed = $8, \
             totp_confirmed = $9, totp_last_step = $10, created_at = $11 \
             WHERE username = $1{condition}"
        );
        let mut query = bind_account(sqlx::query(&statement), account);
        if let Some(prior) = prior_step {
            query = query.bind(int(prior));
        }
        let done = query.execute(&self.pool).await.map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }
}
