use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use controller::loader::{self, LoadError};
use controller::validation;

/// The mesh controller: configuration, push and certificate authority.
#[derive(Debug, Parser)]
#[command(name = "controller", version, about, long_about = None, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Directory of Kubernetes and Istio YAML to serve (local mode).
    #[arg(long, env = "WEFT_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controller (the default when no subcommand is given).
    Run(RunArgs),
    /// Load and validate YAML files or directories; exits non-zero on any error.
    Validate {
        /// Files or directories (walked recursively for .yaml/.yml files).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Write the CustomResourceDefinitions of the Istio kinds into a directory.
    Crdgen {
        /// Output directory.
        #[arg(long, default_value = "deploy/crds")]
        out: PathBuf,
    },
}

fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!(
        "the controller is not built yet (config dir {:?})",
        args.config_dir
    )
}

fn validate(paths: &[PathBuf]) -> ExitCode {
    let report = loader::load_paths(paths);
    let mut error_count = 0usize;
    for error in &report.errors {
        error_count += 1;
        println!("{error}");
    }
    let mut valid = 0usize;
    for loaded in &report.resources {
        let errors = validation::validate(&loaded.resource);
        if errors.is_empty() {
            valid += 1;
        }
        let resource = &loaded.resource;
        let identity = if resource.namespace().is_empty() {
            resource.name().to_owned()
        } else {
            format!("{}/{}", resource.namespace(), resource.name())
        };
        for error in errors {
            error_count += 1;
            println!(
                "{} {} {identity}: {}: {}",
                loaded.location,
                resource.kind(),
                error.path,
                error.reason
            );
        }
    }
    let read_failures = report
        .errors
        .iter()
        .filter(|e| matches!(e, LoadError::Read { .. }))
        .count();
    println!(
        "{} file(s), {} document(s): {} valid, {} with errors; {} error(s){}",
        report.files,
        report.documents,
        valid,
        report.documents - valid,
        error_count,
        if read_failures > 0 {
            format!(" ({read_failures} unreadable path(s))")
        } else {
            String::new()
        },
    );
    if error_count == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn crdgen(out: &PathBuf) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(out)?;
    for crd in controller::crd::crds() {
        let path = out.join(controller::crd::file_name(&crd));
        std::fs::write(&path, controller::crd::to_yaml(&crd)?)?;
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    match &args.command {
        None => run(&args.run),
        Some(Command::Run(run_args)) => run(run_args),
        Some(Command::Validate { paths }) => Ok(validate(paths)),
        Some(Command::Crdgen { out }) => crdgen(out),
    }
}
