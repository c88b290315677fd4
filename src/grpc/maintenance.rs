//! `tokend.v1.Maintenance`: store-wide admin chores done by the running daemon (key rotation,
//! online backup), since sled lets only one process open the store.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::auth::caller;
use super::connected_apps::audited;
use super::status::to_status;
use crate::admin::{Admin, KeyUsage};
use crate::api::pb;
use crate::api::pb::maintenance_server::Maintenance;
use crate::store::Store;

/// Backup bytes gathered before a chunk is sent.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks buffered ahead of a slow reader (bounds the memory a backup holds).
const CHUNKS_AHEAD: usize = 4;

/// The service implementation over administration.
#[derive(Debug, Clone)]
pub struct MaintenanceService {
    admin: Arc<Admin>,
}

impl MaintenanceService {
    /// The service.
    pub fn new(admin: Arc<Admin>) -> Self {
        Self { admin }
    }

    async fn rotate(&self, request: pb::RotateKeysRequest) -> Result<pb::RotateKeysResponse, Status> {
        let (active, loaded) = self.admin.key_ids();
        let (resealed, unreadable, usage) = if request.dry_run {
            (0, 0, self.admin.key_usage().await.map_err(to_status)?)
        } else {
            let report = self.admin.reseal_all().await.map_err(to_status)?;
            (report.resealed, report.unreadable, report.usage)
        };
        Ok(pb::RotateKeysResponse {
            active_key_id: format!("{active:08x}"),
            resealed,
            keys: key_table(active, &loaded, &usage),
            unreadable,
        })
    }
}

/// Every key that seals a value or is loaded, active first, then by id.
fn key_table(active: u32, loaded: &[u32], usage: &KeyUsage) -> Vec<pb::KeyUsage> {
    let mut ids: Vec<u32> = usage.keys().chain(loaded).copied().collect();
    ids.sort_unstable_by_key(|id| (*id != active, *id));
    ids.dedup();
    ids.into_iter()
        .map(|id| pb::KeyUsage {
            key_id: format!("{id:08x}"),
            sealed_values: usage.get(&id).copied().unwrap_or(0),
            active: id == active,
            loaded: loaded.contains(&id),
        })
        .collect()
}

/// Reads the whole store on the blocking pool and sends it as chunks of whole lines; stops
/// early when the client goes away.
fn stream_backup(store: Arc<dyn Store>, chunks: tokio::sync::mpsc::Sender<Result<pb::BackupChunk, Status>>) {
    let mut data = Vec::with_capacity(CHUNK_BYTES + 4096);
    let mut entries = 0u64;
    let mut total = 0u64;
    let send = |data: &mut Vec<u8>, entries: &mut u64| {
        let chunk = pb::BackupChunk { data: std::mem::take(data), entries: std::mem::take(entries) };
        chunks.blocking_send(Ok(chunk)).is_ok()
    };
    let result = store.for_each_entry(&mut |tree, key, value| {
        data.extend_from_slice(crate::store::backup::encode_line(tree, key, value).as_bytes());
        entries += 1;
        total += 1;
        data.len() < CHUNK_BYTES || send(&mut data, &mut entries)
    });
    match result {
        Ok(()) if !data.is_empty() => {
            send(&mut data, &mut entries);
        }
        Ok(()) => {}
        Err(e) => {
            tracing::error!(error = %e, "backup failed");
            let _ = chunks.blocking_send(Err(Status::internal(format!("backup failed: {e}"))));
            return;
        }
    }
    tracing::info!(entries = total, "backup streamed");
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn rotate_keys(
        &self,
        request: Request<pb::RotateKeysRequest>,
    ) -> Result<Response<pb::RotateKeysResponse>, Status> {
        audited(request, "RotateKeys", |_| String::new(), |r| self.rotate(r)).await
    }

    type BackupStream = Pin<Box<dyn Stream<Item = Result<pb::BackupChunk, Status>> + Send>>;

    async fn backup(&self, request: Request<pb::BackupRequest>) -> Result<Response<Self::BackupStream>, Status> {
        let caller = caller(&request)?;
        let allowed = caller.require_admin();
        let refused = allowed.is_err().then_some("PermissionDenied");
        crate::access::audit::admin_action(&caller.name, "Backup", "", refused.map_or(Ok(()), Err));
        allowed?;
        let (sender, receiver) = tokio::sync::mpsc::channel(CHUNKS_AHEAD);
        let store = Arc::clone(self.admin.engine().store());
        tokio::task::spawn_blocking(move || stream_backup(store, sender));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}
