#!/usr/bin/env python3
"""The pods of `coordinator deploy k8s`, played without a cluster (none can run on the build
machine; see deploy/README.md).

A Debian bookworm minbase root filesystem (what debian:bookworm-slim is made from) gets the
Dockerfile's runtime stage: its RUN steps run in it, its COPY steps copy the locally built
binaries and the repository's files. Then the containers' command lines, read from the manifests
`coordinator deploy k8s` renders, run in it as uid 10001 with the token file mode 0440 owned by
root:10001 (as a Secret volume with fsGroup gives it), `$(VAR)` expanded as the kubelet does:

1. the workers' init containers wait for the coordinator while it is not there;
2. the coordinator's stage-data init container copies the bundled data onto the "volume";
3. the coordinator and two workers train; worker 1 is evicted (SIGTERM): every process exits 75;
4. the same command lines started again (the Jobs restarting their pods) resume and finish: 0;
5. one more coordinator start finds the run finished and exits 0.

Run as root (chroot, mounts), with debootstrap installed and a Debian mirror reachable:
    cargo build --release -p coordinator -p worker
    sudo /var/tmp/anvil-venv/bin/python scripts/k8s-pods-test.py   # PyYAML comes with the venv
Environment: ANVIL_BIN (directory of the binaries, default $CARGO_TARGET_DIR/release or
target/release), ANVIL_ROOTFS (default /var/tmp/anvil-k8s-rootfs, kept between runs).
"""

import glob
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("ANVIL_BIN") or os.path.join(
    os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target")), "release")
ROOT = os.environ.get("ANVIL_ROOTFS", "/var/tmp/anvil-k8s-rootfs")
UID = 10001
SMALL = ["model.num_layers=1", "model.hidden_dim=32", "model.num_heads=2", "model.ffn_dim=64",
         "model.max_seq_len=64", "tokenizer.max_genes=64", "data.max_genes=64",
         "training.batch_size=8", "training.max_epochs=3", "training.log_every_n_steps=1"]


def fail(msg):
    sys.exit(f"k8s-pods-test: FAILED: {msg}")


def say(msg):
    print(f"k8s-pods-test: {msg}", flush=True)


def runtime_stage():
    """The Dockerfile's last stage: (RUN commands, COPY (sources, destination) pairs)."""
    lines, joined = open(os.path.join(REPO, "Dockerfile")).read().splitlines(), []
    for line in lines:
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1] + " " + line.strip()
        elif line.strip() and not line.lstrip().startswith("#"):
            joined.append(line.strip())
    last = max(i for i, l in enumerate(joined) if l.startswith("FROM "))
    runs, copies = [], []
    for l in joined[last + 1:]:
        word, _, rest = l.partition(" ")
        if word == "RUN":
            runs.append(rest)
        elif word == "COPY":
            args = rest.split()
            copies.append((args[:-1], args[-1]))
    return runs, copies


def build_root():
    if not os.path.exists(f"{ROOT}/usr/bin/apt-get"):
        say(f"debootstrap bookworm into {ROOT}")
        subprocess.run(["debootstrap", "--variant=minbase", "bookworm", ROOT,
                        "http://deb.debian.org/debian"], check=True, stdout=subprocess.DEVNULL)
    shutil.copy("/etc/resolv.conf", f"{ROOT}/etc/resolv.conf")
    runs, copies = runtime_stage()
    for cmd in runs:
        stamp = f"{ROOT}/.anvil-run-" + hashlib.sha256(cmd.encode()).hexdigest()[:16]
        if not os.path.exists(stamp):
            say(f"RUN {cmd[:70]}...")
            subprocess.run(["chroot", ROOT, "/bin/sh", "-c", cmd], check=True,
                           stdout=subprocess.DEVNULL)
            open(stamp, "w").close()
    for sources, dest in copies:
        if sources[0].startswith("--from=build"):
            files = [os.path.join(BIN, b) for b in ("coordinator", "worker")]
        else:
            files = [f for s in sources for f in sorted(glob.glob(os.path.join(REPO, s)))]
        os.makedirs(ROOT + dest, exist_ok=True)
        for f in files:
            if not os.path.isfile(f):
                fail(f"{f} is missing (cargo build --release -p coordinator -p worker)")
            shutil.copy(f, ROOT + dest)


def render():
    out = subprocess.run([os.path.join(BIN, "coordinator"), "deploy", "k8s", "--nodes", "2",
                          "--image", "anvil:test", "--config", "configs/quickstart.yaml"]
                         + [a for s in SMALL for a in ("--set", s)],
                         cwd=REPO, check=True, capture_output=True, text=True).stdout
    docs = list(yaml.safe_load_all(out))
    find = lambda kind, name: next(d for d in docs if d["kind"] == kind  # noqa: E731
                                   and d["metadata"]["name"] == name)
    return (find("ConfigMap", "anvil-config"), find("Secret", "anvil-token"),
            find("Job", "anvil-coordinator")["spec"]["template"]["spec"],
            find("Job", "anvil-workers")["spec"]["template"]["spec"])


def mounted_at(pod, container, volume):
    return next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume)


