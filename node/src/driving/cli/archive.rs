//! `export` (a conversation or all of them, as JSON or Markdown) and `backup create|restore`.

use std::path::{Path, PathBuf};

use peerchat_pki::Username;
use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::{ApiClient, CliError, group_id, username, whole_history};
use crate::driving::api::{BackupBody, ConversationView, GroupView, MessageView};
use crate::usecases::BackupSummary;

/// What to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportWhat {
    /// Every conversation.
    All,
    /// The conversation with someone.
    Person(String),
    /// A group's conversation.
    Group(String),
}

/// The export's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// One JSON document.
    Json,
    /// Readable text.
    Markdown,
}

/// An archive command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveCommand {
    /// Export history.
    Export {
        /// Which conversations.
        what: ExportWhat,
        /// How.
        format: ExportFormat,
        /// Where (standard output without).
        output: Option<PathBuf>,
    },
    /// Make an encrypted backup.
    BackupCreate {
        /// The file to write (must not exist).
        file: PathBuf,
        /// A file holding the passphrase.
        passphrase_file: Option<PathBuf>,
    },
    /// Restore an encrypted backup into this install.
    BackupRestore {
        /// The backup.
        file: PathBuf,
        /// A file holding the passphrase.
        passphrase_file: Option<PathBuf>,
    },
}

/// The JSON export.
#[derive(Debug, Serialize, Deserialize)]
pub struct Export {
    /// Whose history.
    pub account: Username,
    /// When it was made, ms since the epoch.
    pub exported_at_ms: u64,
    /// The conversations, each oldest message first.
    pub conversations: Vec<ExportedConversation>,
}

/// One conversation of an export.
#[derive(Debug, Serialize, Deserialize)]
pub struct ExportedConversation {
    /// The other person, for a direct conversation.
    pub peer: Option<Username>,
    /// The group, for a group's.
    pub group: Option<GroupView>,
    /// Its messages, oldest first.
    pub messages: Vec<MessageView>,
}

/// Runs an archive command against the daemon of `data_dir`.
pub async fn execute(data_dir: &Path, command: ArchiveCommand) -> Result<(), CliError> {
    let client = ApiClient::from_data_dir(data_dir)?;
    match command {
        ArchiveCommand::Export {
            what,
            format,
            output,
        } => {
            let export = collect(&client, what).await?;
            let text = match format {
                ExportFormat::Json => {
                    serde_json::to_string_pretty(&export).map_err(|e| CliError(e.to_string()))?
                }
                ExportFormat::Markdown => markdown(&export),
            };
            match output {
                Some(path) => write_new(&path, text.as_bytes())?,
                None => print!("{text}"),
            }
            Ok(())
        }
        ArchiveCommand::BackupCreate {
            file,
            passphrase_file,
        } => {
            let passphrase = passphrase(passphrase_file.as_deref(), true)?;
            let summary: BackupSummary = client
                .call(
                    Method::POST,
                    "/api/v1/backup",
                    Some(&BackupBody {
                        path: absolute(&file)?,
                        passphrase,
                    }),
                )
                .await?;
            println!(
                "backup written to {}: {} contact(s), {} group(s), {} message(s); keep the passphrase, it cannot be recovered",
                file.display(),
                summary.contacts,
                summary.groups,
                summary.messages
            );
            Ok(())
        }
        ArchiveCommand::BackupRestore {
            file,
            passphrase_file,
        } => {
            let passphrase = passphrase(passphrase_file.as_deref(), false)?;
            let summary: BackupSummary = client
                .call(
                    Method::POST,
                    "/api/v1/backup/restore",
                    Some(&BackupBody {
                        path: absolute(&file)?,
                        passphrase,
                    }),
                )
                .await?;
            println!(
                "restored {} contact(s), {} group(s), {} message(s); your contacts will see that your key changed, as with any new install",
                summary.contacts, summary.groups, summary.messages
            );
            Ok(())
        }
    }
}

