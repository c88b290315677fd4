//! `Debug` for the messages whose derived `Debug` the build skips because they carry secrets
//! (see `build.rs`). Secret fields print as `<redacted>` or `<empty>`, never their value.

use std::fmt;

use super::pb::{AccessToken, CompleteConnectRequest, Profile};

/// Shows only whether a secret string is set.
struct Redacted<'a>(&'a str);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "<empty>" } else { "<redacted>" })
    }
}

impl fmt::Debug for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Profile")
            .field("name", &self.name)
            .field("provider", &self.provider)
            .field("grant", &self.grant)
            .field("client_id", &self.client_id)
            .field("client_secret", &Redacted(&self.client_secret))
            .field("scopes", &self.scopes)
            .field("token_endpoint", &self.token_endpoint)
            .field("status", &self.status)
            .field("authorization_expires_at", &self.authorization_expires_at)
            .field("last_error", &self.last_error)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("name", &self.name)
            .field("access_token", &Redacted(&self.access_token))
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .field("scopes", &self.scopes)
            .field("token_version", &self.token_version)
            .finish()
    }
}

impl fmt::Debug for CompleteConnectRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompleteConnectRequest")
            .field("redirect_url", &Redacted(&self.redirect_url))
            .field("code", &Redacted(&self.code))
            .field("state", &Redacted(&self.state))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debug output of secret-carrying messages never contains the secret.
    #[test]
    fn debug_redacts_secrets() {
        let token = AccessToken { access_token: "at-secret-value".into(), ..Default::default() };
        let profile = Profile { client_secret: "cs-secret-value".into(), ..Default::default() };
        let complete = CompleteConnectRequest {
            redirect_url: "http://x/cb?code=code-secret".into(),
            code: "code-secret".into(),
            state: "state-secret".into(),
        };
        let printed = format!("{token:?} {profile:?} {complete:?}");
        assert!(!printed.contains("secret-value"), "{printed}");
        assert!(!printed.contains("code-secret"), "{printed}");
        assert!(!printed.contains("state-secret"), "{printed}");
        assert!(printed.contains("<redacted>"));
    }
}
