//! The buffering contract transports rely on: whole frames are handed out as sub-slices of the
//! input, partial small frames are left unconsumed, large frames stream, the assembly buffer's
//! capacity is bounded after big messages.

mod common;

use common::*;
use hioload_wsproto::session::ASSEMBLY_RETAIN;
use hioload_wsproto::{Event, Limits, OpCode, Session};

/// Runs `receive` once and returns, per event, whether its payload lies inside `input`.
fn payload_in_input(input: &mut [u8]) -> Vec<bool> {
    let range = input.as_ptr_range();
    let range = range.start as usize..range.end as usize;
    let mut inside = Vec::new();
    let mut session = Session::new(Limits::default());
    session
        .receive(input, &mut Vec::new(), |ev, _| {
            let p = match ev {
                Event::Text(t) => t.as_ptr(),
                Event::Binary(b) | Event::Ping(b) | Event::Pong(b) => b.as_ptr(),
                Event::Close(_, r) => r.as_ptr(),
            };
            inside.push(range.contains(&(p as usize)));
        })
        .unwrap();
    inside
}

#[test]
fn whole_frames_are_delivered_from_the_input_buffer() {
    let mut stream = client(OpCode::Text, true, b"zero copy");
    stream.extend(client(OpCode::Binary, true, &vec![7u8; 100_000]));
    stream.extend(client(OpCode::Ping, true, b"p"));
    assert_eq!(payload_in_input(&mut stream), vec![true, true, true]);
    // A fragmented message is assembled in the session, not in the input.
    let mut stream = client(OpCode::Text, false, b"a");
    stream.extend(client(OpCode::Continuation, true, b"b"));
    assert_eq!(payload_in_input(&mut stream), vec![false]);
}

#[test]
fn partial_small_frame_is_left_unconsumed_until_whole() {
    let frame = client(OpCode::Binary, true, &[9u8; 1000]);
    let mut session = Session::new(Limits::default());
    let mut input = frame[..500].to_vec();
    let consumed = session
        .receive(&mut input, &mut Vec::new(), |_, _| panic!("no event yet"))
        .unwrap();
    assert_eq!(consumed, 0);
    // A partial header, too.
    let mut header_only = frame[..1].to_vec();
    assert_eq!(
        Session::new(Limits::default())
            .receive(&mut header_only, &mut Vec::new(), |_, _| {})
            .unwrap(),
        0
    );
}

#[test]
fn retained_tail_never_exceeds_inplace_frame_max_and_large_frames_stream() {
    let limits = Limits {
        inplace_frame_max: 4096,
        ..Limits::default()
    };
    let mut stream = Vec::new();
    let sizes = [0usize, 1, 125, 126, 4000, 4096, 5000, 65536, 300_000];
    for (i, n) in sizes.iter().enumerate() {
        let data: Vec<u8> = (0..*n).map(|b| (b + i) as u8).collect();
        stream.extend(client(OpCode::Binary, true, &data));
    }
    for piece in [1usize, 1000, 3000, 70_000] {
        let mut d = Driver::new(limits.clone());
        d.echo = false;
        d.feed_in_pieces(&stream, &[piece]).unwrap();
        assert_eq!(d.events.len(), sizes.len());
        for (i, (ev, n)) in d.events.iter().zip(sizes).enumerate() {
            let data: Vec<u8> = (0..n).map(|b| (b + i) as u8).collect();
            assert_eq!(ev, &Ev::Binary(data), "message {i} in pieces of {piece}");
        }
        // A retained partial frame is at most inplace_frame_max; plus a read it fits 2x that.
        assert!(
            d.max_retained <= 4096,
            "retained {} with pieces of {piece}",
            d.max_retained
        );
    }
}

#[test]
fn assembly_capacity_is_given_back_after_a_big_message() {
    let mut d = Driver::server();
    d.echo = false;
    let big = vec![1u8; 1 << 20];
    d.feed(&client(OpCode::Binary, false, &big)).unwrap();
    d.feed(&client(OpCode::Continuation, true, &big)).unwrap();
    assert_eq!(d.events.len(), 1);
    assert!(
        d.session.assembly_capacity() <= ASSEMBLY_RETAIN,
        "kept {}",
        d.session.assembly_capacity()
    );
    // Small fragmented messages reuse the buffer without growing it.
    d.feed(&client(OpCode::Text, false, b"a")).unwrap();
    d.feed(&client(OpCode::Continuation, true, b"b")).unwrap();
    assert_eq!(d.events[1], Ev::Text("ab".into()));
    assert!(d.session.assembly_capacity() <= ASSEMBLY_RETAIN);
}

#[test]
fn sixteen_mib_message_is_accepted_and_one_byte_more_is_not() {
    let mut d = Driver::server();
    d.echo = false;
    let max = Limits::default().max_message_size;
    let data = vec![b'x'; max];
    d.feed_in_pieces(&client(OpCode::Text, true, &data), &[1 << 16])
        .unwrap();
    assert!(matches!(&d.events[0], Ev::Text(t) if t.len() == max));
    let mut d = Driver::server();
    let err = d
        .feed(&client(OpCode::Text, true, &vec![b'x'; max + 1])[..14])
        .unwrap_err();
    assert_eq!(err.code.0, 1009);
}
