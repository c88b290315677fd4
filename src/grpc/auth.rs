//! Caller authentication and roles. A caller presents `authorization: Bearer <token>`; tokens
//! are configured as SHA-256 hashes, so the configuration holds nothing that grants access.
//! The interceptor runs before the request body is decoded and attaches the [`Caller`].

use std::collections::HashMap;
use std::sync::Arc;

use globset::{Glob, GlobSet, GlobSetBuilder};
use sha2::{Digest, Sha256};
use tonic::{Request, Status};

use crate::config::CallerConfig;

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything, tokens included.
    Admin,
    /// Read the profile table; never a token.
    Viewer,
    /// Tokens for the profiles its patterns allow; nothing else.
    Consumer,
}

/// An authenticated caller.
#[derive(Debug)]
pub struct Caller {
    /// Its configured name, for logs and audit.
    pub name: String,
    /// Its role.
    pub role: Role,
    profiles: GlobSet,
    /// Its token hand-outs since the audit writer last ran.
    pub handouts: crate::audit::HandoutTallies,
}

impl Caller {
    /// Whether this caller may administer profiles.
    pub fn require_admin(&self) -> Result<(), Status> {
        match self.role {
            Role::Admin => Ok(()),
            _ => Err(Status::permission_denied(format!("caller {:?} is not an admin", self.name))),
        }
    }

    /// Whether this caller may read the profile table.
    pub fn require_viewer(&self) -> Result<(), Status> {
        match self.role {
            Role::Admin | Role::Viewer => Ok(()),
            Role::Consumer => Err(Status::permission_denied(format!("caller {:?} may only fetch tokens", self.name))),
        }
    }

    /// Whether this caller may get tokens of `profile`. A consumer asking for a name outside
    /// its patterns is refused the same way whether the profile exists or not.
    pub fn require_token(&self, profile: &str) -> Result<(), Status> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Consumer if self.profiles.is_match(profile) => Ok(()),
            _ => Err(Status::permission_denied(format!("caller {:?} may not get tokens of {profile:?}", self.name))),
        }
    }
}

/// The hex SHA-256 of a bearer token, as written in the configuration.
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Every configured caller, by token hash.
#[derive(Debug, Clone, Default)]
pub struct Callers {
    by_hash: Arc<HashMap<[u8; 32], Arc<Caller>>>,
}

impl Callers {
    /// Builds the table; the configuration was validated already, so bad entries are skipped.
    pub fn new(configs: &[CallerConfig]) -> Self {
        let mut by_hash = HashMap::new();
        for config in configs {
            let mut hash = [0u8; 32];
            let ok = (0..32).all(|i| {
                u8::from_str_radix(config.token_sha256.get(2 * i..2 * i + 2).unwrap_or("x"), 16)
                    .map(|b| hash[i] = b)
                    .is_ok()
            });
            let role = match config.role.as_str() {
                "admin" => Role::Admin,
                "viewer" => Role::Viewer,
                "consumer" => Role::Consumer,
                _ => continue,
            };
            let mut globs = GlobSetBuilder::new();
            for pattern in &config.profiles {
                if let Ok(glob) = Glob::new(pattern) {
                    globs.add(glob);
                }
            }
            let Ok(profiles) = globs.build() else { continue };
            if ok {
                by_hash.insert(
                    hash,
                    Arc::new(Caller { name: config.name.clone(), role, profiles, handouts: Default::default() }),
                );
            }
        }
        Self { by_hash: Arc::new(by_hash) }
    }

    /// Every caller.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Caller>> {
        self.by_hash.values()
    }

    /// The caller presenting `token`. Lookup is by the token's SHA-256, so the time taken does
    /// not depend on how much of a guessed token is right.
    pub fn authenticate(&self, token: &str) -> Option<Arc<Caller>> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_hash.get(&digest).cloned()
    }

    /// The gRPC interceptor: attaches the caller or answers `UNAUTHENTICATED`.
    pub fn interceptor(
        &self,
    ) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + Send + Sync + 'static {
        let callers = self.clone();
        move |mut request: Request<()>| {
            let header = request
                .metadata()
                .get("authorization")
                .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <token>` metadata"))?;
            let value = header.to_str().map_err(|_| Status::unauthenticated("malformed authorization metadata"))?;
            let token = value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
                .ok_or_else(|| Status::unauthenticated("authorization metadata must be `Bearer <token>`"))?;
            let caller = callers.authenticate(token.trim()).ok_or_else(|| {
                tracing::warn!(peer = ?request.remote_addr(), "rejected an unknown bearer token");
                Status::unauthenticated("unknown bearer token")
            })?;
            request.extensions_mut().insert(caller);
            Ok(request)
        }
    }
}

/// The caller attached by the interceptor.
pub fn caller<T>(request: &Request<T>) -> Result<Arc<Caller>, Status> {
    request.extensions().get::<Arc<Caller>>().cloned().ok_or_else(|| Status::unauthenticated("no authenticated caller"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(role: &str, token: &str, profiles: &[&str]) -> CallerConfig {
        CallerConfig {
            name: format!("{role}-caller"),
            role: role.into(),
            token_sha256: hash_token(token),
            profiles: profiles.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// Roles grant exactly what DESIGN says; consumers are bound to their patterns.
    #[test]
    fn roles() {
        let callers = Callers::new(&[
            config("admin", "a", &[]),
            config("viewer", "v", &[]),
            config("consumer", "c", &["mail-*"]),
        ]);
        let admin = callers.authenticate("a").unwrap();
        let viewer = callers.authenticate("v").unwrap();
        let consumer = callers.authenticate("c").unwrap();
        assert!(callers.authenticate("x").is_none());
        assert!(admin.require_admin().is_ok() && admin.require_token("any").is_ok());
        assert!(
            viewer.require_viewer().is_ok()
                && viewer.require_admin().is_err()
                && viewer.require_token("mail-in").is_err()
        );
        assert!(consumer.require_token("mail-in").is_ok() && consumer.require_token("box").is_err());
        assert!(consumer.require_viewer().is_err());
    }
}
