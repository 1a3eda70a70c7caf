//! One test per RFC 6455 rule the session enforces, with the close code it must send. The
//! Autobahn|Testsuite case each mirrors is named in the test.

mod common;

use common::*;
use hioload_wsproto::{CloseCode, Limits, OpCode, SendError, State};

/// Feeds `bytes` to a fresh server and returns the driver after the expected failure.
fn fails_with(bytes: &[u8], code: u16) -> Driver {
    let mut d = Driver::server();
    let err = d.feed(bytes).expect_err("the session must fail");
    assert_eq!(err.code.0, code, "{}", err.reason);
    assert_eq!(
        d.sent_close(),
        Some(Some(code)),
        "a Close with {code} is queued"
    );
    assert_eq!(d.session.state(), State::Closed);
    d
}

#[test]
fn rsv_bits_without_extension_are_1002() {
    // Autobahn 3.1–3.7: every RSV combination, on data and control frames.
    for rsv in 1..8u8 {
        fails_with(&client_raw(0x81 | (rsv << 4), b"Hello"), 1002);
        fails_with(&client_raw(0x89 | (rsv << 4), b""), 1002);
    }
    // 3.2: a good message first is still delivered and echoed.
    let mut stream = client(OpCode::Text, true, b"Hello");
    stream.extend(client_raw(0xA1, b"Hello"));
    let d = fails_with(&stream, 1002);
    assert_eq!(d.events, vec![Ev::Text("Hello".into())]);
    assert_eq!(d.sent()[0].payload, b"Hello");
}

#[test]
fn reserved_opcodes_are_1002() {
    // Autobahn 4.1.x (3–7) and 4.2.x (0xB–0xF).
    for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        fails_with(&client_raw(0x80 | op, b"payload"), 1002);
    }
}

#[test]
fn unmasked_client_frame_is_1002() {
    fails_with(&[0x81, 0x02, b'h', b'i'], 1002);
}

#[test]
fn fragmented_control_frames_are_1002() {
    // Autobahn 5.1 (ping) and 5.2 (pong).
    fails_with(&client(OpCode::Ping, false, b"frag"), 1002);
    fails_with(&client(OpCode::Pong, false, b"frag"), 1002);
    fails_with(
        &client(OpCode::Close, false, &close_payload(1000, b"")),
        1002,
    );
}

#[test]
fn control_frame_over_125_bytes_is_1002() {
    // Autobahn 2.4 (125 is fine) and 2.5 (126 is not).
    let mut d = Driver::server();
    d.feed(&client(OpCode::Ping, true, &[0xfe; 125])).unwrap();
    assert_eq!(d.sent()[0].payload, vec![0xfe; 125]);
    fails_with(&client(OpCode::Ping, true, &[0xfe; 126]), 1002);
    // Autobahn 7.3.6: a close with a 124-byte reason.
    fails_with(
        &client(OpCode::Close, true, &close_payload(1000, &[b'*'; 124])),
        1002,
    );
}

#[test]
fn continuation_without_a_message_is_1002() {
    // Autobahn 5.9–5.14: FIN set or not.
    fails_with(&client(OpCode::Continuation, true, b"fragment"), 1002);
    fails_with(&client(OpCode::Continuation, false, b"fragment"), 1002);
    // 5.15: after a complete fragmented message, a stray continuation.
    let mut stream = client(OpCode::Text, false, b"frag1");
    stream.extend(client(OpCode::Continuation, true, b"frag2"));
    stream.extend(client(OpCode::Continuation, false, b"frag3"));
    let d = fails_with(&stream, 1002);
    assert_eq!(d.events, vec![Ev::Text("frag1frag2".into())]);
}

#[test]
fn new_data_frame_inside_a_fragmented_message_is_1002() {
    let mut stream = client(OpCode::Text, false, b"frag1");
    stream.extend(client(OpCode::Text, true, b"whole"));
    fails_with(&stream, 1002);
    let mut stream = client(OpCode::Binary, false, b"frag1");
    stream.extend(client(OpCode::Binary, false, b"again"));
    fails_with(&stream, 1002);
}

#[test]
fn length_with_top_bit_set_is_1002() {
    fails_with(&[0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4], 1002);
}

