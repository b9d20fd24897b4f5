//! The subscription tree: topic filters by level, so that a PUBLISH is
//! matched by walking its topic's levels once instead of testing every
//! filter. Shared subscriptions (`$share/{group}/{filter}`) hang on the node
//! of their filter, one member picked per message in turn.
//!
//! The tree knows clients only by id; the engine's core owns it under its
//! lock.

use std::sync::Arc;

/// The options a client subscribed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct SubOpts {
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
    pub sub_id: Option<u32>,
}

/// A filter as a client gave it: the filter proper and its share group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Filter<'a> {
    pub group: Option<&'a str>,
    pub filter: &'a str,
}

/// Parses and checks a topic filter, `$share/...` included.
pub(crate) fn parse_filter(raw: &str) -> Result<Filter<'_>, &'static str> {
    let (group, filter) = match raw.strip_prefix("$share/") {
        Some(rest) => {
            let Some((group, filter)) = rest.split_once('/') else {
                return Err("a shared subscription needs $share/{group}/{filter}");
            };
            if group.is_empty() || group.contains(['+', '#']) {
                return Err("a share group name may not be empty or hold wildcards");
            }
            (Some(group), filter)
        }
        None => (None, raw),
    };
    super::topics::valid_filter(filter)?;
    Ok(Filter { group, filter })
}

#[derive(Default)]
struct Node {
    children: super::FastMap<Box<str>, Node>,
    subs: Vec<(Arc<str>, SubOpts)>,
    groups: Vec<Group>,
}

struct Group {
    name: Box<str>,
    members: Vec<(Arc<str>, SubOpts)>,
    next: usize,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subs.is_empty() && self.groups.is_empty()
    }
}

/// One matching subscription.
#[derive(Debug, Clone)]
pub(crate) struct Hit {
    pub client: Arc<str>,
    pub opts: SubOpts,
    pub shared: bool,
}

#[derive(Default)]
pub(crate) struct Tree {
    root: Node,
    count: usize,
}

impl Tree {
    /// Adds or replaces `client`'s subscription on `filter`. Answers
    /// whether it existed before.
    pub(super) fn insert(&mut self, f: &Filter<'_>, client: &Arc<str>, opts: SubOpts) -> bool {
        let mut node = &mut self.root;
        for level in f.filter.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let list = match f.group {
            None => &mut node.subs,
            Some(g) => {
                let i = match node.groups.iter().position(|x| &*x.name == g) {
                    Some(i) => i,
                    None => {
                        node.groups.push(Group {
                            name: g.into(),
                            members: Vec::new(),
                            next: 0,
                        });
                        node.groups.len() - 1
                    }
                };
                &mut node.groups[i].members
            }
        };
        match list.iter_mut().find(|(c, _)| c == client) {
            Some(slot) => {
                slot.1 = opts;
                true
            }
            None => {
                list.push((client.clone(), opts));
                self.count += 1;
                false
            }
        }
    }

    /// Removes `client`'s subscription on `filter`; answers whether it
    /// existed.
    pub(super) fn remove(&mut self, f: &Filter<'_>, client: &str) -> bool {
        let levels: Vec<&str> = f.filter.split('/').collect();
        let removed = remove_at(&mut self.root, &levels, f.group, client);
        if removed {
            self.count -= 1;
        }
        removed
    }

    pub(super) fn len(&self) -> usize {
        self.count
    }

    /// Every subscription matching `topic`, shared groups answering with
    /// one member each (in turn, skipping members `skip` says are away).
    pub(super) fn matches(&mut self, topic: &str, out: &mut Vec<Hit>, skip: &dyn Fn(&str) -> bool) {
        let dollar = topic.starts_with('$');
        let mut levels = topic.split('/');
        let first = levels.next().unwrap_or("");
        walk(&mut self.root, first, levels, !dollar, out, skip);
    }
}

fn remove_at(node: &mut Node, levels: &[&str], group: Option<&str>, client: &str) -> bool {
    match levels.split_first() {
        None => match group {
            None => {
                let before = node.subs.len();
                node.subs.retain(|(c, _)| &**c != client);
                before != node.subs.len()
            }
            Some(g) => {
                let Some(i) = node.groups.iter().position(|x| &*x.name == g) else {
                    return false;
                };
                let members = &mut node.groups[i].members;
                let before = members.len();
                members.retain(|(c, _)| &**c != client);
                let removed = before != members.len();
                if members.is_empty() {
                    node.groups.remove(i);
                }
                removed
            }
        },
        Some((level, rest)) => {
            let Some(child) = node.children.get_mut(*level) else {
                return false;
            };
            let removed = remove_at(child, rest, group, client);
            if child.is_empty() {
                node.children.remove(*level);
            }
            removed
        }
    }
}

