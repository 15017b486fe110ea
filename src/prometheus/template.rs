//! Query templates: PromQL with `{{ name }}` placeholders.
//!
//! Built-in variables are [`BUILTIN_VARIABLES`] (`flag`, `window`, `namespace`,
//! `rollout`); a rollout may define more. [`Template::variables`] lists what a template
//! uses, so a spec validator can reject an unknown variable before the first look, and
//! [`Template::render`] substitutes values escaped for the PromQL context each placeholder
//! sits in, so no value can change the query's structure:
//!
//! - inside a double- or single-quoted string: `\`, the quote and control characters
//!   (newlines included) are escaped; inside the string of a regex matcher (`=~`, `!~`)
//!   the regex metacharacters are escaped first, so the value matches literally;
//! - inside a backtick (raw) string, which has no escapes: the value is inserted as is
//!   and a value holding a backtick or a carriage return is refused;
//! - outside any string: only a PromQL duration (`5m`, `1h30m`), a plain number
//!   (`0.5`, `1e3`) or an identifier (`job`, `http_requests_total`, not a keyword such as
//!   `or`) is accepted; anything else is a render error naming the variable;
//! - inside a `#` comment: any value without a line break.
//!
//! A literal `{{` cannot be written in a template: every `{{` opens a placeholder (a
//! label matcher's `{` right before one, as in `x{{{ label }}="v"}`, is fine).
//! Only matcher values are known to be regexes: a placeholder inside the regex argument
//! of `label_replace` is escaped as a plain string, so its value is read as a regex.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

/// The variables every template may use without declaring them.
pub const BUILTIN_VARIABLES: [&str; 4] = ["flag", "window", "namespace", "rollout"];

/// PromQL keywords refused as bare identifier values: in operator position they would
/// change how the query combines its parts.
const KEYWORDS: [&str; 12] = [
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "atan2",
];

/// How much of a refused value an error message shows.
const VALUE_EXCERPT_CHARS: usize = 80;

/// Why a template cannot be parsed, checked or rendered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template's placeholders are malformed.
    #[error("invalid query template at byte {offset}: {reason}")]
    Syntax {
        /// Byte offset of the problem in the template.
        offset: usize,
        /// What is wrong.
        reason: String,
    },

    /// The template uses a variable that is neither built in nor defined.
    #[error("the query uses the unknown variable {name:?}; known variables: {}", known.join(", "))]
    UnknownVariable {
        /// The unknown name.
        name: String,
        /// The names that are available, sorted.
        known: Vec<String>,
    },

    /// A user-defined variable has a name that cannot be used.
    #[error("invalid variable name {name:?}: {reason}")]
    InvalidVariableName {
        /// The name.
        name: String,
        /// Why it cannot be used.
        reason: &'static str,
    },

    /// A value cannot be placed where its placeholder is without changing the query.
    #[error("the value of variable {name:?} ({value}) cannot be used {context}: {reason}")]
    UnsafeValue {
        /// The variable.
        name: String,
        /// The value, quoted and shortened, control characters escaped.
        value: String,
        /// Where the placeholder is, e.g. `"outside a string"`.
        context: &'static str,
        /// What shape is allowed there.
        reason: &'static str,
    },
}

impl TemplateError {
    /// A short, bounded name for the kind of error, for metric labels and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            TemplateError::Syntax { .. } => "template_syntax",
            TemplateError::UnknownVariable { .. } => "unknown_variable",
            TemplateError::InvalidVariableName { .. } => "invalid_variable_name",
            TemplateError::UnsafeValue { .. } => "unsafe_value",
        }
    }
}

