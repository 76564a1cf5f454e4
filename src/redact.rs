//! Redaction of captured bodies and headers: the values of sensitive fields
//! become `[REDACTED]`, everything else is copied byte for byte.
//!
//! A field is sensitive when its whole name equals one of the `Redactor`'s
//! names, ASCII case ignored: `password` and `PassWord`, not
//! `password_hint` (list it to redact it). Names are compared as a parser
//! reads them: JSON keys with their escapes decoded (`"pass\u0077ord"` is
//! `password`), form keys with `%XX` and `+` decoded.
//!
//! A body whose first byte past whitespace is `{` or `[` is JSON, read in
//! one pass by a small tokenizer; anything else is form data. Both are
//! written for a capture cut at any byte: the output of a cut input is
//! always a prefix of the output of the whole one, so a sensitive value
//! that began before the cut is redacted to the end and never leaks.
#![forbid(unsafe_code)]

/// Field names redacted by `Redactor::default()`.
pub const DEFAULT_FIELDS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "access_token",
    "refresh_token",
    "api_key",
    "apikey",
    "authorization",
    "client_secret",
    "private_key",
];

/// Headers always sensitive, besides the field names.
pub const SENSITIVE_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
];

/// The longest field name a `Redactor` takes: keys are compared in a
/// buffer of this size on the stack.
pub const MAX_NAME: usize = 64;

/// JSON nesting the tokenizer follows; a value nested deeper is redacted
/// whole, so the output stays JSON.
pub const MAX_DEPTH: usize = 128;

/// What replaces a JSON value.
const JSON_MARK: &[u8] = b"\"[REDACTED]\"";
/// What replaces a form value.
const FORM_MARK: &[u8] = b"[REDACTED]";

#[derive(Debug, thiserror::Error)]
pub enum RedactorError {
    #[error("sensitive field name {0:?} is longer than {MAX_NAME} bytes")]
    NameTooLong(String),
}

/// The sensitive field names, lower-cased.
pub struct Redactor {
    names: Vec<Box<[u8]>>,
}

impl Default for Redactor {
    /// `DEFAULT_FIELDS`.
    fn default() -> Redactor {
        Redactor::new(DEFAULT_FIELDS).expect("the defaults are short")
    }
}

