//! The shape checks every section validator starts with: a statement or a block, how many
//! values, no keyword twice. Each error names the place and the keyword.

use std::collections::BTreeMap;

use super::syntax::{Item, Span, Word};
use super::ConfigError;

fn err(span: &Span, message: impl Into<String>) -> ConfigError {
    ConfigError::syntax(span, message)
}

/// The values of a statement (`keyword values...;`); an error for a block.
pub fn statement(item: &Item) -> Result<&[Word], ConfigError> {
    if item.body.is_some() {
        return Err(err(
            item.span(),
            format!("'{}' takes a value, not a block", item.keyword()),
        ));
    }
    Ok(item.args())
}

/// The one value of a statement (`keyword value;`).
pub fn one_arg(item: &Item) -> Result<&Word, ConfigError> {
    match statement(item)? {
        [w] => Ok(w),
        [] => Err(err(
            item.span(),
            format!("'{}' needs a value", item.keyword()),
        )),
        [_, extra, ..] => Err(err(
            &extra.span,
            format!(
                "'{}' takes one value; '{}' is one too many",
                item.keyword(),
                extra.text
            ),
        )),
    }
}

/// A flag-style option: `allow-two-primaries;` means yes, or `allow-two-primaries no;`.
pub fn flag(item: &Item) -> Result<bool, ConfigError> {
    match statement(item)? {
        [] => Ok(true),
        [w] => super::parse_bool(&w.text).map_err(|m| err(&w.span, m)),
        [_, extra, ..] => Err(err(
            &extra.span,
            format!("'{}' takes one value", item.keyword()),
        )),
    }
}

/// The items of a block (`keyword NAME... { items }`) with exactly `args` names.
pub fn section(item: &Item, args: usize) -> Result<&[Item], ConfigError> {
    let Some(body) = &item.body else {
        return Err(err(
            item.span(),
            format!("'{}' needs a {{ ... }} block", item.keyword()),
        ));
    };
    if item.args().len() != args {
        let what = match args {
            0 => "no name".to_string(),
            1 => "one name".to_string(),
            n => format!("{n} names"),
        };
        return Err(err(
            item.span(),
            format!("'{}' takes {what} before its block", item.keyword()),
        ));
    }
    Ok(body)
}

/// Rejects a keyword given twice in one block (a block and a statement of the same keyword,
/// like `disk { }` and `disk /dev/sda;`, are different things), except the `repeatable` ones.
pub fn no_duplicates_except(
    items: &[Item],
    what: &str,
    repeatable: &[&str],
) -> Result<(), ConfigError> {
    let mut seen: BTreeMap<(&str, bool), &Span> = BTreeMap::new();
    for item in items {
        let key = item.keyword();
        if repeatable.contains(&key) {
            continue;
        }
        if let Some(first) = seen.insert((key, item.body.is_some()), item.span()) {
            return Err(err(
                item.span(),
                format!("duplicate '{key}' in {what} (first given at {first})"),
            ));
        }
    }
    Ok(())
}

/// Rejects any keyword given twice in one block.
pub fn no_duplicates(items: &[Item], what: &str) -> Result<(), ConfigError> {
    no_duplicates_except(items, what, &[])
}
