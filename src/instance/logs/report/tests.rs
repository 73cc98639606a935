use super::*;

#[test]
fn report_formatting() {
    let r = |us: u64, mem: Option<u64>| Report {
        duration: Duration::from_micros(us),
        memory_mb: 128,
        mem_usage_bytes: mem,
        init_duration: None,
    };
    assert_eq!(
        report_line("abc", &r(12_010, Some(30 * 1024 * 1024 + 256 * 1024))),
        "Report RequestId: abc Duration:12.01ms BilledDuration:13ms Memory:128MB MemUsage:30.25MB"
    );
    assert_eq!(
        report_line("abc", &r(12_000, None)),
        "Report RequestId: abc Duration:12.00ms BilledDuration:12ms Memory:128MB MemUsage:0.00MB"
    );
    assert_eq!(billed_millis(Duration::from_nanos(12_000_001)), 13);
    assert_eq!(billed_millis(Duration::from_millis(12)), 12);
    assert_eq!(billed_millis(Duration::ZERO), 0);
    assert_eq!(billed_millis(Duration::from_nanos(1)), 1);
    // 2 decimals, rounded half up.
    assert!(report_line("x", &r(12_345, None)).contains("Duration:12.35ms"));
    assert!(report_line("x", &r(999_999_996, None)).contains("Duration:1000000.00ms"));
    assert!(report_line("x", &r(1, Some(5243))).contains("MemUsage:0.01MB"));
    assert!(report_line("x", &r(1, Some(5242))).contains("MemUsage:0.00MB"));
    let cold = Report {
        init_duration: Some(Duration::from_micros(182_346)),
        ..r(12_000, None)
    };
    assert_eq!(
        report_line("abc", &cold),
        "Report RequestId: abc Duration:12.00ms BilledDuration:12ms Memory:128MB \
         MemUsage:0.00MB InitDuration:182.35ms"
    );
}

#[test]
fn durations_as_log_fields_have_at_most_3_decimals() {
    assert_eq!(duration_ms(Duration::from_nanos(172_978_863)), 172.979);
    assert_eq!(duration_ms(Duration::from_nanos(172_978_499)), 172.978);
    assert_eq!(duration_ms(Duration::from_nanos(499)), 0.0);
    assert_eq!(duration_ms(Duration::from_nanos(500)), 0.001);
    assert_eq!(duration_ms(Duration::from_micros(300)).to_string(), "0.3");
    assert_eq!(duration_ms(Duration::from_secs(3)).to_string(), "3000");
    // As the JSON formatter writes the field: the decimal, not a binary approximation.
    let json = serde_json::json!({ "duration_ms": duration_ms(Duration::from_nanos(172_978_863)) });
    assert_eq!(json.to_string(), r#"{"duration_ms":172.979}"#);
    let decimals = |us: u64| {
        let text = serde_json::to_string(&duration_ms(Duration::from_micros(us))).unwrap();
        text.split_once('.')
            .map_or(0, |(_, fraction)| fraction.len())
    };
    for us in (0..1_000_000)
        .step_by(997)
        .chain([u64::from(u32::MAX), 86_400_000_000])
    {
        assert!(decimals(us) <= 3, "{us} us: {} decimals", decimals(us));
    }
}
