//! Echoing untrusted text in error messages.

use std::borrow::Cow;

/// Most bytes of its input an error message repeats.
pub const MAX_ECHO: usize = 200;

/// `text` cut to at most [`MAX_ECHO`] bytes (on a character boundary), with
/// `…` when cut: error messages never echo more than that of their input.
pub fn clip(text: &str) -> Cow<'_, str> {
    if text.len() <= MAX_ECHO {
        return text.into();
    }
    let mut end = MAX_ECHO;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end]).into()
}

/// `text` clipped and quoted, for an error message: `"ab\"c"`.
pub fn shown(text: &str) -> String {
    format!("{:?}", clip(text))
}

#[cfg(test)]
mod tests {
    #[test]
    fn clipped_text_keeps_200_bytes_on_a_character_boundary() {
        assert_eq!(super::clip("short"), "short");
        let long = "é".repeat(500);
        let clipped = super::clip(&long);
        assert!(clipped.len() <= 203 && clipped.ends_with('…'), "{clipped}");
        assert_eq!(super::shown("a\"b"), r#""a\"b""#);
    }
}
