//! The landing page in a real browser: headless Chromium driven over WebDriver (chromedriver,
//! through `fantoccini`) like a person — by labels, headings and button texts — against the
//! real daemon and the interop authorization server's own login and consent pages. axe-core
//! (from `interop/node_modules`) is injected to check accessibility. Screenshots go to
//! `target/web-screenshots/`.
//!
//! Nothing is skipped: without Chromium, chromedriver or the npm packages the tests fail and
//! say to run `scripts/test.sh`, which installs them.

mod flows;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One Chromium at a time: the machine running the suite also runs the interop tests' Node
/// servers and daemons, and two browsers at once starve them (their start-up has a timeout).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// chromedriver on a free loopback port and one headless Chromium session; both end on drop.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session, 1400×1000.
    pub async fn start() -> Browser {
        for (path, what) in [(CHROMEDRIVER, "chromium-driver"), (CHROMIUM, "chromium")] {
            assert!(
                std::path::Path::new(path).is_file(),
                "{path} is missing: the landing page's browser tests need Debian's `chromium` and \
                 `chromium-driver`. Run scripts/test.sh (it installs {what} with apt-get), then rerun."
            );
        }
        let turn = ONE_AT_A_TIME.lock().await;
        let port = crate::support::free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let mut browser_args =
            vec!["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"];
        browser_args.extend(["--disable-gpu", "--no-first-run", "--disable-extensions"]);
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), json!({ "binary": CHROMIUM, "args": browser_args }));
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => break client,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("no WebDriver session with chromedriver on port {port}: {e}"),
            }
        };
        Browser { client, driver, _turn: turn }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    /// Waits (up to 10 s) for an element.
    pub async fn wait(&self, xpath: &str) -> Element {
        match self.client.wait().at_most(Duration::from_secs(10)).for_element(Locator::XPath(xpath)).await {
            Ok(element) => element,
            Err(e) => {
                let source = self.client.source().await.unwrap_or_default();
                panic!("no element {xpath} on {}: {e}\n{source}", self.url().await)
            }
        }
    }

    pub async fn url(&self) -> String {
        self.client.current_url().await.map(|u| u.to_string()).unwrap_or_default()
    }

    /// Waits until the main heading reads `text`.
    pub async fn wait_heading(&self, text: &str) {
        self.wait(&format!("//h1[normalize-space()='{text}']")).await;
    }

    /// Clicks the button (or link) whose text or accessible name is `name`.
    pub async fn click(&self, name: &str) {
        let xpath =
            format!("//button[normalize-space()='{name}' or @aria-label='{name}'] | //a[normalize-space()='{name}']");
        self.wait(&xpath).await.click().await.unwrap_or_else(|e| panic!("click {name}: {e}"));
    }

    /// Types into the field labelled `label`.
    pub async fn fill(&self, label: &str, text: &str) {
        let label_element = self.wait(&format!("//label[normalize-space()='{label}']")).await;
        let id = label_element.attr("for").await.ok().flatten().unwrap_or_else(|| panic!("label {label} has no for"));
        let field = self.wait(&format!("//*[@id='{id}']")).await;
        field.clear().await.expect("clear");
        field.send_keys(text).await.expect("type");
    }

    /// The page source.
    pub async fn source(&self) -> String {
        self.client.source().await.expect("page source")
    }

    /// Writes a PNG screenshot to `target/web-screenshots/<name>.png` and returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        let dir = repo_root().join("target/web-screenshots");
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    /// Runs axe-core on the current page; panics listing any serious or critical violation.
    pub async fn assert_accessible(&self, page: &str) {
        let axe = repo_root().join("interop/node_modules/axe-core/axe.min.js");
        let source = std::fs::read_to_string(&axe).unwrap_or_else(|e| {
            panic!("{}: {e}; run scripts/test.sh (npm ci in interop/ brings axe-core)", axe.display())
        });
        self.client.execute(&source, vec![]).await.expect("inject axe-core");
        let script = r#"
            const done = arguments[arguments.length - 1];
            axe.run(document).then(r => done(r.violations
                .filter(v => v.impact === 'serious' || v.impact === 'critical')
                .map(v => v.impact + ' ' + v.id + ': ' + v.help + ' at ' + v.nodes.map(n => n.target.join(' ')).join(', '))))
              .catch(e => done(['axe failed: ' + e]));
        "#;
        let found = self.client.execute_async(script, vec![]).await.expect("axe.run");
        let violations: Vec<String> = match found {
            Value::Array(items) => items.into_iter().map(|v| v.as_str().unwrap_or_default().to_owned()).collect(),
            other => vec![format!("unexpected axe result {other}")],
        };
        assert!(violations.is_empty(), "accessibility violations on the {page} page:\n{}", violations.join("\n"));
    }

    /// Sends a POST from the page (same origin, with the session cookie) and returns its status.
    pub async fn post_from_page(&self, path: &str, body: &str) -> u16 {
        let script = r#"
            const [path, body, done] = arguments;
            fetch(path, { method: 'POST', body, redirect: 'manual',
                          headers: { 'content-type': 'application/x-www-form-urlencoded' } })
              .then(r => done(r.status)).catch(e => done(-1));
        "#;
        let status = self.client.execute_async(script, vec![json!(path), json!(body)]).await.expect("fetch");
        status.as_u64().unwrap_or(0) as u16
    }

    /// Ends the session (Chromium exits), then chromedriver (on drop).
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
