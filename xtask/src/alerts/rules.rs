//! The rule file as the harness evaluates it: durations scaled, and each
//! alert's firing budget.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use super::{LEADS, MARGIN, MEMORY_THRESHOLD, SCALE};

/// The budget of one alert of `rules`: its scaled `for`, its lead, and
/// [`MARGIN`].
pub(super) fn budget(rules: &str, alert: &str) -> Duration {
    let scaled_for = rule_for(rules, alert).map_or(Duration::ZERO, |d| d / u32::try_from(SCALE).unwrap_or(1));
    let lead = LEADS.iter().find(|(a, _, _)| *a == alert).map_or(30, |(_, s, _)| *s);
    scaled_for + Duration::from_secs(lead) + MARGIN
}

/// The `for:` of `alert` in a rule file.
fn rule_for(rules: &str, alert: &str) -> Option<Duration> {
    let mut lines = rules.lines().skip_while(|l| l.trim() != format!("- alert: {alert}")).skip(1);
    lines
        .by_ref()
        .take_while(|l| !l.trim_start().starts_with("- alert:"))
        .find_map(|l| l.trim().strip_prefix("for: ").and_then(parse_duration))
}

fn parse_duration(text: &str) -> Option<Duration> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = number.parse().ok()?;
    Some(Duration::from_secs(match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return None,
    }))
}

/// The rule file with every `for:`, range window and duration threshold
/// divided by [`SCALE`], and the memory threshold substituted.
pub(super) fn scaled_rules(rules: &str) -> Result<String> {
    let mut out = String::with_capacity(rules.len());
    for line in rules.lines() {
        let mut line = line.to_owned();
        if let Some(value) = line.trim().strip_prefix("for: ") {
            let duration = parse_duration(value).with_context(|| format!("cannot scale {line:?}"))?;
            line = line.replace(value, &format!("{}s", scaled_secs(duration)?));
        }
        while let Some(open) = line.find('[') {
            let Some(close) = line[open..].find(']').map(|c| open + c) else { break };
            let window = &line[open + 1..close];
            let Some(duration) = parse_duration(window) else { break };
            line = format!("{}⟦{}s⟧{}", &line[..open], scaled_secs(duration)?, &line[close + 1..]);
        }
        line = line.replace('⟦', "[").replace('⟧', "]");
        for (from, to) in [
            (
                "keel_write_behind_oldest_age_seconds > 60",
                format!("keel_write_behind_oldest_age_seconds > {}", 60 / SCALE),
            ),
            ("keel_settings_staleness_seconds > 300", format!("keel_settings_staleness_seconds > {}", 300 / SCALE)),
            ("process_memory_usage_bytes > 1073741824", format!("process_memory_usage_bytes > {MEMORY_THRESHOLD}")),
        ] {
            line = line.replace(from, &to);
        }
        out.push_str(&line);
        out.push('\n');
    }
    for (alert, _, _) in LEADS {
        if !out.contains(&format!("- alert: {alert}\n")) {
            bail!("the harness knows {alert}, the rules do not");
        }
    }
    for alert in out.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        if !LEADS.iter().any(|(a, _, _)| *a == alert) {
            bail!("alert {alert} has no scenario in `cargo xtask alerts`");
        }
    }
    Ok(out)
}

fn scaled_secs(duration: Duration) -> Result<u64> {
    let secs = duration.as_secs();
    if !secs.is_multiple_of(SCALE) || secs == 0 {
        bail!("{duration:?} is not a multiple of the scale 1/{SCALE}");
    }
    Ok(secs / SCALE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_duration_of_the_rules_is_scaled() {
        let rules = std::fs::read_to_string(crate::workspace_root().join("deploy/prometheus/rules/keel.yml")).unwrap();
        let scaled = scaled_rules(&rules).unwrap();
        assert!(scaled.contains("for: 10s") && !scaled.contains("for: 5m"), "{scaled}");
        assert!(scaled.contains("[10s]") && scaled.contains("[720s]") && !scaled.contains("[5m]"), "{scaled}");
        assert!(scaled.contains("keel_settings_staleness_seconds > 10"));
        assert!(scaled.contains(&format!("process_memory_usage_bytes > {MEMORY_THRESHOLD}")));
        assert_eq!(rule_for(&rules, "KeelHighErrorRatio"), Some(Duration::from_secs(300)));
        assert_eq!(rule_for(&rules, "KeelBatcherDropping"), None);
        // 5 min / 30, the 10 s lead, the 20 s margin.
        assert_eq!(budget(&rules, "KeelHighErrorRatio"), Duration::from_secs(40));
        assert_eq!(budget(&rules, "KeelBatcherDropping"), Duration::from_secs(25));
    }
}
