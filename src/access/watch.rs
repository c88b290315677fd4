//! A caller held across a long-lived exchange: a watch stream today, a landing-page session
//! next. A request's caller is checked once; an exchange that outlives the request must notice
//! when a reload (SIGHUP) removes or changes its caller, or a caller taken out of the
//! configuration would keep receiving tokens, and its hand-outs would be tallied on a caller the
//! audit writer no longer knows. [`CallerWatch`] waits on [`Callers::changes`] and looks the
//! caller up again by the [`Credential`] it proved itself with; the holder decides what the
//! caller as it now stands may still do.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::callers::{Caller, Callers, Credential};

/// The caller is no longer in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("caller {0:?} was removed from the configuration")]
pub struct CallerGone(pub String);

/// One caller, followed across reloads of the caller table; see the module documentation.
#[derive(Debug)]
pub struct CallerWatch {
    callers: Callers,
    credential: Credential,
    /// The caller as it now stands; shared ([`CallerWatch::current`]) so the code that records
    /// hand-outs always records them on the caller the audit writer reads.
    current: Arc<ArcSwap<Caller>>,
    changes: watch::Receiver<u64>,
}

impl CallerWatch {
    /// Follows the caller `credential` names. Subscribes before looking it up, so no reload
    /// falls in between: a caller removed since its request was authenticated is
    /// [`CallerGone`] here already.
    pub fn new(callers: &Callers, credential: Credential, name: &str) -> Result<Self, CallerGone> {
        let changes = callers.changes();
        let caller = callers.resolve(&credential).ok_or_else(|| CallerGone(name.to_owned()))?;
        Ok(Self { callers: callers.clone(), credential, current: Arc::new(ArcSwap::new(caller)), changes })
    }

    /// A handle on the caller as it now stands (updated by [`CallerWatch::reloaded`]).
    pub fn current(&self) -> Arc<ArcSwap<Caller>> {
        Arc::clone(&self.current)
    }

    /// Waits for the next reload of the caller table, then returns the caller as the new table
    /// has it, or [`CallerGone`]. Hand-outs tallied on the previous caller since the reload
    /// wrote its tallies are written now, so none is lost. Cancel-safe. Never returns if the
    /// table can no longer change (the daemon is stopping).
    pub async fn reloaded(&mut self) -> Result<Arc<Caller>, CallerGone> {
        if self.changes.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        let previous = self.current.load_full();
        previous.handouts.write(&previous.name);
        let caller = self.callers.resolve(&self.credential).ok_or_else(|| CallerGone(previous.name.clone()))?;
        self.current.store(Arc::clone(&caller));
        Ok(caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CallerConfig;

    fn config(name: &str, token: &str, profiles: &[&str]) -> CallerConfig {
        CallerConfig {
            name: name.into(),
            role: "consumer".parse().unwrap(),
            token_sha256: super::super::hash_token(token),
            cert_dns_name: String::new(),
            unix_uid: None,
            profiles: profiles.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// A watch sees every reload: the caller as changed, then gone.
    #[tokio::test]
    async fn follows_reloads() {
        let callers = Callers::new(&[config("worker", "t", &["mail-*"])]);
        let mut watch = CallerWatch::new(&callers, Credential::of_token("t"), "worker").unwrap();
        callers.replace(&[config("worker", "t", &["files-*"])]);
        let caller = watch.reloaded().await.unwrap();
        assert!(caller.require_token("mail-in").is_err() && caller.require_token("files-in").is_ok());
        assert!(Arc::ptr_eq(&watch.current().load_full(), &caller));
        callers.replace(&[]);
        assert_eq!(watch.reloaded().await.unwrap_err(), CallerGone("worker".into()));
        assert!(CallerWatch::new(&callers, Credential::of_token("t"), "worker").is_err());
    }
}
