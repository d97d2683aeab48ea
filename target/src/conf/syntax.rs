//! DRBD's configuration syntax as a raw tree: the first stage of reading tandem's config.
//!
//! The grammar is DRBD's: a file is a list of items; an item is one or more words (bare or
//! double-quoted) ended either by `;` (a statement) or by a `{ ... }` block (a section).
//! `#` starts a comment that runs to the end of the line. `include "GLOB";` splices in the
//! items of every file the glob matches (relative to the including file, sorted by name).
//!
//! Nothing here knows what a keyword means; that is the validators' job (`replicator::config`
//! for resources and the cluster, [`super::targetd`] for targetd's block). Every word keeps
//! its [`Span`] so that errors can say `file:line:column`. [`quote`] is the way back: it
//! writes a word so that this lexer reads it again unchanged.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::ConfigError;

/// Includes nest at most this deep; deeper means an include loop.
pub const MAX_INCLUDE_DEPTH: usize = 16;
/// A config file larger than this is refused before it is read whole.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Where a word starts: file, 1-based line and column (in characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// The file the word came from, as it was named (include paths resolved).
    pub file: Arc<str>,
    /// 1-based line number.
    pub line: u32,
    /// 1-based column, counted in characters.
    pub column: u32,
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// One word of an item: bare (`protocol`) or quoted (`"change me"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    /// The text, with quotes removed and escapes resolved.
    pub text: String,
    /// True when the word was written in double quotes.
    pub quoted: bool,
    /// Where the word starts.
    pub span: Span,
}

/// One item: `words... ;` or `words... { items }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The keyword and its arguments; never empty.
    pub words: Vec<Word>,
    /// The block's items for a section, `None` for a statement.
    pub body: Option<Vec<Item>>,
}

impl Item {
    /// The first word: the keyword.
    pub fn keyword(&self) -> &str {
        &self.words[0].text
    }
    /// Where the item starts.
    pub fn span(&self) -> &Span {
        &self.words[0].span
    }
    /// The words after the keyword.
    pub fn args(&self) -> &[Word] {
        &self.words[1..]
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(Word),
    Open(Span),
    Close(Span),
    Semicolon(Span),
}

struct Lexer<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    file: Arc<str>,
    line: u32,
    column: u32,
}

impl<'a> Lexer<'a> {
    fn new(text: &'a str, file: Arc<str>) -> Self {
        Lexer {
            chars: text.chars().peekable(),
            file,
            line: 1,
            column: 1,
        }
    }

    fn span(&self) -> Span {
        Span {
            file: self.file.clone(),
            line: self.line,
            column: self.column,
        }
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.chars.next()?;
        if c == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some(c)
    }

    fn next_token(&mut self) -> Result<Option<Token>, ConfigError> {
        loop {
            match self.chars.peek() {
                None => return Ok(None),
                Some(c) if c.is_whitespace() => {
                    self.bump();
                }
                Some('#') => {
                    while let Some(c) = self.bump() {
                        if c == '\n' {
                            break;
                        }
                    }
                }
                Some(_) => break,
            }
        }
        let span = self.span();
        let c = self.bump().expect("peeked a character");
        Ok(Some(match c {
            '{' => Token::Open(span),
            '}' => Token::Close(span),
            ';' => Token::Semicolon(span),
            '"' => {
                let mut text = String::new();
                loop {
                    match self.bump() {
                        None => {
                            return Err(ConfigError::syntax(&span, "unterminated quoted string"))
                        }
                        Some('"') => break,
                        Some('\\') => match self.bump() {
                            Some('n') => text.push('\n'),
                            Some('t') => text.push('\t'),
                            Some(c @ ('"' | '\\')) => text.push(c),
                            Some(c) => {
                                text.push('\\');
                                text.push(c);
                            }
                            None => {
                                return Err(ConfigError::syntax(
                                    &span,
                                    "unterminated quoted string",
                                ))
                            }
                        },
                        Some('\n') => {
                            return Err(ConfigError::syntax(
                                &span,
                                "quoted string runs past the end of the line; close it with '\"'",
                            ))
                        }
                        Some(c) => text.push(c),
                    }
                }
                Token::Word(Word {
                    text,
                    quoted: true,
                    span,
                })
            }
            c => {
                let mut text = String::from(c);
                while let Some(&c) = self.chars.peek() {
                    if c.is_whitespace() || matches!(c, '{' | '}' | ';' | '"' | '#') {
                        break;
                    }
                    text.push(c);
                    self.bump();
                }
                Token::Word(Word {
                    text,
                    quoted: false,
                    span,
                })
            }
        }))
    }
}

