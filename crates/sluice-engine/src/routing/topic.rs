//! Topic matching: a trie over the words of binding keys, with `*` and `#` as edges of
//! their own, as RabbitMQ's `rabbit_exchange_type_topic` stores them.
//!
//! Words are split on `.` exactly as RabbitMQ splits them: the empty key has no words, and
//! every other key has one more word than it has dots, empty words included (`a..b` is
//! `a`, ``, `b`). `*` matches exactly one word, `#` zero or more.
//!
//! Matching walks the set of live trie nodes one routing-key word at a time (an NFA
//! simulation) instead of backtracking, so its cost is at most words × nodes whatever the
//! patterns: `#.#.#.#.#` against a hundred words is five nodes a step. A node entered
//! through a `#` edge stays live on every word, and entering any node also enters its `#`
//! child, since `#` may match nothing.

use std::collections::HashMap;

use super::binding::{Destination, DestinationSet};
use super::scratch::Marks;

const ROOT: usize = 0;

/// The words of a key, RabbitMQ style: none for the empty key.
pub(super) fn words(key: &str) -> std::str::Split<'_, char> {
    let mut words = key.split('.');
    if key.is_empty() {
        // `"".split('.')` yields one empty word; RabbitMQ's key has none.
        words.next();
    }
    words
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Edge {
    Word(Box<str>),
    Star,
    Hash,
}

impl Edge {
    fn of(word: &str) -> Edge {
        match word {
            "*" => Edge::Star,
            "#" => Edge::Hash,
            word => Edge::Word(word.into()),
        }
    }
}

#[derive(Debug, Default)]
struct Node {
    words: HashMap<Box<str>, usize>,
    star: Option<usize>,
    hash: Option<usize>,
    /// Entered through a `#` edge: stays live on every further word.
    is_hash: bool,
    destinations: DestinationSet,
    /// The node above and the edge from it; `None` for the root and for free nodes.
    parent: Option<(usize, Edge)>,
}

impl Node {
    fn is_unused(&self) -> bool {
        self.destinations.is_empty()
            && self.words.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
    }
}

/// The live-node sets and marks one match needs, reused across matches.
#[derive(Debug, Default)]
pub(super) struct TopicScratch {
    marks: Marks,
    live: Vec<usize>,
    next: Vec<usize>,
}

/// The bindings of one topic exchange, one trie node per distinct binding-key prefix.
/// Nodes live in a vector and are recycled through a free list when their last binding
/// goes, so the trie never holds more nodes than its binding keys have words, plus one.
#[derive(Debug)]
pub(super) struct TopicTrie {
    nodes: Vec<Node>,
    free: Vec<usize>,
}

impl Default for TopicTrie {
    fn default() -> Self {
        TopicTrie {
            nodes: vec![Node::default()],
            free: Vec::new(),
        }
    }
}

impl TopicTrie {
    /// Adds `destination` under `pattern`; false when it was already there.
    pub(super) fn insert(&mut self, pattern: &str, destination: Destination) -> bool {
        let mut at = ROOT;
        for word in words(pattern) {
            at = match self.child(at, word) {
                Some(child) => child,
                None => self.add_child(at, word),
            };
        }
        match self.nodes.get_mut(at) {
            Some(node) => node.destinations.insert(destination),
            None => false,
        }
    }

    /// Removes `destination` from under `pattern` and prunes nodes left unused; false
    /// when it was not there.
    pub(super) fn remove(&mut self, pattern: &str, destination: &Destination) -> bool {
        let mut at = ROOT;
        for word in words(pattern) {
            match self.child(at, word) {
                Some(child) => at = child,
                None => return false,
            }
        }
        let removed = match self.nodes.get_mut(at) {
            Some(node) => node.destinations.remove(destination),
            None => false,
        };
        if removed {
            self.prune(at);
        }
        removed
    }

