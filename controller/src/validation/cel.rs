//! Whether a text is a CEL expression, as cel-go's parser (`cel.Env.Parse`, which Istio's
//! `validateTelemetryFilter` calls) decides it: CEL's lexical and expression grammar (the
//! language definition's `expr` down to literals, with cel-go's escape, literal-range and
//! reserved-word checks) and cel-go's default bounds (250 levels of nesting, 100,000 code
//! points). Nothing is built: the filters are not evaluated (see `validation::not_applied`),
//! so a recogniser is all validation needs, and it cannot be made to recurse without bound.

/// cel-go's `maxRecursionDepth` default.
const MAX_DEPTH: usize = 250;
/// cel-go's `expressionSizeCodePointLimit` default.
const MAX_CODE_POINTS: usize = 100_000;

/// cel-go's reserved identifiers, refused where an identifier is expected.
const RESERVED: &[&str] = &[
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
];

/// Checks `text`; the error says what is wrong and where (a character offset).
pub fn check_expression(text: &str) -> Result<(), String> {
    if text.chars().count() > MAX_CODE_POINTS {
        return Err(format!(
            "expression code point size exceeds limit: {MAX_CODE_POINTS}"
        ));
    }
    let tokens = lex(text)?;
    let mut parser = Parser {
        tokens: &tokens,
        at: 0,
        depth: 0,
    };
    parser.expr()?;
    match parser.peek() {
        Token::End => Ok(()),
        other => Err(format!("unexpected {other:?} at token {}", parser.at)),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    /// A number, string, bytes, `true`, `false` or `null`.
    Literal,
    Punct(&'static str),
    End,
}

const PUNCTS: &[&str] = &[
    "||", "&&", "==", "!=", "<=", ">=", "<", ">", "?", ":", "+", "-", "*", "/", "%", "!", ".", ",",
    "(", ")", "[", "]", "{", "}",
];

fn lex(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            i = number(&chars, i)?;
            tokens.push(Token::Literal);
        } else if c == '"' || c == '\'' {
            i = string(&chars, i, false)?;
            tokens.push(Token::Literal);
        } else if matches!(c, 'r' | 'R' | 'b' | 'B') && prefix_of_string(&chars, i) {
            let mut raw = false;
            while !matches!(chars[i], '"' | '\'') {
                raw |= matches!(chars[i], 'r' | 'R');
                i += 1;
            }
            i = string(&chars, i, raw)?;
            tokens.push(Token::Literal);
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            tokens.push(match word.as_str() {
                "true" | "false" | "null" => Token::Literal,
                "in" => Token::Punct("in"),
                _ => Token::Ident(word),
            });
        } else {
            let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
            let punct = PUNCTS
                .iter()
                .find(|p| rest.starts_with(**p))
                .ok_or_else(|| format!("unexpected character {c:?} at {i}"))?;
            tokens.push(Token::Punct(punct));
            i += punct.len();
        }
    }
    tokens.push(Token::End);
    Ok(tokens)
}

/// `r"..."`, `b'...'`, `br"..."`, `Rb'...'`: one or two prefix letters, then a quote.
fn prefix_of_string(chars: &[char], i: usize) -> bool {
    let letter = |c: Option<&char>| c.map(|c| c.to_ascii_lowercase());
    match (letter(chars.get(i)), chars.get(i + 1)) {
        (_, Some('"' | '\'')) => true,
        (Some(first), Some(second)) => {
            let second = second.to_ascii_lowercase();
            second != first
                && matches!(second, 'r' | 'b')
                && matches!(chars.get(i + 2), Some('"' | '\''))
        }
        _ => false,
    }
}

