//! Card scripts: the outcome suffix of a card id or token plus the misbehaviour modifiers
//! before it, e.g. `card_ab12_then502_lag20s_ok`.
//!
//! A card id (Pagar.me) or token (Appmax) is split on `_`. The **last** token picks the
//! [`Outcome`] (matched whole: `500once` is not `500`). Every earlier token that matches one
//! of the patterns below is a **modifier**; tokens that match none (`card`, `tok`, a hex id,
//! `c01`) are ignored. When a modifier is given twice the later one wins.
//!
//! | token | effect |
//! |---|---|
//! | `then<NNN>` (NNN 400–599) | the charge is made as the outcome says, but the request that made it is answered HTTP NNN |
//! | `thenreset` | the charge is made, then the answer breaks off: a `200` whose body stops half-way and the connection is dropped |
//! | `pending<N>` | the charge is created `pending` and settles to the outcome's decision N after it was made |
//! | `lag<N>` | lookups by code/reference do not see the charge until N after it was made |
//! | `lookuperr<N>` | lookups for the key answer HTTP 500 until N after the key's first charge request |
//! | `forget` | Pagar.me: the idempotency key and code are forgotten right after the charge, so the same key charges again |
//! | `duporder` | Appmax: from this charge request on, `POST /api/v3/order` with the reference creates a new order every time |
//!
//! `<N>` is a whole number of seconds (`20s`) or milliseconds (`500ms`).

use crate::outcome::{Outcome, KNOWN_SUFFIXES};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The modifier patterns, as named in messages and docs.
pub const MODIFIERS: [&str; 7] = [
    "then<NNN>",
    "thenreset",
    "pending<N>",
    "lag<N>",
    "lookuperr<N>",
    "forget",
    "duporder",
];

/// How the request that makes a charge is answered, when not normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Then {
    /// `then<NNN>`: HTTP NNN (400–599) with an error body, after the charge was made.
    Status(u16),
    /// `thenreset`: a `200` whose body breaks off half-way; the connection is dropped.
    Reset,
}

/// An outcome and its modifiers: what the simulator does with one card (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Script {
    /// The last `_`-token of the card.
    pub outcome: Outcome,
    /// `then<NNN>` / `thenreset`.
    pub then: Option<Then>,
    /// `pending<N>`: the charge is pending for this long, then takes the outcome's decision.
    pub pending: Option<Duration>,
    /// `lag<N>`: lookups do not see the charge until this long after it was made.
    pub lag: Option<Duration>,
    /// `lookuperr<N>`: lookups for the key answer 500 until this long after its first charge
    /// request.
    pub lookup_err: Option<Duration>,
    /// `forget` (Pagar.me): replays of the key are not recognised; every request charges.
    pub forget: bool,
    /// `duporder` (Appmax): the reference stops being unique for order creation.
    pub dup_order: bool,
}

/// One parsed modifier token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Modifier {
    Then(Then),
    Pending(Duration),
    Lag(Duration),
    LookupErr(Duration),
    Forget,
    DupOrder,
}

impl Modifier {
    /// The modifier a token spells, or `None` (the token is not a modifier).
    fn parse(token: &str) -> Option<Self> {
        if token == "thenreset" {
            return Some(Self::Then(Then::Reset));
        }
        if token == "forget" {
            return Some(Self::Forget);
        }
        if token == "duporder" {
            return Some(Self::DupOrder);
        }
        if let Some(code) = token.strip_prefix("then") {
            let status = (code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()))
                .then(|| code.parse::<u16>().ok())
                .flatten()
                .filter(|s| (400..=599).contains(s))?;
            return Some(Self::Then(Then::Status(status)));
        }
        if let Some(d) = token.strip_prefix("pending") {
            return duration(d).map(Self::Pending);
        }
        if let Some(d) = token.strip_prefix("lookuperr") {
            return duration(d).map(Self::LookupErr);
        }
        if let Some(d) = token.strip_prefix("lag") {
            return duration(d).map(Self::Lag);
        }
        None
    }

    /// Which slot of [`Script`] it fills (for "given twice").
    fn slot(self) -> &'static str {
        match self {
            Self::Then(_) => "then",
            Self::Pending(_) => "pending",
            Self::Lag(_) => "lag",
            Self::LookupErr(_) => "lookuperr",
            Self::Forget => "forget",
            Self::DupOrder => "duporder",
        }
    }
}

