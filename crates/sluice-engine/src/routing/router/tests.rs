use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_core::{Table, Value};

use super::*;
use crate::routing::ALTERNATE_EXCHANGE;

fn q(name: &str) -> Destination {
    Destination::queue(name)
}

fn x(name: &str) -> Destination {
    Destination::exchange(name)
}

fn router_with_queues(queues: &[&str]) -> Router {
    let mut router = Router::new();
    for &name in queues {
        assert!(router.add_queue(Arc::from(name)));
    }
    router
}

fn declare(router: &mut Router, name: &str, kind: ExchangeKind) {
    assert_eq!(
        router.declare_exchange(ExchangeDef::new(name, kind)),
        Ok(true)
    );
}

fn declare_with_ae(router: &mut Router, name: &str, kind: ExchangeKind, ae: &str) {
    let mut def = ExchangeDef::new(name, kind);
    def.arguments.insert(ALTERNATE_EXCHANGE, Value::string(ae));
    assert_eq!(router.declare_exchange(def), Ok(true));
}

fn bind(router: &mut Router, source: &str, destination: Destination, key: &str) {
    router
        .bind(Binding::new(source, destination, key))
        .expect("bind");
}

fn route(router: &Router, exchange: &str, key: &str) -> Vec<String> {
    route_headers(router, exchange, key, None)
}

fn route_headers(
    router: &Router,
    exchange: &str,
    key: &str,
    headers: Option<&Table>,
) -> Vec<String> {
    let mut out = Vec::new();
    router
        .route(exchange, key, headers, &mut out)
        .expect("route");
    out.iter().map(|s| s.to_string()).collect()
}

