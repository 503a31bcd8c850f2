//! `coordinator deploy k8s`: the Kubernetes manifests of a distributed run, rendered from
//! checked flags and a validated config as values (serde_json), emitted as YAML.
//!
//! What runs where:
//!
//! - **ConfigMap** `NAME-config`: the config file, byte for byte, mounted read-only into the
//!   coordinator pod.
//! - **Secret** `NAME-token`: a fresh random run token, mounted into the coordinator and every
//!   worker (`--token-file`): workers prove they belong to the run with it.
//! - **PersistentVolumeClaim** `NAME-data` (ReadWriteMany; or `--pvc` names an existing one),
//!   mounted at [`MOUNT`] in every pod, which is also every container's working directory: the
//!   config's relative data paths resolve under it, and the run directory is `runs/NAME` on it,
//!   so checkpoints outlive pods.
//! - **Job** `NAME-coordinator` (`restartPolicy: OnFailure`): `coordinator launch --external
//!   --run-dir runs/NAME --resume-existing`, so a restarted coordinator continues its run from
//!   the last complete checkpoint. Its init container `stage-data` runs `coordinator data
//!   wait`: it copies data bundled with the image and waits for the rest (`kubectl cp`).
//! - **Service** `NAME-coordinator` (ClusterIP): the address workers dial; it routes only to a
//!   coordinator that listens (readiness probe), so a worker sees "connection refused" and
//!   retries while the coordinator restarts.
//! - **Job** `NAME-workers` (`completionMode: Indexed`, completions = parallelism = `--nodes`):
//!   worker `i` asks for rank `i` (`JOB_COMPLETION_INDEX`); an init container waits until the
//!   coordinator accepts connections.
//!
//! Both binaries run with `--preempted-exit-code 75`: a run stopped at a checkpoint before its
//! end (an evicted pod gets SIGTERM; the workers vote to checkpoint and stop) exits non-zero, so
//! the Jobs restart the pods and the run continues. Exit 0 means the run finished.

use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use configs::scmodelforge::DataSource;
use configs::{AnyConfig, ScModelForgeConfig};
use serde_json::{json, Value};
use yaml_rust2::{Yaml, YamlEmitter, YamlLoader};

/// Where the volume is mounted in every pod, and every container's working directory.
pub const MOUNT: &str = "/anvil";
/// Where the ConfigMap is mounted in the coordinator pod, and the file name in it.
pub const CONFIG_DIR: &str = "/etc/anvil/config";
pub const CONFIG_KEY: &str = "config.yaml";
/// Where the Secret is mounted, and its key.
pub const TOKEN_DIR: &str = "/etc/anvil/token";
pub const TOKEN_KEY: &str = "token";
/// Where the image keeps the example configs and data (see the Dockerfile).
pub const SEED_DIR: &str = "/opt/anvil";
/// The coordinator's gRPC port.
pub const PORT: u16 = 50051;
/// The image's user and group (the Dockerfile's `anvil` user).
pub const UID: u32 = 10001;
/// Exit code of a run stopped at a checkpoint before its end (EX_TEMPFAIL): the Jobs restart it.
pub const PREEMPTED_EXIT_CODE: u8 = 75;
/// Seconds a pod has to checkpoint after SIGTERM.
const GRACE_SECONDS: u32 = 300;
/// Seconds the coordinator waits for every worker to register (image pulls, scheduling and
/// restart back-off take longer than on one machine).
const REGISTER_TIMEOUT_SECONDS: u32 = 900;
/// Longest `--name`: the longest derived name, NAME-coordinator, stays a valid DNS label.
const MAX_NAME: usize = 40;

#[derive(Args, Debug)]
pub struct K8sArgs {
    /// Number of worker pods, one worker each: the run's world size
    #[arg(long, value_name = "N")]
    pub nodes: usize,

    /// Container image with the `coordinator` and `worker` binaries, built from the repository's
    /// Dockerfile and pushed where the cluster can pull it
    #[arg(long, value_name = "IMAGE")]
    pub image: String,

    /// scModelForge YAML config to train; it goes into a ConfigMap unchanged. Relative data
    /// paths resolve under the volume (data/x.h5ad is /anvil/data/x.h5ad in the pods)
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: PathBuf,

    /// Override one config field, checked now and passed on to `coordinator launch --set`
    /// (repeatable)
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    pub overrides: Vec<String>,

    /// GPUs per worker pod (an nvidia.com/gpu limit). The image is a CPU build and the GPU path
    /// has not run on a device yet, so only 0 is accepted
    #[arg(long, default_value_t = 0, value_name = "G")]
    pub gpus_per_node: u32,

    /// Name every object derives from (NAME-coordinator, NAME-workers, NAME-token, ...); the run
    /// directory is runs/NAME on the volume
    #[arg(long, default_value = "anvil", value_name = "NAME")]
    pub name: String,

    /// Namespace of every object [default: the namespace kubectl applies to]
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,

