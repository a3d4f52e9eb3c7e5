//! The CLI's client side: it finds the running daemon's API address and token in the data
//! directory and calls the API.

use std::path::Path;

pub mod archive;
pub mod people;

use peerchat_pki::Username;

use super::api::{
    ContactView, CreateGroupBody, FileView, GroupChangeBody, GroupSendBody, GroupView, LoginBody,
    MAX_PAGE, MessageView, RegisterBody, SafetyNumberView, SaveFileBody, SendAnswer, SendBody,
    SendFileBody, TotpCodeBody, VerifyBody,
};
use super::ui::UiLink;
use crate::ports::{MessageStatus, Path as ConnectionPath, TotpEnrolment};
use crate::usecases::{KeyKind, NodeStatus};

use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::api::ErrorView;
use crate::daemon::{API_ADDR_FILE, API_TOKEN_FILE};

/// A client of the local API.
#[derive(Debug)]
pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
    data_dir: std::path::PathBuf,
}

impl ApiClient {
    /// `http://address:port` of the API.
    pub fn base(&self) -> &str {
        &self.base
    }
}

/// A failed CLI call, as one line for people.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CliError(pub String);

impl ApiClient {
    /// Reads the address and token the daemon wrote into `data_dir`.
    pub fn from_data_dir(data_dir: &Path) -> Result<Self, CliError> {
        let read = |name: &str| {
            std::fs::read_to_string(data_dir.join(name))
                .map(|s| s.trim().to_owned())
                .map_err(|_| {
                    CliError(format!(
                        "no running daemon found in {} (start it with `{}`)",
                        data_dir.display(),
                        daemon_command(data_dir)
                    ))
                })
        };
        Ok(Self {
            data_dir: data_dir.to_path_buf(),
            base: format!("http://{}", read(API_ADDR_FILE)?),
            token: read(API_TOKEN_FILE)?,
            http: reqwest::Client::builder()
                .no_proxy()
                // Plain HTTP on loopback; reqwest still wants a TLS configuration to exist.
                .use_preconfigured_tls(plain_only_tls()?)
                .build()
                .map_err(|e| CliError(e.to_string()))?,
        })
    }

    /// Calls the API; an error answer becomes its message.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, CliError> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|_| {
            CliError(format!(
                "the daemon does not answer at {}; is it running?",
                self.base
            ))
        })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| CliError(e.to_string()))?;
        if status.is_success() {
            let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
            return serde_json::from_slice(bytes)
                .map_err(|e| CliError(format!("unexpected answer from the daemon: {e}")));
        }
        Err(CliError(
            match serde_json::from_slice::<ErrorView>(&bytes) {
                // The daemon cannot know how this CLI was started; the hint can.
                Ok(e) if e.error == "not_registered" => format!(
                    "this node is not registered yet; run `{}` (or `login NAME` for an existing account)",
                    hint(&self.data_dir, "register NAME")
                ),
                Ok(e) => e.message,
                Err(_) => format!("the daemon answered {status}"),
            },
        ))
    }
}

/// A TLS configuration that trusts nothing: the API is plain HTTP on loopback, so it is never used.
fn plain_only_tls() -> Result<rustls::ClientConfig, CliError> {
    Ok(
        rustls::ClientConfig::builder_with_provider(peerchat_pki::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| CliError(e.to_string()))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    )
}

impl ApiClient {
    /// Follows the daemon's event stream, calling `on_event` with each event's type and JSON data
    /// until the stream ends.
    pub async fn events(&self, mut on_event: impl FnMut(&str, &str)) -> Result<(), CliError> {
        let mut response = self
            .http
            .get(format!("{}/api/v1/events", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|_| {
                CliError(format!(
                    "the daemon does not answer at {}; is it running?",
                    self.base
                ))
            })?;
        if !response.status().is_success() {
            return Err(CliError(format!(
                "the daemon answered {}",
                response.status()
            )));
        }
        let mut buffer = String::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| CliError(e.to_string()))?
        {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let mut kind = "";
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(k) = line.strip_prefix("event:") {
                        kind = k.trim();
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.trim_start());
                    }
                }
                if !kind.is_empty() {
                    on_event(kind, &data);
                }
            }
        }
        Ok(())
    }
}

