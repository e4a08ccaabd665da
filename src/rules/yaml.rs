//! A YAML document as a tree whose every node, key and value alike, knows
//! its line and column, so each mistake in a rules file can be reported
//! where it is.
//!
//! The tree keeps scalars as written (text plus whether they were quoted):
//! the rules language decides what a scalar means where it reads it, so
//! `points: ten` is reported as "not a number" at `ten`, and `version: 01`
//! never changes type behind the reader's back.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// A position in the source: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Pos {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

impl Pos {
    fn of(span: &Span) -> Self {
        // The parser counts lines from 1 and columns from 0.
        Pos { line: span.start.line(), column: span.start.col() + 1 }
    }
}

/// A node of the tree.
#[derive(Debug, Clone)]
pub struct Node {
    /// Where the node starts.
    pub pos: Pos,
    /// What it holds.
    pub kind: Kind,
}

/// What a node holds.
#[derive(Debug, Clone)]
pub enum Kind {
    /// A scalar as written; `plain` is false when it was quoted or a block.
    Scalar {
        /// The text.
        text: String,
        /// Unquoted: may be read as a number, a flag or null.
        plain: bool,
    },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in file order; keys are nodes too.
    Map(Vec<(Node, Node)>),
}

/// A scalar read as the YAML core schema reads a plain scalar.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar<'a> {
    /// `null`, `~` or nothing.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number.
    Num(f64),
    /// Anything else, and every quoted scalar.
    Str(&'a str),
}

impl Node {
    /// The scalar's meaning, or `None` for a sequence or mapping.
    pub fn scalar(&self) -> Option<Scalar<'_>> {
        let Kind::Scalar { text, plain } = &self.kind else { return None };
        if !plain {
            return Some(Scalar::Str(text));
        }
        Some(match text.as_str() {
            "" | "~" | "null" | "Null" | "NULL" => Scalar::Null,
            "true" | "True" | "TRUE" => Scalar::Bool(true),
            "false" | "False" | "FALSE" => Scalar::Bool(false),
            ".inf" | ".Inf" | ".INF" | "+.inf" => Scalar::Num(f64::INFINITY),
            "-.inf" | "-.Inf" | "-.INF" => Scalar::Num(f64::NEG_INFINITY),
            ".nan" | ".NaN" | ".NAN" => Scalar::Num(f64::NAN),
            t => match number(t) {
                Some(n) => Scalar::Num(n),
                None => Scalar::Str(t),
            },
        })
    }

    /// A scalar's text whatever it means (numbers and flags as written);
    /// `None` for a sequence, a mapping or null.
    pub fn text(&self) -> Option<&str> {
        match (&self.kind, self.scalar()) {
            (_, Some(Scalar::Null)) => None,
            (Kind::Scalar { text, .. }, _) => Some(text),
            _ => None,
        }
    }

    /// What a node is, for messages: "a list", "a number", ...
    pub fn describe(&self) -> &'static str {
        match (&self.kind, self.scalar()) {
            (Kind::Seq(_), _) => "a list",
            (Kind::Map(_), _) => "a mapping",
            (_, Some(Scalar::Null)) => "empty",
            (_, Some(Scalar::Bool(_))) => "true/false",
            (_, Some(Scalar::Num(_))) => "a number",
            _ => "text",
        }
    }
}

/// A YAML 1.2 core-schema number: decimal, `0x`, `0o`, or a float.
fn number(t: &str) -> Option<f64> {
    let t = t.strip_prefix('+').unwrap_or(t);
    if let Some(h) = t.strip_prefix("0x") {
        return i64::from_str_radix(h, 16).ok().map(|n| n as f64);
    }
    if let Some(o) = t.strip_prefix("0o") {
        return i64::from_str_radix(o, 8).ok().map(|n| n as f64);
    }
    let looks = t.bytes().next().is_some_and(|b| b.is_ascii_digit() || b == b'-' || b == b'.')
        && t.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'));
    if looks {
        t.parse().ok()
    } else {
        None
    }
}

/// A syntax error: the text is not YAML.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    /// Where the parser stopped.
    pub pos: Pos,
    /// What it found.
    pub message: String,
}