    /// Calls `emit` once for each destination of each node whose pattern matches `key`.
    /// A destination bound under two matching patterns is emitted twice.
    pub(super) fn route(
        &self,
        key: &str,
        scratch: &mut TopicScratch,
        mut emit: impl FnMut(&Destination),
    ) {
        let TopicScratch { marks, live, next } = scratch;
        live.clear();
        marks.begin(self.nodes.len());
        marks.mark(ROOT);
        live.push(ROOT);
        self.enter_hash_children(live, marks);
        for word in words(key) {
            if live.is_empty() {
                return;
            }
            next.clear();
            marks.begin(self.nodes.len());
            for &at in live.iter() {
                let Some(node) = self.nodes.get(at) else {
                    continue;
                };
                let steps = [
                    node.is_hash.then_some(at),
                    node.words.get(word).copied(),
                    node.star,
                ];
                for to in steps.into_iter().flatten() {
                    if marks.mark(to) {
                        next.push(to);
                    }
                }
            }
            self.enter_hash_children(next, marks);
            std::mem::swap(live, next);
        }
        for &at in live.iter() {
            if let Some(node) = self.nodes.get(at) {
                node.destinations.iter().for_each(&mut emit);
            }
        }
    }

    /// Adds to `set` the `#` children of its nodes, and theirs in turn (`#.#`).
    fn enter_hash_children(&self, set: &mut Vec<usize>, marks: &mut Marks) {
        let mut i = 0;
        while let Some(&at) = set.get(i) {
            if let Some(hash) = self.nodes.get(at).and_then(|node| node.hash)
                && marks.mark(hash)
            {
                set.push(hash);
            }
            i += 1;
        }
    }

    fn child(&self, at: usize, word: &str) -> Option<usize> {
        let node = self.nodes.get(at)?;
        match word {
            "*" => node.star,
            "#" => node.hash,
            word => node.words.get(word).copied(),
        }
    }

