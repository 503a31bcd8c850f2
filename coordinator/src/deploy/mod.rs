//! `coordinator deploy`: render what a cluster scheduler needs to run anvil.
//!
//! - [`k8s`]: Kubernetes manifests (ConfigMap, Secret, PersistentVolumeClaim, Service, the
//!   coordinator's Job and the workers' indexed Job).

pub mod k8s;

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum DeployCommand {
    /// Render the Kubernetes manifests of a distributed run: a ConfigMap with the config, a
    /// Secret with a fresh run token, a ReadWriteMany PersistentVolumeClaim for runs and data,
    /// the coordinator as a Job behind a Service, and the workers as an indexed Job. A restarted
    /// coordinator resumes its run from the last complete checkpoint
    K8s(Box<k8s::K8sArgs>),
}

pub fn run(cmd: DeployCommand) -> ExitCode {
    match cmd {
        DeployCommand::K8s(args) => k8s::run(&args),
    }
}