/// Parses one YAML document into a tree; an empty text gives `None`.
pub fn parse(text: &str) -> Result<Option<Node>, SyntaxError> {
    enum Open {
        Seq(Pos, usize, Vec<Node>),
        Map(Pos, usize, Vec<(Node, Node)>, Option<Node>),
    }
    let mut stack: Vec<Open> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut root: Option<Node> = None;
    let mut documents = 0;
    for item in Parser::new_from_str(text) {
        let (event, span) = item.map_err(|e| SyntaxError {
            pos: Pos { line: e.marker().line(), column: e.marker().col() + 1 },
            message: e.info().to_string(),
        })?;
        let pos = Pos::of(&span);
        let done = match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(SyntaxError { pos, message: "a rules file holds one YAML document".into() });
                }
                None
            }
            Event::Scalar(value, style, anchor, _) => {
                let node =
                    Node { pos, kind: Kind::Scalar { text: value.into_owned(), plain: style == ScalarStyle::Plain } };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                Some(node)
            }
            Event::Alias(id) => Some(
                anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| SyntaxError { pos, message: "an alias of an unknown anchor".into() })?,
            ),
            Event::SequenceStart(anchor, _) => {
                stack.push(Open::Seq(pos, anchor, Vec::new()));
                None
            }
            Event::MappingStart(anchor, _) => {
                stack.push(Open::Map(pos, anchor, Vec::new(), None));
                None
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (pos, anchor, kind) = match stack.pop() {
                    Some(Open::Seq(pos, anchor, items)) => (pos, anchor, Kind::Seq(items)),
                    Some(Open::Map(pos, anchor, entries, _)) => (pos, anchor, Kind::Map(entries)),
                    None => return Err(SyntaxError { pos, message: "unbalanced end of a collection".into() }),
                };
                let node = Node { pos, kind };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                Some(node)
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => None,
        };
        if let Some(node) = done {
            match stack.last_mut() {
                None => root = Some(node),
                Some(Open::Seq(_, _, items)) => items.push(node),
                Some(Open::Map(_, _, entries, key)) => match key.take() {
                    None => *key = Some(node),
                    Some(k) => entries.push((k, node)),
                },
            }
        }
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_knows_its_line_and_column() {
        let root = parse("a: 1\nb:\n  - x\n  - { c: 'two' }\n").unwrap().unwrap();
        let Kind::Map(entries) = &root.kind else { panic!() };
        assert_eq!(entries[0].0.pos, Pos { line: 1, column: 1 });
        assert_eq!(entries[0].1.pos, Pos { line: 1, column: 4 });
        assert_eq!(entries[0].1.scalar(), Some(Scalar::Num(1.0)));
        let Kind::Seq(items) = &entries[1].1.kind else { panic!() };
        assert_eq!(items[1].pos, Pos { line: 4, column: 5 });
        let Kind::Map(inner) = &items[1].kind else { panic!() };
        assert_eq!(inner[0].1.pos, Pos { line: 4, column: 10 });
        assert_eq!(inner[0].1.scalar(), Some(Scalar::Str("two")));
    }

    #[test]
    fn scalars_read_as_the_core_schema() {
        let s = |t: &str| parse(t).unwrap().unwrap();
        assert_eq!(s("true").scalar(), Some(Scalar::Bool(true)));
        assert_eq!(s("'true'").scalar(), Some(Scalar::Str("true")));
        assert_eq!(s("-2.5").scalar(), Some(Scalar::Num(-2.5)));
        assert_eq!(s("1e3").scalar(), Some(Scalar::Num(1000.0)));
        assert_eq!(s("ten").scalar(), Some(Scalar::Str("ten")));
        assert_eq!(s("7d").scalar(), Some(Scalar::Str("7d")));
        assert_eq!(s("~").scalar(), Some(Scalar::Null));
        assert!(parse("").unwrap().is_none());
    }

    #[test]
    fn syntax_errors_carry_their_position_and_anchors_resolve() {
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.pos.line >= 1, "{e:?}");
        let root = parse("a: &x { k: 1 }\nb: *x\n").unwrap().unwrap();
        let Kind::Map(entries) = &root.kind else { panic!() };
        assert!(matches!(entries[1].1.kind, Kind::Map(_)));
    }
}
