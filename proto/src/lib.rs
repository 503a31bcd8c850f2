//! gRPC services between the coordinator and its workers.
