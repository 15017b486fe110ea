//! Hostile flag keys and variables cannot change a rendered query's structure.
//!
//! Two angles: a real Prometheus holds series whose label values are the hostile strings,
//! and every rendered query must parse and select exactly the series whose label equals
//! the literal value; and a property test renders random hostile strings into every
//! PromQL context and checks, with a PromQL string lexer written here independently of
//! the escaping code, that the query's shape is unchanged and its strings decode to the
//! value.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use sluice::prometheus::{
    ClientConfig, PrometheusClient, QueryResult, Template, TemplateError, Variables,
};
use support::openmetrics::OpenMetrics;
use support::server::PrometheusServer;

const AT: i64 = 1_672_531_200;

/// Label values a flag key might try to break out with, and decoys a regex would match.
const HOSTILE: [&str; 16] = [
    r#"evil"} or vector(1) #"#,
    r#"evil'} or vector(1) or probe{feature_flag_key='"#,
    "evil`} or vector(1) or probe{feature_flag_key=`",
    "ends with a backslash\\",
    r"a\b",
    "line\nbreak",
    "it's",
    "a.c",
    "abc",
    ".*",
    "}",
    "{{ flag }}",
    "$1",
    "tab\there",
    "unicode é中",
    r#"\"}"#,
];

fn variables(flag: &str) -> Variables {
    Variables::new(flag, Duration::from_secs(300), "shop", "rollout")
}

/// The `feature_flag_key` values of a vector result; panics on a series without one
/// (which `or vector(1)` would add).
fn keys(result: &QueryResult) -> BTreeSet<String> {
    let QueryResult::Vector(samples) = result else {
        panic!("expected a vector, got {result:?}");
    };
    samples
        .iter()
        .map(|s| {
            s.labels
                .get("feature_flag_key")
                .unwrap_or_else(|| panic!("a series without the flag label: {s:?}"))
                .clone()
        })
        .collect()
}

