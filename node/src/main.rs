//! `peerchat`: the daemon and the CLI that talks to it. Wiring only.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use peerchat::daemon::{self, DaemonConfig};
use peerchat::driving::api::AmendBody;
use peerchat::driving::cli::archive::{ArchiveCommand, ExportWhat};
use peerchat::driving::cli::people::PeopleCommand;
use peerchat::driving::cli::{self, CliCommand, CliError, Conversation};
use peerchat_telemetry::Telemetry;

/// peerchat: peer-to-peer, end-to-end encrypted chat.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The node's data directory (keys, messages, the daemon's API address and token); by
    /// default the platform's data directory (~/.local/share/peerchat on Linux).
    #[arg(long, global = true, env = "PEERCHAT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the node.
    Daemon {
        /// The rendezvous, e.g. https://localhost:8443. Repeat it (or comma-separate in the
        /// environment) for instances of one service: the node moves to the next when one stops
        /// answering.
        #[arg(long, env = "PEERCHAT_RENDEZVOUS", value_parser = https_url, value_delimiter = ',', required = true)]
        rendezvous: Vec<String>,
        /// The rendezvous CA certificate to trust (else it is pinned on first contact).
        #[arg(long, env = "PEERCHAT_CA_CERT")]
        ca_cert: Option<PathBuf>,
        /// Local API address (loopback).
        #[arg(long, env = "PEERCHAT_API", default_value = "127.0.0.1:0")]
        api: std::net::SocketAddr,
        /// Allow a non-loopback API address, only inside a container whose API port is published
        /// on the host's loopback (the token and the Host check still apply).
        #[arg(long, env = "PEERCHAT_ALLOW_API_NON_LOOPBACK")]
        allow_api_non_loopback: bool,
        /// Peer-to-peer listen address.
        #[arg(long, env = "PEERCHAT_LISTEN", default_value = "/ip4/127.0.0.1/tcp/0")]
        listen: libp2p::Multiaddr,
        /// Do not tell senders when their messages were read (the default until the settings
        /// panel saves a choice, which the node keeps).
        #[arg(long, env = "PEERCHAT_NO_READ_RECEIPTS")]
        no_read_receipts: bool,
        /// Show a desktop notification (notify-send) when a message arrives (sender only).
        #[arg(long, env = "PEERCHAT_NOTIFY")]
        notify: bool,
        /// How often to fetch the certificate revocation list, in seconds.
        #[arg(long, env = "PEERCHAT_CRL_REFRESH_SECS", default_value_t = 300)]
        crl_refresh_secs: u64,
        /// How long an undelivered message is tried (directly, then via the mailbox) before it is
        /// marked failed, in seconds (default 7 days).
        #[arg(long, env = "PEERCHAT_GIVE_UP_AFTER_SECS", default_value_t = 7 * 24 * 3600)]
        give_up_after_secs: u64,
        /// Find contacts on the local network with mDNS. Off by default: it announces this
        /// node's PeerId to everyone on the network.
        #[arg(long, env = "PEERCHAT_MDNS")]
        mdns: bool,
        /// Do not reserve a slot on the rendezvous's relay (peers behind a NAT then reach this
        /// node only directly or through the mailbox).
        #[arg(long, env = "PEERCHAT_NO_RELAY")]
        no_relay: bool,
        /// Largest file sent or accepted, in bytes.
        #[arg(long, env = "PEERCHAT_MAX_FILE_SIZE", default_value_t = peerchat::usecases::DEFAULT_MAX_FILE_BYTES)]
        max_file_size: u64,
        /// Files up to this size (bytes) are fetched as soon as they are offered; larger ones
        /// wait for `file accept`.
        #[arg(long, env = "PEERCHAT_AUTO_DOWNLOAD_MAX", default_value_t = peerchat::usecases::DEFAULT_AUTO_DOWNLOAD_BYTES)]
        auto_download_max: u64,
        /// Where complete downloads go (default: DIR/files).
        #[arg(long, env = "PEERCHAT_DOWNLOAD_DIR")]
        download_dir: Option<PathBuf>,
        /// A file whose first line is the passphrase protecting the store key. For a new data
        /// directory it also chooses a passphrase over the OS keyring. Without it, a store
        /// protected by a passphrase asks for it on the terminal.
        #[arg(long, env = "PEERCHAT_PASSPHRASE_FILE")]
        passphrase_file: Option<PathBuf>,
        /// Keep a new data directory's store key unprotected beside the data (no keyring, no
        /// passphrase). Anyone who can read the directory can then read the history; the
        /// daemon warns at every start.
        #[arg(long, env = "PEERCHAT_PLAIN_STORE", conflicts_with = "passphrase_file")]
        plain_store: bool,
    },
    /// Starts an embedded rendezvous and two nodes, alice and bob, on 127.0.0.1.
    Demo {
        /// Where the demo keeps its data.
        #[arg(long, default_value = "peerchat-demo")]
        dir: PathBuf,
    },
    /// Creates an account (password from PEERCHAT_PASSWORD, else asked).
    Register {
        /// The username.
        name: String,
    },
    /// Logs in to an existing account on this new install (password as for register).
    Login {
        /// The username.
        name: String,
        /// The current code of the account's second factor, if it has one.
        #[arg(long)]
        totp: Option<String>,
    },
    /// Manages the account's second factor (TOTP).
    Totp {
        #[command(subcommand)]
        action: TotpAction,
    },
    /// Opens the chat window in the browser with a one-time link (printed when no browser can be
    /// opened).
    Ui {
        /// Only print the link.
        #[arg(long)]
        print: bool,
        /// The address the browser reaches the API on, when it differs from the daemon's own
        /// (e.g. a container's published port).
        #[arg(long, env = "PEERCHAT_UI_BASE")]
        base: Option<String>,
    },
    /// Sends a message: `send NAME TEXT`, or `send --group ID TEXT`.
    Send {
        /// The group to send to (its id, from `group list`), instead of a person.
        #[arg(long)]
        group: Option<String>,
        /// Reply to this message of the conversation (its id, from `history --json`).
        #[arg(long, value_name = "ID")]
        reply_to: Option<String>,
        /// The recipient and the text (the text only with --group).
        #[arg(num_args = 1..=2, required = true, value_names = ["NAME", "TEXT"])]
        words: Vec<String>,
    },
    /// Searches the messages of every conversation (case is ignored), newest first.
    Search {
        /// The text to find.
        text: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Edits one of your messages (within 24 hours): `edit NAME ID TEXT`, or
    /// `edit --group GROUP ID TEXT`.
    Edit {
        /// The group, instead of a person.
        #[arg(long)]
        group: Option<String>,
        /// The person (not with --group), the message's id and the new text.
        #[arg(num_args = 2..=3, required = true, value_names = ["NAME", "ID", "TEXT"])]
        words: Vec<String>,
    },
    /// Deletes one of your messages for everyone (within 24 hours): `delete NAME ID`, or
    /// `delete --group GROUP ID`.
    Delete {
        /// The group, instead of a person.
        #[arg(long)]
        group: Option<String>,
        /// The person (not with --group) and the message's id.
        #[arg(num_args = 1..=2, required = true, value_names = ["NAME", "ID"])]
        words: Vec<String>,
    },
    /// Reacts to a message with one emoji (replacing your reaction): `react NAME ID EMOJI`,
    /// `react --group GROUP ID EMOJI`; `--remove` takes your reaction back.
    React {
        /// The group, instead of a person.
        #[arg(long)]
        group: Option<String>,
        /// Take your reaction back (no EMOJI then).
        #[arg(long)]
        remove: bool,
        /// The person (not with --group), the message's id and the emoji.
        #[arg(num_args = 1..=3, required = true, value_names = ["NAME", "ID", "EMOJI"])]
        words: Vec<String>,
    },
    /// Shows the conversation with someone, or a group's (`--group ID`).
    History {
        /// The other person.
        #[arg(required_unless_present = "group", conflicts_with = "group")]
        name: Option<String>,
        /// The group (its id).
        #[arg(long)]
        group: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Offers a file to someone, or to a group with `--group ID` (copied into this node's
    /// keeping; they fetch it peer to peer); prints its id.
    SendFile {
        /// The group to offer it to (its id), instead of a person.
        #[arg(long)]
        group: Option<String>,
        /// The recipient (not with --group) and the file.
        #[arg(num_args = 1..=2, required = true, value_names = ["NAME", "PATH"])]
        words: Vec<PathBuf>,
        /// Wait until they have fetched it all, showing progress.
        #[arg(long)]
        wait: bool,
        /// Also leave the sealed file with the rendezvous, so they can fetch it while this node
        /// is offline (done anyway when they are offline now). The rendezvous sees ciphertext
        /// only and deletes it once they have it, or after 48 hours.
        #[arg(long)]
        park: bool,
    },
    /// Lists files offered to and by you.
    Files {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Accepts, saves or cancels a file.
    File {
        #[command(subcommand)]
        action: FileAction,
    },
    /// Creates and changes groups (up to 200 members).
    Group {
        #[command(subcommand)]
        action: GroupAction,
    },
    /// Lists message requests (first messages from people you have not written to), or
    /// accepts one: `requests accept NAME`.
    Requests {
        #[command(subcommand)]
        action: Option<RequestsAction>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Blocks someone: their messages are dropped without a receipt, and nothing of yours
    /// (messages, typing, profile) goes to them. Kept across restarts.
    Block {
        /// Who.
        name: String,
    },
    /// Lifts a block.
    Unblock {
        /// Who.
        name: String,
    },
    /// Lists who is blocked.
    Blocked {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Your profile (display name, avatar), shared with your contacts inside the encryption,
    /// never with the rendezvous.
    Profile {
        #[command(subcommand)]
        action: ProfileAction,
    },
    /// Exports a conversation (NAME, or --group ID) or all of them, to standard output or
    /// --output FILE.
    Export {
        /// The other person (all conversations without it, or --group).
        #[arg(conflicts_with = "group")]
        name: Option<String>,
        /// A group's conversation (its id).
        #[arg(long)]
        group: Option<String>,
        /// json or markdown.
        #[arg(long, value_enum, default_value = "json")]
        format: cli::archive::ExportFormat,
        /// A new file to write it to.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Encrypted backups of contacts, groups and history (passphrase: --passphrase-file,
    /// PEERCHAT_BACKUP_PASSPHRASE, or asked).
    Backup {
        #[command(subcommand)]
        action: BackupAction,
    },
    /// Lists contacts.
    Contacts {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Revokes this node's certificate at the rendezvous (peers then refuse it).
    Logout,
    /// Sends a failed message again.
    Retry {
        /// The recipient.
        name: String,
        /// The message id (from `history --json`).
        id: String,
    },
    /// Accepts a contact's new identity key (after checking the safety number with them); the
    /// messages held for them are then sent.
    AcceptKey {
        /// The contact.
        name: String,
    },
    /// Shows the safety number of the conversation with a contact, to compare with theirs.
    SafetyNumber {
        /// The contact.
        name: String,
    },
    /// Marks a contact verified when NUMBER is the safety number you both see.
    Verify {
        /// The contact.
        name: String,
        /// The 60 digits (spaces allowed).
        number: String,
    },
    /// Prints events (messages received, statuses changed) as they happen.
    Watch {
        /// Machine-readable output (one JSON event per line).
        #[arg(long)]
        json: bool,
    },
    /// Dials a peer directly with the certificate and key in the given files, to check whom it
    /// lets in. Exits 0 when the peer accepted the connection, 1 when it refused.
    Probe {
        /// Who the peer must be.
        name: String,
        /// Its address, ending in /p2p/<peer id> (printed by its daemon: "listening on").
        address: libp2p::Multiaddr,
        /// The certificate to present (PEM).
        #[arg(long)]
        cert: PathBuf,
        /// Its Ed25519 private key (PKCS#8 PEM).
        #[arg(long)]
        key: PathBuf,
        /// The CA the peer's certificate must come from (PEM).
        #[arg(long)]
        ca: PathBuf,
    },
    /// Shows who this node is.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum BackupAction {
    /// Writes a backup to FILE (which must not exist), sealed with a passphrase (Argon2id).
    Create {
        /// The file.
        file: PathBuf,
        /// A file holding the passphrase.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Brings a backup into this install (after `login`): contacts, groups and history.
    Restore {
        /// The file.
        file: PathBuf,
        /// A file holding the passphrase.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum RequestsAction {
    /// Accepts someone's request: read receipts, typing and your profile go to them from now on.
    Accept {
        /// Who.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum ProfileAction {
    /// Sets your display name (and avatar) and shares it with your contacts.
    Set {
        /// The name to be shown by.
        #[arg(long)]
        display_name: String,
        /// A PNG, JPEG, GIF or WebP image of at most 128 KB.
        #[arg(long)]
        avatar: Option<PathBuf>,
    },
    /// Shows your profile.
    Show {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum FileAction {
    /// Starts fetching a file offered to you (files up to --auto-download-max start by
    /// themselves).
    Accept {
        /// The file's id (from `files`).
        id: String,
    },
    /// Copies a fetched file to DEST (which must not exist).
    Save {
        /// The file's id.
        id: String,
        /// Where to.
        dest: PathBuf,
        /// Wait until it is fetched (accepting it if needed), showing progress.
        #[arg(long)]
        wait: bool,
    },
    /// Stops fetching (or serving) a file.
    Cancel {
        /// The file's id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum GroupAction {
    /// Creates a group with you as its first admin; prints its id.
    Create {
        /// Its name.
        name: String,
        /// The other members, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        members: Vec<String>,
    },
    /// Lists your groups.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Shows a group: name, members, admins, version.
    Show {
        /// The group's id.
        id: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Adds members (admins only).
    Add {
        /// The group's id.
        id: String,
        /// Who.
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Removes members (admins only); they receive nothing new.
    Remove {
        /// The group's id.
        id: String,
        /// Who.
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Leaves a group.
    Leave {
        /// The group's id.
        id: String,
    },
    /// Renames a group (admins only).
    Rename {
        /// The group's id.
        id: String,
        /// The new name.
        name: String,
    },
    /// Makes a member an admin (admins only).
    Promote {
        /// The group's id.
        id: String,
        /// Who.
        user: String,
    },
}

#[derive(Debug, Subcommand)]
enum TotpAction {
    /// Starts enabling it: prints the secret for an authenticator app.
    Enable,
    /// Enables it with a first code from the app.
    Confirm {
        /// The code.
        code: String,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (default_filter, service) = match args.command {
        Command::Daemon { .. } => ("info", "peerchat"),
        Command::Demo { .. } => ("info", "peerchat-demo"),
        _ => ("warn", "peerchat-cli"),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("peerchat: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let telemetry = Arc::new(Telemetry::init(default_filter, service));
        let outcome = run(args, telemetry.clone()).await;
        telemetry.shutdown().await;
        outcome
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peerchat: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--rendezvous` must be an `https://` URL: the rendezvous speaks nothing else.
/// The conversation of an amending command (`--group GROUP`, or a person as the first word)
/// and the `wanted` words after it; `usage` when the words do not fit.
fn conversation(
    group: Option<String>,
    words: &[String],
    wanted: usize,
    usage: &str,
) -> Result<(Conversation, Vec<String>), CliError> {
    let (conversation, rest) = match group {
        Some(group) => (Conversation::Group(group), words),
        None => match words.split_first() {
            Some((name, rest)) => (Conversation::Person(name.clone()), rest),
            None => return Err(CliError(format!("usage: peerchat {usage}"))),
        },
    };
    if rest.len() != wanted {
        return Err(CliError(format!(
            "usage: peerchat {usage} (or --group GROUP instead of NAME)"
        )));
    }
    Ok((conversation, rest.to_vec()))
}

fn https_url(raw: &str) -> Result<String, String> {
    let rest = raw.strip_prefix("https://").ok_or_else(|| {
        format!("`{raw}` is not an https:// URL; the rendezvous is reached over HTTPS, e.g. https://localhost:8443")
    })?;
    if rest.trim_end_matches('/').is_empty() || rest.contains(char::is_whitespace) {
        return Err(format!(
            "`{raw}` names no host, e.g. https://localhost:8443"
        ));
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

/// The platform's data directory for peerchat (`~/.local/share/peerchat` on Linux), else
/// `./peerchat-data` when the platform has none (no home directory).
fn default_data_dir() -> PathBuf {
    directories::ProjectDirs::from("", "", "peerchat").map_or_else(
        || PathBuf::from("peerchat-data"),
        |d| d.data_dir().to_path_buf(),
    )
}

async fn run(args: Args, telemetry: Arc<Telemetry>) -> Result<(), CliError> {
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    let command = match args.command {
        Command::Daemon {
            rendezvous,
            ca_cert,
            api,
            allow_api_non_loopback,
            listen,
            no_read_receipts,
            notify,
            crl_refresh_secs,
            give_up_after_secs,
            mdns,
            no_relay,
            max_file_size,
            auto_download_max,
            download_dir,
            passphrase_file,
            plain_store,
        } => {
            let config = DaemonConfig {
                data_dir,
                rendezvous,
                ca_cert,
                api,
                api_any_address: allow_api_non_loopback,
                listen,
                read_receipts: !no_read_receipts,
                crl_refresh: std::time::Duration::from_secs(crl_refresh_secs.max(1)),
                give_up_after: std::time::Duration::from_secs(give_up_after_secs.max(1)),
                desktop_notifications: notify,
                mdns,
                relay: !no_relay,
                file_limits: peerchat::usecases::FileLimits {
                    max_bytes: max_file_size,
                    auto_download_bytes: auto_download_max.min(max_file_size),
                },
                download_dir,
                store_key: peerchat::driven::store_key::KeyOptions {
                    passphrase_file,
                    plain: plain_store,
                    ask: true,
                    throwaway: false,
                },
                telemetry: Some(telemetry),
            };
            return daemon::run(config, shutdown())
                .await
                .map_err(|e| CliError(e.to_string()));
        }
        Command::Demo { dir } => {
            return peerchat::demo::run(dir, shutdown())
                .await
                .map_err(|e| CliError(e.to_string()));
        }
        Command::Probe {
            name,
            address,
            cert,
            key,
            ca,
        } => {
            let peer = peerchat_pki::Username::new(&name).map_err(|e| CliError(e.to_string()))?;
            let probe = peerchat::probe::Probe {
                certificate: cert,
                key,
                ca,
                peer,
                address,
            };
            let ack = peerchat::probe::run(&probe)
                .await
                .map_err(|e| CliError(format!("probe refused: {e}")))?;
            println!("{name} accepted the connection (its answer to the probe: {ack:?})");
            return Ok(());
        }
        Command::Register { name } => CliCommand::Register { name },
        Command::Login { name, totp } => CliCommand::Login { name, totp },
        Command::Totp {
            action: TotpAction::Enable,
        } => CliCommand::TotpEnable,
        Command::Totp {
            action: TotpAction::Confirm { code },
        } => CliCommand::TotpConfirm { code },
        Command::Ui { print, base } => CliCommand::Ui {
            print_only: print,
            base,
        },
        Command::Send {
            group,
            reply_to,
            words,
        } => match (group, &words[..]) {
            (None, [name, text]) => CliCommand::Send {
                name: name.clone(),
                text: text.clone(),
                reply_to,
            },
            (Some(group), [text]) => CliCommand::SendGroup {
                group,
                text: text.clone(),
                reply_to,
            },
            (None, _) => return Err(CliError("usage: peerchat send NAME TEXT".into())),
            (Some(_), _) => {
                return Err(CliError(
                    "usage: peerchat send --group ID TEXT (no name with --group)".into(),
                ));
            }
        },
        Command::Search { text, json } => CliCommand::Search { text, json },
        Command::Edit { group, words } => {
            let (conversation, rest) = conversation(group, &words, 2, "edit NAME ID TEXT")?;
            CliCommand::Amend {
                conversation,
                id: rest[0].clone(),
                action: AmendBody::Edit {
                    text: rest[1].clone(),
                },
            }
        }
        Command::Delete { group, words } => {
            let (conversation, rest) = conversation(group, &words, 1, "delete NAME ID")?;
            CliCommand::Amend {
                conversation,
                id: rest[0].clone(),
                action: AmendBody::Delete,
            }
        }
        Command::React {
            group,
            remove,
            words,
        } => {
            let wanted = if remove { 1 } else { 2 };
            let usage = if remove {
                "react --remove NAME ID"
            } else {
                "react NAME ID EMOJI"
            };
            let (conversation, rest) = conversation(group, &words, wanted, usage)?;
            CliCommand::Amend {
                conversation,
                id: rest[0].clone(),
                action: AmendBody::React {
                    emoji: rest.get(1).cloned(),
                },
            }
        }
        Command::History {
            name: Some(name),
            json,
            ..
        } => CliCommand::History { name, json },
        Command::History {
            group: Some(group),
            json,
            ..
        } => CliCommand::GroupHistory { group, json },
        Command::History { .. } => {
            return Err(CliError("usage: peerchat history NAME | --group ID".into()));
        }
        Command::SendFile {
            group,
            words,
            wait,
            park,
        } => match (group, &words[..]) {
            (None, [name, path]) => CliCommand::SendFile {
                to: cli::FileTarget::Peer(name.to_string_lossy().into_owned()),
                path: path.clone(),
                wait,
                park,
            },
            (Some(_), [_]) if park => {
                return Err(CliError(
                    "--park is for a file to one person; a group's members serve each other".into(),
                ));
            }
            (Some(_), [_]) if wait => {
                return Err(CliError(
                    "--wait follows a file sent to one person; `files` shows a group file".into(),
                ));
            }
            (Some(group), [path]) => CliCommand::SendFile {
                to: cli::FileTarget::Group(group),
                path: path.clone(),
                wait,
                park,
            },
            (None, _) => return Err(CliError("usage: peerchat send-file NAME PATH".into())),
            (Some(_), _) => {
                return Err(CliError(
                    "usage: peerchat send-file --group ID PATH (no name with --group)".into(),
                ));
            }
        },
        Command::Files { json } => CliCommand::Files { json },
        Command::File {
            action: FileAction::Accept { id },
        } => CliCommand::FileAccept { id },
        Command::File {
            action: FileAction::Save { id, dest, wait },
        } => CliCommand::FileSave { id, dest, wait },
        Command::File {
            action: FileAction::Cancel { id },
        } => CliCommand::FileCancel { id },
        Command::Group { action } => CliCommand::Group(match action {
            GroupAction::Create { name, members } => cli::GroupCommand::Create { name, members },
            GroupAction::List { json } => cli::GroupCommand::List { json },
            GroupAction::Show { id, json } => cli::GroupCommand::Show { id, json },
            GroupAction::Add { id, users } => cli::GroupCommand::Add { id, users },
            GroupAction::Remove { id, users } => cli::GroupCommand::Remove { id, users },
            GroupAction::Leave { id } => cli::GroupCommand::Leave { id },
            GroupAction::Rename { id, name } => cli::GroupCommand::Rename { id, name },
            GroupAction::Promote { id, user } => cli::GroupCommand::Promote { id, user },
        }),
        Command::Contacts { json } => CliCommand::Contacts { json },
        Command::Requests { action, json } => CliCommand::People(match action {
            None => PeopleCommand::Requests { json },
            Some(RequestsAction::Accept { name }) => PeopleCommand::Accept { name },
        }),
        Command::Block { name } => CliCommand::People(PeopleCommand::Block {
            name,
            blocked: true,
        }),
        Command::Unblock { name } => CliCommand::People(PeopleCommand::Block {
            name,
            blocked: false,
        }),
        Command::Export {
            name,
            group,
            format,
            output,
        } => CliCommand::Archive(ArchiveCommand::Export {
            what: match (name, group) {
                (Some(name), _) => ExportWhat::Person(name),
                (None, Some(group)) => ExportWhat::Group(group),
                (None, None) => ExportWhat::All,
            },
            format,
            output,
        }),
        Command::Backup { action } => CliCommand::Archive(match action {
            BackupAction::Create {
                file,
                passphrase_file,
            } => ArchiveCommand::BackupCreate {
                file,
                passphrase_file,
            },
            BackupAction::Restore {
                file,
                passphrase_file,
            } => ArchiveCommand::BackupRestore {
                file,
                passphrase_file,
            },
        }),
        Command::Blocked { json } => CliCommand::People(PeopleCommand::Blocked { json }),
        Command::Profile { action } => CliCommand::People(match action {
            ProfileAction::Set {
                display_name,
                avatar,
            } => PeopleCommand::SetProfile {
                display_name,
                avatar,
            },
            ProfileAction::Show { json } => PeopleCommand::ShowProfile { json },
        }),
        Command::Status { json } => CliCommand::Status { json },
        Command::Watch { json } => CliCommand::Watch { json },
        Command::Logout => CliCommand::Logout,
        Command::Retry { name, id } => CliCommand::Retry { name, id },
        Command::AcceptKey { name } => CliCommand::AcceptKey { name },
        Command::SafetyNumber { name } => CliCommand::SafetyNumber { name },
        Command::Verify { name, number } => CliCommand::Verify { name, number },
    };
    cli::execute(&data_dir, command).await
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}
