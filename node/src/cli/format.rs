//! Tables and times as docker prints them.

use clap::Args;

#[derive(Args)]
pub struct ListArgs {
    /// Only display IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Output format: "table" (default) or "json"
    #[arg(long, default_value = "table")]
    pub format: String,
}

impl ListArgs {
    pub fn json(&self) -> bool {
        self.format == "json"
    }
}

pub fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Left-aligned columns, three spaces apart (docker's tabwriter settings).
pub fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    print!("{}", render_table(headers, &rows));
}

pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, cell) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            l.push_str(c);
            if i + 1 < cells.len() {
                l.push_str(&" ".repeat(widths[i] - c.chars().count() + 3));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

/// "5 seconds ago", "About a minute ago", … (docker's go-units HumanDuration).
pub fn ago(then_ms: u64, now_ms: u64) -> String {
    let secs = now_ms.saturating_sub(then_ms) / 1000;
    let d = match secs {
        0 => "Less than a second".to_string(),
        1 => "1 second".to_string(),
        s if s < 60 => format!("{s} seconds"),
        s if s < 120 => "About a minute".to_string(),
        s if s < 3600 => format!("{} minutes", s / 60),
        s if s < 2 * 3600 => "About an hour".to_string(),
        s if s < 48 * 3600 => format!("{} hours", s / 3600),
        s => format!("{} days", s / 86400),
    };
    format!("{d} ago")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_are_aligned_three_spaces_apart() {
        let t = render_table(
            &["ID", "NAME"],
            &[
                vec!["abc".into(), "web".into()],
                vec!["a".into(), "x".into()],
            ],
        );
        assert_eq!(t, "ID    NAME\nabc   web\na     x\n");
    }

    #[test]
    fn ago_reads_like_docker() {
        assert_eq!(ago(0, 5_000), "5 seconds ago");
        assert_eq!(ago(0, 90_000), "About a minute ago");
        assert_eq!(ago(10, 0), "Less than a second ago");
    }
}