/// The values a template is rendered with.
#[derive(Clone, Debug, PartialEq)]
pub struct Variables {
    /// `{{ flag }}`: the flag key.
    pub flag: String,
    /// `{{ window }}`: how far back the query looks (the current stage so far), rendered
    /// as a PromQL duration such as `5m` or `1h2m3s`. A range selector needs it to be at
    /// least a millisecond.
    pub window: Duration,
    /// `{{ namespace }}`: the rollout's namespace.
    pub namespace: String,
    /// `{{ rollout }}`: the rollout's name.
    pub rollout: String,
    /// User-defined variables, by name.
    pub user: BTreeMap<String, String>,
}

impl Variables {
    /// The built-in variables, with no user variables.
    pub fn new(
        flag: impl Into<String>,
        window: Duration,
        namespace: impl Into<String>,
        rollout: impl Into<String>,
    ) -> Self {
        Variables {
            flag: flag.into(),
            window,
            namespace: namespace.into(),
            rollout: rollout.into(),
            user: BTreeMap::new(),
        }
    }

    /// Adds (or replaces) a user variable.
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.user.insert(name.into(), value.into());
        self
    }

    /// The value of a variable; built-in names take precedence over user variables.
    pub fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        match name {
            "flag" => Some(Cow::Borrowed(&self.flag)),
            "window" => Some(Cow::Owned(format_duration(self.window))),
            "namespace" => Some(Cow::Borrowed(&self.namespace)),
            "rollout" => Some(Cow::Borrowed(&self.rollout)),
            _ => self.user.get(name).map(|v| Cow::Borrowed(v.as_str())),
        }
    }
}

/// Formats a duration the way PromQL writes one: `5m`, `1h30m`, `1s500ms`, `0s`.
/// Precision below a millisecond is dropped.
pub fn format_duration(duration: Duration) -> String {
    let mut millis = duration.as_millis();
    if millis == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        let count = millis / size;
        if count > 0 {
            let _ = write!(out, "{count}{unit}");
            millis %= size;
        }
    }
    out
}

/// Checks a user variable's name: an identifier (`[A-Za-z_][A-Za-z0-9_]*`) that is not a
/// built-in name.
pub fn check_variable_name(name: &str) -> Result<(), TemplateError> {
    if !is_variable_name(name) {
        return Err(TemplateError::InvalidVariableName {
            name: name.to_owned(),
            reason: "a variable name is a letter or `_` followed by letters, digits or `_`",
        });
    }
    if BUILTIN_VARIABLES.contains(&name) {
        return Err(TemplateError::InvalidVariableName {
            name: name.to_owned(),
            reason: "this name is built in",
        });
    }
    Ok(())
}

/// Where in the PromQL text a placeholder sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Context {
    /// Outside any string or comment.
    Bare,
    /// Inside a string opened by `quote`; `regex` when it is a `=~`/`!~` matcher's value.
    String { quote: char, regex: bool },
    /// Inside a `#` comment.
    Comment,
}

impl Context {
    fn describe(self) -> &'static str {
        match self {
            Context::Bare => "outside a string",
            Context::String { quote: '`', .. } => "inside a backtick string",
            Context::String { regex: true, .. } => "inside a regex matcher's string",
            Context::String { .. } => "inside a quoted string",
            Context::Comment => "inside a comment",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Literal(String),
    Placeholder { name: String, context: Context },
}

/// A parsed query template.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

impl Template {
    /// Parses a template: finds its `{{ name }}` placeholders and the PromQL context of
    /// each. Errors on a malformed placeholder or one right after a `\` in a string.
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut lexer = Lexer::default();
        let mut literal = String::new();
        let mut rest = source;
        let mut offset = 0;
        while let Some(start) = rest.find("{{") {
            // `{{{`: the first `{` is PromQL's (a matcher set), the placeholder follows.
            let start = start + rest[start..].bytes().take_while(|b| *b == b'{').count() - 2;
            let (before, after) = rest.split_at(start);
            let inner_and_rest = &after[2..];
            let Some(end) = inner_and_rest.find("}}") else {
                return Err(TemplateError::Syntax {
                    offset: offset + start,
                    reason: "`{{` is not closed by `}}`".into(),
                });
            };
            let inner = &inner_and_rest[..end];
            let name = inner.trim();
            if !is_variable_name(name) {
                return Err(TemplateError::Syntax {
                    offset: offset + start,
                    reason: format!(
                        "a placeholder holds one variable name, like {{{{ flag }}}}; found {{{{{inner}}}}}"
                    ),
                });
            }
            lexer.feed(before);
            literal.push_str(before);
            if let Lexer::String { escaped: true, .. } = lexer {
                return Err(TemplateError::Syntax {
                    offset: offset + start,
                    reason: format!("the placeholder {{{{ {name} }}}} follows a `\\`"),
                });
            }
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(Part::Placeholder {
                name: name.to_owned(),
                context: lexer.context(),
            });
            lexer.placeholder();
            let consumed = start + 2 + end + 2;
            offset += consumed;
            rest = &rest[consumed..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template {
            source: source.to_owned(),
            parts,
        })
    }

