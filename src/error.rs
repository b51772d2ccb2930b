//! Printing an error with its causes, once each.
//!
//! The project's error types follow one rule: a variant's message never repeats its
//! `#[source]`, so that printing the chain (anyhow's `{:#}`, or [`Chain`] in a log line)
//! says each cause once.

use std::error::Error;
use std::fmt;

/// Displays an error and every cause under it: `outer: cause: root cause`.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Chain;

    #[test]
    fn each_cause_is_said_once() {
        let err = crate::trust::TrustError::ReadFile {
            parameter: "ca",
            path: Some("/missing/ca.pem".into()),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(
            Chain(&err).to_string(),
            "parameter ca: cannot read /missing/ca.pem: entity not found"
        );
    }
}
