//! The service's counters ([`Stats`]), the latency [`Histogram`] and their Prometheus text
//! exposition (what `GET /metrics` serves).

use std::collections::BTreeMap;

/// Upper bounds (seconds) of the latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0];

/// Cumulative Prometheus-style histogram.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    counts: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    pub fn observe(&mut self, seconds: f64) {
        for (bound, c) in LATENCY_BUCKETS.iter().zip(self.counts.iter_mut()) {
            if seconds <= *bound {
                *c += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct MqttStats {
    pub published: u64,
    pub dropped: u64,
    pub connected: bool,
}

/// Everything the service counts since it started.
#[derive(Debug, Default)]
pub struct Stats {
    pub captured: u64,
    pub classified: u64,
    /// Frames whose novelty was above the head's threshold.
    pub novel: u64,
    pub dropped: u64,
    pub frame_errors: u64,
    pub source_errors: u64,
    pub reloads_ok: u64,
    pub reloads_refused: u64,
    /// Head installs and rollbacks (rollout commands) by outcome.
    pub rollouts_ok: u64,
    pub rollouts_refused: u64,
    /// MQTT (when configured): results published, results dropped from the full publish queue
    /// (oldest first; the broker was slow or down), and whether the broker connection is up.
    pub mqtt: Option<MqttStats>,
    /// Classified frames by reported label.
    pub per_class: BTreeMap<String, u64>,
    pub latency: Histogram,
}

/// The Prometheus text exposition of `s`. `labels` are the prediction labels exported even at 0
/// (the current head's classes and the unknown label), so a dashboard sees every class from the
/// start rather than only those already predicted.
pub fn exposition(s: &Stats, source_up: bool, labels: &[&str]) -> String {
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, value: u64| {
        out.push_str(&format!(
            "# HELP edge_mnv2_{name} {help}\n# TYPE edge_mnv2_{name} counter\nedge_mnv2_{name} {value}\n"
        ));
    };
    counter(
        "frames_captured_total",
        "Frames read from the source.",
        s.captured,
    );
    counter("frames_total", "Frames classified.", s.classified);
    counter(
        "frames_novel_total",
        "Frames farther from the training images than the head's novelty threshold (labelled unknown).",
        s.novel,
    );
    counter(
        "frames_dropped_total",
        "Frames replaced by a newer one before inference took them.",
        s.dropped,
    );
    counter(
        "frame_errors_total",
        "Frames that could not be decoded or classified.",
        s.frame_errors,
    );
    counter(
        "source_errors_total",
        "Failures to open or read the source (each followed by a reopen).",
        s.source_errors,
    );
    out.push_str("# HELP edge_mnv2_source_up Whether the frame source is open and delivering.\n# TYPE edge_mnv2_source_up gauge\n");
    out.push_str(&format!("edge_mnv2_source_up {}\n", u8::from(source_up)));
    out.push_str("# HELP edge_mnv2_head_reloads_total Head reloads by outcome.\n# TYPE edge_mnv2_head_reloads_total counter\n");
    out.push_str(&format!(
        "edge_mnv2_head_reloads_total{{result=\"ok\"}} {}\nedge_mnv2_head_reloads_total{{result=\"refused\"}} {}\n",
        s.reloads_ok, s.reloads_refused
    ));
    out.push_str("# HELP edge_mnv2_head_rollouts_total Head installs and rollbacks by outcome.\n# TYPE edge_mnv2_head_rollouts_total counter\n");
    out.push_str(&format!(
        "edge_mnv2_head_rollouts_total{{result=\"ok\"}} {}\nedge_mnv2_head_rollouts_total{{result=\"refused\"}} {}\n",
        s.rollouts_ok, s.rollouts_refused
    ));
    if let Some(m) = s.mqtt {
        out.push_str(&format!(
            "# HELP edge_mnv2_mqtt_published_total Results handed to the MQTT client.\n# TYPE edge_mnv2_mqtt_published_total counter\nedge_mnv2_mqtt_published_total {}\n",
            m.published
        ));
        out.push_str(&format!(
            "# HELP edge_mnv2_mqtt_dropped_total Results dropped, oldest first, from the full MQTT queue.\n# TYPE edge_mnv2_mqtt_dropped_total counter\nedge_mnv2_mqtt_dropped_total {}\n",
            m.dropped
        ));
        out.push_str(&format!(
            "# HELP edge_mnv2_mqtt_connected Whether the MQTT broker connection is up.\n# TYPE edge_mnv2_mqtt_connected gauge\nedge_mnv2_mqtt_connected {}\n",
            u8::from(m.connected)
        ));
    }
    out.push_str("# HELP edge_mnv2_predictions_total Classified frames by label.\n# TYPE edge_mnv2_predictions_total counter\n");
    let mut labels = labels.to_vec();
    for label in s.per_class.keys() {
        if !labels.contains(&label.as_str()) {
            labels.push(label.as_str()); // a class of a head that has since been reloaded away
        }
    }
    for label in labels {
        let n = s.per_class.get(label).copied().unwrap_or(0);
        out.push_str(&format!(
            "edge_mnv2_predictions_total{{label=\"{}\"}} {n}\n",
            label.replace('\\', "\\\\").replace('"', "\\\"")
        ));
    }
    out.push_str("# HELP edge_mnv2_latency_seconds From capture to result.\n# TYPE edge_mnv2_latency_seconds histogram\n");
    for (bound, c) in LATENCY_BUCKETS.iter().zip(s.latency.counts) {
        out.push_str(&format!(
            "edge_mnv2_latency_seconds_bucket{{le=\"{bound}\"}} {c}\n"
        ));
    }
    out.push_str(&format!(
        "edge_mnv2_latency_seconds_bucket{{le=\"+Inf\"}} {}\nedge_mnv2_latency_seconds_sum {}\nedge_mnv2_latency_seconds_count {}\n",
        s.latency.count, s.latency.sum, s.latency.count
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let mut h = Histogram::default();
        h.observe(0.005);
        h.observe(0.3);
        h.observe(20.0);
        assert_eq!(h.counts[0], 1);
        assert_eq!(h.counts[5], 2); // le 0.5
        assert_eq!(h.counts[LATENCY_BUCKETS.len() - 1], 2);
        assert_eq!(h.count, 3);
    }
}