#[test]
fn invalid_utf8_in_a_whole_text_frame_is_1007() {
    // Autobahn 6.3.1 (a UTF-16 surrogate) and friends.
    let bad = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited";
    fails_with(&client(OpCode::Text, true, bad), 1007);
    fails_with(&client(OpCode::Text, true, b"\xff"), 1007);
    fails_with(&client(OpCode::Text, true, b"\xc0\xaf"), 1007); // overlong '/'
    fails_with(&client(OpCode::Text, true, b"\xf4\x90\x80\x80"), 1007); // above U+10FFFF
}

#[test]
fn invalid_utf8_fails_fast_at_the_bad_fragment() {
    // Autobahn 6.4.1/6.4.2: three fragments; the second makes the text invalid. The session must
    // fail on the second, before the third arrives.
    let mut d = Driver::server();
    d.feed(&client(OpCode::Text, false, "κόσμε".as_bytes()))
        .unwrap();
    let err = d
        .feed(&client(OpCode::Continuation, false, b"\xf4\x90\x80\x80"))
        .unwrap_err();
    assert_eq!(err.code, CloseCode::INVALID_PAYLOAD);
    assert_eq!(d.sent_close(), Some(Some(1007)));
    assert!(d.events.is_empty());
}

#[test]
fn invalid_utf8_fails_fast_within_chops_of_one_frame() {
    // Autobahn 6.4.3/6.4.4: one small frame sent in chops; fail on the chop with the bad byte,
    // while the frame is still incomplete.
    let payload =
        b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80\x65\x64\x69\x74\x65\x64";
    let frame = client(OpCode::Text, true, payload);
    let mut d = Driver::server();
    d.feed(&frame[..6 + 11]).unwrap(); // header + valid prefix: still waiting
    assert_eq!(d.out, b"");
    let err = d.feed(&frame[17..19]).unwrap_err(); // \xf4\x90: invalid already
    assert_eq!(err.code.0, 1007);
    // One byte at a time through a fragmented message, too.
    let mut d = Driver::server();
    d.feed(&client(OpCode::Text, false, b"ok ")).unwrap();
    let frame = client(OpCode::Continuation, true, b"ab\xed\xa0\x80cd");
    let mut failed_at = None;
    for (i, b) in frame.iter().enumerate() {
        if d.feed(&[*b]).is_err() {
            failed_at = Some(i);
            break;
        }
    }
    assert_eq!(failed_at, Some(6 + 3), "fails on the byte after 0xED");
}

#[test]
fn invalid_utf8_in_a_large_streamed_frame_fails_fast() {
    // A frame above inplace_frame_max streams into the assembly buffer and is checked piecewise.
    let mut payload = vec![b'a'; 100_000];
    payload[50_000] = 0xff;
    let frame = client(OpCode::Text, true, &payload);
    let mut d = Driver::server();
    d.feed(&frame[..40_000]).unwrap();
    let err = d.feed(&frame[40_000..60_000]).unwrap_err();
    assert_eq!(err.code.0, 1007);
}

#[test]
fn code_point_cut_at_message_end_is_1007() {
    let mut stream = client(OpCode::Text, false, b"abc");
    stream.extend(client(OpCode::Continuation, true, b"\xe2\x82"));
    fails_with(&stream, 1007);
    fails_with(&client(OpCode::Text, true, b"abc\xe2\x82"), 1007);
}

#[test]
fn frame_over_max_frame_size_is_1009() {
    let limits = Limits {
        max_frame_size: 1000,
        ..Limits::default()
    };
    let mut d = Driver::new(limits);
    d.feed(&client(OpCode::Binary, true, &[0; 1000])).unwrap();
    // Refused from the header alone, before the payload arrives.
    let frame = client(OpCode::Binary, true, &[0; 1001]);
    assert_eq!(d.feed(&frame[..8]).unwrap_err().code.0, 1009);
    assert_eq!(d.sent_close(), Some(Some(1009)));
    // The default is 16 MiB: a header announcing more fails at once.
    let mut d = Driver::server();
    let mut head = vec![0x82, 0xFF, 0, 0, 0, 0, 1, 0, 0, 1];
    head.extend([1, 2, 3, 4]);
    assert_eq!(d.feed(&head).unwrap_err().code.0, 1009);
}

