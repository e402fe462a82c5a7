//! Problems found in a specs directory, each with its file and line.

use std::fmt;

use serde::Serialize;

/// One problem in a spec or schema file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The file, as named in the [`Sources`](crate::Sources) (relative to the specs directory).
    pub file: String,
    /// The 1-based line the problem is about.
    pub line: u32,
    /// What is wrong, lower-case, without a trailing period.
    pub message: String,
}

impl Problem {
    /// A problem at a file and line.
    pub fn new(file: impl Into<String>, line: u32, message: impl Into<String>) -> Problem {
        Problem {
            file: file.into(),
            line,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}
