//! Text from elsewhere (a guest's logs and events, a registry's answers)
//! made safe to print on the operator's terminal: one place for the CLI's
//! commands and the OCI pull alike.

/// Text a guest chose, made safe for the operator's terminal: control
/// characters (escape sequences that could rewrite the screen, set the
/// window title or the clipboard) and invisible reordering marks (which
/// make text read differently from what it is) are shown as `\u{..}`
/// escapes; every other character, UTF-8 included, stays readable.
pub(crate) fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let invisible = matches!(
            c,
            '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        );
        if c == '\t' {
            out.push(c);
        } else if c.is_control() || invisible {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn guest_text_cannot_drive_the_terminal() {
        assert_eq!(
            printable("\u{1b}]0;owned\u{7}\u{1b}[2Jhi\r\u{9b}31m"),
            "\\u{1b}]0;owned\\u{7}\\u{1b}[2Jhi\\u{d}\\u{9b}31m"
        );
        assert_eq!(printable("évité\tok ✓"), "évité\tok ✓");
        assert_eq!(printable("a\u{202e}b"), "a\\u{202e}b");
    }
}
