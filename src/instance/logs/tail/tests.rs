use super::*;
use crate::instance::logs::tests::unbase64;

#[test]
fn base64_vectors() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"foob"), "Zm9vYg==");
    assert_eq!(base64(b"fooba"), "Zm9vYmE=");
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    assert_eq!(base64(b"hello"), "aGVsbG8=");
    assert_eq!(base64(&[0xff, 0xfe, 0xfd, 0x00]), "//79AA==");
}

#[test]
fn base64_round_trips() {
    let all: Vec<u8> = (0..=255).collect();
    for n in 0..all.len() {
        assert_eq!(unbase64(&base64(&all[..n])), &all[..n]);
    }
    assert_eq!(unbase64("aGVsbG8="), b"hello");
}

#[test]
fn tail_keeps_last_4k_on_char_boundary() {
    let mut t = Tail::default();
    for _ in 0..5000 {
        t.push("€€€");
    }
    let s = t.finish();
    assert!(s.len() <= TAIL_BYTES && s.len() > TAIL_BYTES - 4);
    assert!(s.ends_with("€€€\n"));
}
