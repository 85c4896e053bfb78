//! Kubernetes resource quantities (`500m`, `1.5`, `15963568Ki`, `2Gi`, `1e3`,
//! `500M`) parsed exactly into integers: CPU in millicores, memory and storage in
//! bytes.
//!
//! The grammar is the API server's (`k8s.io/apimachinery/pkg/api/resource`):
//!
//! ```text
//! quantity ::= sign? number suffix
//! number   ::= digits | digits "." digits? | "." digits
//! suffix   ::= "" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E"    (decimal SI)
//!            | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"                     (binary SI)
//!            | ("e" | "E") sign? digits                                    (decimal exponent)
//! ```
//!
//! Arithmetic is exact (integers, no floating point). A value that is not a
//! whole number of the target unit is rounded up, as Kubernetes does for
//! `MilliValue()` and `Value()`: `0.1m` CPU is 1 millicore, `1.5` bytes is 2.
//! Anything else, and any value that does not fit an `i64`, is a typed
//! [`QuantityError`], never a silent 0.
//!
//! ```
//! use lapdev_common::quantity::{parse_bytes, parse_cpu_millis};
//!
//! assert_eq!(parse_cpu_millis("500m"), Ok(500));
//! assert_eq!(parse_cpu_millis("1.5"), Ok(1500));
//! assert_eq!(parse_bytes("2Gi"), Ok(2 << 30));
//! assert_eq!(parse_bytes("1e3"), Ok(1000));
//! assert!(parse_bytes("12 GB").is_err());
//! ```

/// A quantity string could not be parsed or does not fit the target unit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The string is empty (or only whitespace).
    #[error("the quantity is empty")]
    Empty,
    /// The numeric part is missing or malformed (e.g. `"Gi"`, `"1.2.3"`, `"abc"`).
    #[error("{0:?} is not a quantity: the number is malformed")]
    InvalidNumber(String),
    /// The suffix is not one Kubernetes knows (e.g. `"1GB"`, `"1x"`, `"1e"`).
    #[error(
        "{input:?} is not a quantity: unknown suffix {suffix:?} (Kubernetes writes \
         Ki, Mi, Gi, Ti for powers of 1024 and k, M, G, T for powers of 1000, as in \
         512Mi or 1Gi; m is thousandths, as in 500m CPU)"
    )]
    InvalidSuffix {
        /// The whole input.
        input: String,
        /// The part after the number.
        suffix: String,
    },
    /// The value does not fit a signed 64-bit integer of the target unit.
    #[error("{0:?} is too large")]
    Overflow(String),
}

/// Parses a CPU quantity into millicores, rounding a fraction of a millicore up.
pub fn parse_cpu_millis(s: &str) -> Result<i64, QuantityError> {
    parse_scaled(s, 3)
}

/// Parses a memory or storage quantity into bytes, rounding a fraction of a byte up.
pub fn parse_bytes(s: &str) -> Result<i64, QuantityError> {
    parse_scaled(s, 0)
}

/// A parsed quantity: `sign * mantissa * 10^exp10 * 2^exp2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Parsed {
    negative: bool,
    mantissa: u128,
    exp10: i64,
    exp2: u32,
}

/// Parses `s` and returns its value times `10^scale`, rounded up to an integer.
fn parse_scaled(s: &str, scale: i64) -> Result<i64, QuantityError> {
    let p = parse(s)?;
    let overflow = || QuantityError::Overflow(s.to_owned());
    let exp10 = p.exp10.checked_add(scale).ok_or_else(overflow)?;
    let magnitude = if p.mantissa == 0 {
        0
    } else if exp10 >= 0 {
        let ten = pow_checked(10, exp10).ok_or_else(overflow)?;
        let two = pow_checked(2, i64::from(p.exp2)).ok_or_else(overflow)?;
        p.mantissa
            .checked_mul(ten)
            .and_then(|v| v.checked_mul(two))
            .ok_or_else(overflow)?
    } else {
        // value = m * 2^e2 / (2^k * 5^k) with k = -exp10: cancel the twos first
        // so that the intermediate stays small.
        let k = exp10.unsigned_abs();
        let e2 = u64::from(p.exp2);
        let (numerator, twos_left) = if e2 >= k {
            let shift = pow_checked(2, (e2 - k) as i64).ok_or_else(overflow)?;
            (p.mantissa.checked_mul(shift).ok_or_else(overflow)?, 0)
        } else {
            (p.mantissa, k - e2)
        };
        // Divide by 2^twos_left * 5^k with ceiling at every step:
        // ceil(ceil(x / a) / b) == ceil(x / (a * b)) for positive integers.
        let mut v = numerator;
        for _ in 0..twos_left {
            v = v.div_ceil(2);
            if v == 1 {
                break;
            }
        }
        for _ in 0..k {
            v = v.div_ceil(5);
            if v == 1 {
                break;
            }
        }
        // Rounding "up" for negative values means towards positive infinity:
        // the magnitude is floored instead (see below).
        if p.negative {
            let exact_den = pow_checked(2, twos_left as i64)
                .and_then(|a| pow_checked(5, k as i64).and_then(|b| a.checked_mul(b)));
            match exact_den {
                Some(den) => numerator / den,
                // The denominator exceeds any u128 numerator: |value| < 1.
                None => 0,
            }
        } else {
            v
        }
    };
    let magnitude = i128::try_from(magnitude).map_err(|_| overflow())?;
    let value = if p.negative { -magnitude } else { magnitude };
    i64::try_from(value).map_err(|_| overflow())
}

