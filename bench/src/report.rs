//! Plain text tables for the end of a run, and number formatting.

use serde::Serialize;

/// One table of the report: printed as aligned columns, and kept as is in
/// the JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Table {
    pub title: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub notes: Vec<String>,
}

impl Table {
    pub fn new(title: &str, headers: &[&str]) -> Self {
        Self {
            title: title.into(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        assert_eq!(cells.len(), self.headers.len(), "a row of {:?}", self.title);
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let cols = self.headers.len();
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .chain(std::iter::once(&self.headers))
                    .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |r: &[String]| {
            r.iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (cell, w))| {
                    // Text left, numbers right.
                    if i > 0 && looks_numeric(cell) {
                        format!("{cell:>w$}")
                    } else {
                        format!("{cell:<w$}")
                    }
                })
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        };
        let mut out = format!("{}\n", self.title);
        out.push_str(&line(&self.headers));
        out.push('\n');
        out.push_str(
            &widths
                .iter()
                .map(|w| "-".repeat(*w))
                .collect::<Vec<_>>()
                .join("  "),
        );
        out.push('\n');
        for r in &self.rows {
            out.push_str(&line(r));
            out.push('\n');
        }
        for n in &self.notes {
            out.push_str(&format!("  - {n}\n"));
        }
        out
    }
}

/// A plain number, maybe with a unit: "1,234", "12.5 %", "30 µs".
fn looks_numeric(s: &str) -> bool {
    let mut words = s.split(' ');
    let number = words.next().unwrap_or("");
    !number.is_empty()
        && number
            .chars()
            .all(|c| c.is_ascii_digit() || c == ',' || c == '.')
        && words.count() <= 1
}

/// 1234567.8 -> "1,234,568".
pub fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    if x < 0.0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A ratio with two decimals, "-" when undefined.
pub fn ratio(a: f64, b: f64) -> (f64, String) {
    if b > 0.0 && a.is_finite() && b.is_finite() {
        let r = a / b;
        (r, format!("{r:.2}"))
    } else {
        (f64::NAN, "-".into())
    }
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// A latency in ms, readable from µs to seconds.
pub fn ms(x: f64) -> String {
    if !x.is_finite() {
        "-".into()
    } else if x < 1.0 {
        format!("{:.0} µs", x * 1000.0)
    } else if x < 100.0 {
        format!("{x:.2} ms")
    } else {
        format!("{x:.0} ms")
    }
}

pub fn status(pass: bool) -> String {
    if pass { "PASS" } else { "MISS" }.into()
}

pub const NOT_AVAILABLE: &str = "not available in this build";