/// `20s` or `500ms` (whole numbers only).
fn duration(s: &str) -> Option<Duration> {
    let digits = |d: &str| {
        (!d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            .then(|| d.parse::<u64>().ok())
            .flatten()
    };
    if let Some(ms) = s.strip_suffix("ms") {
        return digits(ms).map(Duration::from_millis);
    }
    s.strip_suffix('s')
        .and_then(digits)
        .map(Duration::from_secs)
}

/// `20s`, or `500ms` when not whole seconds.
fn fmt_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// The outcome a name (a suffix without its underscore) picks.
fn outcome_named(name: &str) -> Option<Outcome> {
    KNOWN_SUFFIXES
        .iter()
        .find(|(suffix, _)| suffix.strip_prefix('_') == Some(name))
        .map(|&(_, o)| o)
}

/// `ok, decline, 500, …`
pub(crate) fn outcome_names() -> String {
    KNOWN_SUFFIXES
        .iter()
        .map(|(s, _)| s.trim_start_matches('_'))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Script {
    /// A script with no modifiers.
    pub fn plain(outcome: Outcome) -> Self {
        Self {
            outcome,
            then: None,
            pending: None,
            lag: None,
            lookup_err: None,
            forget: false,
            dup_order: false,
        }
    }

    /// The script of a card id or token: its last `_`-token is the outcome, earlier tokens
    /// that are modifiers apply, other tokens are ignored. `None` when the last token is no
    /// known outcome (or there is no `_`).
    pub fn from_card(card: &str) -> Option<Self> {
        let (head, last) = card.rsplit_once('_')?;
        let mut script = Self::plain(outcome_named(last)?);
        for modifier in head.split('_').filter_map(Modifier::parse) {
            script.apply(modifier);
        }
        Some(script)
    }

    fn apply(&mut self, m: Modifier) {
        match m {
            Modifier::Then(t) => self.then = Some(t),
            Modifier::Pending(d) => self.pending = Some(d),
            Modifier::Lag(d) => self.lag = Some(d),
            Modifier::LookupErr(d) => self.lookup_err = Some(d),
            Modifier::Forget => self.forget = true,
            Modifier::DupOrder => self.dup_order = true,
        }
    }

    /// The card suffix that selects this script, e.g. `_then502_lag20s_ok`.
    pub fn suffix(&self) -> String {
        format!("_{self}")
    }
}

/// Why a script written on its own does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScriptError {
    #[error(
        "unknown outcome {name:?}; known: {} (optionally preceded by modifiers: {})",
        outcome_names(),
        MODIFIERS.join(", ")
    )]
    UnknownOutcome { name: String },
    #[error(
        "unknown modifier {token:?} in {script:?}; known: {} (N is a whole number \
         followed by s or ms, NNN an HTTP status from 400 to 599)",
        MODIFIERS.join(", ")
    )]
    UnknownModifier { token: String, script: String },
    #[error("{script:?} gives {slot} twice")]
    Twice { script: String, slot: &'static str },
}

/// A script written on its own, as `--mix` takes it: `then502_lag20s_ok`, `ok`, `_decline`.
/// Strict, unlike [`Script::from_card`]: every token before the outcome must be a modifier,
/// and at most one of each kind. Case-insensitive.
impl FromStr for Script {
    type Err = ScriptError;

    fn from_str(s: &str) -> Result<Self, ScriptError> {
        let lower = s.trim().to_ascii_lowercase();
        let spec = lower.strip_prefix('_').unwrap_or(&lower);
        let (head, last) = match spec.rsplit_once('_') {
            Some((head, last)) => (Some(head), last),
            None => (None, spec),
        };
        let Some(outcome) = outcome_named(last) else {
            return Err(ScriptError::UnknownOutcome {
                name: last.to_owned(),
            });
        };
        let mut script = Self::plain(outcome);
        let mut seen = Vec::new();
        for token in head.into_iter().flat_map(|h| h.split('_')) {
            let Some(m) = Modifier::parse(token) else {
                return Err(ScriptError::UnknownModifier {
                    token: token.to_owned(),
                    script: s.to_owned(),
                });
            };
            if seen.contains(&m.slot()) {
                return Err(ScriptError::Twice {
                    script: s.to_owned(),
                    slot: m.slot(),
                });
            }
            seen.push(m.slot());
            script.apply(m);
        }
        Ok(script)
    }
}

