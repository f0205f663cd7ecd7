//! Headers matching, as RabbitMQ's `rabbit_exchange_type_headers` does it: a binding's
//! arguments are the pattern, `x-match` says how many must hold, and the message headers
//! are the data. Matching is a scan of the exchange's bindings, as in RabbitMQ; each
//! binding costs its argument count times a header lookup.
//!
//! - `x-match` is `all` (the default), `any`, `all-with-x` or `any-with-x`; any other
//!   value is refused when binding.
//! - `x-match` itself never takes part; other `x-` arguments take part only with the
//!   `-with-x` variants.
//! - A `void` pattern value asks only that the header be present.
//! - Values compare as Erlang's `==` does: types ignored, so `1` (byte) equals `1` (long).
//! - With no arguments taking part, `all` matches every message and `any` none.

use std::sync::Arc;

use sluice_core::{Table, Value};

use super::args::{describe, erlang_eq, same_table, type_name};
use super::binding::{Binding, Destination};

/// How many of a binding's arguments must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum XMatch {
    All,
    Any,
    AllWithX,
    AnyWithX,
}

impl XMatch {
    /// Checks `x-match` the way RabbitMQ validates a headers binding; the error is its
    /// reply text for a 406.
    pub(super) fn validate(arguments: &Table) -> Result<XMatch, String> {
        let Some(value) = arguments.get("x-match") else {
            return Ok(XMatch::All);
        };
        match value.as_str() {
            Some("all") => Ok(XMatch::All),
            Some("any") => Ok(XMatch::Any),
            Some("all-with-x") => Ok(XMatch::AllWithX),
            Some("any-with-x") => Ok(XMatch::AnyWithX),
            Some(other) => Err(format!(
                "Invalid x-match field value <<\"{other}\">>; \
                 expected all, any, all-with-x, or any-with-x"
            )),
            None => Err(format!(
                "Invalid x-match field type {} (value {}); expected longstr",
                type_name(value),
                describe(value)
            )),
        }
    }

    fn counts_x_arguments(self) -> bool {
        matches!(self, XMatch::AllWithX | XMatch::AnyWithX)
    }

    fn needs_all(self) -> bool {
        matches!(self, XMatch::All | XMatch::AllWithX)
    }
}

/// Whether `headers` satisfy the binding `arguments` under `mode`.
pub(super) fn headers_match(arguments: &Table, mode: XMatch, headers: Option<&Table>) -> bool {
    let needs_all = mode.needs_all();
    for (key, pattern) in arguments.iter() {
        if key == "x-match" || (key.starts_with("x-") && !mode.counts_x_arguments()) {
            continue;
        }
        let matched = match headers.and_then(|h| h.get(key)) {
            None => false,
            Some(_) if matches!(pattern, Value::Void) => true,
            Some(value) => erlang_eq(pattern, value),
        };
        if matched != needs_all {
            // A miss decides `all`, a hit decides `any`.
            return matched;
        }
    }
    needs_all
}

#[derive(Debug)]
struct Entry {
    destination: Destination,
    routing_key: Arc<str>,
    arguments: Table,
    mode: XMatch,
}

/// The bindings of one headers exchange, one entry per binding.
#[derive(Debug, Default)]
pub(super) struct HeadersTable {
    entries: Vec<Entry>,
}

impl HeadersTable {
    pub(super) fn insert(&mut self, binding: &Binding) {
        // Validated when bound; RabbitMQ also reads an invalid value as `all`.
        let mode = XMatch::validate(&binding.arguments).unwrap_or(XMatch::All);
        self.entries.push(Entry {
            destination: binding.destination.clone(),
            routing_key: binding.routing_key.clone(),
            arguments: binding.arguments.clone(),
            mode,
        });
    }

    pub(super) fn remove(&mut self, binding: &Binding) {
        let found = self.entries.iter().position(|e| {
            e.destination == binding.destination
                && e.routing_key == binding.routing_key
                && same_table(&e.arguments, &binding.arguments)
        });
        if let Some(at) = found {
            self.entries.remove(at);
        }
    }

    pub(super) fn route(&self, headers: Option<&Table>, mut emit: impl FnMut(&Destination)) {
        for entry in &self.entries {
            if headers_match(&entry.arguments, entry.mode, headers) {
                emit(&entry.destination);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, Value)]) -> Table {
        Table::from_pairs(entries)
    }

    fn matches(arguments: &[(&str, Value)], headers: Option<&[(&str, Value)]>) -> bool {
        let arguments = table(arguments);
        let mode = XMatch::validate(&arguments).expect("valid x-match");
        let headers = headers.map(table);
        headers_match(&arguments, mode, headers.as_ref())
    }

    fn s(v: &str) -> Value {
        Value::string(v)
    }

    #[test]
    fn all_needs_every_non_x_argument_to_match() {
        let args = [("format", s("pdf")), ("type", s("report"))];
        assert!(matches(
            &args,
            Some(&[
                ("type", s("report")),
                ("format", s("pdf")),
                ("extra", s("1"))
            ])
        ));
        assert!(!matches(&args, Some(&[("format", s("pdf"))])));
        assert!(!matches(
            &args,
            Some(&[("format", s("pdf")), ("type", s("log"))])
        ));
        let explicit = [("x-match", s("all")), ("format", s("pdf"))];
        assert!(matches(&explicit, Some(&[("format", s("pdf"))])));
    }