fn table(entries: &[(&str, Value)]) -> Table {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn exchange_names(removed: &Removed) -> Vec<&str> {
    removed.exchanges.iter().map(|d| &*d.name).collect()
}

// Declaring.

#[test]
fn new_router_predeclares_the_default_and_amq_exchanges_as_durable() {
    let router = Router::new();
    let listed: Vec<(&str, ExchangeKind, bool, bool)> = router
        .exchanges()
        .map(|d| (&*d.name, d.kind, d.durable, d.internal))
        .collect();
    assert_eq!(
        listed,
        [
            ("", ExchangeKind::Direct, true, false),
            ("amq.direct", ExchangeKind::Direct, true, false),
            ("amq.fanout", ExchangeKind::Fanout, true, false),
            ("amq.headers", ExchangeKind::Headers, true, false),
            ("amq.match", ExchangeKind::Headers, true, false),
            ("amq.rabbitmq.trace", ExchangeKind::Topic, true, true),
            ("amq.topic", ExchangeKind::Topic, true, false),
        ]
    );
    assert_eq!(router.vhost(), "/");
    assert_eq!(router.bindings().count(), 0);
}

#[test]
fn declaring_creates_once_and_identical_redeclare_succeeds() {
    let mut router = Router::new();
    let def = ExchangeDef::new("orders", ExchangeKind::Topic);
    assert_eq!(router.declare_exchange(def.clone()), Ok(true));
    assert_eq!(router.declare_exchange(def.clone()), Ok(false));
    assert_eq!(router.exchange("orders"), Some(&def));
    assert_eq!(router.declare_exchange_passive("orders"), Ok(&def));
}

#[test]
fn redeclare_with_another_type_is_precondition_failed() {
    let mut router = Router::new();
    declare(&mut router, "x", ExchangeKind::Direct);
    let err = router
        .declare_exchange(ExchangeDef::new("x", ExchangeKind::Fanout))
        .unwrap_err();
    assert_eq!(err.reply_code(), 406);
    assert_eq!(
        err.message(),
        "inequivalent arg 'type' for exchange 'x' in vhost '/': \
         received 'fanout' but current is 'direct'"
    );
}

#[test]
fn redeclare_with_other_flags_names_the_first_flag_that_differs() {
    let mut router = Router::with_vhost("prod");
    declare(&mut router, "x", ExchangeKind::Direct);
    let mut durable = ExchangeDef::new("x", ExchangeKind::Direct);
    durable.durable = true;
    assert_eq!(
        router.declare_exchange(durable).unwrap_err().message(),
        "inequivalent arg 'durable' for exchange 'x' in vhost 'prod': \
         received 'true' but current is 'false'"
    );
    let mut auto_delete = ExchangeDef::new("x", ExchangeKind::Direct);
    auto_delete.auto_delete = true;
    assert_eq!(
        router.declare_exchange(auto_delete).unwrap_err().message(),
        "inequivalent arg 'auto_delete' for exchange 'x' in vhost 'prod': \
         received 'true' but current is 'false'"
    );
    let mut internal = ExchangeDef::new("x", ExchangeKind::Direct);
    internal.internal = true;
    let err = router.declare_exchange(internal).unwrap_err();
    assert_eq!(err.reply_code(), 406);
    assert!(err.message().starts_with("inequivalent arg 'internal'"));
}

#[test]
fn redeclare_compares_the_alternate_exchange_but_ignores_other_arguments() {
    let mut router = Router::new();
    declare_with_ae(&mut router, "x", ExchangeKind::Direct, "ae");
    let mut same = ExchangeDef::new("x", ExchangeKind::Direct);
    same.arguments
        .insert(ALTERNATE_EXCHANGE, Value::string("ae"));
    same.arguments.insert("x-unrelated", Value::I32(7));
    assert_eq!(router.declare_exchange(same), Ok(false));
    let err = router
        .declare_exchange(ExchangeDef::new("x", ExchangeKind::Direct))
        .unwrap_err();
    assert_eq!(err.reply_code(), 406);
    assert_eq!(
        err.message(),
        "inequivalent arg 'alternate-exchange' for exchange 'x' in vhost '/': \
         received none but current is the value 'ae' of type 'longstr'"
    );
}

#[test]
fn declaring_a_non_string_alternate_exchange_is_precondition_failed() {
    let mut router = Router::new();
    let mut def = ExchangeDef::new("x", ExchangeKind::Direct);
    def.arguments.insert(ALTERNATE_EXCHANGE, Value::I64(1));
    let err = router.declare_exchange(def).unwrap_err();
    assert_eq!(err.reply_code(), 406);
    assert_eq!(router.exchange("x"), None);
}

#[test]
fn new_amq_prefixed_exchange_is_access_refused_but_existing_one_may_be_redeclared() {
    let mut router = Router::new();
    let err = router
        .declare_exchange(ExchangeDef::new("amq.custom", ExchangeKind::Direct))
        .unwrap_err();
    assert_eq!(err.reply_code(), 403);
    assert_eq!(
        err.message(),
        "exchange name 'amq.custom' contains reserved prefix 'amq.*'"
    );
    let mut amq_direct = ExchangeDef::new("amq.direct", ExchangeKind::Direct);
    amq_direct.durable = true;
    assert_eq!(router.declare_exchange(amq_direct), Ok(false));
    let err = router
        .declare_exchange(ExchangeDef::new("amq.direct", ExchangeKind::Direct))
        .unwrap_err();
    assert_eq!(err.reply_code(), 406, "amq.direct is durable");
}

#[test]
fn default_exchange_cannot_be_declared_deleted_or_bound() {
    let mut router = router_with_queues(&["q"]);
    let text = "operation not permitted on the default exchange";
    let declare = router.declare_exchange(ExchangeDef::new("", ExchangeKind::Direct));
    let passive = router.declare_exchange_passive("").map(|_| ());
    let delete = router.delete_exchange("", DeleteWhen::Always).map(|_| ());
    let bind_from = router.bind(Binding::new("", q("q"), "q")).map(|_| ());
    let unbind_from = router.unbind(&Binding::new("", q("q"), "q")).map(|_| ());
    let bind_to = router
        .bind(Binding::new("amq.direct", x(""), "k"))
        .map(|_| ());
    for result in [
        declare.map(|_| ()),
        passive,
        delete,
        bind_from,
        unbind_from,
        bind_to,
    ] {
        let err = result.unwrap_err();
        assert_eq!(err.reply_code(), 403);
        assert_eq!(err.message(), text);
    }
}

#[test]
fn passive_declare_of_a_missing_exchange_is_not_found() {
    let router = Router::new();
    let err = router.declare_exchange_passive("nope").unwrap_err();
    assert_eq!(err.reply_code(), 404);
    assert_eq!(err.message(), "no exchange 'nope' in vhost '/'");
}

#[test]
fn exchange_name_over_255_bytes_is_command_invalid() {
    let mut router = Router::new();
    let name = "x".repeat(256);
    let err = router
        .declare_exchange(ExchangeDef::new(name.as_str(), ExchangeKind::Direct))
        .unwrap_err();
    assert_eq!(err.reply_code(), 503);
    let name = "x".repeat(255);
    assert_eq!(
        router.declare_exchange(ExchangeDef::new(name.as_str(), ExchangeKind::Direct)),
        Ok(true)
    );
}

// Deleting.

#[test]
fn deleting_a_missing_exchange_succeeds_and_removes_nothing() {
    let mut router = Router::new();
    let removed = router.delete_exchange("nope", DeleteWhen::Always).unwrap();
    assert!(removed.is_empty());
    let removed = router.delete_exchange("nope", DeleteWhen::Unused).unwrap();
    assert!(removed.is_empty());
}

#[test]
fn deleting_an_amq_exchange_is_access_refused() {
    let mut router = Router::new();
    let err = router
        .delete_exchange("amq.topic", DeleteWhen::Always)
        .unwrap_err();
    assert_eq!(err.reply_code(), 403);
    assert_eq!(
        err.message(),
        "deletion of system exchange 'amq.topic' in vhost '/' not allowed"
    );
    assert!(router.exchange("amq.topic").is_some());
}

#[test]
fn delete_if_unused_refuses_an_exchange_that_is_a_binding_source() {
    let mut router = router_with_queues(&["q"]);
    declare(&mut router, "src", ExchangeKind::Direct);
    declare(&mut router, "dst", ExchangeKind::Fanout);
    bind(&mut router, "src", q("q"), "k");
    bind(&mut router, "src", x("dst"), "k");
    let err = router
        .delete_exchange("src", DeleteWhen::Unused)
        .unwrap_err();
    assert_eq!(err.reply_code(), 406);
    assert_eq!(err.message(), "exchange 'src' in vhost '/' in use");
    // Being a destination does not make an exchange "used".
    let removed = router.delete_exchange("dst", DeleteWhen::Unused).unwrap();
    assert_eq!(exchange_names(&removed), ["dst"]);
    assert_eq!(removed.bindings, [Binding::new("src", x("dst"), "k")]);
    assert_eq!(route(&router, "src", "k"), ["q"]);
}

#[test]
fn deleting_an_exchange_removes_its_bindings_both_ways() {
    let mut router = router_with_queues(&["q1", "q2"]);
    declare(&mut router, "up", ExchangeKind::Fanout);
    declare(&mut router, "mid", ExchangeKind::Direct);
    bind(&mut router, "up", x("mid"), "");
    bind(&mut router, "mid", q("q1"), "a");
    bind(&mut router, "mid", q("q2"), "b");
    let removed = router.delete_exchange("mid", DeleteWhen::Always).unwrap();
    assert_eq!(exchange_names(&removed), ["mid"]);
    assert_eq!(removed.bindings.len(), 3);
    assert_eq!(router.bindings().count(), 0);
    assert_eq!(router.bindings_for_queue("q1").count(), 0);
    assert!(router.exchange("mid").is_none());
    assert!(route(&router, "up", "a").is_empty());
    // The name is free again, with no bindings carried over.
    declare(&mut router, "mid", ExchangeKind::Direct);
    assert!(route(&router, "mid", "a").is_empty());
}

#[test]
fn deleting_an_exchange_auto_deletes_sources_left_without_bindings() {
    let mut router = Router::new();
    let mut auto = ExchangeDef::new("auto", ExchangeKind::Fanout);
    auto.auto_delete = true;
    router.declare_exchange(auto).unwrap();
    let mut auto2 = ExchangeDef::new("auto2", ExchangeKind::Fanout);
    auto2.auto_delete = true;
    router.declare_exchange(auto2).unwrap();
    declare(&mut router, "target", ExchangeKind::Fanout);
    bind(&mut router, "auto2", x("auto"), "");
    bind(&mut router, "auto", x("target"), "");
    let removed = router
        .delete_exchange("target", DeleteWhen::Always)
        .unwrap();
    assert_eq!(exchange_names(&removed), ["target", "auto", "auto2"]);
    assert_eq!(removed.bindings.len(), 2);
    assert!(router.exchange("auto").is_none());
    assert!(router.exchange("auto2").is_none());
}

#[test]
fn deleting_an_exchange_bound_to_itself_leaves_no_trace() {
    let mut router = Router::new();
    declare(&mut router, "loop", ExchangeKind::Fanout);
    bind(&mut router, "loop", x("loop"), "");
    assert!(route(&router, "loop", "").is_empty());
    let removed = router.delete_exchange("loop", DeleteWhen::Always).unwrap();
    assert_eq!(removed.bindings, [Binding::new("loop", x("loop"), "")]);
    assert_eq!(router.bindings().count(), 0);
}

// Queues.

#[test]
fn default_exchange_routes_a_key_to_the_queue_of_that_name_when_it_exists() {
    let mut router = router_with_queues(&["tasks"]);
    assert!(!router.add_queue(Arc::from("tasks")));
    assert!(router.has_queue("tasks"));
    assert_eq!(route(&router, "", "tasks"), ["tasks"]);
    assert!(route(&router, "", "other").is_empty());
    assert!(router.remove_queue("tasks").is_empty());
    assert!(!router.has_queue("tasks"));
    assert!(route(&router, "", "tasks").is_empty());
}

#[test]
fn removing_a_queue_removes_its_bindings_and_auto_deletes_sources() {
    let mut router = router_with_queues(&["q", "other"]);
    let mut auto = ExchangeDef::new("auto", ExchangeKind::Direct);
    auto.auto_delete = true;
    router.declare_exchange(auto).unwrap();
    declare(&mut router, "keep", ExchangeKind::Direct);
    bind(&mut router, "auto", q("q"), "a");
    bind(&mut router, "auto", q("q"), "b");
    bind(&mut router, "keep", q("q"), "a");
    bind(&mut router, "keep", q("other"), "a");
    let removed = router.remove_queue("q");
    assert_eq!(removed.bindings.len(), 3);
    assert_eq!(exchange_names(&removed), ["auto"]);
    assert!(router.exchange("keep").is_some());
    assert_eq!(route(&router, "keep", "a"), ["other"]);
    assert!(router.remove_queue("q").is_empty());
    assert!(router.remove_queue("never-existed").is_empty());
}

// Binding.

#[test]
fn binding_needs_an_existing_source_then_destination() {
    let mut router = router_with_queues(&["q"]);
    declare(&mut router, "x", ExchangeKind::Direct);
    let cases = [
        (
            Binding::new("nope", q("q"), "k"),
            "no exchange 'nope' in vhost '/'",
        ),
        (
            Binding::new("x", q("missing"), "k"),
            "no queue 'missing' in vhost '/'",
        ),
        (
            Binding::new("x", x("missing"), "k"),
            "no exchange 'missing' in vhost '/'",
        ),
        (
            Binding::new("nope", q("missing"), "k"),
            "no exchange 'nope' in vhost '/'",
        ),
    ];
    for (binding, text) in cases {
        let err = router.bind(binding).unwrap_err();
        assert_eq!(err.reply_code(), 404);
        assert_eq!(err.message(), text);
    }
    assert_eq!(router.bindings().count(), 0);
}

#[test]
fn binding_twice_is_idempotent_whatever_the_argument_order() {
    let mut router = router_with_queues(&["q"]);
    declare(&mut router, "x", ExchangeKind::Direct);
    let args_ab = table(&[("a", Value::I32(1)), ("b", Value::string("v"))]);
    let args_ba = table(&[("b", Value::string("v")), ("a", Value::I32(1))]);
    let binding = Binding::new("x", q("q"), "k").with_arguments(args_ab);
    assert_eq!(router.bind(binding.clone()), Ok(true));
    assert_eq!(router.bind(binding.clone()), Ok(false));
    assert_eq!(
        router.bind(Binding::new("x", q("q"), "k").with_arguments(args_ba.clone())),
        Ok(false)
    );
    assert_eq!(router.bindings().count(), 1);
    // Other arguments make another binding to the same queue under the same key.
    router.bind(Binding::new("x", q("q"), "k")).unwrap();
    assert_eq!(router.bindings().count(), 2);
    assert_eq!(route(&router, "x", "k"), ["q"]);
    // Removing one of the two keeps the route.
    let removed = router
        .unbind(&Binding::new("x", q("q"), "k").with_arguments(args_ba))
        .unwrap();
    assert_eq!(removed.bindings, [binding]);
    assert_eq!(route(&router, "x", "k"), ["q"]);
    router.unbind(&Binding::new("x", q("q"), "k")).unwrap();
    assert!(route(&router, "x", "k").is_empty());
}

#[test]
fn headers_binding_with_invalid_x_match_is_precondition_failed() {
    let mut router = router_with_queues(&["q"]);
    let bad = table(&[("x-match", Value::string("most"))]);
    let err = router
        .bind(Binding::new("amq.headers", q("q"), "").with_arguments(bad.clone()))
        .unwrap_err();
    assert_eq!(err.reply_code(), 406);
    assert!(err.message().starts_with("Invalid x-match field value"));
    // Other exchange types do not read x-match.
    router
        .bind(Binding::new("amq.direct", q("q"), "k").with_arguments(bad))
        .unwrap();
}

#[test]
fn binding_key_over_255_bytes_is_command_invalid() {
    let mut router = router_with_queues(&["q"]);
    let key = "k".repeat(256);
    let err = router
        .bind(Binding::new("amq.topic", q("q"), key.as_str()))
        .unwrap_err();
    assert_eq!(err.reply_code(), 503);
}

#[test]
fn unbinding_what_does_not_exist_succeeds_and_removes_nothing() {
    let mut router = router_with_queues(&["q"]);
    declare(&mut router, "x", ExchangeKind::Direct);
    for binding in [
        Binding::new("x", q("q"), "never-bound"),
        Binding::new("missing", q("q"), "k"),
        Binding::new("x", q("missing"), "k"),
        Binding::new("x", x("missing"), "k"),
    ] {
        assert_eq!(router.unbind(&binding), Ok(Removed::default()));
    }
}

#[test]
fn auto_delete_exchange_goes_when_its_last_binding_as_source_is_removed() {
    let mut router = router_with_queues(&["q1", "q2"]);
    let mut def = ExchangeDef::new("auto", ExchangeKind::Direct);
    def.auto_delete = true;
    router.declare_exchange(def.clone()).unwrap();
    declare(&mut router, "feeder", ExchangeKind::Fanout);
    bind(&mut router, "auto", q("q1"), "a");
    bind(&mut router, "auto", q("q2"), "b");
    bind(&mut router, "feeder", x("auto"), "");

    let removed = router.unbind(&Binding::new("auto", q("q1"), "a")).unwrap();
    assert_eq!(removed.bindings.len(), 1);
    assert!(removed.exchanges.is_empty());
    assert!(router.exchange("auto").is_some());

    // Its binding as a destination does not keep it alive.
    let removed = router.unbind(&Binding::new("auto", q("q2"), "b")).unwrap();
    assert_eq!(removed.exchanges, [def]);
    assert_eq!(
        removed.bindings,
        [
            Binding::new("auto", q("q2"), "b"),
            Binding::new("feeder", x("auto"), ""),
        ]
    );
    assert!(router.exchange("auto").is_none());
    assert_eq!(router.bindings().count(), 0);
}

#[test]
fn auto_delete_exchange_without_bindings_stays_until_it_had_one() {
    let mut router = Router::new();
    let mut def = ExchangeDef::new("auto", ExchangeKind::Fanout);
    def.auto_delete = true;
    router.declare_exchange(def).unwrap();
    assert!(router.exchange("auto").is_some());
    router
        .unbind(&Binding::new("auto", x("amq.fanout"), ""))
        .unwrap();
    assert!(router.exchange("auto").is_some());
}

// Routing.

#[test]
fn routing_to_a_missing_exchange_is_not_found() {
    let router = Router::new();
    let err = router
        .route("nope", "k", None, &mut Vec::new())
        .unwrap_err();
    assert_eq!(err.reply_code(), 404);
    assert_eq!(err.message(), "no exchange 'nope' in vhost '/'");
}

#[test]
fn routing_key_over_255_bytes_is_command_invalid() {
    let router = router_with_queues(&["q"]);
    let key = "k".repeat(256);
    let err = router
        .route("amq.topic", &key, None, &mut Vec::new())
        .unwrap_err();
    assert_eq!(err.reply_code(), 503);
    assert!(router.route("", &key[..255], None, &mut Vec::new()).is_ok());
}

#[test]
fn internal_exchange_refuses_publishes_but_routes_through_bindings() {
    let mut router = router_with_queues(&["q"]);
    let mut def = ExchangeDef::new("inner", ExchangeKind::Fanout);
    def.internal = true;
    router.declare_exchange(def).unwrap();
    bind(&mut router, "inner", q("q"), "");
    bind(&mut router, "amq.direct", x("inner"), "k");
    let err = router
        .route("inner", "k", None, &mut Vec::new())
        .unwrap_err();
    assert_eq!(err.reply_code(), 403);
    assert_eq!(
        err.message(),
        "cannot publish to internal exchange 'inner' in vhost '/'"
    );
    assert_eq!(route(&router, "amq.direct", "k"), ["q"]);
    assert!(
        router
            .route("amq.rabbitmq.trace", "k", None, &mut Vec::new())
            .is_err()
    );
}

#[test]
fn direct_exchange_routes_on_the_exact_key() {
    let mut router = router_with_queues(&["q1", "q2", "q3"]);
    bind(&mut router, "amq.direct", q("q1"), "a");
    bind(&mut router, "amq.direct", q("q2"), "a");
    bind(&mut router, "amq.direct", q("q3"), "b");
    assert_eq!(route(&router, "amq.direct", "a"), ["q1", "q2"]);
    assert_eq!(route(&router, "amq.direct", "b"), ["q3"]);
    assert!(route(&router, "amq.direct", "A").is_empty());
    assert!(route(&router, "amq.direct", "").is_empty());
}

#[test]
fn fanout_exchange_routes_to_every_binding_whatever_the_key() {
    let mut router = router_with_queues(&["q1", "q2"]);
    bind(&mut router, "amq.fanout", q("q1"), "ignored");
    bind(&mut router, "amq.fanout", q("q2"), "");
    assert_eq!(route(&router, "amq.fanout", "anything"), ["q1", "q2"]);
}

#[test]
fn topic_exchange_routes_through_its_trie() {
    let mut router = router_with_queues(&["all", "eu", "orders"]);
    bind(&mut router, "amq.topic", q("all"), "#");
    bind(&mut router, "amq.topic", q("eu"), "*.eu.*");
    bind(&mut router, "amq.topic", q("orders"), "orders.#");
    assert_eq!(
        route(&router, "amq.topic", "orders.eu.created"),
        ["all", "eu", "orders"]
    );
    assert_eq!(route(&router, "amq.topic", "orders"), ["all", "orders"]);
    assert_eq!(route(&router, "amq.topic", ""), ["all"]);
}

#[test]
fn headers_exchange_routes_on_message_headers() {
    let mut router = router_with_queues(&["pdf", "any", "all"]);
    let pdf = table(&[("format", Value::string("pdf"))]);
    let any = table(&[
        ("x-match", Value::string("any")),
        ("format", Value::string("zip")),
        ("type", Value::string("log")),
    ]);
    router
        .bind(Binding::new("amq.headers", q("pdf"), "").with_arguments(pdf))
        .unwrap();
    router
        .bind(Binding::new("amq.headers", q("any"), "").with_arguments(any))
        .unwrap();
    bind(&mut router, "amq.headers", q("all"), "");
    let headers = table(&[
        ("format", Value::string("pdf")),
        ("type", Value::string("log")),
    ]);
    assert_eq!(
        route_headers(&router, "amq.headers", "", Some(&headers)),
        ["all", "any", "pdf"]
    );
    assert_eq!(route_headers(&router, "amq.headers", "", None), ["all"]);
}

#[test]
fn a_queue_reached_twice_is_routed_to_once() {
    let mut router = router_with_queues(&["q"]);
    declare(&mut router, "left", ExchangeKind::Fanout);
    declare(&mut router, "right", ExchangeKind::Fanout);
    bind(&mut router, "amq.topic", q("q"), "a.*");
    bind(&mut router, "amq.topic", q("q"), "#");
    bind(&mut router, "amq.topic", x("left"), "#");
    bind(&mut router, "amq.topic", x("right"), "#");
    bind(&mut router, "left", q("q"), "");
    bind(&mut router, "right", q("q"), "");
    assert_eq!(route(&router, "amq.topic", "a.b"), ["q"]);
}

#[test]
fn routed_names_are_sorted_and_the_callers_earlier_entries_are_kept() {
    let mut router = router_with_queues(&["c", "a", "b"]);
    for name in ["c", "a", "b"] {
        bind(&mut router, "amq.fanout", q(name), "");
    }
    let mut out: Vec<Arc<str>> = vec![Arc::from("z"), Arc::from("a")];
    router.route("amq.fanout", "", None, &mut out).unwrap();
    let names: Vec<&str> = out.iter().map(|s| &**s).collect();
    assert_eq!(names, ["z", "a", "a", "b", "c"]);
}

#[test]
fn exchange_to_exchange_bindings_are_followed_and_cycles_end() {
    let mut router = router_with_queues(&["q1", "q2", "q3"]);
    declare(&mut router, "x1", ExchangeKind::Topic);
    declare(&mut router, "x2", ExchangeKind::Direct);
    declare(&mut router, "x3", ExchangeKind::Fanout);
    bind(&mut router, "x1", x("x2"), "#");
    bind(&mut router, "x2", x("x3"), "k");
    bind(&mut router, "x3", x("x1"), "");
    bind(&mut router, "x3", x("x3"), "");
    bind(&mut router, "x1", q("q1"), "k");
    bind(&mut router, "x2", q("q2"), "k");
    bind(&mut router, "x3", q("q3"), "");
    assert_eq!(route(&router, "x1", "k"), ["q1", "q2", "q3"]);
    assert_eq!(route(&router, "x3", "k"), ["q1", "q2", "q3"]);
    assert_eq!(route(&router, "x2", "k"), ["q1", "q2", "q3"]);
    assert_eq!(route(&router, "x2", "other"), Vec::<String>::new());
    assert_eq!(route(&router, "x3", "other"), ["q3"]);
}

#[test]
fn alternate_exchange_takes_messages_its_exchange_cannot_route() {
    let mut router = router_with_queues(&["matched", "unrouted"]);
    declare(&mut router, "ae", ExchangeKind::Fanout);
    declare_with_ae(&mut router, "main", ExchangeKind::Direct, "ae");
    bind(&mut router, "main", q("matched"), "k");
    bind(&mut router, "ae", q("unrouted"), "");
    assert_eq!(route(&router, "main", "k"), ["matched"]);
    assert_eq!(route(&router, "main", "other"), ["unrouted"]);
}

#[test]
fn alternate_exchange_is_skipped_when_the_exchange_matched_an_exchange() {
    // RabbitMQ consults the AE only when the exchange's own bindings matched nothing;
    // a match to an exchange that then routes nowhere still counts as a match.
    let mut router = router_with_queues(&["unrouted"]);
    declare(&mut router, "ae", ExchangeKind::Fanout);
    declare(&mut router, "dead-end", ExchangeKind::Direct);
    declare_with_ae(&mut router, "main", ExchangeKind::Fanout, "ae");
    bind(&mut router, "main", x("dead-end"), "");
    bind(&mut router, "ae", q("unrouted"), "");
    assert!(route(&router, "main", "k").is_empty());
}

#[test]
fn alternate_exchanges_chain_and_their_cycles_end() {
    let mut router = router_with_queues(&["last"]);
    declare_with_ae(&mut router, "a", ExchangeKind::Direct, "b");
    declare_with_ae(&mut router, "b", ExchangeKind::Direct, "c");
    declare_with_ae(&mut router, "c", ExchangeKind::Direct, "a");
    assert!(route(&router, "a", "k").is_empty());
    bind(&mut router, "c", q("last"), "k");
    assert_eq!(route(&router, "a", "k"), ["last"]);
    assert_eq!(route(&router, "b", "k"), ["last"]);
    assert!(route(&router, "b", "other").is_empty());
}

#[test]
fn missing_alternate_exchange_is_ignored_until_it_is_declared() {
    let mut router = router_with_queues(&["q"]);
    declare_with_ae(&mut router, "main", ExchangeKind::Direct, "later");
    assert!(route(&router, "main", "k").is_empty());
    declare(&mut router, "later", ExchangeKind::Fanout);
    bind(&mut router, "later", q("q"), "");
    assert_eq!(route(&router, "main", "k"), ["q"]);
    router.delete_exchange("later", DeleteWhen::Always).unwrap();
    assert!(route(&router, "main", "k").is_empty());
}

#[test]
fn route_with_caller_scratch_gives_the_same_queues() {
    let mut router = router_with_queues(&["q1", "q2"]);
    bind(&mut router, "amq.topic", q("q1"), "a.#");
    bind(&mut router, "amq.topic", q("q2"), "*.b");
    let mut scratch = RouteScratch::default();
    for key in ["a.b", "a", "x.b", "x"] {
        let mut out = Vec::new();
        router
            .route_with("amq.topic", key, None, &mut scratch, &mut out)
            .unwrap();
        let names: Vec<String> = out.iter().map(|s| s.to_string()).collect();
        assert_eq!(names, route(&router, "amq.topic", key), "key {key}");
    }
}

// Listing.

#[test]
fn bindings_are_listed_by_source_by_destination_and_by_queue() {
    let mut router = router_with_queues(&["q1", "q2"]);
    declare(&mut router, "b", ExchangeKind::Direct);
    declare(&mut router, "a", ExchangeKind::Fanout);
    bind(&mut router, "b", q("q2"), "k");
    bind(&mut router, "b", q("q1"), "k");
    bind(&mut router, "a", x("b"), "");
    bind(&mut router, "a", q("q1"), "");
    let all: Vec<(&str, &str, &str)> = router
        .bindings()
        .map(|b| (&*b.source, &**b.destination.name(), &*b.routing_key))
        .collect();
    assert_eq!(
        all,
        [
            ("a", "q1", ""),
            ("a", "b", ""),
            ("b", "q1", "k"),
            ("b", "q2", "k")
        ]
    );
    assert_eq!(router.bindings_from("b").count(), 2);
    assert_eq!(router.bindings_from("missing").count(), 0);
    let to_q1: Vec<&str> = router
        .bindings_for_queue("q1")
        .map(|b| &*b.source)
        .collect();
    assert_eq!(to_q1, ["a", "b"]);
    let to_b: Vec<&Binding> = router.bindings_to_exchange("b").collect();
    assert_eq!(to_b, [&Binding::new("a", x("b"), "")]);
}

// Scale.

#[test]
fn ten_thousand_topic_bindings_route_ten_thousand_keys_quickly() {
    let mut router = Router::new();
    for i in 0..10_000 {
        let queue = format!("q{i}");
        router.add_queue(Arc::from(queue.as_str()));
        let pattern = match i % 4 {
            0 => format!("stock.{i}.*"),
            1 => format!("stock.*.{i}"),
            2 => format!("#.{i}"),
            _ => format!("news.{i}.#"),
        };
        bind(&mut router, "amq.topic", q(&queue), &pattern);
    }
    // A few broad patterns that every key meets.
    router.add_queue(Arc::from("audit"));
    bind(&mut router, "amq.topic", q("audit"), "#.#");
    assert_eq!(route(&router, "amq.topic", "stock.0.nyse"), ["audit", "q0"]);
    assert_eq!(route(&router, "amq.topic", "stock.x.1"), ["audit", "q1"]);
    assert_eq!(route(&router, "amq.topic", "a.b.2"), ["audit", "q2"]);
    assert_eq!(route(&router, "amq.topic", "news.3"), ["audit", "q3"]);

    let keys: Vec<String> = (0..10_000).map(|i| format!("stock.{i}.nyse")).collect();
    let mut out = Vec::new();
    let started = Instant::now();
    let mut routed = 0;
    for key in &keys {
        out.clear();
        router.route("amq.topic", key, None, &mut out).unwrap();
        routed += out.len();
    }
    let elapsed = started.elapsed();
    // Each key meets `audit`, and `stock.{i}.*` for one in four.
    assert_eq!(routed, 10_000 + 2_500);
    assert!(
        elapsed < Duration::from_secs(1),
        "10,000 routes took {elapsed:?}"
    );
}

/// Counts this thread's heap allocations, so a test can check that routing makes none.
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    }

    struct Counting;

    fn count() {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    }

    // SAFETY: every call is forwarded unchanged to the system allocator.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            count();
            // SAFETY: the caller upholds `alloc`'s contract.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: the caller upholds `dealloc`'s contract.
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            count();
            // SAFETY: the caller upholds `realloc`'s contract.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    pub(super) fn allocations() -> usize {
        ALLOCATIONS.with(Cell::get)
    }
}