/// A command of the CLI (the binary parses them with clap and hands them over).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliCommand {
    /// Create an account.
    Register {
        /// The username.
        name: String,
    },
    /// Log in on a new install.
    Login {
        /// The username.
        name: String,
        /// The current code of the account's second factor, if it has one.
        totp: Option<String>,
    },
    /// Start enabling a second factor (prints the secret for an authenticator app).
    TotpEnable,
    /// Enable the second factor with a first code from the app.
    TotpConfirm {
        /// The code.
        code: String,
    },
    /// Open the chat window in the browser (a one-time link; printed if no browser opens).
    Ui {
        /// Only print the link.
        print_only: bool,
        /// `http://host:port` the browser reaches the API on, if not the daemon's own address.
        base: Option<String>,
    },
    /// Send a message.
    Send {
        /// The recipient.
        name: String,
        /// The text.
        text: String,
        /// The id of the message it replies to.
        reply_to: Option<String>,
    },
    /// Send a message to a group.
    SendGroup {
        /// The group's id.
        group: String,
        /// The text.
        text: String,
        /// The id of the message it replies to.
        reply_to: Option<String>,
    },
    /// Requests, blocking and profiles.
    People(people::PeopleCommand),
    /// Export and backups.
    Archive(archive::ArchiveCommand),
    /// Search every conversation's messages.
    Search {
        /// The text to find (case is ignored).
        text: String,
        /// JSON output.
        json: bool,
    },
    /// Edit or delete one of our messages, or react to a message.
    Amend {
        /// The conversation: a person, or a group's id.
        conversation: Conversation,
        /// The message's id.
        id: String,
        /// What to do.
        action: crate::driving::api::AmendBody,
    },
    /// Show a group's conversation.
    GroupHistory {
        /// The group's id.
        group: String,
        /// JSON output.
        json: bool,
    },
    /// Create, show or change groups.
    Group(GroupCommand),
    /// Offer a file.
    SendFile {
        /// The recipient.
        to: FileTarget,
        /// The file.
        path: std::path::PathBuf,
        /// Wait until it is fetched.
        wait: bool,
        /// Park it with the rendezvous even if the recipient is online.
        park: bool,
    },
    /// List files.
    Files {
        /// JSON output.
        json: bool,
    },
    /// Start fetching a file.
    FileAccept {
        /// The file's id.
        id: String,
    },
    /// Copy a fetched file.
    FileSave {
        /// The file's id.
        id: String,
        /// Where to.
        dest: std::path::PathBuf,
        /// Wait for the fetch.
        wait: bool,
    },
    /// Stop a file.
    FileCancel {
        /// The file's id.
        id: String,
    },
    /// Show a conversation.
    History {
        /// The other person.
        name: String,
        /// JSON output.
        json: bool,
    },
    /// List contacts.
    Contacts {
        /// JSON output.
        json: bool,
    },
    /// Who this node is.
    Status {
        /// JSON output.
        json: bool,
    },
    /// Follow events.
    Watch {
        /// JSON output.
        json: bool,
    },
    /// Revoke this node's certificate.
    Logout,
    /// Send a failed message again.
    Retry {
        /// The recipient.
        name: String,
        /// The message id.
        id: String,
    },
    /// Accept a contact's new key.
    AcceptKey {
        /// The contact.
        name: String,
    },
    /// Show a safety number.
    SafetyNumber {
        /// The contact.
        name: String,
    },
    /// Mark a contact verified.
    Verify {
        /// The contact.
        name: String,
        /// The safety number.
        number: String,
    },
}

/// Whom `send-file` offers a file to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileTarget {
    /// A person (a username as typed).
    Peer(String),
    /// A group (its id as typed).
    Group(String),
}

/// A `group` subcommand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupCommand {
    /// Create a group.
    Create {
        /// Its name.
        name: String,
        /// The other members.
        members: Vec<String>,
    },
    /// List groups.
    List {
        /// JSON output.
        json: bool,
    },
    /// Show a group.
    Show {
        /// The group's id.
        id: String,
        /// JSON output.
        json: bool,
    },
    /// Add members.
    Add {
        /// The group's id.
        id: String,
        /// Who.
        users: Vec<String>,
    },
    /// Remove members.
    Remove {
        /// The group's id.
        id: String,
        /// Who.
        users: Vec<String>,
    },
    /// Leave.
    Leave {
        /// The group's id.
        id: String,
    },
    /// Rename.
    Rename {
        /// The group's id.
        id: String,
        /// The new name.
        name: String,
    },
    /// Make a member an admin.
    Promote {
        /// The group's id.
        id: String,
        /// Who.
        user: String,
    },
}

/// A file id as typed: 32 hexadecimal digits.
fn file_id(raw: &str) -> Result<crate::domain::FileId, CliError> {
    raw.parse().map_err(|_| {
        CliError(format!(
            "{raw:?} is not a file id (32 hexadecimal digits, from `peerchat files`)"
        ))
    })
}