    /// The template text as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The names of the variables the template uses, sorted, each once.
    pub fn variables(&self) -> BTreeSet<&str> {
        self.parts
            .iter()
            .filter_map(|part| match part {
                Part::Placeholder { name, .. } => Some(name.as_str()),
                Part::Literal(_) => None,
            })
            .collect()
    }

    /// Checks that every variable the template uses is built in or among `user` (the
    /// names the rollout defines). Run it when the spec is validated.
    pub fn check_variables<'a>(
        &self,
        user: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), TemplateError> {
        let known: BTreeSet<&str> = BUILTIN_VARIABLES.into_iter().chain(user).collect();
        match self
            .variables()
            .into_iter()
            .find(|name| !known.contains(name))
        {
            None => Ok(()),
            Some(name) => Err(TemplateError::UnknownVariable {
                name: name.to_owned(),
                known: known.into_iter().map(str::to_owned).collect(),
            }),
        }
    }

    /// Substitutes the variables, each escaped for its context.
    pub fn render(&self, variables: &Variables) -> Result<String, TemplateError> {
        let mut out = String::with_capacity(self.source.len());
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Placeholder { name, context } => {
                    let Some(value) = variables.get(name) else {
                        let known = BUILTIN_VARIABLES
                            .into_iter()
                            .map(str::to_owned)
                            .chain(variables.user.keys().cloned())
                            .collect::<BTreeSet<_>>();
                        return Err(TemplateError::UnknownVariable {
                            name: name.clone(),
                            known: known.into_iter().collect(),
                        });
                    };
                    let unsafe_value = |reason| TemplateError::UnsafeValue {
                        name: name.clone(),
                        value: shorten(&value),
                        context: context.describe(),
                        reason,
                    };
                    match *context {
                        Context::Bare => {
                            check_bare(&value).map_err(unsafe_value)?;
                            out.push_str(&value);
                        }
                        Context::Comment => {
                            if value.contains(['\n', '\r']) {
                                return Err(unsafe_value("a comment cannot hold a line break"));
                            }
                            out.push_str(&value);
                        }
                        Context::String { quote, regex } => {
                            let text = if regex {
                                Cow::Owned(escape_regex(&value))
                            } else {
                                value.clone()
                            };
                            if quote == '`' {
                                if text.contains(['`', '\r']) {
                                    return Err(unsafe_value(
                                        "a backtick string cannot hold a backtick or a carriage return; use a double-quoted string",
                                    ));
                                }
                                out.push_str(&text);
                            } else {
                                escape_string(&text, quote, &mut out);
                            }
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Enough of PromQL's lexer to know whether a position is inside a string or comment.
#[derive(Clone, Copy, Debug)]
enum Lexer {
    /// Outside strings and comments; the last two significant (non-space) characters.
    Outside { last: [char; 2] },
    /// Inside a string.
    String {
        quote: char,
        regex: bool,
        escaped: bool,
    },
    /// Inside a `#` comment; `last` as it was before it.
    Comment { last: [char; 2] },
}

impl Default for Lexer {
    fn default() -> Self {
        Lexer::Outside { last: [' ', ' '] }
    }
}

impl Lexer {
    fn feed(&mut self, text: &str) {
        for c in text.chars() {
            *self = match *self {
                Lexer::Outside { last } => match c {
                    '"' | '\'' | '`' => Lexer::String {
                        quote: c,
                        regex: matches!(last, ['=' | '!', '~']),
                        escaped: false,
                    },
                    '#' => Lexer::Comment { last },
                    c if c.is_whitespace() => Lexer::Outside { last },
                    c => Lexer::Outside { last: [last[1], c] },
                },
                Lexer::String {
                    quote,
                    regex,
                    escaped,
                } => {
                    if escaped {
                        Lexer::String {
                            quote,
                            regex,
                            escaped: false,
                        }
                    } else if c == '\\' && quote != '`' {
                        Lexer::String {
                            quote,
                            regex,
                            escaped: true,
                        }
                    } else if c == quote {
                        Lexer::Outside { last: [' ', c] }
                    } else {
                        Lexer::String {
                            quote,
                            regex,
                            escaped: false,
                        }
                    }
                }
                Lexer::Comment { last } => {
                    if c == '\n' || c == '\r' {
                        Lexer::Outside { last }
                    } else {
                        Lexer::Comment { last }
                    }
                }
            };
        }
    }

    /// A rendered placeholder leaves strings and comments as they were; outside, it is a
    /// token of its own.
    fn placeholder(&mut self) {
        if let Lexer::Outside { last } = self {
            *last = [last[1], 'x'];
        }
    }

    fn context(&self) -> Context {
        match *self {
            Lexer::Outside { .. } => Context::Bare,
            Lexer::String { quote, regex, .. } => Context::String { quote, regex },
            Lexer::Comment { .. } => Context::Comment,
        }
    }
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Accepts a PromQL duration, a plain number or an identifier that is not a keyword.
fn check_bare(value: &str) -> Result<(), &'static str> {
    const SHAPES: &str = "outside a string a value must be a duration (5m, 1h30m), a number (0.5, 1e3) or an identifier; put the placeholder inside quotes";
    if is_duration(value) || is_number(value) {
        return Ok(());
    }
    let mut chars = value.chars();
    let identifier = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if !identifier {
        return Err(SHAPES);
    }
    if KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(value)) {
        return Err("a PromQL keyword cannot be a value outside a string");
    }
    Ok(())
}

/// `5m`, `1h30m`, `1500ms`: digits and a unit, repeated.
fn is_duration(value: &str) -> bool {
    let mut rest = value;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ms", "s", "m", "h", "d", "w", "y"]
            .into_iter()
            .find(|unit| rest.starts_with(unit));
        match unit {
            Some(unit) => rest = &rest[unit.len()..],
            None => return false,
        }
    }
    true
}

/// `12`, `0.5`, `1e3`, `2.5E-3`: no sign (a leading `-` binds looser than `^`).
fn is_number(value: &str) -> bool {
    let bytes = value.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < bytes.len() && bytes[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > start
    };
    if !digits(&mut i) {
        return false;
    }
    if i < bytes.len() && bytes[i] == b'.' {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
        i += 1;
        if i < bytes.len() && (bytes[i] == b'+' || bytes[i] == b'-') {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == bytes.len()
}

/// Escapes RE2's metacharacters (the set Go's `regexp.QuoteMeta` escapes).
fn escape_regex(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Writes `value` escaped for a PromQL string opened by `quote` (`"` or `'`).
fn escape_string(value: &str, quote: char, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// A value for an error message: quoted, escaped, at most [`VALUE_EXCERPT_CHARS`] long.
fn shorten(value: &str) -> String {
    let short: String = value.chars().take(VALUE_EXCERPT_CHARS).collect();
    if short.len() < value.len() {
        format!("{short:?}…")
    } else {
        format!("{short:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Variables {
        Variables::new(
            "new-checkout",
            Duration::from_secs(300),
            "shop",
            "rollout-1",
        )
    }

    fn render(template: &str, variables: &Variables) -> Result<String, TemplateError> {
        Template::parse(template)?.render(variables)
    }

    #[test]
    fn renders_the_design_example() {
        let template = r#"sum by (feature_flag_result_variant) (increase(http_requests_total{job="shop",code=~"5..",feature_flag_key="{{ flag }}"}[{{window}}]))"#;
        assert_eq!(
            render(template, &vars()).unwrap(),
            r#"sum by (feature_flag_result_variant) (increase(http_requests_total{job="shop",code=~"5..",feature_flag_key="new-checkout"}[5m]))"#
        );
    }

    #[test]
    fn lists_the_variables_used() {
        let template =
            Template::parse(r#"x{a="{{flag}}", b="{{ team }}", c="{{  flag  }}"}[{{window}}]"#)
                .unwrap();
        assert_eq!(
            template.variables().into_iter().collect::<Vec<_>>(),
            vec!["flag", "team", "window"]
        );
        assert!(template.check_variables(["team"]).is_ok());
        let err = template.check_variables(["other"]).unwrap_err();
        assert_eq!(
            err,
            TemplateError::UnknownVariable {
                name: "team".into(),
                known: vec![
                    "flag".into(),
                    "namespace".into(),
                    "other".into(),
                    "rollout".into(),
                    "window".into()
                ],
            }
        );
        assert_eq!(err.category(), "unknown_variable");
        // Rendering without the value is the same error, not a silent empty string.
        assert_eq!(
            template.render(&vars()).unwrap_err().category(),
            "unknown_variable"
        );
        assert!(template.render(&vars().with("team", "payments")).is_ok());
    }

    #[test]
    fn malformed_placeholders_are_syntax_errors() {
        for (template, expected) in [
            ("x{a=\"{{ flag \"}", "not closed"),
            ("x{a=\"{{ flag-key }}\"}", "{{ flag-key }}"),
            ("x{a=\"{{}}\"}", "found {{}}"),
            ("x{a=\"{{ a b }}\"}", "found {{ a b }}"),
            ("x{a=\"\\{{ flag }}\"}", "follows a `\\`"),
        ] {
            let err = Template::parse(template).unwrap_err();
            assert_eq!(err.category(), "template_syntax", "{template}");
            assert!(err.to_string().contains(expected), "{template}: {err}");
        }
    }

    #[test]
    fn a_matcher_brace_right_before_a_placeholder_stays_literal() {
        let rendered = render(r#"x{{{ label }}="a"}"#, &vars().with("label", "team")).unwrap();
        assert_eq!(rendered, r#"x{team="a"}"#);
    }

    #[test]
    fn strings_escape_quotes_backslashes_and_control_characters() {
        let hostile = "a\"b'c\\d\ne\rf\tg\u{1}h`i}j";
        let v = vars().with("v", hostile);
        assert_eq!(
            render(r#"x{a="{{ v }}"}"#, &v).unwrap(),
            r#"x{a="a\"b'c\\d\ne\rf\tg\x01h`i}j"}"#
        );
        assert_eq!(
            render(r#"x{a='{{ v }}'}"#, &v).unwrap(),
            r#"x{a='a"b\'c\\d\ne\rf\tg\x01h`i}j'}"#
        );
    }

    #[test]
    fn regex_matchers_escape_metacharacters_first() {
        let v = vars().with("v", r#"a.b*"c\d"#);
        assert_eq!(
            render(r#"x{a=~"{{ v }}"}"#, &v).unwrap(),
            r#"x{a=~"a\\.b\\*\"c\\\\d"}"#
        );
        assert_eq!(
            render(r#"x{a !~ '{{ v }}-.*'}"#, &v).unwrap(),
            r#"x{a !~ 'a\\.b\\*"c\\\\d-.*'}"#
        );
        assert_eq!(
            render("x{a=~`{{ v }}`}", &v).unwrap(),
            r#"x{a=~`a\.b\*"c\\d`}"#
        );
        // `=` is no regex, even after a regex matcher.
        assert_eq!(
            render(r#"x{b=~"y", a="{{ v }}"}"#, &v).unwrap(),
            r#"x{b=~"y", a="a.b*\"c\\d"}"#
        );
    }

    #[test]
    fn backtick_strings_refuse_backticks_and_carriage_returns() {
        for value in ["a`b", "a\rb"] {
            let err = render("x{a=`{{ v }}`}", &vars().with("v", value)).unwrap_err();
            assert_eq!(err.category(), "unsafe_value");
            assert!(err.to_string().contains("backtick"), "{err}");
        }
        assert_eq!(
            render("x{a=`{{ v }}`}", &vars().with("v", "a\\\"b\nc")).unwrap(),
            "x{a=`a\\\"b\nc`}"
        );
    }

    #[test]
    fn bare_values_must_have_a_safe_shape() {
        for ok in [
            "5m", "1h30m", "1500ms", "0.5", "1e3", "2.5E-3", "job", "a:b_c", "Inf",
        ] {
            assert_eq!(
                render("x > {{ v }}", &vars().with("v", ok)).unwrap(),
                format!("x > {ok}")
            );
        }
        for bad in [
            "",
            "-1",
            "5m] or vector(1) #",
            "a b",
            "x\"",
            "1.",
            "1e",
            "5x",
            "or",
            "OFFSET",
            "a}",
            "a\n",
        ] {
            let err = render("x > {{ v }}", &vars().with("v", bad)).unwrap_err();
            assert_eq!(err.category(), "unsafe_value", "{bad:?}");
            let text = err.to_string();
            assert!(text.contains("\"v\""), "{text}");
            assert!(text.contains("outside a string"), "{text}");
        }
        let err = render("x[{{ window }}] > {{ flag }}", &vars()).unwrap_err();
        assert!(
            err.to_string()
                .contains("variable \"flag\" (\"new-checkout\")"),
            "{err}"
        );
    }

    #[test]
    fn comments_accept_values_without_line_breaks() {
        assert_eq!(
            render("x # {{ flag }} \"\ny", &vars()).unwrap(),
            "x # new-checkout \"\ny"
        );
        let err = render("x # {{ v }}\n", &vars().with("v", "a\nor vector(1)")).unwrap_err();
        assert!(err.to_string().contains("comment"), "{err}");
        // A quote inside a comment does not open a string.
        assert_eq!(
            render("x # it's\n> {{ v }}", &vars().with("v", "1")).unwrap(),
            "x # it's\n> 1"
        );
    }

    #[test]
    fn escaped_quotes_in_the_template_do_not_close_the_string() {
        assert_eq!(
            render(r#"x{a="\"{{ v }}"}"#, &vars().with("v", "b\"")).unwrap(),
            r#"x{a="\"b\""}"#
        );
    }

    #[test]
    fn durations_are_formatted_for_promql() {
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(
            format_duration(Duration::from_millis(90_061_500)),
            "1d1h1m1s500ms"
        );
        assert_eq!(format_duration(Duration::from_micros(1500)), "1ms");
    }

    #[test]
    fn user_variable_names_are_checked() {
        assert!(check_variable_name("team").is_ok());
        assert_eq!(
            check_variable_name("flag").unwrap_err().category(),
            "invalid_variable_name"
        );
        assert!(check_variable_name("a-b").is_err());
        assert!(check_variable_name("1a").is_err());
    }

    #[test]
    fn long_values_are_shortened_in_errors() {
        let long = "x ".repeat(200);
        let err = render("x > {{ v }}", &vars().with("v", long)).unwrap_err();
        assert!(err.to_string().len() < 400, "{err}");
    }
}