fn pow_checked(base: u128, exp: i64) -> Option<u128> {
    let exp = u32::try_from(exp).ok()?;
    base.checked_pow(exp)
}

fn parse(input: &str) -> Result<Parsed, QuantityError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(QuantityError::Empty);
    }
    let invalid = || QuantityError::InvalidNumber(input.to_owned());
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut negative = false;
    if let Some(&c) = bytes.first()
        && (c == b'+' || c == b'-')
    {
        negative = c == b'-';
        i = 1;
    }
    let int_start = i;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        i += 1;
    }
    let int_digits = &s[int_start..i];
    let mut frac_digits = "";
    if i < bytes.len() && bytes[i] == b'.' {
        i += 1;
        let frac_start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        frac_digits = &s[frac_start..i];
    }
    if int_digits.is_empty() && frac_digits.is_empty() {
        return Err(invalid());
    }
    let suffix = &s[i..];
    let (suffix_exp10, exp2) = parse_suffix(suffix).ok_or_else(|| {
        if suffix.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
            invalid()
        } else {
            QuantityError::InvalidSuffix {
                input: input.to_owned(),
                suffix: suffix.to_owned(),
            }
        }
    })?;

    // Significant digits only: leading zeros of the whole number and trailing
    // zeros of the fraction change nothing.
    let frac_trimmed = frac_digits.trim_end_matches('0');
    let mut digits = String::with_capacity(int_digits.len() + frac_trimmed.len());
    digits.push_str(int_digits);
    digits.push_str(frac_trimmed);
    let digits = digits.trim_start_matches('0');
    let mantissa = if digits.is_empty() {
        0
    } else {
        digits
            .parse::<u128>()
            .map_err(|_| QuantityError::Overflow(input.to_owned()))?
    };
    let frac_len = i64::try_from(frac_trimmed.len()).map_err(|_| invalid())?;
    Ok(Parsed {
        negative: negative && mantissa != 0,
        mantissa,
        exp10: suffix_exp10 - frac_len,
        exp2,
    })
}

