//! The `tokend` binary and its environment: which `TOKEND_*` variables are configuration, and
//! how `tokend export` writes its file. Self-contained (no `mod support`): it drives the built
//! binary the way an operator does.
// Test code: a failed step should panic with its message, like a failed assertion.

use std::path::Path;
use std::process::{Command, Output};

/// The built `tokend`, with every `TOKEND_*` variable of the test's own environment removed so
/// that only what a test sets is seen.
fn tokend() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tokend"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().to_ascii_uppercase().starts_with("TOKEND_") {
            command.env_remove(name);
        }
    }
    command
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `check-config` on a fresh data directory with `extra` variables set.
fn check_config(data_dir: &Path, extra: &[(&str, &str)]) -> Output {
    let mut command = tokend();
    command.arg("--data-dir").arg(data_dir).arg("check-config");
    for (name, value) in extra {
        command.env(name, value);
    }
    command.output().unwrap()
}

/// The variables an admin exports for `tokenctl` (README) and for `examples/worker.rs` are not
/// tokend configuration: tokend starts in the same shell.
#[test]
fn tokenctl_environment_is_not_configuration() {
    let dir = crate::support::private_tempdir().unwrap();
    let out = check_config(
        dir.path(),
        &[
            ("TOKEND_ADDR", "http://127.0.0.1:50051"),
            ("TOKEND_TOKEN", "a-bearer-token"),
            ("TOKEND_TOKEN_FILE", "/run/secrets/tokend-token"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("a-bearer-token"), "{text}");
}

/// Section variables and the documented top-level names are still configuration.
#[test]
fn configuration_variables_apply() {
    let dir = crate::support::private_tempdir().unwrap();
    let out = check_config(
        dir.path(),
        &[("TOKEND_GRPC__LISTEN", "127.0.0.1:50999"), ("TOKEND_PRUNE_PROFILES", "true"), ("TOKEND_TOKEN", "x")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("listen = \"127.0.0.1:50999\""), "{text}");
    assert!(text.contains("prune_profiles = true"), "{text}");
    let out = tokend().env("TOKEND_DATA_DIR", dir.path().join("d")).arg("check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{}", dir.path().join("d").display())));
}

/// A misspelled configuration variable is still refused (exit 78), naming the key and the
/// variable it came from.
#[test]
fn misspelled_configuration_variable_is_an_error() {
    let dir = crate::support::private_tempdir().unwrap();
    let out = check_config(dir.path(), &[("TOKEND_GRPC__LISTNE", "127.0.0.1:1")]);
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(message.contains("grpc.listne") && message.contains("TOKEND_GRPC__LISTNE"), "{message}");
}

/// `tokend export --output <output>` of a fresh data directory under `dir`.
fn export_to(dir: &Path, output: &Path) -> Output {
    tokend().arg("--data-dir").arg(dir.join("data")).arg("export").arg("--output").arg(output).output().unwrap()
}

/// `tokend export --output F` refuses an existing file and leaves it as it was.
#[test]
fn export_refuses_an_existing_file() {
    let dir = crate::support::private_tempdir().unwrap();
    let output = dir.path().join("backup.jsonl");
    std::fs::write(&output, "precious\n").unwrap();
    let out = export_to(dir.path(), &output);
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("exists"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&output).unwrap(), "precious\n");
}

/// `tokend export --output F` creates F readable by its owner only (the backup holds sealed
/// secrets and the names of every connected app).
#[cfg(unix)]
#[test]
fn export_file_is_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = crate::support::private_tempdir().unwrap();
    let output = dir.path().join("backup.jsonl");
    let out = export_to(dir.path(), &output);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mode = std::fs::metadata(&output).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "mode {mode:o}");
    assert!(!dir.path().join("backup.jsonl.partial").exists());
}

/// Waits up to `secs` for `child` to exit; kills it and returns `None` if it does not.
fn exit_within(child: &mut std::process::Child, secs: u64) -> Option<std::process::ExitStatus> {
    for _ in 0..secs * 50 {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// `serve` on a fresh data directory, both listeners on port 0, with `key` in `TOKEND_KEY`.
fn serve_with_key(data_dir: &Path, key: &str) -> std::process::Child {
    tokend()
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .env("TOKEND_KEY", key)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// `TOKEND_KEY` holds the key itself and wins over any key file (README, SECURITY.md): a bad
/// one stops tokend at start (exit 65 naming it), and with a good one no key file is generated.
#[test]
fn tokend_key_from_the_environment_is_used() {
    let dir = crate::support::private_tempdir().unwrap();
    let mut child = serve_with_key(&dir.path().join("bad"), "not a key");
    let status = exit_within(&mut child, 10).expect("a bad TOKEND_KEY must stop tokend at start");
    let mut message = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut message).unwrap();
    assert_eq!(status.code(), Some(65), "{message}");
    assert!(message.contains("TOKEND_KEY"), "{message}");

    let data = dir.path().join("good");
    let mut child = serve_with_key(&data, tokend::crypto::generate_key_text().as_str());
    for _ in 0..500 {
        if data.join("admin.token").exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(data.join("admin.token").exists(), "tokend did not start");
    assert!(!data.join("tokend.key").exists(), "a key file was generated although TOKEND_KEY is set");
}