/// Waits until file `id` is fetched, by us (accepting it first) or by the peer we offered it
/// to, with a progress bar on a terminal.
async fn wait_for_file(client: &ApiClient, id: &crate::domain::FileId) -> Result<(), CliError> {
    use crate::ports::FileState;
    let path = format!("/api/v1/files/{id}");
    let mut file: FileView = client.call::<(), _>(Method::GET, &path, None).await?;
    if file.state == FileState::Offered && file.direction == crate::ports::Direction::Incoming {
        client
            .call::<(), ()>(Method::POST, &format!("{path}/accept"), None)
            .await?;
    }
    let bar = indicatif::ProgressBar::new(file.size);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bytes}/{total_bytes} {wide_bar} {bytes_per_sec}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    loop {
        bar.set_position(file.bytes_done);
        match file.state {
            FileState::Complete => {
                bar.finish_and_clear();
                return Ok(());
            }
            FileState::Failed => {
                bar.abandon();
                return Err(CliError(
                    "the file did not match its digest and was discarded; `file accept` fetches it again".into(),
                ));
            }
            FileState::Cancelled => {
                bar.abandon();
                return Err(CliError("the file was cancelled".into()));
            }
            FileState::Offered | FileState::Downloading => {}
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        file = client.call::<(), _>(Method::GET, &path, None).await?;
    }
}

/// A group id as typed: 32 hexadecimal digits.
/// A conversation named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conversation {
    /// With a person, by username.
    Person(String),
    /// A group's, by id.
    Group(String),
}

fn message_id(raw: &str) -> Result<crate::domain::MessageId, CliError> {
    raw.parse().map_err(|_| {
        CliError(format!(
            "{raw:?} is not a message id (32 hexadecimal digits)"
        ))
    })
}

fn group_id(raw: &str) -> Result<crate::domain::GroupId, CliError> {
    raw.parse().map_err(|_| {
        CliError(format!(
            "{raw:?} is not a group id (32 hexadecimal digits, from `peerchat group list`)"
        ))
    })
}

fn usernames(raw: &[String]) -> Result<Vec<Username>, CliError> {
    raw.iter()
        .filter(|u| !u.trim().is_empty())
        .map(|u| username(u.trim()))
        .collect()
}

/// Every message of a conversation (`path` without query), page by page from the latest back.
async fn whole_history(client: &ApiClient, path: &str) -> Result<Vec<MessageView>, CliError> {
    let mut messages: Vec<MessageView> = Vec::new();
    loop {
        let before = messages
            .first()
            .map(|m| format!("&before={}", m.id))
            .unwrap_or_default();
        let page: Vec<MessageView> = client
            .call::<(), _>(
                Method::GET,
                &format!("{path}?limit={MAX_PAGE}{before}"),
                None,
            )
            .await?;
        let full = page.len() == MAX_PAGE;
        messages.splice(0..0, page);
        if !full {
            return Ok(messages);
        }
    }
}

