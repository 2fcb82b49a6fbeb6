//! Scalars as Heat reads them: YAML 1.1, through PyYAML's `SafeLoader`
//! resolver, with Heat's one change (timestamps stay strings, as written).
//!
//! YAML 1.2 parsers (yaml-rust2's own resolver among them) read `yes`, `on`,
//! `017`, `1:30` and `0b101` as strings; Heat reads them as `true`, `true`,
//! 15, 90 and 5. A template must mean here what it means to Heat, or the sim
//! engine and the Heat engine disagree about the same stack.
//!
//! The patterns are PyYAML's (`resolver.py`), kept as they are written there.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Number, Value};

static BOOL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$")
        .expect("a valid pattern")
});
static INT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$")
        .expect("a valid pattern")
});
static FLOAT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
        .expect("a valid pattern")
});
static NULL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(?:~|null|Null|NULL|)$").expect("a valid pattern"));
/// `=` is YAML 1.1's "value" type, which PyYAML's safe loader cannot
/// construct: Heat refuses a template with a bare `=` value.
const VALUE: &str = "=";

/// What a scalar's tag asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tagged {
    /// No tag: resolve a plain scalar by its text.
    Implicit,
    /// `!!str`, `!!timestamp`, or `!` (the non-specific tag): a string.
    Str,
    /// `!!int`, `!!float`, `!!bool`, `!!null`: resolve, and it must be one.
    Core(&'static str),
}

/// Reads a tag the way PyYAML's safe loader does; `Err` names one it would
/// refuse ("could not determine a constructor").
pub fn tagged(handle: &str, suffix: &str) -> Result<Tagged, String> {
    let full = if handle == "!!" {
        format!("tag:yaml.org,2002:{suffix}")
    } else {
        format!("{handle}{suffix}")
    };
    Ok(match full.as_str() {
        "!" => Tagged::Str,
        "tag:yaml.org,2002:str" | "tag:yaml.org,2002:timestamp" => Tagged::Str,
        "tag:yaml.org,2002:int" => Tagged::Core("int"),
        "tag:yaml.org,2002:float" => Tagged::Core("float"),
        "tag:yaml.org,2002:bool" => Tagged::Core("bool"),
        "tag:yaml.org,2002:null" => Tagged::Core("null"),
        _ => return Err(format!("tag {full} is not one Heat reads")),
    })
}

/// A scalar's value: `plain` is whether it was written without quotes
/// (quoted scalars are always strings).
pub fn scalar(text: String, plain: bool, tag: Tagged) -> Result<Value, String> {
    match tag {
        Tagged::Str => Ok(Value::String(text)),
        Tagged::Implicit if !plain => Ok(Value::String(text)),
        Tagged::Implicit => {
            if text == VALUE {
                return Err("a bare `=` is YAML 1.1's value type, which Heat cannot read".into());
            }
            Ok(resolve(&text).unwrap_or(Value::String(text)))
        }
        Tagged::Core(kind) => match (kind, resolve(&text)) {
            ("int", Some(v @ Value::Number(_))) if INT.is_match(&text) => Ok(v),
            // PyYAML's `float(text)`: `!!float 1` is 1.0.
            ("float", _) if let Some(v) = float(&text) => Ok(v),
            ("bool", Some(v @ Value::Bool(_))) => Ok(v),
            ("null", Some(Value::Null)) => Ok(Value::Null),
            _ => Err(format!("{text:?} is not a YAML 1.1 {kind}")),
        },
    }
}

/// The implicit type of a plain scalar, if it has one.
fn resolve(text: &str) -> Option<Value> {
    if NULL.is_match(text) {
        return Some(Value::Null);
    }
    if BOOL.is_match(text) {
        return Some(Value::Bool(
            matches!(text.chars().next(), Some('y' | 'Y' | 't' | 'T'))
                || text.eq_ignore_ascii_case("on"),
        ));
    }
    if INT.is_match(text) {
        return int(text);
    }
    if FLOAT.is_match(text) {
        return float(text);
    }
    None
}

/// PyYAML's `construct_yaml_int`. A number too large for 64 bits stays
/// its text (Python has big integers, JSON numbers here do not).
fn int(text: &str) -> Option<Value> {
    let clean: String = text.chars().filter(|c| *c != '_').collect();
    let (negative, digits) = match clean.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, clean.strip_prefix('+').unwrap_or(&clean)),
    };
    let magnitude: i128 = if digits == "0" {
        0
    } else if let Some(b) = digits.strip_prefix("0b") {
        i128::from_str_radix(b, 2).ok()?
    } else if let Some(h) = digits.strip_prefix("0x") {
        i128::from_str_radix(h, 16).ok()?
    } else if let Some(o) = digits.strip_prefix('0') {
        i128::from_str_radix(o, 8).ok()?
    } else if digits.contains(':') {
        sexagesimal(digits)?.parse::<i128>().ok()?
    } else {
        digits.parse().ok()?
    };
    let n = if negative {
        magnitude.checked_neg()?
    } else {
        magnitude
    };
    i64::try_from(n)
        .map(Value::from)
        .or_else(|_| u64::try_from(n).map(Value::from))
        .ok()
}

