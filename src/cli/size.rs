//! Byte sizes on the command line: `256MiB`, `4M`, `2GiB`, `512KiB`, `1GB`, or bare bytes.
//! `K`/`M`/`G` and `KiB`/`MiB`/`GiB` are powers of 1024; `KB`/`MB`/`GB` powers of 1000.

/// Parses a byte size for clap; the error says what is accepted.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (t[..i].trim(), &t[i..]),
        None => (t, ""),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size; use e.g. 512KiB, 256MiB, 2GiB"))?;
    let mult: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        _ => {
            return Err(format!(
                "'{s}' has unknown unit '{unit}'; use B, KiB, MiB, GiB (or KB, MB, GB)"
            ));
        }
    };
    let bytes = value * mult;
    if !bytes.is_finite() || !(0.0..=(1u64 << 50) as f64).contains(&bytes) {
        return Err(format!("'{s}' is out of range"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_size("4M").unwrap(), 4 << 20);
        assert_eq!(parse_size("1.5KiB").unwrap(), 1536);
        assert_eq!(parse_size("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_size("0").unwrap(), 0);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").unwrap_err().contains("not a size"));
        assert!(
            parse_size("3 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_size("-1MiB").is_err());
    }
}
