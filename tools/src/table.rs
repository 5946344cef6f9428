//! The tables the command line prints, drawn by `comfy-table`: no borders,
//! a header row, numbers right-aligned.

use comfy_table::{presets, CellAlignment, ContentArrangement, Table};

/// A table with `header`; the columns numbered in `right` are right-aligned.
pub fn new(header: &[&str], right: &[usize]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().copied());
    for &i in right {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}

/// The table as text, without the padding comfy-table leaves at line ends.
pub fn text(t: &Table) -> String {
    t.lines()
        .map(|l| l.trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A two-column table of names and values, without a header.
pub fn key_values<K: ToString, V: ToString>(rows: impl IntoIterator<Item = (K, V)>) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled);
    for (k, v) in rows {
        t.add_row(vec![k.to_string(), v.to_string()]);
    }
    t
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn numbers_align_right_under_their_header() {
        let mut t = new(&["step", "ms"], &[1]);
        t.add_row(vec!["a", "1.5"]);
        t.add_row(vec!["bb", "12.25"]);
        let s = t.to_string();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 3, "{s}");
        assert!(lines[0].contains("step") && lines[0].contains("ms"), "{s}");
        // Right-aligned: the numbers end in the same column.
        let end = |l: &str, n: &str| l.find(n).map(|i| i + n.len());
        assert_eq!(end(lines[1], "1.5"), end(lines[2], "12.25"), "{s}");
    }
}
