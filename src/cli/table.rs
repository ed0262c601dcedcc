//! Aligned tables, as kubectl prints them, and `-o yaml|json`.

use serde::Serialize;

use crate::resources::{Condition, TriggerStatus};

/// Columns padded to the widest cell, three spaces apart; the last column is not padded.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                let pad = widths.get(i).copied().unwrap_or(0).saturating_sub(cell.chars().count()) + 3;
                out.push_str(&" ".repeat(pad));
            }
        }
        out.push('\n');
    }
    out
}

/// The objects as YAML or JSON (a list when there are several).
pub fn format<T: Serialize>(format: &str, items: &[T]) -> anyhow::Result<String> {
    let value = match items {
        [one] => serde_json::to_value(one)?,
        many => serde_json::json!({"apiVersion": "v1", "kind": "List", "items": many}),
    };
    Ok(match format {
        "json" => serde_json::to_string_pretty(&value)? + "\n",
        _ => serde_yaml::to_string(&value)?,
    })
}

/// The Ready condition as a table cell: `True`, `False (Reason)`, or `-` before the broker has
/// written status (and always in a manifest directory).
pub fn ready(conditions: Option<&[Condition]>) -> String {
    match conditions.unwrap_or_default().iter().find(|c| c.type_ == "Ready") {
        None => "-".to_string(),
        Some(c) if c.status == "True" => "True".to_string(),
        Some(c) => format!("{} ({})", c.status, c.reason),
    }
}

/// [`ready`] of a trigger's status.
pub fn trigger_ready(status: Option<&TriggerStatus>) -> String {
    ready(status.map(|s| s.conditions.as_slice()))
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn columns_align_on_the_widest_cell() {
        let rows = vec![
            vec!["hello".to_string(), "default".to_string(), "x".to_string()],
            vec!["a-much-longer-name".to_string(), "prod".to_string(), "y".to_string()],
        ];
        assert_eq!(
            render(&["NAME", "NAMESPACE", "TOPIC"], &rows),
            "NAME                 NAMESPACE   TOPIC\n\
             hello                default     x\n\
             a-much-longer-name   prod        y\n"
        );
    }
}