#[test]
fn message_over_max_message_size_is_1009() {
    let limits = Limits {
        max_message_size: 1000,
        ..Limits::default()
    };
    let mut d = Driver::new(limits);
    d.feed(&client(OpCode::Binary, false, &[0; 600])).unwrap();
    assert_eq!(
        d.feed(&client(OpCode::Continuation, true, &[0; 401]))
            .unwrap_err()
            .code
            .0,
        1009
    );
    assert_eq!(d.sent_close(), Some(Some(1009)));
}

#[test]
fn close_with_one_byte_payload_is_1002() {
    // Autobahn 7.3.2.
    fails_with(&client(OpCode::Close, true, &[0x03]), 1002);
}

#[test]
fn close_with_invalid_code_is_1002() {
    // Autobahn 7.9.x plus the neighbours of every valid range.
    for code in [
        0u16, 999, 1004, 1005, 1006, 1012, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        fails_with(
            &client(OpCode::Close, true, &close_payload(code, b"")),
            1002,
        );
    }
}

#[test]
fn close_with_invalid_utf8_reason_is_1007() {
    // Autobahn 7.5.1.
    let reason = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited";
    fails_with(
        &client(OpCode::Close, true, &close_payload(1000, reason)),
        1007,
    );
}

#[test]
fn valid_close_codes_are_echoed() {
    // Autobahn 7.7.x; 7.3.3–7.3.5 (code only, reason, 123-byte reason).
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ] {
        let mut d = Driver::server();
        d.feed(&client(OpCode::Close, true, &close_payload(code, b"")))
            .unwrap();
        assert_eq!(d.events, vec![Ev::Close(Some(code), String::new())]);
        assert_eq!(d.sent_close(), Some(Some(code)));
        assert_eq!(d.session.state(), State::Closed);
    }
    let mut d = Driver::server();
    let reason = "*".repeat(123);
    d.feed(&client(
        OpCode::Close,
        true,
        &close_payload(1000, reason.as_bytes()),
    ))
    .unwrap();
    assert_eq!(d.events, vec![Ev::Close(Some(1000), reason)]);
}

#[test]
fn empty_close_is_answered_with_an_empty_close() {
    // Autobahn 7.3.1.
    let mut d = Driver::server();
    d.feed(&client(OpCode::Close, true, b"")).unwrap();
    assert_eq!(d.events, vec![Ev::Close(None, String::new())]);
    assert_eq!(d.sent_close(), Some(None));
    assert_eq!(d.sent().last().unwrap().payload, b"");
}

#[test]
fn nothing_is_processed_or_sent_after_the_peer_close() {
    // Autobahn 7.1.2–7.1.5: a second close, a ping, a text after the close.
    let mut stream = client(OpCode::Close, true, &close_payload(1000, b""));
    stream.extend(client(OpCode::Close, true, &close_payload(1000, b"")));
    stream.extend(client(OpCode::Ping, true, b"late"));
    stream.extend(client(OpCode::Text, true, b"late"));
    let mut d = Driver::server();
    d.feed(&stream).unwrap();
    assert_eq!(d.events, vec![Ev::Close(Some(1000), String::new())]);
    assert_eq!(d.sent().len(), 1);
    assert!(
        d.buf.is_empty(),
        "input after Closed is consumed and dropped"
    );
    let mut out = Vec::new();
    let mut tx = d.session.outgoing(&mut out);
    assert_eq!(tx.send_text("x"), Err(SendError::Closed));
    assert_eq!(tx.ping(b""), Err(SendError::Closed));
    assert_eq!(tx.close(CloseCode::NORMAL, ""), Err(SendError::Closed));
    assert!(out.is_empty());
}