fn collect(node: &mut Node, out: &mut Vec<Hit>, skip: &dyn Fn(&str) -> bool) {
    for (c, o) in &node.subs {
        out.push(Hit {
            client: c.clone(),
            opts: *o,
            shared: false,
        });
    }
    for g in &mut node.groups {
        let n = g.members.len();
        // The next member that is connected, else the next one in turn.
        let mut pick = g.next % n;
        for k in 0..n {
            let i = (g.next + k) % n;
            if !skip(&g.members[i].0) {
                pick = i;
                break;
            }
        }
        g.next = pick + 1;
        let (c, o) = &g.members[pick];
        out.push(Hit {
            client: c.clone(),
            opts: *o,
            shared: true,
        });
    }
}

fn walk<'t>(
    node: &mut Node,
    level: &str,
    mut rest: impl Iterator<Item = &'t str> + Clone,
    wildcards: bool,
    out: &mut Vec<Hit>,
    skip: &dyn Fn(&str) -> bool,
) {
    if wildcards && let Some(hash) = node.children.get_mut("#") {
        collect(hash, out, skip);
    }
    let next = rest.next();
    if let Some(child) = node.children.get_mut(level) {
        match next {
            None => {
                collect(child, out, skip);
                // `a/#` also matches `a`.
                if let Some(hash) = child.children.get_mut("#") {
                    collect(hash, out, skip);
                }
            }
            Some(l) => walk(child, l, rest.clone(), true, out, skip),
        }
    }
    if wildcards && let Some(plus) = node.children.get_mut("+") {
        match next {
            None => {
                collect(plus, out, skip);
                if let Some(hash) = plus.children.get_mut("#") {
                    collect(hash, out, skip);
                }
            }
            Some(l) => walk(plus, l, rest, true, out, skip),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(qos: u8) -> SubOpts {
        SubOpts {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
            sub_id: None,
        }
    }

    fn hits(t: &mut Tree, topic: &str) -> Vec<String> {
        let mut out = Vec::new();
        t.matches(topic, &mut out, &|_| false);
        let mut v: Vec<String> = out.into_iter().map(|h| h.client.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn wildcards_match_as_the_spec_says() {
        let mut t = Tree::default();
        for (c, f) in [
            ("hash", "#"),
            ("a-hash", "a/#"),
            ("a-plus", "a/+"),
            ("plus-b", "+/b"),
            ("exact", "a/b"),
            ("sys", "$SYS/#"),
            ("plus-plus", "+/+"),
        ] {
            t.insert(&parse_filter(f).unwrap(), &Arc::from(c), opts(0));
        }
        assert_eq!(
            hits(&mut t, "a/b"),
            ["a-hash", "a-plus", "exact", "hash", "plus-b", "plus-plus"]
        );
        assert_eq!(hits(&mut t, "a"), ["a-hash", "hash"]);
        assert_eq!(hits(&mut t, "$SYS/x"), ["sys"]);
        assert_eq!(hits(&mut t, "/b"), ["hash", "plus-b", "plus-plus"]);
        assert!(t.remove(&parse_filter("a/#").unwrap(), "a-hash"));
        assert!(!t.remove(&parse_filter("a/#").unwrap(), "a-hash"));
        assert_eq!(hits(&mut t, "a"), ["hash"]);
        assert_eq!(t.len(), 6);
    }

    #[test]
    fn shared_groups_take_turns() {
        let mut t = Tree::default();
        for c in ["x", "y"] {
            t.insert(
                &parse_filter("$share/g/t/#").unwrap(),
                &Arc::from(c),
                opts(1),
            );
        }
        let a = hits(&mut t, "t/1");
        let b = hits(&mut t, "t/2");
        assert_eq!(a.len(), 1);
        assert_ne!(a, b);
    }

    #[test]
    fn bad_filters_are_refused() {
        for f in ["a/#/b", "a+", "", "$share/g", "$share/+/a", "a/b#"] {
            assert!(parse_filter(f).is_err(), "{f}");
        }
    }
}
