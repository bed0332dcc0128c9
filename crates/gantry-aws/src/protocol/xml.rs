//! A minimal XML writer for responses: elements, text, escaping. Responses are the only XML
//! Gantry writes; it never parses XML.

#[derive(Default)]
pub struct XmlWriter {
    out: String,
}

impl XmlWriter {
    pub fn open_ns(&mut self, tag: &str, namespace: Option<&str>) {
        if self.out.is_empty() {
            self.out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        }
        match namespace {
            Some(ns) => {
                self.out.push_str(&format!("<{tag} xmlns=\""));
                escape_into(&mut self.out, ns);
                self.out.push_str("\">");
            }
            None => self.out.push_str(&format!("<{tag}>")),
        }
    }

    pub fn open(&mut self, tag: &str) {
        self.out.push('<');
        self.out.push_str(tag);
        self.out.push('>');
    }

    pub fn close(&mut self, tag: &str) {
        self.out.push_str("</");
        self.out.push_str(tag);
        self.out.push('>');
    }

    pub fn leaf(&mut self, tag: &str, text: &str) {
        self.open(tag);
        escape_into(&mut self.out, text);
        self.close(tag);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Characters XML 1.0 cannot carry at all are replaced, not emitted.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}
