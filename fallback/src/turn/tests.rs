//! The turn output against a real loopback socket.

use super::*;
use std::io::Read;

/// Drains `pending` in turns, as the writable events would, while the peer reads to the end;
/// closes the server side and returns everything the peer read.
fn drain_to_peer(
    turn: &mut TurnOutput,
    server: TcpStream,
    pending: &mut PendingOutput,
    mut client: std::net::TcpStream,
) -> Vec<u8> {
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        got
    });
    while !pending.is_empty() {
        turn.flush(&server, pending, Sources::NONE).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    drop(server);
    reader.join().unwrap()
}

fn pair() -> (TcpStream, std::net::TcpStream) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (server, _) = l.accept().unwrap();
    server.set_nonblocking(true).unwrap();
    (TcpStream::from_std(server), client)
}

#[test]
fn pieces_go_out_in_order_with_large_payloads_from_the_input() {
    let (server, mut client) = pair();
    let input: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    let mut turn = TurnOutput::new();
    let mut pending = PendingOutput::new();
    {
        let mut sink = turn.sink(&input);
        sink.send_frame(b"H1", &input[100..4196]); // large, inside input: not copied
        sink.send_frame(b"H2", b"small"); // copied
        sink.send_frame(b"H3", &vec![9u8; 2000]); // large, outside input: copied
    }
    assert!(matches!(
        turn.segs[1],
        Seg::Input {
            start: 100,
            len: 4096
        }
    ));
    let expect: Vec<u8> = [
        &b"H1"[..],
        &input[100..4196],
        b"H2small",
        b"H3",
        &vec![9u8; 2000],
    ]
    .concat();
    assert_eq!(turn.len(), expect.len());
    let sent = turn
        .flush(&server, &mut pending, input_only(&input))
        .unwrap();
    assert_eq!(sent, expect.len());
    assert!(pending.is_empty() && turn.is_empty());
    let mut got = vec![0u8; expect.len()];
    client.read_exact(&mut got).unwrap();
    assert_eq!(got, expect);
}

#[test]
fn what_the_kernel_does_not_take_is_kept_in_order() {
    let (server, client) = pair();
    socket2::SockRef::from(&server)
        .set_send_buffer_size(4096)
        .unwrap();
    let input: Vec<u8> = (0..(4u32 << 20)).map(|i| (i % 253) as u8).collect();
    let mut turn = TurnOutput::new();
    let mut pending = PendingOutput::new();
    turn.sink(&input).send_frame(b"HEAD", &input);
    let sent = turn
        .flush(&server, &mut pending, input_only(&input))
        .unwrap();
    assert!(
        sent < input.len(),
        "a 4 MiB write into a small socket buffer is partial"
    );
    assert_eq!(sent + pending.len(), input.len() + 4);
    // Drain in turns, as the writable events would.
    let got = drain_to_peer(&mut turn, server, &mut pending, client);
    assert_eq!(&got[..4], b"HEAD");
    assert!(got[4..] == input[..], "every byte in order");
}

#[test]
fn large_turns_borrow_from_the_cache_and_give_back() {
    let (server, mut client) = pair();
    socket2::SockRef::from(&server)
        .set_send_buffer_size(64 << 10)
        .unwrap();
    // A fixed receive buffer too (no autotuning): otherwise loopback may take all 3 MiB at
    // once and nothing is left pending.
    socket2::SockRef::from(&client)
        .set_recv_buffer_size(64 << 10)
        .unwrap();
    // A payload outside the input: staged (copied), so larger than STAGING_SMALL.
    let payload: Vec<u8> = (0..(3u32 << 20)).map(|i| (i % 249) as u8).collect();
    let len = payload.len() + 4;
    // The reader starts on each turn only once its first write is done, so that the kernel
    // cannot take the whole turn at once however fast the reader is.
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; 2 * len];
        for half in got.chunks_mut(len) {
            wait.recv().unwrap();
            client.read_exact(half).unwrap();
        }
        got
    });
    let mut turn = TurnOutput::new();
    let mut pending = PendingOutput::new();
    let mut counts = Vec::new();
    for _ in 0..2 {
        turn.sink(&[]).send_frame(b"HEAD", &payload);
        turn.flush(&server, &mut pending, Sources::NONE).unwrap();
        assert!(
            !pending.is_empty(),
            "3 MiB do not fit 64 KiB socket buffers"
        );
        go.send(()).unwrap();
        // The staging went back to the cache; the connection holds its buffer until drained.
        assert!(turn.staging.capacity() <= STAGING_SMALL && turn.large.is_none());
        while !pending.is_empty() {
            turn.flush(&server, &mut pending, Sources::NONE).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(
            pending.capacity(),
            0,
            "a drained connection holds no output memory"
        );
        let stats = turn.cache().stats();
        counts.push((stats.borrowed, stats.misses));
    }
    let got = reader.join().unwrap();
    for half in got.chunks(len) {
        assert_eq!(&half[..4], b"HEAD");
        assert!(half[4..] == payload[..], "every byte in order");
    }
    let stats = turn.cache().stats();
    // Each turn borrows twice (staging, then the connection's pending output), draining borrows
    // nothing more, and the second turn finds both buffers in the cache.
    assert_eq!(counts[1].0 - counts[0].0, 2, "{stats:?}");
    assert_eq!(
        counts[0].1, counts[1].1,
        "the second turn allocates nothing: {stats:?}"
    );
    assert!(stats.hits >= 1 && stats.cached_buffers >= 1, "{stats:?}");
}

