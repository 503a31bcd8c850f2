//! `coordinator config validate|show|reference`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use configs::{AnyConfig, ConfigErrors, Family};

/// A config file plus `--set` overrides; shared by every command that takes a config.
#[derive(Args, Debug, Clone)]
pub struct ConfigArgs {
    /// Path to a scModelForge or sleap-nn YAML config (the family is detected from its sections)
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: PathBuf,

    /// Override one field, typed and validated like the file: `--set training.optimizer.lr=3e-4`.
    /// The value is YAML, so lists (`--set data.paths=[a.h5ad,b.h5ad]`) and `null` work.
    /// Repeatable; later flags win.
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    pub overrides: Vec<String>,
}

impl ConfigArgs {
    pub fn load(&self) -> Result<AnyConfig, ConfigErrors> {
        configs::load_file(&self.config, &self.overrides)
    }
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Check a config: prints a one-line summary and exits 0, or prints every problem and exits 2
    Validate(ConfigArgs),
    /// Print the fully resolved config (defaults filled in, overrides applied) as YAML
    Show(ConfigArgs),
    /// Write the field reference of a config family (every dotted key with its type, default,
    /// allowed values and description) as Markdown, generated from the typed schema
    Reference(ReferenceArgs),
}

#[derive(Args, Debug)]
pub struct ReferenceArgs {
    /// Which family's fields
    #[arg(long, value_enum)]
    pub family: FamilyArg,
    /// Write to this file instead of stdout
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FamilyArg {
    Scmodelforge,
    SleapNn,
}

impl FamilyArg {
    fn family(self) -> Family {
        match self {
            FamilyArg::Scmodelforge => Family::ScModelForge,
            FamilyArg::SleapNn => Family::SleapNn,
        }
    }

    fn flag(self) -> &'static str {
        match self {
            FamilyArg::Scmodelforge => "scmodelforge",
            FamilyArg::SleapNn => "sleap-nn",
        }
    }
}

/// Exit code for a config that does not validate (clap uses 2 for usage errors too).
const INVALID: u8 = 2;

pub fn run(cmd: ConfigCommand) -> ExitCode {
    let (args, show) = match &cmd {
        ConfigCommand::Validate(a) => (a, false),
        ConfigCommand::Show(a) => (a, true),
        ConfigCommand::Reference(r) => return reference(r),
    };
    match args.load() {
        Ok(config) => {
            if show {
                print!("{}", config.to_yaml());
            } else {
                println!("{}: {}", args.config.display(), summary(&config));
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            let n = errors.0.len();
            eprintln!(
                "{}: {n} problem{} found",
                args.config.display(),
                if n == 1 { "" } else { "s" }
            );
            ExitCode::from(INVALID)
        }
    }
}

fn reference(args: &ReferenceArgs) -> ExitCode {
    let command = format!(
        "coordinator config reference --family {} --out docs/config-reference-{0}.md",
        args.family.flag()
    );
    let text = configs::reference::markdown(args.family.family(), &command);
    match &args.out {
        None => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Some(path) => match std::fs::write(path, text) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: cannot write {}: {e}", path.display());
                ExitCode::FAILURE
            }
        },
    }
}

/// One line that tells a user what the config will do.
pub fn summary(config: &AnyConfig) -> String {
    match config {
        AnyConfig::ScModelForge(c) => {
            let m = &c.model;
            let task = match &c.finetune {
                Some(f) => format!(
                    "fine-tune {} on '{}'{}",
                    f.head.task,
                    f.label_key,
                    if f.lora.enabled { " with LoRA" } else { "" }
                ),
                None => "pretrain".to_string(),
            };
            let data = match c.data.source {
                configs::scmodelforge::DataSource::Local => {
                    format!("{} local file(s)", c.data.paths.len())
                }
                configs::scmodelforge::DataSource::CellxgeneCensus => {
                    format!("CELLxGENE Census ({})", c.data.census.organism)
                }
            };
            format!(
                "valid scModelForge config: {task} {} ({} layers, hidden {}, {} heads), \
                 {} tokenizer, {data}, batch {} x {} epochs, precision {}",
                m.architecture,
                m.num_layers,
                m.hidden_dim,
                m.num_heads,
                c.tokenizer.strategy,
                c.training.batch_size,
                c.training.max_epochs,
                c.training.precision
            )
        }
        AnyConfig::SleapNn(c) => format!("valid sleap-nn config: {}", c.summary()),
    }
}
