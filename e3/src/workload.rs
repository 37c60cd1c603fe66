//! The evaluation workloads: our MPyC programs under `examples/` at three fixed sizes.
//!
//! Every workload does the same work on every run with the same size and party count (same
//! rounds, same messages; byte counts vary by well under 1 % with the encoding of field
//! elements), so wall-time ratios between modes compare equal work. The benches
//! (`benches/benches/mpyc*.rs`, `regions.rs`) and the e3 matrix take their arguments from here;
//! the shapes (rounds, bytes per party, plain-TCP time) are measured by `examples/measure.py`
//! and listed in `examples/README.md`.

use std::fmt;
use std::path::{Path, PathBuf};

/// One of our MPyC programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Program {
    /// `secretsanta.py --draws 16`: many sequential rounds of small messages.
    SecretSanta,
    /// `cnn_digits.py`: secure CNN inference on scikit-learn's digits; few rounds, large
    /// messages.
    Cnn,
}

/// An input size of a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Size {
    /// The smallest size (quick runs, CI).
    Low,
    /// The middle size.
    Medium,
    /// The largest size.
    High,
}

/// Draws per Secret Santa group: a run keeps the first derangement among them and draws on
/// only if none was one (probability about (1 − 1/e)^16 ≈ 0.07 % per group).
pub const SANTA_DRAWS: u32 = 16;

/// A program at a size: what a benchmark or the matrix runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Workload {
    /// The program.
    pub program: Program,
    /// Its input size.
    pub size: Size,
}

impl Program {
    /// Both programs.
    pub const ALL: [Program; 2] = [Program::SecretSanta, Program::Cnn];

    /// The short name used in CSV files and on the command line.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Program::SecretSanta => "secretsanta",
            Program::Cnn => "cnn",
        }
    }

    /// The script under `examples/`.
    #[must_use]
    pub fn script(self) -> &'static str {
        match self {
            Program::SecretSanta => "secretsanta.py",
            Program::Cnn => "cnn_digits.py",
        }
    }
}

impl Size {
    /// The three sizes, smallest first.
    pub const ALL: [Size; 3] = [Size::Low, Size::Medium, Size::High];

    /// `low`, `medium` or `high`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Size::Low => "low",
            Size::Medium => "medium",
            Size::High => "high",
        }
    }
}

impl Workload {
    /// `program` at `size`.
    #[must_use]
    pub fn new(program: Program, size: Size) -> Self {
        Self { program, size }
    }

    /// The program's arguments (after the script, before MPyC's own `-M -I -P`).
    #[must_use]
    pub fn args(&self) -> Vec<String> {
        let v: Vec<String> = match (self.program, self.size) {
            (Program::SecretSanta, size) => {
                let people: &[&str] = match size {
                    Size::Low => &["3", "4"],
                    Size::Medium => &["3", "4", "5", "6"],
                    Size::High => &["3", "4", "5", "6", "7", "8"],
                };
                let mut v = vec!["--people".to_owned()];
                v.extend(people.iter().map(|s| (*s).to_owned()));
                v.push("--draws".to_owned());
                v.push(SANTA_DRAWS.to_string());
                v
            }
            (Program::Cnn, size) => {
                let batch = match size {
                    Size::Low => "1",
                    Size::Medium => "4",
                    Size::High => "16",
                };
                vec!["--batch".to_owned(), batch.to_owned()]
            }
        };
        v
    }

    /// The script's path, given the repository's `examples/` directory.
    #[must_use]
    pub fn script_in(&self, examples: &Path) -> PathBuf {
        examples.join(self.program.script())
    }

    /// A line for tables: `secretsanta low (--people 3 4 --draws 16)`.
    #[must_use]
    pub fn label(&self) -> String {
        format!(
            "{} {} ({})",
            self.program.name(),
            self.size.name(),
            self.args().join(" ")
        )
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.program.name(), self.size.name())
    }
}

/// The repository's `examples/` directory (for the benches and the matrix, which run from
/// the source tree).
#[must_use]
pub fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sizes_grow_and_santa_is_fixed_work() {
        for p in Program::ALL {
            assert!(examples_dir().join(p.script()).is_file(), "{}", p.script());
        }
        let santa = Workload::new(Program::SecretSanta, Size::High).args();
        assert!(santa.ends_with(&["--draws".to_owned(), "16".to_owned()]));
        let batch = |s| {
            Workload::new(Program::Cnn, s).args()[1]
                .parse::<u32>()
                .unwrap()
        };
        assert!(batch(Size::Low) < batch(Size::Medium) && batch(Size::Medium) < batch(Size::High));
    }
}