#[test]
fn routing_allocates_nothing_once_buffers_have_grown() {
    let mut router = router_with_queues(&["q1", "q2", "q3", "q4"]);
    declare(&mut router, "hub", ExchangeKind::Fanout);
    declare(&mut router, "fallback", ExchangeKind::Fanout);
    declare_with_ae(&mut router, "t", ExchangeKind::Topic, "fallback");
    bind(&mut router, "t", q("q1"), "a.#");
    bind(&mut router, "t", q("q2"), "#.#.b");
    bind(&mut router, "t", x("hub"), "*.b");
    bind(&mut router, "hub", q("q3"), "");
    bind(&mut router, "hub", x("amq.headers"), "");
    bind(&mut router, "fallback", q("q4"), "");
    let args = table(&[("x-match", Value::string("any")), ("h", Value::I32(1))]);
    router
        .bind(Binding::new("amq.headers", q("q4"), "").with_arguments(args))
        .unwrap();
    bind(&mut router, "amq.direct", q("q1"), "k");
    let headers = table(&[("h", Value::I64(1))]);
    let cases = [
        ("t", "a.b"),
        ("t", "x.y.z"),
        ("t", "a"),
        ("amq.direct", "k"),
        ("", "q2"),
    ];
    let mut out = Vec::new();
    let run = |out: &mut Vec<Arc<str>>| {
        for (exchange, key) in cases {
            out.clear();
            router.route(exchange, key, Some(&headers), out).unwrap();
        }
    };
    run(&mut out);
    let probe = counting::allocations();
    drop(std::hint::black_box(Vec::<u8>::with_capacity(8)));
    assert_eq!(
        counting::allocations(),
        probe + 1,
        "the counter sees allocations"
    );
    let before = counting::allocations();
    for _ in 0..100 {
        run(&mut out);
    }
    assert_eq!(counting::allocations() - before, 0);
    assert_eq!(
        route_headers(&router, "t", "a.b", Some(&headers)),
        ["q1", "q2", "q3", "q4"]
    );
}

