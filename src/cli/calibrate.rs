//! `calibrate`: measure every precision × thread count here and write this board's choice.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use edge_mnv2::calibrate::{self, CalibrateOptions};
use edge_mnv2::{calibration, loader};

use super::args::CalibrateArgs;
use super::errors;

pub fn run(args: &CalibrateArgs) -> Result<ExitCode> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.min_agreement),
        "--min-agreement must be between 0 and 1, got {}",
        args.min_agreement
    );
    let resolved = loader::resolve(args.model.as_deref())?;
    calibrate::check_calibratable(&resolved)?;
    let opts = CalibrateOptions {
        images: images(args.images.as_deref())?,
        threads: if args.threads.is_empty() {
            calibrate::default_threads()
        } else {
            args.threads.clone()
        },
        runs: args.runs,
        min_top1_agreement: args.min_agreement,
    };
    eprintln!(
        "calibrating {} on {} image(s), {} timed frames per setting ({})",
        resolved.spec.name,
        opts.images.len(),
        args.runs,
        calibration::board_id()
    );
    let cal = calibrate::calibrate(&resolved, &opts, |m| {
        eprintln!(
            "  {} x{}: median {:.2} ms, top-1 agreement {:.1}%",
            m.precision,
            m.threads,
            m.median_ms,
            m.top1_agreement * 100.0
        )
    })?;
    let path = args.out.clone().unwrap_or_else(calibration::default_path);
    cal.save(&path)?;
    let mut stdout = errors::stdout();
    if args.json {
        writeln!(stdout, "{}", serde_json::to_string_pretty(&cal)?)?;
    } else {
        write!(stdout, "{}", cal.to_table())?;
        writeln!(
            stdout,
            "chosen: {} on {} thread(s); written to {}",
            cal.choice.precision,
            cal.choice.threads,
            path.display()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Where `calibrate` looks without `--images`: a source checkout's image list, from its root.
const CHECKOUT_IMAGES: &str = "calibration";

/// The images to measure on: `--images`, else the checkout's list; anywhere else (an installed
/// board has no such folder, and the list's images are not redistributable) the error says what
/// to pass.
fn images(dir: Option<&Path>) -> Result<Vec<std::path::PathBuf>> {
    if let Some(dir) = dir {
        return calibrate::images_in(dir);
    }
    let dir = Path::new(CHECKOUT_IMAGES);
    anyhow::ensure!(
        dir.is_dir(),
        "no images to calibrate on: give --images DIR, any folder of images (such as the frames \
         `capture` saved); without it calibrate reads {CHECKOUT_IMAGES}/images.txt, which only a \
         source checkout has, from its root"
    );
    calibrate::images_in(dir)
}