impl Redactor {
    /// Exactly `names`; chain `DEFAULT_FIELDS` to add to the defaults.
    pub fn new<I, S>(names: I) -> Result<Redactor, RedactorError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let names = names
            .into_iter()
            .map(|n| {
                let n = n.as_ref();
                if n.len() > MAX_NAME {
                    return Err(RedactorError::NameTooLong(n.to_owned()));
                }
                Ok(n.to_ascii_lowercase().into_bytes().into_boxed_slice())
            })
            .collect::<Result<_, _>>()?;
        Ok(Redactor { names })
    }

    /// Appends `input` to `out` with every sensitive value redacted: JSON
    /// if its first byte past whitespace is `{` or `[`, else form data (see
    /// `redact_form`). In JSON the value of a sensitive member, at any
    /// depth, of any type, an object or array whole, becomes
    /// `"[REDACTED]"`. Input that is not JSON, from the first byte where it
    /// stops being JSON, is replaced by one `"[REDACTED]"`: what cannot be
    /// read cannot be cleared. Several values one after another (JSON
    /// lines) are read as such. Allocates nothing but the growth of `out`.
    pub fn redact_json(&self, input: &[u8], out: &mut Vec<u8>) {
        match input.iter().find(|b| !is_space(**b)) {
            Some(b'{' | b'[') => Json {
                input,
                pos: 0,
                out,
                objects: 0,
                depth: 0,
            }
            .run(self),
            _ => self.redact_form(input, out),
        }
    }

    /// Appends `input` to `out` as `application/x-www-form-urlencoded`
    /// (`a=1&password=x`, pairs split at `&` only) with the value of every
    /// sensitive key replaced by `[REDACTED]`. A key like `user[password]`
    /// is sensitive by its last bracketed part too.
    pub fn redact_form(&self, input: &[u8], out: &mut Vec<u8>) {
        for (i, pair) in input.split(|&b| b == b'&').enumerate() {
            if i > 0 {
                out.push(b'&');
            }
            match pair.iter().position(|&b| b == b'=') {
                Some(eq) if self.form_key(&pair[..eq]) => {
                    out.extend_from_slice(&pair[..=eq]);
                    out.extend_from_slice(FORM_MARK);
                }
                _ => out.extend_from_slice(pair),
            }
        }
    }

    /// Whether a header's value should not be recorded: one of
    /// `SENSITIVE_HEADERS` or of the field names, ASCII case ignored.
    pub fn is_sensitive_header(&self, name: &[u8]) -> bool {
        SENSITIVE_HEADERS
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
            || self.names.iter().any(|n| name.eq_ignore_ascii_case(n))
    }

    fn matches(&self, key: &Key) -> bool {
        key.get()
            .is_some_and(|k| self.names.iter().any(|n| **n == *k))
    }

    /// Decodes a form key and compares it whole, and its last `[…]` part
    /// if it ends with `]`.
    fn form_key(&self, raw: &[u8]) -> bool {
        let mut whole = Key::default();
        let mut part = None;
        let mut i = 0;
        while i < raw.len() {
            let b = match raw[i] {
                b'+' => b' ',
                b'%' => match raw
                    .get(i + 1..i + 3)
                    .and_then(|h| Some(hex(h[0])? << 4 | hex(h[1])?))
                {
                    Some(b) => {
                        i += 2;
                        b
                    }
                    None => b'%',
                },
                b => b,
            };
            i += 1;
            whole.push(b);
            match (b, &mut part) {
                (b'[', _) => part = Some(Key::default()),
                (_, Some(part)) => part.push(b),
                (_, None) => {}
            }
        }
        // `part` holds what followed the last `[`, the closing `]` included.
        let part = part
            .filter(|p| p.last == Some(b']') && !p.long)
            .map(|mut p| {
                p.len -= 1;
                p
            });
        self.matches(&whole) || part.is_some_and(|p| self.matches(&p))
    }
}

/// A key as it is read, lower-cased, in a fixed buffer: one byte more than
/// a name may have, for the `]` of a form key's part.
struct Key {
    buf: [u8; MAX_NAME + 1],
    len: usize,
    /// Longer than the buffer: matches nothing.
    long: bool,
    last: Option<u8>,
}

impl Default for Key {
    fn default() -> Key {
        Key {
            buf: [0; MAX_NAME + 1],
            len: 0,
            long: false,
            last: None,
        }
    }
}

impl Key {
    fn push(&mut self, b: u8) {
        self.last = Some(b);
        if self.len == self.buf.len() {
            self.long = true;
        } else {
            self.buf[self.len] = b.to_ascii_lowercase();
            self.len += 1;
        }
    }

