//! A private PostgreSQL server for the tests that configure the server itself (TLS, synchronous
//! replication): `initdb` into a temporary directory, its own loopback port, stopped with the
//! test (also when it fails). As root, the server runs as the `postgres` user (`runuser`), as
//! PostgreSQL refuses to run as root.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The machine's shared server, which `PORTCULLIS_TEST_POSTGRES` overrides; tests on it keep
/// to schemas of their own.
pub fn shared_server_url() -> String {
    std::env::var("PORTCULLIS_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
}

/// The newest installed PostgreSQL's programs.
fn bin() -> PathBuf {
    std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL must be installed (/usr/lib/postgresql/*/bin)")
        .map(|e| e.unwrap().path().join("bin"))
        .max()
        .unwrap()
}

fn as_postgres(program: &Path) -> Command {
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    command.stdout(Stdio::null()).stderr(Stdio::null());
    command
}

/// A running private server.
pub struct PrivatePostgres {
    pub port: u16,
    /// Its data directory (certificates go here).
    pub data: PathBuf,
    bin: PathBuf,
    _root: tempfile::TempDir,
}

impl PrivatePostgres {
    /// `initdb`, then `configure` may write files into the data directory (owned by the server
    /// afterwards), then `settings` go to `postgresql.auto.conf` and `hba` replaces
    /// `pg_hba.conf`; then the server starts.
    pub fn start(settings: &str, hba: &str, configure: impl FnOnce(&Path)) -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = bin();
        let data = root.path().join("data");
        let socket = root.path().join("socket");
        std::fs::create_dir_all(&socket).unwrap();
        if is_root() {
            chown(root.path());
        }
        let ok = as_postgres(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .status()
            .unwrap();
        assert!(ok.success(), "initdb failed");
        let port = free_port();
        std::fs::write(
            data.join("postgresql.auto.conf"),
            format!(
                "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\n{settings}\n",
                socket.display()
            ),
        )
        .unwrap();
        std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
        configure(&data);
        if is_root() {
            chown(&data);
        }
        let server = Self {
            port,
            data,
            bin,
            _root: root,
        };
        let ok = as_postgres(&server.bin.join("pg_ctl"))
            .args(["-w", "-t", "30", "-l"])
            .arg(server.data.join("log"))
            .arg("-D")
            .arg(&server.data)
            .arg("start")
            .status()
            .unwrap();
        assert!(
            ok.success(),
            "pg_ctl start failed: {}",
            std::fs::read_to_string(server.data.join("log")).unwrap_or_default()
        );
        server
    }
}

fn chown(path: &Path) {
    let ok = Command::new("chown")
        .args(["-R", "postgres"])
        .arg(path)
        .status()
        .unwrap();
    assert!(ok.success());
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .args(["-w", "-m", "immediate", "-D"])
            .arg(&self.data)
            .arg("stop")
            .status();
    }
}
