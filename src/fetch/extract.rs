//! Reading the few fields a profile names out of a body or a record in one serde pass,
//! without building a `serde_json::Value`: the paths are compiled into a [`PathTrie`], the
//! pass descends only into keys on a path, skips everything else with `IgnoredAny`, and keeps
//! what it finds as borrowed raw JSON text.
//!
//! A value that is not an object where a path goes on through it leaves the field missing:
//! the caller says "is missing", naming the path, rather than quoting serde.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::profile::FieldPath;

/// The field paths read from one kind of document (a body, or a record), as a tree of keys.
#[derive(Debug, Clone, Default)]
pub(crate) struct PathTrie {
    /// Node 0 is the document itself.
    nodes: Vec<Node>,
    slots: usize,
}

#[derive(Debug, Clone, Default)]
struct Node {
    /// Unescaped key and child node; a handful per node, so a linear scan is fastest.
    children: Vec<(Box<str>, usize)>,
    /// The value here is captured into this slot.
    slot: Option<usize>,
    /// The value here is the records list, captured element by element.
    records: bool,
}

/// What one pass found: per slot the raw value (if present), and the records list.
#[derive(Debug, Default)]
pub(crate) struct Captures<'a> {
    pub slots: Vec<Option<&'a RawValue>>,
    pub records: RecordsList<'a>,
}

/// The records list as found.
#[derive(Debug, Default)]
pub(crate) enum RecordsList<'a> {
    #[default]
    Missing,
    /// Present but not an array: the JSON kind found, with its article.
    NotArray(&'static str),
    Array(Vec<&'a RawValue>),
}

impl PathTrie {
    pub fn new() -> Self {
        PathTrie { nodes: vec![Node::default()], slots: 0 }
    }

    fn node_at(&mut self, path: &FieldPath) -> usize {
        let mut at = 0;
        for key in &path.0 {
            at = match self.nodes[at].children.iter().find(|(k, _)| **k == **key) {
                Some(&(_, child)) => child,
                None => {
                    self.nodes.push(Node::default());
                    let child = self.nodes.len() - 1;
                    self.nodes[at].children.push((key.as_str().into(), child));
                    child
                }
            };
        }
        at
    }

    /// The slot that will hold the value at `path`; the same path always gets the same slot.
    pub fn insert(&mut self, path: &FieldPath) -> usize {
        let at = self.node_at(path);
        match self.nodes[at].slot {
            Some(slot) => slot,
            None => {
                self.nodes[at].slot = Some(self.slots);
                self.slots += 1;
                self.slots - 1
            }
        }
    }

    /// Marks `path` as the records list (the empty path: the document itself).
    pub fn insert_records(&mut self, path: &FieldPath) {
        let at = self.node_at(path);
        self.nodes[at].records = true;
    }

    /// Reads `json` (one complete JSON text) into `captures`, which is reset first so its
    /// buffers are reused between records.
    pub fn read<'a>(&self, json: &'a str, captures: &mut Captures<'a>) -> Result<(), serde_json::Error> {
        captures.slots.clear();
        captures.slots.resize(self.slots, None);
        captures.records = RecordsList::Missing;
        let mut deserializer = serde_json::Deserializer::from_str(json);
        NodeSeed { trie: self, node: 0, captures }.deserialize(&mut deserializer)?;
        deserializer.end()
    }
}

struct NodeSeed<'t, 'c, 'a> {
    trie: &'t PathTrie,
    node: usize,
    captures: &'c mut Captures<'a>,
}

impl<'a> DeserializeSeed<'a> for NodeSeed<'_, '_, 'a> {
    type Value = ();

    fn deserialize<D: Deserializer<'a>>(self, deserializer: D) -> Result<(), D::Error> {
        let node = &self.trie.nodes[self.node];
        if node.records {
            self.captures.records = deserializer.deserialize_any(RecordsVisitor)?;
        } else if let Some(slot) = node.slot {
            self.captures.slots[slot] = Some(<&'a RawValue>::deserialize(deserializer)?);
        } else {
            deserializer.deserialize_any(self)?;
        }
        Ok(())
    }
}

