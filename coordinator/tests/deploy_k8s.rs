//! `coordinator deploy k8s`: the rendered manifests pass the Kubernetes API schemas (strict,
//! offline, with `kubernetes-validate` from scripts/requirements-test.txt), their objects refer
//! to each other correctly, bad input is refused naming the flag or file, the checked-in
//! example (deploy/kubernetes/anvil.yaml) is what the command renders today, and `coordinator
//! data wait` (the coordinator pod's init container) waits for complete data.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("anvil-deploy-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn coordinator(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .current_dir(repo())
        .args(args)
        .output()
        .expect("run coordinator")
}

/// `deploy k8s` with `args` after the defaults of these tests; stdout must be the manifests.
fn render(args: &[&str]) -> String {
    let mut all = vec![
        "deploy",
        "k8s",
        "--image",
        "registry.example.com/anvil:0.1",
        "--config",
        "configs/quickstart.yaml",
    ];
    all.extend(args);
    let out = coordinator(&all);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

fn to_json(y: &Yaml) -> Value {
    match y {
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| (k.as_str().expect("string keys").to_string(), to_json(v)))
                .collect(),
        ),
        Yaml::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(r) => Value::from(r.parse::<f64>().unwrap()),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Null => Value::Null,
        other => panic!("unexpected YAML node {other:?}"),
    }
}

fn documents(yaml: &str) -> Vec<Value> {
    YamlLoader::load_from_str(yaml)
        .unwrap_or_else(|e| panic!("not YAML: {e}\n{yaml}"))
        .iter()
        .map(to_json)
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} among {docs:#?}"))
}

fn pod(job: &Value) -> &Value {
    &job["spec"]["template"]["spec"]
}

fn container<'a>(job: &'a Value, name: &str) -> &'a Value {
    let spec = pod(job);
    spec["containers"]
        .as_array()
        .into_iter()
        .chain(spec["initContainers"].as_array())
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {job:#}"))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

/// The value after `flag` in an argument list.
fn after<'a>(args: &[&'a str], flag: &str) -> &'a str {
    let i = args
        .iter()
        .position(|a| *a == flag)
        .unwrap_or_else(|| panic!("{flag} not in {args:?}"));
    args[i + 1]
}

fn env<'a>(c: &'a Value, name: &str) -> &'a Value {
    c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no env {name} in {c:#}"))
}

/// Volume `name` of a pod, and where container `c` mounts it.
fn mount<'a>(job: &'a Value, c: &Value, volume: &str) -> (&'a Value, String) {
    let v = pod(job)["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == volume)
        .unwrap_or_else(|| panic!("no volume {volume}"));
    let m = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume)
        .unwrap_or_else(|| panic!("{} does not mount {volume}", c["name"]));
    (v, m["mountPath"].as_str().unwrap().to_string())
}

// ---------------------------------------------------------------------------------------------
// (a) The Kubernetes API schemas, offline.

fn python() -> Option<PathBuf> {
    common::python("kubernetes-validate")
}

/// Strict validation against Kubernetes `version`; Err with the validator's words.
fn validate(python: &Path, file: &Path, version: &str) -> Result<(), String> {
    let out = Command::new(python)
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "--no-warn",
            "-k",
            version,
        ])
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    if said.contains("No module named kubernetes_validate") {
        panic!(
            "{} has no kubernetes_validate: run bash scripts/install-deps.sh",
            python.display()
        );
    }
    if out.status.success() {
        Ok(())
    } else {
        Err(said)
    }
}