/// A word as it must be written: bare when the lexer reads it back as one word, else quoted.
pub fn quote(s: &str) -> String {
    let bare = !s.is_empty()
        && s.chars()
            .all(|c| !c.is_whitespace() && !matches!(c, '{' | '}' | ';' | '"' | '#' | '\\'));
    if bare {
        s.to_string()
    } else {
        always_quote(s)
    }
}

/// A double-quoted string with DRBD's escapes.
pub fn always_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Parses one file's text into items, resolving `include` relative to `path`'s folder.
pub fn parse_file(path: &Path) -> Result<Vec<Item>, ConfigError> {
    parse_file_at_depth(path, 0, None)
}

fn parse_file_at_depth(
    path: &Path,
    depth: usize,
    from: Option<&Span>,
) -> Result<Vec<Item>, ConfigError> {
    let name: Arc<str> = path.display().to_string().into();
    let io_error = |e: std::io::Error| match from {
        Some(span) => ConfigError::syntax(span, format!("cannot read included file {name}: {e}")),
        None => ConfigError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    };
    let meta = std::fs::metadata(path).map_err(io_error)?;
    if meta.len() > MAX_FILE_BYTES {
        let msg = format!("{name} is larger than {MAX_FILE_BYTES} bytes; that is no config file");
        return Err(match from {
            Some(span) => ConfigError::syntax(span, msg),
            None => ConfigError::Invalid(msg),
        });
    }
    let text = std::fs::read_to_string(path).map_err(io_error)?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse_text(&text, name, &dir, depth)
}

/// Parses text that came from the file `name`, with includes resolved relative to `dir`.
pub fn parse_text(
    text: &str,
    name: Arc<str>,
    dir: &Path,
    depth: usize,
) -> Result<Vec<Item>, ConfigError> {
    let mut lexer = Lexer::new(text, name);
    let mut tokens = Vec::new();
    while let Some(token) = lexer.next_token()? {
        tokens.push(token);
    }
    let mut pos = 0;
    let items = parse_items(&tokens, &mut pos, None, dir, depth)?;
    Ok(items)
}

fn parse_items(
    tokens: &[Token],
    pos: &mut usize,
    open: Option<&Span>,
    dir: &Path,
    depth: usize,
) -> Result<Vec<Item>, ConfigError> {
    let mut items = Vec::new();
    let mut words: Vec<Word> = Vec::new();
    loop {
        let Some(token) = tokens.get(*pos) else {
            if let Some(word) = words.first() {
                return Err(ConfigError::syntax(
                    &word.span,
                    format!("'{}' is not ended by ';' or a block", word.text),
                ));
            }
            if let Some(open) = open {
                return Err(ConfigError::syntax(open, "this '{' is never closed"));
            }
            return Ok(items);
        };
        *pos += 1;
        match token {
            Token::Word(w) => words.push(w.clone()),
            Token::Semicolon(span) => {
                if words.is_empty() {
                    return Err(ConfigError::syntax(
                        span,
                        "';' without a statement before it",
                    ));
                }
                let item = Item {
                    words: std::mem::take(&mut words),
                    body: None,
                };
                if item.keyword() == "include" && !item.words[0].quoted {
                    items.extend(include(&item, dir, depth)?);
                } else {
                    items.push(item);
                }
            }
            Token::Open(span) => {
                if words.is_empty() {
                    return Err(ConfigError::syntax(
                        span,
                        "'{' without a section name before it",
                    ));
                }
                let body = parse_items(tokens, pos, Some(span), dir, depth)?;
                items.push(Item {
                    words: std::mem::take(&mut words),
                    body: Some(body),
                });
                // DRBD tolerates a stray ';' after a closing brace.
                if let Some(Token::Semicolon(_)) = tokens.get(*pos) {
                    *pos += 1;
                }
            }
            Token::Close(span) => {
                if let Some(word) = words.first() {
                    return Err(ConfigError::syntax(
                        &word.span,
                        format!("'{}' is not ended by ';' before the '}}'", word.text),
                    ));
                }
                if open.is_none() {
                    return Err(ConfigError::syntax(span, "'}' without a matching '{'"));
                }
                return Ok(items);
            }
        }
    }
}

