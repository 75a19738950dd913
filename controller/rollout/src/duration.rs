//! Durations, in one grammar everywhere: the CRDs' fields, the CLI's and the agent's flags.

/// A non-negative duration in the grammar of the CRDs' duration fields (`interval`,
/// `minDuration`, `postPromotionWindow`...): Go's `time.ParseDuration`, as
/// [`kube::core::Duration`] parses it — `10s`, `500ms`, `1m30s`, `1.5h`. The error says what
/// is wrong, not where the text came from: callers name their flag or field.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    if text.is_empty() {
        // kube reads "" as zero; Go, and so the API server, refuses it.
        return Err("an empty duration: expected one such as 10s, 500ms or 1m30s".into());
    }
    let parsed: kube::core::Duration =
        text.parse().map_err(|e| format!("{text:?} is not a duration such as 10s, 500ms or 1m30s ({e})"))?;
    let duration = std::time::Duration::from(parsed);
    if parsed.is_negative() && !duration.is_zero() {
        return Err(format!("{text:?}: a duration must not be negative"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn durations_have_the_crds_grammar() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["10", "s", "", "5 m", "1d", "-5m", "yesterday"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        // The same text means the same in a CRD field.
        let field: kube::core::Duration = serde_json::from_value("1m30s".into()).unwrap();
        assert_eq!(Duration::from(field), parse_duration("1m30s").unwrap());
    }
}