#[test]
fn rendered_manifests_pass_the_kubernetes_schemas() {
    let Some(python) = python() else { return };
    let dir = scratch("schemas");
    let variants = [
        render(&["--nodes", "2"]),
        render(&[
            "--nodes",
            "5",
            "--name",
            "pbmc-big",
            "--namespace",
            "ml",
            "--pvc",
            "shared-data",
            "--cpu",
            "1500m",
            "--memory",
            "3Gi",
            "--set",
            "training.max_epochs=2",
        ]),
        render(&[
            "--nodes",
            "1",
            "--storage",
            "1Ti",
            "--storage-class",
            "nfs-client",
            "--otlp-endpoint",
            "http://otel-collector.monitoring:4317",
        ]),
    ];
    for (i, yaml) in variants.iter().enumerate() {
        let file = dir.join(format!("variant-{i}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        // The oldest schemas bundled (1.25: indexed Jobs are GA since 1.24) and the newest.
        for version in ["1.25.0", "1.37.0"] {
            if let Err(e) = validate(&python, &file, version) {
                panic!("variant {i} fails Kubernetes {version}:\n{e}\n{yaml}");
            }
        }
    }
    // The check can fail: a misspelt field and a wrong type are caught.
    let broken = variants[0]
        .replace(
            "completionMode: Indexed",
            "completionMode: Indexed\n  completion: 2",
        )
        .replace("backoffLimit: 6", "backoffLimit: six");
    let file = dir.join("broken.yaml");
    std::fs::write(&file, &broken).unwrap();
    let e = validate(&python, &file, "1.37.0").expect_err("a broken manifest passed");
    assert!(
        e.contains("job/anvil-workers") || e.contains("job/anvil-coordinator"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// (b) The objects refer to each other.

#[test]
fn the_objects_are_wired_together() {
    let yaml = render(&["--nodes", "3"]);
    let docs = documents(&yaml);
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "Secret",
            "PersistentVolumeClaim",
            "Service",
            "Job",
            "Job"
        ]
    );
    let config_map = find(&docs, "ConfigMap", "anvil-config");
    let secret = find(&docs, "Secret", "anvil-token");
    let claim = find(&docs, "PersistentVolumeClaim", "anvil-data");
    let service = find(&docs, "Service", "anvil-coordinator");
    let coord_job = find(&docs, "Job", "anvil-coordinator");
    let workers = find(&docs, "Job", "anvil-workers");

    // The config travels byte for byte.
    let config = std::fs::read_to_string(repo().join("configs/quickstart.yaml")).unwrap();
    assert_eq!(config_map["data"]["config.yaml"], config.as_str());

    // A fresh token, different on every rendering.
    let token = secret["stringData"]["token"].as_str().unwrap();
    assert_eq!(token.len(), 48, "{token}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
    let again = documents(&render(&["--nodes", "3"]));
    assert_ne!(
        find(&again, "Secret", "anvil-token")["stringData"]["token"],
        token
    );

    // The claim: ReadWriteMany, the default size, no class unless asked.
    assert_eq!(
        claim["spec"]["accessModes"],
        serde_json::json!(["ReadWriteMany"])
    );
    assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "50Gi");
    assert!(claim["spec"].get("storageClassName").is_none());

    // The coordinator: a Job restarting its pod, which resumes the run.
    assert_eq!(coord_job["spec"]["backoffLimit"], 6);
    assert_eq!(pod(coord_job)["restartPolicy"], "OnFailure");
    let coord = container(coord_job, "coordinator");
    let cmd = strings(&coord["command"]);
    assert_eq!(&cmd[..2], ["coordinator", "launch"]);
    for flag in ["--external", "--resume-existing"] {
        assert!(cmd.contains(&flag), "{flag} missing from {cmd:?}");
    }
    assert_eq!(after(&cmd, "--nodes"), "3");
    assert_eq!(after(&cmd, "--workers-per-node"), "1");
    assert_eq!(after(&cmd, "--run-dir"), "runs/anvil");
    assert_eq!(after(&cmd, "--preempted-exit-code"), "75");
    assert_eq!(after(&cmd, "--listen"), "0.0.0.0:50051");
    assert_eq!(coord["workingDir"], "/anvil");

    // Its config file is the ConfigMap's key, where the ConfigMap is mounted.
    let (config_vol, config_dir) = mount(coord_job, coord, "config");
    assert_eq!(config_vol["configMap"]["name"], "anvil-config");
    assert_eq!(after(&cmd, "--config"), format!("{config_dir}/config.yaml"));

    // Coordinator and workers read the token from the same Secret key.
    let worker = container(workers, "worker");
    let args = strings(&worker["args"]);
    for (job, c, flags) in [(coord_job, coord, &cmd), (workers, worker, &args)] {
        let (vol, dir) = mount(job, c, "token");
        assert_eq!(vol["secret"]["secretName"], "anvil-token");
        let file = after(flags, "--token-file");
        assert_eq!(file, format!("{dir}/token"), "{}", c["name"]);
        assert!(secret["stringData"].get("token").is_some());
        // The volume: the claim, mounted as the working directory.
        let (vol, dir) = mount(job, c, "data");
        assert_eq!(vol["persistentVolumeClaim"]["claimName"], "anvil-data");
        assert_eq!(c["workingDir"], dir.as_str());
    }

    // The Service selects the coordinator pod, on the port it listens on.
    let selector = service["spec"]["selector"].as_object().unwrap();
    let labels = &coord_job["spec"]["template"]["metadata"]["labels"];
    for (k, v) in selector {
        assert_eq!(&labels[k], v, "label {k}");
    }
    let worker_labels = &workers["spec"]["template"]["metadata"]["labels"];
    assert!(
        selector.iter().any(|(k, v)| &worker_labels[k] != v),
        "the Service must not select workers"
    );
    let port = &service["spec"]["ports"][0];
    assert_eq!(port["port"], 50051);
    assert_eq!(port["targetPort"], coord["ports"][0]["name"]);
    assert_eq!(coord["ports"][0]["containerPort"], 50051);
    assert_eq!(coord["readinessProbe"]["tcpSocket"]["port"], "grpc");

    // Workers: an indexed Job of N, rank from the completion index, the Service's DNS name.
    assert_eq!(workers["spec"]["completionMode"], "Indexed");
    assert_eq!(workers["spec"]["completions"], 3);
    assert_eq!(workers["spec"]["parallelism"], 3);
    assert_eq!(pod(workers)["restartPolicy"], "OnFailure");
    for job in [coord_job, workers] {
        assert_eq!(pod(job)["enableServiceLinks"], false);
    }
    assert_eq!(strings(&worker["command"]), ["worker"]);
    assert_eq!(after(&args, "--rank"), "$(JOB_COMPLETION_INDEX)");
    assert_eq!(after(&args, "--preempted-exit-code"), "75");
    assert_eq!(
        env(worker, "JOB_COMPLETION_INDEX")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    );
    assert_eq!(after(&args, "--coordinator"), "$(ANVIL_COORDINATOR)");
    assert_eq!(
        env(worker, "ANVIL_COORDINATOR")["value"],
        "anvil-coordinator.$(POD_NAMESPACE).svc:50051"
    );
    assert_eq!(
        env(worker, "POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    let waiter = container(workers, "wait-for-coordinator");
    assert_eq!(
        env(waiter, "ANVIL_COORDINATOR"),
        env(worker, "ANVIL_COORDINATOR")
    );

    // Resources per worker pod; no GPUs by default.
    let res = &worker["resources"];
    assert_eq!(res["requests"]["cpu"], "2");
    assert_eq!(res["limits"]["memory"], "8Gi");
    assert_eq!(env(worker, "RAYON_NUM_THREADS")["value"], "2");
    assert!(!yaml.contains("nvidia.com/gpu"), "{yaml}");

    // Every object carries the instance label; nothing names a namespace unless asked.
    for d in &docs {
        assert_eq!(
            d["metadata"]["labels"]["app.kubernetes.io/instance"],
            "anvil"
        );
        assert!(d["metadata"].get("namespace").is_none());
    }

    // The init container stages the data with the same config.
    let stage = container(coord_job, "stage-data");
    let wait = strings(&stage["command"]);
    assert_eq!(&wait[..3], ["coordinator", "data", "wait"]);
    assert_eq!(after(&wait, "--config"), after(&cmd, "--config"));
    assert_eq!(stage["workingDir"], "/anvil");
}

#[test]
fn names_namespace_volume_and_resources_follow_the_flags() {
    let yaml = render(&[
        "--nodes",
        "4",
        "--name",
        "pbmc",
        "--namespace",
        "team-a",
        "--pvc",
        "lab-share",
        "--cpu",
        "7500m",
        "--memory",
        "30Gi",
        "--backoff-limit",
        "2",
        "--set",
        "training.max_epochs=1",
    ]);
    let docs = documents(&yaml);
    assert!(
        docs.iter().all(|d| d["kind"] != "PersistentVolumeClaim"),
        "--pvc uses an existing claim"
    );
    for d in &docs {
        let name = d["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("pbmc-"), "{name}");
        assert_eq!(d["metadata"]["namespace"], "team-a");
        assert_eq!(
            d["metadata"]["labels"]["app.kubernetes.io/instance"],
            "pbmc"
        );
    }
    let coord_job = find(&docs, "Job", "pbmc-coordinator");
    let workers = find(&docs, "Job", "pbmc-workers");
    find(&docs, "Service", "pbmc-coordinator");
    find(&docs, "ConfigMap", "pbmc-config");
    find(&docs, "Secret", "pbmc-token");
    assert_eq!(coord_job["spec"]["backoffLimit"], 2);
    assert_eq!(workers["spec"]["completions"], 4);
    let coord = container(coord_job, "coordinator");
    let cmd = strings(&coord["command"]);
    assert_eq!(after(&cmd, "--run-dir"), "runs/pbmc");
    assert_eq!(after(&cmd, "--set"), "training.max_epochs=1");
    assert_eq!(
        after(
            &strings(&container(coord_job, "stage-data")["command"]),
            "--set"
        ),
        "training.max_epochs=1"
    );
    let worker = container(workers, "worker");
    assert_eq!(
        env(worker, "ANVIL_COORDINATOR")["value"],
        "pbmc-coordinator.team-a.svc:50051"
    );
    for job in [coord_job, workers] {
        let vol = pod(job)["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "data")
            .unwrap();
        assert_eq!(vol["persistentVolumeClaim"]["claimName"], "lab-share");
    }
    assert_eq!(worker["resources"]["limits"]["cpu"], "7500m");
    assert_eq!(worker["resources"]["requests"]["memory"], "30Gi");
    assert_eq!(env(worker, "RAYON_NUM_THREADS")["value"], "7");
    // The header says how to render the same again.
    assert!(
        yaml.contains("--name pbmc --namespace team-a --pvc lab-share --cpu 7500m"),
        "{yaml}"
    );
}

#[test]
fn writing_a_file_prints_the_next_steps() {
    let dir = scratch("output");
    let file = dir.join("anvil.yaml");
    let out = coordinator(&[
        "deploy",
        "k8s",
        "--nodes",
        "2",
        "--image",
        "anvil:1",
        "--config",
        "configs/quickstart.yaml",
        "--namespace",
        "ml",
        "--output",
        file.to_str().unwrap(),
    ]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(out.stdout.is_empty());
    assert_eq!(documents(&std::fs::read_to_string(&file).unwrap()).len(), 6);
    assert!(
        stderr.contains(&format!("kubectl apply -n ml -f {}", file.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains("-c stage-data data/pbmc68k_counts.h5ad \"${POD#pod/}:/anvil/data/pbmc68k_counts.h5ad\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("kubectl logs -n ml -f job/anvil-coordinator"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// (c) Bad input.

#[test]
fn bad_input_is_refused_naming_the_flag_or_file() {
    let dir = scratch("bad");
    let invalid = dir.join("invalid.yaml");
    std::fs::write(&invalid, "training:\n  batchsize: 4\n").unwrap();
    let outside = dir.join("outside.yaml");
    let quickstart = std::fs::read_to_string(repo().join("configs/quickstart.yaml")).unwrap();
    std::fs::write(
        &outside,
        quickstart.replace("data/pbmc68k_counts.h5ad", "/scratch/pbmc.h5ad"),
    )
    .unwrap();
    let base = |config: &str| {
        vec![
            "deploy".to_string(),
            "k8s".into(),
            "--image".into(),
            "anvil:1".into(),
            "--config".into(),
            config.into(),
        ]
    };
    let cases: Vec<(Vec<String>, &[&str])> = vec![
        (
            vec!["--nodes".into(), "0".into()],
            &["--nodes must be at least 1"],
        ),
        (
            vec![
                "--nodes".into(),
                "2".into(),
                "--gpus-per-node".into(),
                "1".into(),
            ],
            &["--gpus-per-node 1", "CPU build"],
        ),
        (
            vec![
                "--nodes".into(),
                "2".into(),
                "--name".into(),
                "My_Run".into(),
            ],
            &["--name \"My_Run\""],
        ),
        (
            vec![
                "--nodes".into(),
                "2".into(),
                "--memory".into(),
                "8GB".into(),
            ],
            &["--memory \"8GB\""],
        ),
        (
            vec!["--nodes".into(), "2".into(), "--cpu".into(), "lots".into()],
            &["--cpu \"lots\""],
        ),
        (
            vec![
                "--nodes".into(),
                "2".into(),
                "--otlp-endpoint".into(),
                "collector:4317".into(),
            ],
            &["--otlp-endpoint \"collector:4317\"", "http://"],
        ),
        (
            vec![
                "--nodes".into(),
                "2".into(),
                "--set".into(),
                "training.batch_size=-1".into(),
            ],
            &["--config configs/quickstart.yaml", "training.batch_size"],
        ),
    ];
    for (extra, expected) in cases {
        let mut args = base("configs/quickstart.yaml");
        args.extend(extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = coordinator(&refs);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(out.stdout.is_empty(), "{args:?} printed manifests");
        for e in expected {
            assert!(stderr.contains(e), "{args:?}: expected {e:?} in\n{stderr}");
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let missing = dir.join("missing.yaml");
    for (config, expected) in [
        (missing.to_str().unwrap(), "cannot read it"),
        (invalid.to_str().unwrap(), "training.batchsize: unknown key"),
        (
            outside.to_str().unwrap(),
            "data.paths: /scratch/pbmc.h5ad is outside the volume",
        ),
        ("configs/census_brain.yaml", "data.source cellxgene_census"),
    ] {
        let mut args = base(config);
        args.extend(["--nodes".into(), "2".into()]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = coordinator(&refs);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{config}: {stderr}");
        assert!(
            stderr.contains(&format!("--config {config}")),
            "{config}: {stderr}"
        );
        assert!(
            stderr.contains(expected),
            "{config}: expected {expected:?} in\n{stderr}"
        );
    }
    // Fine-tuning deploys like training; the pretrained checkpoint must be on the volume like
    // the data.
    for (set, expected) in [
        (
            "finetune.checkpoint_path=/elsewhere/ck",
            "finetune.checkpoint_path: /elsewhere/ck is outside the volume",
        ),
        (
            "finetune.checkpoint_path=null",
            "finetune.checkpoint_path is empty",
        ),
    ] {
        let mut args = base("configs/finetune_cell_type.yaml");
        args.extend(["--nodes".into(), "2".into(), "--set".into(), set.into()]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = coordinator(&refs);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{set}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{set}: expected {expected:?} in\n{stderr}"
        );
    }
    // An existing claim and a claim to create exclude each other (clap's usage error).
    let mut args = base("configs/quickstart.yaml");
    args.extend(["--nodes", "2", "--pvc", "x", "--storage", "1Gi"].map(String::from));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = coordinator(&refs);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--pvc"), "{}", text(&out.stderr));
}

// ---------------------------------------------------------------------------------------------
// The checked-in example.

const EXAMPLE: &str = "deploy/kubernetes/anvil.yaml";
const EXAMPLE_ARGS: &[&str] = &[
    "deploy",
    "k8s",
    "--nodes",
    "2",
    "--image",
    "anvil:latest",
    "--config",
    "configs/quickstart.yaml",
];

/// The text with the Secret's token (random on every rendering) replaced by a placeholder.
fn without_token(yaml: &str) -> (String, Option<String>) {
    let mut token = None;
    let lines: Vec<String> = yaml
        .lines()
        .map(|l| match l.strip_prefix("  token: ") {
            Some(t) => {
                token = Some(t.to_string());
                "  token: <random>".to_string()
            }
            None => l.to_string(),
        })
        .collect();
    (lines.join("\n"), token)
}

#[test]
fn the_checked_in_example_is_what_the_command_renders() {
    let out = coordinator(EXAMPLE_ARGS);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (fresh, _) = without_token(&text(&out.stdout));
    let checked_in = std::fs::read_to_string(repo().join(EXAMPLE)).expect(EXAMPLE);
    let (checked_in, token) = without_token(&checked_in);
    let token = token.expect("the example has a Secret with a token");
    assert!(
        token.len() == 48 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "{token}"
    );
    assert!(
        fresh == checked_in,
        "{EXAMPLE} is not what `coordinator deploy k8s` renders today; regenerate it with\n  \
         cargo run --release -p coordinator -- {} --output {EXAMPLE}",
        EXAMPLE_ARGS.join(" ")
    );
}

// ---------------------------------------------------------------------------------------------
// `coordinator data wait`, the coordinator pod's init container.

fn data_wait(cwd: &Path, extra: &[&str]) -> Command {
    data_wait_for(cwd, &repo().join("configs/quickstart.yaml"), extra)
}

fn data_wait_for(cwd: &Path, config: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coordinator"));
    cmd.current_dir(cwd)
        .args(["data", "wait", "--config"])
        .arg(config)
        .args(["--interval", "0.1"])
        .args(extra);
    cmd
}

#[test]
fn data_wait_copies_bundled_data_and_times_out_naming_what_is_missing() {
    let dir = scratch("wait-seed");
    // Bundled with the image (here: the repository plays the image's /opt/anvil).
    let out = data_wait(&dir, &["--timeout", "30", "--seed"])
        .arg(repo())
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("copied data/pbmc68k_counts.h5ad"),
        "{stderr}"
    );
    assert!(stderr.contains("all data files are ready"), "{stderr}");
    assert_eq!(
        std::fs::read(dir.join("data/pbmc68k_counts.h5ad")).unwrap(),
        std::fs::read(repo().join("data/pbmc68k_counts.h5ad")).unwrap()
    );

    // Not bundled, never copied: a clear timeout.
    let empty = scratch("wait-missing");
    let out = data_wait(&empty, &["--timeout", "1"]).output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "missing: copy it to {}",
            empty.join("data/pbmc68k_counts.h5ad").display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("data files still not ready: data/pbmc68k_counts.h5ad"),
        "{stderr}"
    );
}

#[test]
fn data_wait_does_not_take_a_file_still_being_copied() {
    let dir = scratch("wait-partial");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let whole = std::fs::read(repo().join("data/pbmc68k_counts.h5ad")).unwrap();
    let target = dir.join("data/pbmc68k_counts.h5ad");
    // Half a file, as `kubectl cp` leaves it mid-copy.
    std::fs::write(&target, &whole[..whole.len() / 2]).unwrap();
    let child = data_wait(&dir, &["--timeout", "60"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(&target, &whole).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("present but not readable yet"), "{stderr}");
    assert!(
        stderr.contains("data/pbmc68k_counts.h5ad is ready"),
        "{stderr}"
    );
}

#[test]
fn otlp_endpoint_reaches_the_coordinator_and_every_worker_and_nothing_else_by_default() {
    let url = "http://otel-collector.monitoring:4317";
    let docs = documents(&render(&["--nodes", "3", "--otlp-endpoint", url]));
    let coordinator_job = find(&docs, "Job", "anvil-coordinator");
    let workers_job = find(&docs, "Job", "anvil-workers");
    for c in [
        container(coordinator_job, "coordinator"),
        container(workers_job, "worker"),
    ] {
        assert_eq!(env(c, "OTEL_EXPORTER_OTLP_ENDPOINT")["value"], url, "{c:#}");
    }
    // Without the flag no container carries an OpenTelemetry variable.
    let plain = render(&["--nodes", "3"]);
    assert!(!plain.contains("OTEL_"), "{plain}");
}

// ---------------------------------------------------------------------------------------------
// Pose runs (sleap-nn configs).

/// A sleap-nn config deploys like a single-cell one: the ConfigMap holds it, the coordinator
/// launches it on the external workers, the init container waits for its labels file, and the
/// next steps say to copy the labels onto the volume. A GPU accelerator is refused (the image
/// is a CPU build), and so are labels outside the volume.
#[test]
fn a_pose_config_deploys_waiting_for_its_labels() {
    let pose = [
        "--config",
        "configs/sleap_single_instance.yaml",
        "--nodes",
        "2",
    ];
    let mut args = vec!["deploy", "k8s", "--image", "anvil:1"];
    args.extend(pose);
    let dir = scratch("pose");
    let file = dir.join("pose.yaml");
    args.extend(["--output", file.to_str().unwrap()]);
    let out = coordinator(&args);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let yaml = std::fs::read_to_string(&file).unwrap();
    let docs = documents(&yaml);
    let cm = find(&docs, "ConfigMap", "anvil-config");
    let config_text = cm["data"]
        .as_object()
        .and_then(|d| d.values().next())
        .and_then(Value::as_str)
        .unwrap();
    assert!(config_text.contains("train_labels_path"), "{config_text}");
    let job = find(&docs, "Job", "anvil-coordinator");
    let init = &pod(job)["initContainers"][0];
    let wait = strings(&init["command"]);
    assert_eq!(&wait[..3], ["coordinator", "data", "wait"]);
    let launch = strings(&container(job, "coordinator")["command"]);
    assert_eq!(after(&launch, "--nodes"), "2");
    assert!(
        stderr.contains("-c stage-data data/minimal_instance.pkg.slp"),
        "{stderr}"
    );
    if let Some(python) = python() {
        validate(&python, &file, "1.37.0").unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    }

    for (set, expected) in [
        (
            "trainer_config.trainer_accelerator=gpu",
            "trainer_config.trainer_accelerator = gpu: the image the Dockerfile builds is a CPU build",
        ),
        (
            "data_config.train_labels_path=[/scratch/labels.slp]",
            "data_config.train_labels_path: /scratch/labels.slp is outside the volume",
        ),
        (
            "data_config.train_labels_path=null",
            "data_config.train_labels_path is null",
        ),
    ] {
        let mut args = vec!["deploy", "k8s", "--image", "anvil:1"];
        args.extend(pose);
        args.extend(["--set", set]);
        let out = coordinator(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{set}: {stderr}");
        assert!(stderr.contains(expected), "{set}: expected {expected:?} in\n{stderr}");
    }
}

/// The init container on a pose config: the bundled labels are copied from the image, and
/// labels whose video is not on the volume yet wait for it, naming it.
#[test]
fn data_wait_on_a_pose_config_waits_for_the_labels_and_their_videos() {
    let dir = scratch("wait-pose");
    let config = repo().join("configs/sleap_single_instance.yaml");
    let out = data_wait_for(&dir, &config, &["--timeout", "30", "--seed"])
        .arg(repo())
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("copied data/minimal_instance.pkg.slp"),
        "{stderr}"
    );
    assert!(stderr.contains("all data files are ready"), "{stderr}");

    // Labels that refer to a video elsewhere on the volume.
    use data::pose::slp::{read_labels, write_labels};
    use data::pose::{Video, VideoSource};
    let mut labels = read_labels(&repo().join("data/minimal_instance.pkg.slp")).unwrap();
    labels.videos = vec![Video {
        filename: "session1.mp4".into(),
        source: VideoSource::External {
            filename: "session1.mp4".into(),
            backend: "MediaVideo".into(),
            dataset: None,
        },
        shape: None,
    }];
    for f in &mut labels.frames {
        f.video = 0;
    }
    let side = scratch("wait-pose-video");
    std::fs::create_dir_all(side.join("data")).unwrap();
    write_labels(&side.join("data/labels.slp"), &labels).unwrap();
    let cfg = side.join("pose.yaml");
    let text_cfg = std::fs::read_to_string(&config)
        .unwrap()
        .replace("data/minimal_instance.pkg.slp", "data/labels.slp");
    std::fs::write(&cfg, text_cfg).unwrap();
    let out = data_wait_for(&side, &cfg, &["--timeout", "1"])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("its frames are in session1.mp4, not found"),
        "{stderr}"
    );
    // The video arrives beside the labels: ready.
    std::fs::write(side.join("data/session1.mp4"), b"video bytes").unwrap();
    let out = data_wait_for(&side, &cfg, &["--timeout", "30"])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("data/labels.slp is ready"), "{stderr}");
}
