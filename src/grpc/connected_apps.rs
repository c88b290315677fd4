//! `tokend.v1.ConnectedApps`: the admin surface.

use std::sync::Arc;

use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::auth::{Callers, caller, caller_watch};
use super::bound::{Replies, bound_to_caller};
use super::convert::profile_reply;
use super::status::to_status;
use crate::admin::{Admin, AdminError, ConnectStart, ProfileView, Revocation};
use crate::api::pb;
use crate::api::pb::connected_apps_server::ConnectedApps;
use crate::engine::{Engine, EngineError};
use crate::profile::timestamp;

/// The service implementation over profile administration.
#[derive(Debug, Clone)]
pub struct ConnectedAppsService {
    admin: Arc<Admin>,
    /// The caller table, for watch streams to follow their caller across reloads.
    callers: Callers,
    shutdown: CancellationToken,
}

impl ConnectedAppsService {
    /// The service; `shutdown` ends watch streams, and so does a reload of `callers` that
    /// removes a stream's caller or takes its viewer role.
    pub fn new(admin: Arc<Admin>, callers: Callers, shutdown: CancellationToken) -> Self {
        Self { admin, callers, shutdown }
    }
}

fn disconnect_reply(revocation: Revocation, profile: Option<pb::Profile>) -> pb::DisconnectResponse {
    let (kind, detail) = match revocation {
        Revocation::Revoked => (pb::Revocation::Revoked, "the provider revoked the token".to_owned()),
        Revocation::Failed(d) => (pb::Revocation::Failed, format!("revocation failed, tokens deleted anyway: {d}")),
        Revocation::NotSupported => {
            (pb::Revocation::NotSupported, "the provider has no revocation endpoint; tokens deleted locally".to_owned())
        }
        Revocation::NothingToRevoke => (pb::Revocation::NothingToRevoke, "no tokens were held".to_owned()),
    };
    pb::DisconnectResponse { revoked: kind == pb::Revocation::Revoked, revocation: kind as i32, detail, profile }
}

/// What a provider's redirect carried: the consent's state, and a code or an error with its
/// description.
struct Redirect {
    state: String,
    code: Option<String>,
    error: Option<(String, String)>,
}

/// Reads `code`, `state` and `error` from a pasted redirect URL.
fn parse_redirect(url: &str) -> Result<Redirect, Status> {
    let parsed = url::Url::parse(url.trim()).map_err(|_| Status::invalid_argument("redirect_url: not a URL"))?;
    let mut state = None;
    let mut code = None;
    let mut error = None;
    let mut description = String::new();
    for (key, value) in parsed.query_pairs() {
        match key.as_ref() {
            "state" => state = Some(value.into_owned()),
            "code" => code = Some(value.into_owned()),
            "error" => error = Some(value.into_owned()),
            "error_description" => description = value.into_owned(),
            _ => {}
        }
    }
    let state = state.ok_or_else(|| Status::invalid_argument("redirect_url: no state parameter"))?;
    Ok(Redirect { state, code, error: error.map(|e| (e, description)) })
}

// === impl ConnectedAppsService: the admin operations, audited by the trait methods below ===

impl ConnectedAppsService {
    async fn create(&self, request: pb::CreateProfileRequest) -> Result<pb::Profile, Status> {
        let profile = request.profile.ok_or_else(|| Status::invalid_argument("profile: required"))?;
        self.admin.create_profile(&profile).await.map(|v| profile_reply(&v)).map_err(to_status)
    }

    async fn update(&self, request: pb::UpdateProfileRequest) -> Result<pb::Profile, Status> {
        let profile = request.profile.ok_or_else(|| Status::invalid_argument("profile: required"))?;
        self.admin
            .update_profile(&profile, request.update_mask.as_ref())
            .await
            .map(|v| profile_reply(&v))
            .map_err(to_status)
    }

    async fn delete(&self, request: pb::DeleteProfileRequest) -> Result<pb::DeleteProfileResponse, Status> {
        let revocation = self.admin.delete_profile(&request.name).await.map_err(to_status)?;
        Ok(pb::DeleteProfileResponse { disconnect: Some(disconnect_reply(revocation, None)) })
    }

    async fn start_connect(&self, request: pb::ConnectRequest) -> Result<pb::ConnectResponse, Status> {
        let name = request.name;
        let ConnectStart { status, authorization_url, state, expires_at_ms, device } =
            self.admin.connect(&name).await.map_err(to_status)?;
        let profile = self.admin.get_profile(&name).ok().map(|v| profile_reply(&v));
        let mut reply = pb::ConnectResponse {
            status: status as i32,
            authorization_url,
            state,
            expires_at: timestamp(expires_at_ms),
            profile,
            ..Default::default()
        };
        if let Some(device) = device {
            reply.verification_uri = device.verification_uri;
            reply.verification_uri_complete = device.verification_uri_complete;
            reply.user_code = device.user_code;
            reply.interval = Some(prost_types::Duration { seconds: device.interval.as_secs() as i64, nanos: 0 });
        }
        Ok(reply)
    }