/// A number from `i`: decimal or hex integers (`u` for unsigned), or a double; returns the
/// index after it. Integers out of range are refused, as cel-go refuses them.
fn number(chars: &[char], mut i: usize) -> Result<usize, String> {
    let start = i;
    let take = |i: &mut usize, ok: fn(char) -> bool| {
        while *i < chars.len() && ok(chars[*i]) {
            *i += 1;
        }
    };
    if chars[i] == '0' && matches!(chars.get(i + 1), Some('x' | 'X')) {
        i += 2;
        let digits = i;
        take(&mut i, |c| c.is_ascii_hexdigit());
        let hex: String = chars[digits..i].iter().collect();
        let unsigned = matches!(chars.get(i), Some('u' | 'U'));
        let fits = if unsigned {
            u64::from_str_radix(&hex, 16).is_ok()
        } else {
            i64::from_str_radix(&hex, 16).is_ok()
        };
        if !fits {
            return Err(format!("invalid int literal at {start}"));
        }
        return Ok(i + usize::from(unsigned));
    }
    take(&mut i, |c| c.is_ascii_digit());
    let mut double = false;
    if chars.get(i) == Some(&'.') && chars.get(i + 1).is_some_and(char::is_ascii_digit) {
        double = true;
        i += 1;
        take(&mut i, |c| c.is_ascii_digit());
    }
    if matches!(chars.get(i), Some('e' | 'E')) {
        let mut j = i + 1;
        if matches!(chars.get(j), Some('+' | '-')) {
            j += 1;
        }
        if !chars.get(j).is_some_and(char::is_ascii_digit) {
            return Err(format!("invalid double literal at {start}"));
        }
        double = true;
        i = j;
        take(&mut i, |c| c.is_ascii_digit());
    }
    let text: String = chars[start..i].iter().collect();
    if double {
        return Ok(i);
    }
    let unsigned = matches!(chars.get(i), Some('u' | 'U'));
    // A leading `-` is an operator here; cel-go folds it into the literal, so i64::MIN's
    // magnitude is allowed.
    let fits = if unsigned {
        text.parse::<u64>().is_ok()
    } else {
        text.parse::<u64>()
            .is_ok_and(|v| v <= i64::MIN.unsigned_abs())
    };
    if !fits {
        return Err(format!("invalid int literal at {start}"));
    }
    Ok(i + usize::from(unsigned))
}

/// A quoted string from the quote at `i` (single, double, or tripled), with CEL's escapes
/// unless raw; returns the index after the closing quote.
fn string(chars: &[char], mut i: usize, raw: bool) -> Result<usize, String> {
    let start = i;
    let quote = chars[i];
    let triple = chars.get(i + 1) == Some(&quote) && chars.get(i + 2) == Some(&quote);
    i += if triple { 3 } else { 1 };
    loop {
        let Some(&c) = chars.get(i) else {
            return Err(format!("unterminated string at {start}"));
        };
        if c == quote
            && (!triple || (chars.get(i + 1) == Some(&quote) && chars.get(i + 2) == Some(&quote)))
        {
            return Ok(i + if triple { 3 } else { 1 });
        }
        if !triple && c == '\n' {
            return Err(format!("unterminated string at {start}"));
        }
        if c == '\\' && !raw {
            i = escape(chars, i)?;
        } else {
            i += 1;
        }
    }
}

/// One escape sequence at `i` (the backslash); returns the index after it.
fn escape(chars: &[char], i: usize) -> Result<usize, String> {
    let digits =
        |n: usize, ok: fn(&char) -> bool| (1..=n).all(|k| chars.get(i + 1 + k).is_some_and(ok));
    let next = match chars.get(i + 1) {
        Some('\\' | '"' | '\'' | '`' | '?' | 'a' | 'b' | 'f' | 'n' | 'r' | 't' | 'v') => i + 2,
        Some('x' | 'X') if digits(2, char::is_ascii_hexdigit) => i + 4,
        Some('u') if digits(4, char::is_ascii_hexdigit) => i + 6,
        Some('U') if digits(8, char::is_ascii_hexdigit) => i + 10,
        Some('0'..='3')
            if (1..=2).all(|k| {
                chars
                    .get(i + 1 + k)
                    .is_some_and(|c| ('0'..='7').contains(c))
            }) =>
        {
            i + 4
        }
        _ => return Err(format!("invalid escape sequence at {i}")),
    };
    Ok(next)
}

