//! Opening a run: fresh from a config (a new run directory with the resolved config, a token and
//! the run record), or continued from its directory (`--resume`, or `--resume-existing` when
//! the `--run-dir` of a restarted coordinator already holds its run) at its last complete
//! checkpoint.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use run::{RunConfig, RunDir, RunRecord};

use super::args::LaunchArgs;

/// A run ready to be served: its config, directory, record and token.
pub struct OpenRun {
    pub cfg: RunConfig,
    pub dir: RunDir,
    pub record: RunRecord,
    pub token: String,
    /// Continued with `--resume`: from this checkpoint (None: no complete checkpoint yet, so
    /// the run starts over).
    pub resumed: Option<Option<PathBuf>>,
    /// Found finished by `--resume-existing`: nothing left to do (the run is left untouched).
    pub already_finished: bool,
}

/// `--workers-per-node`, else the devices per node the config asks for (one worker each, as
/// Lightning runs one process per device), else 1. A flag that differs from the config is
/// taken, and said.
/// `given` is the `--config` of a run not resumed (`--resume` keeps the run's own worker count
/// unless flags give another).
fn workers_per_node(args: &LaunchArgs, given: Option<&RunConfig>) -> usize {
    let asked = given.and_then(RunConfig::devices_per_node);
    match (args.workers_per_node, asked) {
        (Some(k), Some((n, field))) if k != n => {
            eprintln!("anvil: --workers-per-node {k} is used instead of {field}");
            k
        }
        (Some(k), _) => k,
        (None, Some((n, field))) => {
            eprintln!("anvil: {n} worker(s) per node, one per device ({field})");
            n
        }
        (None, None) => 1,
    }
}

impl OpenRun {
    pub fn open(args: &LaunchArgs) -> anyhow::Result<Self> {
        // The `--config` of a run not resumed, read once.
        let given = match (&args.resume, &args.config) {
            (None, Some(path)) => Some(RunConfig::from(
                configs::load_file(path, &args.overrides).map_err(|e| anyhow!("{e}"))?,
            )),
            _ => None,
        };
        let world = args.nodes * workers_per_node(args, given.as_ref());
        if world == 0 {
            bail!("--nodes and --workers-per-node must be at least 1");
        }
        let given_token = args
            .token_file
            .as_deref()
            .map(read_token_file)
            .transpose()?;
        let mut open = match (&args.resume, &args.run_dir) {
            (Some(dir), _) => Self::resume(dir, args, world)?,
            (None, Some(dir)) if args.resume_existing && RunDir::holds_run(dir) => {
                let open = Self::resume(dir, args, world)?;
                // `--resume` takes the run's own worker count when none is given; here the
                // command line is the one that started the run, so it must agree.
                if open.record.world != world {
                    bail!(
                        "--resume-existing: {} was started with {} workers, not {world}; keep \
                         --nodes as it was, or choose another --run-dir",
                        dir.display(),
                        open.record.world
                    );
                }
                open.check_same_config(args, given.as_ref())?;
                open
            }
            _ => Self::create(args, world, given)?,
        };
        if let Some(token) = given_token {
            if token != open.token {
                open.dir.set_token(&token)?;
                open.token = token;
            }
        }
        if args.resume_existing && open.record.status == "finished" {
            open.already_finished = true;
        } else if open.resumed.is_some() {
            open.resumed = Some(open.rewind()?);
        }
        Ok(open)
    }

    /// `--resume-existing` continues a run only with the config it was started with: a
    /// different `--config` (or `--set`) under the same `--run-dir` is a mistake to report, not
    /// a run to train on quietly with the old config.
    fn check_same_config(
        &self,
        args: &LaunchArgs,
        given: Option<&RunConfig>,
    ) -> anyhow::Result<()> {
        let (Some(path), Some(given)) = (&args.config, given) else {
            return Ok(());
        };
        let (given, stored) = (given.to_yaml(), self.cfg.to_yaml());
        if given == stored {
            return Ok(());
        }
        let difference = given
            .lines()
            .zip(stored.lines())
            .find(|(a, b)| a != b)
            .map(|(a, b)| {
                format!(
                    " (first difference: `{}` here, `{}` in the run)",
                    a.trim(),
                    b.trim()
                )
            })
            .unwrap_or_default();
        bail!(
            "--resume-existing: {} holds a run started with another config than --config {}{difference}; \
             continue it with its own config, or choose another --run-dir",
            self.dir.path.display(),
            path.display()
        )
    }

    /// The last complete checkpoint, where the run continues. Rank 0's loggers drop the
    /// metrics logged after it when they open (`worker::loggers`); without a checkpoint the
    /// run starts over in a new `version_N` of its logs.
    pub fn rewind(&self) -> anyhow::Result<Option<PathBuf>> {
        Ok(self.cfg.latest_checkpoint(&self.dir.path))
    }

    /// The checkpoint the workers of the first generation start from ("" for none).
    pub fn resume_from(&self) -> String {
        match &self.resumed {
            Some(Some(p)) => p.display().to_string(),
            _ => String::new(),
        }
    }

    fn resume(dir: &Path, args: &LaunchArgs, world: usize) -> anyhow::Result<Self> {
        let run = RunDir::open(dir)?;
        let mut record = run.read_record()?;
        if let Some(d) = &args.grad_reduce_dtype {
            record.grad_reduce_dtype = d.clone();
        }
        let cfg = RunConfig::from(
            configs::load_file(&run.config_path(), &[]).map_err(|e| anyhow!("{e}"))?,
        );
        if record.world != world && (args.nodes, args.workers_per_node.unwrap_or(1)) != (1, 1) {
            bail!(
                "{} was started with {} workers; resume it with the same number (got {world})",
                dir.display(),
                record.world
            );
        }
        Ok(OpenRun {
            cfg,
            token: run.token()?,
            dir: run,
            record,
            resumed: Some(None),
            already_finished: false,
        })
    }

    /// A new run of `given`, the `--config` as read by [`OpenRun::open`].
    fn create(args: &LaunchArgs, world: usize, given: Option<RunConfig>) -> anyhow::Result<Self> {
        let cfg = given.ok_or_else(|| anyhow!("--config is required"))?;
        let run_name = cfg.run_name();
        let dir = match &args.run_dir {
            Some(d) if RunDir::holds_run(d) => bail!(
                "{} already holds a run; continue it with --resume {0}, or choose another --run-dir",
                d.display()
            ),
            Some(d) => d.clone(),
            None => RunDir::fresh_path(Path::new("runs"), &run_name),
        };
        let run = RunDir::create(&dir, &cfg.to_yaml())?;
        let record = RunRecord {
            run_id: run_name,
            world,
            generation: 0,
            restarts: 0,
            status: "starting".into(),
            grad_reduce_dtype: args
                .grad_reduce_dtype
                .clone()
                .unwrap_or_else(|| "fp32".into()),
        };
        run.write_record(&record)?;
        Ok(OpenRun {
            cfg,
            token: run.token()?,
            dir: run,
            record,
            resumed: None,
            already_finished: false,
        })
    }

    /// Records the run's status ("running", "finished", ...).
    pub fn set_status(&mut self, status: &str) -> anyhow::Result<()> {
        self.record.status = status.into();
        self.dir.write_record(&self.record)
    }
}

/// The run token in `--token-file`: one line of printable ASCII (it travels as gRPC metadata).
pub(crate) fn read_token_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--token-file: cannot read {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        bail!("--token-file: {} is empty", path.display());
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        bail!(
            "--token-file: the token in {} must be printable ASCII without spaces",
            path.display()
        );
    }
    Ok(token.to_string())
}
