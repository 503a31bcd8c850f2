//! All-reduce bus bandwidth between 2 and 4 processes on one host: anvil's ring with its
//! same-host shared-memory path, the same ring forced onto TCP (`ANVIL_RING_SHM=0`), that TCP
//! ring with bf16 on the wire (`--grad-reduce-dtype bf16`), and torch.distributed's gloo
//! backend in fp32 and in bf16 (DDP's bf16_compress_hook: cast, all-reduce, divide, cast
//! back), measured in the same run. Sizes are the fp32 gradient buffer's.
//!
//!   cargo bench -p worker --bench allreduce            # anvil + gloo (needs python3 with torch)
//!   ANVIL_BENCH_NO_GLOO=1 cargo bench -p worker --bench allreduce
//!
//! Bus bandwidth follows nccl-tests: algbw = bytes / time, busbw = algbw * 2(n-1)/n.
//! The parent process spawns one child process per rank (this same executable with
//! ANVIL_BENCH_RANK set); rank 0 reports the median time per size as JSON lines.

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::Instant;

use worker::ring::{Ring, RingTimeouts};
use worker::sync::GradDtype;

const SIZES_MB: [usize; 5] = [1, 4, 16, 64, 256];
const WORLDS: [usize; 2] = [2, 4];

fn iterations(mb: usize) -> usize {
    match mb {
        0..=4 => 30,
        5..=64 => 10,
        _ => 4,
    }
}

fn main() {
    if let Ok(rank) = std::env::var("ANVIL_BENCH_RANK") {
        run_rank(rank.parse().expect("rank"));
        return;
    }
    let mut rows = Vec::new();
    for world in WORLDS {
        for (name, shm, dtype) in [
            ("anvil-shm", true, GradDtype::F32),
            ("anvil-tcp", false, GradDtype::F32),
            ("anvil-tcp-bf16", false, GradDtype::Bf16),
        ] {
            for (mb, secs) in spawn_ring(world, shm, dtype) {
                rows.push((name, world, mb, secs));
            }
        }
        if std::env::var_os("ANVIL_BENCH_NO_GLOO").is_none() {
            for (name, dtype) in [("gloo", "fp32"), ("gloo-bf16", "bf16")] {
                match gloo(world, dtype) {
                    Ok(results) => {
                        rows.extend(results.into_iter().map(|(mb, s)| (name, world, mb, s)))
                    }
                    Err(e) => eprintln!("{name} comparison skipped: {e}"),
                }
            }
        }
    }
    println!(
        "\n{:<11} {:>5} {:>8} {:>10} {:>12} {:>12}",
        "impl", "procs", "size", "time ms", "algbw GB/s", "busbw GB/s"
    );
    for (name, world, mb, secs) in &rows {
        let bytes = (*mb * 1024 * 1024) as f64;
        let algbw = bytes / secs / 1e9;
        let busbw = algbw * 2.0 * (*world as f64 - 1.0) / *world as f64;
        println!(
            "{name:<11} {world:>5} {:>6}MB {:>10.2} {algbw:>12.2} {busbw:>12.2}",
            mb,
            secs * 1e3
        );
    }
    for world in WORLDS {
        let find = |n: &str| {
            rows.iter()
                .find(|r| r.0 == n && r.1 == world && r.2 == 64)
                .map(|r| r.3)
        };
        for (name, peer) in [
            ("anvil-shm", "gloo"),
            ("anvil-tcp", "gloo"),
            ("anvil-tcp-bf16", "gloo-bf16"),
            ("anvil-tcp-bf16", "anvil-tcp"),
        ] {
            if let (Some(a), Some(g)) = (find(name), find(peer)) {
                println!(
                    "64MB, {world} processes: {name} busbw / {peer} busbw = {:.2}x",
                    g / a
                );
            }
        }
    }
}

/// Spawns `world` rank processes and collects rank 0's (size MB, median seconds) results.
/// `shm: false` forces the TCP path; `dtype` is the format on the wire.
fn spawn_ring(world: usize, shm: bool, dtype: GradDtype) -> Vec<(usize, f64)> {
    // Pick free ports; each child binds its own (the short race is fine for a benchmark).
    let addrs: Vec<SocketAddr> = (0..world)
        .map(|_| {
            TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        })
        .collect();
    let list = addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let exe = std::env::current_exe().expect("own path");
    let children: Vec<_> = (0..world)
        .map(|rank| {
            Command::new(&exe)
                .env("ANVIL_BENCH_RANK", rank.to_string())
                .env("ANVIL_BENCH_ADDRS", &list)
                .env("ANVIL_RING_SHM", if shm { "1" } else { "0" })
                .env("ANVIL_BENCH_DTYPE", dtype.name())
                .stdout(if rank == 0 {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .spawn()
                .expect("spawn rank")
        })
        .collect();
    let mut results = Vec::new();
    for (rank, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().expect("rank exits");
        assert!(out.status.success(), "rank {rank} failed");
        if rank == 0 {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let mut parts = line.split_whitespace();
                if let (Some(mb), Some(s)) = (parts.next(), parts.next()) {
                    results.push((mb.parse().unwrap(), s.parse().unwrap()));
                }
            }
        }
    }
    results
}

fn run_rank(rank: usize) {
    let addrs: Vec<SocketAddr> = std::env::var("ANVIL_BENCH_ADDRS")
        .expect("addrs")
        .split(',')
        .map(|a| a.parse().expect("addr"))
        .collect();
    let listener = TcpListener::bind(addrs[rank]).expect("bind");
    let mut ring = Ring::connect(
        rank,
        addrs.len(),
        &listener,
        &addrs,
        "bench",
        RingTimeouts::default(),
    )
    .expect("ring");
    let wanted = std::env::var("ANVIL_RING_SHM").map_or(true, |v| v != "0");
    assert_eq!(
        ring.uses_shared_memory(),
        wanted,
        "rank {rank}: shared memory in use differs from what was asked"
    );
    let dtype =
        GradDtype::parse(&std::env::var("ANVIL_BENCH_DTYPE").unwrap_or_default()).expect("dtype");
    for mb in SIZES_MB {
        let mut buf = vec![1.0f32; mb * 1024 * 1024 / 4];
        ring.all_reduce_mean_as(&mut buf, dtype).expect("warmup");
        let mut times = Vec::new();
        for _ in 0..iterations(mb) {
            let t = Instant::now();
            ring.all_reduce_mean_as(&mut buf, dtype)
                .expect("all-reduce");
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        if rank == 0 {
            println!("{mb} {}", times[times.len() / 2]);
        }
    }
}

/// Runs the gloo comparison script; returns (size MB, median seconds) per size.
fn gloo(world: usize, dtype: &str) -> Result<Vec<(usize, f64)>, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/gloo_allreduce.py");
    let sizes = SIZES_MB.map(|s| s.to_string()).join(",");
    let out = Command::new("python3")
        .args([script, &world.to_string(), &sizes, dtype])
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut p = l.split_whitespace();
            Some((p.next()?.parse().ok()?, p.next()?.parse().ok()?))
        })
        .collect())
}
