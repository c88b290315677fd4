//! Profiles declared in the configuration file (GitOps, a Kubernetes ConfigMap with secrets from
//! mounted files): reconciled into the store at start and on SIGHUP. Declared profiles are marked
//! managed, so RPC edits of them are refused with a message saying where they are managed.
//! Nothing is deleted unless `prune_profiles` asks for it.

use std::sync::Arc;

use crate::admin::{Admin, AdminError};
use crate::api::pb;
use crate::config::{Config, DeclaredProfile};

/// What a reconcile did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Profiles created.
    pub created: Vec<String>,
    /// Profiles updated.
    pub updated: Vec<String>,
    /// Managed profiles deleted because they are no longer declared.
    pub pruned: Vec<String>,
}

/// Builds the API input of a declared profile, reading its secret file.
fn to_input(declared: &DeclaredProfile, index: usize) -> Result<pb::Profile, AdminError> {
    let client_secret = if declared.client_secret_file.as_os_str().is_empty() {
        String::new()
    } else {
        std::fs::read_to_string(&declared.client_secret_file)
            .map_err(|e| {
                AdminError::precondition(format!(
                    "profiles[{index}].client_secret_file {}: {e}",
                    declared.client_secret_file.display()
                ))
            })?
            .trim()
            .to_owned()
    };
    // Unset grant: authorization code, as documented for declared profiles; unset method: the
    // preset's (the API's "unspecified").
    let grant = pb::Grant::from(declared.grant.unwrap_or_default());
    let auth_method = declared.token_endpoint_auth_method.map_or(pb::TokenEndpointAuthMethod::Unspecified, Into::into);
    Ok(pb::Profile {
        name: declared.name.clone(),
        description: declared.description.clone(),
        provider: declared.provider.clone(),
        grant: grant as i32,
        client_id: declared.client_id.clone(),
        client_secret,
        scopes: declared.scopes.clone(),
        authorization_endpoint: declared.authorization_endpoint.clone(),
        token_endpoint: declared.token_endpoint.clone(),
        revocation_endpoint: declared.revocation_endpoint.clone(),
        device_authorization_endpoint: declared.device_authorization_endpoint.clone(),
        redirect_uri: declared.redirect_uri.clone(),
        token_endpoint_auth_method: auth_method as i32,
        extra_authorization_params: declared.extra_authorization_params.clone().into_iter().collect(),
        provider_options: declared.provider_options.clone().into_iter().collect(),
        issuer: declared.issuer.clone(),
        ..Default::default()
    })
}

/// Brings the store in line with the declared profiles. Every declared profile is built (its
/// secret file read) and validated before anything is written, so a bad entry anywhere in the
/// list changes nothing.
pub async fn reconcile(admin: &Arc<Admin>, config: &Config) -> Result<Reconciled, AdminError> {
    let inputs = config.profiles.iter().enumerate().map(|(i, d)| to_input(d, i)).collect::<Result<Vec<_>, _>>()?;
    let mut seen = std::collections::HashSet::new();
    if let Some(twice) = inputs.iter().find(|p| !seen.insert(p.name.as_str())) {
        return Err(AdminError::precondition(format!("profile {:?} is declared twice", twice.name)));
    }
    let mut plans = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        let plan = admin.plan_managed(input).await;
        plans.push(plan.map_err(|e| AdminError::precondition(format!("profiles[{i}] ({}): {e}", input.name)))?);
    }
    let mut report = Reconciled::default();
    for (input, plan) in inputs.iter().zip(plans) {
        match admin.apply_managed(plan).await? {
            true => report.created.push(input.name.clone()),
            false => report.updated.push(input.name.clone()),
        }
    }
    if config.prune_profiles {
        for name in admin.managed_profiles()? {
            if !inputs.iter().any(|p| p.name == name) {
                admin.delete_managed(&name).await?;
                report.pruned.push(name);
            }
        }
    }
    if inputs.is_empty() && report.pruned.is_empty() {
        return Ok(report);
    }
    tracing::info!(created = ?report.created, updated = report.updated.len(), pruned = ?report.pruned, "declared profiles reconciled");
    Ok(report)
}
