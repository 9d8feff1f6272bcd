//! `finetune` and `evaluate`: train a head on a labelled folder, or measure one on a test folder.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use edge_mnv2::augment::AugmentParams;
use edge_mnv2::confidence::CalibrationReport;
use edge_mnv2::discover::Skipped;
use edge_mnv2::finetune::{self, FinetuneOptions, Unreadable};
use edge_mnv2::fsutil;
use edge_mnv2::head::TrainConfig;
use edge_mnv2::loader;
use edge_mnv2::metrics::Evaluation;
use edge_mnv2::novelty::UnknownReport;

use super::args::{EvaluateArgs, FinetuneArgs};
use super::{errors, progress};

/// What `evaluate --json` prints; fields in name order, the order it has always printed.
#[derive(Serialize)]
struct EvaluateReport<'a> {
    calibration: &'a CalibrationReport,
    data: &'a Path,
    head: &'a Path,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    plots: Vec<String>,
    /// Folder links not followed (each also a warning line on stderr).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    skipped_links: &'a [Skipped],
    test: &'a Evaluation,
    #[serde(skip_serializing_if = "Option::is_none")]
    unknown: Option<&'a UnknownReport>,
    unreadable: &'a [Unreadable],
    views: Vec<&'static str>,
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
            views: self.views,
            keep_rate: self.keep_rate,
            unknown: self.unknown.clone(),
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
    let mut out = errors::stdout();
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
        if let (Some(t), Some(c)) = (&report.test, &report.calibration) {
            writeln!(
                out,
                "known test images rejected as unknown {:.1}%; ECE {:.4} before, {:.4} after temperature {:.3}",
                t.rejected_rate.unwrap_or(0.0) * 100.0,
                c.ece_before,
                c.ece_after,
                c.temperature
            )?;
        }
        if let Some(u) = &report.unknown {
            writeln!(
                out,
                "unknown images: AUROC {}, {:.1}% of {} accepted",
                u.auroc.map_or("n/a".into(), |a| format!("{a:.4}")),
                u.accepted_rate * 100.0,
                u.images
            )?;
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
    let views = args.views.unwrap_or(c.head.views);
    let (assessment, unreadable, skipped_links) = finetune::evaluate_folder(
        &c.backbone,
        &c.head,
        &args.testdir,
        views,
        args.unknown.as_deref(),
        args.run.cache_dir(),
        args.run.threads(),
        cancel,
        &progress,
    )?;
    for u in &unreadable {
        errors::print_reason(&u.reason);
    }
    let plots = match &args.out {
        Some(_) => finetune::plots(None, Some(&assessment), &c.head),
        None => Vec::new(),
    };
    let report = EvaluateReport {
        calibration: &assessment.calibration,
        data: &args.testdir,
        head: &args.head,
        plots: plots.iter().map(|(name, _)| name.clone()).collect(),
        skipped_links: &skipped_links,
        test: &assessment.test,
        unknown: assessment.unknown.as_ref(),
        unreadable: &unreadable,
        views: views.names(),
    };
    // Through a `Value`, whose maps sort their keys: the nested metrics have always been
    // printed in name order.
    let json = serde_json::to_string_pretty(&serde_json::to_value(&report)?)?;
    let markdown = format!(
        "# edge-mnv2 evaluation\n\nData: `{}`  \nHead: `{}`  \nViews: {}\n\n{}{}{}",
        args.testdir.display(),
        args.head.display(),
        views.names().join(", "),
        assessment.test.to_markdown(50),
        finetune::assessment_markdown(&assessment, &c.head),
        finetune::plot_links(&report.plots)
    );
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create the output directory", dir.display()))?;
        for (name, svg) in &plots {
            fsutil::write_atomic(&dir.join(name), svg.as_bytes())?;
        }
        fsutil::write_atomic(&dir.join("report.json"), json.as_bytes())?;
        fsutil::write_atomic(&dir.join("report.md"), markdown.as_bytes())?;
    }
    let mut out = errors::stdout();
    if args.json {
        writeln!(out, "{json}")?;
    } else {
        writeln!(out, "{markdown}")?;
    }
    Ok(if unreadable.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