def main():
    if os.geteuid() != 0:
        fail("run as root (chroot and mounts)")
    build_root()
    mounted = []
    try:
        for kind, target in (("proc", f"{ROOT}/proc"), ("tmpfs", f"{ROOT}/dev/shm")):
            os.makedirs(target, exist_ok=True)
            if not os.path.ismount(target):
                subprocess.run(["mount", "-t", kind, kind, target], check=True)
                mounted.append(target)
        os.chmod(f"{ROOT}/dev/shm", 0o1777)
        play()
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", target], check=False)


def play():
    config_map, secret, coord_pod, worker_pod = render()
    stage, coord = coord_pod["initContainers"][0], coord_pod["containers"][0]
    waiter, worker = worker_pod["initContainers"][0], worker_pod["containers"][0]

    # The volumes: the claim (empty), the ConfigMap, the Secret (0440 root:fsGroup).
    volume = ROOT + mounted_at(coord_pod, coord, "data")
    shutil.rmtree(volume, ignore_errors=True)
    os.makedirs(volume)
    os.chown(volume, UID, UID)
    config_dir = ROOT + mounted_at(coord_pod, coord, "config")
    os.makedirs(config_dir, exist_ok=True)
    for key, text in config_map["data"].items():
        open(os.path.join(config_dir, key), "w").write(text)
    token_dir = ROOT + mounted_at(coord_pod, coord, "token")
    os.makedirs(token_dir, exist_ok=True)
    for key, text in secret["stringData"].items():
        path = os.path.join(token_dir, key)
        open(path, "w").write(text)
        os.chown(path, 0, UID)
        os.chmod(path, 0o440)

    address = "127.0.0.1:50051"  # what the Service's DNS name leads to, here

    def env_of(container, index=0):
        env = {}
        for e in container.get("env", []):
            if "value" in e:
                env[e["name"]] = e["value"]
        env["POD_NAMESPACE"] = "default"
        env["JOB_COMPLETION_INDEX"] = str(index)
        for k in env:
            for name, value in env.items():
                env[k] = env[k].replace(f"$({name})", value)
        if "ANVIL_COORDINATOR" in env:
            env["ANVIL_COORDINATOR"] = address
        return env

    def start(container, log, index=0):
        env = env_of(container, index)
        argv = [a for a in container["command"] + container.get("args", [])]
        for name, value in env.items():
            argv = [a.replace(f"$({name})", value) for a in argv]
        cwd = container.get("workingDir", "/")
        return subprocess.Popen(
            ["chroot", f"--userspec={UID}:{UID}", ROOT, "env", "-i",
             "PATH=/usr/local/bin:/usr/bin:/bin"] + [f"{k}={v}" for k, v in env.items()]
            + ["bash", "-c", f'cd "{cwd}" && exec "$@"', "_"] + argv,
            stdout=open(log, "w"), stderr=subprocess.STDOUT)

    def wait(p, limit, what):
        try:
            return p.wait(limit)
        except subprocess.TimeoutExpired:
            p.kill()
            fail(f"{what} still running after {limit}s")

    logs = os.environ.get("TMPDIR", "/tmp")
    log = lambda name: os.path.join(logs, f"anvil-pod-{name}.log")  # noqa: E731
    waits = [start(waiter, log(f"wait-for-coordinator-{i}"), i) for i in range(2)]
    time.sleep(3)
    if any(w.poll() is not None for w in waits):
        fail("the workers' init containers did not wait for the coordinator")
    say("workers' init containers wait for the coordinator")
    if wait(start(stage, log("stage-data")), 60, "stage-data") != 0:
        fail(f"stage-data failed: {open(log('stage-data')).read()}")
    say("stage-data copied the bundled data onto the volume")

    def generation(tag, evict):
        c = start(coord, log(f"coordinator-{tag}"))
        if tag == "a":
            codes = [wait(w, 30, "wait-for-coordinator") for w in waits]
            if codes != [0, 0]:
                fail(f"wait-for-coordinator exited {codes}")
        ws = [start(worker, log(f"worker-{i}-{tag}"), i) for i in range(2)]
        if evict:
            metrics = os.path.join(volume, "runs/anvil/version_0/metrics.csv")
            for _ in range(1200):
                if os.path.exists(metrics) and len(open(metrics).read().splitlines()) > 4:
                    break
                time.sleep(0.1)
            ws[1].send_signal(signal.SIGTERM)  # chroot, env and bash exec: the worker's pid
        return [wait(w, 300, "worker") for w in ws], wait(c, 60, "coordinator")

    workers, coordinator = generation("a", evict=True)
    say(f"worker 1 evicted: workers exited {workers}, coordinator {coordinator}")
    if workers != [75, 75] or coordinator != 75:
        fail(f"expected 75 everywhere; see {log('coordinator-a')}")
    workers, coordinator = generation("b", evict=False)
    say(f"pods restarted: workers exited {workers}, coordinator {coordinator}")
    resumed = "resuming from" in open(log("coordinator-b")).read()
    if workers != [0, 0] or coordinator != 0 or not resumed:
        fail(f"the restarted run did not resume and finish; see {log('coordinator-b')}")
    again = wait(start(coord, log("coordinator-c")), 60, "coordinator")
    if again != 0 or "already finished" not in open(log("coordinator-c")).read():
        fail(f"a coordinator restarted after the end did not exit 0; see {log('coordinator-c')}")
    say("a coordinator restarted after the end exits 0 at once")
    say(f"OK (logs: {logs}/anvil-pod-*.log)")


if __name__ == "__main__":
    main()
