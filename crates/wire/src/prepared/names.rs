//! Tool names for upstreams without namespaces or freeform tools.
//!
//! A Responses client may group functions in a `namespace` tool (Codex's
//! `multi_agent_v1`, `clock`, …) and declare `custom` (freeform) tools. Chat completions,
//! Messages and Gemini know only flat function names, under one rule every provider
//! accepts: 1 to 64 characters of `[A-Za-z0-9_-]`, starting with a letter or `_`. So a
//! namespaced tool is offered upstream under a flattened name, `namespace__name` when that
//! fits the rule and is free, else a sanitised, shortened form with a hash suffix; a
//! clash with any other tool's name is resolved by salting the hash. The table built from
//! the request is what maps a name back (a name is never parsed apart), and it is per
//! request: the same pair may get another name in another request, which is fine since
//! every request carries its whole tool list.

use std::borrow::Cow;
use std::collections::HashSet;

/// Longest tool name every provider accepts.
pub const MAX_NAME: usize = 64;

/// Most tools (namespaced ones counted one by one) a request may declare.
pub const MAX_TOOLS: usize = 1024;

/// What the client declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Function,
    /// A freeform tool: upstream, a function with one string argument, `input`.
    Custom,
}

/// One namespaced or freeform tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The name upstreams see.
    pub flat: String,
    pub namespace: Option<String>,
    /// The client's name.
    pub name: String,
    pub kind: Kind,
}

/// The request's namespaced and freeform tools. Plain functions have no entry: they keep
/// their names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolNames {
    entries: Vec<Entry>,
}

/// A declared tool, for [`ToolNames::build`].
#[derive(Debug, Clone, Copy)]
pub struct Declared<'a> {
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    pub kind: Kind,
}