impl<'a> Visitor<'a> for NodeSeed<'_, '_, 'a> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'a>>(self, mut map: A) -> Result<(), A::Error> {
        let node = &self.trie.nodes[self.node];
        // serde's derive refuses a repeated field; so do we, for the keys we read.
        let mut seen: u64 = 0;
        while let Some(found) = map.next_key_seed(KeySeed { node })? {
            match found {
                Some((index, child)) => {
                    if index < 64 {
                        if seen & (1 << index) != 0 {
                            let key = &node.children[index].0;
                            return Err(de::Error::custom(format_args!("duplicate field `{key}`")));
                        }
                        seen |= 1 << index;
                    }
                    map.next_value_seed(NodeSeed { trie: self.trie, node: child, captures: &mut *self.captures })?;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'a>>(self, seq: A) -> Result<(), A::Error> {
        IgnoredAny.visit_seq(seq).map(|_| ())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

/// A key, looked up among a node's children: `Some((index, child))` when it is on a path.
struct KeySeed<'t> {
    node: &'t Node,
}

impl<'a> DeserializeSeed<'a> for KeySeed<'_> {
    type Value = Option<(usize, usize)>;

    fn deserialize<D: Deserializer<'a>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'a> Visitor<'a> for KeySeed<'_> {
    type Value = Option<(usize, usize)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    // serde_json hands over a borrowed key when it has no escapes, an unescaped copy otherwise.
    fn visit_borrowed_str<E: de::Error>(self, key: &'a str) -> Result<Self::Value, E> {
        self.visit_str(key)
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.node.children.iter().position(|(k, _)| **k == *key).map(|i| (i, self.node.children[i].1)))
    }
}

struct RecordsVisitor;

impl<'a> Visitor<'a> for RecordsVisitor {
    type Value = RecordsList<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of records")
    }

    fn visit_seq<A: SeqAccess<'a>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut records = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(record) = seq.next_element::<&'a RawValue>()? {
            records.push(record);
        }
        Ok(RecordsList::Array(records))
    }

