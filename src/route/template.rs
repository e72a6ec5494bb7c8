//! `{column}` templates: the routing key, message id, type and header values of a route.
//!
//! A template is literal text with placeholders naming a column of the outbox row:
//!
//! ```text
//! "{aggregate_type}.{event_type}"   ->  [Column(aggregate_type), Literal("."), Column(event_type)]
//! "{{literal}} braces"              ->  [Literal("{literal} braces")]
//! ```
//!
//! `{{` and `}}` stand for literal braces. Everything between `{` and the next `}` is the
//! column name, taken as is (no trimming, no case folding), because column names are
//! compared exactly with the table's columns when the relay starts. Parsing fails on an
//! unclosed `{`, an empty `{}`, a `{` inside a placeholder and a lone `}`, and the error
//! carries the byte offset of the offending brace.
//!
//! Rendering asks a lookup function for each placeholder's value; a `None` (a NULL or a
//! missing column) fails the render with [`MissingValue`] rather than producing an empty
//! string, because a routing key or message id silently missing a part would misroute or
//! break deduplication.

use std::borrow::Cow;
use std::fmt;

/// A parsed template. Cheap to render many times.
#[derive(Clone, PartialEq, Eq)]
pub struct Template {
    /// The text the template was parsed from, exactly as written in the config.
    source: String,
    /// Literal runs and placeholders in order. Adjacent literals are merged, so two
    /// `Literal` parts never follow each other.
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    /// Text copied to the output as is (escaped braces already unescaped).
    Literal(String),
    /// A placeholder: the column whose value replaces it.
    Column(String),
}

impl Template {
    /// Parses `source` into literals and `{column}` placeholders.
    ///
    /// # Errors
    ///
    /// [`TemplateError`] with the byte offset of an unclosed `{`, an empty `{}`, a `{`
    /// inside a placeholder, or a `}` that neither closes a placeholder nor is doubled.
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = source.char_indices().peekable();
        while let Some((offset, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|&(_, n)| n) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|&(_, n)| n) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => return Err(TemplateError::UnmatchedClose { offset }),
                '{' => {
                    let name_start = offset + 1;
                    let name_end = loop {
                        match chars.next() {
                            None => return Err(TemplateError::Unclosed { offset }),
                            Some((end, '}')) => break end,
                            Some((inner, '{')) => return Err(TemplateError::OpenInPlaceholder { offset: inner }),
                            Some(_) => {}
                        }
                    };
                    if name_end == name_start {
                        return Err(TemplateError::Empty { offset });
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Column(source[name_start..name_end].to_owned()));
                }
                other => literal.push(other),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template { source: source.to_owned(), parts })
    }

    /// A template without placeholders that renders to `text` exactly. Its
    /// [`source`](Template::source) has braces doubled, so it parses back to itself.
    pub fn literal(text: &str) -> Template {
        Template {
            source: text.replace('{', "{{").replace('}', "}}"),
            parts: if text.is_empty() { Vec::new() } else { vec![Part::Literal(text.to_owned())] },
        }
    }

    /// The placeholder names in order of appearance. A column used twice appears twice.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|part| match part {
            Part::Column(name) => Some(name.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// The text this template was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// True when the template has no placeholder, so it renders to the same text for
    /// every row (the empty template included).
    pub fn is_literal(&self) -> bool {
        self.columns().next().is_none()
    }

    /// Renders the template, asking `lookup` for the value of each placeholder's column.
    ///
    /// # Errors
    ///
    /// [`MissingValue`] naming the first column for which `lookup` returned `None` (the
    /// value is NULL or the column does not exist).
    pub fn render<'a>(&self, mut lookup: impl FnMut(&str) -> Option<Cow<'a, str>>) -> Result<String, MissingValue> {
        let mut out = String::with_capacity(self.source.len());
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Column(column) => match lookup(column) {
                    Some(value) => out.push_str(&value),
                    None => return Err(MissingValue { column: column.clone() }),
                },
            }
        }
        Ok(out)
    }
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Template").field(&self.source).finish()
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Why a template could not be parsed. Every variant carries the byte offset of the
/// offending brace in the template text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateError {
    /// A `{` with no `}` after it.
    Unclosed {
        /// Byte offset of the `{`.
        offset: usize,
    },
    /// `{}` with no column name.
    Empty {
        /// Byte offset of the `{`.
        offset: usize,
    },
    /// A `{` between a placeholder's `{` and its `}`.
    OpenInPlaceholder {
        /// Byte offset of the inner `{`.
        offset: usize,
    },
    /// A `}` that closes nothing and is not written `}}`.
    UnmatchedClose {
        /// Byte offset of the `}`.
        offset: usize,
    },
}

impl TemplateError {
    /// Byte offset of the brace that made the template invalid.
    pub fn offset(&self) -> usize {
        match *self {
            TemplateError::Unclosed { offset }
            | TemplateError::Empty { offset }
            | TemplateError::OpenInPlaceholder { offset }
            | TemplateError::UnmatchedClose { offset } => offset,
        }
    }
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            TemplateError::Unclosed { offset } => write!(
                f,
                "unclosed '{{' at byte {offset}: end the placeholder with '}}', or write '{{{{' for a literal '{{'"
            ),
            TemplateError::Empty { offset } => write!(
                f,
                "empty placeholder '{{}}' at byte {offset}: put a column name between the braces"
            ),
            TemplateError::OpenInPlaceholder { offset } => write!(
                f,
                "'{{' inside a placeholder at byte {offset}: close the placeholder first; a column name cannot contain braces"
            ),
            TemplateError::UnmatchedClose { offset } => write!(
                f,
                "unmatched '}}' at byte {offset}: write '}}}}' for a literal '}}'"
            ),
        }
    }
}