impl ToolNames {
    /// The table for `tools` (in request order). Plain names are taken first, as they
    /// are; namespaced tools get the free names after them.
    pub fn build(tools: &[Declared<'_>]) -> ToolNames {
        let mut taken: HashSet<String> = HashSet::with_capacity(tools.len());
        let mut entries: Vec<Entry> = Vec::new();
        for t in tools.iter().filter(|t| ns(t.namespace).is_none()) {
            taken.insert(t.name.to_string());
            if t.kind == Kind::Custom && !entries.iter().any(|e| e.flat == t.name) {
                entries.push(Entry {
                    flat: t.name.to_string(),
                    namespace: None,
                    name: t.name.to_string(),
                    kind: Kind::Custom,
                });
            }
        }
        for t in tools {
            let Some(space) = ns(t.namespace) else {
                continue;
            };
            if entries
                .iter()
                .any(|e| e.namespace.as_deref() == Some(space) && e.name == t.name)
            {
                continue;
            }
            let flat = flatten(space, t.name, &taken);
            taken.insert(flat.clone());
            entries.push(Entry {
                flat,
                namespace: Some(space.to_string()),
                name: t.name.to_string(),
                kind: t.kind,
            });
        }
        ToolNames { entries }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The name upstreams see for a tool (a call or a `tool_choice` in the request). A
    /// namespaced pair the request does not declare gets its hashed form, which no
    /// declared tool has.
    pub fn upstream<'s>(&'s self, namespace: Option<&str>, name: &'s str) -> Cow<'s, str> {
        let Some(space) = ns(namespace) else {
            return Cow::Borrowed(name);
        };
        match self
            .entries
            .iter()
            .find(|e| e.namespace.as_deref() == Some(space) && e.name == name)
        {
            Some(e) => Cow::Borrowed(&e.flat),
            None => Cow::Owned(hashed(space, name, u32::MAX)),
        }
    }

    /// The client's tool behind an upstream name; `None` for a plain function.
    pub fn client(&self, flat: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.flat == flat)
    }
}

/// An empty namespace is none.
fn ns(namespace: Option<&str>) -> Option<&str> {
    namespace.filter(|n| !n.is_empty())
}

/// True when every provider accepts `name` as a tool name.
pub fn valid(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
}

/// `namespace__name` when valid and free, else the hashed form (salted until free).
fn flatten(namespace: &str, name: &str, taken: &HashSet<String>) -> String {
    let plain = format!("{namespace}__{name}");
    if valid(&plain) && !taken.contains(&plain) {
        return plain;
    }
    let mut salt = 0u32;
    loop {
        let h = hashed(namespace, name, salt);
        if !taken.contains(&h) {
            return h;
        }
        salt = salt.wrapping_add(1);
    }
}

/// The sanitised pair, cut to fit, with 8 hex digits of a hash of the pair and `salt`.
fn hashed(namespace: &str, name: &str, salt: u32) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325; // FNV-1a
    for b in namespace
        .bytes()
        .chain([0])
        .chain(name.bytes())
        .chain([0])
        .chain(salt.to_le_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let suffix = format!("_{:08x}", (h ^ (h >> 32)) as u32);
    let mut out = String::with_capacity(MAX_NAME);
    let sanitise = |s: &str, out: &mut String| {
        for c in s.chars() {
            out.push(if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            });
        }
    };
    sanitise(namespace, &mut out);
    out.push_str("__");
    sanitise(name, &mut out);
    if !out.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        out.insert(0, '_');
    }
    // ASCII only now: any byte index is a char boundary.
    out.truncate(MAX_NAME - suffix.len());
    out.push_str(&suffix);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d<'a>(namespace: Option<&'a str>, name: &'a str, kind: Kind) -> Declared<'a> {
        Declared {
            namespace,
            name,
            kind,
        }
    }

    #[test]
    fn codex_namespaces_flatten_readably() {
        let t = ToolNames::build(&[
            d(None, "exec_command", Kind::Function),
            d(Some("multi_agent_v1"), "close_agent", Kind::Function),
            d(Some("functions"), "exec", Kind::Custom),
            d(None, "apply", Kind::Custom),
        ]);
        assert_eq!(t.upstream(None, "exec_command"), "exec_command");
        assert_eq!(
            t.upstream(Some("multi_agent_v1"), "close_agent"),
            "multi_agent_v1__close_agent"
        );
        let e = t.client("functions__exec").unwrap();
        assert_eq!(
            (e.namespace.as_deref(), e.name.as_str(), e.kind),
            (Some("functions"), "exec", Kind::Custom)
        );
        assert_eq!(t.client("apply").unwrap().kind, Kind::Custom);
        assert!(t.client("exec_command").is_none());
        // An empty namespace is none.
        assert_eq!(t.upstream(Some(""), "exec_command"), "exec_command");
    }

    #[test]
    fn clashes_and_bad_characters_get_hashed_names() {
        let long = "n".repeat(80);
        let t = ToolNames::build(&[
            d(Some("a"), "b", Kind::Function),
            d(None, "a__b", Kind::Function),
            d(Some("name.space"), "tool/1", Kind::Function),
            d(Some(&long), "x", Kind::Function),
            d(Some("1ns"), "é", Kind::Custom),
        ]);
        let a = t.upstream(Some("a"), "b");
        assert_ne!(a, "a__b", "the plain tool keeps its name");
        assert!(valid(&a) && a.starts_with("a__b_"), "{a}");
        let s = t.upstream(Some("name.space"), "tool/1");
        assert!(s.starts_with("name_space__tool_1_") && valid(&s), "{s}");
        let l = t.upstream(Some(&long), "x");
        assert!(valid(&l) && l.len() == MAX_NAME, "{l}");
        let u = t.upstream(Some("1ns"), "é");
        assert!(valid(&u) && u.starts_with("_1ns___"), "{u}");
        // Undeclared pairs get the hashed form, unlike any declared name.
        let x = t.upstream(Some("a"), "c");
        assert!(valid(&x) && x != "a__c", "{x}");
    }

    /// Acceptance 3: for random tool lists (names from a small alphabet, so that clashes
    /// are common), every name upstreams see is valid for every provider (plain names
    /// aside: they are the client's), no two tools share one, and mapping back gives the
    /// declared tool: name → flattened → name is the identity.
    #[test]
    fn flattening_is_reversible_and_collision_free() {
        let mut rng = fastrand::Rng::with_seed(22);
        let alphabet = ['a', 'b', '_', '.', '-', 'é', '1', ' '];
        let word = |rng: &mut fastrand::Rng, max: usize| -> String {
            (0..rng.usize(0..=max))
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect()
        };
        for _ in 0..3000 {
            let n = rng.usize(1..24);
            let owned: Vec<(Option<String>, String, Kind)> = (0..n)
                .map(|_| {
                    let long = rng.u8(..) < 20;
                    let space = rng
                        .bool()
                        .then(|| word(&mut rng, if long { 90 } else { 4 }));
                    let name = word(&mut rng, if long { 90 } else { 5 });
                    let kind = if rng.bool() {
                        Kind::Custom
                    } else {
                        Kind::Function
                    };
                    (space, name, kind)
                })
                .collect();
            let decl: Vec<Declared<'_>> = owned
                .iter()
                .map(|(s, n, k)| d(s.as_deref(), n, *k))
                .collect();
            let t = ToolNames::build(&decl);
            // One upstream name per distinct declared tool.
            let mut seen: std::collections::HashMap<String, (Option<&str>, &str)> =
                std::collections::HashMap::new();
            for x in &decl {
                let space = x.namespace.filter(|s| !s.is_empty());
                let flat = t.upstream(space, x.name).into_owned();
                if let Some(prev) = seen.insert(flat.clone(), (space, x.name)) {
                    let plain_dup = prev.0.is_none() && space.is_none();
                    assert!(
                        plain_dup || prev == (space, x.name),
                        "{flat} for {prev:?} and {x:?}"
                    );
                }
                match space {
                    Some(s) => {
                        assert!(valid(&flat), "{flat:?}");
                        let e = t.client(&flat).expect("mapped back");
                        assert_eq!((e.namespace.as_deref(), e.name.as_str()), (Some(s), x.name));
                    }
                    None => {
                        assert_eq!(flat, x.name);
                        if let Some(e) = t.client(&flat) {
                            assert!(e.namespace.is_none() && e.kind == Kind::Custom);
                        }
                    }
                }
            }
        }
    }
}
