//! The first inputs of every target: one valid example of each thing it decodes, so that the
//! fuzzer starts from the accepted paths and mutates outwards.

use peerchat::domain::group::{Change, SignedChange};
use peerchat::domain::{Ack, Amendment, Content, Envelope, GroupId, GroupRef, MessageId, Profile};
use peerchat::usecases::{FileAnswer, FileRequest};
use peerchat_pki::Username;

use crate::Fixture;

fn framed(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

fn user(name: &str) -> Username {
    Username::new(name).expect("a username")
}

fn contents() -> Vec<Content> {
    let fixture = Fixture::get();
    let id = MessageId::from_bytes([1; 16]);
    let group = GroupId::from_bytes([2; 16]);
    let change = SignedChange::sign(
        &fixture.bob_identity,
        user("bob"),
        group,
        None,
        Change::Create {
            name: "friends".into(),
            members: vec![user("alice"), user("carol")],
        },
    );
    vec![
        Content::Text {
            id,
            sent_at_ms: 1_800_000_000_000,
            body: "hello, how are you?".into(),
        },
        Content::DeliveryReceipt { ids: vec![id] },
        Content::ReadReceipt { ids: vec![id, id] },
        Content::GroupChange {
            base: None,
            change: Box::new(change),
        },
        Content::GroupText {
            group,
            version: 1,
            id,
            sent_at_ms: 1,
            body: "to the group".into(),
        },
        Content::GroupReceipt {
            group,
            ids: vec![id],
            read: true,
        },
        Content::FileOffer {
            offer: Box::new(fixture.offer.clone()),
            group: Some(group),
        },
        Content::Reply {
            group: Some(GroupRef { group, version: 1 }),
            id,
            sent_at_ms: 2,
            body: "a reply".into(),
            reply_to: MessageId::from_bytes([3; 16]),
        },
        Content::Amend {
            group: None,
            target: id,
            at_ms: 3,
            amendment: Amendment::Edit {
                body: "edited".into(),
            },
        },
        Content::Amend {
            group: None,
            target: id,
            at_ms: 3,
            amendment: Amendment::React {
                emoji: Some("👍".into()),
            },
        },
        Content::Profile {
            profile: Box::new(Profile {
                display_name: "Alice A.".into(),
                avatar: None,
                updated_at_ms: 4,
            }),
        },
        Content::Typing {
            group: None,
            typing: true,
        },
    ]
}

fn json(selector: u8, body: &str) -> Vec<u8> {
    [&[selector][..], body.as_bytes()].concat()
}

/// The seed inputs of the target `name`.
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    let fixture = Fixture::get();
    let envelope = Envelope {
        id: MessageId::from_bytes([5; 16]),
        trace: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        payload: fixture.later_messages[0].clone(),
    };
    match name {
        "envelope" => vec![envelope.encode(), Ack::Stored.encode()],
        "frame" => vec![framed(&envelope.encode()), framed(&Ack::Stored.encode())],
        "content" => contents()
            .iter()
            .map(|c| c.encode().expect("a valid content"))
            .collect(),
        "ratchet" => [fixture.first_message.clone()]
            .into_iter()
            .chain(fixture.later_messages.iter().cloned())
            .collect(),
        "csr" => {
            let key = peerchat_pki::SigningKey::from_bytes(&[8; 32]);
            vec![peerchat_pki::build_csr(&key, &fixture.alice).expect("CSR")]
        }
        "certificate" => {
            let key = peerchat_pki::SigningKey::from_bytes(&[8; 32]);
            let csr = peerchat_pki::build_csr(&key, &fixture.alice).expect("CSR");
            let issued = fixture
                .ca
                .issue_peer(
                    &csr,
                    &fixture.alice,
                    fixture.now,
                    std::time::Duration::from_secs(3600),
                    &mut fixture.rng(),
                )
                .expect("issued");
            vec![
                issued.der.to_vec(),
                fixture.ca.certificate().der().to_vec(),
                fixture.crl.der().to_vec(),
            ]
        }
        "file" => {
            let request = postcard::to_stdvec(&FileRequest {
                id: fixture.offer.id,
                from: 1,
            })
            .expect("encodes");
            let answer = postcard::to_stdvec(&FileAnswer::Chunks { until: 3 }).expect("encodes");
            let offer = postcard::to_stdvec(&fixture.offer).expect("encodes");
            let mut chunk = vec![3u8];
            chunk.extend_from_slice(&1u32.to_be_bytes());
            chunk.extend_from_slice(&fixture.chunks[1]);
            vec![
                [&[0u8][..], &framed(&request)].concat(),
                [&[1u8][..], &framed(&answer)].concat(),
                [&[2u8][..], &offer].concat(),
                chunk,
            ]
        }
        "rendezvous_api" => vec![
            json(
                0,
                r#"{"username":"carol","password":"correct horse battery","csr":"AAAA"}"#,
            ),
            json(
                1,
                r#"{"username":"alice","password":"wrong","csr":"AAAA","totp":"123456"}"#,
            ),
            json(2, r#"{"code":"123456"}"#),
            json(3, r#"{"csr":"AAAA"}"#),
            json(4, r#"{"id":2,"public_key":"AAAA","signature":"AAAA"}"#),
            json(5, r#"{"keys":[{"id":7,"public_key":"AAAA"}]}"#),
            json(6, r#"{}"#),
            json(
                7,
                r#"{"addresses":["/ip4/127.0.0.1/tcp/4001"],"ttl_secs":60}"#,
            ),
            json(
                8,
                r#"{"id":"0123456789abcdef0123456789abcdef","envelope":"AAAA"}"#,
            ),
            json(
                9,
                r#"{"recipients":["bob"],"chunks":3,"chunk_bytes":16400}"#,
            ),
        ],
        "node_api" => vec![
            json(
                0,
                r#"{"username":"alice","password":"correct horse battery"}"#,
            ),
            json(1, r#"{"username":"alice","password":"x","totp":"123456"}"#),
            json(2, r#"{"code":"123456"}"#),
            json(3, r#"{"username":"bob"}"#),
            json(4, r#"{"to":"bob","text":"hi bob","reply_to":null}"#),
            json(5, r#"{"name":"friends","members":["bob"]}"#),
            json(6, r#"{"display_name":"Alice"}"#),
            json(7, r#"{"read_receipts":true,"typing":false}"#),
            json(8, r#"{"typing":true}"#),
            json(9, r#"{"number":"12345 67890"}"#),
        ],
        _ => Vec::new(),
    }
}