/// The canonical spelling: modifiers in a fixed order, then the outcome, `_`-separated
/// (`then502_pending1s_lag20s_lookuperr500ms_forget_duporder_ok`). Parses back to itself.
impl fmt::Display for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.then {
            Some(Then::Status(s)) => write!(f, "then{s}_")?,
            Some(Then::Reset) => f.write_str("thenreset_")?,
            None => {}
        }
        for (name, d) in [
            ("pending", self.pending),
            ("lag", self.lag),
            ("lookuperr", self.lookup_err),
        ] {
            if let Some(d) = d {
                write!(f, "{name}{}_", fmt_duration(d))?;
            }
        }
        if self.forget {
            f.write_str("forget_")?;
        }
        if self.dup_order {
            f.write_str("duporder_")?;
        }
        f.write_str(self.outcome.suffix().trim_start_matches('_'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(c: &str) -> Script {
        Script::from_card(c).unwrap_or_else(|| panic!("{c} has no script"))
    }

    #[test]
    fn plain_cards_are_their_outcome() {
        assert_eq!(card("card_abc_ok"), Script::plain(Outcome::Ok));
        assert_eq!(card("tok_decline"), Script::plain(Outcome::Decline));
        for (suffix, outcome) in KNOWN_SUFFIXES {
            assert_eq!(card(&format!("x{suffix}")), Script::plain(outcome));
        }
    }

    #[test]
    fn suffix_is_matched_whole() {
        assert_eq!(card("card_500once").outcome, Outcome::Error500Once);
        assert_eq!(card("card_500").outcome, Outcome::Error500);
        assert_eq!(Script::from_card("card_okay"), None);
        assert_eq!(Script::from_card("card_x_ok_"), None);
        assert_eq!(Script::from_card("ok"), None, "needs an underscore");
        assert_eq!(
            Script::from_card("card_then502"),
            None,
            "a modifier is no outcome"
        );
    }

    #[test]
    fn modifiers_are_read_and_unknown_tokens_ignored() {
        let s = card("card_ab12_then502_lag20s_ok");
        assert_eq!(s.outcome, Outcome::Ok);
        assert_eq!(s.then, Some(Then::Status(502)));
        assert_eq!(s.lag, Some(Duration::from_secs(20)));
        assert_eq!(
            (s.pending, s.lookup_err, s.forget, s.dup_order),
            (None, None, false, false)
        );

        let s = card("tok_7f_pending30s_decline");
        assert_eq!(s.pending, Some(Duration::from_secs(30)));
        assert_eq!(s.outcome, Outcome::Decline);

        let s = card("card_c01_thenreset_lookuperr250ms_forget_duporder_slow");
        assert_eq!(s.then, Some(Then::Reset));
        assert_eq!(s.lookup_err, Some(Duration::from_millis(250)));
        assert!(s.forget && s.dup_order);
        assert_eq!(s.outcome, Outcome::Slow);

        // Not modifiers: ignored, like the hex id.
        for junk in [
            "card_c01_ok",
            "card_then20_ok",
            "card_then200_ok",
            "card_then5022_ok",
            "card_lag_ok",
            "card_lag5_ok",
            "card_lag5m_ok",
            "card_lagxs_ok",
            "card_pending-1s_ok",
            "card_Forget_ok",
            "card_deadbeef00112233_ok",
        ] {
            assert_eq!(card(junk), Script::plain(Outcome::Ok), "{junk}");
        }
        // The later of two wins.
        assert_eq!(
            card("card_lag1s_lag2s_ok").lag,
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn spec_parse_is_strict_and_round_trips() {
        let s: Script = "then502_lag20s_ok".parse().unwrap();
        assert_eq!(s, card("card_x_then502_lag20s_ok"));
        assert_eq!(s.to_string(), "then502_lag20s_ok");
        assert_eq!(s.suffix(), "_then502_lag20s_ok");
        assert_eq!("_OK".parse::<Script>().unwrap(), Script::plain(Outcome::Ok));
        assert_eq!(
            "lag500ms_then503_decline"
                .parse::<Script>()
                .unwrap()
                .to_string(),
            "then503_lag500ms_decline"
        );
        let all = "thenreset_pending1500ms_lag2s_lookuperr3s_forget_duporder_500once";
        assert_eq!(all.parse::<Script>().unwrap().to_string(), all);

        let e = "nope".parse::<Script>().unwrap_err().to_string();
        assert!(
            e.contains("\"nope\"") && e.contains("500once, 429") && e.contains("lag<N>"),
            "{e}"
        );
        let e = "lga20s_ok".parse::<Script>().unwrap_err().to_string();
        assert!(e.contains("unknown modifier \"lga20s\""), "{e}");
        assert!("lag1s_lag2s_ok"
            .parse::<Script>()
            .unwrap_err()
            .to_string()
            .contains("lag twice"));
        assert!("then200_ok".parse::<Script>().is_err());
        assert!("ok_".parse::<Script>().is_err());
    }
}
