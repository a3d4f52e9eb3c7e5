//! The people this node knows by name, beyond their keys: whether the user took up a
//! conversation with them (else their messages are a request), whether the user blocked them,
//! and the profile they shared.

use peerchat_pki::Username;
use serde::{Deserialize, Serialize};

/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 64;
/// Largest avatar image, in bytes: one profile travels in one envelope, which must also fit
/// through the rendezvous's mailbox.
pub const MAX_AVATAR_BYTES: usize = 128 * 1024;

/// Why a profile is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    /// Blank, too long, or with control characters.
    #[error(
        "a display name is 1 to {MAX_DISPLAY_NAME_CHARS} characters, without control characters"
    )]
    BadDisplayName,
    /// Larger than [`MAX_AVATAR_BYTES`].
    #[error("an avatar is at most {} KB", MAX_AVATAR_BYTES / 1024)]
    AvatarTooLarge,
    /// Not a PNG, JPEG, GIF or WebP image.
    #[error("an avatar is a PNG, JPEG, GIF or WebP image")]
    NotAnImage,
}

/// What a person shares about themselves with their contacts (inside the ratchet only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// The name they want to be shown by.
    pub display_name: String,
    /// A small picture, if any.
    pub avatar: Option<Avatar>,
    /// When they last changed it, ms since the epoch on their clock: a receiver keeps the
    /// newest.
    pub updated_at_ms: u64,
}

/// An avatar image, its type taken from its bytes (never from what a sender claims).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Avatar {
    /// The image.
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

impl Avatar {
    /// The image's media type, from its first bytes.
    pub fn media_type(&self) -> Option<&'static str> {
        let b = &self.bytes;
        if b.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some("image/png")
        } else if b.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some("image/jpeg")
        } else if b.starts_with(b"GIF87a") || b.starts_with(b"GIF89a") {
            Some("image/gif")
        } else if b.len() >= 12 && b.starts_with(b"RIFF") && &b[8..12] == b"WEBP" {
            Some("image/webp")
        } else {
            None
        }
    }
}

impl Profile {
    /// A profile, checked.
    pub fn new(
        display_name: &str,
        avatar: Option<Vec<u8>>,
        updated_at_ms: u64,
    ) -> Result<Self, ProfileError> {
        let profile = Self {
            display_name: display_name.trim().to_owned(),
            avatar: avatar.map(|bytes| Avatar { bytes }),
            updated_at_ms,
        };
        profile.validate()?;
        Ok(profile)
    }

    /// Checks the bounds (a received profile is checked the same way).
    pub fn validate(&self) -> Result<(), ProfileError> {
        let name = &self.display_name;
        if name.trim().is_empty()
            || name.trim() != name
            || name.chars().count() > MAX_DISPLAY_NAME_CHARS
            || name.chars().any(char::is_control)
        {
            return Err(ProfileError::BadDisplayName);
        }
        if let Some(avatar) = &self.avatar {
            if avatar.bytes.len() > MAX_AVATAR_BYTES {
                return Err(ProfileError::AvatarTooLarge);
            }
            if avatar.media_type().is_none() {
                return Err(ProfileError::NotAnImage);
            }
        }
        Ok(())
    }
}

/// What the user decided about someone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    /// Who.
    pub username: Username,
    /// The user wrote to them, or accepted their request: their messages are a conversation,
    /// and they get read receipts, typing and our profile.
    pub accepted: bool,
    /// The user blocked them: their messages are dropped unanswered, and nothing of ours goes to
    /// them.
    pub blocked: bool,
    /// The profile they shared, the newest received.
    pub profile: Option<Profile>,
    /// The version ([`Profile::updated_at_ms`]) of our profile last queued for them.
    #[serde(default)]
    pub profile_sent_ms: u64,
}

impl Person {
    /// Someone new, neither accepted nor blocked.
    pub fn new(username: Username) -> Self {
        Self {
            username,
            accepted: false,
            blocked: false,
            profile: None,
            profile_sent_ms: 0,
        }
    }

