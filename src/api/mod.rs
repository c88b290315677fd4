//! The generated gRPC contract (`proto/tokend/v1/tokend.proto`), plus the pieces of it that need
//! hand-written code: redacting `Debug` for messages that carry secrets.

mod redact;

/// Messages, enums, clients and servers of package `tokend.v1`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("tokend.v1");

    /// Encoded `FileDescriptorSet` (with imports) for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tokend_descriptor");
}
