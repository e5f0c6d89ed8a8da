//! The hard maxima and the operator's ceilings, checked on plain values.

use super::*;

#[test]
fn hard_maxima_hold_for_everyone_and_ceilings_for_deploys() {
    let err = |limits: AppLimits, ceilings: Option<&Ceilings>| {
        format!("{:#}", limits.check(ceilings).unwrap_err())
    };
    // The value that used to panic the gateway at every start.
    let boom = AppLimits {
        max_connections_per_instance: 1 << 61,
        ..AppLimits::default()
    };
    assert!(err(boom, None).contains("max_connections_per_instance"));
    let window = AppLimits {
        quic_receive_window_kb: u64::MAX,
        ..AppLimits::default()
    };
    assert!(err(window, None).contains("quic_receive_window_kb"));
    let zero = AppLimits {
        max_connections: 0,
        ..AppLimits::default()
    };
    assert!(err(zero, None).contains("at least 1"));

    // The operator may ask for more than a deployer.
    let big = AppLimits {
        memory_limit_mb: 4096,
        ..AppLimits::default()
    };
    big.check(None).unwrap();
    let ceilings = Ceilings::default();
    let text = err(big, Some(&ceilings));
    assert!(text.contains("memory_limit_mb = 4096"), "{text}");
    assert!(text.contains("[ceilings] memory_limit_mb"), "{text}");
    let never = AppLimits {
        idle_timeout_secs: 0,
        ..AppLimits::default()
    };
    never.check(None).unwrap();
    assert!(err(never, Some(&ceilings)).contains("0 (never)"));
    AppLimits::default().check(Some(&ceilings)).unwrap();
    ceilings.validate().unwrap();
    let wrong = Ceilings {
        memory_limit_mb: 1 << 20,
        ..Ceilings::default()
    };
    assert!(wrong.validate().is_err());

    // HTTP apps' limits too: an hour-long request timeout is for the
    // operator to allow.
    let slow = AppLimits {
        http_request_timeout_ms: 3_600_000,
        ..AppLimits::default()
    };
    slow.check(None).unwrap();
    let text = err(slow, Some(&ceilings));
    assert!(
        text.contains("http_request_timeout_ms = 3600000 is over this gateway's ceiling 300000"),
        "{text}"
    );
    let uploads = AppLimits {
        http_max_body_kb: 1 << 20,
        ..AppLimits::default()
    };
    assert!(err(uploads, Some(&ceilings)).contains("[ceilings] http_max_body_kb"));
    let tiny_head = Ceilings {
        http_max_header_kb: 1,
        ..Ceilings::default()
    };
    assert!(tiny_head.validate().is_err());
}

#[test]
fn hibernation_defaults_to_ten_minutes_for_deployed_apps_only_and_zero_means_never() {
    use std::time::Duration;
    let unset = AppLimits::default();
    assert_eq!(unset.hibernate_after(true), Some(Duration::from_secs(600)));
    assert_eq!(unset.hibernate_after(false), None);
    let never = AppLimits {
        hibernate_after_secs: Some(0),
        ..AppLimits::default()
    };
    assert_eq!(never.hibernate_after(true), None);
    let soon = AppLimits {
        hibernate_after_secs: Some(5),
        ..AppLimits::default()
    };
    assert_eq!(soon.hibernate_after(false), Some(Duration::from_secs(5)));
    let past = AppLimits {
        hibernate_after_secs: Some(HARD_MAX_SECS + 1),
        ..AppLimits::default()
    };
    let text = format!("{:#}", past.check(None).unwrap_err());
    assert!(
        text.contains("limits.hibernate_after_secs must be at most"),
        "{text}"
    );
    // Unset stays unset through the deploy settings' JSON.
    let json = serde_json::to_string(&unset).unwrap();
    assert!(!json.contains("hibernate_after_secs"), "{json}");
    let back: AppLimits = serde_json::from_str(&json).unwrap();
    assert_eq!(back.hibernate_after_secs, None);
}
