//! Basic CloudWatch metric math: + - * / over time series and scalars, parentheses, unary
//! minus, and the functions SUM, AVG, MIN, MAX (over a list of series: per timestamp; over one
//! series: a scalar), ABS and FILL(series, value). A series and a series combine where both
//! have a value; division by zero yields no value, as in CloudWatch.

use std::collections::BTreeMap;

pub type Series = BTreeMap<i64, f64>;

#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Scalar(f64),
    Series(Series),
    List(Vec<Series>),
}

/// What an expression can name: the other queries' series, and the period grid FILL uses.
pub struct Env<'a> {
    pub series: &'a dyn Fn(&str) -> Option<Series>,
    pub grid: &'a [i64],
}

pub fn evaluate(expr: &str, env: &Env) -> Result<Val, String> {
    let tokens = lex(expr)?;
    let mut p = Parser { tokens, at: 0, env };
    let v = p.expr()?;
    if p.at != p.tokens.len() {
        return Err(format!("unexpected {:?} in the expression", p.tokens[p.at]));
    }
    Ok(v)
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Name(String),
    Op(char),
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() || c == '.' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            out.push(Tok::Num(text.parse().map_err(|_| format!("bad number {text:?}"))?));
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Tok::Name(chars[start..i].iter().collect()));
        } else if "+-*/(),[]".contains(c) {
            out.push(Tok::Op(c));
            i += 1;
        } else {
            return Err(format!("unexpected character {c:?}"));
        }
    }
    Ok(out)
}

struct Parser<'a> {
    tokens: Vec<Tok>,
    at: usize,
    env: &'a Env<'a>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.at)
    }

    fn eat(&mut self, op: char) -> bool {
        if self.peek() == Some(&Tok::Op(op)) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, op: char) -> Result<(), String> {
        if self.eat(op) {
            Ok(())
        } else {
            Err(format!("expected '{op}'"))
        }
    }

    fn expr(&mut self) -> Result<Val, String> {
        let mut v = self.term()?;
        loop {
            if self.eat('+') {
                v = binary(v, self.term()?, |a, b| Some(a + b))?;
            } else if self.eat('-') {
                v = binary(v, self.term()?, |a, b| Some(a - b))?;
            } else {
                return Ok(v);
            }
        }
    }

    fn term(&mut self) -> Result<Val, String> {
        let mut v = self.factor()?;
        loop {
            if self.eat('*') {
                v = binary(v, self.factor()?, |a, b| Some(a * b))?;
            } else if self.eat('/') {
                v = binary(v, self.factor()?, |a, b| (b != 0.0).then(|| a / b))?;
            } else {
                return Ok(v);
            }
        }
    }

    fn factor(&mut self) -> Result<Val, String> {
        if self.eat('-') {
            return binary(Val::Scalar(0.0), self.factor()?, |a, b| Some(a - b));
        }
        if self.eat('(') {
            let v = self.expr()?;
            self.expect(')')?;
            return Ok(v);
        }
        if self.eat('[') {
            let mut list = Vec::new();
            loop {
                match self.expr()? {
                    Val::Series(s) => list.push(s),
                    Val::List(l) => list.extend(l),
                    Val::Scalar(_) => return Err("a list holds time series, not numbers".into()),
                }
                if !self.eat(',') {
                    break;
                }
            }
            self.expect(']')?;
            return Ok(Val::List(list));
        }
        match self.tokens.get(self.at).cloned() {
            Some(Tok::Num(n)) => {
                self.at += 1;
                Ok(Val::Scalar(n))
            }
            Some(Tok::Name(name)) => {
                self.at += 1;
                if self.eat('(') {
                    let mut args = vec![self.expr()?];
                    while self.eat(',') {
                        args.push(self.expr()?);
                    }
                    self.expect(')')?;
                    return call(&name, args, self.env.grid);
                }
                (self.env.series)(&name)
                    .map(Val::Series)
                    .ok_or_else(|| format!("{name} is not the Id of a query in this request"))
            }
            other => Err(format!("unexpected {other:?} in the expression")),
        }
    }
}

fn binary(a: Val, b: Val, f: impl Fn(f64, f64) -> Option<f64>) -> Result<Val, String> {
    Ok(match (a, b) {
        (Val::Scalar(x), Val::Scalar(y)) => f(x, y).map_or(Val::Series(Series::new()), Val::Scalar),
        (Val::Series(s), Val::Scalar(y)) => {
            Val::Series(s.into_iter().filter_map(|(t, x)| Some((t, f(x, y)?))).collect())
        }
        (Val::Scalar(x), Val::Series(s)) => {
            Val::Series(s.into_iter().filter_map(|(t, y)| Some((t, f(x, y)?))).collect())
        }
        (Val::Series(a), Val::Series(b)) => Val::Series(
            a.into_iter()
                .filter_map(|(t, x)| Some((t, f(x, *b.get(&t)?)?)))
                .collect(),
        ),
        _ => return Err("arithmetic applies to numbers and time series, not lists".into()),
    })
}

fn call(name: &str, mut args: Vec<Val>, grid: &[i64]) -> Result<Val, String> {
    let reduce = |f: fn(&[f64]) -> f64, arg: Val| -> Result<Val, String> {
        match arg {
            Val::List(list) => {
                let mut by_t: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
                for s in list {
                    for (t, v) in s {
                        by_t.entry(t).or_default().push(v);
                    }
                }
                Ok(Val::Series(by_t.into_iter().map(|(t, vs)| (t, f(&vs))).collect()))
            }
            Val::Series(s) if s.is_empty() => Ok(Val::Series(s)),
            Val::Series(s) => Ok(Val::Scalar(f(&s.into_values().collect::<Vec<_>>()))),
            Val::Scalar(x) => Ok(Val::Scalar(x)),
        }
    };
    let one = |args: &mut Vec<Val>| -> Result<Val, String> {
        if args.len() != 1 {
            return Err(format!("{name} takes one argument"));
        }
        Ok(args.remove(0))
    };
    match name {
        "SUM" => reduce(|v| v.iter().sum(), one(&mut args)?),
        "AVG" => reduce(|v| v.iter().sum::<f64>() / v.len() as f64, one(&mut args)?),
        "MIN" => reduce(|v| v.iter().copied().fold(f64::INFINITY, f64::min), one(&mut args)?),
        "MAX" => reduce(|v| v.iter().copied().fold(f64::NEG_INFINITY, f64::max), one(&mut args)?),
        "ABS" => binary(one(&mut args)?, Val::Scalar(0.0), |a, _| Some(a.abs())),
        "FILL" => match (args.first(), args.get(1), args.len()) {
            (Some(Val::Series(s)), Some(Val::Scalar(v)), 2) => {
                Ok(Val::Series(grid.iter().map(|t| (*t, *s.get(t).unwrap_or(v))).collect()))
            }
            _ => Err("FILL takes a time series and a number".into()),
        },
        other => Err(format!(
            "the function {other} is not supported by Gantry (SUM, AVG, MIN, MAX, ABS, FILL are)"
        )),
    }
}