fn include(item: &Item, dir: &Path, depth: usize) -> Result<Vec<Item>, ConfigError> {
    let span = item.span();
    let [pattern] = item.args() else {
        return Err(ConfigError::syntax(
            span,
            "include takes one file name or glob",
        ));
    };
    if depth + 1 > MAX_INCLUDE_DEPTH {
        return Err(ConfigError::syntax(
            span,
            format!("includes nest deeper than {MAX_INCLUDE_DEPTH}; is a file including itself?"),
        ));
    }
    let full: PathBuf = if Path::new(&pattern.text).is_absolute() {
        PathBuf::from(&pattern.text)
    } else {
        dir.join(&pattern.text)
    };
    let full_text = full.to_string_lossy().into_owned();
    let paths = glob::glob(&full_text).map_err(|e| {
        ConfigError::syntax(
            &pattern.span,
            format!("bad include pattern {full_text:?}: {e}"),
        )
    })?;
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in paths {
        let file = entry.map_err(|e| {
            ConfigError::syntax(&pattern.span, format!("cannot read include match: {e}"))
        })?;
        files.push(file);
    }
    files.sort();
    // As in drbdadm, a glob that matches nothing is not an error (an empty drbd.d/ is normal).
    let mut items = Vec::new();
    for file in files {
        items.extend(parse_file_at_depth(&file, depth + 1, Some(&pattern.span))?);
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Item>, ConfigError> {
        parse_text(text, "t.conf".into(), Path::new("."), 0)
    }

    #[test]
    fn statements_sections_comments_and_quotes() {
        let items = parse(
            "global { usage-count no; } # trailing\nresource r0 {\n  net { shared-secret \"a b\\\"c\"; }\n}\n",
        )
        .unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].keyword(), "global");
        let r0 = &items[1];
        assert_eq!(r0.args()[0].text, "r0");
        let net = &r0.body.as_ref().unwrap()[0];
        let secret = &net.body.as_ref().unwrap()[0];
        assert_eq!(secret.args()[0].text, "a b\"c");
        assert!(secret.args()[0].quoted);
        assert_eq!(secret.span().line, 3);
        assert_eq!(secret.span().column, 9);
    }

    #[test]
    fn errors_name_the_place() {
        let err = parse("resource r0 {\n  net { protocol C }\n}").unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.conf:2:9: 'protocol' is not ended by ';' before the '}'"
        );
        let err = parse("resource r0 {\n").unwrap_err();
        assert_eq!(err.to_string(), "t.conf:1:13: this '{' is never closed");
        let err = parse("a \"b").unwrap_err();
        assert_eq!(err.to_string(), "t.conf:1:3: unterminated quoted string");
        let err = parse("}").unwrap_err();
        assert_eq!(err.to_string(), "t.conf:1:1: '}' without a matching '{'");
        let err = parse("x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.conf:1:1: 'x' is not ended by ';' or a block"
        );
    }

    #[test]
    fn include_globs_relative_and_detects_loops() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("main.conf"),
            "include \"d/*.res\";\nglobal { }\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/b.res"), "resource b { }").unwrap();
        std::fs::write(dir.path().join("d/a.res"), "resource a { }").unwrap();
        let items = parse_file(&dir.path().join("main.conf")).unwrap();
        let names: Vec<String> = items
            .iter()
            .map(|i| i.words.iter().map(|w| w.text.clone()).collect())
            .collect();
        assert_eq!(names, ["resourcea", "resourceb", "global"]);

        std::fs::write(dir.path().join("loop.conf"), "include \"loop.conf\";").unwrap();
        let err = parse_file(&dir.path().join("loop.conf")).unwrap_err();
        assert!(err.to_string().contains("nest deeper"), "{err}");
    }
}
