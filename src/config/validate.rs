//! The checks serde cannot make: ranges, keys that depend on each other, cron syntax, glob and
//! CIDR syntax. (Settings with a fixed set of values are enums that serde checks; see
//! [`super::choices`].) Each failure is a [`ConfigError::Rejected`] naming the key.

use super::{Config, ConfigError, GrpcConfig, HttpConfig, RefreshConfig};

type Checked = Result<(), ConfigError>;

fn reject(key: impl Into<String>, reason: impl Into<String>) -> Checked {
    Err(ConfigError::rejected(key, reason))
}

impl Config {
    /// Checks what serde cannot (ranges, keys that depend on each other, syntax of crons, globs
    /// and networks); the first problem found is returned, naming its key.
    pub fn validate(&self) -> Checked {
        check_refresh(&self.refresh)?;
        if self.audit.handout_interval_secs == 0 {
            return reject("audit.handout_interval_secs", "must be positive");
        }
        let provider = &self.provider;
        if provider.soft_timeout_secs == 0 || provider.soft_timeout_secs > provider.request_timeout_secs {
            return reject("provider.soft_timeout_secs", "must be positive and at most provider.request_timeout_secs");
        }
        if let Err(e) = crate::provider::DenyList::parse(&provider.deny_networks) {
            return reject("provider.deny_networks", e.to_string());
        }
        if self.consent.ttl_secs == 0 {
            return reject("consent.ttl_secs", "must be positive");
        }
        check_grpc(&self.grpc)?;
        if self.http.header_read_timeout_secs == 0 {
            return reject("http.header_read_timeout_secs", "must be positive");
        }
        if self.http.max_connections == 0 || self.http.max_connections > 1_000_000 {
            return reject("http.max_connections", "must be between 1 and 1000000");
        }
        check_http(&self.http)?;
        if !self.http.callback_url.is_empty()
            && let Err(why) = crate::provider::parse_endpoint("http.callback_url", &self.http.callback_url, true)
        {
            // `parse_endpoint` names the key itself; keep its wording after ours.
            return reject("http.callback_url", why.trim_start_matches("http.callback_url").trim_start_matches(": "));
        }
        self.check_postgres()?;
        self.check_profiles()?;
        self.check_callers()
    }

    fn check_postgres(&self) -> Checked {
        let pg = &self.store.postgres;
        if self.store.backend != super::StoreBackend::Postgres {
            return Ok(());
        }
        if pg.url.is_empty() {
            return reject("store.postgres.url", "is required with store.backend = \"postgres\"");
        }
        if !(pg.url.starts_with("postgres://") || pg.url.starts_with("postgresql://")) {
            return reject("store.postgres.url", "must start with postgres:// or postgresql://");
        }
        if pg.pool_size < 2 {
            return reject("store.postgres.pool_size", "must be at least 2 (the change feed holds one connection)");
        }
        if pg.connect_timeout_secs == 0 || pg.statement_timeout_secs == 0 {
            return reject("store.postgres.connect_timeout_secs", "timeouts must be positive");
        }
        if !crate::store::postgres::pool::valid_schema(&pg.schema) {
            return reject("store.postgres.schema", "use lowercase letters, digits and _");
        }
        Ok(())
    }

    fn check_profiles(&self) -> Checked {
        for (i, declared) in self.profiles.iter().enumerate() {
            if self.profiles[..i].iter().any(|p| p.name == declared.name) {
                return reject(format!("profiles[{i}].name"), "declared twice");
            }
        }
        Ok(())
    }

    fn check_callers(&self) -> Checked {
        for (i, caller) in self.callers.iter().enumerate() {
            let has_token = !caller.token_sha256.is_empty();
            let hex = caller.token_sha256.len() == 64 && caller.token_sha256.bytes().all(|b| b.is_ascii_hexdigit());
            if has_token && !hex {
                return reject(format!("callers[{i}].token_sha256"), "must be 64 hex digits (SHA-256)");
            }
            if !has_token && caller.cert_dns_name.is_empty() && caller.unix_uid.is_none() {
                return reject(format!("callers[{i}]"), "needs token_sha256, cert_dns_name or unix_uid");
            }
            if !caller.cert_dns_name.is_empty() && self.grpc.tls.client_ca_file.as_os_str().is_empty() {
                return reject(format!("callers[{i}].cert_dns_name"), "needs grpc.tls.client_ca_file");
            }
            if caller.unix_uid.is_some() && self.grpc.unix_socket.as_os_str().is_empty() {
                return reject(format!("callers[{i}].unix_uid"), "needs grpc.unix_socket");
            }
            for pattern in &caller.profiles {
                if let Err(e) = globset::Glob::new(pattern) {
                    return reject(format!("callers[{i}].profiles"), e.to_string());
                }
            }
        }
        Ok(())
    }
}

