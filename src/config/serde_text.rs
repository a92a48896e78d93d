//! How configuration values are written as text: durations (`"30s"`) and
//! secrets (redacted).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserializer, Serialize, Serializer};

pub(super) fn serialize_secret<S: Serializer>(value: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    value.as_ref().map(|_| "<redacted>").serialize(s)
}

/// True for librdkafka property names that hold secrets.
pub fn is_secret_property(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["password", "secret", "jaas", "token", "key.pem", "private"].iter().any(|s| n.contains(s))
}

pub(super) fn serialize_redacted<S: Serializer>(props: &BTreeMap<String, String>, s: S) -> Result<S::Ok, S::Error> {
    let redacted: BTreeMap<&str, &str> =
        props.iter().map(|(k, v)| (k.as_str(), if is_secret_property(k) { "<redacted>" } else { v.as_str() })).collect();
    redacted.serialize(s)
}

/// Durations written as text: `"100ms"`, `"30s"`, `"7d"`.
pub(crate) mod duration_text {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"100ms\", \"30s\" or \"7d\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
                humantime::parse_duration(v).map_err(|e| E::custom(format!("invalid duration \"{v}\": {e}")))
            }
        }
        d.deserialize_str(V)
    }
}

/// [`duration_text`] for an optional duration.
pub(crate) mod duration_text_opt {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => duration_text::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        duration_text::deserialize(d).map(Some)
    }
}
