//! Writing setting values into PostgreSQL's configuration files.
//!
//! `postgresql.conf` and `postgresql.auto.conf` hold `name = 'value'` lines. Inside single
//! quotes PostgreSQL's configuration lexer takes `''` for a quote and backslash escapes
//! (`\n`, `\t`, `\\`, octal `\ooo`), and refuses a raw newline. A value written with only
//! its quotes doubled therefore breaks the file when it holds a newline (a restore point may
//! be named so) and changes meaning when it holds a backslash. [`quote`] writes any value so
//! that PostgreSQL reads back exactly the same string.

/// `value` as one single-quoted setting value that PostgreSQL parses back to `value`.
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\{:03o}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// One `name = 'value'` line.
pub fn line(name: &str, value: &str) -> String {
    format!("{name} = {}\n", quote(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newline_in_a_value_stays_on_one_line() {
        let q = quote("before\nafter");
        assert_eq!(q, "'before\\nafter'");
        assert!(!q.contains('\n'));
    }

    #[test]
    fn quotes_backslashes_and_control_characters_are_escaped() {
        assert_eq!(quote("it's"), "'it''s'");
        assert_eq!(quote(r"C:\dir"), r"'C:\\dir'");
        assert_eq!(quote("a\tb\rc\u{1}"), "'a\\tb\\rc\\001'");
        assert_eq!(quote(""), "''");
    }
}
