//! `peerchat`: the daemon and the CLI that talks to it. Wiring only.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use peerchat::daemon::{self, DaemonConfig};
use peerchat::driving::api::{
    ContactView, MessageView, RegisterBody, SafetyNumberView, SendAnswer, SendBody, VerifyBody,
};
use peerchat::driving::cli::{ApiClient, CliError};
use peerchat::usecases::NodeStatus;
use peerchat_pki::Username;
use reqwest::Method;

/// peerchat: peer-to-peer, end-to-end encrypted chat.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The node's data directory (keys, messages, the daemon's API address and token).
    #[arg(
        long,
        global = true,
        env = "PEERCHAT_DATA_DIR",
        default_value = "peerchat-data"
    )]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the node.
    Daemon {
        /// The rendezvous, e.g. https://localhost:8443.
        #[arg(long, env = "PEERCHAT_RENDEZVOUS")]
        rendezvous: String,
        /// The rendezvous CA certificate to trust (else it is pinned on first contact).
        #[arg(long, env = "PEERCHAT_CA_CERT")]
        ca_cert: Option<PathBuf>,
        /// Local API address (loopback).
        #[arg(long, env = "PEERCHAT_API", default_value = "127.0.0.1:0")]
        api: std::net::SocketAddr,
        /// Peer-to-peer listen address.
        #[arg(long, env = "PEERCHAT_LISTEN", default_value = "/ip4/127.0.0.1/tcp/0")]
        listen: libp2p::Multiaddr,
        /// Do not tell senders when their messages were read.
        #[arg(long, env = "PEERCHAT_NO_READ_RECEIPTS")]
        no_read_receipts: bool,
        /// Show a desktop notification (notify-send) when a message arrives (sender only).
        #[arg(long, env = "PEERCHAT_NOTIFY")]
        notify: bool,
        /// How often to fetch the certificate revocation list, in seconds.
        #[arg(long, env = "PEERCHAT_CRL_REFRESH_SECS", default_value_t = 300)]
        crl_refresh_secs: u64,
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
    },
    /// Sends a message.
    Send {
        /// The recipient.
        name: String,
        /// The text.
        text: String,
    },
    /// Shows the conversation with someone.
    History {
        /// The other person.
        name: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
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
    /// Shows who this node is.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let daemon = matches!(args.command, Command::Daemon { .. });
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(if daemon { "info" } else { "warn" })
            }),
        )
        .with_writer(std::io::stderr)
        .init();
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
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peerchat: {e}");
            ExitCode::FAILURE
        }
    }
}

fn username(raw: &str) -> Result<Username, CliError> {
    Username::from_user_input(raw).map_err(|e| CliError(format!("{raw:?}: {e}")))
}

fn password() -> Result<String, CliError> {
    if let Ok(p) = std::env::var("PEERCHAT_PASSWORD") {
        return Ok(p);
    }
    rpassword::prompt_password("password: ")
        .map_err(|e| CliError(format!("cannot read the password: {e}")))
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

async fn run(args: Args) -> Result<(), CliError> {
    let data_dir = args.data_dir;
    match args.command {
        Command::Daemon {
            rendezvous,
            ca_cert,
            api,
            listen,
            no_read_receipts,
            crl_refresh_secs,
            notify,
        } => {
            let config = DaemonConfig {
                data_dir,
                rendezvous,
                ca_cert,
                api,
                listen,
                read_receipts: !no_read_receipts,
                crl_refresh: std::time::Duration::from_secs(crl_refresh_secs.max(1)),
                desktop_notifications: notify,
            };
            daemon::run(config, shutdown())
                .await
                .map_err(|e| CliError(e.to_string()))
        }
        Command::Demo { dir } => peerchat::demo::run(dir, shutdown())
            .await
            .map_err(|e| CliError(e.to_string())),
        Command::Register { name } => {
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
        Command::Login { name } => {
            let body = RegisterBody {
                username: username(&name)?,
                password: password()?,
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
        Command::Send { name, text } => {
            let body = SendBody {
                to: username(&name)?,
                text,
                id: None,
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
        Command::History {
            name,
            json: as_json,
        } => {
            let peer = username(&name)?;
            let client = ApiClient::from_data_dir(&data_dir)?;
            let messages: Vec<MessageView> = client
                .call::<(), _>(Method::GET, &format!("/api/v1/conversations/{peer}"), None)
                .await?;
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
            if contacts.iter().any(|c| c.username == peer && c.key_changed) {
                println!(
                    "WARNING: {peer}'s key has changed; messages to them are held until you run `peerchat accept-key {peer}`"
                );
            }
            for m in messages {
                let status = serde_json::to_string(&m.status).unwrap_or_default();
                println!(
                    "{} {}: {}  [{}]",
                    clock(m.sent_at_ms),
                    m.author,
                    m.text,
                    status.trim_matches('"')
                );
            }
            Ok(())
        }
        Command::Contacts { json: as_json } => {
            let contacts: Vec<ContactView> = ApiClient::from_data_dir(&data_dir)?
                .call::<(), _>(Method::GET, "/api/v1/contacts", None)
                .await?;
            if as_json {
                return json(&contacts);
            }
            for c in contacts {
                println!(
                    "{}  key {}…  {}",
                    c.username,
                    &c.identity_key[..16.min(c.identity_key.len())],
                    if c.verified { "verified" } else { "unverified" }
                );
                if c.key_changed {
                    println!(
                        "  WARNING: {}'s key has changed; compare safety numbers, then `peerchat accept-key {}`",
                        c.username, c.username
                    );
                }
            }
            Ok(())
        }
        Command::Retry { name, id } => {
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
        Command::Logout => {
            ApiClient::from_data_dir(&data_dir)?
                .call::<(), ()>(Method::POST, "/api/v1/logout", None)
                .await?;
            println!("logged out: this node's certificate is revoked");
            Ok(())
        }
        Command::AcceptKey { name } => {
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
        Command::SafetyNumber { name } => {
            let peer = username(&name)?;
            let number: SafetyNumberView = ApiClient::from_data_dir(&data_dir)?
                .call::<(), _>(
                    Method::GET,
                    &format!("/api/v1/contacts/{peer}/safety-number"),
                    None,
                )
                .await?;
            println!("{}", number.number);
            Ok(())
        }
        Command::Verify { name, number } => {
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
        Command::Watch { json: as_json } => {
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
                                    &format!("/api/v1/conversations/{peer}"),
                                    None,
                                )
                                .await
                                .unwrap_or_default();
                            match history.iter().find(|m| m.id.to_string() == id) {
                                Some(m) => {
                                    println!("{} {}: {}", clock(m.sent_at_ms), m.author, m.text)
                                }
                                None => println!("message {id} from {peer}"),
                            }
                        }
                        "key_changed" => println!("WARNING: {peer}'s key has changed"),
                        "peer_online" => println!("{peer} is online"),
                        "peer_offline" => println!("{peer} went offline"),
                        _ => println!(
                            "message {id} to {peer}: {}",
                            event["status"].as_str().unwrap_or_default()
                        ),
                    }
                }
            };
            let follow = async move { client_events(&data_dir, tx).await };
            let (followed, ()) = tokio::join!(follow, printer);
            followed
        }
        Command::Status { json: as_json } => {
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
                None => println!("not registered; run `peerchat register NAME`"),
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
