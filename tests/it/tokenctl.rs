//! The `tokenctl` binary as an admin or a script meets it, against the real daemon in-process and
//! the fake provider: the consent round trip, tokens on stdout, JSON output and exit codes; in
//! [`tls`], a daemon that speaks TLS and callers known by their client certificate.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;

use crate::support::*;

mod tls;

/// `tokenctl` aimed at `addr`, the environment cleared of tokenctl's variables and of the
/// system trust store overrides (so each test says which roots it trusts).
fn tokenctl_bare(addr: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tokenctl"));
    for var in [
        "TOKEND_ADDR",
        "TOKEND_TOKEN",
        "TOKEND_TOKEN_FILE",
        "TOKENCTL_CA_FILE",
        "TOKENCTL_CERT_FILE",
        "TOKENCTL_KEY_FILE",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
    ] {
        command.env_remove(var);
    }
    command.args(["--addr", addr]);
    command
}

/// `tokenctl` aimed at `addr` with `token`.
fn tokenctl_at(addr: &str, token: &str) -> Command {
    let mut command = tokenctl_bare(addr);
    command.args(["--token", token]).env("FAKE_SECRET", "test-secret");
    command
}

/// `tokenctl` aimed at `daemon` with `token`.
fn tokenctl(daemon: &TestDaemon, token: &str) -> Command {
    tokenctl_at(&format!("http://{}", daemon.daemon().grpc_addr), token)
}

/// Runs a command to the end, off the runtime's threads.
async fn output(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().expect("tokenctl runs")).await.expect("join")
}

