//! Groups: who is in a group and who may change it.
//!
//! A group's state (name, members, admins, version) changes only by [`SignedChange`]s: a
//! [`Change`] signed by its author's identity key over (group id, new version, the digest of the
//! state it was made on, author, change), domain-separated. A member applies a change when the
//! signature verifies against the author's pinned key, the author may make it in the state it
//! names (admins change the group; any member may leave), and it is the next version of that
//! state.
//!
//! **Convergence.** Two changes made concurrently on the same state (same version, same parent
//! digest) are ordered by a key every member computes alike: first a change that removes an
//! admin, then by the author's seniority among the admins of that state (the creator first, then
//! in promotion order; a member leaving after all admins), then by the SHA-256 of the signed
//! change, the smaller winning. A member that applied the loser first replaces it with the winner
//! when the winner arrives (with any change it applied on top of the loser: such a change names a
//! parent that is no longer the group's, and every other member refuses it too), so every member
//! that received both ends in the same state whatever the order of arrival. Members remember the
//! last [`MAX_LOG`] versions for this; a concurrent change older than that is refused as stale.
//! Changes that arrive before the ones they follow ([`GroupError::Gap`]) wait with their sender,
//! who sends them again.
//!
//! **A removal sticks.** An admin removes only members and admins junior to them, so a removed
//! admin's concurrent change always loses to the removal; and a change never replaces history in
//! which its author stopped being an admin, so a removed admin cannot undo the removal with a
//! change made later on an older state (whatever its hash). The price: a change that was truly
//! concurrent with an earlier change, and reaches some members only after its author's removal,
//! is refused by those members while others kept it.

use std::collections::BTreeSet;

use ed25519_dalek::{Signature, Signer, Verifier};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ids::GroupId;
use super::keys::{IdentityKey, IdentityKeyPair};
use peerchat_pki::Username;

/// Most members of a group, its creator included.
pub const MAX_MEMBERS: usize = 200;

/// Longest group name, in bytes.
pub const MAX_NAME_BYTES: usize = 100;

/// How many past versions a member remembers, to let a concurrent change that wins replace the
/// one it applied.
pub const MAX_LOG: usize = 32;

/// Domain separation of change signatures.
const CHANGE_CONTEXT: &[u8] = b"peerchat group change v1";

/// The digest of a group state (the parent a change names).
pub type StateDigest = [u8; 32];

/// A group as every member sees it after the same changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    /// The group's id.
    pub id: GroupId,
    /// Its name.
    pub name: String,
    /// Everyone in it, admins included.
    pub members: BTreeSet<Username>,
    /// Who may change it, in the order they became admins (the creator first).
    pub admins: Vec<Username>,
    /// How many changes made it (1 after its creation).
    pub version: u64,
}

impl GroupState {
    /// The digest a change made on this state names as its parent.
    pub fn digest(&self) -> StateDigest {
        let bytes = postcard::to_stdvec(self).unwrap_or_default();
        Sha256::new()
            .chain_update(b"peerchat group state v1")
            .chain_update(bytes)
            .finalize()
            .into()
    }

    /// Whether `user` may change the group.
    pub fn is_admin(&self, user: &Username) -> bool {
        self.admins.contains(user)
    }
}

/// One change of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// The group begins, with its author as first admin and member.
    Create {
        /// The name.
        name: String,
        /// The other members.
        members: Vec<Username>,
    },
    /// Members join (admins only).
    Add(Vec<Username>),
    /// Members are removed (admins only); a removed admin is no longer one.
    Remove(Vec<Username>),
    /// The author leaves (any member).
    Leave,
    /// A member becomes an admin (admins only).
    Promote(Username),
    /// The group gets a new name (admins only).
    Rename(String),
}

