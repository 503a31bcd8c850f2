//! gRPC services between the coordinator and its workers (`proto/anvil.proto`).
//!
//! The control plane only: registration and rendezvous, heartbeats, metrics, log lines and
//! commands. Gradients travel on the data plane (the ring in `worker`, or NCCL on GPU).

/// Generated messages, client and server for package `anvil.v1`.
pub mod v1 {
    tonic::include_proto!("anvil.v1");
}

/// gRPC metadata key carrying the run token on every call.
pub const TOKEN_METADATA_KEY: &str = "x-anvil-run-token";