    #[test]
    fn any_needs_one_non_x_argument_to_match() {
        let args = [
            ("x-match", s("any")),
            ("format", s("pdf")),
            ("type", s("report")),
        ];
        assert!(matches(&args, Some(&[("type", s("report"))])));
        assert!(matches(
            &args,
            Some(&[("format", s("pdf")), ("type", s("x"))])
        ));
        assert!(!matches(&args, Some(&[("type", s("log"))])));
        assert!(!matches(&args, Some(&[])));
        assert!(!matches(&args, None));
    }

    #[test]
    fn message_without_headers_matches_all_with_no_arguments_but_not_any() {
        assert!(matches(&[], None));
        assert!(matches(&[("x-match", s("all"))], None));
        assert!(matches(&[("x-match", s("all")), ("x-extra", s("1"))], None));
        assert!(!matches(&[("x-match", s("any"))], None));
        assert!(!matches(&[("x-match", s("any"))], Some(&[("a", s("1"))])));
        assert!(!matches(&[("a", s("1"))], None));
    }

    #[test]
    fn x_arguments_count_only_with_the_with_x_variants() {
        let plain = [("x-match", s("all")), ("x-tenant", s("t1"))];
        assert!(matches(&plain, Some(&[("x-tenant", s("other"))])));
        let with_x = [("x-match", s("all-with-x")), ("x-tenant", s("t1"))];
        assert!(matches(&with_x, Some(&[("x-tenant", s("t1"))])));
        assert!(!matches(&with_x, Some(&[("x-tenant", s("other"))])));
        assert!(!matches(&with_x, None));
        let any_x = [
            ("x-match", s("any-with-x")),
            ("x-tenant", s("t1")),
            ("a", s("1")),
        ];
        assert!(matches(&any_x, Some(&[("x-tenant", s("t1"))])));
        assert!(!matches(&any_x, Some(&[("x-tenant", s("t2"))])));
        let any_plain = [("x-match", s("any")), ("x-tenant", s("t1"))];
        assert!(!matches(&any_plain, Some(&[("x-tenant", s("t1"))])));
    }

    #[test]
    fn x_match_itself_never_takes_part() {
        assert!(matches(&[("x-match", s("all-with-x"))], None));
        assert!(!matches(
            &[("x-match", s("any-with-x"))],
            Some(&[("x-match", s("any-with-x"))])
        ));
    }

    #[test]
    fn void_argument_matches_any_value_of_a_present_header() {
        let args = [("trace", Value::Void)];
        assert!(matches(&args, Some(&[("trace", s("yes"))])));
        assert!(matches(&args, Some(&[("trace", Value::I32(0))])));
        assert!(!matches(&args, Some(&[("other", s("yes"))])));
        assert!(!matches(&args, None));
    }

    #[test]
    fn values_compare_like_erlang_equality() {
        assert!(matches(
            &[("n", Value::I8(5))],
            Some(&[("n", Value::I64(5))])
        ));
        assert!(matches(
            &[("n", Value::U16(5))],
            Some(&[("n", Value::F64(5.0))])
        ));
        assert!(!matches(&[("n", Value::I32(5))], Some(&[("n", s("5"))])));
        assert!(!matches(
            &[("b", Value::Bool(true))],
            Some(&[("b", s("true"))])
        ));
        assert!(matches(
            &[("s", Value::ShortString("x".into()))],
            Some(&[("s", s("x"))])
        ));
    }

    #[test]
    fn x_match_must_be_a_known_string() {
        let bad_value = table(&[("x-match", s("some"))]);
        assert_eq!(
            XMatch::validate(&bad_value),
            Err("Invalid x-match field value <<\"some\">>; \
                 expected all, any, all-with-x, or any-with-x"
                .to_string())
        );
        let bad_type = table(&[("x-match", Value::I32(1))]);
        assert_eq!(
            XMatch::validate(&bad_type),
            Err("Invalid x-match field type signedint (value 1); expected longstr".to_string())
        );
        assert_eq!(XMatch::validate(&Table::new()), Ok(XMatch::All));
    }

    #[test]
    fn table_removes_only_the_binding_with_equal_arguments() {
        let mut headers = HeadersTable::default();
        let a =
            Binding::new("h", Destination::queue("q"), "").with_arguments(table(&[("k", s("1"))]));
        let b =
            Binding::new("h", Destination::queue("q"), "").with_arguments(table(&[("k", s("2"))]));
        headers.insert(&a);
        headers.insert(&b);
        headers.remove(&a);
        let hits = |h: &[(&str, Value)]| {
            let h = table(h);
            let mut n = 0;
            headers.route(Some(&h), |_| n += 1);
            n
        };
        assert_eq!(hits(&[("k", s("1"))]), 0);
        assert_eq!(hits(&[("k", s("2"))]), 1);
    }
}
