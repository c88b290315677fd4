//! One method per subcommand.

use std::fmt::Display;
use std::time::Duration;

use prost_types::{FieldMask, Timestamp};
use serde_json::{Value, json};
use tokend::api::pb;

use crate::cli::*;
use crate::client::*;
use crate::failure::*;
use crate::input::*;
use crate::render::*;

// === impl Client ===

impl Client {
    /// Prints a JSON value (pretty).
    pub(crate) fn json(&self, value: &Value) {
        println!("{value:#}");
    }

    /// Prints a message for people: stdout in table mode, stderr when stdout carries JSON.
    pub(crate) fn say(&self, text: impl Display) {
        match self.output {
            Output::Table => println!("{text}"),
            Output::Json => eprintln!("{text}"),
        }
    }

    /// Prints a profile in the chosen format.
    pub(crate) fn show(&self, profile: &pb::Profile) {
        match self.output {
            Output::Table => print_profile(profile),
            Output::Json => self.json(&profile_json(profile)),
        }
    }

    /// Every profile, following the pages to the end.
    pub(crate) async fn all_profiles(&mut self) -> Outcome<Vec<pb::Profile>> {
        let mut profiles = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = pb::ListProfilesRequest { page_size: 1000, page_token: page_token.clone() };
            let page = self.apps.list_profiles(request).await.or_fail(&self.hints, "listing profiles")?;
            profiles.extend(page.profiles);
            if page.next_page_token.is_empty() || page.next_page_token == page_token {
                return Ok(profiles);
            }
            page_token = page.next_page_token;
        }
    }

    /// `list`: the connected-apps table.
    pub(crate) async fn list(&mut self, wide: bool) -> Outcome {
        let profiles = self.all_profiles().await?;
        if self.output == Output::Json {
            self.json(&Value::Array(profiles.iter().map(profile_json).collect()));
            return Ok(());
        }
        let mut header =
            vec!["NAME", "DESCRIPTION", "PROVIDER", "AUTHORIZATION EXPIRES", "STATUS", "REFRESH TOKEN", "ACTION"];
        if wide {
            header.extend(["NEXT REFRESH", "LAST ERROR", "WARNING"]);
        }
        let rows: Vec<Vec<String>> = profiles
            .iter()
            .map(|p| {
                let mut row = vec![
                    clean(&p.name),
                    clean(&p.description),
                    clean(&p.provider),
                    until(p.authorization_expires_at.as_ref(), "expired"),
                    status_label(p.status()).to_owned(),
                    if p.refresh_token_enabled { "enabled".to_owned() } else { String::new() },
                    action(p.status()).to_owned(),
                ];
                if wide {
                    row.extend([until(p.next_refresh_at.as_ref(), "due"), clean(&p.last_error), clean(&p.warning)]);
                }
                row
            })
            .collect();
        print_table(&header, &rows);
        Ok(())
    }

    /// GetProfile.
    pub(crate) async fn profile(&mut self, name: &str) -> Outcome<pb::Profile> {
        let request = pb::GetProfileRequest { name: name.to_owned() };
        let reply = self.apps.get_profile(request).await.or_fail(&self.hints, format!("getting {name}"))?;
        Ok(reply)
    }

    /// `create` (`paths` unused) or `update` (exactly the fields given).
    pub(crate) async fn save(&mut self, name: &str, provider: Option<String>, fields: Fields, create: bool) -> Outcome {
        let (profile, paths) = build_profile(name, provider, fields)?;
        let saved = if create {
            let request = pb::CreateProfileRequest { profile: Some(profile) };
            self.apps.create_profile(request).await.or_fail(&self.hints, format!("creating {name}"))?
        } else if paths.is_empty() {
            return Err(Failure::new(2, "nothing to update", Some("give at least one field flag, see --help".into())));
        } else {
            let request = pb::UpdateProfileRequest { profile: Some(profile), update_mask: Some(FieldMask { paths }) };
            self.apps.update_profile(request).await.or_fail(&self.hints, format!("updating {name}"))?
        };
        self.show(&saved);
        Ok(())
    }

    /// Prints what a disconnect did.
    pub(crate) fn revocation(&self, name: &str, done: &str, reply: &pb::DisconnectResponse) {
        match self.output {
            Output::Table => println!("{name} {done}: {}", clean(&reply.detail)),
            Output::Json => self.json(&json!({
                "name": name,
                "revoked": reply.revoked,
                "revocation": reply.revocation().as_str_name(),
                "detail": reply.detail,
            })),
        }
    }

    /// `delete`.
    pub(crate) async fn delete(&mut self, name: &str) -> Outcome {
        let request = pb::DeleteProfileRequest { name: name.to_owned() };
        let reply = self.apps.delete_profile(request).await.or_fail(&self.hints, format!("deleting {name}"))?;
        self.revocation(name, "deleted", &reply.disconnect.unwrap_or_default());
        Ok(())
    }

    /// `disconnect`.
    pub(crate) async fn disconnect(&mut self, name: &str) -> Outcome {
        let request = pb::DisconnectRequest { name: name.to_owned() };
        let reply = self.apps.disconnect(request).await.or_fail(&self.hints, format!("disconnecting {name}"))?;
        self.revocation(name, "disconnected", &reply);
        Ok(())
    }

    /// `connect`: starts the grant, shows what the admin must do, and waits for the outcome.
    pub(crate) async fn connect(&mut self, name: &str, no_wait: bool) -> Outcome {
        let request = pb::ConnectRequest { name: name.to_owned() };
        let reply = self.apps.connect(request).await.or_fail(&self.hints, format!("connecting {name}"))?;
        if self.output == Output::Json {
            self.json(&json!({
                "name": name,
                "status": reply.status().as_str_name(),
                "authorization_url": reply.authorization_url,
                "state": reply.state,
                "verification_uri": reply.verification_uri,
                "verification_uri_complete": reply.verification_uri_complete,
                "user_code": reply.user_code,
                "expires_at": ts_json(reply.expires_at.as_ref()),
            }));
        }
        if !reply.authorization_url.is_empty() {
            self.say(format!("Open this URL in a browser to connect {name}:\n{}", reply.authorization_url));
        } else if !reply.user_code.is_empty() {
            self.say(format!("To connect {name}, go to {} and enter code {}", reply.verification_uri, reply.user_code));
        } else if reply.status() == pb::Status::Connected {
            self.say(format!("{name} connected"));
            return Ok(());
        } else {
            let status = status_label(reply.status());
            return Err(Failure::new(
                1,
                format!("connecting {name}: tokend started no consent (status {status})"),
                None,
            ));
        }
        if no_wait {
            return Ok(());
        }
        let baseline = reply.profile.unwrap_or_default();
        self.wait_connected(name, &baseline, reply.expires_at).await
    }

    /// Watches `name` until the consent started from `baseline` finishes or `expires_at` passes.
    pub(crate) async fn wait_connected(
        &mut self,
        name: &str,
        baseline: &pb::Profile,
        expires_at: Option<Timestamp>,
    ) -> Outcome {
        let what = format!("waiting for {name} to connect");
        let request = pb::WatchProfilesRequest { names: vec![name.to_owned()], send_initial: false };
        let mut stream = self.apps.watch_profiles(request).await.or_fail(&self.hints, &what)?;
        // A consent finished between Connect and the watch would otherwise go unseen.
        let mut outcome = settled(baseline, &self.profile(name).await?);
        let left = expires_at.map_or(86_400 * 365, |t| t.seconds.saturating_sub(now_secs()).max(0));
        let deadline = tokio::time::sleep(Duration::from_secs(left.unsigned_abs()));
        tokio::pin!(deadline);
        while outcome.is_none() {
            tokio::select! {
                () = &mut deadline => {
                    let hint = Some(format!("run `tokenctl connect {name}` again"));
                    return Err(Failure::new(1, format!("{what}: the consent expired"), hint));
                }
                event = stream.message() => match event {
                    Ok(Some(event)) if event.kind() == pb::profile_event::Kind::Deleted => {
                        outcome = Some(Err("the profile was deleted".to_owned()));
                    }
                    Ok(Some(event)) => outcome = event.profile.and_then(|p| settled(baseline, &p)),
                    Ok(None) => return Err(Failure::new(6, format!("{what}: tokend ended the watch"), None)),
                    Err(status) => return Err(self.hints.fail(&what, &status)),
                },
            }
        }
        match outcome {
            Some(Err(reason)) => Err(Failure::new(1, format!("connecting {name}: {reason}"), None)),
            _ => {
                self.say(format!("{name} connected"));
                Ok(())
            }
        }
    }

    /// `complete`.
    pub(crate) async fn complete(&mut self, redirect_url: String) -> Outcome {
        let request = pb::CompleteConnectRequest { redirect_url, ..Default::default() };
        let reply = self.apps.complete_connect(request).await.or_fail(&self.hints, "completing the consent")?;
        let profile = reply.profile.unwrap_or_default();
        match self.output {
            Output::Table => println!("{} connected", profile.name),
            Output::Json => self.json(&profile_json(&profile)),
        }
        Ok(())
    }

    /// `refresh`.
    pub(crate) async fn refresh(&mut self, name: &str) -> Outcome {
        let request = pb::RefreshNowRequest { name: name.to_owned() };
        let reply = self.apps.refresh_now(request).await.or_fail(&self.hints, format!("refreshing {name}"))?;
        let profile = reply.profile.unwrap_or_default();
        match self.output {
            Output::Table => match profile.authorization_expires_at.as_ref() {
                Some(_) => println!(
                    "{name} refreshed; the token expires {}",
                    ts_line(profile.authorization_expires_at.as_ref())
                ),
                None => println!("{name} refreshed"),
            },
            Output::Json => self.json(&profile_json(&profile)),
        }
        Ok(())
    }

    /// `token`: only the token on stdout.
    pub(crate) async fn token(&mut self, name: &str, min_valid_for: Option<u64>) -> Outcome {
        let min_valid_for =
            min_valid_for.map(|s| prost_types::Duration { seconds: s.min(i64::MAX as u64) as i64, nanos: 0 });
        let request = pb::GetAccessTokenRequest { name: name.to_owned(), min_valid_for };
        let what = format!("getting a token for {name}");
        let token = self.tokens.get_access_token(request).await.or_fail(&self.hints, what)?;
        match self.output {
            Output::Table => println!("{}", token.access_token),
            Output::Json => self.json(&json!({
                "name": token.name,
                "access_token": token.access_token,
                "token_type": token.token_type,
                "expires_at": ts_json(token.expires_at.as_ref()),
                "scopes": token.scopes,
                "token_version": token.token_version,
            })),
        }
        Ok(())
    }

    /// `watch`: one line per event (one JSON object per line with `--output json`). A watch that
    /// fell behind tokend's events (tokend ends it with `ABORTED`: what it missed is unknown)
    /// watches again from the current state, as tokend asks, and says so on stderr; the
    /// profiles' `initial` events follow.
    pub(crate) async fn watch(&mut self, names: Vec<String>) -> Outcome {
        let request = pb::WatchProfilesRequest { names, send_initial: true };
        let mut stream = self.apps.watch_profiles(request.clone()).await.or_fail(&self.hints, "watching profiles")?;
        loop {
            let event = match stream.message().await {
                Ok(Some(event)) => event,
                Ok(None) => return Err(Failure::new(6, "watching profiles: tokend ended the watch", None)),
                Err(status) if status.code() == tonic::Code::Aborted => {
                    eprintln!("tokenctl: {}; watching again from the current state", clean(status.message()));
                    stream =
                        self.apps.watch_profiles(request.clone()).await.or_fail(&self.hints, "watching profiles")?;
                    continue;
                }
                Err(status) => return Err(self.hints.fail("watching profiles", &status)),
            };
            let profile = event.profile.clone().unwrap_or_default();
            if self.output == Output::Json {
                let value = json!({
                    "kind": event.kind().as_str_name(),
                    "time": ts_json(event.time.as_ref()),
                    "previous_status": event.previous_status().as_str_name(),
                    "profile": profile_json(&profile),
                });
                println!("{value}");
                continue;
            }
            let kind = event.kind().as_str_name().trim_start_matches("KIND_").to_lowercase();
            let mut status = status_label(profile.status()).to_owned();
            if event.kind() == pb::profile_event::Kind::Deleted {
                status = "deleted".to_owned();
            } else if event.previous_status() != profile.status() {
                status = format!("{status} (was {})", status_label(event.previous_status()));
            }
            let time = event.time.map_or_else(String::new, |t| t.to_string());
            let line = format!("{time}  {kind}  {}  {status}  {}", clean(&profile.name), clean(&profile.last_error));
            println!("{}", line.trim_end());
        }
    }
}