    /// Use this existing PersistentVolumeClaim (ReadWriteMany) for runs and data instead of
    /// creating NAME-data
    #[arg(long, value_name = "CLAIM", conflicts_with_all = ["storage", "storage_class"])]
    pub pvc: Option<String>,

    /// Size of the PersistentVolumeClaim created for runs and data [default: 50Gi]
    #[arg(long, value_name = "SIZE")]
    pub storage: Option<String>,

    /// StorageClass of the created claim; it must offer ReadWriteMany [default: the cluster's
    /// default class]
    #[arg(long, value_name = "CLASS")]
    pub storage_class: Option<String>,

    /// CPUs per worker pod (request and limit; also the worker's compute threads)
    #[arg(long, default_value = "2", value_name = "CPUS")]
    pub cpu: String,

    /// Memory per worker pod (request and limit)
    #[arg(long, default_value = "8Gi", value_name = "SIZE")]
    pub memory: String,

    /// How often the coordinator may be restarted (crash, eviction, preemption) before the run
    /// is given up: the coordinator Job's backoffLimit (the workers' Job allows proportionally
    /// more, since every coordinator restart restarts each worker)
    #[arg(long, default_value_t = 6, value_name = "N")]
    pub backoff_limit: u32,

    /// Export traces and metrics to this OpenTelemetry collector (OTLP/gRPC, e.g.
    /// http://otel-collector.monitoring:4317): sets OTEL_EXPORTER_OTLP_ENDPOINT in the
    /// coordinator and every worker
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// Write the manifests to FILE ("-": standard output)
    #[arg(long, short = 'o', default_value = "-", value_name = "FILE")]
    pub output: PathBuf,
}