    async fn complete(&self, request: pb::CompleteConnectRequest) -> Result<pb::CompleteConnectResponse, Status> {
        let Redirect { state, code, error } = if !request.redirect_url.is_empty() {
            parse_redirect(&request.redirect_url)?
        } else if !request.state.is_empty() && !request.code.is_empty() {
            Redirect { state: request.state, code: Some(request.code), error: None }
        } else {
            return Err(Status::invalid_argument("redirect_url, or code and state: required"));
        };
        let name = self
            .admin
            .complete_consent(&state, code.map(secrecy::SecretString::from), error)
            .await
            .map_err(to_status)?;
        let profile = self.admin.get_profile(&name).map_err(to_status)?;
        Ok(pb::CompleteConnectResponse { profile: Some(profile_reply(&profile)) })
    }

    async fn disconnect_profile(&self, request: pb::DisconnectRequest) -> Result<pb::DisconnectResponse, Status> {
        let name = request.name;
        crate::profile::validate_name(&name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let revocation = self.admin.disconnect(&name).await.map_err(to_status)?;
        let profile = self.admin.get_profile(&name).ok().map(|v| profile_reply(&v));
        Ok(disconnect_reply(revocation, profile))
    }

    async fn refresh(&self, request: pb::RefreshNowRequest) -> Result<pb::RefreshNowResponse, Status> {
        let name = request.name;
        crate::profile::validate_name(&name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.admin.get_profile(&name).map_err(to_status)?;
        if let Err(e) = self.admin.engine().refresh_shared(&name).await {
            return Err(super::status::engine_status(&e));
        }
        let profile = self.admin.get_profile(&name).map_err(to_status)?;
        Ok(pb::RefreshNowResponse { profile: Some(profile_reply(&profile)) })
    }
}

/// Runs an admin operation for an authenticated admin and writes its audit record (refusals
/// included).
pub(super) async fn audited<R, T, Fut>(
    request: Request<R>,
    action: &str,
    profile: impl FnOnce(&R) -> String,
    operation: impl FnOnce(R) -> Fut,
) -> Result<Response<T>, Status>
where
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let caller = caller(&request)?;
    let request = request.into_inner();
    let name = profile(&request);
    let result = match caller.require_admin() {
        Ok(()) => operation(request).await,
        Err(denied) => Err(denied.into()),
    };
    let code = result.as_ref().err().map(|status| format!("{:?}", status.code()));
    crate::access::audit::admin_action(&caller.name, action, &name, code.as_deref().map_or(Ok(()), Err));
    result.map(Response::new)
}

#[tonic::async_trait]
impl ConnectedApps for ConnectedAppsService {
    async fn create_profile(
        &self,
        request: Request<pb::CreateProfileRequest>,
    ) -> Result<Response<pb::Profile>, Status> {
        let name = |r: &pb::CreateProfileRequest| r.profile.as_ref().map(|p| p.name.clone()).unwrap_or_default();
        audited(request, "CreateProfile", name, |r| self.create(r)).await
    }

    async fn update_profile(
        &self,
        request: Request<pb::UpdateProfileRequest>,
    ) -> Result<Response<pb::Profile>, Status> {
        let name = |r: &pb::UpdateProfileRequest| r.profile.as_ref().map(|p| p.name.clone()).unwrap_or_default();
        audited(request, "UpdateProfile", name, |r| self.update(r)).await
    }

    async fn delete_profile(
        &self,
        request: Request<pb::DeleteProfileRequest>,
    ) -> Result<Response<pb::DeleteProfileResponse>, Status> {
        audited(request, "DeleteProfile", |r| r.name.clone(), |r| self.delete(r)).await
    }

    async fn get_profile(&self, request: Request<pb::GetProfileRequest>) -> Result<Response<pb::Profile>, Status> {
        caller(&request)?.require_viewer()?;
        self.admin.get_profile(&request.into_inner().name).map(|v| Response::new(profile_reply(&v))).map_err(to_status)
    }

    async fn list_profiles(
        &self,
        request: Request<pb::ListProfilesRequest>,
    ) -> Result<Response<pb::ListProfilesResponse>, Status> {
        caller(&request)?.require_viewer()?;
        let request = request.into_inner();
        let (profiles, next_page_token) =
            self.admin.list_profiles(request.page_size, &request.page_token).map_err(to_status)?;
        let profiles = profiles.iter().map(profile_reply).collect();
        Ok(Response::new(pb::ListProfilesResponse { profiles, next_page_token }))
    }