#[test]
fn server_initiated_close_drops_data_until_the_peer_close() {
    let mut d = Driver::server();
    let mut out = Vec::new();
    let mut tx = d.session.outgoing(&mut out);
    assert_eq!(
        tx.close(CloseCode(999), ""),
        Err(SendError::InvalidCloseCode)
    );
    assert_eq!(
        tx.close(CloseCode::NORMAL, &"x".repeat(124)),
        Err(SendError::ControlTooLong)
    );
    tx.close(CloseCode::GOING_AWAY, "shutdown").unwrap();
    assert_eq!(tx.state(), State::Closing);
    assert_eq!(tx.send_binary(b"x"), Err(SendError::Closed));
    assert_eq!(
        server_frames(&out)[0].payload,
        close_payload(1001, b"shutdown")
    );

    d.feed(&client(OpCode::Text, true, b"ignored")).unwrap();
    d.feed(&client(OpCode::Binary, false, b"ignored")).unwrap();
    d.feed(&client(OpCode::Continuation, true, b"ignored"))
        .unwrap();
    d.feed(&client(OpCode::Ping, true, b"p")).unwrap();
    assert_eq!(d.session.state(), State::Closing);
    d.feed(&client(OpCode::Close, true, &close_payload(1001, b"")))
        .unwrap();
    assert_eq!(d.session.state(), State::Closed);
    assert_eq!(
        d.events,
        vec![
            Ev::Ping(b"p".to_vec()),
            Ev::Close(Some(1001), String::new())
        ]
    );
    assert!(
        d.out.is_empty(),
        "no echo, no pong and no second close after our close"
    );
}

#[test]
fn violation_while_closing_sends_no_second_close() {
    let mut d = Driver::server();
    d.session
        .outgoing(&mut Vec::new())
        .close(CloseCode::NORMAL, "")
        .unwrap();
    let err = d.feed(&client_raw(0xC1, b"x")).unwrap_err();
    assert_eq!(err.code.0, 1002);
    assert!(d.out.is_empty());
    assert_eq!(d.session.state(), State::Closed);
}

#[test]
fn unsolicited_pong_is_reported_and_not_answered() {
    // Autobahn 2.8/2.9.
    let mut d = Driver::server();
    d.feed(&client(OpCode::Pong, true, b"unsolicited")).unwrap();
    assert_eq!(d.events, vec![Ev::Pong(b"unsolicited".to_vec())]);
    assert!(d.out.is_empty());
}

#[test]
fn control_frames_inside_a_fragmented_message() {
    // Autobahn 5.6–5.8 and 5.19/5.20: pings between fragments are answered at once.
    let mut stream = client(OpCode::Text, false, b"fragment1");
    stream.extend(client(OpCode::Ping, true, b"ping1"));
    stream.extend(client(OpCode::Continuation, false, b"fragment2"));
    stream.extend(client(OpCode::Pong, true, b"pong"));
    stream.extend(client(OpCode::Continuation, true, b"fragment3"));
    for sizes in [vec![stream.len()], vec![1], vec![3, 7, 1]] {
        let mut d = Driver::server();
        d.feed_in_pieces(&stream, &sizes).unwrap();
        assert_eq!(
            d.events,
            vec![
                Ev::Ping(b"ping1".to_vec()),
                Ev::Pong(b"pong".to_vec()),
                Ev::Text("fragment1fragment2fragment3".into())
            ]
        );
        let sent = d.sent();
        assert_eq!(
            (sent[0].opcode, sent[0].payload.as_slice()),
            (OpCode::Pong, &b"ping1"[..])
        );
        assert_eq!(sent[1].payload, b"fragment1fragment2fragment3");
    }
}

#[test]
fn ping_with_empty_payload_and_binary_ping() {
    // Autobahn 2.2/2.3.
    let mut d = Driver::server();
    d.feed(&client(OpCode::Ping, true, b"")).unwrap();
    d.feed(&client(OpCode::Ping, true, &[0x00, 0xff, 0xfe, 0xfd]))
        .unwrap();
    let sent = d.sent();
    assert_eq!(sent[0].payload, b"");
    assert_eq!(sent[1].payload, [0x00, 0xff, 0xfe, 0xfd]);
}

#[test]
fn input_after_a_failure_is_ignored() {
    let mut d = fails_with(&client_raw(0x83, b"x"), 1002);
    let before = d.out.len();
    d.feed(&client(OpCode::Text, true, b"more")).unwrap();
    assert_eq!(d.out.len(), before);
    assert!(d.buf.is_empty());
}
