//! What the templates show. Each page is a struct deriving [`askama::Template`]: the template
//! (under `templates/`) is checked against it at compile time and every value is HTML-escaped.
//! The values come from [`ProfileView`]s through [`crate::profile::to_api`], the view the gRPC
//! API gives, so no secret can reach a page: that view holds none.

use askama::Template;

use super::assets;
use crate::admin::ProfileView;
use crate::api::pb;
use crate::clock::UnixMillis;
use crate::profile::{action, status_label};

/// What every page's frame shows.
pub struct Layout {
    /// The page title (before " · tokend").
    pub title: String,
    /// The signed-in caller's name, role and CSRF token, when signed in.
    pub who: Option<Who>,
    /// A message for the top of the page (the outcome of the last action).
    pub notice: String,
    /// The stylesheet's URL.
    pub style: &'static str,
    /// The script's URL.
    pub script: &'static str,
}

/// The signed-in caller, as the frame shows it.
pub struct Who {
    /// Configured name.
    pub name: String,
    /// `admin` or `viewer`.
    pub role: String,
    /// The session's CSRF token, for the forms.
    pub csrf: String,
    /// Whether the caller may act.
    pub admin: bool,
}

impl Layout {
    /// A frame with no one signed in.
    pub fn bare(title: &str) -> Self {
        Self {
            title: title.to_owned(),
            who: None,
            notice: String::new(),
            style: assets::STYLE_PATH.as_str(),
            script: assets::SCRIPT_PATH.as_str(),
        }
    }

    /// A frame for a signed-in caller.
    pub fn signed(title: &str, who: Who, notice: String) -> Self {
        Self { who: Some(who), notice, ..Self::bare(title) }
    }

    /// The CSRF token for the page's forms ("" when no one is signed in).
    pub fn csrf(&self) -> &str {
        self.who.as_ref().map_or("", |w| w.csrf.as_str())
    }

    /// Whether action buttons and forms are shown.
    pub fn admin(&self) -> bool {
        self.who.as_ref().is_some_and(|w| w.admin)
    }
}

/// One profile as a row of the table or a card of the grid.
pub struct Row {
    /// Profile name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Provider preset id.
    pub provider: String,
    /// Seconds until the access token expires at render time (None: blank, not connected).
    pub expires_in: Option<i64>,
    /// The status word.
    pub status: &'static str,
    /// A CSS class for the status (colour is extra; the word carries the meaning).
    pub status_class: &'static str,
    /// Whether a refresh token is held.
    pub refresh_token: bool,
    /// The action offered: Connect, Disconnect or Cancel.
    pub action: &'static str,
    /// The last error, if any.
    pub last_error: String,
    /// The refresh-token warning, if any.
    pub warning: String,
}

impl Row {
    /// The row of a profile view at `now`.
    pub fn of(view: &ProfileView, now: UnixMillis) -> Self {
        let p = crate::profile::to_api(&view.profile, &view.connection);
        let status = p.status();
        let expires_in = p.authorization_expires_at.as_ref().map(|t| t.seconds - now.div_euclid(1000));
        Self {
            name: p.name,
            description: p.description,
            provider: p.provider,
            expires_in,
            status: status_label(status),
            status_class: status_class(status),
            refresh_token: p.refresh_token_enabled,
            action: action(status),
            last_error: p.last_error,
            warning: view.warning.clone().unwrap_or_default(),
        }
    }

    /// The time left as people read it (`54m 12s`), blank when not connected.
    pub fn expires_text(&self) -> String {
        self.expires_in.map(human).unwrap_or_default()
    }

    /// Whether the action offered is `what`.
    pub fn offers(&self, what: &str) -> bool {
        self.action == what
    }

    /// The seconds left, for the script's countdown ("" when not connected).
    pub fn expires_attr(&self) -> String {
        self.expires_in.map(|s| s.to_string()).unwrap_or_default()
    }
}

fn status_class(status: pb::Status) -> &'static str {
    match status {
        pb::Status::Connected => "ok",
        pb::Status::Connecting => "pending",
        pb::Status::RefreshFailing => "warn",
        pb::Status::NeedsReauthorization => "bad",
        _ => "off",
    }
}

/// A span of seconds for people: `42s`, `54m 12s`, `3h 02m`, `2d 05h`; `expired` at or below 0.
/// The script formats the countdown the same way.
pub fn human(secs: i64) -> String {
    if secs <= 0 { "expired".to_owned() } else { crate::profile::human_span(secs, " ") }
}

/// The sign-in form.
#[derive(Template)]
#[template(path = "signin.html")]
pub struct SignIn {
    /// The frame.
    pub layout: Layout,
    /// Why the last attempt failed.
    pub error: String,
}

