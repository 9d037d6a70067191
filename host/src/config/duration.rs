use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

/// A protobuf `Duration` as Envoy's YAML spells it: `"0.25s"`, `"3s"`, or
/// `{seconds: 3, nanos: 0}`. The units `ms`, `us`, `m` and `h` are accepted
/// too, since hand-written configs use them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration `{s}` has no unit (write e.g. `1.5s`)"))?;
        let (number, unit) = s.split_at(split);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("invalid duration `{s}` (write e.g. `0.25s`)"))?;
        let seconds = match unit {
            "s" => value,
            "ms" => value / 1e3,
            "us" => value / 1e6,
            "ns" => value / 1e9,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            _ => {
                return Err(format!(
                    "invalid duration `{s}`: unknown unit `{unit}` (use s, ms, us, ns, m or h)"
                ));
            }
        };
        if !seconds.is_finite() || seconds > 315_576_000_000.0 {
            return Err(format!("duration `{s}` is out of range"));
        }
        Ok(Duration(std::time::Duration::from_secs_f64(seconds)))
    }

    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DurationVisitor)
    }
}

struct DurationVisitor;

impl<'de> Visitor<'de> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as \"1.5s\" or {seconds, nanos}")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        Duration::parse(v).map_err(E::custom)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Duration, A::Error> {
        let (mut seconds, mut nanos) = (0u64, 0u32);
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "seconds" => seconds = map.next_value()?,
                "nanos" => nanos = map.next_value()?,
                other => return Err(de::Error::unknown_field(other, &["seconds", "nanos"])),
            }
        }
        if nanos >= 1_000_000_000 {
            return Err(de::Error::custom("duration nanos must be below 1000000000"));
        }
        Ok(Duration(std::time::Duration::new(seconds, nanos)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_spellings_parse() {
        assert_eq!(Duration::parse("0.25s").unwrap().0.as_millis(), 250);
        assert_eq!(Duration::parse("3s").unwrap().0.as_secs(), 3);
        assert_eq!(Duration::parse("100ms").unwrap().0.as_millis(), 100);
        assert_eq!(Duration::parse("1m").unwrap().0.as_secs(), 60);
    }

    #[test]
    fn bad_durations_are_rejected() {
        assert!(Duration::parse("3").is_err());
        assert!(Duration::parse("abc").is_err());
        assert!(Duration::parse("3 parsecs").is_err());
        assert!(Duration::parse("1.2.3s").is_err());
    }
}