    fn get(&self) -> Option<&[u8]> {
        (!self.long).then(|| &self.buf[..self.len])
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// What the JSON tokenizer expects next.
#[derive(Clone, Copy)]
enum Expect {
    Value,
    /// A member's key, or the `}` of an object.
    Key,
    /// The `:` after a key; `true` if the key is sensitive.
    Colon(bool),
    /// A `,` or a closing bracket after a value.
    After,
}

/// One pass over JSON: the input, how far it is read, and the open
/// objects and arrays (bit `i` of `objects` set when level `i` is an
/// object).
struct Json<'a> {
    input: &'a [u8],
    pos: usize,
    out: &'a mut Vec<u8>,
    objects: u128,
    depth: usize,
}

impl Json<'_> {
    fn run(mut self, r: &Redactor) {
        let mut expect = Expect::Value;
        loop {
            self.copy_while(is_space);
            let Some(&b) = self.input.get(self.pos) else {
                return;
            };
            expect = match (expect, b) {
                (Expect::Value, b'{' | b'[') if self.depth == MAX_DEPTH => {
                    self.redact_value();
                    Expect::After
                }
                (Expect::Value, b'{') => {
                    self.open(true);
                    Expect::Key
                }
                (Expect::Value, b'[') => {
                    self.open(false);
                    Expect::Value
                }
                // `[]`, and a trailing comma in an array.
                (Expect::Value, b']') if self.in_array() => {
                    self.close();
                    Expect::After
                }
                (Expect::Value, b'"') => {
                    self.copy_string();
                    Expect::After
                }
                (Expect::Value, b'}' | b']' | b',' | b':') => return self.give_up(),
                (Expect::Value, _) => {
                    let run = &self.input[self.pos..];
                    let run = &run[..run.iter().take_while(|&&b| is_scalar(b)).count()];
                    let valid = scalar_len(run);
                    self.copy(valid);
                    if valid < run.len() {
                        return self.give_up();
                    }
                    Expect::After
                }
                (Expect::Key, b'"') => Expect::Colon(self.key(r)),
                // `{}`, and a trailing comma in an object.
                (Expect::Key, b'}') => {
                    self.close();
                    Expect::After
                }
                (Expect::Colon(hit), b':') => {
                    self.copy(1);
                    if !hit {
                        Expect::Value
                    } else {
                        self.copy_while(is_space);
                        match self.input.get(self.pos) {
                            None => return,
                            Some(b'}' | b']' | b',' | b':') => return self.give_up(),
                            Some(_) => self.redact_value(),
                        }
                        Expect::After
                    }
                }
                (Expect::After, b',') if self.depth > 0 => {
                    self.copy(1);
                    if self.in_array() {
                        Expect::Value
                    } else {
                        Expect::Key
                    }
                }
                (Expect::After, b'}') if self.depth > 0 && !self.in_array() => {
                    self.close();
                    Expect::After
                }
                (Expect::After, b']') if self.in_array() => {
                    self.close();
                    Expect::After
                }
                // The next of several top-level values.
                (Expect::After, _) if self.depth == 0 => Expect::Value,
                _ => return self.give_up(),
            };
        }
    }

    fn in_array(&self) -> bool {
        self.depth > 0 && self.objects & (1 << (self.depth - 1)) == 0
    }

    fn open(&mut self, object: bool) {
        if object {
            self.objects |= 1 << self.depth;
        } else {
            self.objects &= !(1 << self.depth);
        }
        self.depth += 1;
        self.copy(1);
    }

    fn close(&mut self) {
        self.depth -= 1;
        self.copy(1);
    }

    fn copy(&mut self, n: usize) {
        let end = (self.pos + n).min(self.input.len());
        self.out.extend_from_slice(&self.input[self.pos..end]);
        self.pos = end;
    }

    fn copy_while(&mut self, f: fn(u8) -> bool) {
        let n = self.input[self.pos..].iter().take_while(|&&b| f(b)).count();
        self.copy(n);
    }

    fn copy_string(&mut self) {
        self.copy(string_len(&self.input[self.pos..]));
    }

    /// Copies a key and says whether it is sensitive.
    fn key(&mut self, r: &Redactor) -> bool {
        let s = &self.input[self.pos..];
        let mut key = Key::default();
        let mut i = 1;
        let closed = loop {
            let Some(&b) = s.get(i) else { break false };
            i += 1;
            match b {
                b'"' => break true,
                b'\\' => {
                    let Some(&e) = s.get(i) else { break false };
                    i += 1;
                    match e {
                        b'u' => match s.get(i..i + 4).and_then(hex4) {
                            Some(cp) => {
                                i += 4;
                                push_code_point(&mut key, cp);
                            }
                            None => key.push(0xff),
                        },
                        b'b' => key.push(0x08),
                        b'f' => key.push(0x0c),
                        b'n' => key.push(b'\n'),
                        b'r' => key.push(b'\r'),
                        b't' => key.push(b'\t'),
                        e => key.push(e),
                    }
                }
                b => key.push(b),
            }
        };
        self.copy(i);
        closed && r.matches(&key)
    }

