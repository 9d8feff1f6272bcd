//! `finetune` and `evaluate`: train a head on a labelled folder, or measure one on a test folder.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use edge_mnv2::augment::AugmentParams;
use edge_mnv2::finetune::{self, FinetuneOptions, Unreadable};
use edge_mnv2::head::TrainConfig;
use edge_mnv2::loader;
use edge_mnv2::metrics::Evaluation;

use super::args::{EvaluateArgs, FinetuneArgs};
use super::{errors, progress};

/// What `evaluate --json` prints; fields in name order, the order it has always printed.
#[derive(Serialize)]
struct EvaluateReport<'a> {
    data: &'a Path,
    head: &'a Path,
    test: &'a Evaluation,
    unreadable: &'a [Unreadable],
}

impl FinetuneArgs {
    fn options(&self) -> FinetuneOptions {
        FinetuneOptions {
            data: self.data.clone(),
            out: self.out.clone(),
            split: self.split,
            train: TrainConfig {
                epochs: self.epochs,
                patience: self.patience,
                lr: self.lr,
                batch_size: self.batch_size,
                weight_decay: self.weight_decay,
                class_weighting: !self.no_class_weights,
                standardize: !self.no_standardize,
                seed: self.seed,
            },
            augment: self.augment,
            augment_params: AugmentParams {
                flip: !self.no_flip,
                rotate_deg: self.rotate,
                zoom: self.zoom,
            },
            threads: self.run.threads(),
            cache_dir: self.run.cache_dir(),
        }
    }
}

pub fn finetune(args: &FinetuneArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let opts = args.options();
    let cancel = progress::cancel_on_ctrl_c();
    let backbone = loader::backbone(&args.model.choice(), false)?;
    let progress = progress::Terminal::new();
    let report = finetune::finetune(&backbone, &opts, started, cancel, &progress)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        match &report.test {
            Some(t) => writeln!(
                out,
                "test accuracy {:.4}, balanced accuracy {:.4}, macro F1 {:.4} on {} held-out images",
                t.accuracy, t.balanced_accuracy, t.macro_f1, t.samples
            )?,
            None => writeln!(out, "no held-out test images: no test metrics")?,
        }
        writeln!(
            out,
            "{} epochs (best {}), {:.1} s total; wrote {}",
            report.training.epochs_run,
            report.training.best_epoch,
            report.timings.total_s,
            opts.out.join("head.json").display()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn evaluate(args: &EvaluateArgs) -> Result<ExitCode> {
    let cancel = progress::cancel_on_ctrl_c();
    let c = loader::classifier(&args.head, &args.model.choice())?;
    let progress = progress::Terminal::new();
    let (eval, unreadable) = finetune::evaluate_folder(
        &c.backbone,
        &c.head,
        &args.testdir,
        args.run.cache_dir(),
        args.run.threads(),
        cancel,
        &progress,
    )?;
    for u in &unreadable {
        errors::print_reason(&u.reason);
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let report = EvaluateReport {
            data: &args.testdir,
            head: &args.head,
            test: &eval,
            unreadable: &unreadable,
        };
        // Through a `Value`, whose maps sort their keys: the nested metrics have always been
        // printed in name order.
        let sorted = serde_json::to_value(&report)?;
        writeln!(out, "{}", serde_json::to_string_pretty(&sorted)?)?;
    } else {
        writeln!(out, "{}", eval.to_markdown(50))?;
    }
    Ok(if unreadable.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
