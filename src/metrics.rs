//! Held-out metrics: accuracy, balanced accuracy, per-class precision / recall / F1 / support,
//! macro and weighted averages, the confusion matrix, and which files were misclassified.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClassMetrics {
    pub class: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Misclassified {
    pub file: String,
    pub actual: String,
    pub predicted: String,
    pub confidence: f32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Evaluation {
    pub samples: usize,
    pub accuracy: f64,
    pub balanced_accuracy: f64,
    pub macro_precision: f64,
    pub macro_recall: f64,
    pub macro_f1: f64,
    pub weighted_precision: f64,
    pub weighted_recall: f64,
    pub weighted_f1: f64,
    pub per_class: Vec<ClassMetrics>,
    /// `confusion_matrix[actual][predicted]`.
    pub confusion_matrix: Vec<Vec<usize>>,
    pub misclassified: Vec<Misclassified>,
    /// Share of these (known) images the novelty score labels `unknown`; beside the closed-set
    /// figures above, which always take the most probable class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected_rate: Option<f64>,
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// `predictions[i]` = (predicted class, its probability) for the sample with `actual[i]`.
pub fn evaluate(
    classes: &[String],
    actual: &[usize],
    predictions: &[(usize, f32)],
    files: &[String],
) -> Evaluation {
    let c = classes.len();
    let mut cm = vec![vec![0usize; c]; c];
    let mut misclassified = Vec::new();
    for (i, (&a, &(p, conf))) in actual.iter().zip(predictions).enumerate() {
        cm[a][p] += 1;
        if a != p {
            misclassified.push(Misclassified {
                file: files.get(i).cloned().unwrap_or_default(),
                actual: classes[a].clone(),
                predicted: classes[p].clone(),
                confidence: conf,
            });
        }
    }
    misclassified.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
    let n = actual.len();
    let correct: usize = (0..c).map(|k| cm[k][k]).sum();
    let per_class: Vec<ClassMetrics> = (0..c)
        .map(|k| {
            let tp = cm[k][k];
            let support: usize = cm[k].iter().sum();
            let predicted: usize = (0..c).map(|a| cm[a][k]).sum();
            let precision = ratio(tp, predicted);
            let recall = ratio(tp, support);
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            ClassMetrics {
                class: classes[k].clone(),
                precision,
                recall,
                f1,
                support,
            }
        })
        .collect();
    // Classes absent from the held-out set would count as zero recall; they are left out of the
    // averages (as scikit-learn's balanced accuracy does).
    let present: Vec<&ClassMetrics> = per_class.iter().filter(|m| m.support > 0).collect();
    let mean = |f: &dyn Fn(&ClassMetrics) -> f64| {
        if present.is_empty() {
            0.0
        } else {
            present.iter().map(|m| f(m)).sum::<f64>() / present.len() as f64
        }
    };
    let weighted = |f: &dyn Fn(&ClassMetrics) -> f64| {
        if n == 0 {
            0.0
        } else {
            per_class
                .iter()
                .map(|m| f(m) * m.support as f64)
                .sum::<f64>()
                / n as f64
        }
    };
    Evaluation {
        samples: n,
        accuracy: ratio(correct, n),
        balanced_accuracy: mean(&|m| m.recall),
        macro_precision: mean(&|m| m.precision),
        macro_recall: mean(&|m| m.recall),
        macro_f1: mean(&|m| m.f1),
        weighted_precision: weighted(&|m| m.precision),
        weighted_recall: weighted(&|m| m.recall),
        weighted_f1: weighted(&|m| m.f1),
        per_class,
        confusion_matrix: cm,
        misclassified,
        rejected_rate: None,
    }
}

impl Evaluation {
    /// A Markdown rendering: summary, per-class table, confusion matrix, misclassified files.
    pub fn to_markdown(&self, max_misclassified: usize) -> String {
        let mut s = format!(
            "| metric | value |\n|---|---|\n| samples | {} |\n| accuracy | {:.4} |\n| balanced accuracy | {:.4} |\n| macro F1 | {:.4} |\n| weighted F1 | {:.4} |\n\n",
            self.samples, self.accuracy, self.balanced_accuracy, self.macro_f1, self.weighted_f1
        );
        s.push_str("| class | precision | recall | F1 | support |\n|---|---|---|---|---|\n");
        for m in &self.per_class {
            s.push_str(&format!(
                "| {} | {:.4} | {:.4} | {:.4} | {} |\n",
                m.class, m.precision, m.recall, m.f1, m.support
            ));
        }
        s.push_str(&format!(
            "| macro avg | {:.4} | {:.4} | {:.4} | {} |\n| weighted avg | {:.4} | {:.4} | {:.4} | {} |\n\n",
            self.macro_precision, self.macro_recall, self.macro_f1, self.samples, self.weighted_precision, self.weighted_recall, self.weighted_f1, self.samples
        ));
        s.push_str("Confusion matrix (rows: actual, columns: predicted)\n\n| |");
        for m in &self.per_class {
            s.push_str(&format!(" {} |", m.class));
        }
        s.push_str("\n|---|");
        s.push_str(&"---|".repeat(self.per_class.len()));
        s.push('\n');
        for (m, row) in self.per_class.iter().zip(&self.confusion_matrix) {
            s.push_str(&format!("| **{}** |", m.class));
            for v in row {
                s.push_str(&format!(" {v} |"));
            }
            s.push('\n');
        }
        s.push_str(&format!("\nMisclassified: {}\n", self.misclassified.len()));
        if !self.misclassified.is_empty() {
            s.push_str("\n| file | actual | predicted | confidence |\n|---|---|---|---|\n");
            for m in self.misclassified.iter().take(max_misclassified) {
                s.push_str(&format!(
                    "| {} | {} | {} | {:.3} |\n",
                    m.file, m.actual, m.predicted, m.confidence
                ));
            }
            if self.misclassified.len() > max_misclassified {
                s.push_str(&format!(
                    "\n… and {} more (all in report.json)\n",
                    self.misclassified.len() - max_misclassified
                ));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_confusion() {
        let classes: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        // a: 3 samples, 2 right, 1 -> b; b: 1 sample, right; c: 2 samples, 1 right, 1 -> a
        let actual = [0, 0, 0, 1, 2, 2];
        let pred = [(0, 0.9), (0, 0.8), (1, 0.7), (1, 0.9), (2, 0.6), (0, 0.95)];
        let files: Vec<String> = (0..6).map(|i| format!("f{i}")).collect();
        let e = evaluate(&classes, &actual, &pred, &files);
        assert_eq!(
            e.confusion_matrix,
            vec![vec![2, 1, 0], vec![0, 1, 0], vec![1, 0, 1]]
        );
        assert!((e.accuracy - 4.0 / 6.0).abs() < 1e-12);
        assert!((e.balanced_accuracy - (2.0 / 3.0 + 1.0 + 0.5) / 3.0).abs() < 1e-12);
        let a = &e.per_class[0];
        assert!((a.precision - 2.0 / 3.0).abs() < 1e-12 && (a.recall - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(e.per_class[1].precision, 0.5);
        assert_eq!(e.misclassified[0].file, "f5");
        assert_eq!(e.misclassified.len(), 2);
        assert!(e.to_markdown(10).contains("| **c** | 1 | 0 | 1 |"));
    }
}
