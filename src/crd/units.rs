//! The small value types of the resource: exposure weights, durations and percentages.
//!
//! Each parses the same text the CRD schema accepts, so standalone mode and `sluice
//! validate` reject exactly what the API server would.

use std::borrow::Cow;
use std::fmt;

use jiff::SignedDuration;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::flagd::WEIGHT_SCALE;

/// Units of [`WEIGHT_SCALE`] in one percent.
const UNITS_PER_PERCENT: u32 = WEIGHT_SCALE / 100;
/// Decimal places a percentage may carry: 1 unit = 0.0001 %.
const MAX_DECIMALS: usize = 4;

/// A share of eligible users, kept exactly as an integer number of units of
/// [`WEIGHT_SCALE`] (1,000,000 = 100 %).
///
/// In YAML it is a whole number of percent (`5`) or a string of percent with up to four
/// decimals (`"0.5%"`, `"12.25%"`, the `%` optional); JSON floats are refused so no
/// precision is lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Weight(u32);

impl Weight {
    /// Nobody.
    pub const ZERO: Weight = Weight(0);
    /// Everybody.
    pub const FULL: Weight = Weight(WEIGHT_SCALE);

    /// A weight from units of [`WEIGHT_SCALE`]; `None` above 100 %.
    pub fn from_units(units: u32) -> Option<Weight> {
        (units <= WEIGHT_SCALE).then_some(Weight(units))
    }

    /// The weight in units of [`WEIGHT_SCALE`].
    pub fn units(self) -> u32 {
        self.0
    }

    /// The weight as a fraction in `[0, 1]`.
    pub fn fraction(self) -> f64 {
        f64::from(self.0) / f64::from(WEIGHT_SCALE)
    }

    /// Parses a number of percent, `"12.5%"` or `"12.5"`.
    pub fn parse(text: &str) -> Result<Weight, String> {
        let trimmed = text.trim();
        let number = trimmed.strip_suffix('%').unwrap_or(trimmed);
        let units = parse_percent_units(number).ok_or_else(|| {
            format!("{text:?} is not a percentage with at most {MAX_DECIMALS} decimals")
        })?;
        Weight::from_units(units).ok_or_else(|| format!("{text:?} is above 100%"))
    }
}

/// Parses a decimal number of percent into units, exactly; `None` if malformed or too precise.
fn parse_percent_units(number: &str) -> Option<u32> {
    let (whole, decimals) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole)
        || (number.contains('.') && !digits(decimals))
        || decimals.len() > MAX_DECIMALS
    {
        return None;
    }
    let whole: u32 = whole.parse().ok().filter(|w| *w <= 100)?;
    let mut frac: u32 = if decimals.is_empty() {
        0
    } else {
        decimals.parse().ok()?
    };
    for _ in decimals.len()..MAX_DECIMALS {
        frac *= 10;
    }
    Some(whole * UNITS_PER_PERCENT + frac)
}

impl fmt::Display for Weight {
    /// Shortest exact percentage: `5%`, `0.1%`, `12.25%`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / UNITS_PER_PERCENT;
        let frac = self.0 % UNITS_PER_PERCENT;
        if frac == 0 {
            write!(f, "{whole}%")
        } else {
            let decimals = format!("{frac:0width$}", width = MAX_DECIMALS);
            write!(f, "{whole}.{}%", decimals.trim_end_matches('0'))
        }
    }
}

impl Serialize for Weight {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Weight {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct WeightVisitor;
        impl Visitor<'_> for WeightVisitor {
            type Value = Weight;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number of percent (5) or a percentage string (\"0.5%\")")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Weight, E> {
                u32::try_from(v)
                    .ok()
                    .and_then(|p| p.checked_mul(UNITS_PER_PERCENT))
                    .and_then(Weight::from_units)
                    .ok_or_else(|| E::custom(format!("{v}% is above 100%")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Weight, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("{v}% is negative")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Weight, E> {
                Err(E::custom(format!(
                    "{v} is not a whole number of percent: write fractions as a string like \"{v}%\""
                )))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Weight, E> {
                Weight::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(WeightVisitor)
    }
}

impl JsonSchema for Weight {
    fn schema_name() -> Cow<'static, str> {
        "Weight".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "x-kubernetes-int-or-string": true,
            "anyOf": [{ "type": "integer" }, { "type": "string" }],
            "maxLength": 12,
            "x-kubernetes-validations": [{
                "rule": "string(self).matches('^(100(\\\\.0{1,4})?|[0-9]{1,2}(\\\\.[0-9]{1,4})?)%?$') && double(string(self).replace('%', '')) > 0.0",
                "message": "weight must be above 0 and at most 100: a whole number of percent (5) or a string like \"0.5%\" with at most 4 decimals"
            }]
        })
    }
}

/// Parses a Go-style duration (`90s`, `10m`, `1h30m`, `1.5h`, `250ms`): the grammar of
/// Kubernetes' durations and of CEL's `duration()`, so the schema and Rust agree.
pub fn parse_duration(text: &str) -> Result<SignedDuration, String> {
    let bad = || format!("{text:?} is not a duration: write it like \"90s\", \"10m\" or \"1h30m\"");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        // digits, optionally `.digits`, then a unit: the schema's pattern exactly.
        let whole = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if whole == 0 {
            return Err(bad());
        }
        let mut number_len = whole;
        if rest[whole..].starts_with('.') {
            let decimals = rest[whole + 1..]
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len() - whole - 1);
            if decimals == 0 {
                return Err(bad());
            }
            number_len = whole + 1 + decimals;
        }
        let number: f64 = rest[..number_len].parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += number * seconds;
    }
    SignedDuration::try_from_secs_f64(total).map_err(|_| bad())
}

