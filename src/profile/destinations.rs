//! Where a profile sends its secrets, and what an edit may change about it without the client
//! secret. The client secret is write-only: an admin can set it, never read it. An edit that
//! moved the token endpoint (or the issuer whose metadata names it, or the revocation or device
//! endpoint, or the way the secret is presented) without supplying the secret would send the
//! stored secret, and the held refresh token, to a host of the editor's choosing at the next
//! refresh: reading the secret by redirecting it. So such an edit must carry the secret, as a
//! password manager asks for the password again for a changed site. `authorization_endpoint`
//! and `redirect_uri` are not among them: the browser is sent there with the client id, the
//! state and the PKCE challenge only; no secret or token goes there, and a code obtained there
//! is useless without the PKCE verifier and the client secret tokend keeps.

use super::{FieldError, field_error, to_api};
use crate::store::{ConnectionRecord, ProfileRecord};

/// Where a profile's client secret and tokens go, as the profile resolves them (its own
/// values, else its issuer's metadata, else its preset).
#[derive(Debug, PartialEq, Eq)]
struct Destinations {
    token_endpoint: String,
    revocation_endpoint: String,
    device_authorization_endpoint: String,
    issuer: String,
    token_endpoint_auth_method: i32,
}

impl Destinations {
    fn of(record: &ProfileRecord) -> Self {
        // The API view resolves endpoints exactly as the profile uses them.
        let view = to_api(record, &ConnectionRecord::default());
        Self {
            token_endpoint: view.token_endpoint,
            revocation_endpoint: view.revocation_endpoint,
            device_authorization_endpoint: view.device_authorization_endpoint,
            issuer: view.issuer,
            token_endpoint_auth_method: view.token_endpoint_auth_method,
        }
    }

    /// The fields that differ from `other`, named as in the API.
    fn changed_from(&self, other: &Self) -> Vec<&'static str> {
        [
            ("token_endpoint", self.token_endpoint != other.token_endpoint),
            ("revocation_endpoint", self.revocation_endpoint != other.revocation_endpoint),
            (
                "device_authorization_endpoint",
                self.device_authorization_endpoint != other.device_authorization_endpoint,
            ),
            ("issuer", self.issuer != other.issuer),
            ("token_endpoint_auth_method", self.token_endpoint_auth_method != other.token_endpoint_auth_method),
        ]
        .into_iter()
        .filter_map(|(field, changed)| changed.then_some(field))
        .collect()
    }
}

/// What an edit does to the tokens a profile holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldTokens {
    /// They keep working: every host that receives them is at an origin that already did.
    Keep,
    /// They were issued by a server at another origin than the one the edited profile sends
    /// them to: they are deleted locally (never sent there), and the profile must be connected
    /// again.
    Drop,
}

/// Checks an edit from `before` to `after` against the rule in the module documentation:
/// if it changes where the client secret goes, and a client secret is stored, the edit must
/// supply one (`secret_supplied`); else `client_secret` is refused, naming what changed.
/// Returns what becomes of the held tokens: they are kept only while the token endpoint's
/// origin is unchanged and the revocation endpoint (which receives the refresh token on
/// Disconnect) stays at an origin that already received it.
pub fn check_redirect(
    before: &ProfileRecord,
    after: &ProfileRecord,
    secret_supplied: bool,
) -> Result<HeldTokens, FieldError> {
    let (old, new) = (Destinations::of(before), Destinations::of(after));
    let changed = new.changed_from(&old);
    if !changed.is_empty() && !secret_supplied && !before.client_secret_sealed.is_empty() {
        return Err(field_error(
            "client_secret",
            format!(
                "required when {} changes: the stored client secret would be sent to the new destination, \
                 so supply it again in the same request (it is write-only and cannot be read back)",
                changed.join(", ")
            ),
        ));
    }
    let old_origins = [origin(&old.token_endpoint), origin(&old.revocation_endpoint)];
    let token_moved = origin(&new.token_endpoint) != old_origins[0];
    let revocation_moved =
        !new.revocation_endpoint.is_empty() && !old_origins.contains(&origin(&new.revocation_endpoint));
    Ok(if token_moved || revocation_moved { HeldTokens::Drop } else { HeldTokens::Keep })
}

/// The origin (scheme, host, port) of an endpoint; `None` for none or an unparsable one, which
/// then differs from any real origin.
fn origin(endpoint: &str) -> Option<String> {
    let origin = url::Url::parse(endpoint).ok()?.origin();
    origin.is_tuple().then(|| origin.ascii_serialization())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(token_endpoint: &str, secret: bool) -> ProfileRecord {
        ProfileRecord {
            name: "p".into(),
            provider: "custom".into(),
            client_id: "c".into(),
            token_endpoint: token_endpoint.into(),
            revocation_endpoint: "https://a.example/revoke".into(),
            client_secret_sealed: if secret { vec![1] } else { Vec::new() },
            ..Default::default()
        }
    }

    /// Moving the token endpoint needs the secret; the tokens follow only within the origin.
    #[test]
    fn redirects() {
        let before = record("https://a.example/token", true);
        let elsewhere = record("https://b.example/token", true);
        let same_origin = record("https://a.example/v2/token", true);
        assert_eq!(check_redirect(&before, &elsewhere, false).unwrap_err().field, "client_secret");
        assert_eq!(check_redirect(&before, &elsewhere, true).unwrap(), HeldTokens::Drop);
        assert_eq!(check_redirect(&before, &same_origin, true).unwrap(), HeldTokens::Keep);
        assert_eq!(check_redirect(&before, &before, false).unwrap(), HeldTokens::Keep);
        let moved_revocation =
            ProfileRecord { revocation_endpoint: "https://b.example/revoke".into(), ..before.clone() };
        assert_eq!(check_redirect(&before, &moved_revocation, true).unwrap(), HeldTokens::Drop);
        let described = ProfileRecord { description: "new".into(), ..before.clone() };
        assert_eq!(check_redirect(&before, &described, false).unwrap(), HeldTokens::Keep);
        // A public client has no secret to supply; its tokens still stay at their origin.
        let (public, moved) = (record("https://a.example/token", false), record("https://b.example/token", false));
        assert_eq!(check_redirect(&public, &moved, false).unwrap(), HeldTokens::Drop);
    }
}