#[test]
fn a_short_ring_sends_rest_goes_before_the_output_queued_behind_it() {
    let mut turn = TurnOutput::new();
    let mut pending = PendingOutput::new();
    // Output that waited behind a ring send.
    turn.sink(&[]).send_frame(b"H2", b"later");
    turn.stage_into(&mut pending, Sources::NONE);
    assert_eq!(pending.unsent(), b"H2later");
    // The ring send took only part of its bytes: the rest goes in front.
    turn.requeue_front(&mut pending, b"H1-rest");
    assert_eq!(pending.unsent(), b"H1-restH2later");
    assert!(turn.is_empty());
    // And a turn moved into an arena keeps its pieces in order, input ranges included.
    let input = vec![7u8; 4096];
    let mut arena = Vec::with_capacity(8192);
    {
        let mut sink = turn.sink(&input);
        sink.send_frame(b"A", &input[..2048]);
        sink.send_frame(b"B", b"small");
    }
    turn.move_into(&mut arena, input_only(&input));
    let expect = [&b"A"[..], &input[..2048], b"Bsmall"].concat();
    assert_eq!(arena, expect);
    assert!(turn.is_empty());
}

#[test]
fn a_reset_peer_is_an_error_not_a_signal() {
    let (server, client) = pair();
    socket2::SockRef::from(&client)
        .set_linger(Some(std::time::Duration::ZERO))
        .unwrap();
    drop(client);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut turn = TurnOutput::new();
    let mut pending = PendingOutput::new();
    let mut err = None;
    for _ in 0..3 {
        turn.push_bytes(&[1u8; 1000]);
        if let Err(e) = turn.flush(&server, &mut pending, Sources::NONE) {
            err = Some(e);
            break;
        }
    }
    let err = err.expect("writing to a reset connection fails");
    assert!(
        matches!(
            err.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        ),
        "{err}"
    );
}

/// Sources with only a receive buffer.
fn input_only(input: &[u8]) -> Sources<'_> {
    Sources {
        input,
        message: &[],
    }
}

#[test]
fn an_echo_of_the_retained_message_is_sent_from_it_and_its_unsent_end_adopted() {
    let (server, client) = pair();
    socket2::SockRef::from(&server)
        .set_send_buffer_size(4096)
        .unwrap();
    let message: Vec<u8> = (0..(4u32 << 20)).map(|i| (i % 241) as u8).collect();
    let mut turn = TurnOutput::new();
    let mut pending = PendingOutput::new();
    {
        let mut sink = turn.sink(&[]);
        assert!(FrameSink::keeps_message_ranges(&sink));
        sink.send_message_frame(b"HEAD", &message, &message);
    }
    assert!(matches!(
        turn.segs[1],
        Seg::Message { start: 0, len } if len == message.len()
    ));
    let from = Sources {
        input: &[],
        message: &message,
    };
    let sent = turn.flush(&server, &mut pending, from).unwrap();
    assert!(sent > 4 && sent < message.len(), "a partial write: {sent}");
    // Nothing was copied: the unsent end is left for the pending output to adopt.
    assert!(pending.is_empty());
    let head = turn
        .take_adoption()
        .expect("the unsent end is the message's");
    assert_eq!(head, sent - 4);
    assert_eq!(turn.take_adoption(), None);
    pending.adopt(message.clone(), head, turn.cache());
    assert_eq!(
        drain_to_peer(&mut turn, server, &mut pending, client),
        [&b"HEAD"[..], &message].concat()
    );
}

#[test]
fn output_after_the_message_in_the_same_turn_is_copied_in_order() {
    let (server, client) = pair();
    socket2::SockRef::from(&server)
        .set_send_buffer_size(4096)
        .unwrap();
    let message: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 239) as u8).collect();
    let mut turn = TurnOutput::new();
    let mut pending = PendingOutput::new();
    {
        let mut sink = turn.sink(&[]);
        sink.send_message_frame(b"H1", &message[10..], &message);
        sink.send_frame(b"H2", b"after");
    }
    let from = Sources {
        input: &[],
        message: &message,
    };
    turn.flush(&server, &mut pending, from).unwrap();
    // The message is not the turn's last piece: no adoption, the rest is copied, in order.
    assert_eq!(turn.take_adoption(), None);
    assert!(!pending.is_empty());
    let expect = [&b"H1"[..], &message[10..], b"H2after"].concat();
    assert_eq!(
        drain_to_peer(&mut turn, server, &mut pending, client),
        expect
    );
}
