//! The POST actions: sign in and out, create, edit, delete, connect, disconnect, refresh now.
//! Each checks the origin and the session's CSRF token ([`Web::signed_post`]), refuses viewers,
//! calls the same administration function the gRPC service calls, writes the same audit record,
//! and answers with a redirect (POST-redirect-GET) or the form again with the field in error.

use std::time::Instant;

use askama::Template as _;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use serde::Deserialize;

use super::auth::Signed;
use super::form::ProfileForm;
use super::pages::{form_page, layout, profile_page, sign_in_page};
use super::views::Leaving;
use super::{PeerAddr, Web, WebError, csrf};
use crate::access::{FailureOutcome, PeerKey, Role, audit, hash_token};
use crate::admin::{AdminError, Revocation};

/// A form carrying only the CSRF token.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CsrfForm {
    csrf: String,
}

/// The sign-in form.
#[derive(Default, Deserialize)]
#[serde(default)]
pub struct SignInForm {
    token: String,
}

/// Longest bearer token accepted (longer ones cannot be configured tokens anyway).
const MAX_TOKEN: usize = 4096;

/// `POST /signin`.
pub async fn sign_in(
    State(web): State<Web>,
    headers: HeaderMap,
    peer: Option<Extension<PeerAddr>>,
    Form(form): Form<SignInForm>,
) -> Result<Response, WebError> {
    if !csrf::same_origin(&headers, web.inner.tls) {
        return Err(WebError::CrossSite);
    }
    let peer = peer.map(|Extension(PeerAddr(addr))| PeerKey::of_ip(addr.ip()));
    let limiter = &web.inner.limiter;
    if let Some(left) = peer.and_then(|p| limiter.blocked_for(p, Instant::now())) {
        return Err(WebError::Blocked(left.as_secs().max(1)));
    }
    let token = form.token.trim();
    let caller = (!token.is_empty() && token.len() <= MAX_TOKEN).then(|| web.inner.callers.authenticate(token));
    let Some(Some(caller)) = caller else {
        if let Some(p) = peer
            && let FailureOutcome::Blocked(block) = limiter.failed(p, Instant::now())
        {
            tracing::warn!(peer = ?p, block_secs = block.as_secs(), "too many failed sign-ins; refusing the peer for a while");
        }
        tracing::warn!(peer = ?peer, "landing page: rejected an unknown bearer token");
        let mut page = sign_in_page(&web, &headers, "That bearer token is not known to this tokend.".into())?;
        *page.status_mut() = StatusCode::UNAUTHORIZED;
        return Ok(page);
    };
    if caller.role == Role::Consumer {
        let message = "This token belongs to a consumer. Consumers fetch tokens over gRPC (Tokens.GetAccessToken); \
                       this page is for admins and viewers.";
        let mut page = sign_in_page(&web, &headers, message.into())?;
        *page.status_mut() = StatusCode::FORBIDDEN;
        return Ok(page);
    }
    let claims = web.inner.sessions.start(hash_token(token), web.now_ms());
    let cookie = web.inner.sessions.cookie(web.admin().engine().keys(), &claims)?;
    tracing::info!(target: "audit", caller = %caller.name, action = "SignIn", outcome = "ok", "admin action");
    Ok(with_cookie(Redirect::to("/"), &cookie))
}