fn print_group(group: &GroupView) {
    let names = |users: &[Username]| {
        users
            .iter()
            .map(Username::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("{}  {}", group.id, escape_controls(&group.name));
    println!("  version {}", group.version);
    println!("  admins: {}", names(&group.admins));
    println!(
        "  members ({}): {}",
        group.members.len(),
        names(&group.members)
    );
    if !group.member {
        println!("  you are no longer a member");
    }
}

async fn group_command(data_dir: &Path, command: GroupCommand) -> Result<(), CliError> {
    let client = ApiClient::from_data_dir(data_dir)?;
    let change = |id: &str, body: GroupChangeBody| {
        let path = group_id(id).map(|g| format!("/api/v1/groups/{g}/changes"));
        let client = &client;
        async move {
            client
                .call::<_, GroupView>(Method::POST, &path?, Some(&body))
                .await
        }
    };
    let changed = match command {
        GroupCommand::Create { name, members } => {
            let body = CreateGroupBody {
                name,
                members: usernames(&members)?,
            };
            let group: GroupView = client
                .call(Method::POST, "/api/v1/groups", Some(&body))
                .await?;
            // The id alone on standard output, for scripts.
            println!("{}", group.id);
            eprintln!(
                "created {} with {} members",
                escape_controls(&group.name),
                group.members.len()
            );
            return Ok(());
        }
        GroupCommand::List { json: as_json } => {
            let groups: Vec<GroupView> = client
                .call::<(), _>(Method::GET, "/api/v1/groups", None)
                .await?;
            if as_json {
                return json(&groups);
            }
            for g in groups {
                println!(
                    "{}  {}  ({} members{})",
                    g.id,
                    escape_controls(&g.name),
                    g.members.len(),
                    if g.member { "" } else { "; you left" }
                );
            }
            return Ok(());
        }
        GroupCommand::Show { id, json: as_json } => {
            let group: GroupView = client
                .call::<(), _>(
                    Method::GET,
                    &format!("/api/v1/groups/{}", group_id(&id)?),
                    None,
                )
                .await?;
            if as_json {
                return json(&group);
            }
            print_group(&group);
            return Ok(());
        }
        GroupCommand::Add { id, users } => {
            let members = usernames(&users)?;
            change(&id, GroupChangeBody::Add { members }).await?
        }
        GroupCommand::Remove { id, users } => {
            let members = usernames(&users)?;
            change(&id, GroupChangeBody::Remove { members }).await?
        }
        GroupCommand::Leave { id } => change(&id, GroupChangeBody::Leave).await?,
        GroupCommand::Rename { id, name } => change(&id, GroupChangeBody::Rename { name }).await?,
        GroupCommand::Promote { id, user } => {
            let member = username(&user)?;
            change(&id, GroupChangeBody::Promote { member }).await?
        }
    };
    print_group(&changed);
    Ok(())
}

/// Tries `$BROWSER`, then `xdg-open`; whether one of them took the link.
fn open_browser(url: &str) -> bool {
    let mut openers: Vec<String> = std::env::var("BROWSER")
        .map(|b| b.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    openers.push("xdg-open".into());
    openers.iter().filter(|o| !o.is_empty()).any(|opener| {
        std::process::Command::new(opener)
            .arg(url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn username(raw: &str) -> Result<Username, CliError> {
    Username::from_user_input(raw).map_err(|e| CliError(format!("{raw:?}: {e}")))
}

fn password() -> Result<String, CliError> {
    if let Ok(p) = std::env::var("PEERCHAT_PASSWORD") {
        return Ok(p);
    }
    rpassword::prompt_password("password: ").map_err(|e| {
        CliError(format!(
            "no password: set PEERCHAT_PASSWORD, or run this in a terminal to be asked ({e})"
        ))
    })
}

fn clock(ms: u64) -> String {
    let secs = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}

fn json<T: serde::Serialize>(value: &T) -> Result<(), CliError> {
    println!(
        "{}",
        serde_json::to_string_pretty(value).map_err(|e| CliError(e.to_string()))?
    );
    Ok(())
}

pub async fn execute(data_dir: &Path, command: CliCommand) -> Result<(), CliError> {
    let data_dir = data_dir.to_path_buf();
    match command {
        CliCommand::Register { name } => {
            let body = RegisterBody {
                username: username(&name)?,
                password: password()?,
            };
            ApiClient::from_data_dir(&data_dir)?
                .call::<_, ()>(Method::POST, "/api/v1/register", Some(&body))
                .await?;
            println!("registered as {}", body.username);
            Ok(())
        }
        CliCommand::Login { name, totp } => {
            let body = LoginBody {
                username: username(&name)?,
                password: password()?,
                totp,
            };
            ApiClient::from_data_dir(&data_dir)?
                .call::<_, ()>(Method::POST, "/api/v1/login", Some(&body))
                .await?;
            println!(
                "logged in as {} with a new key on this install",
                body.username
            );
            Ok(())
        }
        CliCommand::TotpEnable => {
            let enrolment: TotpEnrolment = ApiClient::from_data_dir(&data_dir)?
                .call::<(), _>(Method::POST, "/api/v1/totp", None)
                .await?;
            println!("secret: {}", enrolment.secret);
            println!("uri: {}", enrolment.uri);
            println!(
                "add it to your authenticator app, then: {}",
                hint(&data_dir, "totp confirm CODE")
            );
            Ok(())
        }
        CliCommand::TotpConfirm { code } => {
            ApiClient::from_data_dir(&data_dir)?
                .call::<_, ()>(
                    Method::POST,
                    "/api/v1/totp/confirm",
                    Some(&TotpCodeBody { code }),
                )
                .await?;
            println!("second factor enabled: logins now need a code");
            Ok(())
        }
        CliCommand::Ui { print_only, base } => {
            let client = ApiClient::from_data_dir(&data_dir)?;
            let link: UiLink = client
                .call::<(), _>(Method::POST, "/api/v1/ui/link", None)
                .await?;
            let base = base.unwrap_or_else(|| client.base.clone());
            let url = format!("{}{}", base.trim_end_matches('/'), link.path);
            let opened = !print_only && open_browser(&url);
            if opened {
                println!("opened the chat window: {url}");
            } else {
                println!("open this link in your browser (once, within a few minutes):");
                println!("{url}");
            }
            Ok(())
        }
        CliCommand::Send {
            name,
            text,
            reply_to,
        } => {
            let body = SendBody {
                to: username(&name)?,
                text,
                id: None,
                reply_to: reply_to.as_deref().map(message_id).transpose()?,
            };
            let answer: SendAnswer = ApiClient::from_data_dir(&data_dir)?
                .call(Method::POST, "/api/v1/messages", Some(&body))
                .await?;
            println!(
                "{} {}",
                answer.id,
                serde_json::to_string(&answer.status)
                    .unwrap_or_default()
                    .trim_matches('"')
            );
            Ok(())
        }
        CliCommand::SendGroup {
            group,
            text,
            reply_to,
        } => {
            let group = group_id(&group)?;
            let body = GroupSendBody {
                text,
                id: None,
                reply_to: reply_to.as_deref().map(message_id).transpose()?,
            };
            let answer: SendAnswer = ApiClient::from_data_dir(&data_dir)?
                .call(
                    Method::POST,
                    &format!("/api/v1/groups/{group}/messages"),
                    Some(&body),
                )
                .await?;
            println!(
                "{} {}",
                answer.id,
                serde_json::to_string(&answer.status)
                    .unwrap_or_default()
                    .trim_matches('"')
            );
            Ok(())
        }
        CliCommand::GroupHistory {
            group,
            json: as_json,
        } => {
            let group = group_id(&group)?;
            let client = ApiClient::from_data_dir(&data_dir)?;
            let messages =
                whole_history(&client, &format!("/api/v1/groups/{group}/messages")).await?;
            client
                .call::<(), ()>(Method::POST, &format!("/api/v1/groups/{group}/read"), None)
                .await?;
            if as_json {
                return json(&messages);
            }
            for m in messages {
                let status = match &m.receipts {
                    Some(r) => format!(
                        "delivered to {} of {}, read by {}",
                        r.delivered, r.recipients, r.read
                    ),
                    None => serde_json::to_string(&m.status)
                        .unwrap_or_default()
                        .trim_matches('"')
                        .to_owned(),
                };
                println!(
                    "{} {}: {}  [{}]",
                    clock(m.sent_at_ms),
                    m.author,
                    shown_text(&m),
                    status
                );
            }
            Ok(())
        }
        CliCommand::Group(command) => group_command(&data_dir, command).await,
        CliCommand::Search {
            text,
            json: as_json,
        } => {
            let path = format!(
                "/api/v1/search?{}",
                serde_urlencoded::to_string([("q", text.as_str())])
                    .map_err(|e| CliError(e.to_string()))?
            );
            let hits: Vec<crate::driving::api::SearchHit> = ApiClient::from_data_dir(&data_dir)?
                .call::<(), _>(Method::GET, &path, None)
                .await?;
            if as_json {
                return json(&hits);
            }
            if hits.is_empty() {
                println!("nothing found");
            }
            for hit in hits {
                let place = match (&hit.peer, &hit.group) {
                    (Some(peer), _) => peer.to_string(),
                    (None, Some(group)) => format!("group {group}"),
                    (None, None) => String::new(),
                };
                println!(
                    "{} [{place}] {}: {}  ({})",
                    clock(hit.message.sent_at_ms),
                    hit.message.author,
                    shown_text(&hit.message),
                    hit.message.id
                );
            }
            Ok(())
        }
        CliCommand::Amend {
            conversation,
            id,
            action,
        } => {
            let id = message_id(&id)?;
            let path = match conversation {
                Conversation::Person(name) => {
                    format!(
                        "/api/v1/conversations/{}/messages/{id}/amend",
                        username(&name)?
                    )
                }
                Conversation::Group(group) => {
                    format!("/api/v1/groups/{}/messages/{id}/amend", group_id(&group)?)
                }
            };
            ApiClient::from_data_dir(&data_dir)?
                .call::<_, ()>(Method::POST, &path, Some(&action))
                .await?;
            Ok(())
        }
        CliCommand::SendFile {
            to,
            path,
            wait,
            park,
        } => {
            let (to, group) = match to {
                FileTarget::Peer(name) => (Some(username(&name)?), None),
                FileTarget::Group(id) => (None, Some(group_id(&id)?)),
            };
            // The daemon reads the file: give it a path that does not depend on our directory.
            let path = std::path::absolute(&path).unwrap_or(path);
            let client = ApiClient::from_data_dir(&data_dir)?;
            let file: FileView = client
                .call(
                    Method::POST,
                    "/api/v1/files",
                    Some(&SendFileBody {
                        to: to.clone(),
                        group,
                        path,
                        park: match park {
                            true => crate::usecases::Parking::Always,
                            false => crate::usecases::Parking::IfOffline,
                        },
                    }),
                )
                .await?;
            let to = match (to, group) {
                (Some(to), _) => to.to_string(),
                (None, Some(group)) => format!("the members of group {group}"),
                (None, None) => String::new(),
            };
            println!("{}", file.id);
            eprintln!(
                "offered {} ({} bytes) to {to}; they fetch it from this node",
                escape_controls(&file.name),
                file.size
            );
            if wait {
                wait_for_file(&client, &file.id).await?;
                eprintln!("{to} has fetched it");
            }
            Ok(())
        }
        CliCommand::Files { json: as_json } => {
            let files: Vec<FileView> = ApiClient::from_data_dir(&data_dir)?
                .call::<(), _>(Method::GET, "/api/v1/files", None)
                .await?;
            if as_json {
                return json(&files);
            }
            for f in files {
                let state = serde_json::to_string(&f.state).unwrap_or_default();
                let whom = match (f.direction, f.group) {
                    (crate::ports::Direction::Outgoing, None) => format!("sent to {}", f.peer),
                    (crate::ports::Direction::Outgoing, Some(g)) => format!("sent to group {g}"),
                    (crate::ports::Direction::Incoming, None) => {
                        format!("received from {}", f.peer)
                    }
                    (crate::ports::Direction::Incoming, Some(g)) => {
                        format!("received from {} in group {g}", f.peer)
                    }
                };
                println!(
                    "{}  {}  {} bytes  {whom}  {}  {}/{}",
                    f.id,
                    escape_controls(&f.name),
                    f.size,
                    state.trim_matches('"'),
                    f.bytes_done,
                    f.size
                );
            }
            Ok(())
        }
        CliCommand::FileAccept { id } => {
            let id = file_id(&id)?;
            ApiClient::from_data_dir(&data_dir)?
                .call::<(), ()>(Method::POST, &format!("/api/v1/files/{id}/accept"), None)
                .await?;
            println!("fetching {id}");
            Ok(())
        }
        CliCommand::FileCancel { id } => {
            let id = file_id(&id)?;
            ApiClient::from_data_dir(&data_dir)?
                .call::<(), ()>(Method::POST, &format!("/api/v1/files/{id}/cancel"), None)
                .await?;
            println!("cancelled {id}");
            Ok(())
        }
        CliCommand::FileSave { id, dest, wait } => {
            let id = file_id(&id)?;
            let client = ApiClient::from_data_dir(&data_dir)?;
            let dest = std::path::absolute(&dest).unwrap_or(dest);
            if wait {
                wait_for_file(&client, &id).await?;
            }
            client
                .call::<_, FileView>(
                    Method::POST,
                    &format!("/api/v1/files/{id}/save"),
                    Some(&SaveFileBody { dest: dest.clone() }),
                )
                .await?;
            println!("saved {}", dest.display());
            Ok(())
        }
        CliCommand::History {
            name,
            json: as_json,
        } => {
            let peer = username(&name)?;
            let client = ApiClient::from_data_dir(&data_dir)?;
            let messages = whole_history(&client, &format!("/api/v1/conversations/{peer}")).await?;
            // Showing the conversation is reading it.
            client
                .call::<(), ()>(
                    Method::POST,
                    &format!("/api/v1/conversations/{peer}/read"),
                    None,
                )
                .await?;
            if as_json {
                return json(&messages);
            }
            let contacts: Vec<ContactView> = client
                .call::<(), _>(Method::GET, "/api/v1/contacts", None)
                .await?;
            if contacts.iter().any(|c| c.username == peer && c.request) {
                println!(
                    "MESSAGE REQUEST: {peer} wrote first. `{}` to answer them as a contact, or `{}`",
                    hint(&data_dir, &format!("requests accept {peer}")),
                    hint(&data_dir, &format!("block {peer}"))
                );
            }
            if contacts.iter().any(|c| c.username == peer && c.blocked) {
                println!("BLOCKED: you blocked {peer}; their messages are dropped");
            }
            if contacts.iter().any(|c| c.username == peer && c.key_changed) {
                println!(
                    "WARNING: {peer}'s key has changed; messages to them are held until you run `{}`",
                    hint(&data_dir, &format!("accept-key {peer}"))
                );
            }
            for m in messages {
                let status = serde_json::to_string(&m.status).unwrap_or_default();
                println!(
                    "{} {}: {}  [{}]",
                    clock(m.sent_at_ms),
                    m.author,
                    shown_text(&m),
                    status.trim_matches('"')
                );
            }
            Ok(())
        }
        CliCommand::Contacts { json: as_json } => {
            let contacts: Vec<ContactView> = ApiClient::from_data_dir(&data_dir)?
                .call::<(), _>(Method::GET, "/api/v1/contacts", None)
                .await?;
            if as_json {
                return json(&contacts);
            }
            for c in contacts {
                let connection = match (c.online, c.path) {
                    (true, Some(ConnectionPath::Direct)) => "online · direct",
                    (true, Some(ConnectionPath::Relayed)) => "online · relayed",
                    (true, None) => "online",
                    (false, _) => "not connected",
                };
                let shown = match &c.display_name {
                    Some(name) => format!("{} ({})", c.username, escape_controls(name)),
                    None => c.username.to_string(),
                };
                let standing = match (c.blocked, c.request) {
                    (true, _) => "  blocked",
                    (false, true) => "  request",
                    _ => "",
                };
                println!(
                    "{shown}  key {}…  {}  {}{standing}",
                    &c.identity_key[..16.min(c.identity_key.len())],
                    if c.key_changed {
                        "key changed"
                    } else if c.verified {
                        "verified"
                    } else {
                        "unverified"
                    },
                    connection
                );
                if c.key_changed {
                    println!(
                        "  WARNING: {}'s key has changed; compare safety numbers, then `{}`",
                        c.username,
                        hint(&data_dir, &format!("accept-key {}", c.username))
                    );
                }
            }
            Ok(())
        }
        CliCommand::Retry { name, id } => {
            let peer = username(&name)?;
            ApiClient::from_data_dir(&data_dir)?
                .call::<(), ()>(
                    Method::POST,
                    &format!("/api/v1/conversations/{peer}/messages/{id}/retry"),
                    None,
                )
                .await?;
            println!("message {id} is on its way again");
            Ok(())
        }
        CliCommand::People(command) => people::execute(&data_dir, command).await,
        CliCommand::Archive(command) => archive::execute(&data_dir, command).await,
        CliCommand::Logout => {
            ApiClient::from_data_dir(&data_dir)?
                .call::<(), ()>(Method::POST, "/api/v1/logout", None)
                .await?;
            println!("logged out: this node's certificate is revoked");
            Ok(())
        }
        CliCommand::AcceptKey { name } => {
            let peer = username(&name)?;
            ApiClient::from_data_dir(&data_dir)?
                .call::<(), ()>(
                    Method::POST,
                    &format!("/api/v1/contacts/{peer}/accept-key"),
                    None,
                )
                .await?;
            println!("accepted {peer}'s new key; held messages are on their way");
            Ok(())
        }
        CliCommand::SafetyNumber { name } => {
            let peer = username(&name)?;
            let number: SafetyNumberView = ApiClient::from_data_dir(&data_dir)?
                .call::<(), _>(
                    Method::GET,
                    &format!("/api/v1/contacts/{peer}/safety-number"),
                    None,
                )
                .await?;
            // The number alone on standard output; what it is of on standard error.
            println!("{}", number.number);
            match (number.key, number.previous) {
                (KeyKind::Pending, previous) => {
                    eprintln!(
                        "This is the number of {peer}'s NEW key, not accepted yet. Compare it with {peer}'s screen; if it matches, `{}` accepts and verifies it.",
                        hint(&data_dir, &format!("verify {peer} \"<number>\""))
                    );
                    if let Some(previous) = previous {
                        eprintln!("The old key's number was: {previous}");
                    }
                }
                (KeyKind::Certified, _) => eprintln!(
                    "{peer} is not a contact yet: this is the number of the key the rendezvous certifies for them."
                ),
                (KeyKind::Pinned, _) => {}
            }
            Ok(())
        }
        CliCommand::Verify { name, number } => {
            let peer = username(&name)?;
            ApiClient::from_data_dir(&data_dir)?
                .call::<_, ()>(
                    Method::POST,
                    &format!("/api/v1/contacts/{peer}/verify"),
                    Some(&VerifyBody { number }),
                )
                .await?;
            println!("{peer} is verified");
            Ok(())
        }
        CliCommand::Watch { json: as_json } => {
            let client = ApiClient::from_data_dir(&data_dir)?;
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
            let printer = async {
                while let Some((kind, data)) = rx.recv().await {
                    if as_json {
                        println!("{data}");
                        continue;
                    }
                    let event: serde_json::Value = serde_json::from_str(&data).unwrap_or_default();
                    let peer = event["peer"].as_str().unwrap_or_default().to_owned();
                    let id = event["id"].as_str().unwrap_or_default().to_owned();
                    match kind.as_str() {
                        "message_received" => {
                            let history: Vec<MessageView> = client
                                .call::<(), _>(
                                    Method::GET,
                                    &format!("/api/v1/conversations/{peer}?limit=50"),
                                    None,
                                )
                                .await
                                .unwrap_or_default();
                            match history.iter().find(|m| m.id.to_string() == id) {
                                Some(m) => {
                                    println!(
                                        "{} {}: {}",
                                        clock(m.sent_at_ms),
                                        m.author,
                                        shown_text(m)
                                    )
                                }
                                None => println!("message {id} from {peer}"),
                            }
                        }
                        "key_changed" => println!("WARNING: {peer}'s key has changed"),
                        "peer_online" => println!("{peer} is online"),
                        "peer_offline" => println!("{peer} went offline"),
                        "status_changed" => println!(
                            "message {id} to {peer}: {}",
                            event["status"].as_str().unwrap_or_default()
                        ),
                        "group_message_received" => println!(
                            "group {}: message {id} from {}",
                            event["group"].as_str().unwrap_or_default(),
                            event["author"].as_str().unwrap_or_default()
                        ),
                        "group_changed" => println!(
                            "group {} changed",
                            event["group"].as_str().unwrap_or_default()
                        ),
                        "registered" => println!(
                            "registered as {}",
                            event["user"].as_str().unwrap_or_default()
                        ),
                        // A kind this CLI does not know yet (a newer daemon): skipped.
                        _ => {}
                    }
                }
            };
            let follow = async move { client_events(&data_dir, tx).await };
            let (followed, ()) = tokio::join!(follow, printer);
            followed
        }
        CliCommand::Status { json: as_json } => {
            let status: NodeStatus = ApiClient::from_data_dir(&data_dir)?
                .call::<(), _>(Method::GET, "/api/v1/status", None)
                .await?;
            if as_json {
                return json(&status);
            }
            match status.username {
                Some(name) => println!(
                    "registered as {name}; {} message(s) waiting for delivery",
                    status.outbox
                ),
                None => println!("not registered; run `{}`", hint(&data_dir, "register NAME")),
            }
            Ok(())
        }
    }
}

/// Forwards the daemon's events to `tx` until the stream ends.
async fn client_events(
    data_dir: &std::path::Path,
    tx: tokio::sync::mpsc::UnboundedSender<(String, String)>,
) -> Result<(), CliError> {
    ApiClient::from_data_dir(data_dir)?
        .events(|kind, data| {
            let _ = tx.send((kind.to_owned(), data.to_owned()));
        })
        .await
}

/// A message's text as the terminal shows it: what others wrote can never move the cursor,
/// change colours or start a line that looks like another message.
fn shown_text(message: &MessageView) -> String {
    if message.status == MessageStatus::Undecryptable {
        return "(this message could not be decrypted)".to_owned();
    }
    if message.deleted {
        return "(this message was deleted)".to_owned();
    }
    let mut shown = String::new();
    if let Some(quoted) = message.reply_to {
        shown.push_str(&format!("(reply to {quoted}) "));
    }
    shown.push_str(&escape_controls(&message.text));
    if message.edited {
        shown.push_str(" (edited)");
    }
    if !message.reactions.is_empty() {
        let reactions: Vec<String> = message
            .reactions
            .iter()
            .map(|(who, emoji)| format!("{} {who}", escape_controls(emoji)))
            .collect();
        shown.push_str(&format!("  {{{}}}", reactions.join(", ")));
    }
    shown
}

/// `text` with every control character (C0, DEL, C1) and every bidirectional override escaped
/// as `\u{..}` (newline and tab as `\n` and `\t`), so printing it cannot inject terminal
/// sequences or forge lines. Backslashes stay as typed: without a control character, no text
/// can start a line of its own.
pub fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control()
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
            {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

/// A command line people can paste: `peerchat --data-dir DIR ARGS`.
fn hint(data_dir: &Path, args: &str) -> String {
    format!("peerchat --data-dir {} {args}", shell_word(data_dir))
}

/// The command that starts the daemon of `data_dir`, with the rendezvous it used last (saved
/// by the daemon), else the local default.
fn daemon_command(data_dir: &Path) -> String {
    let rendezvous = std::fs::read_to_string(data_dir.join(crate::daemon::RENDEZVOUS_FILE))
        .ok()
        .map(|url| url.trim().to_owned())
        .filter(|url| url.starts_with("https://"))
        .unwrap_or_else(|| "https://localhost:8443".to_owned());
    format!(
        "peerchat daemon --data-dir {} --rendezvous {}",
        shell_word(data_dir),
        shell_word(Path::new(&rendezvous))
    )
}

/// `path` as one shell word: quoted when it holds anything but plain characters.
fn shell_word(path: &Path) -> String {
    let text = path.display().to_string();
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:@%=,".contains(c))
    {
        text
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::escape_controls;

    #[test]
    fn control_characters_and_bidi_overrides_are_escaped() {
        assert_eq!(
            escape_controls("hi\u{1b}[2J\n01:12:00 bob: pay me\r"),
            "hi\\u{1b}[2J\\n01:12:00 bob: pay me\\u{d}"
        );
        assert_eq!(escape_controls("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(escape_controls("abc\u{202e}def"), "abc\\u{202e}def");
        assert_eq!(escape_controls("héllo, 世界 👋"), "héllo, 世界 👋");
    }
}