#[tokio::test]
async fn hostile_flag_keys_select_only_their_literal_series_in_prometheus() {
    let mut data = OpenMetrics::default();
    for value in HOSTILE {
        data.gauge(
            "probe",
            &[("probe_set", "hostile"), ("feature_flag_key", value)],
            1.0,
            AT,
        );
    }
    let server = PrometheusServer::start(&data).await;
    let client = PrometheusClient::new(ClientConfig::new(server.base_url())).unwrap();
    let at = jiff::Timestamp::new(AT, 0).ok();
    let everything: BTreeSet<String> = HOSTILE.iter().map(|s| (*s).to_owned()).collect();

    // Sanity: the data is there, every value intact.
    let all = client
        .query(r#"probe{probe_set="hostile"}"#, at)
        .await
        .unwrap();
    assert_eq!(keys(&all.result), everything);

    let selecting_one = [
        r#"probe{probe_set="hostile",feature_flag_key="{{ flag }}"}"#,
        r#"probe{probe_set="hostile",feature_flag_key='{{ flag }}'}"#,
        r#"probe{probe_set="hostile",feature_flag_key=~"{{ flag }}"}"#,
        r#"probe{probe_set="hostile",feature_flag_key=~'{{ flag }}'}"#,
        "probe{probe_set=\"hostile\",feature_flag_key=`{{ flag }}`}",
        "probe{probe_set=\"hostile\",feature_flag_key=~`{{ flag }}`}",
    ];
    let mut checked = 0;
    for value in HOSTILE {
        for template in selecting_one {
            let rendered = Template::parse(template).unwrap().render(&variables(value));
            if template.contains('`') && value.contains('`') {
                let err = rendered.unwrap_err();
                assert_eq!(err.category(), "unsafe_value", "{err}");
                continue;
            }
            let promql = rendered.unwrap();
            let result = client
                .query(&promql, at)
                .await
                .unwrap_or_else(|e| panic!("{promql}: {e}"));
            assert_eq!(
                keys(&result.result),
                BTreeSet::from([value.to_owned()]),
                "{promql}"
            );
            checked += 1;
        }

        // A negative regex keeps everything but the literal value.
        let promql =
            Template::parse(r#"probe{probe_set="hostile",feature_flag_key!~"{{ flag }}"}"#)
                .unwrap()
                .render(&variables(value))
                .unwrap();
        let result = client.query(&promql, at).await.unwrap();
        let mut expected = everything.clone();
        expected.remove(value);
        assert_eq!(keys(&result.result), expected, "{promql}");

        // In a comment the value changes nothing, or is refused if it could.
        let rendered = Template::parse("probe{probe_set=\"hostile\"} # {{ flag }}\n")
            .unwrap()
            .render(&variables(value));
        if value.contains('\n') {
            assert_eq!(rendered.unwrap_err().category(), "unsafe_value");
        } else {
            let promql = rendered.unwrap();
            let result = client.query(&promql, at).await.unwrap();
            assert_eq!(keys(&result.result), everything, "{promql}");
        }
    }
    println!("{checked} rendered queries selected exactly their literal value");

    // Outside a string, a hostile value is refused before it reaches Prometheus.
    let template =
        Template::parse(r#"max_over_time(probe{probe_set="hostile"}[{{ range }}])"#).unwrap();
    for hostile in ["5m]) or vector(1) #", "5m] offset 1h", "1h\n"] {
        let err = template
            .render(&variables("x").with("range", hostile))
            .unwrap_err();
        println!("{err}");
        assert!(matches!(err, TemplateError::UnsafeValue { ref name, .. } if name == "range"));
    }
    let promql = template
        .render(&variables("x").with("range", "1h"))
        .unwrap();
    let result = client.query(&promql, at).await.unwrap();
    assert_eq!(keys(&result.result), everything);
}

/// A piece of PromQL found by [`lex`].
#[derive(Clone, Debug, PartialEq)]
enum Piece {
    /// Text outside strings and comments.
    Code(String),
    /// A string literal: its quote and its decoded value.
    Str(char, String),
    /// A comment's text (without `#`).
    Comment(String),
}

/// Splits PromQL into code, decoded strings and comments, following the rules of
/// Prometheus's lexer and `strutil.Unquote`: Go escapes in `"` and `'` strings (the
/// other quote may not be escaped, a raw newline is an error), no escapes in backtick
/// strings, comments to the end of the line.
fn lex(query: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut code = String::new();
    let mut chars = query.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                if !code.is_empty() {
                    pieces.push(Piece::Code(std::mem::take(&mut code)));
                }
                let quote = c;
                let mut value = String::new();
                loop {
                    let c = chars.next().ok_or("unterminated string")?;
                    if c == quote {
                        break;
                    }
                    match c {
                        c if quote == '`' => value.push(c),
                        '\n' => return Err("a raw newline in a quoted string".into()),
                        '\\' => value.push(unescape(&mut chars, quote)?),
                        c => value.push(c),
                    }
                }
                pieces.push(Piece::Str(quote, value));
            }
            '#' => {
                if !code.is_empty() {
                    pieces.push(Piece::Code(std::mem::take(&mut code)));
                }
                let mut comment = String::new();
                while let Some(&c) = chars.peek() {
                    if c == '\n' || c == '\r' {
                        break;
                    }
                    comment.push(c);
                    chars.next();
                }
                pieces.push(Piece::Comment(comment));
            }
            c => code.push(c),
        }
    }
    if !code.is_empty() {
        pieces.push(Piece::Code(code));
    }
    Ok(pieces)
}