#[test]
fn exchanges_and_bindings_past_their_limits_are_precondition_failed() {
    let mut router = router_with_queues(&["q"]);
    router.set_limits(RouterLimits {
        exchanges_max: 2,
        bindings_max: 2,
    });
    declare(&mut router, "a", ExchangeKind::Direct);
    declare(&mut router, "b", ExchangeKind::Direct);
    let refused = router.declare_exchange(ExchangeDef::new("c", ExchangeKind::Direct));
    assert_eq!(
        refused,
        Err(RoutingError::PreconditionFailed(
            "cannot declare exchange 'c': exchange limit in vhost '/' (2) is reached".into()
        ))
    );
    // Redeclaring an existing exchange is not a new one.
    assert_eq!(
        router.declare_exchange(ExchangeDef::new("a", ExchangeKind::Direct)),
        Ok(false)
    );
    bind(&mut router, "a", q("q"), "k1");
    bind(&mut router, "a", q("q"), "k2");
    let refused = router.bind(Binding::new("a", q("q"), "k3"));
    assert_eq!(refused.map_err(|e| e.reply_code()), Err(406));
    // Binding again what exists is still fine at the limit.
    assert_eq!(router.bind(Binding::new("a", q("q"), "k1")), Ok(false));
    router
        .unbind(&Binding::new("a", q("q"), "k1"))
        .expect("unbind");
    assert_eq!(router.bind(Binding::new("a", q("q"), "k3")), Ok(true));
    router
        .delete_exchange("b", DeleteWhen::Always)
        .expect("delete");
    declare(&mut router, "c", ExchangeKind::Direct);
}