pub fn run(args: &K8sArgs) -> ExitCode {
    let result = Plan::from_args(args).and_then(|plan| {
        let text = plan.to_yaml()?;
        if args.output == Path::new("-") {
            print!("{text}");
        } else {
            std::fs::write(&args.output, text)
                .with_context(|| format!("--output: cannot write {}", args.output.display()))?;
            eprint!("{}", plan.next_steps(&args.output));
        }
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where runs and data live.
#[derive(Debug, Clone, PartialEq)]
pub enum Volume {
    /// A claim the user made.
    Existing(String),
    /// A claim these manifests create.
    Create { size: String, class: Option<String> },
}

/// Everything the manifests are made of, checked.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    pub namespace: Option<String>,
    pub nodes: usize,
    pub image: String,
    /// The config file's text, for the ConfigMap.
    pub config_text: String,
    pub overrides: Vec<String>,
    /// The config's data files, relative to the volume.
    pub data_paths: Vec<String>,
    pub gpus_per_node: u32,
    pub volume: Volume,
    pub cpu: String,
    pub memory: String,
    /// Compute threads per worker (from `cpu`).
    pub threads: usize,
    pub backoff_limit: u32,
    /// OTEL_EXPORTER_OTLP_ENDPOINT for every anvil container, when given.
    pub otlp_endpoint: Option<String>,
    pub token: String,
    /// The command that rendered these manifests, for their header.
    pub command_line: String,
}

/// The names of the objects, all derived from `--name`.
#[derive(Debug, Clone, PartialEq)]
pub struct Names {
    pub config: String,
    pub token: String,
    pub claim: String,
    pub service: String,
    pub coordinator: String,
    pub workers: String,
}

impl Plan {
    /// Checks every flag and the config; the first problem is the error, naming its flag or
    /// file.
    pub fn from_args(a: &K8sArgs) -> anyhow::Result<Plan> {
        if a.nodes == 0 {
            bail!("--nodes must be at least 1 (one worker pod per node)");
        }
        if a.gpus_per_node > 0 {
            bail!(
                "--gpus-per-node {}: the image the Dockerfile builds is a CPU build (no \
                 `--features cuda`), and anvil's GPU path has not yet run on a device, so a \
                 worker would not use the GPUs it reserved; leave --gpus-per-node at 0 and \
                 size --cpu instead",
                a.gpus_per_node
            );
        }
        check_dns_label("--name", &a.name, MAX_NAME)?;
        if !a.name.starts_with(|c: char| c.is_ascii_lowercase()) {
            bail!("--name {:?}: must start with a lowercase letter", a.name);
        }
        if let Some(ns) = &a.namespace {
            check_dns_label("--namespace", ns, 63)?;
        }
        if a.image.is_empty() || a.image.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bail!(
                "--image {:?}: expected an image reference such as registry.example.com/anvil:0.1",
                a.image
            );
        }
        let volume = match &a.pvc {
            Some(claim) => {
                check_dns_subdomain("--pvc", claim)?;
                Volume::Existing(claim.clone())
            }
            None => {
                let size = a.storage.clone().unwrap_or_else(|| "50Gi".into());
                check_quantity("--storage", &size)?;
                if let Some(class) = &a.storage_class {
                    check_dns_subdomain("--storage-class", class)?;
                }
                Volume::Create {
                    size,
                    class: a.storage_class.clone(),
                }
            }
        };
        let threads = cpu_threads(&a.cpu)?;
        check_quantity("--memory", &a.memory)?;
        if let Some(url) = &a.otlp_endpoint {
            let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
            if !scheme_ok || url.len() <= "https://".len() || url.contains(char::is_whitespace) {
                bail!(
                    "--otlp-endpoint {url:?}: expected the collector's OTLP/gRPC URL, such as \
                     http://otel-collector.monitoring:4317"
                );
            }
        }
        let (config_text, cfg) = load_config(&a.config, &a.overrides)?;
        let data_paths =
            data_on_volume(&cfg).map_err(|e| anyhow!("--config {}: {e}", a.config.display()))?;
        Ok(Plan {
            name: a.name.clone(),
            namespace: a.namespace.clone(),
            nodes: a.nodes,
            image: a.image.clone(),
            config_text,
            overrides: a.overrides.clone(),
            data_paths,
            gpus_per_node: a.gpus_per_node,
            volume,
            cpu: a.cpu.clone(),
            memory: a.memory.clone(),
            threads,
            backoff_limit: a.backoff_limit,
            otlp_endpoint: a.otlp_endpoint.clone(),
            token: run::dir::random_token()?,
            command_line: command_line(a),
        })
    }

    pub fn names(&self) -> Names {
        let n = &self.name;
        Names {
            config: format!("{n}-config"),
            token: format!("{n}-token"),
            claim: match &self.volume {
                Volume::Existing(claim) => claim.clone(),
                Volume::Create { .. } => format!("{n}-data"),
            },
            service: format!("{n}-coordinator"),
            coordinator: format!("{n}-coordinator"),
            workers: format!("{n}-workers"),
        }
    }

    /// The run directory, relative to the volume (and so to every container's working
    /// directory).
    pub fn run_dir(&self) -> String {
        format!("runs/{}", self.name)
    }

    /// HOST:PORT of the coordinator's Service, as the workers' environment spells it
    /// (`$(POD_NAMESPACE)` is the pod's own namespace, filled in by Kubernetes).
    pub fn coordinator_address(&self) -> String {
        let ns = self.namespace.as_deref().unwrap_or("$(POD_NAMESPACE)");
        format!("{}.{ns}.svc:{PORT}", self.names().service)
    }

    /// The workers' Job's backoffLimit: each restart of the coordinator, and each group restart
    /// after a lost worker (`coordinator launch --max-restarts`, 3), restarts every worker, at
    /// most twice (losing the session, then a connection attempt that runs out of patience).
    pub fn worker_backoff_limit(&self) -> usize {
        2 * self.nodes * (self.backoff_limit as usize + 4)
    }

    /// The manifests, in the order `kubectl apply` should create them.
    pub fn documents(&self) -> Vec<Value> {
        let mut docs = vec![self.config_map(), self.secret()];
        if let Volume::Create { .. } = self.volume {
            docs.push(self.claim());
        }
        docs.extend([self.service(), self.coordinator_job(), self.worker_job()]);
        docs
    }

    /// The manifests as one multi-document YAML file, with a header saying how it was made.
    pub fn to_yaml(&self) -> anyhow::Result<String> {
        let names = self.names();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# anvil on Kubernetes: {} worker(s) and a coordinator. Rendered by\n#   {}\n\
             # Secret {} holds a run token generated for this file: render again rather than\n\
             # reuse a published copy. Apply with `kubectl apply -f FILE`; see deploy/README.md.",
            self.nodes, self.command_line, names.token
        );
        for doc in self.documents() {
            out.push_str(&emit_yaml(&doc)?);
        }
        Ok(out)
    }

    /// What to do with the rendered file.
    pub fn next_steps(&self, file: &Path) -> String {
        let names = self.names();
        let ns = self
            .namespace
            .as_ref()
            .map(|n| format!(" -n {n}"))
            .unwrap_or_default();
        let mut s = format!(
            "wrote {}: ConfigMap {}, Secret {}, {}Service and Job {}, indexed Job {} ({} worker(s))\n\
             next:\n  kubectl apply{ns} -f {}\n",
            file.display(),
            names.config,
            names.token,
            match self.volume {
                Volume::Create { .. } => format!("PersistentVolumeClaim {}, ", names.claim),
                Volume::Existing(_) => String::new(),
            },
            names.coordinator,
            names.workers,
            self.nodes,
            file.display(),
        );
        if !self.data_paths.is_empty() {
            let _ = writeln!(
                s,
                "  # the coordinator pod waits (init container stage-data) until the data is on the\n  \
                 # volume; files bundled with the image are copied by it, copy the others:\n  \
                 POD=$(kubectl get pod{ns} -l app.kubernetes.io/instance={},app.kubernetes.io/component=coordinator \\\n      \
                 --field-selector=status.phase=Pending -o name)",
                self.name
            );
            for p in &self.data_paths {
                let _ = writeln!(
                    s,
                    "  kubectl cp{ns} -c stage-data {p} \"${{POD#pod/}}:{MOUNT}/{p}\""
                );
            }
        }
        let _ = writeln!(s, "  kubectl logs{ns} -f job/{}", names.coordinator);
        s
    }

    fn metadata(&self, name: &str, component: &str) -> Value {
        let mut m = json!({ "name": name, "labels": self.labels(component) });
        if let Some(ns) = &self.namespace {
            m["namespace"] = json!(ns);
        }
        m
    }

    fn labels(&self, component: &str) -> Value {
        json!({
            "app.kubernetes.io/name": "anvil",
            "app.kubernetes.io/instance": self.name,
            "app.kubernetes.io/component": component,
        })
    }

    fn selector(&self, component: &str) -> Value {
        json!({
            "app.kubernetes.io/instance": self.name,
            "app.kubernetes.io/component": component,
        })
    }

    fn config_map(&self) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": self.metadata(&self.names().config, "config"),
            "data": { CONFIG_KEY: self.config_text },
        })
    }

    fn secret(&self) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": self.metadata(&self.names().token, "token"),
            "type": "Opaque",
            "stringData": { TOKEN_KEY: self.token },
        })
    }

    fn claim(&self) -> Value {
        let Volume::Create { size, class } = &self.volume else {
            return Value::Null;
        };
        let mut spec = json!({
            "accessModes": ["ReadWriteMany"],
            "resources": { "requests": { "storage": size } },
        });
        if let Some(class) = class {
            spec["storageClassName"] = json!(class);
        }
        json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": self.metadata(&self.names().claim, "storage"),
            "spec": spec,
        })
    }

    fn service(&self) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": self.metadata(&self.names().service, "coordinator"),
            "spec": {
                "type": "ClusterIP",
                "selector": self.selector("coordinator"),
                "ports": [{ "name": "grpc", "port": PORT, "targetPort": "grpc", "protocol": "TCP" }],
            },
        })
    }

    fn coordinator_job(&self) -> Value {
        let names = self.names();
        let config_file = format!("{CONFIG_DIR}/{CONFIG_KEY}");
        let token_file = format!("{TOKEN_DIR}/{TOKEN_KEY}");
        let mut wait = vec!["coordinator", "data", "wait", "--config", &config_file];
        let mut launch = vec![
            "coordinator".to_string(),
            "launch".into(),
            "--external".into(),
            "--nodes".into(),
            self.nodes.to_string(),
            "--workers-per-node".into(),
            "1".into(),
            "--listen".into(),
            format!("0.0.0.0:{PORT}"),
            "--config".into(),
            config_file.clone(),
        ];
        for o in &self.overrides {
            wait.extend(["--set", o.as_str()]);
            launch.extend(["--set".into(), o.clone()]);
        }
        wait.extend(["--seed", SEED_DIR]);
        launch.extend([
            "--run-dir".into(),
            self.run_dir(),
            "--resume-existing".into(),
            "--token-file".into(),
            token_file,
            "--preempted-exit-code".into(),
            PREEMPTED_EXIT_CODE.to_string(),
            "--register-timeout".into(),
            REGISTER_TIMEOUT_SECONDS.to_string(),
        ]);
        let small = json!({
            "requests": { "cpu": "500m", "memory": "1Gi" },
            "limits": { "memory": "2Gi" },
        });
        let mut job = json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": self.metadata(&names.coordinator, "coordinator"),
            "spec": {
                "backoffLimit": self.backoff_limit,
                "template": {
                    "metadata": { "labels": self.labels("coordinator") },
                    "spec": {
                        "restartPolicy": "OnFailure",
                        "terminationGracePeriodSeconds": GRACE_SECONDS,
                        // No SERVICE_HOST/PORT variables for every Service of the namespace
                        // (a Service NAME-coordinator would add ANVIL_COORDINATOR_PORT=tcp://...).
                        "enableServiceLinks": false,
                        "securityContext": pod_security(),
                        "initContainers": [{
                            "name": "stage-data",
                            "image": self.image,
                            "command": wait,
                            "workingDir": MOUNT,
                            "resources": small,
                            "securityContext": container_security(),
                            "volumeMounts": [self.data_mount(), config_mount()],
                        }],
                        "containers": [{
                            "name": "coordinator",
                            "image": self.image,
                            "command": launch,
                            "workingDir": MOUNT,
                            "ports": [{ "name": "grpc", "containerPort": PORT, "protocol": "TCP" }],
                            "readinessProbe": {
                                "tcpSocket": { "port": "grpc" },
                                "periodSeconds": 5,
                            },
                            "resources": small,
                            "securityContext": container_security(),
                            "volumeMounts": [self.data_mount(), config_mount(), token_mount()],
                        }],
                        "volumes": [self.data_volume(), self.config_volume(), self.token_volume()],
                    },
                },
            },
        });
        let env = self.telemetry_env();
        if !env.is_empty() {
            job["spec"]["template"]["spec"]["containers"][0]["env"] = json!(env);
        }
        job
    }

    /// OTEL_EXPORTER_OTLP_ENDPOINT for the anvil containers, when `--otlp-endpoint` gave one.
    fn telemetry_env(&self) -> Vec<Value> {
        self.otlp_endpoint
            .iter()
            .map(|url| json!({ "name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": url }))
            .collect()
    }

    fn worker_job(&self) -> Value {
        let names = self.names();
        let mut env = Vec::new();
        if self.namespace.is_none() {
            env.push(json!({
                "name": "POD_NAMESPACE",
                "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } },
            }));
        }
        env.push(json!({ "name": "ANVIL_COORDINATOR", "value": self.coordinator_address() }));
        let mut worker_env = env.clone();
        worker_env.extend(self.telemetry_env());
        worker_env.extend([
            // The Job controller sets JOB_COMPLETION_INDEX too; declaring it here, from the
            // same annotation, makes `$(JOB_COMPLETION_INDEX)` in args certain to expand.
            json!({
                "name": "JOB_COMPLETION_INDEX",
                "valueFrom": { "fieldRef": {
                    "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']",
                } },
            }),
            json!({ "name": "RAYON_NUM_THREADS", "value": self.threads.to_string() }),
        ]);
        let mut limits = json!({ "cpu": self.cpu, "memory": self.memory });
        if self.gpus_per_node > 0 {
            limits["nvidia.com/gpu"] = json!(self.gpus_per_node);
        }
        json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": self.metadata(&names.workers, "worker"),
            "spec": {
                "completionMode": "Indexed",
                "completions": self.nodes,
                "parallelism": self.nodes,
                "backoffLimit": self.worker_backoff_limit(),
                "template": {
                    "metadata": { "labels": self.labels("worker") },
                    "spec": {
                        "restartPolicy": "OnFailure",
                        "terminationGracePeriodSeconds": GRACE_SECONDS,
                        // No SERVICE_HOST/PORT variables for every Service of the namespace
                        // (a Service NAME-coordinator would add ANVIL_COORDINATOR_PORT=tcp://...).
                        "enableServiceLinks": false,
                        "securityContext": pod_security(),
                        "affinity": { "podAntiAffinity": {
                            "preferredDuringSchedulingIgnoredDuringExecution": [{
                                "weight": 100,
                                "podAffinityTerm": {
                                    "topologyKey": "kubernetes.io/hostname",
                                    "labelSelector": { "matchLabels": self.selector("worker") },
                                },
                            }],
                        } },
                        "initContainers": [{
                            "name": "wait-for-coordinator",
                            "image": self.image,
                            "command": ["bash", "-c", WAIT_FOR_COORDINATOR],
                            "env": env,
                            "resources": {
                                "requests": { "cpu": "50m", "memory": "32Mi" },
                                "limits": { "memory": "64Mi" },
                            },
                            "securityContext": container_security(),
                        }],
                        "containers": [{
                            "name": "worker",
                            "image": self.image,
                            "command": ["worker"],
                            "args": [
                                "--coordinator", "$(ANVIL_COORDINATOR)",
                                "--rank", "$(JOB_COMPLETION_INDEX)",
                                "--token-file", format!("{TOKEN_DIR}/{TOKEN_KEY}"),
                                "--preempted-exit-code", PREEMPTED_EXIT_CODE.to_string(),
                            ],
                            "env": worker_env,
                            "workingDir": MOUNT,
                            "resources": {
                                "requests": { "cpu": self.cpu, "memory": self.memory },
                                "limits": limits,
                            },
                            "securityContext": container_security(),
                            "volumeMounts": [self.data_mount(), token_mount()],
                        }],
                        "volumes": [self.data_volume(), self.token_volume()],
                    },
                },
            },
        })
    }

    fn data_mount(&self) -> Value {
        json!({ "name": "data", "mountPath": MOUNT })
    }

    fn data_volume(&self) -> Value {
        json!({ "name": "data", "persistentVolumeClaim": { "claimName": self.names().claim } })
    }

    fn config_volume(&self) -> Value {
        json!({ "name": "config", "configMap": { "name": self.names().config } })
    }

    fn token_volume(&self) -> Value {
        // Readable by the pod's group (fsGroup), not by everyone.
        json!({ "name": "token", "secret": { "secretName": self.names().token, "defaultMode": 0o440 } })
    }
}