    fn visit_map<A: MapAccess<'a>>(self, map: A) -> Result<Self::Value, A::Error> {
        IgnoredAny.visit_map(map).map(|_| RecordsList::NotArray("an object"))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(RecordsList::NotArray("a boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(RecordsList::NotArray("a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(RecordsList::NotArray("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(RecordsList::NotArray("a number"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(RecordsList::NotArray("a string"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(RecordsList::NotArray("null"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn path(text: &str) -> FieldPath {
        FieldPath::parse(text).expect("test path")
    }

    fn read_one(json: &str, at: &str) -> Option<String> {
        let mut trie = PathTrie::new();
        let slot = trie.insert(&path(at));
        let mut captures = Captures::default();
        trie.read(json, &mut captures).expect("valid JSON");
        captures.slots[slot].map(|raw| raw.get().to_owned())
    }

    #[test]
    fn nested_fields_are_found_as_raw_text() {
        let body = r#"{"a":1,"order":{"x":[1,{"number":2}],"number": 20260101000005 ,"channel":"pos"},"z":null}"#;
        assert_eq!(read_one(body, "order.number").as_deref(), Some("20260101000005"));
        assert_eq!(read_one(body, "order").as_deref().map(|s| s.starts_with("{\"x\"")), Some(true));
        assert_eq!(read_one(body, "order.missing"), None);
        assert_eq!(read_one(body, "a.b"), None, "a number where an object is expected is missing");
        assert_eq!(read_one(body, "z.b"), None);
        assert_eq!(read_one(r#"{"a":[{"b":1}]}"#, "a.b"), None);
    }

    #[test]
    fn escaped_keys_are_compared_unescaped() {
        assert_eq!(read_one(r#"{"\u006frder":{"n\"o":5}}"#, "order.n\"o").as_deref(), Some("5"));
        assert_eq!(read_one(r#"{"caf\u00e9":"x"}"#, "café").as_deref(), Some("\"x\""));
    }

    #[test]
    fn repeated_keys_on_a_path_are_refused_and_others_ignored() {
        let mut trie = PathTrie::new();
        trie.insert(&path("id"));
        let mut captures = Captures::default();
        let err = trie.read(r#"{"id":1,"id":2}"#, &mut captures).expect_err("duplicate");
        assert!(err.to_string().contains("duplicate field `id`"), "{err}");
        trie.read(r#"{"id":1,"x":2,"x":3}"#, &mut captures).expect("unread keys may repeat");
    }

    #[test]
    fn records_list_is_captured_nested_or_as_the_whole_body() {
        let mut trie = PathTrie::new();
        trie.insert_records(&path("result.items"));
        let next = trie.insert(&path("links.next"));
        let mut captures = Captures::default();
        trie.read(r#"{"links":{"next":"u"},"result":{"items":[{"a":1}, 2 ]}}"#, &mut captures).unwrap();
        match &captures.records {
            RecordsList::Array(items) => {
                assert_eq!(items.iter().map(|r| r.get()).collect::<Vec<_>>(), ["{\"a\":1}", "2"])
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(captures.slots[next].map(RawValue::get), Some("\"u\""));
        trie.read(r#"{"result":{"items":{}}}"#, &mut captures).unwrap();
        assert!(matches!(captures.records, RecordsList::NotArray("an object")));
        trie.read(r#"{"result":[]}"#, &mut captures).unwrap();
        assert!(matches!(captures.records, RecordsList::Missing));

        let mut whole = PathTrie::new();
        whole.insert_records(&FieldPath(vec![]));
        whole.read("[1, 2]", &mut captures).unwrap();
        assert!(matches!(&captures.records, RecordsList::Array(items) if items.len() == 2));
        whole.read("{\"data\":[]}", &mut captures).unwrap();
        assert!(matches!(captures.records, RecordsList::NotArray("an object")));
    }

    #[test]
    fn malformed_and_trailing_text_is_a_serde_error() {
        let trie = PathTrie::new();
        let mut captures = Captures::default();
        assert!(trie.read("{\"a\":1} x", &mut captures).is_err());
        assert!(trie.read("{\"a\":", &mut captures).is_err());
    }

    /// Keys that need escaping in JSON, and ones that do not.
    fn key() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "id", "a\"b", "back\\slash", "new\nline", "é", "tab\t"])
            .prop_map(str::to_owned)
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[a-z\"\\\\]{0,5}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map(key(), inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// `document` with `placed` at `keys`, objects made (or replaced) on the way.
    fn place(document: &mut Value, keys: &[String], placed: Value) {
        if !document.is_object() {
            *document = json!({});
        }
        let map = document.as_object_mut().expect("object");
        match keys {
            [last] => {
                map.insert(last.clone(), placed);
            }
            [first, rest @ ..] => place(map.entry(first.clone()).or_insert(Value::Null), rest, placed),
            [] => unreachable!("paths are non-empty"),
        }
    }

    fn lookup<'v>(document: &'v Value, keys: &[String]) -> Option<&'v Value> {
        keys.iter().try_fold(document, |at, key| at.as_object()?.get(key))
    }

    proptest! {
        #[test]
        fn lookup_finds_exactly_the_value_placed_at_a_random_path(
            mut document in value(),
            keys in prop::collection::vec(key(), 1..5),
            other in prop::collection::vec(key(), 1..5),
            placed in value(),
        ) {
            let (a, b) = (FieldPath(keys.clone()), FieldPath(other.clone()));
            prop_assume!(a == b || !(a.within(&b) || b.within(&a)), "a profile's paths never overlap");
            place(&mut document, &keys, placed.clone());
            let text = serde_json::to_string(&document).unwrap();
            let mut trie = PathTrie::new();
            let here = trie.insert(&FieldPath(keys.clone()));
            let there = trie.insert(&FieldPath(other.clone()));
            let mut captures = Captures::default();
            trie.read(&text, &mut captures).unwrap();
            let found: Value = serde_json::from_str(captures.slots[here].expect("placed").get()).unwrap();
            prop_assert_eq!(found, placed);
            let expected = lookup(&document, &other);
            let found_other = captures.slots[there].map(|raw| serde_json::from_str::<Value>(raw.get()).unwrap());
            prop_assert_eq!(found_other.as_ref(), expected);
        }
    }
}