/// The binding count the limit is checked against follows every way bindings go:
/// unbind, exchange deletion both ways, queue removal and auto-delete cascades.
#[test]
fn the_binding_count_matches_the_bindings_after_any_sequence_of_changes() {
    let mut router = router_with_queues(&[]);
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = |n: u64| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (seed >> 33) % n
    };
    let names = ["e0", "e1", "e2", "e3"];
    let queues = ["q0", "q1", "q2"];
    for _ in 0..5000 {
        let e = names[next(4) as usize];
        let qn = queues[next(3) as usize];
        let key = ["k0", "k1"][next(2) as usize];
        match next(7) {
            0 => {
                let mut def = ExchangeDef::new(e, ExchangeKind::Direct);
                def.auto_delete = next(2) == 0;
                let _ = router.declare_exchange(def);
            }
            1 => {
                let _ = router.delete_exchange(e, DeleteWhen::Always);
            }
            2 => {
                router.add_queue(Arc::from(qn));
            }
            3 => {
                router.remove_queue(qn);
            }
            4 | 5 => {
                let destination = if next(2) == 0 {
                    q(qn)
                } else {
                    x(names[next(4) as usize])
                };
                let _ = router.bind(Binding::new(e, destination, key));
            }
            _ => {
                let _ = router.unbind(&Binding::new(e, q(qn), key));
            }
        }
        assert_eq!(router.binding_count(), router.bindings().count());
    }
}