/// The workers' init container: wait until the coordinator's Service accepts connections (it
/// has an endpoint only once the coordinator listens), so workers do not crash-loop while the
/// coordinator waits for data. Bash's /dev/tcp needs no extra tool in the image.
const WAIT_FOR_COORDINATOR: &str = r#"host="${ANVIL_COORDINATOR%:*}"; port="${ANVIL_COORDINATOR##*:}"; n=0
until timeout 5 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null; do
  [ $((n % 12)) -eq 0 ] && echo "waiting for the coordinator at $ANVIL_COORDINATOR"
  n=$((n + 1)); sleep 5
done
echo "the coordinator at $ANVIL_COORDINATOR accepts connections""#;

fn config_mount() -> Value {
    json!({ "name": "config", "mountPath": CONFIG_DIR, "readOnly": true })
}

fn token_mount() -> Value {
    json!({ "name": "token", "mountPath": TOKEN_DIR, "readOnly": true })
}

/// The image's non-root user; fsGroup makes the volume and the token readable to it.
fn pod_security() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": UID,
        "runAsGroup": UID,
        "fsGroup": UID,
        "seccompProfile": { "type": "RuntimeDefault" },
    })
}

/// What the Pod Security Standards' "restricted" profile asks of each container.
fn container_security() -> Value {
    json!({ "allowPrivilegeEscalation": false, "capabilities": { "drop": ["ALL"] } })
}