/// A change with its author and signature: what travels, pairwise, to every member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedChange {
    /// The group.
    pub group: GroupId,
    /// The version the group has once this change is applied.
    pub version: u64,
    /// The digest of the state it was made on (zeros for a creation).
    pub parent: StateDigest,
    /// Who made it.
    pub author: Username,
    /// What it does.
    pub change: Change,
    /// The author's identity key's signature over all of the above.
    #[serde(with = "super::keys::signature_serde")]
    pub signature: Signature,
}

/// Why a change is refused (it then changes nothing).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// The signature does not verify against the author's key.
    #[error("the change's signature does not verify against its author's key")]
    BadSignature,
    /// The change is for another group.
    #[error("the change is for another group")]
    WrongGroup,
    /// The author may not make this change (not an admin, or not a member).
    #[error("{0} may not make this change")]
    NotAllowed(Username),
    /// Older than the group's version: a newer state has won.
    #[error("the change is for version {got}, the group is at version {have}")]
    Stale {
        /// The group's version.
        have: u64,
        /// The change's.
        got: u64,
    },
    /// Changes in between are missing: it cannot be applied yet.
    #[error(
        "the change is for version {got}, the group is at version {have}: changes in between are missing"
    )]
    Gap {
        /// The group's version.
        have: u64,
        /// The change's.
        got: u64,
    },
    /// Made on a state the group does not have (one that lost to a concurrent change).
    #[error("the change was made on another state of the group")]
    WrongParent,
    /// It loses to the concurrent change already applied.
    #[error("a concurrent change of the same version wins over it")]
    Lost,
    /// Already applied.
    #[error("the change was applied already")]
    Duplicate,
    /// The group would have more than [`MAX_MEMBERS`] members.
    #[error("a group has at most {MAX_MEMBERS} members")]
    TooManyMembers,
    /// A name that is empty, too long, or has control characters.
    #[error("a group name is 1 to {MAX_NAME_BYTES} bytes without control characters")]
    BadName,
    /// A change that changes nothing or names someone it cannot (adding a member twice,
    /// removing or promoting a non-member, a creation of an existing group).
    #[error("the change does not apply to this group: {0}")]
    Invalid(&'static str),
}

impl SignedChange {
    /// `change` of the group in `base` (or a new group `group` when `base` is `None`), signed by
    /// `author` with `key`.
    pub fn sign(
        key: &IdentityKeyPair,
        author: Username,
        group: GroupId,
        base: Option<&GroupState>,
        change: Change,
    ) -> Self {
        let (version, parent) = match base {
            Some(state) => (state.version + 1, state.digest()),
            None => (1, [0; 32]),
        };
        let mut signed = Self {
            group,
            version,
            parent,
            author,
            change,
            signature: Signature::from_bytes(&[0; 64]),
        };
        signed.signature = key.signing_key().sign(&signed.signed_bytes());
        signed
    }

    /// What the signature covers.
    fn signed_bytes(&self) -> Vec<u8> {
        let body = postcard::to_stdvec(&(
            &self.group,
            self.version,
            &self.parent,
            &self.author,
            &self.change,
        ))
        .unwrap_or_default();
        [CHANGE_CONTEXT, &body].concat()
    }

    /// The change's hash: what orders concurrent changes.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::new()
            .chain_update(self.signed_bytes())
            .chain_update(self.signature.to_bytes())
            .finalize()
            .into()
    }

    fn verify(&self, author_key: &IdentityKey) -> Result<(), GroupError> {
        author_key
            .verifying_key()
            .verify(&self.signed_bytes(), &self.signature)
            .map_err(|_| GroupError::BadSignature)
    }
}

/// How concurrent changes are ordered: the smallest wins (see the module documentation).
type OrderKey = (u8, usize, [u8; 32]);

fn order_key(signed: &SignedChange, parent: &GroupState) -> OrderKey {
    let removes_admin =
        matches!(&signed.change, Change::Remove(users) if users.iter().any(|u| parent.is_admin(u)));
    let seniority = parent
        .admins
        .iter()
        .position(|a| *a == signed.author)
        .unwrap_or(parent.admins.len());
    (u8::from(!removes_admin), seniority, signed.hash())
}

