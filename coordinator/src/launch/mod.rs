//! `coordinator launch`: open a run, serve the control plane, supervise generations of workers
//! (restarting the group from the last complete checkpoint when a worker is lost), and
//! conclude.
//!
//! - [`open`]: the run directory, config and record, fresh or resumed;
//! - [`inputs`]: the inputs checked before any worker starts (and why workers plan for
//!   themselves);
//! - [`control`]: where the coordinator listens, its gRPC service and TLS;
//! - [`supervise`]: one generation of workers, from start to end;
//! - [`procs`] and [`signals`]: local worker processes, and the signals a run obeys;
//! - [`conclude`]: what follows a generation: summary and exit code, or a restart;
//! - [`telemetry`]: the run's spans and metrics for OpenTelemetry;
//! - [`task`]: work other than training (embedding shares) on workers started elsewhere.

mod args;
mod conclude;
mod control;
mod inputs;
mod open;
pub(crate) mod procs;
mod signals;
mod supervise;
pub(crate) mod task;
mod telemetry;

use std::process::ExitCode;

pub use args::LaunchArgs;
use conclude::Next;
use control::{ControlPlane, Placement};
use inputs::check_inputs;
use open::OpenRun;
use supervise::Supervisor;

pub fn run(args: LaunchArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(launch(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn launch(args: LaunchArgs) -> anyhow::Result<ExitCode> {
    let mut run = OpenRun::open(&args)?;
    if run.already_finished {
        eprintln!(
            "anvil: the run in {} has already finished; nothing to do",
            run.dir.path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    check_inputs(&run.cfg, run.record.world)?;
    // Declared before the supervisor so that its spans end before the exporter stops.
    let _export = run::telemetry::start(&run::telemetry::Identity {
        service: "anvil-coordinator",
        run_id: &run.record.run_id,
        rank: None,
    });

    let placement = Placement::of(&args);
    let plane = ControlPlane::serve(&args, &run, placement).await?;
    plane.announce(&run, placement);

    let mut supervisor = Supervisor::new(&args, plane, placement, &run)?;
    loop {
        let generation = supervisor.supervise(&mut run).await?;
        match supervisor
            .conclude(generation, &mut run, args.max_restarts)
            .await?
        {
            Next::Restart => continue,
            Next::Exit(code) => return Ok(code),
        }
    }
}
