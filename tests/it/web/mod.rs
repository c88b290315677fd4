//! The landing page over plain HTTP (no browser): sign-in and roles, sessions (cookie flags,
//! idle and absolute expiry on the daemon's clock, sign-out, a reload that removes the caller),
//! CSRF and Origin checks, viewers refused, the failed-sign-in limit shared with gRPC, forms
//! with validation errors, Connect through the callback back to the page, live updates, and
//! no secret in any page. The browser tests are in `web_browser`.

mod forms;
mod grants;
mod sessions;

use std::net::SocketAddr;

use oauth2::reqwest;

use crate::support::browser;

/// A browser played by hand: one cookie jar entry (the session), `Origin` on every POST.
pub struct Visitor {
    pub http: SocketAddr,
    pub cookie: String,
    client: reqwest::Client,
}

/// A reply, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub location: String,
    pub cookies: Vec<String>,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Visitor {
    pub fn new(http: SocketAddr) -> Visitor {
        Visitor { http, cookie: String::new(), client: browser() }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    async fn read(&mut self, reply: reqwest::Response) -> Reply {
        let status = reply.status().as_u16();
        let headers = reply.headers().clone();
        let location = headers.get("location").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let cookies: Vec<String> =
            headers.get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).map(str::to_owned).collect();
        for cookie in &cookies {
            if let Some(pair) = cookie.split(';').next().and_then(|p| p.strip_prefix("tokend_session=")) {
                self.cookie = pair.to_owned();
            }
        }
        Reply { status, location, cookies, headers, body: reply.text().await.unwrap_or_default() }
    }

    /// GET with the session cookie.
    pub async fn get(&mut self, path: &str) -> Reply {
        let mut request = self.client.get(self.url(path));
        if !self.cookie.is_empty() {
            request = request.header("cookie", format!("tokend_session={}", self.cookie));
        }
        let reply = request.send().await.expect("GET");
        self.read(reply).await
    }

    /// POST a form with the session cookie and this origin.
    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Reply {
        let origin = self.url("");
        self.post_from(path, fields, Some(&origin)).await
    }

    /// POST a form with the given `Origin` (None: no Origin header).
    pub async fn post_from(&mut self, path: &str, fields: &[(&str, &str)], origin: Option<&str>) -> Reply {
        let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
        let mut request =
            self.client.post(self.url(path)).header("content-type", "application/x-www-form-urlencoded").body(body);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        if !self.cookie.is_empty() {
            request = request.header("cookie", format!("tokend_session={}", self.cookie));
        }
        let reply = request.send().await.expect("POST");
        self.read(reply).await
    }

    /// Signs in with `token`; the reply to the sign-in POST.
    pub async fn sign_in(&mut self, token: &str) -> Reply {
        self.post("/signin", &[("token", token)]).await
    }

    /// The CSRF token of the current session, read from the landing page's Sign out form.
    pub async fn csrf(&mut self) -> String {
        let page = self.get("/").await;
        csrf_of(&page.body).unwrap_or_else(|| panic!("no CSRF token on the page: {}", page.body))
    }
}

/// The value of the first `name="csrf"` field in a page.
pub fn csrf_of(html: &str) -> Option<String> {
    let at = html.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
    Some(html[at..].split('"').next()?.to_owned())
}
