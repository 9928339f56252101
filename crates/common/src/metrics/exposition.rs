//! Reading back the text [`super::Metrics::render`] writes, so that an
//! operator RPC reports the very numbers `/metrics` exports instead of a
//! second bookkeeping of its own that could drift from them.
//!
//! Only what `prometheus-client` writes is understood: `# …` lines,
//! `name{label="value",…} value` samples, and an exemplar after ` # `
//! (ignored). Label values keep their escapes (`\\`, `\"`, `\n`) undone.

/// One sample line: its full name (with `_total`, `_bucket`, … suffixes),
/// its labels in order, and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if the sample has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Every sample of `text`; a line that is not one (a comment, `# EOF`, or
/// anything malformed) is skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter(|line| !line.starts_with('#')).filter_map(sample).collect()
}

/// What a family's `# TYPE` line says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    /// Any other type, or samples without a `# TYPE`.
    Other,
}

/// A metric family: its name (without `_total`, `_bucket`, … suffixes),
/// type, help and samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub kind: Kind,
    pub help: String,
    pub samples: Vec<Sample>,
}

/// The families of `text`, in order: each `# TYPE` (and its `# HELP`)
/// opens one, and the samples after it whose names start with its name
/// are its own.
pub fn families(text: &str) -> Vec<Family> {
    let mut families: Vec<Family> = Vec::new();
    let open = |families: &mut Vec<Family>, name: &str| {
        if families.last().is_none_or(|f| f.name != name) {
            families.push(Family {
                name: name.to_owned(),
                kind: Kind::Other,
                help: String::new(),
                samples: Vec::new(),
            });
        }
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            open(&mut families, name);
            if let Some(family) = families.last_mut() {
                family.help = help.to_owned();
            }
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            open(&mut families, name);
            if let Some(family) = families.last_mut() {
                family.kind = match kind {
                    "counter" => Kind::Counter,
                    "gauge" => Kind::Gauge,
                    "histogram" => Kind::Histogram,
                    _ => Kind::Other,
                };
            }
        } else if !line.starts_with('#')
            && let Some(sample) = sample(line)
        {
            if families.last().is_none_or(|f| !sample.name.starts_with(f.name.as_str())) {
                open(&mut families, &sample.name);
            }
            if let Some(family) = families.last_mut() {
                family.samples.push(sample);
            }
        }
    }
    families
}

/// The samples of `text` named `name`.
pub fn named<'a>(samples: &'a [Sample], name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
    samples.iter().filter(move |s| s.name == name)
}

fn sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let (labels, rest) = if line[name_end..].starts_with('{') {
        labels(&line[name_end + 1..])?
    } else {
        (Vec::new(), &line[name_end..])
    };
    let value = rest.trim_start().split(' ').next()?.parse().ok()?;
    Some(Sample { name: name.to_owned(), labels, value })
}

/// `key="value",…}` and what follows the closing brace.
fn labels(mut text: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        if let Some(rest) = text.strip_prefix('}') {
            return Some((labels, rest));
        }
        let eq = text.find('=')?;
        let key = text[..eq].to_owned();
        let mut chars = text[eq + 1..].strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key, value));
        // After the value's closing quote: `,` then the next label, or `}`.
        text = &text[eq + 1..][end + 2..];
        text = text.strip_prefix(',').unwrap_or(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_labels_values_and_skips_comments_and_exemplars() {
        let text = "# HELP tenx_x A thing.\n# TYPE tenx_x counter\n\
            tenx_x_total{queue=\"a.b\",kind=\"work\"} 3\n\
            tenx_y 0.25\n\
            tenx_z_bucket{le=\"+Inf\"} 7 # {trace_id=\"abc\"} 0.5 1.0\n\
            tenx_w{reason=\"said \\\"no\\\", then\\\\left\"} NaN\n\
            # EOF\n";
        let samples = parse(text);
        assert_eq!(samples.len(), 4, "{samples:?}");
        assert_eq!(samples[0].name, "tenx_x_total");
        assert_eq!((samples[0].label("queue"), samples[0].label("kind")), (Some("a.b"), Some("work")));
        assert_eq!(samples[0].value, 3.0);
        assert_eq!(
            (samples[1].name.as_str(), samples[1].labels.len(), samples[1].value),
            ("tenx_y", 0, 0.25)
        );
        assert_eq!((samples[2].label("le"), samples[2].value), (Some("+Inf"), 7.0));
        assert_eq!(samples[3].label("reason"), Some("said \"no\", then\\left"));
        assert!(samples[3].value.is_nan());
        assert_eq!(named(&samples, "tenx_y").count(), 1);
    }

    #[test]
    fn families_group_samples_under_their_type() {
        let text = "# HELP tenx_a Things done.\n# TYPE tenx_a counter\ntenx_a_total{k=\"1\"} 2\ntenx_a_total{k=\"2\"} 3\n\
            # TYPE tenx_b histogram\ntenx_b_bucket{le=\"0.5\"} 1\ntenx_b_bucket{le=\"+Inf\"} 2\ntenx_b_sum 1.5\ntenx_b_count 2\n\
            # HELP tenx_c Level.\n# TYPE tenx_c gauge\ntenx_c 7\n# EOF\n";
        let families = families(text);
        let shape: Vec<(&str, Kind, usize)> =
            families.iter().map(|f| (f.name.as_str(), f.kind, f.samples.len())).collect();
        assert_eq!(
            shape,
            [("tenx_a", Kind::Counter, 2), ("tenx_b", Kind::Histogram, 4), ("tenx_c", Kind::Gauge, 1)]
        );
        assert_eq!((families[0].help.as_str(), families[2].help.as_str()), ("Things done.", "Level."));
    }

    #[test]
    fn malformed_lines_are_skipped_not_misread() {
        let samples = parse("tenx_a{queue=\"unterminated} 1\ntenx_b notanumber\n{x=\"1\"} 2\ntenx_c 4\n");
        assert_eq!(samples.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["tenx_c"]);
    }

    #[test]
    fn reads_back_what_the_registry_renders() {
        use prometheus_client::metrics::counter::Counter;
        use prometheus_client::metrics::family::Family;
        let metrics = super::super::Metrics::default();
        let family: Family<Vec<(String, String)>, Counter> = Family::default();
        metrics.register("things", "Things", family.clone());
        family.get_or_create(&vec![("cache".to_owned(), "users \"v2\"".to_owned())]).inc_by(5);
        let samples = parse(&metrics.render());
        let thing = named(&samples, "tenx_things_total").next().expect("rendered");
        assert_eq!((thing.label("cache"), thing.value), (Some("users \"v2\""), 5.0));
    }
}
