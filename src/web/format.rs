//! Numbers as the page shows them.

/// 5 400 000 → "5.40 M"; 1 280 → "1,280".
pub fn count(n: usize) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2} B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2} M", n as f64 / 1e6),
        n => {
            let s = n.to_string();
            let mut out = String::new();
            for (i, c) in s.chars().enumerate() {
                if i > 0 && (s.len() - i) % 3 == 0 {
                    out.push(',');
                }
                out.push(c);
            }
            out
        }
    }
}

/// Bytes in KB (1000) below 10 MB, else MB: what file sizes look like in a download list.
pub fn bytes(b: u64) -> String {
    if b < 10_000_000 { format!("{:.1} KB", b as f64 / 1e3) } else { format!("{:.1} MB", b as f64 / 1e6) }
}

/// GPU memory in KiB, MiB or GiB (a rank-8 adapter's AdamW state is well under 1 MiB).
pub fn mib(b: u64) -> String {
    let m = b as f64 / (1u64 << 20) as f64;
    match m {
        m if m < 1.0 => format!("{:.0} KiB", b as f64 / 1024.0),
        m if m < 1024.0 => format!("{m:.0} MiB"),
        m => format!("{:.2} GiB", m / 1024.0),
    }
}

pub fn percent(f: f64) -> String {
    if f < 0.001 { format!("{:.3}%", 100.0 * f) } else { format!("{:.2}%", 100.0 * f) }
}

/// Seconds as "42 s" or "3 min 05 s".
pub fn duration(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    if s < 60 { format!("{s} s") } else { format!("{} min {:02} s", s / 60, s % 60) }
}

/// A library message ("the text has …") as a sentence: capitalised, with a full stop.
pub fn sentence(e: impl std::fmt::Display) -> String {
    let e = e.to_string();
    let mut c = e.chars();
    c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or(e) + "."
}
