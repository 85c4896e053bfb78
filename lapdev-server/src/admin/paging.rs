//! Keyset pages by name, shared by the dashboard's lists
//! (`WorkspaceRpc/list_workspaces_page`, `AdminRpc/list_clusters_page`).
//!
//! A page starts after (or ends before) a name, so a row created or deleted
//! elsewhere never shifts another page's rows the way an offset would. The
//! database is asked for one row more than a page: that row says whether
//! there is another page in that direction, and is dropped.

use lapdev_db::PageCursor;
use serde::{Deserialize, Serialize};

/// The most rows one page holds (and the default).
pub const PAGE_SIZE: u64 = 50;

/// Which page of a name-ordered list to return.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRequest {
    /// The names after this one (the first page when neither is set).
    #[serde(default)]
    pub after: Option<String>,
    /// The names before this one (when `after` is not set).
    #[serde(default)]
    pub before: Option<String>,
    /// At most this many (default and cap [`PAGE_SIZE`]; 0 counts as 1).
    #[serde(default)]
    pub limit: Option<u64>,
}

impl PageRequest {
    /// Where the page starts.
    pub fn cursor(&self) -> PageCursor<'_> {
        match (&self.after, &self.before) {
            (Some(a), _) => PageCursor::After(a),
            (None, Some(b)) => PageCursor::Before(b),
            (None, None) => PageCursor::First,
        }
    }

    /// The page's size: `limit` within 1..=[`PAGE_SIZE`].
    pub fn limit(&self) -> u64 {
        self.limit.unwrap_or(PAGE_SIZE).clamp(1, PAGE_SIZE)
    }
}

/// One page cut from `rows` (at most `limit + 1` rows, in name order, as the
/// database returned them for `cursor`): the page's rows, the name to ask
/// `after` for the next page and the name to ask `before` for the previous
/// one (`None`: there is none).
pub fn cut<T>(
    mut rows: Vec<T>,
    cursor: PageCursor<'_>,
    limit: u64,
    name: impl Fn(&T) -> &str,
) -> (Vec<T>, Option<String>, Option<String>) {
    let more = rows.len() as u64 > limit;
    if more {
        match cursor {
            PageCursor::Before(_) => drop(rows.remove(0)),
            _ => rows.truncate(limit as usize),
        }
    }
    let (has_next, has_previous) = match cursor {
        PageCursor::First => (more, false),
        PageCursor::After(_) => (more, true),
        PageCursor::Before(_) => (true, more),
    };
    let next = has_next
        .then(|| rows.last().map(|r| name(r).to_owned()))
        .flatten();
    let previous = has_previous
        .then(|| rows.first().map(|r| name(r).to_owned()))
        .flatten();
    (rows, next, previous)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_page_knows_its_neighbours() {
        fn name(s: &String) -> &str {
            s
        }
        // The first page, with one more row than fits: there is a next page.
        let (rows, next, previous) = cut(names(&["a", "b", "c"]), PageCursor::First, 2, name);
        assert_eq!(
            (rows, next, previous),
            (names(&["a", "b"]), Some("b".into()), None)
        );
        // After a name, exactly a page: the last page, with a previous one.
        let (rows, next, previous) = cut(names(&["c", "d"]), PageCursor::After("b"), 2, name);
        assert_eq!(
            (rows, next, previous),
            (names(&["c", "d"]), None, Some("c".into()))
        );
        // Before a name with one extra row: the extra is the oldest, dropped.
        let (rows, next, previous) = cut(names(&["a", "b", "c"]), PageCursor::Before("d"), 2, name);
        assert_eq!(
            (rows, next, previous),
            (names(&["b", "c"]), Some("c".into()), Some("b".into()))
        );
        // An empty page past the end has no neighbours to name.
        let (rows, next, previous) = cut(Vec::<String>::new(), PageCursor::After("z"), 2, name);
        assert_eq!((rows, next, previous), (vec![], None, None));
        assert_eq!(
            PageRequest {
                limit: Some(0),
                ..Default::default()
            }
            .limit(),
            1
        );
        assert_eq!(
            PageRequest {
                limit: Some(999),
                ..Default::default()
            }
            .limit(),
            PAGE_SIZE
        );
    }
}