async fn collect(client: &ApiClient, what: ExportWhat) -> Result<Export, CliError> {
    let status: crate::usecases::NodeStatus = client
        .call::<(), _>(Method::GET, "/api/v1/status", None)
        .await?;
    let account = status
        .username
        .ok_or_else(|| CliError("this node is not registered yet".into()))?;
    let mut conversations = Vec::new();
    match what {
        ExportWhat::Person(name) => {
            let peer = username(&name)?;
            let messages = whole_history(client, &format!("/api/v1/conversations/{peer}")).await?;
            conversations.push(ExportedConversation {
                peer: Some(peer),
                group: None,
                messages,
            });
        }
        ExportWhat::Group(raw) => {
            let id = group_id(&raw)?;
            let group: GroupView = client
                .call::<(), _>(Method::GET, &format!("/api/v1/groups/{id}"), None)
                .await?;
            let messages = whole_history(client, &format!("/api/v1/groups/{id}/messages")).await?;
            conversations.push(ExportedConversation {
                peer: None,
                group: Some(group),
                messages,
            });
        }
        ExportWhat::All => {
            let list: Vec<ConversationView> = client
                .call::<(), _>(Method::GET, "/api/v1/conversations", None)
                .await?;
            for c in list {
                let path = match (&c.peer, &c.group) {
                    (Some(peer), _) => format!("/api/v1/conversations/{peer}"),
                    (None, Some(group)) => format!("/api/v1/groups/{}/messages", group.id),
                    (None, None) => continue,
                };
                conversations.push(ExportedConversation {
                    messages: whole_history(client, &path).await?,
                    peer: c.peer,
                    group: c.group,
                });
            }
        }
    }
    Ok(Export {
        account,
        exported_at_ms: now_ms(),
        conversations,
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `ms` since the epoch as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(ms: u64) -> String {
    let Ok(at) = time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64) else {
        return ms.to_string();
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// The export as Markdown: a section per conversation, each message's text quoted line by line
/// (so nothing a message says is read as the document's own structure).
pub fn markdown(export: &Export) -> String {
    let mut out = format!(
        "# peerchat history of {}\n\nExported {}.\n",
        export.account,
        utc(export.exported_at_ms)
    );
    for c in &export.conversations {
        let title = match (&c.peer, &c.group) {
            (Some(peer), _) => format!("Conversation with {peer}"),
            (None, Some(group)) => format!("Group “{}” ({})", one_line(&group.name), group.id),
            (None, None) => continue,
        };
        out.push_str(&format!("\n## {title}\n"));
        for m in &c.messages {
            let mut notes = Vec::new();
            if let Some(quoted) = m.reply_to {
                notes.push(format!("reply to {quoted}"));
            }
            if m.edited {
                notes.push("edited".into());
            }
            let notes = if notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", notes.join(", "))
            };
            out.push_str(&format!(
                "\n**{}** · {} · `{}`{notes}\n\n",
                m.author,
                utc(m.sent_at_ms),
                m.id
            ));
            let text = if m.deleted {
                "*This message was deleted.*".to_owned()
            } else {
                m.text.clone()
            };
            for line in text.lines() {
                out.push_str("> ");
                out.push_str(&super::escape_controls(line));
                out.push('\n');
            }
            if !m.reactions.is_empty() {
                let reactions: Vec<String> = m
                    .reactions
                    .iter()
                    .map(|(who, emoji)| format!("{emoji} {who}"))
                    .collect();
                out.push_str(&format!("\nReactions: {}\n", reactions.join(", ")));
            }
        }
    }
    out
}

fn one_line(text: &str) -> String {
    super::escape_controls(text).replace('\n', " ")
}

fn absolute(path: &Path) -> Result<PathBuf, CliError> {
    std::path::absolute(path).map_err(|e| CliError(format!("{}: {e}", path.display())))
}

/// Writes a new file (never over an existing one), readable by the user only.
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| CliError(format!("{}: {e}", path.display())))
}

/// The backup passphrase: from a file, else `PEERCHAT_BACKUP_PASSPHRASE`, else asked (twice
/// for a new backup).
fn passphrase(file: Option<&Path>, new: bool) -> Result<String, CliError> {
    if let Some(file) = file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| CliError(format!("{}: {e}", file.display())))?;
        return Ok(text.trim_end_matches(['\n', '\r']).to_owned());
    }
    if let Ok(p) = std::env::var("PEERCHAT_BACKUP_PASSPHRASE") {
        return Ok(p);
    }
    let ask = |prompt: &str| {
        rpassword::prompt_password(prompt).map_err(|e| {
            CliError(format!(
                "no passphrase: use --passphrase-file, set PEERCHAT_BACKUP_PASSPHRASE, or run this in a terminal ({e})"
            ))
        })
    };
    let first = ask("backup passphrase: ")?;
    if new && ask("again: ")? != first {
        return Err(CliError("the two passphrases differ".into()));
    }
    Ok(first)
}
