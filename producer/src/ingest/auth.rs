//! API tokens: loaded from `WARREN_INGEST_TOKENS` / `WARREN_INGEST_TOKENS_FILE`, kept only
//! as SHA-256 digests, compared in constant time against every token.

use sha2::{Digest, Sha256};
use std::path::Path;
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// Why the token list could not be loaded. Messages never contain a token.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error(
        "warren ingest needs at least one API token: set WARREN_INGEST_TOKENS (comma-separated) \
         or WARREN_INGEST_TOKENS_FILE (a file with one token per line), or --tokens / --tokens-file"
    )]
    None,
    #[error("cannot read the tokens file {path} (WARREN_INGEST_TOKENS_FILE): {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// The accepted bearer tokens, as digests. `Debug` shows only how many there are.
#[derive(Clone)]
pub struct Tokens(Vec<[u8; 32]>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} tokens)", self.0.len())
    }
}

/// Which token a request used: a short digest prefix, safe to store and log. Idempotency
/// keys are scoped by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope(pub String);

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// Tokens from a comma-separated list and/or a file with one token per line (blank lines
    /// and lines starting with `#` are skipped; surrounding whitespace is trimmed). Both
    /// sources add up; none at all is an error.
    pub fn load(list: Option<&str>, file: Option<&Path>) -> Result<Self, TokensError> {
        let mut raw: Vec<String> = list
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
                path: path.to_owned(),
                source,
            })?;
            raw.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned),
            );
        }
        let mut digests: Vec<[u8; 32]> = raw.iter().map(|t| digest(t)).collect();
        digests.sort_unstable();
        digests.dedup();
        if digests.is_empty() {
            return Err(TokensError::None);
        }
        Ok(Self(digests))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The scope of `presented` if it is one of the tokens. Every token is compared (digest
    /// against digest, so neither the length nor the position of a token leaks through
    /// timing).
    pub fn check(&self, presented: &str) -> Option<Scope> {
        let d = digest(presented);
        let mut found = subtle::Choice::from(0);
        let mut index = 0u32;
        for (i, t) in self.0.iter().enumerate() {
            let eq = t.ct_eq(&d);
            index = u32::conditional_select(&index, &(i as u32), eq);
            found |= eq;
        }
        bool::from(found).then(|| scope_of(&self.0[index as usize]))
    }
}

fn scope_of(d: &[u8; 32]) -> Scope {
    Scope(d[..8].iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_from_list_and_file_and_checks() {
        let dir = std::env::temp_dir().join(format!("warren-tokens-{}", std::process::id()));
        std::fs::write(&dir, "# ops\n  file-token  \n\n").unwrap();
        let t = Tokens::load(Some(" a-token, ,b-token"), Some(&dir)).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(t.len(), 3);
        let a = t.check("a-token").unwrap();
        assert_eq!(a.0.len(), 16);
        assert_ne!(Some(a.clone()), t.check("file-token"));
        assert_eq!(Some(a), t.check("a-token"));
        assert!(t.check("a-toke").is_none());
        assert!(t.check("").is_none());
        assert!(!format!("{t:?}").contains("a-token"));
    }

    #[test]
    fn no_tokens_is_an_error_naming_both_vars() {
        let e = Tokens::load(Some(" , "), None).unwrap_err().to_string();
        assert!(
            e.contains("WARREN_INGEST_TOKENS") && e.contains("WARREN_INGEST_TOKENS_FILE"),
            "{e}"
        );
        let e = Tokens::load(None, Some(Path::new("/nonexistent/tokens")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/tokens"), "{e}");
    }
}
