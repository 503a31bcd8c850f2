//! gRPC services between the coordinator and its workers (`proto/anvil.proto`).
//!
//! The control plane only: registration and rendezvous, heartbeats, metrics, log lines and
//! commands. Gradients travel on the data plane (the ring in `worker`). Also here: what both
//! ends of either plane share without linking each other, the run token's check ([`auth`]) and
//! the wording of transport errors ([`error_chain`]).

pub mod auth;

/// Generated messages, client and server for package `anvil.v1`.
pub mod v1 {
    tonic::include_proto!("anvil.v1");
}

pub use auth::TOKEN_METADATA_KEY;

/// An error with its causes, for errors whose top-level message is vague (tonic's transport
/// errors say only "transport error"); a cause already contained in the message is not repeated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !msg.contains(&part) {
            msg.push_str(": ");
            msg.push_str(&part);
        }
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn names_every_cause_once() {
        let e = Layer(
            "transport error",
            Some(Box::new(Layer(
                "tls handshake: invalid certificate",
                Some(Box::new(Layer("invalid certificate", None))),
            ))),
        );
        assert_eq!(
            error_chain(&e),
            "transport error: tls handshake: invalid certificate"
        );
    }
}
