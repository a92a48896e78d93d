//! The line of the file each problem's key is on (`… (line 53)`), added
//! after the checks so they need not know where a key was written.

use super::ConfigError;

/// Adds the line of the key each problem names (`sources[2].transform.cast.balance
/// ...: unknown cast "centz" (line 53)`), where the key is in the file (not
/// for keys set by environment overrides, or missing ones).
pub(super) fn with_lines(e: ConfigError, text: &str, overridden: &[String]) -> ConfigError {
    let ConfigError::Invalid { origin, problems } = e else { return e };
    let Ok(doc) = toml_edit::ImDocument::parse(text) else { return ConfigError::Invalid { origin, problems } };
    let problems = problems
        .into_iter()
        .map(|p| {
            let path = p.split([' ', ':']).next().unwrap_or_default();
            let from_env =
                overridden.iter().any(|k| path == k || path.starts_with(&format!("{k}.")) || k.starts_with(&format!("{path}.")));
            match key_line(&doc, text, path).filter(|_| !from_env) {
                Some(line) => format!("{p} (line {line})"),
                None => p,
            }
        })
        .collect();
    ConfigError::Invalid { origin, problems }
}

/// The line (1-based) of the key at `path` (`a.b[2].c`) in `doc`, parsed
/// from `text`, or of its closest enclosing key that is there.
fn key_line(doc: &toml_edit::ImDocument<&str>, text: &str, path: &str) -> Option<usize> {
    let mut table: &dyn toml_edit::TableLike = doc.as_table();
    let mut span = None;
    let mut segments = path.split('.').peekable();
    while let Some(segment) = segments.next() {
        let (name, index) = match segment.split_once('[') {
            Some((name, rest)) => (name, Some(rest.strip_suffix(']')?.parse::<usize>().ok()?)),
            None => (segment, None),
        };
        // A key that is missing (`tables[1].sources` of a table without
        // sources) is named by the line of the section that lacks it.
        let Some((key, item)) = table.get_key_value(name) else { break };
        span = key.span().or(span);
        let item = match index {
            None => item,
            Some(i) => {
                let Some(t) = item.as_array_of_tables().and_then(|a| a.get(i)) else { break };
                span = t.span().or(span);
                if segments.peek().is_none() {
                    break;
                }
                table = t;
                continue;
            }
        };
        if segments.peek().is_some() {
            table = item.as_table_like()?;
        }
    }
    let start = span?.start;
    Some(text[..start.min(text.len())].matches('\n').count() + 1)
}
