//! YAML that reads the same under YAML 1.1 as under YAML 1.2.
//!
//! `serde_yaml_ng` writes YAML 1.2, where `on`, `off`, `yes`, `no`, `y` and `n` are plain
//! strings, and leaves them unquoted. kubectl and Helm read YAML with `sigs.k8s.io/yaml`,
//! which follows YAML 1.1: there they are booleans, and a boolean key becomes the string
//! `"true"` or `"false"`. kubectl refused the CRD (`required: [n]` read as `[false]`), and
//! `notifications[].on` would have been a property named `true`. [`quote_yaml_1_1_words`]
//! quotes such words where they stand as a key or a plain value.

/// The plain scalars YAML 1.1 resolves to a boolean or null, which YAML 1.2 (and so
/// `serde_yaml_ng`) leaves unquoted as strings. (`true`, `false`, `null` and `~` are the
/// same in both, and `serde_yaml_ng` quotes them.)
const YAML_1_1_ONLY: [&str; 16] = [
    "y", "Y", "yes", "Yes", "YES", "on", "On", "ON", "n", "N", "no", "No", "NO", "off", "Off",
    "OFF",
];

/// `yaml` (as `serde_yaml_ng` writes it: block style, one key or item per line) with every
/// key and plain value that YAML 1.1 would read as a boolean single-quoted. The text of
/// block scalars (`|-` and `>-` descriptions) is left as it is.
pub(crate) fn quote_yaml_1_1_words(yaml: &str) -> String {
    let mut out = String::with_capacity(yaml.len());
    // The indentation of the key that opened the block scalar being copied, if any.
    let mut block_scalar_of: Option<usize> = None;
    for line in yaml.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(owner) = block_scalar_of {
            if line.trim().is_empty() || indent > owner {
                out.push_str(line);
                out.push('\n');
                continue;
            }
            block_scalar_of = None;
        }
        let (prefix, rest) = split_item_markers(line);
        out.push_str(prefix);
        match rest.split_once(": ").or_else(|| {
            rest.strip_suffix(':')
                .map(|key| (key, ""))
                .filter(|(key, _)| !key.contains(": "))
        }) {
            Some((key, value)) => {
                out.push_str(&quoted(key));
                out.push(':');
                if !value.is_empty() {
                    out.push(' ');
                    out.push_str(&quoted(value));
                }
                if value.starts_with('|') || value.starts_with('>') {
                    block_scalar_of = Some(indent);
                }
            }
            None => out.push_str(&quoted(rest)),
        }
        out.push('\n');
    }
    out
}

/// Splits a line into its indentation and `- ` item markers, and the rest.
fn split_item_markers(line: &str) -> (&str, &str) {
    let mut rest = line.trim_start_matches(' ');
    while let Some(after) = rest.strip_prefix("- ") {
        rest = after.trim_start_matches(' ');
    }
    if rest == "-" {
        rest = "";
    }
    line.split_at(line.len() - rest.len())
}

/// `scalar` single-quoted when YAML 1.1 would read it as a boolean, else as it is.
fn quoted(scalar: &str) -> String {
    if YAML_1_1_ONLY.contains(&scalar) {
        format!("'{scalar}'")
    } else {
        scalar.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_keys_and_values_that_yaml_1_1_reads_as_booleans() {
        let yaml = "properties:\n  on:\n    type: string\n  enum:\n  - on\n  - off\n  - yes\n  - a: no\n    default: on\n";
        assert_eq!(
            quote_yaml_1_1_words(yaml),
            "properties:\n  'on':\n    type: string\n  enum:\n  - 'on'\n  - 'off'\n  - 'yes'\n  - a: 'no'\n    default: 'on'\n"
        );
    }

    #[test]
    fn leaves_block_scalars_and_other_words_alone() {
        let yaml = "description: |-\n  on: the text\n  no\n\n  yes\nonly: one\nkey: 'on'\n";
        assert_eq!(quote_yaml_1_1_words(yaml), yaml);
    }

    #[test]
    fn reads_the_same_under_yaml_1_2() {
        let yaml = "a:\n  on:\n  - off\n  - x: y\nb: |-\n  on\n";
        let before: serde_json::Value = serde_yaml_ng::from_str(yaml).unwrap();
        let after: serde_json::Value =
            serde_yaml_ng::from_str(&quote_yaml_1_1_words(yaml)).unwrap();
        assert_eq!(before, after);
    }
}
