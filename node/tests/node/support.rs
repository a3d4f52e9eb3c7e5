//! Fixtures: users with identities and prekeys, and a helper to start a session between them.

use peerchat::domain::{
    IdentityKeyPair, Message, OneTimePreKeyPair, PreKeyBundle, PreKeyId, Session, SignedPreKeyPair,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// A user with an identity, a signed prekey and a few one-time prekeys.
pub struct User {
    pub identity: IdentityKeyPair,
    pub signed_prekey: SignedPreKeyPair,
    pub one_time_prekeys: Vec<OneTimePreKeyPair>,
}

impl User {
    pub fn new(rng: &mut StdRng) -> Self {
        let identity = IdentityKeyPair::generate(rng);
        let signed_prekey = SignedPreKeyPair::generate(PreKeyId(1), &identity, rng);
        let one_time_prekeys = (100..103)
            .map(|i| OneTimePreKeyPair::generate(PreKeyId(i), rng))
            .collect();
        Self {
            identity,
            signed_prekey,
            one_time_prekeys,
        }
    }

    pub fn bundle(&self, with_one_time: bool) -> PreKeyBundle {
        PreKeyBundle {
            identity: *self.identity.public(),
            signed_prekey: self.signed_prekey.public(),
            one_time_prekey: with_one_time.then(|| self.one_time_prekeys[0].public()),
        }
    }

    pub fn one_time(&self, id: Option<PreKeyId>) -> Option<&OneTimePreKeyPair> {
        id.and_then(|id| self.one_time_prekeys.iter().find(|k| k.id() == id))
    }

    /// Accepts an initial message as this user.
    pub fn respond(
        &self,
        message: &Message,
        rng: &mut StdRng,
    ) -> Result<peerchat::domain::Responded, peerchat::domain::SessionError> {
        let opk = self.one_time(message.prekey().and_then(|p| p.one_time_prekey_id));
        Session::respond(&self.identity, &self.signed_prekey, opk, message, rng)
    }
}

/// Alice and Bob with an established session (Alice's first message already received by Bob).
pub fn established(seed: u64) -> (Session, Session, StdRng) {
    let mut rng = rng(seed);
    let alice = User::new(&mut rng);
    let bob = User::new(&mut rng);
    let mut a = Session::initiate(&alice.identity, &bob.bundle(true), &mut rng).unwrap();
    let first = a.encrypt(b"hello bob").unwrap();
    let responded = bob.respond(&first, &mut rng).unwrap();
    assert_eq!(responded.plaintext, b"hello bob");
    (a, responded.session, rng)
}

/// Sends through the wire encoding, as the network would.
pub fn wire(message: &Message) -> Message {
    Message::decode(message.encode()).unwrap()
}
