//! The crate against `drivers/event-golden.txt`: every canonical golden line is produced byte for
//! byte, both from a hand-written construction and from the line's own fields re-formatted.

#![allow(clippy::too_many_lines)] // one hand-written construction per golden line

use std::{fs, path::Path};

use vmtest_event_protocol::{
    is_valid_key, is_valid_value, CallResult, Event, EventLine, MutexKind, Op, Os, Outcome, Param,
    ParamValue, EVENT_NAMES, MAX_LINE, PREFIX,
};

/// The lines of the golden file's `[canonical]` section (comments and blank lines left out).
fn canonical_lines() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../event-golden.txt");
    let text = fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    let mut section = "";
    let mut lines = Vec::new();
    for line in text.lines() {
        if line.starts_with('[') && line.ends_with(']') {
            section = if line == "[canonical]" {
                "canonical"
            } else {
                "other"
            };
        } else if section == "canonical" && !line.is_empty() && !line.starts_with('#') {
            lines.push(line.to_owned());
        }
    }
    assert!(
        !lines.is_empty(),
        "no [canonical] lines in {}",
        path.display()
    );
    lines
}

const THREADS_ITERATIONS: [Param<'static>; 2] =
    [Param::int("threads", 3), Param::int("iterations", 500)];

/// The golden events, built by hand with the crate's API, in the file's order.
fn hand_built() -> Vec<(u64, Event<'static>)> {
    let sc = "kmutex_contention";
    let k = MutexKind::KMutex;
    vec![
        (
            1,
            Event::RunStart {
                driver: "wdk_mutex_tests",
                os: Some(Os::Windows),
                build: Some("0.1.0"),
            },
        ),
        (
            2,
            Event::ScenarioStart {
                sc,
                params: &THREADS_ITERATIONS,
            },
        ),
        (
            3,
            Event::Mutex {
                sc,
                m: "counter",
                k,
            },
        ),
        (
            4,
            Event::Acquire {
                sc,
                t: 0,
                m: "counter",
                k,
                irql: 0,
            },
        ),
        (
            5,
            Event::Acquired {
                sc,
                t: 0,
                m: "counter",
                k,
                irql: 0,
                depth: Some(1),
            },
        ),
        (
            6,
            Event::Release {
                sc,
                t: 0,
                m: "counter",
                k,
                irql: 0,
                depth: Some(1),
            },
        ),
        (
            7,
            Event::ThreadEnd {
                sc,
                t: 0,
                iterations: 500,
            },
        ),
        (
            8,
            Event::Counter {
                sc,
                m: "counter",
                value: 1500,
                expected: 1500,
            },
        ),
        (
            9,
            Event::ScenarioEnd {
                sc,
                outcome: Outcome::Done,
                msg: None,
            },
        ),
        (
            10,
            Event::Call {
                sc: "irql_errors",
                t: 0,
                op: Op::Lock,
                m: Some("fm"),
                k: Some(MutexKind::FastMutex),
                irql: 2,
                r: CallResult::IrqlTooHigh,
            },
        ),
        (
            11,
            Event::Call {
                sc: "grt_errors",
                t: 0,
                op: Op::GrtGet,
                m: None,
                k: None,
                irql: 0,
                r: CallResult::KeyNotFound,
            },
        ),
        (
            12,
            Event::ScenarioEnd {
                sc: "drop_safe_then_drop",
                outcome: Outcome::Skipped,
                msg: Some("not applicable: FastMutex guard at PASSIVE_LEVEL"),
            },
        ),
        (13, Event::RunEnd { scenarios: 2 }),
    ]
}

#[test]
fn hand_built_events_produce_the_golden_lines() {
    let golden = canonical_lines();
    let built = hand_built();
    assert_eq!(
        golden.len(),
        built.len(),
        "one construction per canonical golden line"
    );
    let mut line = EventLine::new();
    for (expected, (seq, event)) in golden.iter().zip(&built) {
        assert_eq!(line.format(*seq, event), Ok(expected.as_str()));
    }
}

#[test]
fn the_golden_lines_cover_every_event() {
    let golden = canonical_lines();
    for ev in EVENT_NAMES {
        let needle = format!(" ev={ev} ");
        assert!(
            golden.iter().any(|line| line.contains(&needle)),
            "no golden line for ev={ev}"
        );
    }
}

/// A golden line split into its parts by a parser independent of the crate.
struct Parsed<'a> {
    seq: u64,
    ev: &'a str,
    fields: Vec<(&'a str, &'a str)>,
    msg: Option<&'a str>,
}

fn parse(line: &str) -> Parsed<'_> {
    let body = line
        .strip_prefix(PREFIX)
        .expect("a canonical line starts with the prefix");
    let (body, msg) = match body.split_once(" msg=") {
        Some((body, msg)) => (body, Some(msg)),
        None => (body, None),
    };
    let mut fields: Vec<(&str, &str)> = body
        .split(' ')
        .map(|token| token.split_once('=').expect("key=value"))
        .collect();
    for (key, value) in &fields {
        assert!(is_valid_key(key), "key {key:?} in {line:?}");
        assert!(is_valid_value(value), "value {value:?} in {line:?}");
    }
    let (seq_key, seq) = fields.remove(0);
    let (ev_key, ev) = fields.remove(0);
    assert_eq!(
        (seq_key, ev_key),
        ("seq", "ev"),
        "seq first, ev second in {line:?}"
    );
    Parsed {
        seq: seq.parse().expect("numeric seq"),
        ev,
        fields,
        msg,
    }
}

