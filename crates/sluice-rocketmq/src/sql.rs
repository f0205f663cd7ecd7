//! RocketMQ's SQL92 message filters: the subset the Apache broker evaluates over a
//! message's user properties (and `TAGS`, its tag).
//!
//! - comparisons `=`, `<>`, `>`, `>=`, `<`, `<=`;
//! - `BETWEEN a AND b`, `IN ('a', 'b')`, each also with `NOT`;
//! - `IS NULL` and `IS NOT NULL`;
//! - `AND`, `OR`, `NOT` and parentheses;
//! - constants: numbers, 'strings', `TRUE`, `FALSE`.
//!
//! A comparison with a missing property is unknown, and unknown is not a match: SQL's
//! three-valued logic. Expressions are bounded in length and nesting.

use std::collections::HashMap;

/// Longest expression accepted, in bytes.
pub const LENGTH_MAX: usize = 4096;
/// Deepest nesting of parentheses and NOTs.
const DEPTH_MAX: usize = 64;

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Number(f64),
    Text(String),
    Bool(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Const(bool),
    Compare(String, Op, Value),
    Between(String, f64, f64, bool),
    In(String, Vec<String>, bool),
    IsNull(String, bool),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Sql(Expr);

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Number(f64),
    Text(String),
    Op(Op),
    LParen,
    RParen,
    Comma,
}