impl std::error::Error for TemplateError {}

/// A placeholder's column had no value: it is NULL in this row, or the row has no such
/// column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingValue {
    /// The column named by the placeholder.
    pub column: String,
}

impl fmt::Display for MissingValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "template column \"{}\" is NULL or missing in this row", self.column)
    }
}

impl std::error::Error for MissingValue {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn row<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl FnMut(&str) -> Option<Cow<'a, str>> {
        let map: HashMap<&str, &str> = pairs.iter().copied().collect();
        move |column| map.get(column).map(|v| Cow::Borrowed(*v))
    }

    #[test]
    fn parses_placeholders_and_literals() {
        let t = Template::parse("{aggregate_type}.{event_type}").unwrap();
        assert_eq!(t.columns().collect::<Vec<_>>(), ["aggregate_type", "event_type"]);
        assert_eq!(t.source(), "{aggregate_type}.{event_type}");
        assert!(!t.is_literal());
        let out = t.render(row(&[("aggregate_type", "wallet"), ("event_type", "Created")])).unwrap();
        assert_eq!(out, "wallet.Created");
    }

    #[test]
    fn doubled_braces_are_literal() {
        let t = Template::parse("{{x}} {id} }}{{").unwrap();
        assert_eq!(t.columns().collect::<Vec<_>>(), ["id"]);
        assert_eq!(t.render(row(&[("id", "7")])).unwrap(), "{x} 7 }{");
        let t = Template::parse("{{{id}}}").unwrap();
        assert_eq!(t.render(row(&[("id", "7")])).unwrap(), "{7}");
    }

    #[test]
    fn literal_and_empty_templates() {
        let t = Template::parse("wallet.events").unwrap();
        assert!(t.is_literal());
        assert_eq!(t.render(row(&[])).unwrap(), "wallet.events");
        let t = Template::parse("").unwrap();
        assert!(t.is_literal());
        assert_eq!(t.render(row(&[])).unwrap(), "");
    }

    #[test]
    fn literal_constructor_round_trips() {
        let t = Template::literal("a{b}");
        assert!(t.is_literal());
        assert_eq!(t.source(), "a{{b}}");
        assert_eq!(t.render(row(&[])).unwrap(), "a{b}");
        assert_eq!(Template::parse(t.source()).unwrap(), t);
        assert_eq!(Template::literal(""), Template::parse("").unwrap());
    }

    #[test]
    fn names_are_taken_verbatim() {
        let t = Template::parse("{ Id }{é.x}").unwrap();
        assert_eq!(t.columns().collect::<Vec<_>>(), [" Id ", "é.x"]);
    }

    #[test]
    fn repeated_columns_are_listed_each_time() {
        let t = Template::parse("{a}-{a}").unwrap();
        assert_eq!(t.columns().count(), 2);
        assert_eq!(t.render(row(&[("a", "x")])).unwrap(), "x-x");
    }

    #[test]
    fn unclosed_brace_reports_its_offset() {
        assert_eq!(Template::parse("ab{cd"), Err(TemplateError::Unclosed { offset: 2 }));
        assert_eq!(Template::parse("{"), Err(TemplateError::Unclosed { offset: 0 }));
    }

    #[test]
    fn empty_placeholder_is_an_error() {
        let err = Template::parse("x.{}").unwrap_err();
        assert_eq!(err, TemplateError::Empty { offset: 2 });
        assert_eq!(err.offset(), 2);
        assert!(err.to_string().contains("byte 2"), "{err}");
    }

    #[test]
    fn stray_close_is_an_error() {
        assert_eq!(Template::parse("a}b"), Err(TemplateError::UnmatchedClose { offset: 1 }));
        assert_eq!(Template::parse("{a}}"), Err(TemplateError::UnmatchedClose { offset: 3 }));
    }

    #[test]
    fn open_inside_placeholder_is_an_error() {
        assert_eq!(Template::parse("{a{b}"), Err(TemplateError::OpenInPlaceholder { offset: 2 }));
    }

    #[test]
    fn offsets_are_bytes_not_chars() {
        assert_eq!(Template::parse("é}"), Err(TemplateError::UnmatchedClose { offset: 2 }));
    }

    #[test]
    fn missing_value_names_the_column() {
        let t = Template::parse("{a}.{b}").unwrap();
        let err = t.render(row(&[("a", "x")])).unwrap_err();
        assert_eq!(err, MissingValue { column: "b".into() });
        assert!(err.to_string().contains("\"b\""));
    }

    #[test]
    fn owned_values_render() {
        let t = Template::parse("n={n}").unwrap();
        let out = t.render(|_| Some(Cow::Owned(42.to_string()))).unwrap();
        assert_eq!(out, "n=42");
    }

    #[test]
    fn debug_and_display_show_the_source() {
        let t = Template::parse("{id}").unwrap();
        assert_eq!(format!("{t:?}"), "Template(\"{id}\")");
        assert_eq!(t.to_string(), "{id}");
    }
}
