//! A PostgreSQL server of the test's own: Debian's binaries (`/usr/lib/postgresql/*/bin`),
//! `initdb` into a temporary directory as an unprivileged user (`nobody` when the test runs as
//! root), listening on 127.0.0.1 on a free port only, stopped and removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The running server.
pub struct Postgres {
    child: Child,
    /// Removed on drop, after the server stopped.
    _dir: tempfile::TempDir,
    /// `postgres://peerchat@127.0.0.1:PORT/postgres`.
    pub url: String,
}

fn binaries() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().expect(
        "PostgreSQL's server binaries are missing: apt-get install postgresql (.ci/run does)",
    )
}

/// The uid and gid to run the server as: ours, or `nobody`'s when we are root (initdb refuses
/// to run as root).
fn unprivileged() -> Option<(u32, u32)> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|u| u.parse::<u32>().ok())?;
    if uid != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let nobody = passwd.lines().find(|l| l.starts_with("nobody:"))?;
    let fields: Vec<&str> = nobody.split(':').collect();
    Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?))
}

fn as_server_user(mut command: Command, user: Option<(u32, u32)>) -> Command {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
    command
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Postgres {
    /// Initializes and starts a server; returns once it accepts connections.
    pub fn start() -> Self {
        let bin = binaries();
        let user = unprivileged();
        let dir = tempfile::Builder::new()
            .prefix("peerchat-pg")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        let sockets = dir.path().join("run");
        std::fs::create_dir(&sockets).unwrap();
        if let Some((uid, gid)) = user {
            for path in [dir.path(), &sockets] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
            }
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args([
                "-A",
                "trust",
                "-U",
                "peerchat",
                "-E",
                "UTF8",
                "--no-instructions",
            ])
            .arg("-D")
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let out = as_server_user(initdb, user).output().unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let mut postgres = Command::new(bin.join("postgres"));
        postgres
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-k")
            .arg(&sockets)
            .args(["-c", "max_connections=200"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = as_server_user(postgres, user).spawn().unwrap();
        let server = Self {
            child,
            _dir: dir,
            url: format!("postgres://peerchat@127.0.0.1:{port}/postgres"),
        };
        server.wait_ready(&bin, port);
        server
    }

    fn wait_ready(&self, bin: &Path, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "peerchat"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "PostgreSQL did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGQUIT: the server stops at once (nothing of a test's database is worth keeping).
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
