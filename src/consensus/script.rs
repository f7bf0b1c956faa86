//! Data-driven tests, in the habit of etcd's `testdata/*.txt` and raft-rs's
//! `src/quorum/testdata`: a file of cases, each a command with `key=value`
//! arguments, a `----` line, and the output the command must print. The
//! expected output sits beside the input, so a rule reads as a table of
//! what goes in and what comes out.
//!
//! ```text
//! # a comment
//! committed members=1,2,3 flush=1:30,2:20,3:10
//! ----
//! 20
//! ```
//!
//! `WALKEEPER_REWRITE=1 cargo test --lib consensus::` rewrites the files
//! with what the code prints now (review the diff before committing it).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One case of a script: `cmd key=value ... flag ...`.
#[derive(Debug)]
pub struct Case {
    /// Where the case starts, for failure messages.
    pub line: usize,
    pub cmd: String,
    args: BTreeMap<String, String>,
    input: String,
    expected: String,
    /// The 0-based line range of the expected output in the file.
    output_lines: (usize, usize),
}

impl Case {
    /// The value of `key`; panics (a broken script) when it is missing.
    pub fn arg(&self, key: &str) -> &str {
        self.args
            .get(key)
            .unwrap_or_else(|| panic!("line {}: `{}` needs {key}=", self.line, self.cmd))
    }

    pub fn opt(&self, key: &str) -> Option<&str> {
        self.args.get(key).map(String::as_str)
    }

    /// Whether the bare word `flag` (no `=`) was given.
    pub fn flag(&self, flag: &str) -> bool {
        self.args.get(flag).is_some_and(|v| v.is_empty())
    }

    /// A comma-separated list of numbers; empty for a missing key.
    pub fn numbers(&self, key: &str) -> Vec<u64> {
        self.opt(key)
            .map_or_else(Vec::new, |v| numbers(self.line, v))
    }

    /// `id:value` pairs, comma-separated.
    pub fn pairs(&self, key: &str) -> BTreeMap<u64, u64> {
        let Some(v) = self.opt(key) else {
            return BTreeMap::new();
        };
        v.split(',')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p
                    .split_once(':')
                    .unwrap_or_else(|| panic!("line {}: `{p}` is not id:value", self.line));
                (number(self.line, k), number(self.line, v))
            })
            .collect()
    }
}

fn number(line: usize, s: &str) -> u64 {
    s.parse()
        .unwrap_or_else(|_| panic!("line {line}: `{s}` is not a number"))
}

fn numbers(line: usize, s: &str) -> Vec<u64> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| number(line, p))
        .collect()
}

fn parse(text: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    while let Some((i, line)) = lines.next() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut words = trimmed.split_whitespace();
        let cmd = words.next().unwrap_or_default().to_string();
        let args = words
            .map(|w| match w.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (w.to_string(), String::new()),
            })
            .collect();
        match lines.next() {
            Some((_, sep)) if sep.trim() == "----" => {}
            _ => panic!("line {}: `{trimmed}` is not followed by ----", i + 1),
        }
        let mut expected = String::new();
        let start = i + 2;
        let mut end = start;
        while let Some((_, l)) = lines.peek() {
            if l.trim().is_empty() {
                break;
            }
            expected.push_str(l.trim_end());
            expected.push('\n');
            lines.next();
            end += 1;
        }
        cases.push(Case {
            line: i + 1,
            cmd,
            args,
            input: trimmed.to_string(),
            expected,
            output_lines: (start, end),
        });
    }
    cases
}

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/consensus/testdata")
        .join(name)
}

/// Runs every case of `testdata/<name>` through `run` (which returns the
/// output, one or more lines) and asserts the outputs, all mismatches at
/// once. With `WALKEEPER_REWRITE=1` writes the actual outputs instead.
pub fn run_file(name: &str, mut run: impl FnMut(&Case) -> String) {
    let path = testdata(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let cases = parse(&text);
    assert!(!cases.is_empty(), "{}: no cases", path.display());
    let mut failures = String::new();
    let mut outputs = Vec::new();
    for case in &cases {
        let mut got = run(case);
        if !got.ends_with('\n') {
            got.push('\n');
        }
        if got != case.expected {
            let _ = write!(
                failures,
                "\n{}:{}: {}\n  expected:\n{}  got:\n{}",
                name, case.line, case.input, case.expected, got
            );
        }
        outputs.push((case.output_lines, got));
    }
    if std::env::var_os("WALKEEPER_REWRITE").is_some() {
        std::fs::write(&path, rewrite(&text, &outputs)).expect("rewrite testdata");
        return;
    }
    assert!(failures.is_empty(), "{} case(s) differ:{failures}", name);
}

/// `text` with each case's output lines replaced by what the code printed;
/// comments and everything else stay.
fn rewrite(text: &str, outputs: &[((usize, usize), String)]) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    let mut next = 0;
    for ((start, end), got) in outputs {
        for l in &lines[next..*start] {
            out.push_str(l);
            out.push('\n');
        }
        out.push_str(got);
        next = *end;
    }
    for l in &lines[next..] {
        out.push_str(l);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cases_flags_and_multiline_outputs() {
        let cases = parse("# c\nfoo a=1,2 b=3:4 quick\n----\nx\ny\n\nbar\n----\nz\n");
        assert_eq!(cases.len(), 2);
        assert_eq!(cases[0].numbers("a"), vec![1, 2]);
        assert_eq!(cases[0].pairs("b"), BTreeMap::from([(3, 4)]));
        assert!(cases[0].flag("quick") && !cases[0].flag("a"));
        assert_eq!(cases[0].expected, "x\ny\n");
        assert_eq!((cases[1].cmd.as_str(), cases[1].line), ("bar", 7));
    }

    #[test]
    fn rewriting_replaces_outputs_and_keeps_comments() {
        let text = "# top\nfoo\n----\nold\nold2\n\n# mid\nbar\n----\n\n";
        let cases = parse(text);
        let outputs: Vec<_> = cases
            .iter()
            .map(|c| (c.output_lines, format!("new {}\n", c.cmd)))
            .collect();
        let again = rewrite(text, &outputs);
        assert_eq!(
            again,
            "# top\nfoo\n----\nnew foo\n\n# mid\nbar\n----\nnew bar\n\n"
        );
        assert_eq!(parse(&again)[1].expected, "new bar\n");
    }

    #[test]
    #[should_panic(expected = "not followed by ----")]
    fn a_case_without_separator_is_a_broken_script() {
        parse("foo\nbar\n");
    }
}