/// Reads and validates the config as `coordinator launch` will: the text for the ConfigMap,
/// and the parsed config (scModelForge or sleap-nn).
fn load_config(path: &Path, overrides: &[String]) -> anyhow::Result<(String, AnyConfig)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow!("--config {}: cannot read it: {e}", path.display()))?;
    let cfg = match configs::load_file(path, overrides) {
        Ok(AnyConfig::ScModelForge(c)) => c,
        Ok(AnyConfig::SleapNn(c)) => {
            use configs::sleap::Accelerator;
            let acc = c.trainer_config.trainer_accelerator;
            if matches!(acc, Accelerator::Gpu | Accelerator::Cuda) {
                bail!(
                    "--config {}: trainer_config.trainer_accelerator = {}: the image the \
                     Dockerfile builds is a CPU build (no `--features cuda`); use \"cpu\" or \
                     \"auto\"",
                    path.display(),
                    acc.as_str()
                );
            }
            return Ok((text, AnyConfig::SleapNn(c)));
        }
        Err(errors) => {
            let n = errors.0.len();
            bail!(
                "--config {}: {n} problem{} found:\n{errors}",
                path.display(),
                if n == 1 { "" } else { "s" }
            )
        }
    };
    if let Some(why) = run::support::unsupported(&cfg) {
        bail!("--config {}: {why}", path.display());
    }
    Ok((text, AnyConfig::ScModelForge(cfg)))
}

