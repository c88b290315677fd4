//! The `tokend` binary as operators meet it: exit codes, chores as subcommands.

use std::process::Command;

fn tokend() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tokend"))
}

/// A bad configuration exits 78 with a message naming the key.
#[test]
fn bad_config_exits_78_naming_the_key() {
    let dir = crate::support::private_tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[refresh]\nbackoff_initial_secs = 0\n").unwrap();
    let out = tokend().arg("--config").arg(&file).arg("check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refresh.backoff"), "{stderr}");
    let out = tokend().arg("--config").arg(dir.path().join("missing.toml")).arg("check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let out = tokend().env("TOKEND_GRPC__LISTEN", "not-an-address").arg("check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("grpc.listen"));
}

/// `check-config` prints the effective configuration, env and flags applied.
#[test]
fn check_config_shows_layers() {
    let out = tokend()
        .env("TOKEND_REFRESH__SKEW_RATIO", "0.3")
        .args(["--data-dir", "/srv/tokend", "check-config"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("data_dir = \"/srv/tokend\""), "{text}");
    assert!(text.contains("skew_ratio = 0.3"), "{text}");
}

/// `gen-key` prints a usable key; `mint-token` prints a token and the matching config entry.
#[test]
fn key_and_token_chores() {
    let out = tokend().arg("gen-key").output().unwrap();
    assert!(out.status.success());
    let key = String::from_utf8(out.stdout).unwrap();
    assert!(tokend::crypto::decode_key(&key).is_ok());
    let out =
        tokend().args(["mint-token", "--role", "consumer", "--name", "w", "--profile", "mail-*"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text.lines().next().unwrap().rsplit(' ').next().unwrap();
    assert!(token.len() >= 22, "at least 128 bits");
    assert!(text.contains(&tokend::grpc::auth::hash_token(token)), "{text}");
}

/// A second daemon on a data directory in use exits 75 (retry), without touching it.
#[test]
fn locked_data_dir_exits_75() {
    let dir = crate::support::private_tempdir().unwrap();
    let mut first = tokend()
        .args(["--data-dir"])
        .arg(dir.path())
        .args(["--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the first daemon holds the store (its admin token is written after that).
    for _ in 0..200 {
        if dir.path().join("admin.token").exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = tokend()
        .args(["--data-dir"])
        .arg(dir.path())
        .args(["--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let _ = first.kill();
    let _ = first.wait();
    assert_eq!(out.status.code(), Some(75), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another process"));
}

/// Under systemd (`NOTIFY_SOCKET`), tokend reports READY once serving, feeds the watchdog while
/// the engine runs, and reports STOPPING on SIGTERM, then exits 0.
#[cfg(unix)]
#[test]
fn systemd_notify_and_sigterm() {
    use std::os::unix::net::UnixDatagram;
    let dir = crate::support::private_tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    let mut child = tokend()
        .args(["--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut received = String::new();
    let mut buf = [0u8; 4096];
    while !(received.contains("READY=1") && received.contains("WATCHDOG=1")) {
        let n = socket.recv(&mut buf).expect("a notification before the timeout");
        received.push_str(&String::from_utf8_lossy(&buf[..n]));
        received.push('\n');
    }
    assert!(received.contains("STATUS=serving; gRPC"), "{received}");
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    while !received.contains("STOPPING=1") {
        let n = socket.recv(&mut buf).expect("STOPPING before the timeout");
        received.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let exit = child.wait().unwrap();
    assert_eq!(exit.code(), Some(0));
}