    async fn connect(&self, request: Request<pb::ConnectRequest>) -> Result<Response<pb::ConnectResponse>, Status> {
        audited(request, "Connect", |r| r.name.clone(), |r| self.start_connect(r)).await
    }

    async fn complete_connect(
        &self,
        request: Request<pb::CompleteConnectRequest>,
    ) -> Result<Response<pb::CompleteConnectResponse>, Status> {
        // The profile is known only once the state is looked up; the record names the outcome.
        audited(request, "CompleteConnect", |_| String::new(), |r| self.complete(r)).await
    }

    async fn disconnect(
        &self,
        request: Request<pb::DisconnectRequest>,
    ) -> Result<Response<pb::DisconnectResponse>, Status> {
        audited(request, "Disconnect", |r| r.name.clone(), |r| self.disconnect_profile(r)).await
    }

    async fn refresh_now(
        &self,
        request: Request<pb::RefreshNowRequest>,
    ) -> Result<Response<pb::RefreshNowResponse>, Status> {
        audited(request, "RefreshNow", |r| r.name.clone(), |r| self.refresh(r)).await
    }

    type WatchProfilesStream = Replies<pb::ProfileEvent>;

    async fn watch_profiles(
        &self,
        request: Request<pb::WatchProfilesRequest>,
    ) -> Result<Response<Self::WatchProfilesStream>, Status> {
        let watch = caller_watch(&self.callers, &request)?;
        watch.current().load().require_viewer()?;
        let request = request.into_inner();
        let mut names = std::collections::HashSet::new();
        let mut requested = request.names;
        requested.retain(|name| names.insert(name.clone()));
        // Subscribe before reading the initial state, so no change falls in between.
        let changes = Engine::changes(self.admin.engine().subscribe());
        let initial = if request.send_initial {
            initial_events(Arc::clone(&self.admin), requested)
        } else {
            Box::pin(tokio_stream::empty())
        };
        let admin = Arc::clone(&self.admin);
        let events = changes.filter_map(move |change| {
            // A watcher that fell behind cannot know what it missed: it ends, and watches again
            // with `send_initial` for the current picture.
            let change = match change {
                Ok(change) => change,
                Err(missed) => return Some(Err(Status::aborted(format!("{missed}; watch again with send_initial")))),
            };
            if !names.is_empty() && !names.contains(&change.name) {
                return None;
            }
            let profile = admin.get_profile(&change.name).ok().map(|v| profile_reply(&v)).or_else(|| {
                Some(pb::Profile { name: change.name.clone(), status: change.status as i32, ..Default::default() })
            });
            Some(Ok(pb::ProfileEvent {
                kind: change.kind as i32,
                profile,
                previous_status: change.previous_status as i32,
                time: timestamp(admin.engine().clock().now_ms()),
            }))
        });
        let events = Box::pin(initial.chain(events));
        let allowed = Box::new(|caller: &crate::access::Caller| Ok(caller.require_viewer()?));
        Ok(Response::new(bound_to_caller(events, watch, allowed, self.shutdown.clone())))
    }
}

/// The current state of the watched profiles as `INITIAL` events: the named ones that exist (a
/// name without a profile may get one later, and its events then), or every profile in name
/// order, read a page at a time as the watcher takes them, so that a million profiles never sit
/// in memory at once.
fn initial_events(admin: Arc<Admin>, names: Vec<String>) -> Replies<pb::ProfileEvent> {
    fn event(admin: &Admin, view: &ProfileView) -> Result<pb::ProfileEvent, Status> {
        let profile = profile_reply(view);
        Ok(pb::ProfileEvent {
            kind: pb::profile_event::Kind::Initial as i32,
            previous_status: profile.status,
            profile: Some(profile),
            time: timestamp(admin.engine().clock().now_ms()),
        })
    }
    if !names.is_empty() {
        let named = names.into_iter().filter_map(move |name| match admin.get_profile(&name) {
            Ok(view) => Some(event(&admin, &view)),
            Err(AdminError::Engine(EngineError::NotFound(_)) | AdminError::InvalidArgument(_)) => None,
            Err(e) => Some(Err(to_status(e))),
        });
        return Box::pin(tokio_stream::iter(named));
    }
    let pages = futures::stream::unfold(Some(String::new()), move |after| {
        let admin = Arc::clone(&admin);
        async move {
            let (events, next): (Vec<_>, String) = match admin.list_profiles(PAGE, &after?) {
                Ok((views, next)) => (views.iter().map(|view| event(&admin, view)).collect(), next),
                Err(e) => (vec![Err(to_status(e))], String::new()),
            };
            Some((tokio_stream::iter(events), Some(next).filter(|next| !next.is_empty())))
        }
    });
    Box::pin(futures::StreamExt::flatten(pages))
}

/// Profiles read at once for a watcher's initial picture (the largest page `ListProfiles` gives).
const PAGE: i32 = crate::admin::MAX_PAGE_SIZE as i32;