    /// Someone whose first message arrived before the user wrote to them: a request.
    pub fn is_request(&self) -> bool {
        !self.accepted && !self.blocked
    }

    /// Keeps `profile` if it is newer than the one held; whether it was.
    pub fn take_profile(&mut self, profile: Profile) -> bool {
        if self
            .profile
            .as_ref()
            .is_some_and(|p| p.updated_at_ms >= profile.updated_at_ms)
        {
            return false;
        }
        self.profile = Some(profile);
        true
    }
}

/// Where someone stands, from their record and whether they are a contact (someone we have a
/// pinned key for). A contact from before requests were kept has no record and counts as
/// accepted; someone unknown is a stranger, whose first message makes a request.
pub fn standing(person: Option<&Person>, contact: bool) -> Standing {
    match person {
        Some(p) if p.blocked => Standing::Blocked,
        Some(p) if p.accepted => Standing::Accepted,
        Some(_) => Standing::Request,
        None if contact => Standing::Accepted,
        None => Standing::Stranger,
    }
}

/// Where someone stands with the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Never wrote, never written to.
    Stranger,
    /// Wrote first; the user has not answered or accepted.
    Request,
    /// A conversation the user took up.
    Accepted,
    /// Blocked by the user.
    Blocked,
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

    #[test]
    fn a_display_name_is_short_and_printable() {
        assert!(Profile::new("Alice Liddell", None, 1).is_ok());
        assert_eq!(
            Profile::new("  Alice  ", None, 1).unwrap().display_name,
            "Alice"
        );
        for bad in ["", "   ", "a\u{7}b", "line\nbreak", &"x".repeat(65)] {
            assert_eq!(
                Profile::new(bad, None, 1),
                Err(ProfileError::BadDisplayName),
                "{bad:?}"
            );
        }
        assert!(Profile::new(&"é".repeat(64), None, 1).is_ok());
    }

    #[test]
    fn an_avatar_is_a_small_raster_image_judged_by_its_bytes() {
        assert!(Profile::new("A", Some(PNG.to_vec()), 1).is_ok());
        let svg = b"<svg xmlns='http://www.w3.org/2000/svg'><script/></svg>".to_vec();
        assert_eq!(
            Profile::new("A", Some(svg), 1),
            Err(ProfileError::NotAnImage)
        );
        let mut big = PNG.to_vec();
        big.resize(MAX_AVATAR_BYTES + 1, 0);
        assert_eq!(
            Profile::new("A", Some(big), 1),
            Err(ProfileError::AvatarTooLarge)
        );
        let jpeg = Avatar {
            bytes: vec![0xFF, 0xD8, 0xFF, 0xE0],
        };
        assert_eq!(jpeg.media_type(), Some("image/jpeg"));
    }

    #[test]
    fn the_newest_profile_is_kept() {
        let mut p = Person::new(Username::new("dora").unwrap());
        assert!(p.take_profile(Profile::new("Dora", None, 5).unwrap()));
        assert!(!p.take_profile(Profile::new("Old", None, 4).unwrap()));
        assert!(!p.take_profile(Profile::new("Same time", None, 5).unwrap()));
        assert!(p.take_profile(Profile::new("Dora E.", None, 6).unwrap()));
        assert_eq!(p.profile.unwrap().display_name, "Dora E.");
    }

    #[test]
    fn standing_follows_the_record_and_old_contacts_count_as_accepted() {
        let mut p = Person::new(Username::new("dora").unwrap());
        assert_eq!(standing(Some(&p), true), Standing::Request);
        assert!(p.is_request());
        p.accepted = true;
        assert_eq!(standing(Some(&p), true), Standing::Accepted);
        p.blocked = true;
        assert_eq!(standing(Some(&p), true), Standing::Blocked);
        assert!(!p.is_request());
        assert_eq!(standing(None, true), Standing::Accepted);
        assert_eq!(standing(None, false), Standing::Stranger);
    }
}