/// Decodes one escape sequence (after the `\`) the way Go's `strconv.UnquoteChar` does.
fn unescape(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    quote: char,
) -> Result<char, String> {
    let escaped = |n: u32| char::from_u32(n).ok_or_else(|| format!("invalid escape {n:#x}"));
    let c = chars.next().ok_or("a `\\` at the end")?;
    let mut digits = |count: usize, radix: u32| -> Result<u32, String> {
        let mut value = 0;
        for _ in 0..count {
            let d = chars
                .next()
                .and_then(|c| c.to_digit(radix))
                .ok_or("a short numeric escape")?;
            value = value * radix + d;
        }
        Ok(value)
    };
    match c {
        'a' => Ok('\u{7}'),
        'b' => Ok('\u{8}'),
        'f' => Ok('\u{c}'),
        'n' => Ok('\n'),
        'r' => Ok('\r'),
        't' => Ok('\t'),
        'v' => Ok('\u{b}'),
        '\\' => Ok('\\'),
        '"' | '\'' if c == quote => Ok(c),
        'x' => match digits(2, 16)? {
            n if n < 0x80 => escaped(n),
            n => Err(format!("\\x{n:x} is a raw byte, not a character")),
        },
        'u' => escaped(digits(4, 16)?),
        'U' => escaped(digits(8, 16)?),
        '0'..='7' => {
            let rest = digits(2, 8)?;
            escaped(c.to_digit(8).unwrap_or(0) * 64 + rest)
        }
        other => Err(format!("unknown escape `\\{other}` in a {quote} string")),
    }
}

