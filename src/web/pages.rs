//! The GET pages: the sign-in form or the Connected apps table/grid, a profile, the forms and
//! the confirmations. A `?fragment=1` request returns only the live part of the table or a
//! profile, which the script swaps in on every live update.

use askama::Template as _;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

use super::auth::Signed;
use super::form::{AUTH_METHODS, GRANTS, ProfileForm};
use super::views::{Apps, AppsLive, Confirm, Fact, Form, Layout, Profile, ProfileLive, Row, SignIn, Who};
use super::{Web, WebError};
use crate::admin::{DeviceInstructions, MAX_PAGE_SIZE, ProfileView};
use crate::profile::validate_name;
use crate::provider::PRESETS;

/// Query parameters the pages understand.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PageQuery {
    /// `grid` or `table` (the no-script view toggle).
    view: String,
    /// `1`: only the live part.
    fragment: String,
    /// What the last action did (a fixed code, see [`notice`]).
    notice: String,
    /// The profile the notice is about.
    name: String,
}

/// The outcome message of a notice code; unknown codes show nothing. Codes, not text, travel
/// in the URL, so nobody can put words on the page through a link.
fn notice(code: &str, name: &str) -> String {
    let name = if validate_name(name).is_ok() { name } else { "" };
    match code {
        "connected" => format!("{name} is connected."),
        "created" => format!("Created {name}."),
        "saved" => format!("Saved {name}."),
        "deleted" => format!("Deleted {name}."),
        "refreshed" => format!("Refreshed {name}."),
        "refresh_failed" => format!("The refresh of {name} failed; see its last error."),
        "revoked" => format!("Disconnected {name}: the provider revoked the tokens."),
        "not_supported" => {
            format!("Disconnected {name}: the provider has no revocation endpoint; the tokens were deleted here.")
        }
        "revocation_failed" => format!(
            "Disconnected {name}: revocation at the provider failed (see its last error); the tokens were deleted here."
        ),
        "nothing_held" => format!("Disconnected {name}: no tokens were held."),
        _ => String::new(),
    }
}

fn who(signed: &Signed) -> Who {
    Who {
        name: signed.caller.name.clone(),
        role: signed.caller.role.to_string(),
        csrf: signed.claims.csrf.clone(),
        admin: signed.is_admin(),
    }
}

/// The frame for a signed-in caller.
pub(super) fn layout(signed: &Signed, title: &str, notice: String) -> Layout {
    Layout::signed(title, who(signed), notice)
}

fn html(page: Result<String, askama::Error>) -> Result<Response, WebError> {
    Ok(Html(page?).into_response())
}

/// `GET /`: the sign-in form without a session, else the Connected apps page.
pub async fn home(
    State(web): State<Web>,
    headers: HeaderMap,
    Query(query): Query<PageQuery>,
) -> Result<Response, WebError> {
    let signed = match web.signed(&headers) {
        Ok(signed) => signed,
        Err(WebError::SignIn) => return sign_in_page(&web, &headers, String::new()),
        Err(e) => return Err(e),
    };
    let now = web.now_ms();
    let rows = all_profiles(&web)?.iter().map(|v| Row::of(v, now)).collect::<Vec<_>>();
    let layout = layout(&signed, "Connected apps", notice(&query.notice, &query.name));
    let grid = query.view == "grid";
    if query.fragment == "1" {
        return Ok(signed.reply(html(AppsLive { layout: &layout, rows: &rows, grid }.render())?));
    }
    Ok(signed.reply(html(Apps { layout, rows, grid }.render())?))
}

/// The sign-in form, with `error` if the last attempt failed; a stale session cookie is
/// removed.
pub(super) fn sign_in_page(web: &Web, headers: &HeaderMap, error: String) -> Result<Response, WebError> {
    let mut response = html(SignIn { layout: Layout::bare("Sign in"), error }.render())?;
    let had_cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|c| super::session::from_header(c).is_some());
    if had_cookie && let Ok(clear) = HeaderValue::from_str(&web.inner.sessions.clear_cookie()) {
        response.headers_mut().append(header::SET_COOKIE, clear);
    }
    Ok(response)
}

/// Every profile, in name order.
fn all_profiles(web: &Web) -> Result<Vec<ProfileView>, WebError> {
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let (page, next) = web.admin().list_profiles(MAX_PAGE_SIZE as i32, &token)?;
        all.extend(page);
        if next.is_empty() {
            return Ok(all);
        }
        token = next;
    }
}

/// `GET /profiles/{name}`.
pub async fn profile(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(query): Query<PageQuery>,
) -> Result<Response, WebError> {
    let signed = web.signed(&headers)?;
    let view = web.admin().get_profile(&name)?;
    let layout = layout(&signed, &name, notice(&query.notice, &query.name));
    let page = profile_page(&web, layout, &view, None);
    if query.fragment == "1" {
        let live = ProfileLive { layout: &page.layout, r: &page.r, facts: &page.facts, managed: page.managed };
        return Ok(signed.reply(html(live.render())?));
    }
    Ok(signed.reply(html(page.render())?))
}

/// A profile's page (with device-grant instructions after a Connect that started one).
pub(super) fn profile_page(
    web: &Web,
    layout: Layout,
    view: &ProfileView,
    device: Option<DeviceInstructions>,
) -> Profile {
    let now = web.now_ms();
    Profile { layout, r: Row::of(view, now), facts: facts(view), managed: view.profile.managed, device }
}

