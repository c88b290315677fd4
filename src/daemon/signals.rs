//! Running the daemon under a process manager: SIGTERM and SIGINT stop it gracefully (the
//! shutdown drains within its grace period), SIGHUP reloads the configuration. The `tokend`
//! binary calls [`serve`]; tests start a [`Daemon`] directly and stop it with its token.

use super::{Daemon, ReloadHandle, StartError, StartOptions};
use crate::config::{Config, ConfigError};

/// Starts the daemon with `config` and serves until SIGTERM or SIGINT, reloading on SIGHUP
/// with the configuration `reload` loads (the same sources as at start: the file, the
/// environment, the flags). Returns once the daemon has stopped; an error only when it could
/// not start.
pub async fn serve<F>(config: Config, options: StartOptions, reload: F) -> Result<(), StartError>
where
    F: Fn() -> Result<Config, ConfigError> + Send + 'static,
{
    let daemon = Daemon::start(config, options).await?;
    let stop = daemon.shutdown_token();
    tokio::spawn(async move {
        wait_for_shutdown().await;
        stop.cancel();
    });
    spawn_reload_on_sighup(daemon.reload_handle(), reload);
    daemon.wait().await;
    Ok(())
}

/// Waits for SIGTERM (systemd, Kubernetes) or SIGINT (Ctrl-C); where Unix signals cannot be
/// installed, for Ctrl-C alone.
pub async fn wait_for_shutdown() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// On every SIGHUP, loads the configuration with `reload` and applies it: callers, the TLS
/// certificate, keys and declared profiles change without a restart. A configuration that does
/// not load or apply is logged and changes nothing, so a typo never takes a running daemon
/// down. Does nothing where SIGHUP does not exist.
pub fn spawn_reload_on_sighup<F>(handle: ReloadHandle, reload: F)
where
    F: Fn() -> Result<Config, ConfigError> + Send + 'static,
{
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangup) = signal(SignalKind::hangup()) else { return };
        while hangup.recv().await.is_some() {
            let result = match reload() {
                Ok(config) => handle.reload(&config).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = result {
                tracing::error!("reload refused, nothing changed: {e}");
            }
        }
    });
    #[cfg(not(unix))]
    drop((handle, reload));
}
