//! Scripted outcomes, chosen by the suffix of the card id (Pagar.me) or token (Appmax).

use std::fmt;

/// What the simulator does with a charge, by card suffix (the table in `docs/providers.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// `_ok`: paid / approved.
    Ok,
    /// `_decline`: failed / declined, message "Insufficient funds".
    Decline,
    /// `_500`: HTTP 500 every time, nothing charged.
    Error500,
    /// `_500once`: HTTP 500 on the first attempt for that key, then paid.
    Error500Once,
    /// `_429`: HTTP 429 with `Retry-After: 1` on the first attempt for that key, then paid.
    TooManyRequestsOnce,
    /// `_timeout`: records the charge as paid, then answers only after
    /// [`SimConfig::timeout_hang`](crate::SimConfig::timeout_hang).
    Timeout,
    /// `_slow`: paid, after [`SLOW_DELAY`](crate::SLOW_DELAY).
    Slow,
}

/// Every suffix the simulator understands, with its outcome.
pub const KNOWN_SUFFIXES: [(&str, Outcome); 7] = [
    ("_ok", Outcome::Ok),
    ("_decline", Outcome::Decline),
    ("_500", Outcome::Error500),
    ("_500once", Outcome::Error500Once),
    ("_429", Outcome::TooManyRequestsOnce),
    ("_timeout", Outcome::Timeout),
    ("_slow", Outcome::Slow),
];

impl Outcome {
    /// The outcome for a card id or token, by its last `_`-token; `None` for an unknown suffix
    /// (the modifiers before it are [`Script::from_card`](crate::Script::from_card)'s).
    /// (`card_500once` is [`Outcome::Error500Once`], not `_500`: suffixes are matched whole.)
    pub fn from_card(card: &str) -> Option<Self> {
        crate::Script::from_card(card).map(|s| s.outcome)
    }

    /// The suffix that selects this outcome.
    pub fn suffix(self) -> &'static str {
        KNOWN_SUFFIXES
            .iter()
            .find(|(_, o)| *o == self)
            .map(|(s, _)| *s)
            .unwrap_or_default()
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.suffix())
    }
}

/// The 400 message for a card whose suffix selects no outcome.
pub(crate) fn unknown_suffix_message(field: &str, card: &str) -> String {
    let known: Vec<&str> = KNOWN_SUFFIXES.iter().map(|(s, _)| *s).collect();
    format!(
        "provider simulator: {field} {card:?} has no known outcome suffix; use one of {}, \
         optionally preceded by modifier tokens ({}; N in s or ms), e.g. \
         card_1234_then502_lag20s_ok",
        known.join(", "),
        crate::script::MODIFIERS.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_match_whole() {
        assert_eq!(Outcome::from_card("card_abc_ok"), Some(Outcome::Ok));
        assert_eq!(Outcome::from_card("card_500"), Some(Outcome::Error500));
        assert_eq!(
            Outcome::from_card("card_500once"),
            Some(Outcome::Error500Once)
        );
        assert_eq!(
            Outcome::from_card("tok_429"),
            Some(Outcome::TooManyRequestsOnce)
        );
        assert_eq!(Outcome::from_card("card_okay"), None);
        assert_eq!(Outcome::from_card("card"), None);
        for (suffix, outcome) in KNOWN_SUFFIXES {
            assert_eq!(outcome.suffix(), suffix);
            assert_eq!(Outcome::from_card(&format!("x{suffix}")), Some(outcome));
        }
    }

    #[test]
    fn unknown_message_names_every_suffix() {
        let m = unknown_suffix_message("card_id", "card_zzz");
        for (suffix, _) in KNOWN_SUFFIXES {
            assert!(m.contains(suffix), "{m}");
        }
        for modifier in crate::script::MODIFIERS {
            assert!(m.contains(modifier), "{m}");
        }
    }
}
