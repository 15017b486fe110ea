//! Writes OpenMetrics text for `promtool tsdb create-blocks-from openmetrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Metric families, each with its `# TYPE` line and samples, written in order.
#[derive(Default)]
pub struct OpenMetrics {
    families: BTreeMap<String, (String, Vec<String>)>,
}

impl OpenMetrics {
    /// A counter `<family>_total` with `labels`, `points` samples `step` seconds apart from
    /// `start`, growing by `increment` at each step from 0.
    pub fn counter(
        &mut self,
        family: &str,
        labels: &[(&str, &str)],
        start: i64,
        step: i64,
        points: usize,
        increment: f64,
    ) -> &mut Self {
        let name = format!("{family}_total");
        for i in 0..points {
            self.sample(
                family,
                "counter",
                &name,
                labels,
                increment * i as f64,
                start + step * i as i64,
            );
        }
        self
    }

    /// A classic histogram `<family>_bucket` (plus `_count` and `_sum`) whose cumulative
    /// bucket `le` grows by the given increment at each step; the last bucket must be
    /// `+Inf`.
    pub fn histogram(
        &mut self,
        family: &str,
        labels: &[(&str, &str)],
        buckets: &[(&str, f64)],
        start: i64,
        step: i64,
        points: usize,
    ) -> &mut Self {
        assert_eq!(
            buckets.last().map(|b| b.0),
            Some("+Inf"),
            "a histogram ends with +Inf"
        );
        let total = buckets.last().map_or(0.0, |b| b.1);
        for i in 0..points {
            let at = start + step * i as i64;
            for (le, increment) in buckets {
                let mut with_le = labels.to_vec();
                with_le.push(("le", le));
                self.sample(
                    family,
                    "histogram",
                    &format!("{family}_bucket"),
                    &with_le,
                    increment * i as f64,
                    at,
                );
            }
            self.sample(
                family,
                "histogram",
                &format!("{family}_count"),
                labels,
                total * i as f64,
                at,
            );
            self.sample(
                family,
                "histogram",
                &format!("{family}_sum"),
                labels,
                0.1 * total * i as f64,
                at,
            );
        }
        self
    }

    /// One gauge sample.
    pub fn gauge(&mut self, name: &str, labels: &[(&str, &str)], value: f64, at: i64) -> &mut Self {
        self.sample(name, "gauge", name, labels, value, at);
        self
    }

    fn sample(
        &mut self,
        family: &str,
        kind: &str,
        name: &str,
        labels: &[(&str, &str)],
        value: f64,
        at: i64,
    ) {
        let entry = self
            .families
            .entry(family.to_owned())
            .or_insert_with(|| (kind.to_owned(), Vec::new()));
        assert_eq!(entry.0, kind, "family {family} has one type");
        let mut line = String::from(name);
        if !labels.is_empty() {
            line.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    line.push(',');
                }
                let _ = write!(line, "{label}=\"{}\"", escape(value));
            }
            line.push('}');
        }
        let _ = write!(line, " {value} {at}");
        entry.1.push(line);
    }

    /// The text, ending with `# EOF`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (family, (kind, lines)) in &self.families {
            let _ = writeln!(out, "# TYPE {family} {kind}");
            for line in lines {
                out.push_str(line);
                out.push('\n');
            }
        }
        out.push_str("# EOF\n");
        out
    }
}

/// OpenMetrics label value escaping: `\`, `"` and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
