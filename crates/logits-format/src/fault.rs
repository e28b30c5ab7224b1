//! Fault points for tests: named places in the build and commit paths where a test can make
//! the program fail (or die) on purpose, to check that nothing hangs and nothing is lost.
//!
//! The binaries read `LOGITS_FAULT=POINT:N[,POINT:N...]` only in debug builds (the ones the
//! test command runs) and pass the parsed [`Faults`] down; a release build never reads the
//! variable, so an installed tool cannot be made to abort by its environment. Libraries never
//! read the environment themselves.

/// A set of armed fault points, each with the count (batch, shard, step) at which it fires.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    points: Vec<(String, u64)>,
}

impl Faults {
    /// No fault armed.
    pub fn none() -> Faults {
        Faults::default()
    }

    /// Parses `POINT:N[,POINT:N...]`; malformed parts are reported, so a typo in a test fails
    /// loudly instead of silently testing nothing.
    pub fn parse(spec: &str) -> Result<Faults, String> {
        let mut points = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, n) = part
                .rsplit_once(':')
                .ok_or_else(|| format!("fault point {part:?} is not POINT:N"))?;
            let n: u64 = n
                .parse()
                .map_err(|_| format!("fault point {part:?}: {n:?} is not a count"))?;
            points.push((name.to_string(), n));
        }
        Ok(Faults { points })
    }

    /// True when `point` is armed at count `n`.
    pub fn hit(&self, point: &str, n: u64) -> bool {
        self.points.iter().any(|(p, k)| p == point && *k == n)
    }

    /// The count armed for `point`, for points that carry a setting rather than a place
    /// (`delay-ms:N` slows every teacher run by N ms, so a test can act mid-build;
    /// `io-binding:1` runs CPU sessions through the I/O binding GPU sessions use).
    pub fn value(&self, point: &str) -> Option<u64> {
        self.points
            .iter()
            .find(|(p, _)| p == point)
            .map(|(_, n)| *n)
    }

    /// True when no point is armed (the normal case: checks cost one branch).
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Aborts the process at `point` for count `n`, leaving what a kill at that moment leaves
    /// (for crash-recovery tests).
    pub fn abort_at(&self, point: &str, n: u64) {
        if self.hit(point, n) {
            eprintln!("LOGITS_FAULT: aborting at {point} {n}");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_hits() {
        let f = Faults::parse("reader:3, post:1").expect("parse");
        assert!(f.hit("reader", 3));
        assert!(f.hit("post", 1));
        assert!(!f.hit("reader", 1));
        assert!(!f.hit("writer", 3));
        assert!(Faults::parse("").expect("empty").is_empty());
        assert!(Faults::parse("reader").is_err());
        assert!(Faults::parse("reader:x").is_err());
    }
}