/// `a:b:c` in base 60, as a decimal text (`1:30` → `90`; `1:30.5` → `90.5`).
fn sexagesimal(digits: &str) -> Option<String> {
    let mut value: f64 = 0.0;
    for part in digits.split(':') {
        value = value * 60.0 + part.parse::<f64>().ok()?;
    }
    if value.fract() == 0.0 && value.abs() < 1e18 {
        Some(format!("{value:.0}"))
    } else {
        Some(value.to_string())
    }
}

/// PyYAML's `construct_yaml_float`. JSON has no infinities or NaN: those
/// stay text (Heat would pass them on as Python floats).
fn float(text: &str) -> Option<Value> {
    let clean: String = text
        .chars()
        .filter(|c| *c != '_')
        .collect::<String>()
        .to_lowercase();
    let (negative, rest) = match clean.strip_prefix('-') {
        Some(d) => (true, d.to_string()),
        None => (false, clean.strip_prefix('+').unwrap_or(&clean).to_string()),
    };
    let magnitude: f64 = if rest.contains(':') {
        sexagesimal(&rest)?.parse().ok()?
    } else {
        rest.parse().ok()?
    };
    let v = if negative { -magnitude } else { magnitude };
    Number::from_f64(v).map(Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Each row was checked against Heat 19's own loader
    /// (`heat.common.template_format.yaml_loader`).
    #[test]
    fn plain_scalars_as_heat_reads_them() {
        let cases: &[(&str, Value)] = &[
            ("yes", json!(true)),
            ("No", json!(false)),
            ("ON", json!(true)),
            ("off", json!(false)),
            ("y", json!("y")),
            ("n", json!("n")),
            ("True", json!(true)),
            ("~", Value::Null),
            ("", Value::Null),
            ("Null", Value::Null),
            ("017", json!(15)),
            ("08", json!("08")),
            ("0o17", json!("0o17")),
            ("0b101", json!(5)),
            ("0x_1F", json!(31)),
            ("1_000", json!(1000)),
            ("1__0", json!(10)),
            ("+1", json!(1)),
            ("-0", json!(0)),
            ("1:30", json!(90)),
            ("-1:30.5", json!(-90.5)),
            ("190:20:30", json!(685230)),
            ("1e3", json!("1e3")),
            ("1.0e+3", json!(1000.0)),
            ("1.", json!(1.0)),
            (".5", json!(0.5)),
            (".inf", json!(".inf")),
            (".NaN", json!(".NaN")),
            ("2001-12-14", json!("2001-12-14")),
            (
                "2001-12-14t21:59:43.10-05:00",
                json!("2001-12-14t21:59:43.10-05:00"),
            ),
            ("99999999999999999999", json!("99999999999999999999")),
            ("12:60", json!("12:60")),
            ("port", json!("port")),
        ];
        for (text, want) in cases {
            let got = scalar(text.to_string(), true, Tagged::Implicit).unwrap();
            assert_eq!(&got, want, "{text:?}");
        }
        assert_eq!(
            scalar("yes".into(), false, Tagged::Implicit).unwrap(),
            json!("yes")
        );
        assert!(scalar("=".into(), true, Tagged::Implicit).is_err());
    }

    #[test]
    fn tags_as_heat_reads_them() {
        let t = |h: &str, s: &str| tagged(h, s).unwrap();
        assert_eq!(
            scalar("12".into(), false, t("!!", "int")).unwrap(),
            json!(12)
        );
        assert_eq!(
            scalar("017".into(), true, t("!!", "str")).unwrap(),
            json!("017")
        );
        assert_eq!(
            scalar("2001-12-14".into(), true, t("!!", "timestamp")).unwrap(),
            json!("2001-12-14")
        );
        assert_eq!(
            scalar("yes".into(), true, t("!", "")).unwrap(),
            json!("yes")
        );
        assert_eq!(
            scalar("1.5".into(), true, t("tag:yaml.org,2002:", "float")).unwrap(),
            json!(1.5)
        );
        assert!(scalar("abc".into(), true, t("!!", "int")).is_err());
        assert!(scalar("1.5".into(), true, t("!!", "int")).is_err());
        assert!(tagged("!", "foo").is_err());
        assert!(tagged("!!", "binary").is_err());
    }
}