/// The config's data files relative to the volume; a path the volume cannot hold is an error.
fn data_on_volume(cfg: &AnyConfig) -> anyhow::Result<Vec<String>> {
    match cfg {
        AnyConfig::ScModelForge(c) => cells_on_volume(c),
        AnyConfig::SleapNn(c) => labels_on_volume(c),
    }
}

/// A pose run's labels files (training and validation) relative to the volume. The videos
/// they refer to must be on it too, where the labels say (relative paths beside the labels
/// file); `coordinator data wait` holds the run until they open.
fn labels_on_volume(cfg: &configs::SleapNnConfig) -> anyhow::Result<Vec<String>> {
    let d = &cfg.data_config;
    if d.train_labels_path.as_ref().is_none_or(|p| p.is_empty()) {
        bail!("data_config.train_labels_path is null: name the labels file(s) on the volume, e.g. --set data_config.train_labels_path=[data/labels.pkg.slp]");
    }
    d.labels_files()
        .into_iter()
        .map(|(field, p)| relative_to_volume(field, p))
        .collect()
}

fn cells_on_volume(cfg: &ScModelForgeConfig) -> anyhow::Result<Vec<String>> {
    if cfg.data.source != DataSource::Local {
        bail!(
            "data.source {}: anvil reads local files only; download the cells to .h5ad, copy \
             them onto the volume and use data.source: local",
            cfg.data.source
        );
    }
    if cfg.data.paths.is_empty() {
        bail!("data.paths: the config names no data files");
    }
    let mut on_volume = Vec::new();
    for p in &cfg.data.paths {
        on_volume.push(relative_to_volume("data.paths", p)?);
    }
    relative_to_volume("training.checkpoint_dir", &cfg.training.checkpoint_dir)?;
    if let Some(ft) = &cfg.finetune {
        let Some(ck) = ft.checkpoint() else {
            bail!("finetune.checkpoint_path is empty: a fine-tuning run needs the pretrained checkpoint, on the volume");
        };
        relative_to_volume("finetune.checkpoint_path", ck)?;
    }
    Ok(on_volume)
}

/// `p` relative to the volume: relative paths are (every container works in [`MOUNT`]);
/// absolute ones must lie under it.
fn relative_to_volume(field: &str, p: &str) -> anyhow::Result<String> {
    let path = Path::new(p);
    let inside = if path.is_absolute() {
        path.strip_prefix(MOUNT).map_err(|_| {
            anyhow!(
                "{field}: {p} is outside the volume, which the pods mount at {MOUNT}; use a path \
                 relative to it (data/x.h5ad is {MOUNT}/data/x.h5ad)"
            )
        })?
    } else {
        path
    };
    if inside.components().any(|c| c == Component::ParentDir) {
        bail!("{field}: {p} leaves the volume mounted at {MOUNT} ('..'); name a path inside it");
    }
    Ok(inside.display().to_string())
}

/// A DNS-1123 label (lowercase letters, digits, '-'; alphanumeric at both ends).
fn check_dns_label(flag: &str, s: &str, max: usize) -> anyhow::Result<()> {
    let ok = !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if !ok {
        bail!(
            "{flag} {s:?}: must be at most {max} lowercase letters, digits and '-', starting and \
             ending with a letter or digit"
        );
    }
    Ok(())
}