/// The literal text a regex matches, when it is a literal: every metacharacter escaped.
fn regex_literal(regex: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = regex.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let next = chars.next()?;
            if next.is_alphanumeric() {
                return None; // \d, \w...: a class, not a literal
            }
            out.push(next);
        } else if "\\.+*?()|[]{}^$".contains(c) {
            return None;
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// Where the placeholder sits in each template, and what a value may do there.
#[derive(Clone, Copy, PartialEq)]
enum Slot {
    Plain,
    Regex,
    Comment,
    Bare,
}

const TEMPLATES: [(&str, Slot); 8] = [
    (r#"x{a="pre{{ v }}post", b="c"}"#, Slot::Plain),
    (r#"x{a='pre{{ v }}post', b='c'}"#, Slot::Plain),
    ("x{a=`pre{{ v }}post`, b=`c`}", Slot::Plain),
    (r#"x{a=~"pre{{ v }}post", b!~"c"}"#, Slot::Regex),
    (r#"x{a !~ 'pre{{ v }}post'}"#, Slot::Regex),
    ("x{a=~`pre{{ v }}post`}", Slot::Regex),
    ("x # pre{{ v }}post\n+ y", Slot::Comment),
    ("x > {{ v }}", Slot::Bare),
];

/// Renders `value` into every template and checks the query's shape and strings.
fn check_all_contexts(value: &str) {
    for (source, slot) in TEMPLATES {
        let template = Template::parse(source).unwrap();
        let render = |v: &str| template.render(&variables("f").with("v", v));
        let rendered = match render(value) {
            Ok(rendered) => rendered,
            Err(err) => {
                let allowed = match slot {
                    Slot::Plain | Slot::Regex => {
                        source.contains('`') && value.contains(['`', '\r'])
                    }
                    Slot::Comment => value.contains(['\n', '\r']),
                    Slot::Bare => true,
                };
                assert!(allowed, "{source} with {value:?}: unexpected {err}");
                assert_eq!(err.category(), "unsafe_value");
                continue;
            }
        };
        if slot == Slot::Bare {
            assert_eq!(rendered, format!("x > {value}"));
            let mut chars = value.chars();
            assert!(
                chars
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "{value:?}"
            );
            assert!(
                chars.all(|c| c.is_ascii_alphanumeric() || "_:.+-".contains(c)),
                "{value:?} is not one token"
            );
            continue;
        }
        let benign = render("").unwrap();
        if let Err(problem) = same_shape(&rendered, &benign, value, slot) {
            panic!("{source} with {value:?} rendered {rendered:?}: {problem}");
        }
    }
}

/// Checks that `rendered` (with `value` in the placeholder) has the pieces of `benign`
/// (rendered with an empty value) and that the placeholder's string or comment decodes
/// to exactly `pre<value>post`.
fn same_shape(rendered: &str, benign: &str, value: &str, slot: Slot) -> Result<(), String> {
    let expected = lex(benign).expect("the benign query lexes");
    let actual = lex(rendered).map_err(|e| format!("does not lex: {e}"))?;
    if actual.len() != expected.len() {
        return Err(format!("the shape changed: {actual:?}"));
    }
    let literal = format!("pre{value}post");
    for (got, want) in actual.iter().zip(&expected) {
        match (got, want) {
            (Piece::Str(q, decoded), Piece::Str(wq, benign)) if benign == "prepost" => {
                if q != wq {
                    return Err(format!("the quote changed: {got:?}"));
                }
                let text = match slot {
                    Slot::Regex => regex_literal(decoded)
                        .ok_or_else(|| format!("{decoded:?} is not a literal regex"))?,
                    _ => decoded.clone(),
                };
                if text != literal {
                    return Err(format!("the string holds {text:?}, not {literal:?}"));
                }
            }
            (Piece::Comment(text), Piece::Comment(_)) => {
                if *text != format!(" {literal}") {
                    return Err(format!("the comment holds {text:?}"));
                }
            }
            (got, want) => {
                if got != want {
                    return Err(format!("{got:?} where {want:?} was"));
                }
            }
        }
    }
    Ok(())
}

#[test]
fn random_hostile_values_never_change_the_query_shape() {
    let seed = *b"sluice-promql-template-injection";
    println!(
        "proptest ChaCha seed: {:?}",
        std::str::from_utf8(&seed).unwrap()
    );
    let config = Config {
        cases: 3000,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
    let alphabet = vec![
        '"', '\'', '`', '\\', '{', '}', '[', ']', '(', ')', '\n', '\r', '\t', '#', '=', '~', '!',
        ',', ' ', 'a', 'Z', '_', ':', '0', '5', 'm', 'e', '.', '-', '+', '*', '?', '|', '^', '$',
        'é', '中', '\u{0}', '\u{7f}',
    ];
    let strategy = proptest::collection::vec(proptest::sample::select(alphabet), 0..16)
        .prop_map(|chars| chars.into_iter().collect::<String>());
    runner
        .run(&strategy, |value| {
            check_all_contexts(&value);
            Ok(())
        })
        .unwrap();
    // The fixed hostile values too, and a few shapes that must pass bare.
    for value in HOSTILE
        .into_iter()
        .chain(["5m", "1h30m", "0.5", "job", "2e-3"])
    {
        check_all_contexts(value);
    }
}

#[test]
fn the_shape_check_catches_naive_substitution() {
    // The checks above are only as good as `lex` and `same_shape`: substituting values
    // without escaping must fail them.
    for (source, slot) in TEMPLATES {
        if slot == Slot::Bare {
            continue;
        }
        let naive = |v: &str| source.replace("{{ v }}", v);
        for value in [
            r#"x"} or vector(1) #"#,
            "x'} or vector(1) #",
            "x`} or vector(1) #",
            "a\\",
            "a\nb",
            ".*",
        ] {
            let breaks_out = match slot {
                Slot::Comment => value.contains('\n'),
                // The template's own quote breaks out; a backslash or newline breaks a
                // quoted string; a regex metacharacter makes a regex match more.
                _ => {
                    let quote = if source.contains('`') {
                        '`'
                    } else if source.contains("'pre") {
                        '\''
                    } else {
                        '"'
                    };
                    value.contains(quote)
                        || (quote != '`' && (value.contains('\\') || value.contains('\n')))
                        || (slot == Slot::Regex
                            && value.contains(|c| "\\.+*?()|[]{}^$".contains(c)))
                }
            };
            let verdict = same_shape(&naive(value), &naive(""), value, slot);
            assert_eq!(
                verdict.is_err(),
                breaks_out,
                "{source} with {value:?}: {verdict:?}"
            );
        }
    }
    assert_eq!(regex_literal(r"a\.b"), Some("a.b".into()));
    assert_eq!(regex_literal("a.b"), None);
}