/// A group and how it came to be: its state, and for each of the last [`MAX_LOG`] changes the
/// state it was made on and its order key (so that a concurrent change that wins can replace it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    state: GroupState,
    log: Vec<(GroupState, OrderKey)>,
}

impl Group {
    /// A group from its creation, checked against its author's key.
    pub fn create(signed: &SignedChange, author_key: &IdentityKey) -> Result<Self, GroupError> {
        signed.verify(author_key)?;
        let Change::Create { name, members } = &signed.change else {
            return Err(GroupError::Invalid("a group begins with its creation"));
        };
        if signed.version != 1 || signed.parent != [0; 32] {
            return Err(GroupError::Invalid("a creation is version 1 of no state"));
        }
        check_name(name)?;
        let mut all: BTreeSet<Username> = members.iter().cloned().collect();
        all.insert(signed.author.clone());
        if all.len() > MAX_MEMBERS {
            return Err(GroupError::TooManyMembers);
        }
        Ok(Self {
            state: GroupState {
                id: signed.group,
                name: name.clone(),
                members: all,
                admins: vec![signed.author.clone()],
                version: 1,
            },
            log: Vec::new(),
        })
    }

    /// A group joined at `state`, as the admin adding us described it (we hold no earlier
    /// state to check it against). The state is checked for its bounds.
    pub fn joined(state: GroupState) -> Result<Self, GroupError> {
        check_name(&state.name)?;
        if state.members.len() > MAX_MEMBERS {
            return Err(GroupError::TooManyMembers);
        }
        if state.admins.is_empty() || state.admins.iter().any(|a| !state.members.contains(a)) {
            return Err(GroupError::Invalid("admins are members, and there is one"));
        }
        Ok(Self {
            state,
            log: Vec::new(),
        })
    }

    /// The current state.
    pub fn state(&self) -> &GroupState {
        &self.state
    }

    /// Applies `signed` (checked against its author's pinned key) by the rules in the module
    /// documentation; on error nothing changes.
    pub fn apply(
        &mut self,
        signed: &SignedChange,
        author_key: &IdentityKey,
    ) -> Result<(), GroupError> {
        if signed.group != self.state.id {
            return Err(GroupError::WrongGroup);
        }
        signed.verify(author_key)?;
        let have = self.state.version;
        if signed.version == have + 1 {
            if signed.parent != self.state.digest() {
                return Err(GroupError::WrongParent);
            }
            let next = next_state(&self.state, signed)?;
            let key = order_key(signed, &self.state);
            let before = std::mem::replace(&mut self.state, next);
            self.log.push((before, key));
            if self.log.len() > MAX_LOG {
                self.log.remove(0);
            }
            return Ok(());
        }
        if signed.version > have {
            return Err(GroupError::Gap {
                have,
                got: signed.version,
            });
        }
        // Concurrent with a change we applied (the one that made `signed.version`)?
        let stale = GroupError::Stale {
            have,
            got: signed.version,
        };
        let Some(at) = self
            .log
            .iter()
            .position(|(before, _)| before.version + 1 == signed.version)
        else {
            return Err(stale);
        };
        let (before, applied) = &self.log[at];
        if signed.parent != before.digest() {
            return Err(GroupError::WrongParent);
        }
        let key = order_key(signed, before);
        if key == *applied {
            return Err(GroupError::Duplicate);
        }
        if key > *applied {
            return Err(GroupError::Lost);
        }
        let next = next_state(before, signed)?;
        // It wins, unless it would undo history in which its author stopped being an admin.
        let removed = self.log[at + 1..]
            .iter()
            .map(|(state, _)| state)
            .chain([&self.state])
            .any(|state| !state.is_admin(&signed.author));
        if removed {
            return Err(GroupError::NotAllowed(signed.author.clone()));
        }
        // The loser, and whatever was built on it, give way.
        let before = before.clone();
        self.log.truncate(at);
        self.log.push((before, key));
        self.state = next;
        Ok(())
    }
}