/// Runs `tokenctl args…` as the admin.
async fn run(daemon: &TestDaemon, args: &[&str]) -> Output {
    let mut command = tokenctl(daemon, ADMIN);
    command.args(args);
    output(command).await
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Creates `name` for the fake provider through `tokenctl create`, the secret from the environment.
async fn create(daemon: &TestDaemon, name: &str, provider: &FakeProvider) {
    let (auth, token) = (provider.authorization_endpoint(), provider.token_endpoint());
    let revoke = provider.revocation_endpoint();
    let args = [
        "create",
        name,
        "--provider",
        "custom",
        "--client-id",
        "test-client",
        "--client-secret-env",
        "FAKE_SECRET",
        "--scope",
        "files.read",
        "--authorization-endpoint",
        &auth,
        "--token-endpoint",
        &token,
        "--revocation-endpoint",
        &revoke,
        "--description",
        "Box for ops",
    ];
    let out = run(daemon, &args).await;
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Starts `tokenctl connect name` (waiting), its stdout lines forwarded as they come.
fn start_connect(daemon: &TestDaemon, name: &str) -> (Child, UnboundedReceiver<String>) {
    let mut child = tokenctl(daemon, ADMIN)
        .args(["connect", name])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tokenctl starts");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// The authorization URL a waiting `tokenctl connect` printed.
async fn authorization_url(lines: &mut UnboundedReceiver<String>, name: &str) -> String {
    let first = tokio::time::timeout(Duration::from_secs(20), lines.recv()).await.expect("in time");
    assert_eq!(first.as_deref(), Some(format!("Open this URL in a browser to connect {name}:").as_str()));
    lines.recv().await.expect("the URL line")
}

/// Waits for a `tokenctl connect` to exit; returns its exit code, the rest of stdout, and stderr.
async fn finish(child: Child, mut lines: UnboundedReceiver<String>) -> (Option<i32>, String, String) {
    let wait = tokio::task::spawn_blocking(move || child.wait_with_output().expect("wait"));
    let out = tokio::time::timeout(Duration::from_secs(20), wait).await.expect("exits in time").expect("join");
    let mut rest = Vec::new();
    while let Some(line) = lines.recv().await {
        rest.push(line);
    }
    (out.status.code(), rest.join("\n"), stderr(&out))
}

/// `connect` waits while the admin consents in the browser, then says so; `token` prints only the
/// token; `list` shows the row; `disconnect` reports the revocation; `token` then exits 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_waits_for_consent_and_token_prints_it() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start().await;
    create(&daemon, "box-ops", &provider).await;

    let (child, mut lines) = start_connect(&daemon, "box-ops");
    let url = authorization_url(&mut lines, "box-ops").await;
    let redirect = consent_redirect(&url).await;
    let page = browser().get(&redirect).send().await.expect("callback");
    assert_eq!(page.status().as_u16(), 200);
    let (code, rest, err) = finish(child, lines).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(rest, "box-ops connected");

    let out = run(&daemon, &["token", "box-ops", "--min-valid-for", "30"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(provider.issued_access_tokens(), vec![stdout(&out).trim_end().to_owned()]);

    let out = run(&daemon, &["list", "--wide"]).await;
    let table = stdout(&out);
    let mut rows = table.lines();
    let header = rows.next().unwrap_or_default();
    assert!(header.starts_with("NAME     DESCRIPTION  PROVIDER  AUTHORIZATION EXPIRES  STATUS"), "{table}");
    let row = rows.next().unwrap_or_default();
    for cell in ["box-ops", "Box for ops", "custom", "Connected", "enabled", "Disconnect"] {
        assert!(row.contains(cell), "{cell:?} in {table}");
    }
    assert!(row.contains("59m") || row.contains("1h00m"), "time left in {table}");

    let out = run(&daemon, &["--output", "json", "list"]).await;
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(list[0]["name"], "box-ops");
    assert_eq!(list[0]["status"], "STATUS_CONNECTED");
    assert!(list[0]["authorization_expires_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{list}");

    let out = run(&daemon, &["disconnect", "box-ops"]).await;
    assert_eq!(stdout(&out).trim_end(), "box-ops disconnected: the provider revoked the token");
    let out = run(&daemon, &["token", "box-ops"]).await;
    assert_eq!(out.status.code(), Some(5));
    assert!(out.stdout.is_empty());
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(stderr(&out).starts_with("tokenctl: getting a token for box-ops: "), "{}", stderr(&out));
}

/// A consent the user denies ends the wait with exit 1 and the provider's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_consent_fails_the_wait() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start().await;
    create(&daemon, "box-ops", &provider).await;
    provider.deny_next_consent();

    let (child, mut lines) = start_connect(&daemon, "box-ops");
    let url = authorization_url(&mut lines, "box-ops").await;
    let redirect = consent_redirect(&url).await;
    let _ = browser().get(&redirect).send().await.expect("callback");
    let (code, rest, err) = finish(child, lines).await;
    assert_eq!(code, Some(1), "{rest}");
    assert!(err.starts_with("tokenctl: connecting box-ops: ") && err.contains("access_denied"), "{err}");
}

/// `connect --no-wait` prints the URL and returns; `complete` finishes the consent by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_finishes_a_consent_by_hand() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start().await;
    create(&daemon, "box-ops", &provider).await;

    let out = run(&daemon, &["connect", "box-ops", "--no-wait"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let url = stdout(&out).lines().nth(1).unwrap_or_default().to_owned();
    let redirect = consent_redirect(&url).await;
    let out = run(&daemon, &["complete", &redirect]).await;
    assert_eq!(stdout(&out).trim_end(), "box-ops connected", "{}", stderr(&out));
    let out = run(&daemon, &["--output", "json", "get", "box-ops"]).await;
    let profile: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(profile["status"], "STATUS_CONNECTED");
    assert_eq!(profile["client_secret_set"], true);
}

/// Scripts can tell failures apart by exit code, each with one line on stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_tell_scripts_what_failed() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start().await;
    create(&daemon, "box-ops", &provider).await;

    let mut wrong_token = tokenctl(&daemon, "not-a-known-token");
    wrong_token.arg("list");
    let mut unreachable = tokenctl_at("http://127.0.0.1:1", ADMIN);
    unreachable.arg("list");
    let dup = [
        "create",
        "box-ops",
        "--provider",
        "custom",
        "--client-id",
        "c",
        "--token-endpoint",
        "http://127.0.0.1:1/t",
        "--authorization-endpoint",
        "http://127.0.0.1:1/a",
    ];
    let cases = [
        (run(&daemon, &["get", "nope"]).await, 3),
        (output(wrong_token).await, 4),
        (run(&daemon, &["refresh", "box-ops"]).await, 5),
        (output(unreachable).await, 6),
        (run(&daemon, &dup).await, 7),
        (run(&daemon, &["update", "box-ops"]).await, 2),
    ];
    for (out, code) in cases {
        assert_eq!(out.status.code(), Some(code), "{}", stderr(&out));
        assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
        assert!(stderr(&out).starts_with("tokenctl: "), "{}", stderr(&out));
    }
    let out = run(&daemon, &["delete", "box-ops"]).await;
    assert_eq!(stdout(&out).trim_end(), "box-ops deleted: no tokens were held");
}

/// `backup` writes a complete file (mode 0600) and refuses to overwrite one; `rotate-keys`
/// prints the key table; viewers get exit code 4; completions print without a daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_rotate_keys_and_completions() {
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start().await;
    let mut apps = daemon.apps(ADMIN).await;
    create_and_connect(&mut apps, "mail-backup", &provider).await;

    let file = daemon.dir.path().join("backup.jsonl");
    let path = file.to_str().unwrap();
    let out = run(&daemon, &["backup", path]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("entries"), "{}", stderr(&out));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.lines().count() > 3 && text.ends_with('\n'));
    assert!(!daemon.dir.path().join("backup.jsonl.partial").exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let again = run(&daemon, &["backup", path]).await;
    assert_eq!(again.status.code(), Some(2), "an existing file is not overwritten");

    let out = run(&daemon, &["rotate-keys", "--dry-run"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(table.starts_with("KEY ID"), "{table}");
    assert!(table.lines().nth(1).is_some_and(|l| l.contains("yes") && l.trim_end().ends_with('4')), "{table}");
    let out = run(&daemon, &["rotate-keys", "--output", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["unreadable"], 0);

    let mut viewer = tokenctl(&daemon, VIEWER);
    viewer.args(["rotate-keys", "--dry-run"]);
    assert_eq!(output(viewer).await.status.code(), Some(4));

    let mut completions = tokenctl_at("http://127.0.0.1:1", "unused");
    completions.args(["completions", "bash"]);
    let out = output(completions).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("rotate-keys"));
    daemon.stop().await;
}

/// `watch` that falls behind tokend's events (tokend ends such a watch with ABORTED, since what
/// it missed is unknown) watches again from the current state instead of exiting: it says so on
/// stderr, prints the profiles' `initial` events again, and goes on with the new events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_that_falls_behind_watches_again() {
    use tokend::api::pb::{Status, profile_event::Kind};
    let provider = FakeProvider::start().await;
    let daemon = TestDaemon::start().await;
    create(&daemon, "box-ops", &provider).await;
    let mut child = tokenctl(&daemon, ADMIN)
        .arg("watch")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tokenctl starts");
    let lines = |stream: Box<dyn std::io::Read + Send>| {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        rx
    };
    let mut out = lines(Box::new(child.stdout.take().expect("stdout")));
    let mut err = lines(Box::new(child.stderr.take().expect("stderr")));
    wait_for(&mut out, "initial  box-ops").await;

    // Stopped, tokenctl reads nothing: tokend's stream for it fills the HTTP/2 window, and the
    // events after that overflow the daemon's event channel.
    let signal = |name: &str| {
        let status = Command::new("sh").args(["-c", &format!("kill {name} {}", child.id())]).status().expect("sh runs");
        assert!(status.success(), "kill {name}");
    };
    signal("-STOP");
    for _ in 0..200_000 {
        daemon.daemon().engine().publish("flood", Kind::Updated, Status::Connected, Status::Connected);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal("-CONT");

    let notice = wait_for(&mut err, "watching again").await;
    assert!(notice.starts_with("tokenctl: ") && notice.contains("watch again"), "{notice}");
    wait_for(&mut out, "initial  box-ops").await;
    daemon.daemon().engine().publish("marker", Kind::Updated, Status::Connected, Status::Connected);
    wait_for(&mut out, "marker").await;
    assert_eq!(child.try_wait().expect("try_wait"), None, "tokenctl watch exited");
    child.kill().expect("kill");
    let _ = child.wait();
    daemon.stop().await;
}

/// The first line from `rx` that contains `what` (30 s at most); the panic shows the last line
/// seen before it.
async fn wait_for(rx: &mut UnboundedReceiver<String>, what: &str) -> String {
    let mut last = String::new();
    let found = async {
        while let Some(line) = rx.recv().await {
            if line.contains(what) {
                return Some(line);
            }
            last = line;
        }
        None
    };
    match tokio::time::timeout(Duration::from_secs(30), found).await {
        Ok(Some(line)) => line,
        Ok(None) => panic!("the output ended before {what:?}; its last line: {last:?}"),
        Err(_) => panic!("no {what:?} in 30 s"),
    }
}