    /// Writes the mark for the value at `pos` and skips it.
    fn redact_value(&mut self) {
        self.out.extend_from_slice(JSON_MARK);
        self.pos += match self.input[self.pos] {
            b'"' => string_len(&self.input[self.pos..]),
            b'{' | b'[' => self.nested_len(),
            _ => self.input[self.pos..]
                .iter()
                .take_while(|&&b| is_scalar(b))
                .count(),
        };
    }

    /// From an opening bracket to the one that closes it, or to the end.
    fn nested_len(&self) -> usize {
        let start = self.pos;
        let mut i = start;
        let mut open = 0u64;
        while i < self.input.len() {
            match self.input[i] {
                b'"' => {
                    i += string_len(&self.input[i..]);
                    continue;
                }
                b'{' | b'[' => open += 1,
                b'}' | b']' => {
                    open -= 1;
                    if open == 0 {
                        return i + 1 - start;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        i - start
    }

    /// Not JSON from here: one mark stands for the rest.
    fn give_up(&mut self) {
        self.out.extend_from_slice(JSON_MARK);
        self.pos = self.input.len();
    }
}

/// A string from its opening `"` to the closing one, or to the end.
fn string_len(s: &[u8]) -> usize {
    let mut i = 1;
    while i < s.len() {
        match s[i] {
            b'"' => return i + 1,
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    s.len()
}

/// A byte that may continue a number, `true`, `false` or `null`: the end of
/// a value that is none of the others.
fn is_scalar(b: u8) -> bool {
    !is_space(b) && !matches!(b, b',' | b'}' | b']' | b'{' | b'[' | b'"' | b':')
}

/// How much of `run` is a literal or a number, or the start of one (cut
/// there). Numbers are checked for their characters only.
fn scalar_len(run: &[u8]) -> usize {
    for literal in [&b"true"[..], b"false", b"null"] {
        let same = run.iter().zip(literal).take_while(|(a, b)| a == b).count();
        if same > 0 {
            return same;
        }
    }
    run.iter()
        .take_while(|b| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
        .count()
}

fn hex4(h: &[u8]) -> Option<u32> {
    h.iter()
        .try_fold(0u32, |n, &b| Some(n << 4 | u32::from(hex(b)?)))
}

/// A `\uXXXX` in a key, as UTF-8; a lone surrogate as 0xff, which no name
/// (UTF-8) holds.
fn push_code_point(key: &mut Key, cp: u32) {
    match char::from_u32(cp) {
        Some(c) => {
            let mut utf8 = [0; 4];
            for &b in c.encode_utf8(&mut utf8).as_bytes() {
                key.push(b);
            }
        }
        None => key.push(0xff),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact(input: &str) -> String {
        let mut out = Vec::new();
        Redactor::default().redact_json(input.as_bytes(), &mut out);
        String::from_utf8(out).unwrap()
    }

    fn same(input: &str) {
        assert_eq!(redact(input), input);
    }

    #[test]
    fn nested_repeated_and_in_arrays() {
        assert_eq!(
            redact(
                r#"{"user":{"name":"ann","password":"hunter2"},"password":"x","items":[{"token":"t1"},{"id":2,"token":"t2"}],"deep":[[{"a":{"secret":"s"}}]]}"#
            ),
            r#"{"user":{"name":"ann","password":"[REDACTED]"},"password":"[REDACTED]","items":[{"token":"[REDACTED]"},{"id":2,"token":"[REDACTED]"}],"deep":[[{"a":{"secret":"[REDACTED]"}}]]}"#
        );
        // The same key twice in one object: both.
        assert_eq!(
            redact(r#"{"token":"a","token":"b"}"#),
            r#"{"token":"[REDACTED]","token":"[REDACTED]"}"#
        );
        // A top-level array of objects.
        assert_eq!(
            redact(r#"[{"apikey":1},{"apikey":2},"password"]"#),
            r#"[{"apikey":"[REDACTED]"},{"apikey":"[REDACTED]"},"password"]"#
        );
    }

    #[test]
    fn values_of_every_type_are_replaced_whole() {
        for v in [
            r#""str""#,
            r#""""#,
            "-12.5e+3",
            "0",
            "true",
            "false",
            "null",
            "{}",
            "[]",
            r#"{"a":[1,{"b":"}]\"{["}],"c":null}"#,
            r#"[[["x"]],{"y":{}}]"#,
        ] {
            let input = format!(r#"{{"a":1,"password": {v} ,"b":[{v}]}}"#);
            assert_eq!(
                redact(&input),
                format!(r#"{{"a":1,"password": "[REDACTED]" ,"b":[{v}]}}"#),
                "{v}"
            );
        }
    }

    #[test]
    fn escapes_in_keys_and_values() {
        // An escaped quote neither ends a string nor starts a key.
        same(r#"{"note":"she typed \"password\": \"x\"","pa\"ssword":"x"}"#);
        assert_eq!(
            redact(r#"{"password":"a\"b\\","next":"\\"}"#),
            r#"{"password":"[REDACTED]","next":"\\"}"#
        );
        // Keys are compared decoded, as the application reads them.
        assert_eq!(
            redact(r#"{"pass\u0077ord":"x","\u0050ASSWORD":"y","to\/ken":"z","token\u0000":"w"}"#),
            r#"{"pass\u0077ord":"[REDACTED]","\u0050ASSWORD":"[REDACTED]","to\/ken":"z","token\u0000":"w"}"#
        );
    }

    #[test]
    fn keys_are_compared_whole_and_case_blind() {
        assert_eq!(
            redact(r#"{"PassWord":1,"API_KEY":2,"Authorization":3}"#),
            r#"{"PassWord":"[REDACTED]","API_KEY":"[REDACTED]","Authorization":"[REDACTED]"}"#
        );
        // A name inside a longer key is not that name: list `password_hint`
        // to redact it.
        same(
            r#"{"password_hint":"pet","my_token":1,"tokens":[1],"secretary":"x","password ":"y"}"#,
        );
        let mine = Redactor::new(DEFAULT_FIELDS.iter().chain(&["password_hint"])).unwrap();
        let mut out = Vec::new();
        mine.redact_json(br#"{"password_hint":"pet"}"#, &mut out);
        assert_eq!(out, br#"{"password_hint":"[REDACTED]"}"#);
    }

    #[test]
    fn other_content_is_copied_byte_for_byte() {
        let doc = "  {\n  \"name\" : \"Zoë ☃\",\t\"n\": [1, 2.5e-3, true, false, null],\r\n  \"o\": { \"k\": \"v\\u00e9\\n\" }, \"e\": {}, \"a\": [ ]\n}\n";
        same(doc);
        same("{\"a\":1}\n{\"b\":[2]}\n");
        same(r#"{"a":"\xff unclosed"#);
        let mut out = Vec::new();
        Redactor::default().redact_json(b"{\"k\":\"\xff\xfe\x00\"}", &mut out);
        assert_eq!(out, b"{\"k\":\"\xff\xfe\x00\"}");
    }

    #[test]
    fn json_lines_each_redacted() {
        assert_eq!(
            redact("{\"password\":1}\n{\"password\":2}\n"),
            "{\"password\":\"[REDACTED]\"}\n{\"password\":\"[REDACTED]\"}\n"
        );
    }

    #[test]
    fn what_is_not_json_is_redacted_to_the_end() {
        assert_eq!(
            redact(r#"{"a" 1, "password": "x"}"#),
            r#"{"a" "[REDACTED]""#
        );
        assert_eq!(
            redact(r#"{"a":1 "password":"x"}"#),
            r#"{"a":1 "[REDACTED]""#
        );
        assert_eq!(
            redact(r#"{"password":,"b":1}"#),
            r#"{"password":"[REDACTED]""#
        );
        assert_eq!(redact(r#"[1,2]]"password""#), r#"[1,2]"[REDACTED]""#);
        assert_eq!(redact(r#"{password: "x"}"#), r#"{"[REDACTED]""#);
        assert_eq!(redact(r#"{"a": hunter2}"#), r#"{"a": "[REDACTED]""#);
        assert_eq!(redact(r#"{"a":truex,"b":1}"#), r#"{"a":true"[REDACTED]""#);
        assert_eq!(redact(r#"[nul"#), r#"[nul"#);
    }

    #[test]
    fn nesting_past_the_bound_is_redacted_whole() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        same(&deep(MAX_DEPTH));
        let input = format!(r#"{{"a":{},"b":1}}"#, deep(MAX_DEPTH + 10));
        let want = format!(
            r#"{{"a":{}"[REDACTED]"{},"b":1}}"#,
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        assert_eq!(redact(&input), want);
    }

    /// Secret values all hold `zq`, which nothing else in the sample does.
    const SAMPLE: &str = r#" {"user":{"name":"ann","password":"zq-hunter2","keys":[{"api_key":{"id":7,"v":"zq-k"}},{"token":["zq1","zq2"]}]},"pass\u0077ord":"zq\"x","refresh_token":-1.5e9,"client_secret":true,"note":"token","secret":[{"a":"zq"}],"n":null}"#;

    #[test]
    fn a_capture_cut_at_any_byte_leaks_nothing() {
        let full = redact(SAMPLE);
        assert!(!full.contains("zq"), "{full}");
        assert_eq!(full.matches("[REDACTED]").count(), 7);
        for cut in 0..=SAMPLE.len() {
            let mut out = Vec::new();
            Redactor::default().redact_json(&SAMPLE.as_bytes()[..cut], &mut out);
            assert!(
                full.as_bytes().starts_with(&out),
                "cut at {cut}: {}",
                String::from_utf8_lossy(&out)
            );
            assert!(!out.windows(1).any(|w| w == b"z"), "cut at {cut}");
        }
    }

    /// xorshift64: the same inputs on every run.
    struct Gen(u64);

    impl Gen {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }

        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[self.below(from.len())]
        }

        /// A JSON value, sensitive keys and escapes included.
        fn value(&mut self, depth: usize, out: &mut String) {
            const KEYS: &[&str] = &[
                r#""password""#,
                r#""a""#,
                r#""To\u006Ben""#,
                r#""x\"y""#,
                r#""secret""#,
            ];
            const LEAVES: &[&str] = &[
                "1",
                "-2.5e3",
                "true",
                "null",
                r#""s""#,
                r#""q\"\\""#,
                r#""""#,
            ];
            match self.below(if depth > 3 { 2 } else { 4 }) {
                0 | 1 => out.push_str(self.pick(LEAVES)),
                2 => {
                    out.push('{');
                    for i in 0..self.below(4) {
                        if i > 0 {
                            out.push(',');
                        }
                        out.push_str(self.pick(KEYS));
                        out.push_str(self.pick(&[":", " : "]));
                        self.value(depth + 1, out);
                    }
                    out.push('}');
                }
                _ => {
                    out.push('[');
                    for i in 0..self.below(4) {
                        if i > 0 {
                            out.push_str(self.pick(&[",", ", "]));
                        }
                        self.value(depth + 1, out);
                    }
                    out.push(']');
                }
            }
        }
    }

    fn cleared(v: &serde_json::Value) -> bool {
        use serde_json::Value;
        match v {
            Value::Object(m) => m.iter().all(|(k, v)| {
                let sensitive = DEFAULT_FIELDS.iter().any(|f| k.eq_ignore_ascii_case(f));
                if sensitive {
                    v == "[REDACTED]"
                } else {
                    cleared(v)
                }
            }),
            Value::Array(a) => a.iter().all(cleared),
            _ => true,
        }
    }

    #[test]
    fn a_cut_output_is_a_prefix_of_the_whole_for_any_input() {
        // JSON with sensitive members, half of it then broken by a stray
        // piece, and form data: no panic, and for every cut the property
        // the module promises.
        const PIECES: &[&str] = &[
            "{", "}", "]", ":", ",", "\"", "\\", "\\u00", " ", "x", "=", "&", "%70",
        ];
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        let r = Redactor::default();
        let mut redacted = 0;
        for n in 0..400 {
            let mut input = String::new();
            if n % 4 == 3 {
                for _ in 0..g.below(12) {
                    input.push_str(g.pick(&[
                        "password",
                        "a",
                        "%70assword",
                        "=",
                        "&",
                        "1",
                        "user[token]",
                    ]));
                }
            } else {
                input.push('{');
                input.push_str(g.pick(&[r#""token":"#, r#""a":"#]));
                g.value(0, &mut input);
                input.push('}');
            }
            if n % 2 == 1 {
                let at = g.below(input.len() + 1);
                input.insert_str(at, g.pick(PIECES));
            }
            let mut full = Vec::new();
            r.redact_json(input.as_bytes(), &mut full);
            redacted += usize::from(full.windows(10).any(|w| w == b"[REDACTED]"));
            if n % 4 == 0 {
                // Whole and valid: still JSON, every sensitive member cleared.
                let v: serde_json::Value =
                    serde_json::from_slice(&full).expect("JSON in, JSON out");
                assert!(cleared(&v), "{input} → {}", String::from_utf8_lossy(&full));
            }
            for cut in 0..=input.len() {
                let mut out = Vec::new();
                r.redact_json(&input.as_bytes()[..cut], &mut out);
                assert!(full.starts_with(&out), "{input:?} cut at {cut}");
            }
        }
        assert!(redacted > 200, "{redacted} of 400 had something to redact");
    }

    #[test]
    fn form_data() {
        assert_eq!(
            redact(
                "a=1&password=x&b=2&Token=y+z&user%5Bpassword%5D=1&user[api_key]=k&pass%77ord=w&password_hint=h&flag&=&password=&x=password"
            ),
            "a=1&password=[REDACTED]&b=2&Token=[REDACTED]&user%5Bpassword%5D=[REDACTED]&user[api_key]=[REDACTED]&pass%77ord=[REDACTED]&password_hint=h&flag&=&password=[REDACTED]&x=password"
        );
        // Not a key's last part, not the key.
        same("a[password]x=1&password[a]=2&password]=3&b%=4&%zz=5");
        // Cut anywhere: never more of the value than the mark.
        let form = "user=ann&password=zq-hunter2&api_key=zq&next=1";
        for cut in 0..=form.len() {
            let out = redact(&form[..cut]);
            assert!(!out.contains('z'), "cut at {cut}: {out}");
        }
        same("plain text, not a form");
        same("");
    }

    #[test]
    fn sensitive_headers() {
        let r = Redactor::default();
        for h in [
            "Authorization",
            "proxy-authorization",
            "COOKIE",
            "Set-Cookie",
            "x-api-key",
            "Token",
            "api_key",
        ] {
            assert!(r.is_sensitive_header(h.as_bytes()), "{h}");
        }
        for h in ["host", "x-api-keys", "content-type", "x-auth-token"] {
            assert!(!r.is_sensitive_header(h.as_bytes()), "{h}");
        }
    }

    #[test]
    fn names_are_bounded() {
        let long = "k".repeat(MAX_NAME + 1);
        assert!(matches!(
            Redactor::new([&long]),
            Err(RedactorError::NameTooLong(_))
        ));
        let max = "k".repeat(MAX_NAME);
        let r = Redactor::new([&max]).unwrap();
        let input = format!(r#"{{"{max}":1,"{long}":2}}"#);
        let mut out = Vec::new();
        r.redact_json(input.as_bytes(), &mut out);
        assert_eq!(
            out,
            format!(r#"{{"{max}":"[REDACTED]","{long}":2}}"#).as_bytes()
        );
    }
}