fn check_name(name: &str) -> Result<(), GroupError> {
    if name.trim().is_empty() || name.len() > MAX_NAME_BYTES || name.chars().any(char::is_control) {
        return Err(GroupError::BadName);
    }
    Ok(())
}

/// The state after `signed` on `state`, if its author may make it there.
fn next_state(state: &GroupState, signed: &SignedChange) -> Result<GroupState, GroupError> {
    let author = &signed.author;
    if !state.members.contains(author) {
        return Err(GroupError::NotAllowed(author.clone()));
    }
    let admin_only = !matches!(signed.change, Change::Leave);
    if admin_only && !state.is_admin(author) {
        return Err(GroupError::NotAllowed(author.clone()));
    }
    let mut next = state.clone();
    next.version = signed.version;
    match &signed.change {
        Change::Create { .. } => return Err(GroupError::Invalid("the group exists")),
        Change::Add(users) => {
            if users.is_empty() || users.iter().any(|u| state.members.contains(u)) {
                return Err(GroupError::Invalid("add names no one, or a member"));
            }
            next.members.extend(users.iter().cloned());
            if next.members.len() > MAX_MEMBERS {
                return Err(GroupError::TooManyMembers);
            }
        }
        Change::Remove(users) => {
            if users.is_empty() || users.iter().any(|u| !state.members.contains(u)) {
                return Err(GroupError::Invalid("remove names no one, or a non-member"));
            }
            // Admins remove only admins junior to them (and never themselves: that is leaving).
            let rank = |u: &Username| state.admins.iter().position(|a| a == u);
            if users
                .iter()
                .any(|u| rank(u).is_some_and(|r| Some(r) <= rank(author)))
            {
                return Err(GroupError::NotAllowed(author.clone()));
            }
            for user in users {
                next.members.remove(user);
            }
            next.admins.retain(|a| next.members.contains(a));
        }
        Change::Leave => {
            next.members.remove(author);
            next.admins.retain(|a| a != author);
        }
        Change::Promote(user) => {
            if !state.members.contains(user) || state.is_admin(user) {
                return Err(GroupError::Invalid(
                    "promote names a non-member or an admin",
                ));
            }
            next.admins.push(user.clone());
        }
        Change::Rename(name) => {
            check_name(name)?;
            next.name = name.clone();
        }
    }
    // A group is never left without an admin: the first remaining member (by name) becomes one.
    if next.admins.is_empty()
        && let Some(first) = next.members.iter().next()
    {
        next.admins.push(first.clone());
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use rand::rngs::OsRng;

    fn user(name: &str) -> Username {
        Username::new(name).unwrap()
    }

    struct Person {
        name: Username,
        key: IdentityKeyPair,
    }

    impl Person {
        fn new(name: &str) -> Self {
            Self {
                name: user(name),
                key: IdentityKeyPair::generate(&mut OsRng),
            }
        }

        fn sign(&self, group: &Group, change: Change) -> SignedChange {
            SignedChange::sign(
                &self.key,
                self.name.clone(),
                group.state().id,
                Some(group.state()),
                change,
            )
        }
    }

    /// Alice creates a group with bob and carol.
    fn group_of_three() -> (Person, Person, Person, Group) {
        let (alice, bob, carol) = (
            Person::new("alice"),
            Person::new("bob"),
            Person::new("carol"),
        );
        let create = SignedChange::sign(
            &alice.key,
            alice.name.clone(),
            GroupId::random(&mut OsRng),
            None,
            Change::Create {
                name: "friends".into(),
                members: vec![bob.name.clone(), carol.name.clone()],
            },
        );
        let group = Group::create(&create, alice.key.public()).unwrap();
        (alice, bob, carol, group)
    }

    #[test]
    fn the_creator_is_the_first_admin_and_admins_change_the_group() {
        let (alice, bob, carol, mut group) = group_of_three();
        assert_eq!(group.state().admins, vec![alice.name.clone()]);
        assert_eq!(group.state().members.len(), 3);
        let dave = user("dave");
        let add = alice.sign(&group, Change::Add(vec![dave.clone()]));
        group.apply(&add, alice.key.public()).unwrap();
        assert!(group.state().members.contains(&dave));
        assert_eq!(group.state().version, 2);
        let promote = alice.sign(&group, Change::Promote(bob.name.clone()));
        group.apply(&promote, alice.key.public()).unwrap();
        let rename = bob.sign(&group, Change::Rename("old friends".into()));
        group.apply(&rename, bob.key.public()).unwrap();
        assert_eq!(group.state().name, "old friends");
        let remove = bob.sign(&group, Change::Remove(vec![carol.name.clone()]));
        group.apply(&remove, bob.key.public()).unwrap();
        assert!(!group.state().members.contains(&carol.name));
        assert_eq!(group.state().version, 5);
    }

    #[test]
    fn a_change_by_a_non_admin_a_forged_signature_or_a_bad_version_changes_nothing() {
        let (alice, bob, carol, mut group) = group_of_three();
        let before = group.clone();
        let by_bob = bob.sign(&group, Change::Remove(vec![carol.name.clone()]));
        assert_eq!(
            group.apply(&by_bob, bob.key.public()),
            Err(GroupError::NotAllowed(bob.name.clone()))
        );
        // Signed by bob, claimed to be alice's.
        let mut forged = by_bob.clone();
        forged.author = alice.name.clone();
        assert_eq!(
            group.apply(&forged, alice.key.public()),
            Err(GroupError::BadSignature)
        );
        // Checked against someone else's key.
        let add = alice.sign(&group, Change::Add(vec![user("dave")]));
        assert_eq!(
            group.apply(&add, bob.key.public()),
            Err(GroupError::BadSignature)
        );
        // A version from the future, and a tampered one.
        let mut ahead = add.clone();
        ahead.version = 5;
        assert_eq!(
            group.apply(&ahead, alice.key.public()),
            Err(GroupError::BadSignature)
        );
        let mut far = alice.sign(&group, Change::Rename("x".into()));
        far.version = 7;
        far.signature = alice.key.signing_key().sign(&far.signed_bytes());
        assert_eq!(
            group.apply(&far, alice.key.public()),
            Err(GroupError::Gap { have: 1, got: 7 })
        );
        // Nonsense: adding a member twice, a name with a control character, too many members.
        let twice = alice.sign(&group, Change::Add(vec![bob.name.clone()]));
        assert!(matches!(
            group.apply(&twice, alice.key.public()),
            Err(GroupError::Invalid(_))
        ));
        let bad_name = alice.sign(&group, Change::Rename("a\u{7}b".into()));
        assert_eq!(
            group.apply(&bad_name, alice.key.public()),
            Err(GroupError::BadName)
        );
        let crowd = (0..MAX_MEMBERS)
            .map(|i| user(&format!("user{i:03}")))
            .collect();
        let crowd = alice.sign(&group, Change::Add(crowd));
        assert_eq!(
            group.apply(&crowd, alice.key.public()),
            Err(GroupError::TooManyMembers)
        );
        assert_eq!(group, before);
        // A removed member's later change is refused.
        let remove = alice.sign(&group, Change::Remove(vec![carol.name.clone()]));
        group.apply(&remove, alice.key.public()).unwrap();
        let after = group.clone();
        let leave = carol.sign(&group, Change::Leave);
        assert_eq!(
            group.apply(&leave, carol.key.public()),
            Err(GroupError::NotAllowed(carol.name.clone()))
        );
        assert_eq!(group, after);
    }

    #[test]
    fn concurrent_changes_by_two_admins_converge_whatever_the_order() {
        let (alice, bob, carol, mut base) = group_of_three();
        let promote = alice.sign(&base, Change::Promote(bob.name.clone()));
        base.apply(&promote, alice.key.public()).unwrap();
        // On the same state, alice renames and bob removes carol.
        let rename = alice.sign(&base, Change::Rename("renamed".into()));
        let remove = bob.sign(&base, Change::Remove(vec![carol.name.clone()]));
        let keys = [(&rename, alice.key.public()), (&remove, bob.key.public())];

        let mut first = base.clone();
        let mut second = base.clone();
        for (change, key) in keys {
            let _ = first.apply(change, key);
        }
        for (change, key) in keys.iter().rev() {
            let _ = second.apply(change, key);
        }
        assert_eq!(first.state(), second.state());
        // The smaller key won: both are by admins, alice is the senior one.
        let winner = if order_key(&rename, base.state()) < order_key(&remove, base.state()) {
            &rename
        } else {
            &remove
        };
        assert_eq!(winner, &rename);
        let mut only = base.clone();
        only.apply(
            winner,
            if winner == &rename {
                alice.key.public()
            } else {
                bob.key.public()
            },
        )
        .unwrap();
        assert_eq!(first.state(), only.state());
        // Applying either again changes nothing.
        let settled = first.clone();
        for (change, key) in keys {
            assert!(first.apply(change, key).is_err());
        }
        assert_eq!(first, settled);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]

        /// Any number of concurrent changes on one state, from two admins, arriving in any order:
        /// every member ends in the same state, the one the smallest key makes.
        #[test]
        fn any_arrival_order_of_concurrent_changes_gives_one_state(
            names in proptest::collection::vec("[a-z]{1,8}", 1..5),
            order in proptest::collection::vec(0usize..100, 5),
        ) {
            let (alice, bob, _carol, mut base) = group_of_three();
            let promote = alice.sign(&base, Change::Promote(bob.name.clone()));
            base.apply(&promote, alice.key.public()).unwrap();
            let changes: Vec<(SignedChange, &IdentityKey)> = names
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let by = if i % 2 == 0 { &alice } else { &bob };
                    (by.sign(&base, Change::Rename(name.clone())), by.key.public())
                })
                .collect();
            let mut shuffled: Vec<usize> = (0..changes.len()).collect();
            for (i, r) in order.iter().enumerate().take(changes.len()) {
                shuffled.swap(i, r % changes.len());
            }
            let mut in_order = base.clone();
            for (change, key) in &changes {
                let _ = in_order.apply(change, key);
            }
            let mut reordered = base.clone();
            for &i in &shuffled {
                let _ = reordered.apply(&changes[i].0, changes[i].1);
            }
            let (winner, key) = changes
                .iter()
                .min_by_key(|(c, _)| order_key(c, base.state()))
                .unwrap();
            let mut only = base.clone();
            only.apply(winner, key).unwrap();
            proptest::prop_assert_eq!(in_order.state(), reordered.state());
            proptest::prop_assert_eq!(in_order.state(), only.state());
        }
    }

    #[test]
    fn a_winning_change_replaces_the_loser_and_what_was_built_on_it() {
        let (alice, bob, _carol, mut base) = group_of_three();
        let promote = alice.sign(&base, Change::Promote(bob.name.clone()));
        base.apply(&promote, alice.key.public()).unwrap();
        // Alice and bob rename at once; whoever loses also changes the group on top of its own.
        let mut renames = [
            (alice.sign(&base, Change::Rename("by alice".into())), &alice),
            (bob.sign(&base, Change::Rename("by bob".into())), &bob),
        ];
        renames.sort_by_key(|(c, _)| order_key(c, base.state()));
        let [(winner, winner_by), (loser, loser_by)] = renames;
        let mut at_loser = base.clone();
        at_loser.apply(&loser, loser_by.key.public()).unwrap();
        let on_top = loser_by.sign(&at_loser, Change::Add(vec![user("dave")]));
        at_loser.apply(&on_top, loser_by.key.public()).unwrap();
        assert_eq!(at_loser.state().version, 4);
        // Everyone else applied the winner only and refuses what was built on the loser.
        let mut elsewhere = base.clone();
        elsewhere.apply(&winner, winner_by.key.public()).unwrap();
        assert_eq!(
            elsewhere.apply(&on_top, loser_by.key.public()),
            Err(GroupError::WrongParent)
        );
        // The winner reaches the loser's author: both changes give way.
        at_loser.apply(&winner, winner_by.key.public()).unwrap();
        assert_eq!(at_loser.state(), elsewhere.state());
        assert!(!at_loser.state().members.contains(&user("dave")));
    }

    #[test]
    fn a_removal_sticks_against_the_removed_admins_changes() {
        let (alice, bob, carol, mut group) = group_of_three();
        // Admins in seniority: alice, carol, bob.
        for user in [&carol, &bob] {
            let promote = alice.sign(&group, Change::Promote(user.name.clone()));
            group.apply(&promote, alice.key.public()).unwrap();
        }
        // A junior admin may not remove a senior one.
        let coup = bob.sign(&group, Change::Remove(vec![carol.name.clone()]));
        assert_eq!(
            group.clone().apply(&coup, bob.key.public()),
            Err(GroupError::NotAllowed(bob.name.clone()))
        );
        // Whatever carol signs on the state her removal was made on loses to it, in either order
        // (hashes cannot be ground past it).
        let before = group.clone();
        let removal = alice.sign(&before, Change::Remove(vec![carol.name.clone()]));
        for i in 0..20 {
            let counter = carol.sign(&before, Change::Rename(format!("mine {i}")));
            let mut removal_first = before.clone();
            removal_first.apply(&removal, alice.key.public()).unwrap();
            assert!(removal_first.apply(&counter, carol.key.public()).is_err());
            let mut counter_first = before.clone();
            counter_first.apply(&counter, carol.key.public()).unwrap();
            counter_first.apply(&removal, alice.key.public()).unwrap();
            assert_eq!(removal_first.state(), counter_first.state());
            assert!(!counter_first.state().members.contains(&carol.name));
        }
        // After a change by bob (her junior) and then her removal, carol signs on the state
        // before bob's change: her change would win that race, but it would undo her removal.
        let mut group = before.clone();
        let rename = bob.sign(&group, Change::Rename("by bob".into()));
        group.apply(&rename, bob.key.public()).unwrap();
        let removal = alice.sign(&group, Change::Remove(vec![carol.name.clone()]));
        group.apply(&removal, alice.key.public()).unwrap();
        let after = group.clone();
        for i in 0..20 {
            let late = carol.sign(&before, Change::Rename(format!("late {i}")));
            assert!(order_key(&late, before.state()) < order_key(&rename, before.state()));
            assert_eq!(
                group.apply(&late, carol.key.public()),
                Err(GroupError::NotAllowed(carol.name.clone()))
            );
            assert_eq!(group, after);
        }
    }

    #[test]
    fn a_joined_state_is_checked_for_its_bounds() {
        let (_alice, _bob, _carol, group) = group_of_three();
        let mut state = group.state().clone();
        assert!(Group::joined(state.clone()).is_ok());
        state.admins = vec![user("stranger")];
        assert!(Group::joined(state.clone()).is_err());
        state.admins.clear();
        assert!(Group::joined(state).is_err());
    }

    #[test]
    fn the_last_admin_leaving_hands_the_group_to_the_first_member() {
        let (alice, bob, _carol, mut group) = group_of_three();
        let leave = alice.sign(&group, Change::Leave);
        group.apply(&leave, alice.key.public()).unwrap();
        assert_eq!(group.state().admins, vec![bob.name.clone()]);
        assert!(!group.state().members.contains(&alice.name));
    }
}
