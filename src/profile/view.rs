//! The API view of a profile: what `GetProfile`, `ListProfiles` and the watch streams show.
//! Endpoints show what the profile uses (its own, else discovered, else the preset's); no
//! secret is ever in it.

use super::{grant, pb_duration, timestamp};
use crate::api::pb;
use crate::provider::{fill_tenant, preset};
use crate::store::{ConnectionRecord, ProfileRecord};

/// The API view of a profile and its connection. Never carries a secret. (A field-by-field
/// literal: longer than our functions usually are, and clearer whole.)
pub fn to_api(record: &ProfileRecord, connection: &ConnectionRecord) -> pb::Profile {
    let preset = preset(&record.provider);
    let tenant =
        record.provider_options.get("tenant").map(String::as_str).or(preset.map(|p| p.default_tenant)).unwrap_or("");
    let found = record.discovered.clone().unwrap_or_default();
    // What the profile uses: its own value, else the issuer's metadata, else the preset's.
    let shown =
        |own: &str, discovered: &str, pick: fn(&crate::provider::Preset) -> &'static str| match (own, discovered) {
            ("", "") => preset.map(|p| fill_tenant(pick(p), tenant)).unwrap_or_default(),
            ("", discovered) => discovered.to_owned(),
            (own, _) => own.to_owned(),
        };
    let held = !connection.access_token_sealed.is_empty();
    pb::Profile {
        name: record.name.clone(),
        description: record.description.clone(),
        provider: record.provider.clone(),
        grant: grant(record) as i32,
        client_id: record.client_id.clone(),
        client_secret: String::new(),
        scopes: record.scopes.clone(),
        authorization_endpoint: shown(&record.authorization_endpoint, &found.authorization_endpoint, |p| {
            p.authorization_endpoint
        }),
        token_endpoint: shown(&record.token_endpoint, &found.token_endpoint, |p| p.token_endpoint),
        revocation_endpoint: shown(&record.revocation_endpoint, &found.revocation_endpoint, |p| p.revocation_endpoint),
        device_authorization_endpoint: shown(
            &record.device_authorization_endpoint,
            &found.device_authorization_endpoint,
            |p| p.device_authorization_endpoint,
        ),
        redirect_uri: record.redirect_uri.clone(),
        extra_authorization_params: record.extra_authorization_params.clone().into_iter().collect(),
        token_endpoint_auth_method: record.token_endpoint_auth_method,
        refresh_policy: record.refresh_policy.as_ref().map(|p| pb::RefreshPolicy {
            mode: p.mode,
            skew_ratio: p.skew_ratio,
            skew_floor: pb_duration(p.skew_floor_ms),
            default_lifetime: pb_duration(p.default_lifetime_ms),
            max_idle: pb_duration(p.max_idle_ms),
        }),
        issuer: record.issuer.clone(),
        provider_options: record.provider_options.clone().into_iter().collect(),
        status: connection.status() as i32,
        authorization_expires_at: if held { timestamp(connection.expires_at_ms) } else { None },
        refresh_token_enabled: !connection.refresh_token_sealed.is_empty(),
        last_error: connection.last_error.clone(),
        last_refreshed_at: timestamp(connection.last_refreshed_at_ms),
        next_refresh_at: timestamp(connection.next_refresh_at_ms),
        client_secret_set: !record.client_secret_sealed.is_empty(),
        granted_scopes: if held { connection.scopes.clone() } else { Vec::new() },
        refresh_token_expires_at: timestamp(connection.refresh_token_expires_at_ms),
        consecutive_failures: connection.consecutive_failures,
        connected_account: connection.connected_account.clone(),
        managed: record.managed,
        create_time: timestamp(record.create_time_ms),
        update_time: timestamp(record.update_time_ms),
        token_metadata: connection.token_metadata.clone().into_iter().collect(),
        connected_at: timestamp(connection.connected_at_ms),
        // Depends on the time and the policy: the caller fills it in.
        warning: String::new(),
    }
}

/// A span of seconds for people, largest two units: `42s`, `54m{sep}12s`, `3h{sep}02m`,
/// `2d{sep}05h`. The landing page separates the units with a space, tokenctl with none.
pub fn human_span(secs: i64, sep: &str) -> String {
    let (d, h, m, s) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    if secs < 60 {
        format!("{s}s")
    } else if secs < 3600 {
        format!("{m}m{sep}{s:02}s")
    } else if secs < 86_400 {
        format!("{h}h{sep}{m:02}m")
    } else {
        format!("{d}d{sep}{h:02}h")
    }
}

/// A status as people read it: the words the landing page and `tokenctl list` show (never a
/// colour alone).
pub fn status_label(status: pb::Status) -> &'static str {
    match status {
        pb::Status::Unspecified => "Unknown",
        pb::Status::NotConnected => "Not connected",
        pb::Status::Connecting => "Connecting",
        pb::Status::Connected => "Connected",
        pb::Status::RefreshFailing => "Refresh failing",
        pb::Status::NeedsReauthorization => "Needs reauthorization",
    }
}

/// The admin action the connected-apps table offers for a status: Disconnect while tokens are
/// held, Connect when none are (or a person must consent again), Cancel while a consent is
/// pending. One rule for every surface.
pub fn action(status: pb::Status) -> &'static str {
    match status {
        pb::Status::Connected | pb::Status::RefreshFailing => "Disconnect",
        pb::Status::NotConnected | pb::Status::NeedsReauthorization => "Connect",
        pb::Status::Connecting => "Cancel",
        pb::Status::Unspecified => "",
    }
}