/// Field access for building an event back from a parsed line; every field must be used.
struct Fields<'a> {
    fields: Vec<(&'a str, &'a str)>,
}

impl<'a> Fields<'a> {
    fn take(&mut self, key: &str) -> Option<&'a str> {
        let index = self.fields.iter().position(|(k, _)| *k == key)?;
        Some(self.fields.remove(index).1)
    }

    fn text(&mut self, key: &str) -> &'a str {
        self.take(key).unwrap_or_else(|| panic!("missing {key}"))
    }

    fn int<T: std::str::FromStr>(&mut self, key: &str) -> T {
        self.text(key)
            .parse()
            .unwrap_or_else(|_| panic!("{key} is not a number"))
    }

    fn kind(&mut self) -> MutexKind {
        MutexKind::from_name(self.text("k")).expect("a known k")
    }
}

fn rebuild<'a>(parsed: &Parsed<'a>, params: &'a [Param<'a>]) -> Event<'a> {
    let mut f = Fields {
        fields: parsed.fields.clone(),
    };
    let event = match parsed.ev {
        "run-start" => {
            assert_eq!(f.text("proto"), "1");
            Event::RunStart {
                driver: f.text("driver"),
                os: f
                    .take("os")
                    .map(|os| Os::from_name(os).expect("a known os")),
                build: f.take("build"),
            }
        }
        "scenario-start" => {
            let _ = f.text("params");
            Event::ScenarioStart {
                sc: f.text("sc"),
                params,
            }
        }
        "mutex" => Event::Mutex {
            sc: f.text("sc"),
            m: f.text("m"),
            k: f.kind(),
        },
        "acquire" => Event::Acquire {
            sc: f.text("sc"),
            t: f.int("t"),
            m: f.text("m"),
            k: f.kind(),
            irql: f.int("irql"),
        },
        "acquired" | "release" => {
            let (sc, t, m, k, irql) = (
                f.text("sc"),
                f.int("t"),
                f.text("m"),
                f.kind(),
                f.int("irql"),
            );
            let depth = f
                .take("depth")
                .map(|depth| depth.parse().expect("numeric depth"));
            if parsed.ev == "acquired" {
                Event::Acquired {
                    sc,
                    t,
                    m,
                    k,
                    irql,
                    depth,
                }
            } else {
                Event::Release {
                    sc,
                    t,
                    m,
                    k,
                    irql,
                    depth,
                }
            }
        }
        "call" => Event::Call {
            sc: f.text("sc"),
            t: f.int("t"),
            op: Op::from_name(f.text("op")).expect("a known op"),
            m: f.take("m"),
            k: f.take("k")
                .map(|k| MutexKind::from_name(k).expect("a known k")),
            irql: f.int("irql"),
            r: CallResult::from_name(f.text("r")).expect("a known r"),
        },
        "counter" => Event::Counter {
            sc: f.text("sc"),
            m: f.text("m"),
            value: f.int("value"),
            expected: f.int("expected"),
        },
        "thread-end" => Event::ThreadEnd {
            sc: f.text("sc"),
            t: f.int("t"),
            iterations: f.int("iterations"),
        },
        "scenario-end" => Event::ScenarioEnd {
            sc: f.text("sc"),
            outcome: Outcome::from_name(f.text("outcome")).expect("a known outcome"),
            msg: parsed.msg,
        },
        "run-end" => Event::RunEnd {
            scenarios: f.int("scenarios"),
        },
        other => panic!("unknown ev {other:?}"),
    };
    assert!(
        f.fields.is_empty(),
        "unused fields {:?} for ev={}",
        f.fields,
        parsed.ev
    );
    assert!(
        parsed.msg.is_none() || parsed.ev == "scenario-end",
        "msg only on scenario-end"
    );
    event
}

/// `params=threads:3,iterations:500` as the crate's parameters (`-` is none).
fn parse_params(parsed: &Parsed<'_>) -> Vec<Param<'static>> {
    let Some((_, params)) = parsed.fields.iter().find(|(key, _)| *key == "params") else {
        return Vec::new();
    };
    if *params == "-" {
        return Vec::new();
    }
    params
        .split(',')
        .map(|pair| {
            let (name, value) = pair.split_once(':').expect("name:value");
            let name: &'static str = Box::leak(name.to_owned().into_boxed_str());
            match value.parse() {
                Ok(number) => Param::int(name, number),
                Err(_) => Param {
                    name,
                    value: ParamValue::Text(Box::leak(value.to_owned().into_boxed_str())),
                },
            }
        })
        .collect()
}

#[test]
fn golden_lines_round_trip_through_the_crate() {
    let mut line = EventLine::new();
    for golden in canonical_lines() {
        let parsed = parse(&golden);
        let params = parse_params(&parsed);
        let event = rebuild(&parsed, &params);
        assert_eq!(line.format(parsed.seq, &event), Ok(golden.as_str()));
        assert!(golden.len() <= MAX_LINE);
    }
}

#[test]
fn hand_built_events_round_trip_too() {
    // The reverse direction: what the crate prints, parsed and rebuilt, is the same event.
    let mut line = EventLine::new();
    for (seq, event) in hand_built() {
        let text = line.format(seq, &event).unwrap().to_owned();
        let parsed = parse(&text);
        let params = parse_params(&parsed);
        assert_eq!(rebuild(&parsed, &params), event);
    }
}
