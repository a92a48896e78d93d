//! `TRIBUTARY_<SECTION>__<KEY>` environment overrides, applied to the
//! parsed TOML table before it is typed, so an override is checked exactly
//! as the file is.

use serde::Deserialize;

use super::{ConfigError, ENV_PREFIX};

/// Applies one `TRIBUTARY_<SECTION>__<KEY>` override to the parsed table.
///
/// `TRIBUTARY_KAFKA__BOOTSTRAP_SERVERS`, `TRIBUTARY_MERGE__POLICY`,
/// `TRIBUTARY_KAFKA__PROPERTIES__SASL_PASSWORD` (→ `sasl.password`),
/// `TRIBUTARY_SOURCES__EU__PRIORITY` (source by name; `_` matches `-`).
/// Returns the key path it set (`merge.deletes`, `sources[0].priority`).
pub(super) fn apply_override(table: &mut toml::Table, var: &str, raw: &str) -> Result<String, ConfigError> {
    let err = |message: String| ConfigError::Env { var: var.into(), message };
    let parts: Vec<String> = var[ENV_PREFIX.len()..].split("__").map(str::to_ascii_lowercase).collect();
    let value = parse_env_value(raw);
    match parts.as_slice() {
        [section, props, name] if section == "kafka" && props == "properties" => {
            let kafka = table_mut(table, "kafka").map_err(&err)?;
            let properties = table_mut(kafka, "properties").map_err(&err)?;
            properties.insert(name.replace('_', "."), toml::Value::String(raw.to_string()));
            Ok(format!("kafka.properties.{}", name.replace('_', ".")))
        }
        [section, name, key] if section == "sources" => {
            let sources = table
                .get_mut("sources")
                .and_then(toml::Value::as_array_mut)
                .ok_or_else(|| err("the file has no [[sources]]".into()))?;
            let wanted = name.replace('_', "-");
            let (index, source) = sources
                .iter_mut()
                .filter_map(toml::Value::as_table_mut)
                .enumerate()
                .find(|(_, t)| {
                    t.get("name")
                        .and_then(toml::Value::as_str)
                        .is_some_and(|n| n.to_ascii_lowercase().replace('_', "-") == wanted)
                })
                .ok_or_else(|| err(format!("no source named \"{name}\" in the file")))?;
            source.insert(key.clone(), value);
            Ok(format!("sources[{index}].{key}"))
        }
        [section, ..] if section == "tables" => Err(err(
            "[[tables]] cannot be set from the environment; write the tables in the file (TRIBUTARY_TABLES_PATTERN__<KEY> sets a key of [tables_pattern])".into(),
        )),
        [section, key] if section != "sources" => {
            table_mut(table, section).map_err(&err)?.insert(key.clone(), value);
            Ok(format!("{section}.{key}"))
        }
        _ => Err(err(
            "expected TRIBUTARY_<SECTION>__<KEY>, TRIBUTARY_KAFKA__PROPERTIES__<NAME> or TRIBUTARY_SOURCES__<NAME>__<KEY>".into(),
        )),
    }
}

fn table_mut<'a>(table: &'a mut toml::Table, key: &str) -> Result<&'a mut toml::Table, String> {
    table
        .entry(key.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .ok_or_else(|| format!("`{key}` is not a table"))
}

/// An override value: a TOML literal when it parses as one (numbers,
/// booleans, arrays, quoted strings), otherwise the raw text as a string.
fn parse_env_value(raw: &str) -> toml::Value {
    #[derive(Deserialize)]
    struct Holder {
        v: toml::Value,
    }
    match toml::from_str::<Holder>(&format!("v = {raw}")) {
        Ok(h) if !matches!(h.v, toml::Value::Datetime(_)) => h.v,
        _ => toml::Value::String(raw.to_string()),
    }
}