/// A DNS-1123 subdomain (dot-separated labels, 253 characters at most).
fn check_dns_subdomain(flag: &str, s: &str) -> anyhow::Result<()> {
    if s.len() > 253 || s.split('.').any(|l| check_dns_label(flag, l, 63).is_err()) {
        bail!(
            "{flag} {s:?}: must be a Kubernetes object name (lowercase letters, digits, '-' and \
             '.', starting and ending with a letter or digit)"
        );
    }
    Ok(())
}

/// A positive Kubernetes quantity: a decimal number and an optional unit (Ki, Mi, Gi, Ti, Pi,
/// Ei, k, M, G, T, P, E, m).
fn check_quantity(flag: &str, s: &str) -> anyhow::Result<f64> {
    const UNITS: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
        ("m", 1e-3),
    ];
    let (number, scale) = UNITS
        .iter()
        .find_map(|(u, f)| s.strip_suffix(u).map(|n| (n, *f)))
        .unwrap_or((s, 1.0));
    let plain = !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && number.bytes().filter(|b| *b == b'.').count() <= 1
        && !number.starts_with('.')
        && !number.ends_with('.');
    match number.parse::<f64>() {
        Ok(v) if plain && v > 0.0 => Ok(v * scale),
        _ => bail!("{flag} {s:?}: expected a positive Kubernetes quantity such as 8Gi, 500Mi or 2"),
    }
}

/// Worker compute threads for a CPU quantity: its whole CPUs, at least one.
fn cpu_threads(cpu: &str) -> anyhow::Result<usize> {
    if cpu.ends_with(|c: char| c.is_ascii_alphabetic() && c != 'm') {
        bail!("--cpu {cpu:?}: expected CPUs such as 4, 1.5 or 500m");
    }
    let cpus = check_quantity("--cpu", cpu)?;
    Ok((cpus.floor() as usize).max(1))
}

/// The `deploy k8s` command line that renders `a` again (with every setting spelled out).
fn command_line(a: &K8sArgs) -> String {
    let mut parts = vec![
        "coordinator deploy k8s".to_string(),
        format!("--nodes {}", a.nodes),
        format!("--image {}", shell_quote(&a.image)),
        format!("--config {}", shell_quote(&a.config.display().to_string())),
    ];
    for o in &a.overrides {
        parts.push(format!("--set {}", shell_quote(o)));
    }
    parts.push(format!("--name {}", shell_quote(&a.name)));
    if let Some(ns) = &a.namespace {
        parts.push(format!("--namespace {}", shell_quote(ns)));
    }
    match &a.pvc {
        Some(claim) => parts.push(format!("--pvc {}", shell_quote(claim))),
        None => {
            let size = a.storage.as_deref().unwrap_or("50Gi");
            parts.push(format!("--storage {}", shell_quote(size)));
            if let Some(class) = &a.storage_class {
                parts.push(format!("--storage-class {}", shell_quote(class)));
            }
        }
    }
    parts.push(format!("--cpu {}", shell_quote(&a.cpu)));
    parts.push(format!("--memory {}", shell_quote(&a.memory)));
    if let Some(url) = &a.otlp_endpoint {
        parts.push(format!("--otlp-endpoint {}", shell_quote(url)));
    }
    parts.push(format!("--backoff-limit {}", a.backoff_limit));
    parts.join(" ")
}

fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./:=@%+,[]".contains(&b));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// One YAML document (starting with `---`), multi-line strings as literal blocks when that
/// reads back exactly, quoted otherwise.
pub fn emit_yaml(doc: &Value) -> anyhow::Result<String> {
    let yaml = to_yaml_value(doc);
    for multiline in [true, false] {
        let mut out = String::new();
        let mut emitter = YamlEmitter::new(&mut out);
        emitter.multiline_strings(multiline);
        emitter
            .dump(&yaml)
            .map_err(|e| anyhow!("cannot write YAML: {e}"))?;
        // The emitter indents the empty lines of a literal block; a line of nothing but spaces
        // reads the same as an empty one, without the trailing whitespace.
        let mut out: String = out
            .lines()
            .map(|l| {
                if l.trim_start_matches(' ').is_empty() {
                    ""
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        out.push('\n');
        // A literal block cannot carry every text (leading spaces on its first line, some
        // control characters): those read back differently, or not at all, and go quoted.
        if YamlLoader::load_from_str(&out).is_ok_and(|back| back.len() == 1 && back[0] == yaml) {
            return Ok(out);
        }
    }
    bail!("the manifests do not survive a YAML round trip (a bug in `deploy k8s`)")
}

fn to_yaml_value(v: &Value) -> Yaml {
    match v {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Integer(i),
            None => Yaml::Real(n.to_string()),
        },
        Value::String(s) => Yaml::String(s.clone()),
        Value::Array(items) => Yaml::Array(items.iter().map(to_yaml_value).collect()),
        Value::Object(map) => Yaml::Hash(
            map.iter()
                .map(|(k, v)| (Yaml::String(k.clone()), to_yaml_value(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> K8sArgs {
        K8sArgs {
            nodes: 3,
            image: "registry.example.com/anvil:1".into(),
            config: Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/quickstart.yaml"),
            overrides: vec![],
            gpus_per_node: 0,
            name: "demo".into(),
            namespace: Some("ml".into()),
            pvc: None,
            storage: None,
            storage_class: None,
            cpu: "4".into(),
            memory: "16Gi".into(),
            backoff_limit: 6,
            otlp_endpoint: None,
            output: "-".into(),
        }
    }

    fn worker_container(doc: &Value) -> &Value {
        &doc["spec"]["template"]["spec"]["containers"][0]
    }

    #[test]
    fn gpus_become_a_limit_when_a_backend_can_use_them() {
        // The command refuses --gpus-per-node > 0 today (the image is a CPU build); the
        // rendering is ready for the day it does not.
        let mut a = args();
        a.gpus_per_node = 2;
        assert!(Plan::from_args(&a)
            .unwrap_err()
            .to_string()
            .contains("CPU build"));
        a.gpus_per_node = 0;
        let mut plan = Plan::from_args(&a).unwrap();
        let docs = plan.documents();
        let limits = &worker_container(docs.last().unwrap())["resources"]["limits"];
        assert!(limits.get("nvidia.com/gpu").is_none(), "{limits}");
        plan.gpus_per_node = 2;
        let docs = plan.documents();
        let limits = &worker_container(docs.last().unwrap())["resources"]["limits"];
        assert_eq!(limits["nvidia.com/gpu"], json!(2));
    }

    #[test]
    fn quantities_and_names_are_checked() {
        for ok in ["8Gi", "500Mi", "2", "1.5", "250m", "1k"] {
            check_quantity("--memory", ok).unwrap();
        }
        for bad in [
            "", "0", "-1Gi", "8 Gi", "Gi", ".5", "1.2.3", "8GB", "1e3", "1e",
        ] {
            assert!(check_quantity("--memory", bad).is_err(), "{bad}");
        }
        assert_eq!(cpu_threads("500m").unwrap(), 1);
        assert_eq!(cpu_threads("2.5").unwrap(), 2);
        assert_eq!(cpu_threads("16").unwrap(), 16);
        assert!(cpu_threads("2Gi").is_err());
        for ok in ["anvil", "a", "run-2"] {
            check_dns_label("--name", ok, MAX_NAME).unwrap();
        }
        for bad in ["", "Anvil", "-a", "a-", "a_b", "a.b", &"x".repeat(41)] {
            assert!(check_dns_label("--name", bad, MAX_NAME).is_err(), "{bad}");
        }
        check_dns_subdomain("--pvc", "shared.data-1").unwrap();
        assert!(check_dns_subdomain("--pvc", "Shared").is_err());
    }

    #[test]
    fn paths_must_stay_on_the_volume() {
        assert_eq!(
            relative_to_volume("f", "data/x.h5ad").unwrap(),
            "data/x.h5ad"
        );
        assert_eq!(
            relative_to_volume("f", "/anvil/data/x.h5ad").unwrap(),
            "data/x.h5ad"
        );
        let e = relative_to_volume("data.paths", "/scratch/x.h5ad").unwrap_err();
        assert!(e.to_string().contains("outside the volume"), "{e}");
        assert!(relative_to_volume("f", "../x.h5ad").is_err());
        assert!(relative_to_volume("f", "/anvil/../x.h5ad").is_err());
        assert!(relative_to_volume("f", "/anvilx/y").is_err());
    }

    #[test]
    fn any_config_text_survives_the_yaml_round_trip() {
        for text in [
            "a: 1\n",
            "a: 1",
            "a: 1\n\n\n",
            "  leading: spaces\nb: 2\n",
            "trailing: spaces   \n\nb: 2\n",
            "blank:\n   \n\t\nb: 2\n",
            "crlf: 1\r\nb: 2\r\n",
            "tab:\t1\n# comment: with \"quotes\" and 'apostrophes'\n",
            "unicode: ünïcødé ✓\n",
            "",
            "\n",
        ] {
            let doc = json!({ "data": { "config.yaml": text } });
            let yaml = emit_yaml(&doc).unwrap();
            let back = YamlLoader::load_from_str(&yaml).unwrap();
            assert_eq!(
                back[0]["data"]["config.yaml"].as_str(),
                Some(text),
                "{text:?} came back differently from\n{yaml}"
            );
        }
    }

    #[test]
    fn strings_that_look_like_other_types_stay_strings() {
        let doc = json!({ "args": ["75", "true", "null", "1.5", "$(X)", "0.0.0.0:50051", "-x"] });
        let yaml = emit_yaml(&doc).unwrap();
        let back = YamlLoader::load_from_str(&yaml).unwrap();
        let args: Vec<Option<&str>> = back[0]["args"]
            .as_vec()
            .unwrap()
            .iter()
            .map(|y| y.as_str())
            .collect();
        assert_eq!(
            args,
            ["75", "true", "null", "1.5", "$(X)", "0.0.0.0:50051", "-x"].map(Some)
        );
    }
}