fn tokens(input: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let b = input.as_bytes();
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' => {
                out.push(Token::LParen);
                i += 1;
            }
            b')' => {
                out.push(Token::RParen);
                i += 1;
            }
            b',' => {
                out.push(Token::Comma);
                i += 1;
            }
            b'=' => {
                out.push(Token::Op(Op::Eq));
                i += 1;
            }
            b'<' | b'>' => {
                let next = b.get(i + 1).copied();
                let (op, len) = match (c, next) {
                    (b'<', Some(b'>')) => (Op::Ne, 2),
                    (b'<', Some(b'=')) => (Op::Le, 2),
                    (b'>', Some(b'=')) => (Op::Ge, 2),
                    (b'<', _) => (Op::Lt, 1),
                    _ => (Op::Gt, 1),
                };
                out.push(Token::Op(op));
                i += len;
            }
            b'\'' => {
                // '' inside a string is a quote, as in SQL.
                let mut text = String::new();
                let mut j = i + 1;
                loop {
                    match b.get(j) {
                        None => return Err("unterminated string".into()),
                        Some(b'\'') if b.get(j + 1) == Some(&b'\'') => {
                            text.push('\'');
                            j += 2;
                        }
                        Some(b'\'') => break,
                        Some(_) => {
                            let ch = input
                                .get(j..)
                                .and_then(|s| s.chars().next())
                                .ok_or("bad character")?;
                            text.push(ch);
                            j += ch.len_utf8();
                        }
                    }
                }
                out.push(Token::Text(text));
                i = j + 1;
            }
            c if c.is_ascii_digit() || c == b'-' || c == b'.' => {
                let start = i;
                i += 1;
                while b
                    .get(i)
                    .is_some_and(|c| c.is_ascii_digit() || *c == b'.' || *c == b'e' || *c == b'E')
                {
                    i += 1;
                }
                let text = input.get(start..i).unwrap_or_default();
                let n: f64 = text.parse().map_err(|_| format!("bad number {text:?}"))?;
                out.push(Token::Number(n));
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while b
                    .get(i)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'.')
                {
                    i += 1;
                }
                out.push(Token::Ident(
                    input.get(start..i).unwrap_or_default().to_string(),
                ));
            }
            other => return Err(format!("unexpected character {:?}", other as char)),
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn keyword(&mut self, word: &str) -> bool {
        if matches!(self.peek(), Some(Token::Ident(w)) if w.eq_ignore_ascii_case(word)) {
            self.at += 1;
            return true;
        }
        false
    }

    fn expect_keyword(&mut self, word: &str) -> Result<(), String> {
        if self.keyword(word) {
            Ok(())
        } else {
            Err(format!("expected {word}"))
        }
    }

    fn deeper(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > DEPTH_MAX {
            return Err(format!("nested deeper than {DEPTH_MAX}"));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut left = self.and()?;
        while self.keyword("OR") {
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut left = self.not()?;
        while self.keyword("AND") {
            left = Expr::And(Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Expr, String> {
        if self.keyword("NOT") {
            self.deeper()?;
            let inner = self.not()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.predicate()
    }

    fn number(&mut self) -> Result<f64, String> {
        match self.next() {
            Some(Token::Number(n)) => Ok(n),
            _ => Err("expected a number".into()),
        }
    }

    fn predicate(&mut self) -> Result<Expr, String> {
        match self.next() {
            Some(Token::LParen) => {
                self.deeper()?;
                let e = self.or()?;
                self.depth -= 1;
                match self.next() {
                    Some(Token::RParen) => Ok(e),
                    _ => Err("expected )".into()),
                }
            }
            Some(Token::Ident(w)) if w.eq_ignore_ascii_case("TRUE") => Ok(Expr::Const(true)),
            Some(Token::Ident(w)) if w.eq_ignore_ascii_case("FALSE") => Ok(Expr::Const(false)),
            Some(Token::Ident(name)) => self.condition(name),
            _ => Err("expected a condition".into()),
        }
    }

    fn condition(&mut self, name: String) -> Result<Expr, String> {
        if self.keyword("IS") {
            let negated = self.keyword("NOT");
            self.expect_keyword("NULL")?;
            return Ok(Expr::IsNull(name, negated));
        }
        let negated = self.keyword("NOT");
        if self.keyword("BETWEEN") {
            let low = self.number()?;
            self.expect_keyword("AND")?;
            let high = self.number()?;
            return Ok(Expr::Between(name, low, high, negated));
        }
        if self.keyword("IN") {
            if self.next() != Some(Token::LParen) {
                return Err("expected ( after IN".into());
            }
            let mut set = Vec::new();
            loop {
                match self.next() {
                    Some(Token::Text(t)) => set.push(t),
                    _ => return Err("IN takes strings".into()),
                }
                match self.next() {
                    Some(Token::Comma) => continue,
                    Some(Token::RParen) => break,
                    _ => return Err("expected , or ) in IN".into()),
                }
            }
            return Ok(Expr::In(name, set, negated));
        }
        if negated {
            return Err("expected BETWEEN or IN after NOT".into());
        }
        let Some(Token::Op(op)) = self.next() else {
            return Err(format!("expected a comparison after {name}"));
        };
        let value = match self.next() {
            Some(Token::Number(n)) => Value::Number(n),
            Some(Token::Text(t)) => Value::Text(t),
            Some(Token::Ident(w)) if w.eq_ignore_ascii_case("TRUE") => Value::Bool(true),
            Some(Token::Ident(w)) if w.eq_ignore_ascii_case("FALSE") => Value::Bool(false),
            _ => return Err("expected a constant".into()),
        };
        if matches!(value, Value::Text(_) | Value::Bool(_)) && !matches!(op, Op::Eq | Op::Ne) {
            return Err("only = and <> compare strings and booleans".into());
        }
        Ok(Expr::Compare(name, op, value))
    }
}

impl Sql {
    pub fn parse(input: &str) -> Result<Sql, String> {
        if input.len() > LENGTH_MAX {
            return Err(format!("longer than {LENGTH_MAX} bytes"));
        }
        let mut p = Parser {
            tokens: tokens(input)?,
            at: 0,
            depth: 0,
        };
        let e = p.or()?;
        if p.at != p.tokens.len() {
            return Err("unexpected input after the expression".into());
        }
        Ok(Sql(e))
    }

    /// Whether a message with these properties matches (unknown does not).
    pub fn matches(&self, properties: &HashMap<String, String>) -> bool {
        eval(&self.0, properties) == Some(true)
    }
}

fn number(v: &str) -> Option<f64> {
    v.trim().parse().ok()
}

fn eval(e: &Expr, props: &HashMap<String, String>) -> Option<bool> {
    match e {
        Expr::Const(b) => Some(*b),
        Expr::IsNull(name, negated) => Some(props.contains_key(name) == *negated),
        Expr::Compare(name, op, value) => {
            let v = props.get(name)?;
            let ordering = match value {
                Value::Text(t) => v.as_str().partial_cmp(t.as_str()),
                Value::Bool(b) => v.parse::<bool>().ok()?.partial_cmp(b),
                Value::Number(n) => number(v)?.partial_cmp(n),
            }?;
            Some(match op {
                Op::Eq => ordering.is_eq(),
                Op::Ne => ordering.is_ne(),
                Op::Gt => ordering.is_gt(),
                Op::Ge => ordering.is_ge(),
                Op::Lt => ordering.is_lt(),
                Op::Le => ordering.is_le(),
            })
        }
        Expr::Between(name, low, high, negated) => {
            let v = number(props.get(name)?)?;
            Some((*low <= v && v <= *high) != *negated)
        }
        Expr::In(name, set, negated) => {
            let v = props.get(name)?;
            Some(set.iter().any(|s| s == v) != *negated)
        }
        Expr::Not(inner) => eval(inner, props).map(|b| !b),
        Expr::And(a, b) => match (eval(a, props), eval(b, props)) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        },
        Expr::Or(a, b) => match (eval(a, props), eval(b, props)) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn props(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn matches(sql: &str, pairs: &[(&str, &str)]) -> bool {
        Sql::parse(sql).unwrap().matches(&props(pairs))
    }

    #[test]
    fn comparisons_ranges_sets_and_nulls() {
        let m = [
            ("a", "5"),
            ("region", "eu"),
            ("TAGS", "TagA"),
            ("vip", "true"),
        ];
        assert!(matches("a > 3", &m));
        assert!(matches("a >= 5 AND a <= 5", &m));
        assert!(!matches("a < 5", &m));
        assert!(matches("a = 5.0", &m));
        assert!(matches("a <> 4", &m));
        assert!(matches("a BETWEEN 1 AND 10", &m));
        assert!(matches("a NOT BETWEEN 6 AND 10", &m));
        assert!(matches("region IN ('eu', 'us')", &m));
        assert!(matches("region NOT IN ('us')", &m));
        assert!(matches("region = 'eu' AND TAGS = 'TagA'", &m));
        assert!(matches("vip = TRUE", &m));
        assert!(matches("missing IS NULL AND a IS NOT NULL", &m));
        assert!(matches(
            "(region = 'us' OR a > 4) AND NOT region = 'us'",
            &m
        ));
        assert!(matches("name = 'it''s'", &[("name", "it's")]));
    }

    #[test]
    fn a_missing_or_non_numeric_property_never_matches_a_comparison() {
        let m = [("a", "five")];
        assert!(!matches("missing > 1", &m));
        assert!(
            !matches("NOT missing > 1", &m),
            "unknown stays unknown under NOT"
        );
        assert!(!matches("a > 1", &m));
        assert!(matches("missing > 1 OR a = 'five'", &m));
        assert!(!matches("missing > 1 AND a = 'five'", &m));
    }

    #[test]
    fn malformed_expressions_are_refused() {
        for bad in [
            "",
            "a >",
            "a > 'x'",
            "(a = 1",
            "a = 1)",
            "a IN (1)",
            "a BETWEEN 1",
            "a NOT = 1",
            "'unterminated",
            "a = 1 ; drop",
        ] {
            assert!(Sql::parse(bad).is_err(), "{bad:?} parsed");
        }
        let deep = format!("{}a = 1{}", "(".repeat(100), ")".repeat(100));
        assert!(Sql::parse(&deep).is_err(), "too deep");
        assert!(Sql::parse(&"NOT ".repeat(100)).is_err());
        assert!(Sql::parse(&"a = 1 OR ".repeat(1000)).is_err(), "too long");
    }
}