/// `POST /signout`: the session is recorded as signed out (on every replica) and its cookie
/// removed.
pub async fn sign_out(
    State(web): State<Web>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Response, WebError> {
    let signed = web.signed_post(&headers, &form.csrf)?;
    let store = web.admin().engine().store();
    web.inner.sessions.sign_out(store.as_ref(), &signed.claims, web.now_ms())?;
    tracing::info!(target: "audit", caller = %signed.caller.name, action = "SignOut", outcome = "ok", "admin action");
    Ok(with_cookie(Redirect::to("/"), &web.inner.sessions.clear_cookie()))
}

fn with_cookie(response: impl IntoResponse, cookie: &str) -> Response {
    let mut response = response.into_response();
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// Checks an admin's action: origin, CSRF token, session, admin role (a refusal of the role
/// is audited like the gRPC service's).
fn authorize(web: &Web, headers: &HeaderMap, csrf: &str, action: &str, name: &str) -> Result<Signed, WebError> {
    let signed = web.signed_post(headers, csrf)?;
    if let Err(denied) = signed.require_admin() {
        audit::admin_action(&signed.caller.name, action, name, Err("PermissionDenied"));
        return Err(denied);
    }
    Ok(signed)
}

/// Writes the audit record of an admin's action, as the gRPC service does, and passes the
/// result on.
fn audited(
    signed: &Signed,
    action: &str,
    name: &str,
    result: Result<Response, WebError>,
) -> Result<Response, WebError> {
    let outcome = match &result {
        Ok(response) if response.status().is_client_error() => Err("InvalidArgument"),
        Ok(_) => Ok(()),
        Err(WebError::Refused { status, .. }) => Err(status.canonical_reason().unwrap_or("Refused")),
        Err(_) => Err("Failed"),
    };
    audit::admin_action(&signed.caller.name, action, name, outcome);
    result.map(|response| signed.reply(response))
}

fn to(location: String) -> Response {
    Redirect::to(&location).into_response()
}

/// `POST /profiles`: creates a profile; a validation error shows the form again, naming the
/// field.
pub async fn create(
    State(web): State<Web>,
    headers: HeaderMap,
    Form(form): Form<ProfileForm>,
) -> Result<Response, WebError> {
    let name = form.name.trim().to_owned();
    let signed = authorize(&web, &headers, &form.csrf, "CreateProfile", &name)?;
    let result = match web.admin().create_profile(&form.to_profile(&name)).await {
        Ok(_) => Ok(to(format!("/?notice=created&name={name}"))),
        Err(e) => form_again(&signed, "New profile", form, false, false, e),
    };
    audited(&signed, "CreateProfile", &name, result)
}

/// `POST /profiles/{name}/edit`: changes the fields the form shows; blank secret keeps it.
pub async fn edit(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<ProfileForm>,
) -> Result<Response, WebError> {
    let signed = authorize(&web, &headers, &form.csrf, "UpdateProfile", &name)?;
    let mask = ProfileForm::mask();
    let stored_options = web.admin().get_profile(&name).map(|v| v.profile.provider_options).unwrap_or_default();
    let result = match web.admin().update_profile(&form.to_update(&name, &stored_options), Some(&mask)).await {
        Ok(_) => Ok(to(format!("/profiles/{name}?notice=saved&name={name}"))),
        Err(e) => {
            let secret_set = web.admin().get_profile(&name).is_ok_and(|v| !v.profile.client_secret_sealed.is_empty());
            let form = ProfileForm { name: name.clone(), ..form };
            form_again(&signed, &format!("Edit {name}"), form, true, secret_set, e)
        }
    };
    audited(&signed, "UpdateProfile", &name, result)
}

/// The form again after a refusal: a validation error (or a taken name) is shown at its
/// field; anything else is an error page.
fn form_again(
    signed: &Signed,
    title: &str,
    form: ProfileForm,
    editing: bool,
    secret_set: bool,
    error: AdminError,
) -> Result<Response, WebError> {
    let field = match &error {
        AdminError::InvalidArgument(e) => (e.field.clone(), e.message.clone()),
        AdminError::AlreadyExists(_) => ("name".to_owned(), "a profile of this name exists already".to_owned()),
        _ => return Err(error.into()),
    };
    let page = form_page(layout(signed, title, String::new()), form.redisplay(), editing, secret_set, Some(field));
    Ok((StatusCode::BAD_REQUEST, Html(page.render()?)).into_response())
}

/// `POST /profiles/{name}/delete`.
pub async fn delete(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, WebError> {
    let signed = authorize(&web, &headers, &form.csrf, "DeleteProfile", &name)?;
    let result = web.admin().delete_profile(&name).await.map(|_| to(format!("/?notice=deleted&name={name}")));
    audited(&signed, "DeleteProfile", &name, result.map_err(WebError::from))
}

/// `POST /profiles/{name}/connect`: an authorization-code profile sends the browser on to the
/// provider ([`Leaving`]; marking the consent as started here, so the callback brings it
/// back); a device
/// grant shows the link and the code; client credentials connect at once.
pub async fn connect(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, WebError> {
    let signed = authorize(&web, &headers, &form.csrf, "Connect", &name)?;
    let result = match web.admin().connect(&name).await {
        Err(e) => Err(e.into()),
        Ok(start) if !start.authorization_url.is_empty() => {
            let cookie = super::routes::consent_cookie(&start.state, web.inner.consent_ttl_secs, web.inner.tls);
            let page = Leaving {
                layout: layout(&signed, "Continue to the provider", String::new()),
                name: name.clone(),
                url: start.authorization_url,
            };
            page.render().map(|html| with_cookie(Html(html), &cookie)).map_err(WebError::from)
        }
        Ok(start) => match start.device {
            Some(device) => match web.admin().get_profile(&name) {
                Ok(view) => {
                    let page = profile_page(&web, layout(&signed, &name, String::new()), &view, Some(device));
                    page.render().map(|html| Html(html).into_response()).map_err(WebError::from)
                }
                Err(e) => Err(e.into()),
            },
            None => Ok(to(format!("/?notice=connected&name={name}"))),
        },
    };
    audited(&signed, "Connect", &name, result)
}

/// `POST /profiles/{name}/disconnect`: revokes where the provider allows, deletes the tokens,
/// and says which happened (also Cancel of a pending consent).
pub async fn disconnect(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, WebError> {
    let signed = authorize(&web, &headers, &form.csrf, "Disconnect", &name)?;
    let result = match crate::profile::validate_name(&name) {
        Ok(()) => web.admin().disconnect(&name).await.map_err(WebError::from),
        Err(e) => Err(AdminError::from(e).into()),
    };
    let result = result.map(|revocation| {
        let code = match revocation {
            Revocation::Revoked => "revoked",
            Revocation::NotSupported => "not_supported",
            Revocation::Failed(_) => "revocation_failed",
            Revocation::NothingToRevoke => "nothing_held",
        };
        to(format!("/?notice={code}&name={name}"))
    });
    audited(&signed, "Disconnect", &name, result)
}

/// `POST /profiles/{name}/refresh`: forces a refresh, like `RefreshNow`.
pub async fn refresh(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, WebError> {
    let signed = authorize(&web, &headers, &form.csrf, "RefreshNow", &name)?;
    let result = match web.admin().get_profile(&name) {
        Err(e) => Err(e.into()),
        Ok(_) => {
            let code = match web.admin().engine().refresh_shared(&name).await {
                Ok(_) => "refreshed",
                Err(_) => "refresh_failed",
            };
            Ok(to(format!("/profiles/{name}?notice={code}&name={name}")))
        }
    };
    audited(&signed, "RefreshNow", &name, result)
}
