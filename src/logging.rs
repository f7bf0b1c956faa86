//! Log set-up shared by the binaries: `RUST_LOG` filters (default `info`),
//! to stderr so stdout stays free for results.

pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Text from a client as it may go into the log: at most `max` bytes (cut
/// at a character boundary) and a note of how long it was, so a hostile
/// client cannot fill the log with its own words.
pub fn clip(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..end], text.len()).into()
}

/// What the daemons log of one piece of client text at most.
pub const MAX_LOGGED_CLIENT_TEXT: usize = 200;

#[cfg(test)]
mod tests {
    use super::clip;

    #[test]
    fn clipped_text_is_short_and_says_how_long_it_was() {
        assert_eq!(clip("short", 10), "short");
        let long = "é".repeat(5000);
        let c = clip(&long, 201);
        assert!(c.len() < 240, "{c}");
        assert!(c.ends_with("… (10000 bytes in all)"), "{c}");
    }
}
