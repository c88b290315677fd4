//! Administration's results as `tokend.v1` messages.

use crate::admin::ProfileView;
use crate::api::pb;

/// The `Profile` message of a profile view: no secret, the connection as published, the warning.
pub fn profile_reply(view: &ProfileView) -> pb::Profile {
    let mut reply = crate::profile::to_api(&view.profile, &view.connection);
    reply.warning = view.warning.clone().unwrap_or_default();
    reply
}