struct Parser<'t> {
    tokens: &'t [Token],
    at: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> &Token {
        &self.tokens[self.at.min(self.tokens.len() - 1)]
    }

    fn eat(&mut self, punct: &str) -> bool {
        let found = matches!(self.peek(), Token::Punct(p) if *p == punct);
        self.at += usize::from(found);
        found
    }

    fn expect(&mut self, punct: &str) -> Result<(), String> {
        if self.eat(punct) {
            Ok(())
        } else {
            Err(format!(
                "expected {punct:?}, found {:?} at token {}",
                self.peek(),
                self.at
            ))
        }
    }

    fn ident(&mut self) -> Result<(), String> {
        match self.peek().clone() {
            Token::Ident(name) if RESERVED.contains(&name.as_str()) => {
                Err(format!("reserved identifier: {name}"))
            }
            Token::Ident(_) => {
                self.at += 1;
                Ok(())
            }
            other => Err(format!(
                "expected an identifier, found {other:?} at token {}",
                self.at
            )),
        }
    }

    /// `expr = conditionalOr ["?" conditionalOr ":" expr]`, bounded in depth.
    fn expr(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("max recursion depth exceeded: {MAX_DEPTH}"));
        }
        self.binary(0)?;
        if self.eat("?") {
            self.binary(0)?;
            self.expect(":")?;
            self.expr()?;
        }
        self.depth -= 1;
        Ok(())
    }

    /// The binary levels, loosest first: `||`, `&&`, relations, additive, multiplicative.
    fn binary(&mut self, level: usize) -> Result<(), String> {
        const LEVELS: &[&[&str]] = &[
            &["||"],
            &["&&"],
            &["==", "!=", "<=", ">=", "<", ">", "in"],
            &["+", "-"],
            &["*", "/", "%"],
        ];
        let Some(operators) = LEVELS.get(level) else {
            return self.unary();
        };
        self.binary(level + 1)?;
        while operators.iter().any(|op| self.eat(op)) {
            self.binary(level + 1)?;
        }
        Ok(())
    }

    /// `unary = member | "!"+ member | "-"+ member`.
    fn unary(&mut self) -> Result<(), String> {
        while self.eat("!") || self.eat("-") {}
        self.member()
    }

    /// `member = primary {"." IDENT ["(" [exprList] ")"] | "[" expr "]"}`.
    fn member(&mut self) -> Result<(), String> {
        self.primary()?;
        loop {
            if self.eat(".") {
                self.ident()?;
                if self.eat("(") {
                    self.list(")")?;
                }
            } else if self.eat("[") {
                self.expr()?;
                self.expect("]")?;
            } else {
                return Ok(());
            }
        }
    }

    /// Literals, identifiers (global calls, message construction), `(expr)`, lists, maps.
    fn primary(&mut self) -> Result<(), String> {
        if *self.peek() == Token::Literal {
            self.at += 1;
            return Ok(());
        }
        if self.eat("(") {
            self.expr()?;
            return self.expect(")");
        }
        if self.eat("[") {
            return self.list("]");
        }
        if self.eat("{") {
            return self.entries(|p| p.expr());
        }
        self.eat(".");
        self.ident()?;
        while self.eat(".") {
            self.ident()?;
            if self.eat("(") {
                return self.list(")");
            }
        }
        if self.eat("(") {
            return self.list(")");
        }
        if self.eat("{") {
            return self.entries(Parser::ident);
        }
        Ok(())
    }

    /// `[expr {"," expr}] [","] close`.
    fn list(&mut self, close: &str) -> Result<(), String> {
        while !self.eat(close) {
            self.expr()?;
            if !self.eat(",") {
                return self.expect(close);
            }
        }
        Ok(())
    }

    /// `[key ":" expr {"," key ":" expr}] [","] "}"`, keys as `key` reads them.
    fn entries(&mut self, key: fn(&mut Self) -> Result<(), String>) -> Result<(), String> {
        while !self.eat("}") {
            key(self)?;
            self.expect(":")?;
            self.expr()?;
            if !self.eat(",") {
                return self.expect("}");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::check_expression;

    #[test]
    fn expressions_cel_go_parses() {
        for text in [
            "response.code >= 400",
            "connection.mtls && request.url_path.contains('v1beta3')",
            "response.code",
            "request.headers['x-user'] == \"admin\" || !(response.code in [200, 204])",
            "a ? b : c ? d : e",
            "size(request.path) > 10u && 1.5e3 < 2e-1 + .5 - -3",
            "{'a': 1, 'b': [1, 2,],}.a == 1",
            "google.protobuf.Duration{seconds: 1}",
            ".root.field",
            "r'\\d+' != b\"\\x00\\377\" && '''multi\nline''' != \"\\101\"",
            "0x7fffffffffffffff + 0xffffffffffffffffu + -9223372036854775808",
            "x // a comment",
        ] {
            assert_eq!(check_expression(text), Ok(()), "{text}");
        }
    }

    #[test]
    fn what_cel_go_refuses() {
        for (text, reason) in [
            (")++++", "expected"),
            ("", "expected"),
            ("a +", "expected"),
            ("a b", "unexpected"),
            ("(a", "expected \")\""),
            ("a ? b", "expected \":\""),
            ("'unterminated", "unterminated string"),
            ("'\\q'", "invalid escape"),
            ("99999999999999999999", "invalid int literal"),
            ("0x1ffffffffffffffffu", "invalid int literal"),
            ("1e", "invalid double literal"),
            ("if == 1", "reserved identifier"),
            ("a # b", "unexpected character"),
            ("a.1", "unexpected"),
        ] {
            let result = check_expression(text);
            assert!(
                result.as_ref().is_err_and(|e| e.contains(reason)),
                "{text}: {result:?}"
            );
        }
    }

    #[test]
    fn nesting_and_size_are_bounded_as_cel_go_bounds_them() {
        let nested = |depth: usize| format!("{}1{}", "(".repeat(depth), ")".repeat(depth));
        assert_eq!(check_expression(&nested(200)), Ok(()));
        assert!(check_expression(&nested(1_000)).is_err_and(|e| e.contains("max recursion")));
        let long = "a+".repeat(50_001) + "a";
        assert!(check_expression(&long).is_err_and(|e| e.contains("code point")));
    }
}