/// The Connected apps page (table or grid).
#[derive(Template)]
#[template(path = "apps.html")]
pub struct Apps {
    /// The frame.
    pub layout: Layout,
    /// Every profile.
    pub rows: Vec<Row>,
    /// Whether the grid is shown (else the table), as the server renders it.
    pub grid: bool,
}

/// Only the live part of the Connected apps page, for the script's refresh (the same
/// template the page includes).
#[derive(Template)]
#[template(path = "apps_body.html")]
pub struct AppsLive<'a> {
    /// The frame (for the caller's role and CSRF token).
    pub layout: &'a Layout,
    /// Every profile.
    pub rows: &'a [Row],
    /// Whether the grid is shown.
    pub grid: bool,
}

/// One label and value on the profile page.
pub struct Fact {
    /// The label.
    pub label: &'static str,
    /// The value (escaped on output).
    pub value: String,
}

/// A profile's page.
#[derive(Template)]
#[template(path = "profile.html")]
pub struct Profile {
    /// The frame.
    pub layout: Layout,
    /// Its row (status, action); named `r` as the shared status and action templates expect.
    pub r: Row,
    /// Every field, labelled.
    pub facts: Vec<Fact>,
    /// Whether the configuration file manages it (no edit or delete here).
    pub managed: bool,
    /// Device grant started: where to go and the code to type.
    pub device: Option<crate::admin::DeviceInstructions>,
}

/// Only the live part of a profile's page (the same template the page includes).
#[derive(Template)]
#[template(path = "profile_body.html")]
pub struct ProfileLive<'a> {
    /// The frame.
    pub layout: &'a Layout,
    /// Its row.
    pub r: &'a Row,
    /// Every field.
    pub facts: &'a [Fact],
    /// Managed by the configuration file.
    pub managed: bool,
}

/// A confirmation page (disconnect, delete).
#[derive(Template)]
#[template(path = "confirm.html")]
pub struct Confirm {
    /// The frame.
    pub layout: Layout,
    /// The question.
    pub question: String,
    /// What happens.
    pub detail: String,
    /// Where the form posts.
    pub action: String,
    /// The button's text.
    pub button: &'static str,
    /// Where "Keep it" goes.
    pub back: String,
}

/// The new-profile and edit forms.
#[derive(Template)]
#[template(path = "form.html")]
pub struct Form {
    /// The frame.
    pub layout: Layout,
    /// The values shown.
    pub values: super::form::ProfileForm,
    /// Editing an existing profile (its name fixed), else creating one.
    pub editing: bool,
    /// Whether a client secret is stored (editing: blank keeps it).
    pub secret_set: bool,
    /// The field a validation error names, and its message.
    pub error: Option<(String, String)>,
    /// The presets, to choose from and to show what each fills in.
    pub presets: &'static [crate::provider::Preset],
    /// The grant choices.
    pub grants: &'static [(&'static str, &'static str)],
    /// The token endpoint authentication choices.
    pub auth_methods: &'static [(&'static str, &'static str)],
}

impl Form {
    /// The error message if `field` is the one in error.
    pub fn error_for(&self, field: &str) -> Option<&str> {
        self.error.as_ref().filter(|(f, _)| f == field).map(|(_, m)| m.as_str())
    }

    /// Whether `value` is the chosen option of `field`.
    pub fn selected(&self, field: &str, value: &str) -> bool {
        let chosen = match field {
            "provider" => &self.values.provider,
            "grant" => &self.values.grant,
            "auth" => &self.values.token_endpoint_auth_method,
            _ => return false,
        };
        chosen == value
    }
}

/// The way to the provider after Connect: a page that moves on by itself (a meta refresh).
/// A redirect answering the form would be refused by the browser: `form-action 'self'` covers
/// the redirects of a form submission, and the provider is another origin.
#[derive(Template)]
#[template(path = "leaving.html")]
pub struct Leaving {
    /// The frame.
    pub layout: Layout,
    /// The profile.
    pub name: String,
    /// The authorization URL.
    pub url: String,
}

/// An error page.
#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    /// The frame.
    pub layout: Layout,
    /// What went wrong.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Times read as the issue shows them; the sign-in page escapes what it is given.
    #[test]
    fn human_times_and_escaping() {
        assert_eq!(human(54 * 60 + 12), "54m 12s");
        assert_eq!(human(42), "42s");
        assert_eq!(human(3 * 3600 + 120), "3h 02m");
        assert_eq!(human(0), "expired");
        let page = SignIn { layout: Layout::bare("Sign in"), error: "<script>x</script>".into() };
        let html = page.render().unwrap();
        assert!(html.contains("&#60;script&#62;x") || html.contains("&lt;script&gt;x"), "{html}");
        assert!(!html.contains("<script>x"));
    }
}