/// Every field of a profile, labelled: what it is configured with, the endpoints in use, and
/// the state of its connection. The API view, so no secret can be among them.
fn facts(view: &ProfileView) -> Vec<Fact> {
    let p = crate::profile::to_api(&view.profile, &view.connection);
    let ts = |t: &Option<prost_types::Timestamp>| t.as_ref().map(|t| t.to_string()).unwrap_or_default();
    let map = |m: &std::collections::HashMap<String, String>| {
        let mut pairs: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
        pairs.sort();
        pairs.join(", ")
    };
    let fact = |label, value: String| Fact { label, value };
    vec![
        fact("Name", p.name.clone()),
        fact("Description", p.description.clone()),
        fact("Service provider", p.provider.clone()),
        fact("Grant", grant_label(p.grant())),
        fact("Client ID", p.client_id.clone()),
        fact("Client secret", if p.client_secret_set { "set (write-only)".into() } else { "not set".into() }),
        fact("Scopes requested", p.scopes.join(" ")),
        fact("Scopes granted", p.granted_scopes.join(" ")),
        fact("Issuer", p.issuer.clone()),
        fact("Authorization endpoint", p.authorization_endpoint.clone()),
        fact("Token endpoint", p.token_endpoint.clone()),
        fact("Revocation endpoint", p.revocation_endpoint.clone()),
        fact("Device authorization endpoint", p.device_authorization_endpoint.clone()),
        fact("Redirect URI", p.redirect_uri.clone()),
        fact("Token endpoint authentication", auth_label(p.token_endpoint_auth_method())),
        fact("Extra authorization parameters", map(&p.extra_authorization_params)),
        fact("Provider options", map(&p.provider_options)),
        fact("Status", crate::profile::status_label(p.status()).to_owned()),
        fact("Connected account", p.connected_account.clone()),
        fact("Connected at", ts(&p.connected_at)),
        fact("Access token expires at", ts(&p.authorization_expires_at)),
        fact("Refresh token", if p.refresh_token_enabled { "enabled".into() } else { String::new() }),
        fact("Refresh token expires at", ts(&p.refresh_token_expires_at)),
        fact("Last refreshed", ts(&p.last_refreshed_at)),
        fact("Next refresh", ts(&p.next_refresh_at)),
        fact("Consecutive failures", p.consecutive_failures.to_string()),
        fact("Warning", view.warning.clone().unwrap_or_default()),
        fact("Last error", p.last_error.clone()),
        fact("Managed by the configuration file", if p.managed { "yes".into() } else { "no".into() }),
        fact("Created", ts(&p.create_time)),
        fact("Updated", ts(&p.update_time)),
    ]
}

fn grant_label(grant: crate::api::pb::Grant) -> String {
    use crate::api::pb::Grant;
    match grant {
        Grant::DeviceCode => "device code",
        Grant::ClientCredentials => "client credentials",
        _ => "authorization code",
    }
    .to_owned()
}

fn auth_label(method: crate::api::pb::TokenEndpointAuthMethod) -> String {
    use crate::api::pb::TokenEndpointAuthMethod as M;
    match method {
        M::ClientSecretBasic => "client_secret_basic",
        M::ClientSecretPost => "client_secret_post",
        M::None => "none",
        M::Unspecified => "automatic",
    }
    .to_owned()
}

/// The new-profile or edit form.
pub(super) fn form_page(
    layout: Layout,
    values: ProfileForm,
    editing: bool,
    secret_set: bool,
    error: Option<(String, String)>,
) -> Form {
    Form { layout, values, editing, secret_set, error, presets: PRESETS, grants: GRANTS, auth_methods: AUTH_METHODS }
}

/// `GET /profiles/new`.
pub async fn new_profile(State(web): State<Web>, headers: HeaderMap) -> Result<Response, WebError> {
    let signed = web.signed(&headers)?;
    signed.require_admin()?;
    let page = form_page(layout(&signed, "New profile", String::new()), ProfileForm::blank(), false, false, None);
    Ok(signed.reply(html(page.render())?))
}

/// `GET /profiles/{name}/edit`.
pub async fn edit(State(web): State<Web>, headers: HeaderMap, Path(name): Path<String>) -> Result<Response, WebError> {
    let signed = web.signed(&headers)?;
    signed.require_admin()?;
    let view = web.admin().get_profile(&name)?;
    let secret_set = !view.profile.client_secret_sealed.is_empty();
    let values = ProfileForm::of_record(&view.profile);
    let page = form_page(layout(&signed, &format!("Edit {name}"), String::new()), values, true, secret_set, None);
    Ok(signed.reply(html(page.render())?))
}

/// `GET /profiles/{name}/disconnect`: asks first.
pub async fn confirm_disconnect(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, WebError> {
    confirm(&web, &headers, &name, "disconnect").await
}

/// `GET /profiles/{name}/delete`: asks first.
pub async fn confirm_delete(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, WebError> {
    confirm(&web, &headers, &name, "delete").await
}

async fn confirm(web: &Web, headers: &HeaderMap, name: &str, what: &str) -> Result<Response, WebError> {
    let signed = web.signed(headers)?;
    signed.require_admin()?;
    let view = web.admin().get_profile(name)?;
    let name = view.profile.name.as_str();
    let (question, detail, button) = if what == "delete" {
        (
            format!("Delete {name}?"),
            "Its tokens are revoked at the provider where it allows, then the profile is deleted. Workers asking for it get NOT_FOUND.".to_owned(),
            "Delete",
        )
    } else {
        (
            format!("Disconnect {name}?"),
            "Its tokens are revoked at the provider where it allows, and deleted here. Workers get FAILED_PRECONDITION until an admin connects it again.".to_owned(),
            "Disconnect",
        )
    };
    let page = Confirm {
        layout: layout(&signed, &question, String::new()),
        question,
        detail,
        action: format!("/profiles/{name}/{what}"),
        button,
        back: format!("/profiles/{name}"),
    };
    Ok(signed.reply(html(page.render())?))
}
