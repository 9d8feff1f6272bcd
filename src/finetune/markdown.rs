//! report.md of a `finetune` run: what its report.json says, for a person.

use super::Report;

/// The Markdown lines linking the plots written beside report.md.
pub fn plot_links(plots: &[String]) -> String {
    if plots.is_empty() {
        return String::new();
    }
    let mut s = String::from("\n## Plots\n\n");
    for p in plots {
        s.push_str(&format!("![{p}]({p})\n\n"));
    }
    s
}

impl Report {
    /// report.md's data, training, test, timings and warnings sections.
    pub fn to_markdown(&self) -> String {
        let mut s = format!("# edge-mnv2 fine-tuning report\n\nData: `{}`  \nBackbone: `{}` (sha256 `{}`)  \nClasses: {}\n\n", self.data, self.model.name, self.model.sha256, self.classes.join(", "));
        s.push_str("## Data\n\n| class | train | val | test |\n|---|---|---|---|\n");
        for c in &self.classes {
            s.push_str(&format!(
                "| {c} | {} | {} | {} |\n",
                self.counts.train[c], self.counts.val[c], self.counts.test[c]
            ));
        }
        s.push('\n');
        for n in &self.split_notes {
            s.push_str(&format!("- {n}\n"));
        }
        s.push_str(&format!(
            "- training embeddings: {} (views {} and {} random augmented view(s) per image; validation and test images: views {})\n- unreadable images skipped: {}\n- non-image files ignored: {}\n\n",
            self.counts.train_views, self.views.join(", "), self.augment, self.views.join(", "), self.counts.unreadable, self.counts.ignored_files
        ));
        s.push_str(&format!(
            "## Training\n\nSeed {}, Adam lr {}, batch {}, L2 {}, class weighting {}, standardised {}.  \nRan {} epoch(s), best epoch {} (validation loss {}){}.\n\n",
            self.seed,
            self.config.lr,
            self.config.batch_size,
            self.config.weight_decay,
            self.config.class_weighting,
            self.config.standardize,
            self.training.epochs_run,
            self.training.best_epoch,
            self.training.best_val_loss.map_or("n/a".into(), |l| format!("{l:.4}")),
            if self.training.stopped_early { ", stopped early" } else { "" }
        ));
        s.push_str("## Held-out test set\n\n");
        match &self.test {
            Some(e) => s.push_str(&e.to_markdown(50)),
            None => s.push_str("The test split is empty: no held-out metrics.\n"),
        }
        let t = &self.timings;
        s.push_str(&format!(
            "\n## Timings\n\nload {:.2} s, embed {:.2} s ({} computed, {} from cache), train {:.2} s, evaluate {:.2} s, total {:.2} s\n",
            t.load_s, t.embed_s, self.embeddings.computed, self.embeddings.cached, t.train_s, t.eval_s, t.total_s
        ));
        if !self.unreadable.is_empty() {
            s.push_str("\n## Unreadable images\n\n");
            for u in &self.unreadable {
                s.push_str(&format!("- {}\n", u.reason));
            }
        }
        s.push_str(&self.warnings_markdown());
        s
    }

    /// What the data left out or could not support, when anything was: links not followed,
    /// held-out copies of training images, classes missing from validation or test, and a
    /// temperature not fitted.
    fn warnings_markdown(&self) -> String {
        let mut s = String::new();
        for (list, what) in [
            (&self.classes_without_validation, "validation"),
            (&self.classes_without_test, "test"),
        ] {
            if !list.is_empty() {
                s.push_str(&format!(
                    "- class(es) with no {what} image: {}\n",
                    list.join(", ")
                ));
            }
        }
        if let Some(why) = &self.temperature_choice.not_fitted {
            s.push_str(&format!("- no temperature fitted: {why}\n"));
        }
        for d in &self.duplicates {
            s.push_str(&format!(
                "- left out of {}: {} has the bytes of the training image {} (sha256 {})\n",
                d.split.name(),
                d.file,
                d.train_file,
                d.sha256
            ));
        }
        for l in &self.skipped_links {
            s.push_str(&format!("- {l}\n"));
        }
        if s.is_empty() {
            return s;
        }
        format!("\n## Warnings\n\n{s}")
    }
}