    fn add_child(&mut self, at: usize, word: &str) -> usize {
        let edge = Edge::of(word);
        let node = Node {
            is_hash: edge == Edge::Hash,
            parent: Some((at, edge.clone())),
            ..Node::default()
        };
        let child = match self.free.pop() {
            Some(id) => {
                if let Some(slot) = self.nodes.get_mut(id) {
                    *slot = node;
                }
                id
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        if let Some(parent) = self.nodes.get_mut(at) {
            match edge {
                Edge::Word(word) => {
                    parent.words.insert(word, child);
                }
                Edge::Star => parent.star = Some(child),
                Edge::Hash => parent.hash = Some(child),
            }
        }
        child
    }

    /// Frees `at` and its ancestors while they hold nothing, stopping at the root.
    fn prune(&mut self, mut at: usize) {
        while at != ROOT {
            let Some(node) = self.nodes.get_mut(at) else {
                return;
            };
            if !node.is_unused() {
                return;
            }
            let Some((parent, edge)) = node.parent.take() else {
                return;
            };
            *node = Node::default();
            self.free.push(at);
            if let Some(parent_node) = self.nodes.get_mut(parent) {
                match edge {
                    Edge::Word(word) => {
                        parent_node.words.remove(&word);
                    }
                    Edge::Star => parent_node.star = None,
                    Edge::Hash => parent_node.hash = None,
                }
            }
            at = parent;
        }
    }

    /// Nodes in use, the root included.
    #[cfg(test)]
    fn node_count(&self) -> usize {
        self.nodes.len() - self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn queue(name: &str) -> Destination {
        Destination::queue(name)
    }

    fn matches(trie: &TopicTrie, key: &str) -> BTreeSet<String> {
        let mut scratch = TopicScratch::default();
        let mut out = BTreeSet::new();
        trie.route(key, &mut scratch, |d| {
            out.insert(d.name().to_string());
        });
        out
    }

    fn one(pattern: &str, key: &str) -> bool {
        let mut trie = TopicTrie::default();
        trie.insert(pattern, queue("q"));
        !matches(&trie, key).is_empty()
    }

    /// The obvious recursive matcher over words, exponential but plainly right.
    fn reference(pattern: &[&str], key: &[&str]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((&"#", rest)) => (0..=key.len()).any(|skip| reference(rest, &key[skip..])),
            Some((&"*", rest)) => !key.is_empty() && reference(rest, &key[1..]),
            Some((word, rest)) => key.first() == Some(word) && reference(rest, &key[1..]),
        }
    }

    fn reference_words(s: &str) -> Vec<&str> {
        if s.is_empty() {
            Vec::new()
        } else {
            s.split('.').collect()
        }
    }

    fn reference_match(pattern: &str, key: &str) -> bool {
        reference(&reference_words(pattern), &reference_words(key))
    }

    #[test]
    fn words_split_like_rabbitmq() {
        assert_eq!(words("").count(), 0);
        assert_eq!(words("a").collect::<Vec<_>>(), ["a"]);
        assert_eq!(words(".").collect::<Vec<_>>(), ["", ""]);
        assert_eq!(words("a..b").collect::<Vec<_>>(), ["a", "", "b"]);
        assert_eq!(words("a.").collect::<Vec<_>>(), ["a", ""]);
    }

    #[test]
    fn pattern_and_key_cases_follow_rabbitmq_semantics() {
        let cases: &[(&str, &str, bool)] = &[
            ("a.b.c", "a.b.c", true),
            ("a.b.c", "a.b", false),
            ("a.b", "a.b.c", false),
            ("*", "a", true),
            ("*", "", false),
            ("*", "a.b", false),
            ("*.*", "a.b", true),
            ("*.*", ".", true),
            ("*.b", "a.b", true),
            ("#", "", true),
            ("#", "a", true),
            ("#", "a.b.c", true),
            ("#", ".", true),
            ("#.#", "", true),
            ("#.#", "a", true),
            ("a.#", "a", true),
            ("a.#", "a.b.c", true),
            ("a.#", "b", false),
            ("a.#", "", false),
            ("#.a", "a", true),
            ("#.a", "b.a", true),
            ("#.a", "a.b", false),
            ("a.#.b", "a.b", true),
            ("a.#.b", "a.x.y.b", true),
            ("a.#.b", "a.b.c", false),
            ("a.*.#", "a", false),
            ("a.*.#", "a.b", true),
            ("a.*.#", "a.b.c.d", true),
            ("*.#", "", false),
            ("#.*", "a", true),
            ("#.*.#", "", false),
            ("#.*.#", "a.b", true),
            ("a.*.b", "a..b", true),
            ("a.b", "a..b", false),
            ("a..b", "a..b", true),
            ("a.#.b", "a..b", true),
            ("a.", "a.", true),
            ("a.", "a", false),
            ("a.*", "a.", true),
            ("", "", true),
            ("", "a", false),
            (".", ".", true),
            (".", "", false),
            ("a.b.*", "a.b", false),
            ("*.*.*", "a.b.c", true),
            ("#.b.#", "a.b.c", true),
            ("#.b.#", "b", true),
            ("#.b.#", "a.c", false),
            // A literal `*` or `#` in a routing key is just a word.
            ("a.*", "a.*", true),
            ("a.b", "a.*", false),
            ("#", "#", true),
        ];
        for &(pattern, key, expected) in cases {
            assert_eq!(
                one(pattern, key),
                expected,
                "pattern {pattern:?} key {key:?}"
            );
            assert_eq!(
                reference_match(pattern, key),
                expected,
                "reference, pattern {pattern:?} key {key:?}"
            );
        }
    }

    /// RabbitMQ's own topic matching test (`test_topic_matching` in its unit tests):
    /// the same bindings, keys and expected destinations, then again after removing some.
    #[test]
    fn rabbitmq_topic_matching_suite_gives_the_same_destinations() {
        let bindings = [
            ("a.b.c", "t1"),
            ("a.*.c", "t2"),
            ("a.#.b", "t3"),
            ("a.b.b.c", "t4"),
            ("#", "t5"),
            ("#.#", "t6"),
            ("#.b", "t7"),
            ("*.*", "t8"),
            ("a.*", "t9"),
            ("*.b.c", "t10"),
            ("a.#", "t11"),
            ("a.#.#", "t12"),
            ("b.b.c", "t13"),
            ("a.b.b", "t14"),
            ("a.b", "t15"),
            ("b.c", "t16"),
            ("", "t17"),
            ("*.*.*", "t18"),
            ("vodka.martini", "t19"),
            ("a.b.c", "t20"),
            ("*.#", "t21"),
            ("#.*.#", "t22"),
            ("*.#.#", "t23"),
            ("#.#.#", "t24"),
            ("*", "t25"),
            ("#.b.#", "t26"),
        ];
        let mut trie = TopicTrie::default();
        for (pattern, q) in bindings {
            assert!(trie.insert(pattern, queue(q)));
        }
        let check = |trie: &TopicTrie, expected: &[(&str, &[&str])]| {
            for &(key, want) in expected {
                let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
                assert_eq!(matches(trie, key), want, "key {key:?}");
            }
        };
        check(
            &trie,
            &[
                (
                    "a.b.c",
                    &[
                        "t1", "t2", "t5", "t6", "t10", "t11", "t12", "t18", "t20", "t21", "t22",
                        "t23", "t24", "t26",
                    ],
                ),
                (
                    "a.b",
                    &[
                        "t3", "t5", "t6", "t7", "t8", "t9", "t11", "t12", "t15", "t21", "t22",
                        "t23", "t24", "t26",
                    ],
                ),
                (
                    "a.b.b",
                    &[
                        "t3", "t5", "t6", "t7", "t11", "t12", "t14", "t18", "t21", "t22", "t23",
                        "t24", "t26",
                    ],
                ),
                ("", &["t5", "t6", "t17", "t24"]),
                (
                    "b.c.c",
                    &["t5", "t6", "t18", "t21", "t22", "t23", "t24", "t26"],
                ),
                (
                    "a.a.a.a.a",
                    &["t5", "t6", "t11", "t12", "t21", "t22", "t23", "t24"],
                ),
                ("vodka.gin", &["t5", "t6", "t8", "t21", "t22", "t23", "t24"]),
                (
                    "vodka.martini",
                    &["t5", "t6", "t8", "t19", "t21", "t22", "t23", "t24"],
                ),
                (
                    "b.b.c",
                    &[
                        "t5", "t6", "t10", "t13", "t18", "t21", "t22", "t23", "t24", "t26",
                    ],
                ),
                (
                    "nothing.here.at.all",
                    &["t5", "t6", "t21", "t22", "t23", "t24"],
                ),
                ("oneword", &["t5", "t6", "t21", "t22", "t23", "t24", "t25"]),
            ],
        );
        for index in [1, 5, 11, 19, 21] {
            let (pattern, q) = bindings[index - 1];
            assert!(trie.remove(pattern, &queue(q)));
        }
        check(
            &trie,
            &[
                (
                    "a.b.c",
                    &[
                        "t2", "t6", "t10", "t12", "t18", "t20", "t22", "t23", "t24", "t26",
                    ],
                ),
                (
                    "a.b",
                    &[
                        "t3", "t6", "t7", "t8", "t9", "t12", "t15", "t22", "t23", "t24", "t26",
                    ],
                ),
                (
                    "a.b.b",
                    &[
                        "t3", "t6", "t7", "t12", "t14", "t18", "t22", "t23", "t24", "t26",
                    ],
                ),
                ("", &["t6", "t17", "t24"]),
                ("b.c.c", &["t6", "t18", "t22", "t23", "t24", "t26"]),
                ("a.a.a.a.a", &["t6", "t12", "t22", "t23", "t24"]),
                ("vodka.gin", &["t6", "t8", "t22", "t23", "t24"]),
                ("vodka.martini", &["t6", "t8", "t22", "t23", "t24"]),
                (
                    "b.b.c",
                    &["t6", "t10", "t13", "t18", "t22", "t23", "t24", "t26"],
                ),
                ("nothing.here.at.all", &["t6", "t22", "t23", "t24"]),
                ("oneword", &["t6", "t22", "t23", "t24", "t25"]),
            ],
        );
    }

    #[test]
    fn many_hashes_against_a_long_key_match_without_backtracking_blowup() {
        let long_key = vec!["a"; 100].join(".");
        assert!(one("#.#.#.#.#", &long_key));
        let mut trie = TopicTrie::default();
        trie.insert("#.a.#.a.#.a.#.a.#.a.#.b", queue("never"));
        trie.insert("#.#.#.#.#.#.#.#.#.#.#.#.#.#.#.#", queue("always"));
        let longest = vec!["a"; 128].join(".");
        assert_eq!(longest.len(), 255);
        let started = std::time::Instant::now();
        for _ in 0..100 {
            assert_eq!(
                matches(&trie, &longest),
                BTreeSet::from(["always".to_string()])
            );
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn removing_bindings_prunes_the_trie_back_to_the_root() {
        let mut trie = TopicTrie::default();
        trie.insert("a.b.c", queue("q1"));
        trie.insert("a.b.#", queue("q2"));
        trie.insert("a.*", queue("q3"));
        assert_eq!(trie.node_count(), 6);
        assert!(
            !trie.remove("a.b", &queue("q1")),
            "no binding on that prefix"
        );
        assert!(!trie.remove("a.b.c", &queue("q2")), "wrong destination");
        assert!(trie.remove("a.b.c", &queue("q1")));
        assert_eq!(trie.node_count(), 5);
        assert!(trie.remove("a.b.#", &queue("q2")));
        assert!(trie.remove("a.*", &queue("q3")));
        assert_eq!(trie.node_count(), 1);
        trie.insert("x.y", queue("q4"));
        assert_eq!(trie.node_count(), 3, "freed nodes are reused");
        assert_eq!(matches(&trie, "x.y"), BTreeSet::from(["q4".to_string()]));
        assert!(matches(&trie, "a.b.c").is_empty());
    }

    fn word() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["a", "b", "", "*", "#"])
    }

    fn key_word() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["a", "b", "c", ""])
    }