fn check_refresh(r: &RefreshConfig) -> Checked {
    if !(0.0..=0.5).contains(&r.skew_ratio) {
        return reject("refresh.skew_ratio", "must be between 0 and 0.5");
    }
    if !(0.0..=1.0).contains(&r.jitter_ratio) {
        return reject("refresh.jitter_ratio", "must be between 0 and 1");
    }
    if r.default_lifetime_secs == 0 {
        return reject("refresh.default_lifetime_secs", "must be positive");
    }
    if !r.provider_rate_per_sec.is_finite() || r.provider_rate_per_sec <= 0.0 {
        return reject("refresh.provider_rate_per_sec", "must be positive");
    }
    if r.provider_burst == 0 {
        return reject("refresh.provider_burst", "must be positive");
    }
    if r.max_concurrent == 0 {
        return reject("refresh.max_concurrent", "must be positive");
    }
    if r.backoff_initial_secs == 0 {
        return reject("refresh.backoff_initial_secs", "must be positive");
    }
    if r.backoff_max_secs < r.backoff_initial_secs {
        return reject("refresh.backoff_max_secs", "must be at least refresh.backoff_initial_secs");
    }
    if r.sweep_cron.split_whitespace().count() != 6 {
        return reject("refresh.sweep_cron", "needs six fields (seconds first), e.g. \"*/10 * * * * *\"");
    }
    Ok(())
}

fn check_grpc(grpc: &GrpcConfig) -> Checked {
    let tls = &grpc.tls;
    if !grpc.listen.ip().is_loopback() && !tls.enabled() && !grpc.allow_insecure_non_loopback {
        return reject(
            "grpc.listen",
            "plain TCP on a non-loopback address; configure grpc.tls, or set grpc.allow_insecure_non_loopback = true to accept that risk",
        );
    }
    if tls.enabled() && tls.key_file.as_os_str().is_empty() {
        return reject("grpc.tls.key_file", "required with grpc.tls.cert_file");
    }
    let tls_parts_without_cert = !tls.key_file.as_os_str().is_empty() || !tls.client_ca_file.as_os_str().is_empty();
    if !tls.enabled() && tls_parts_without_cert {
        return reject("grpc.tls.cert_file", "required with grpc.tls.key_file or grpc.tls.client_ca_file");
    }
    let limit = &grpc.auth_limit;
    if limit.max_failures > 0 && (limit.window_secs == 0 || limit.block_secs == 0 || limit.max_peers == 0) {
        return reject("grpc.auth_limit", "window_secs, block_secs and max_peers must be positive");
    }
    if grpc.unix_socket_mode > 0o777 {
        return reject("grpc.unix_socket_mode", "must be a file mode such as 0o660");
    }
    Ok(())
}

fn check_http(http: &HttpConfig) -> Checked {
    let tls = &http.tls;
    if tls.enabled() && tls.key_file.as_os_str().is_empty() {
        return reject("http.tls.key_file", "required with http.tls.cert_file");
    }
    if !tls.enabled() && !tls.key_file.as_os_str().is_empty() {
        return reject("http.tls.cert_file", "required with http.tls.key_file");
    }
    if !tls.client_ca_file.as_os_str().is_empty() {
        return reject("http.tls.client_ca_file", "not used on the HTTP listener; leave it empty");
    }
    let session = &http.session;
    if session.idle_timeout_secs == 0 {
        return reject("http.session.idle_timeout_secs", "must be positive");
    }
    if session.absolute_timeout_secs < session.idle_timeout_secs {
        return reject("http.session.absolute_timeout_secs", "must be at least http.session.idle_timeout_secs");
    }
    Ok(())
}
