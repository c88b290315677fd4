//! How profiles, times and statuses are printed (table and JSON).

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::time::SystemTime;

use prost_types::Timestamp;
use serde_json::{Value, json};
use tokend::api::pb;

/// Seconds since the Unix epoch, now.
pub(crate) fn now_secs() -> i64 {
    Timestamp::from(SystemTime::now()).seconds
}

/// A span of seconds for people: `42s`, `59m12s`, `3h02m`, `2d05h`.
pub(crate) fn human(secs: i64) -> String {
    tokend::profile::human_span(secs, "")
}

/// Time left until `ts` (`past` once it has passed; blank when unset).
pub(crate) fn until(ts: Option<&Timestamp>, past: &str) -> String {
    match ts {
        None => String::new(),
        Some(ts) if ts.seconds <= now_secs() => past.to_owned(),
        Some(ts) => human(ts.seconds - now_secs()),
    }
}

// The status words and the action rule live in the library, shared with the landing page.
pub(crate) use tokend::profile::{action, status_label};

/// Replaces control characters so a value cannot break a table line or the terminal.
pub(crate) fn clean(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// Prints left-aligned columns sized to their content.
pub(crate) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// A timestamp as RFC 3339, or null.
pub(crate) fn ts_json(ts: Option<&Timestamp>) -> Value {
    ts.map_or(Value::Null, |t| Value::String(t.to_string()))
}

/// A map with its keys in order.
pub(crate) fn sorted(map: &HashMap<String, String>) -> BTreeMap<&str, &str> {
    map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A profile as JSON, field names as in the proto, enums by name.
pub(crate) fn profile_json(p: &pb::Profile) -> Value {
    let policy = p.refresh_policy.as_ref().map(|r| {
        json!({
            "mode": r.mode().as_str_name(),
            "skew_ratio": r.skew_ratio,
            "skew_floor": r.skew_floor.map(|d| d.to_string()),
            "default_lifetime": r.default_lifetime.map(|d| d.to_string()),
            "max_idle": r.max_idle.map(|d| d.to_string()),
        })
    });
    let mut object = json!({
        "name": p.name, "description": p.description, "provider": p.provider,
        "grant": p.grant().as_str_name(), "client_id": p.client_id, "scopes": p.scopes,
        "authorization_endpoint": p.authorization_endpoint, "token_endpoint": p.token_endpoint,
        "revocation_endpoint": p.revocation_endpoint,
        "device_authorization_endpoint": p.device_authorization_endpoint,
        "redirect_uri": p.redirect_uri, "extra_authorization_params": sorted(&p.extra_authorization_params),
        "token_endpoint_auth_method": p.token_endpoint_auth_method().as_str_name(),
        "refresh_policy": policy, "issuer": p.issuer, "provider_options": sorted(&p.provider_options),
    });
    let state = json!({
        "status": p.status().as_str_name(),
        "authorization_expires_at": ts_json(p.authorization_expires_at.as_ref()),
        "refresh_token_enabled": p.refresh_token_enabled, "last_error": p.last_error, "warning": p.warning,
        "last_refreshed_at": ts_json(p.last_refreshed_at.as_ref()),
        "next_refresh_at": ts_json(p.next_refresh_at.as_ref()), "client_secret_set": p.client_secret_set,
        "granted_scopes": p.granted_scopes,
        "refresh_token_expires_at": ts_json(p.refresh_token_expires_at.as_ref()),
        "consecutive_failures": p.consecutive_failures, "connected_account": p.connected_account,
        "managed": p.managed, "create_time": ts_json(p.create_time.as_ref()),
        "update_time": ts_json(p.update_time.as_ref()), "token_metadata": sorted(&p.token_metadata),
        "connected_at": ts_json(p.connected_at.as_ref()),
    });
    if let (Some(object), Value::Object(state)) = (object.as_object_mut(), state) {
        object.extend(state);
    }
    object
}

/// A timestamp with the time left until it, for key/value output.
pub(crate) fn ts_line(ts: Option<&Timestamp>) -> String {
    ts.map_or_else(String::new, |t| match until(Some(t), "") {
        left if left.is_empty() => t.to_string(),
        left => format!("{t} (in {left})"),
    })
}

/// A JSON value as text for key/value output: lists space-separated, maps as `k=v`, timestamps
/// with the time left until them; empty for null, false, 0 and unspecified enums.
pub(crate) fn text_of(key: &str, value: &Value) -> String {
    let text = match value {
        Value::String(s) if s.ends_with("_UNSPECIFIED") => String::new(),
        Value::String(s) if key.ends_with("_at") || key.ends_with("_time") => {
            s.parse::<Timestamp>().map_or_else(|_| s.clone(), |t| ts_line(Some(&t)))
        }
        Value::String(s) => match s.strip_prefix(&format!("{}_", key.to_uppercase())) {
            Some(value) => value.to_lowercase(),
            None => s.clone(),
        },
        Value::Array(items) => items.iter().map(|v| text_of("", v)).collect::<Vec<_>>().join(" "),
        Value::Object(map) => map.iter().map(|(k, v)| format!("{k}={}", text_of("", v))).collect::<Vec<_>>().join(" "),
        Value::Bool(b) => if *b { "yes" } else { "" }.to_owned(),
        Value::Number(n) if n.as_f64() == Some(0.0) => String::new(),
        Value::Number(n) => n.to_string(),
        Value::Null => String::new(),
    };
    clean(&text)
}

/// Prints a profile as `key: value` lines: name and status first, then the other non-empty
/// fields by their proto names.
pub(crate) fn print_profile(p: &pb::Profile) {
    let mut lines = vec![
        ("name".to_owned(), clean(&p.name)),
        ("status".to_owned(), format!("{} (action: {})", status_label(p.status()), action(p.status()))),
    ];
    if let Value::Object(fields) = profile_json(p) {
        let rest = fields.iter().filter(|(key, _)| !matches!(key.as_str(), "name" | "status"));
        lines.extend(rest.map(|(key, value)| (key.clone(), text_of(key, value))).filter(|(_, v)| !v.is_empty()));
    }
    let width = lines.iter().map(|(key, _)| key.len() + 2).max().unwrap_or(0);
    for (key, value) in lines {
        println!("{:<width$}{value}", format!("{key}:"));
    }
}

/// Whether a consent started from `baseline` (the profile as Connect left it) has finished: `Ok`
/// once new tokens came, `Err(reason)` once it failed or was cancelled. A profile that holds
/// tokens keeps its status during a consent (and a failed consent leaves it there), so success is
/// a new `connected_at` and failure a new `last_error`; a refresh failing meanwhile is no verdict.
pub(crate) fn settled(baseline: &pb::Profile, now: &pb::Profile) -> Option<Result<(), String>> {
    use pb::Status::{Connected, Connecting, NeedsReauthorization, NotConnected};
    let was_connecting = baseline.status() == Connecting;
    let reconnected = now.connected_at.is_some() && now.connected_at != baseline.connected_at;
    if reconnected || (was_connecting && now.status() == Connected) {
        return Some(Ok(()));
    }
    let new_error = !now.last_error.is_empty() && (was_connecting || now.last_error != baseline.last_error);
    match now.status() {
        NotConnected | NeedsReauthorization | Connected if new_error => Some(Err(now.last_error.clone())),
        NotConnected if was_connecting => Some(Err("the consent was cancelled".to_owned())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use prost_types::Timestamp;
    use tokend::api::pb;

    use super::*;

    fn profile(status: pb::Status, error: &str, connected_at: i64) -> pb::Profile {
        let connected_at = (connected_at > 0).then_some(Timestamp { seconds: connected_at, nanos: 0 });
        pb::Profile { status: status as i32, last_error: error.into(), connected_at, ..Default::default() }
    }

    /// Spans read the way the table shows them.
    #[test]
    fn human_spans() {
        assert_eq!(human(42), "42s");
        assert_eq!(human(59 * 60 + 12), "59m12s");
        assert_eq!(human(3 * 3600 + 2 * 60 + 59), "3h02m");
        assert_eq!(human(2 * 86_400 + 5 * 3600), "2d05h");
        assert_eq!(until(Some(&Timestamp { seconds: 1, nanos: 0 }), "expired"), "expired");
        assert_eq!(until(None, "expired"), "");
    }

    /// A consent settles on new tokens, a new error or a cancel; stale errors and refresh
    /// failures of a connected profile are no verdict.
    #[test]
    fn consent_verdicts() {
        use pb::Status::*;
        let pending = profile(Connecting, "old failure", 0);
        assert_eq!(settled(&pending, &pending), None);
        assert_eq!(settled(&pending, &profile(Connected, "", 100)), Some(Ok(())));
        assert_eq!(settled(&pending, &profile(NotConnected, "old failure", 0)), Some(Err("old failure".into())));
        assert!(matches!(settled(&pending, &profile(NotConnected, "", 0)), Some(Err(_))));
        let held = profile(NeedsReauthorization, "invalid_grant", 100);
        assert_eq!(settled(&held, &held), None);
        assert_eq!(settled(&held, &profile(Connected, "", 200)), Some(Ok(())));
        assert_eq!(settled(&held, &profile(NeedsReauthorization, "denied", 100)), Some(Err("denied".into())));
        let connected = profile(Connected, "", 100);
        assert_eq!(settled(&connected, &profile(RefreshFailing, "timeout", 100)), None);
        assert_eq!(settled(&connected, &profile(Connected, "denied", 100)), Some(Err("denied".into())));
    }
}
