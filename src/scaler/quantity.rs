//! Kubernetes quantities ("1.5k", "250m", "2Gi", "1e3") as KEDA accepts them in
//! targets and metric values.

/// Parses a Kubernetes quantity into a float.
///
/// Accepts an optional sign, a decimal number, and one suffix: a decimal SI suffix
/// (`n u m k M G T P E`), a binary one (`Ki Mi Gi Ti Pi Ei`) or a decimal exponent
/// (`e3`, `E-2`).
pub fn parse_quantity(input: &str) -> Result<f64, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty quantity".into());
    }
    let split = s
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || c == '.' || ((c == '+' || c == '-') && i == 0)))
        .map_or(s.len(), |(i, _)| i);
    let (number, suffix) = s.split_at(split);
    let base: f64 = number
        .parse()
        .map_err(|_| format!("{input:?} is not a quantity (expected a number with an optional suffix such as 250m, 1.5k, 2Gi)"))?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..]
                .parse()
                .map_err(|_| format!("{input:?} has a malformed exponent"))?;
            10f64.powi(e)
        }
        other => return Err(format!("{input:?} has the unknown suffix {other:?}")),
    };
    Ok(base * factor)
}

/// KEDA's rule for metric values: NaN, infinities and negatives become 0.
#[must_use]
pub fn sanitize(value: f64) -> f64 {
    if value.is_finite() && value > 0.0 {
        value
    } else {
        0.0
    }
}

/// Formats a value as a Kubernetes quantity in milli-units when it is not whole
/// (`1500m`), as the external metrics API returns it.
#[must_use]
pub fn format_quantity(value: f64) -> String {
    let v = sanitize(value);
    if v.fract() == 0.0 && v < 9.0e15 {
        format!("{}", v as u64)
    } else {
        format!("{}m", (v * 1000.0).round() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_like_kubernetes() {
        let cases = [
            ("plain", "5", 5.0),
            ("fraction", "1.5", 1.5),
            ("milli", "250m", 0.25),
            ("kilo", "1.5k", 1500.0),
            ("mega", "2M", 2e6),
            ("kibi", "1Ki", 1024.0),
            ("gibi", "2Gi", 2.0 * 1024f64.powi(3)),
            ("exponent", "1e3", 1000.0),
            ("negative exponent", "5E-1", 0.5),
            ("signed", "-3", -3.0),
        ];
        for (name, input, want) in cases {
            let got = parse_quantity(input).unwrap();
            assert!((got - want).abs() < 1e-9, "{name}: {input} gave {got}");
        }
    }

    #[test]
    fn bad_quantities_say_why() {
        for input in ["", "abc", "5x", "1e", "1..2"] {
            assert!(parse_quantity(input).is_err(), "{input:?}");
        }
    }

    #[test]
    fn values_are_sanitized_and_formatted() {
        assert_eq!(sanitize(f64::NAN), 0.0);
        assert_eq!(sanitize(-1.0), 0.0);
        assert_eq!(sanitize(f64::INFINITY), 0.0);
        assert_eq!(format_quantity(3.0), "3");
        assert_eq!(format_quantity(1.5), "1500m");
        assert_eq!(format_quantity(-2.0), "0");
    }
}
