//! Who and where: an [`Address`] is one device of one user (sessions, pinned keys and outbox
//! entries are per device), and a [`ConversationId`] names a conversation (messages are kept per
//! conversation).
//!
//! Both have a text form that is also how they are stored: `alice` for alice's first device and
//! the direct conversation with alice, `alice/2` for her second device, `#` and 32 hex digits for
//! a group. Usernames contain neither `/` nor `#`, so the forms never collide, and what was
//! stored under a bare username before devices existed reads as the first device.

use std::fmt;
use std::str::FromStr;

use peerchat_pki::Username;

use super::ids::GroupId;

/// One of a user's devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(pub u32);

impl DeviceId {
    /// The device a user registered with (the only one for now).
    pub const FIRST: DeviceId = DeviceId(1);
}

/// One device of one user: where a session leads and an envelope goes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address {
    /// The user.
    pub user: Username,
    /// The device.
    pub device: DeviceId,
}

impl Address {
    /// `user`'s first device.
    pub fn first(user: Username) -> Self {
        Self {
            user,
            device: DeviceId::FIRST,
        }
    }
}

impl From<Username> for Address {
    fn from(user: Username) -> Self {
        Self::first(user)
    }
}

impl From<&Username> for Address {
    fn from(user: &Username) -> Self {
        Self::first(user.clone())
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.device == DeviceId::FIRST {
            write!(f, "{}", self.user)
        } else {
            write!(f, "{}/{}", self.user, self.device.0)
        }
    }
}

/// Why a text is not an address or a conversation id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an address: {0:?}")]
pub struct BadAddress(String);

impl FromStr for Address {
    type Err = BadAddress;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadAddress(s.chars().take(64).collect());
        let (user, device) = match s.split_once('/') {
            Some((user, device)) => {
                let device: u32 = device.parse().map_err(|_| bad())?;
                if device == 0 || device == DeviceId::FIRST.0 {
                    // One text per address: the first device is the bare name.
                    return Err(bad());
                }
                (user, DeviceId(device))
            }
            None => (s, DeviceId::FIRST),
        };
        Ok(Self {
            user: Username::new(user).map_err(|_| bad())?,
            device,
        })
    }
}

impl serde::Serialize for Address {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Address {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A conversation: with one person, or a group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConversationId {
    /// The conversation with one user (all of their devices).
    Direct(Username),
    /// A group's conversation.
    Group(GroupId),
}

impl ConversationId {
    /// The person at the other end of a direct conversation.
    pub fn peer(&self) -> Option<&Username> {
        match self {
            Self::Direct(user) => Some(user),
            Self::Group(_) => None,
        }
    }

    /// The group, for a group's conversation.
    pub fn group(&self) -> Option<GroupId> {
        match self {
            Self::Direct(_) => None,
            Self::Group(group) => Some(*group),
        }
    }
}

impl From<GroupId> for ConversationId {
    fn from(group: GroupId) -> Self {
        Self::Group(group)
    }
}

impl From<Username> for ConversationId {
    fn from(user: Username) -> Self {
        Self::Direct(user)
    }
}

impl From<&Username> for ConversationId {
    fn from(user: &Username) -> Self {
        Self::Direct(user.clone())
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Direct(user) => write!(f, "{user}"),
            Self::Group(group) => write!(f, "#{group}"),
        }
    }
}

impl FromStr for ConversationId {
    type Err = BadAddress;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadAddress(s.chars().take(64).collect());
        match s.strip_prefix('#') {
            Some(group) if group.len() == 32 => group.parse().map(Self::Group).map_err(|_| bad()),
            Some(_) => Err(bad()),
            None => Username::new(s).map(Self::Direct).map_err(|_| bad()),
        }
    }
}

impl serde::Serialize for ConversationId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ConversationId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn alice() -> Username {
        Username::new("alice").unwrap()
    }

    #[test]
    fn the_first_device_is_stored_as_the_bare_username() {
        let first = Address::first(alice());
        assert_eq!(first.to_string(), "alice");
        // What was stored as a username before devices existed reads as the first device.
        let stored = postcard::to_stdvec(&alice()).unwrap();
        assert_eq!(postcard::from_bytes::<Address>(&stored).unwrap(), first);
        assert_eq!(postcard::to_stdvec(&first).unwrap(), stored);
    }

    #[test]
    fn other_devices_round_trip_and_bad_texts_are_refused() {
        let second = Address {
            user: alice(),
            device: DeviceId(2),
        };
        assert_eq!(second.to_string(), "alice/2");
        assert_eq!("alice/2".parse::<Address>().unwrap(), second);
        for bad in [
            "alice/1",
            "alice/0",
            "alice/x",
            "Alice",
            "",
            "alice/2/3",
            "/2",
        ] {
            assert!(bad.parse::<Address>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&second).unwrap();
        assert_eq!(serde_json::from_str::<Address>(&json).unwrap(), second);
    }

    #[test]
    fn a_direct_conversation_is_named_by_the_peer() {
        let direct = ConversationId::from(alice());
        assert_eq!(direct.to_string(), "alice");
        assert_eq!(direct.peer(), Some(&alice()));
        assert_eq!(
            postcard::to_stdvec(&direct).unwrap(),
            postcard::to_stdvec(&alice()).unwrap()
        );
        assert!("#group".parse::<ConversationId>().is_err());
    }

    #[test]
    fn a_group_conversation_is_a_hash_and_the_group_id() {
        let id = GroupId::from_bytes([0xab; 16]);
        let group = ConversationId::from(id);
        assert_eq!(group.to_string(), format!("#{}", "ab".repeat(16)));
        assert_eq!(group.to_string().parse::<ConversationId>().unwrap(), group);
        assert_eq!((group.peer(), group.group()), (None, Some(id)));
        for bad in [
            "#".to_string(),
            format!("# {}", "ab".repeat(16)),
            format!("#{}", "ab".repeat(17)),
            format!("#{}", "xy".repeat(16)),
        ] {
            assert!(bad.parse::<ConversationId>().is_err(), "{bad}");
        }
    }
}
