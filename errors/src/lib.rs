//! How every husk binary shows an error: the error and each of its causes (`source()`),
//! `: `-joined on one line, so that what reaches containerd, a log or a user keeps the
//! cause (the errno, the failing path) that a bare `{e}` of a `thiserror` value drops.
//!
//! A cause whose text the message already ends with (an error that prints its source
//! itself) is not repeated.

use std::error::Error;
use std::fmt;

/// An error with its causes, for `format!("{}", Chain(&e))`.
pub struct Chain<'a>(pub &'a (dyn Error + 'a));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        f.write_str(&shown)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            let text = c.to_string();
            if !text.is_empty() && !shown.ends_with(&text) {
                write!(f, ": {text}")?;
                shown = text;
            }
            cause = c.source();
        }
        Ok(())
    }
}

/// `e` and its causes on one line (see [`Chain`]).
pub fn chain(e: &dyn Error) -> String {
    Chain(e).to_string()
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[derive(Debug)]
    struct Outer(io::Error);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Cannot reach /run/x.sock")
        }
    }
    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[derive(Debug)]
    struct Repeats(io::Error);
    impl fmt::Display for Repeats {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "open: {}", self.0)
        }
    }
    impl Error for Repeats {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn the_cause_and_its_errno_are_kept() {
        let e = Outer(io::Error::from_raw_os_error(libc_enoent()));
        let s = chain(&e);
        assert!(s.starts_with("Cannot reach /run/x.sock: "), "{s}");
        assert!(s.contains("os error 2"), "{s}");
    }

    #[test]
    fn a_cause_the_message_already_shows_is_not_repeated() {
        let e = Repeats(io::Error::other("disk full"));
        assert_eq!(chain(&e), "open: disk full");
    }

    #[test]
    fn an_error_without_a_cause_is_itself() {
        assert_eq!(chain(&io::Error::other("plain")), "plain");
    }

    fn libc_enoent() -> i32 {
        2
    }
}