/// The suffix's power of ten and power of two; `None` if it is not a suffix.
fn parse_suffix(suffix: &str) -> Option<(i64, u32)> {
    let known = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        _ => {
            let rest = suffix
                .strip_prefix('e')
                .or_else(|| suffix.strip_prefix('E'))?;
            let digits = rest
                .strip_prefix('+')
                .or_else(|| rest.strip_prefix('-'))
                .unwrap_or(rest);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            // Exponents beyond this overflow any i64 anyway; keep the arithmetic sane.
            let exp: i64 = rest.parse().ok()?;
            if exp.abs() > 1_000 {
                return Some((exp.signum() * 1_000, 0));
            }
            return Some((exp, 0));
        }
    };
    Some(known)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_in_every_notation() {
        for (q, millis) in [
            ("3800m", 3800),
            ("1.5", 1500),
            ("1", 1000),
            ("0", 0),
            ("0.1", 100),
            (".5", 500),
            ("2.", 2000),
            ("100m", 100),
            ("0.5m", 1),
            ("0.1m", 1),
            ("1e3", 1_000_000),
            ("1E3", 1_000_000),
            ("1e-3", 1),
            ("2k", 2_000_000),
            ("250000u", 250),
            ("1500000000n", 1500),
            ("1n", 1),
            ("+4", 4000),
            ("  8 ", 8000),
            ("96", 96_000),
        ] {
            assert_eq!(parse_cpu_millis(q), Ok(millis), "{q}");
        }
    }

    #[test]
    fn memory_in_every_notation() {
        for (q, bytes) in [
            ("15963568Ki", 15_963_568 * 1024),
            ("2Gi", 2 << 30),
            ("1e3", 1000),
            ("500M", 500_000_000),
            ("1.5Gi", 3 << 29),
            ("0.5Ki", 512),
            ("1.5", 2),
            ("1k", 1000),
            ("1Ki", 1024),
            ("1Mi", 1 << 20),
            ("1Ti", 1 << 40),
            ("1Pi", 1 << 50),
            ("1Ei", 1 << 60),
            ("7E", 7_000_000_000_000_000_000),
            ("1.0000000000000000000000000000Gi", 1 << 30),
            ("1.2345678901234567890123Ei", 1_423_359_869_420_436_338),
            ("129e6", 129_000_000),
            ("12e+2", 1200),
            ("0.000001G", 1000),
            ("1m", 1),
            ("1001m", 2),
            ("0.0000000000000000000000000000000000000000001", 1),
        ] {
            assert_eq!(parse_bytes(q), Ok(bytes), "{q}");
        }
    }

    #[test]
    fn negative_values_round_towards_positive_infinity() {
        assert_eq!(parse_cpu_millis("-1"), Ok(-1000));
        assert_eq!(parse_bytes("-1.5"), Ok(-1));
        assert_eq!(parse_bytes("-0.5"), Ok(0));
        assert_eq!(parse_bytes("-0"), Ok(0));
        assert_eq!(parse_bytes("-1e-100"), Ok(0));
    }

    #[test]
    fn garbage_is_an_error_never_zero() {
        assert_eq!(parse_bytes(""), Err(QuantityError::Empty));
        assert_eq!(parse_bytes("   "), Err(QuantityError::Empty));
        for bad in [
            "Gi", ".", "+", "-", "1.2.3", "abc", "1..2", "--1", "1.2.3Gi",
        ] {
            assert!(
                matches!(parse_bytes(bad), Err(QuantityError::InvalidNumber(_))),
                "{bad}: {:?}",
                parse_bytes(bad)
            );
        }
        for bad in [
            "1GB", "1x", "1e", "1e+", "1ki", "1KI", "1Gi ", "1 Gi", "1mi", "1e1.5", "1Gix",
        ] {
            // "1Gi " is trimmed and fine; skip it.
            if bad == "1Gi " {
                assert_eq!(parse_bytes(bad), Ok(1 << 30));
                continue;
            }
            assert!(
                matches!(parse_bytes(bad), Err(QuantityError::InvalidSuffix { .. })),
                "{bad}: {:?}",
                parse_bytes(bad)
            );
        }
        // The message shows what Kubernetes writes instead.
        let gb = parse_bytes("1GB").unwrap_err().to_string();
        assert!(
            gb.contains("unknown suffix \"GB\"") && gb.contains("1Gi"),
            "{gb}"
        );
    }

    #[test]
    fn overflow_is_an_error() {
        for big in [
            "8Ei",
            "10E",
            "1e19",
            "1e1000000",
            "9223372036854775808",
            "99999999999999999999999999999999999999999999",
        ] {
            assert!(
                matches!(parse_bytes(big), Err(QuantityError::Overflow(_))),
                "{big}: {:?}",
                parse_bytes(big)
            );
        }
        assert_eq!(parse_bytes("9223372036854775807"), Ok(i64::MAX));
        assert_eq!(parse_bytes("-9223372036854775808"), Ok(i64::MIN));
        // A CPU quantity overflows a thousand times sooner in millicores.
        assert!(matches!(
            parse_cpu_millis("9223372036854776"),
            Err(QuantityError::Overflow(_))
        ));
        assert_eq!(
            parse_cpu_millis("9223372036854775"),
            Ok(9_223_372_036_854_775_000)
        );
    }

    #[test]
    fn errors_name_the_input() {
        let e = parse_bytes("12 GB").unwrap_err();
        assert!(e.to_string().contains("12 GB"), "{e}");
    }
}
