use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

use super::error::{index, join};

/// Maps each YAML path (`static_resources.clusters[0].name`) of a document to
/// the line and column where its value starts, so that errors found after
/// parsing can still point into the file.
#[derive(Debug, Default)]
pub struct SourceMap {
    positions: HashMap<String, (usize, usize)>,
}

impl SourceMap {
    /// Indexes `text`. A text that does not scan gives an empty map; the
    /// parser proper reports that error.
    pub fn new(text: &str) -> Self {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut builder, false).is_err() {
            return SourceMap::default();
        }
        SourceMap {
            positions: builder.positions,
        }
    }

    /// The (line, column) of `path`, both from 1; for a path below a scalar
    /// that the text does not spell out (a defaulted field), the nearest
    /// ancestor that it does.
    pub fn position(&self, path: &str) -> Option<(usize, usize)> {
        let mut path = path;
        loop {
            if let Some(p) = self.positions.get(path) {
                return Some(*p);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

enum Frame {
    Mapping { path: String, key: Option<String> },
    Sequence { path: String, next: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    positions: HashMap<String, (usize, usize)>,
}

impl Builder {
    /// The path of the node that starts now, or `None` when it is a mapping
    /// key (which only names the next node).
    fn node_path(&mut self, scalar: Option<&str>) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Mapping { path, key }) => match key.take() {
                Some(k) => Some(join(path, &k)),
                None => {
                    *key = Some(scalar.unwrap_or_default().to_string());
                    None
                }
            },
            Some(Frame::Sequence { path, next }) => {
                *next += 1;
                Some(index(path, *next - 1))
            }
        }
    }

    fn record(&mut self, path: &str, mark: Marker) {
        self.positions
            .entry(path.to_string())
            .or_insert((mark.line(), mark.col() + 1));
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => {
                if let Some(path) = self.node_path(Some(&value)) {
                    self.record(&path, mark);
                }
            }
            Event::Alias(_) => {
                if let Some(path) = self.node_path(None) {
                    self.record(&path, mark);
                }
            }
            Event::MappingStart(..) => {
                // A mapping used as a key has no path of its own; give it one
                // that nothing will look up.
                let path = self.node_path(None).unwrap_or_else(|| "\0".to_string());
                self.record(&path, mark);
                self.stack.push(Frame::Mapping { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.node_path(None).unwrap_or_else(|| "\0".to_string());
                self.record(&path, mark);
                self.stack.push(Frame::Sequence { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_point_at_their_values() {
        let text = "a:\n  b:\n    - name: x\n    - name: y\n      port: 3\nc: 1\n";
        let map = SourceMap::new(text);
        assert_eq!(map.position("a.b[1].name"), Some((4, 13)));
        assert_eq!(map.position("a.b[1].port"), Some((5, 13)));
        assert_eq!(map.position("c"), Some((6, 4)));
        // A defaulted field falls back to its parent.
        assert_eq!(map.position("a.b[0].port"), map.position("a.b[0]"));
    }
}
