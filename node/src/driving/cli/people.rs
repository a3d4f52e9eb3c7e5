//! `requests`, `block`, `unblock` and `profile`.

use std::path::{Path, PathBuf};

use base64::Engine;
use reqwest::Method;

use super::{ApiClient, CliError, clock, escape_controls, json, username};
use crate::driving::api::{ProfileBody, RequestView};

/// A people command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeopleCommand {
    /// List message requests.
    Requests {
        /// JSON output.
        json: bool,
    },
    /// Accept someone's request.
    Accept {
        /// Who.
        name: String,
    },
    /// Block (or unblock) someone.
    Block {
        /// Who.
        name: String,
        /// Block, or lift the block.
        blocked: bool,
    },
    /// List who is blocked.
    Blocked {
        /// JSON output.
        json: bool,
    },
    /// Set our profile.
    SetProfile {
        /// The name to be shown by.
        display_name: String,
        /// An image file for the avatar.
        avatar: Option<PathBuf>,
    },
    /// Show our profile.
    ShowProfile {
        /// JSON output.
        json: bool,
    },
}

/// Runs a people command against the daemon of `data_dir`.
pub async fn execute(data_dir: &Path, command: PeopleCommand) -> Result<(), CliError> {
    let client = ApiClient::from_data_dir(data_dir)?;
    match command {
        PeopleCommand::Requests { json: as_json } => {
            let requests: Vec<RequestView> = client
                .call::<(), _>(Method::GET, "/api/v1/requests", None)
                .await?;
            if as_json {
                return json(&requests);
            }
            if requests.is_empty() {
                println!("no message requests");
            }
            for r in requests {
                let name = match &r.display_name {
                    Some(shown) => {
                        format!("{} (calls themselves {})", r.peer, escape_controls(shown))
                    }
                    None => r.peer.to_string(),
                };
                let last = r.last.map_or(String::new(), |m| {
                    format!("{}: {}", clock(m.sent_at_ms), escape_controls(&m.text))
                });
                println!("{name}  {} message(s)  {last}", r.messages);
            }
            Ok(())
        }
        PeopleCommand::Accept { name } => {
            let peer = username(&name)?;
            client
                .call::<(), ()>(
                    Method::POST,
                    &format!("/api/v1/requests/{peer}/accept"),
                    None,
                )
                .await?;
            println!("accepted: {peer} can now see when you read their messages, and your profile");
            Ok(())
        }
        PeopleCommand::Block { name, blocked } => {
            let peer = username(&name)?;
            let action = if blocked { "block" } else { "unblock" };
            client
                .call::<(), ()>(
                    Method::POST,
                    &format!("/api/v1/contacts/{peer}/{action}"),
                    None,
                )
                .await?;
            match blocked {
                true => println!(
                    "blocked {peer}: their messages are dropped, and nothing of yours goes to them"
                ),
                false => println!("unblocked {peer}"),
            }
            Ok(())
        }
        PeopleCommand::Blocked { json: as_json } => {
            let blocked: Vec<peerchat_pki::Username> = client
                .call::<(), _>(Method::GET, "/api/v1/blocked", None)
                .await?;
            if as_json {
                return json(&blocked);
            }
            for name in blocked {
                println!("{name}");
            }
            Ok(())
        }
        PeopleCommand::SetProfile {
            display_name,
            avatar,
        } => {
            let avatar = match avatar {
                Some(path) => {
                    let max = crate::domain::person::MAX_AVATAR_BYTES as u64;
                    let size = std::fs::metadata(&path)
                        .map_err(|e| CliError(format!("{}: {e}", path.display())))?
                        .len();
                    if size > max {
                        return Err(CliError(format!(
                            "an avatar is at most {} KB; {} is {} KB",
                            max / 1024,
                            path.display(),
                            size / 1024
                        )));
                    }
                    let bytes = std::fs::read(&path)
                        .map_err(|e| CliError(format!("{}: {e}", path.display())))?;
                    Some(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
                None => None,
            };
            client
                .call::<_, ()>(
                    Method::PUT,
                    "/api/v1/profile",
                    Some(&ProfileBody {
                        display_name,
                        avatar,
                    }),
                )
                .await?;
            println!("profile saved and shared with your contacts");
            Ok(())
        }
        PeopleCommand::ShowProfile { json: as_json } => {
            let profile: ProfileBody = client
                .call::<(), _>(Method::GET, "/api/v1/profile", None)
                .await?;
            if as_json {
                return json(&profile);
            }
            if profile.display_name.is_empty() {
                println!("no profile yet: `peerchat profile set --display-name NAME`");
            } else {
                println!(
                    "{}{}",
                    escape_controls(&profile.display_name),
                    if profile.avatar.is_some() {
                        " (with an avatar)"
                    } else {
                        ""
                    }
                );
            }
            Ok(())
        }
    }
}