    fn pattern() -> impl Strategy<Value = String> {
        prop::collection::vec(word(), 0..6).prop_map(|w| w.join("."))
    }

    fn key() -> impl Strategy<Value = String> {
        prop::collection::vec(key_word(), 0..8).prop_map(|w| w.join("."))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn trie_agrees_with_the_recursive_reference_matcher(
            patterns in prop::collection::vec(pattern(), 1..12),
            keys in prop::collection::vec(key(), 1..8),
            removed in prop::collection::vec(any::<bool>(), 12),
        ) {
            let mut trie = TopicTrie::default();
            for (i, p) in patterns.iter().enumerate() {
                trie.insert(p, queue(&i.to_string()));
            }
            let expect = |live: &dyn Fn(usize) -> bool, key: &str| -> BTreeSet<String> {
                patterns
                    .iter()
                    .enumerate()
                    .filter(|&(i, p)| live(i) && reference_match(p, key))
                    .map(|(i, _)| i.to_string())
                    .collect()
            };
            for key in &keys {
                prop_assert_eq!(matches(&trie, key), expect(&|_| true, key), "key {:?}", key);
            }
            for (i, p) in patterns.iter().enumerate() {
                if removed[i] {
                    prop_assert!(trie.remove(p, &queue(&i.to_string())));
                }
            }
            for key in &keys {
                prop_assert_eq!(
                    matches(&trie, key),
                    expect(&|i| !removed[i], key),
                    "after removals, key {:?}",
                    key
                );
            }
        }
    }
}