/// The schema of a duration field: a Go-style duration string, checked with CEL's own
/// `duration()` so the API server parses it the way Sluice does.
pub fn duration_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "maxLength": 32,
        "pattern": "^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$",
        "x-kubernetes-validations": [{
            "rule": "duration(self) > duration('0s')",
            "message": "duration must be above zero"
        }]
    })
}

/// Parses a percentage such as `"10%"` or `"0.5%"` into a fraction (`0.1`, `0.005`).
pub fn parse_percent(text: &str) -> Result<f64, String> {
    let bad = || format!("{text:?} is not a percentage: write it like \"10%\" or \"0.5%\"");
    let number = text.trim().strip_suffix('%').ok_or_else(bad)?;
    let valid = !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && number.bytes().filter(|b| *b == b'.').count() <= 1
        && !number.starts_with('.')
        && !number.ends_with('.');
    if !valid {
        return Err(bad());
    }
    number.parse::<f64>().map(|p| p / 100.0).map_err(|_| bad())
}

/// The schema of a percentage string field.
pub fn percent_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "maxLength": 16,
        "pattern": "^[0-9]+(\\.[0-9]+)?%$"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_parse_exactly() {
        assert_eq!(Weight::parse("5%").unwrap().units(), 50_000);
        assert_eq!(Weight::parse("0.1%").unwrap().units(), 1_000);
        assert_eq!(Weight::parse("0.0001%").unwrap().units(), 1);
        assert_eq!(Weight::parse("100%").unwrap(), Weight::FULL);
        assert_eq!(Weight::parse("100.0%").unwrap(), Weight::FULL);
        assert_eq!(Weight::parse("12.25%").unwrap().units(), 122_500);
        assert_eq!(Weight::parse("5").unwrap().units(), 50_000);
        for bad in [
            "100.01%", "101%", "-1%", "0.00001%", "1.%", ".5%", "a%", "%", "1e2%",
        ] {
            assert!(Weight::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn weights_print_shortest_exact_form() {
        for text in ["5%", "0.1%", "12.25%", "100%", "0%", "0.0001%"] {
            assert_eq!(Weight::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn weights_deserialize_from_integers_and_strings_only() {
        let w: Weight = serde_json::from_str("25").unwrap();
        assert_eq!(w.units(), 250_000);
        let w: Weight = serde_json::from_str("\"0.5%\"").unwrap();
        assert_eq!(w.units(), 5_000);
        let err = serde_json::from_str::<Weight>("0.5")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"0.5%\""), "{err}");
        assert!(serde_json::from_str::<Weight>("101").is_err());
        assert!(serde_json::from_str::<Weight>("-5").is_err());
    }

    #[test]
    fn durations_follow_go_grammar() {
        assert_eq!(
            parse_duration("90s").unwrap(),
            SignedDuration::from_secs(90)
        );
        assert_eq!(
            parse_duration("10m").unwrap(),
            SignedDuration::from_mins(10)
        );
        assert_eq!(
            parse_duration("1h30m").unwrap(),
            SignedDuration::from_mins(90)
        );
        assert_eq!(
            parse_duration("1.5h").unwrap(),
            SignedDuration::from_mins(90)
        );
        assert_eq!(
            parse_duration("250ms").unwrap(),
            SignedDuration::from_millis(250)
        );
        assert_eq!(parse_duration("0s").unwrap(), SignedDuration::ZERO);
        for bad in [
            "",
            "10",
            "m",
            "10 minutes",
            "-5m",
            "1d",
            "5m3",
            "1..5s",
            "5.m",
            ".5m",
            "1h.5m",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn percentages_parse_to_fractions() {
        assert_eq!(parse_percent("10%").unwrap(), 0.1);
        assert_eq!(parse_percent("0.5%").unwrap(), 0.005);
        for bad in ["10", "-1%", "%", "1.2.3%", ".5%"] {
            assert!(parse_percent(bad).is_err(), "{bad} should be refused");
        }
    }
}
