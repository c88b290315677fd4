//! Turning `create`/`update` flags into a profile and an update mask.

use std::collections::HashMap;
use std::path::Path;

use secrecy::{ExposeSecret as _, SecretString};
use tokend::api::pb;

use crate::cli::*;
use crate::failure::*;

/// Reads the client secret from the named file or environment variable, if one was given.
pub(crate) fn read_secret(fields: &Fields) -> Outcome<Option<SecretString>> {
    let text = if let Some(path) = &fields.client_secret_file {
        read_secret_file(path)?
    } else if let Some(var) = &fields.client_secret_env {
        std::env::var(var).map_err(|e| Failure::new(2, format!("--client-secret-env {var}: {e}"), None))?
    } else {
        return Ok(None);
    };
    let secret = text.trim_end_matches(['\r', '\n']);
    if secret.is_empty() {
        return Err(Failure::new(2, "the client secret is empty", None));
    }
    Ok(Some(SecretString::from(secret.to_owned())))
}

/// The contents of a secret file (`-`: stdin).
pub(crate) fn read_secret_file(path: &Path) -> Outcome<String> {
    let result =
        if path == Path::new("-") { std::io::read_to_string(std::io::stdin()) } else { std::fs::read_to_string(path) };
    result.map_err(|e| Failure::new(1, format!("reading the client secret from {}: {e}", path.display()), None))
}

/// Sets `slot` from `value` when given and names the field in `mask`.
pub(crate) fn put<T>(value: Option<T>, slot: &mut T, path: &str, mask: &mut Vec<String>) {
    if let Some(value) = value {
        *slot = value;
        mask.push(path.to_owned());
    }
}

/// The profile the flags describe, and the names of the fields they set.
pub(crate) fn build_profile(
    name: &str,
    provider: Option<String>,
    fields: Fields,
) -> Outcome<(pb::Profile, Vec<String>)> {
    let mut p = pb::Profile { name: name.to_owned(), ..Default::default() };
    let mut mask = Vec::new();
    let secret = read_secret(&fields)?.map(|s| s.expose_secret().to_owned());
    put(provider, &mut p.provider, "provider", &mut mask);
    put(fields.description, &mut p.description, "description", &mut mask);
    put(fields.client_id, &mut p.client_id, "client_id", &mut mask);
    put(secret, &mut p.client_secret, "client_secret", &mut mask);
    let scopes = (!fields.scopes.is_empty()).then_some(fields.scopes);
    put(scopes, &mut p.scopes, "scopes", &mut mask);
    put(fields.authorization_endpoint, &mut p.authorization_endpoint, "authorization_endpoint", &mut mask);
    put(fields.token_endpoint, &mut p.token_endpoint, "token_endpoint", &mut mask);
    put(fields.revocation_endpoint, &mut p.revocation_endpoint, "revocation_endpoint", &mut mask);
    let device = fields.device_authorization_endpoint;
    put(device, &mut p.device_authorization_endpoint, "device_authorization_endpoint", &mut mask);
    put(fields.issuer, &mut p.issuer, "issuer", &mut mask);
    put(fields.redirect_uri, &mut p.redirect_uri, "redirect_uri", &mut mask);
    // The same enums and spelling as a declared profile's `grant` and `token_endpoint_auth_method`.
    put(fields.grant.map(|g| pb::Grant::from(g) as i32), &mut p.grant, "grant", &mut mask);
    let method = fields.auth_method.map(|m| pb::TokenEndpointAuthMethod::from(m) as i32);
    put(method, &mut p.token_endpoint_auth_method, "token_endpoint_auth_method", &mut mask);
    let params = (!fields.params.is_empty()).then(|| fields.params.into_iter().collect::<HashMap<_, _>>());
    put(params, &mut p.extra_authorization_params, "extra_authorization_params", &mut mask);
    Ok((p, mask))
}
