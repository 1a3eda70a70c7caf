//! Hot reload through `Server::reload`: new limits reach sessions that are already open, without
//! dropping any; settings that need a restart are reported and keep their value; an invalid
//! configuration changes nothing. (The SIGHUP path of hioload-echo is tested in its own crate.)

mod common;

use std::time::Duration;

use common::*;
use tungstenite::protocol::frame::coding::CloseCode as TCode;
use tungstenite::Message as WsMessage;

#[test]
fn a_reload_lowers_the_max_message_size_of_open_sessions_without_dropping_others() {
    let mut cfg = test_config();
    cfg.limits.max_message_size = 64 << 10;
    let (server, rec) = start_echo(cfg.clone());
    let addr = server.local_addr().unwrap();

    let mut big_sender = client(addr, "/ws");
    let mut bystander = client(addr, "/ws");
    let ten_k = WsMessage::binary(vec![3u8; 10_000]);
    big_sender.send(ten_k.clone()).unwrap();
    assert_eq!(
        big_sender.read().unwrap(),
        ten_k,
        "accepted before the reload"
    );

    let mut new = cfg.clone();
    new.limits.max_message_size = 4096;
    new.idle_timeout = Some(Duration::from_secs(120));
    let done = server.reload(new).unwrap();
    assert!(done.restart_needed.is_empty(), "{:?}", done.restart_needed);
    assert_eq!(server.config().limits.max_message_size, 4096);
    assert_eq!(server.config().idle_timeout, Some(Duration::from_secs(120)));

    // The same message on the same, already open, connection: now too big.
    big_sender.send(ten_k.clone()).unwrap();
    match big_sender.read().unwrap() {
        WsMessage::Close(Some(f)) => assert_eq!(f.code, TCode::Size),
        other => panic!("expected close 1009, got {other:?}"),
    }
    // The other session was not touched and takes messages under the new limit.
    bystander.send(WsMessage::text("fine")).unwrap();
    assert_eq!(bystander.read().unwrap(), WsMessage::text("fine"));
    // New sessions get the new limit too.
    let mut fresh = client(addr, "/ws");
    fresh.send(ten_k).unwrap();
    match fresh.read().unwrap() {
        WsMessage::Close(Some(f)) => assert_eq!(f.code, TCode::Size),
        other => panic!("expected close 1009, got {other:?}"),
    }
    rec.wait_for(T, "two 1009 closes", |r| r.closes.len() == 2);
    assert_eq!(rec.close_codes(), vec![1009, 1009]);
    // (The worker updates its session count just after on_close returns.)
    wait_until(T, "only the bystander left", || server.session_count() == 1);
    bystander.send(WsMessage::text("and still")).unwrap();
    assert_eq!(bystander.read().unwrap(), WsMessage::text("and still"));
}

#[test]
fn restart_only_changes_are_reported_and_invalid_configs_change_nothing() {
    let cfg = test_config();
    let (server, _rec) = start_echo(cfg.clone());
    let addr = server.local_addr().unwrap();
    let mut ws = client(addr, "/ws");

    let mut new = cfg.clone();
    new.num_workers = 8;
    new.listen = "127.0.0.1:1".parse().unwrap();
    new.limits.inplace_frame_max = 4096;
    new.close_timeout = Duration::from_secs(2);
    let done = server.reload(new).unwrap();
    assert_eq!(
        done.restart_needed,
        vec!["listen", "num_workers", "limits.inplace_frame_max"]
    );
    let running = server.config();
    assert_eq!(running.num_workers, 2, "kept until a restart");
    assert_eq!(
        running.limits.inplace_frame_max,
        cfg.limits.inplace_frame_max
    );
    assert_eq!(running.close_timeout, Duration::from_secs(2), "applied");

    let mut bad = cfg.clone();
    bad.limits.max_message_size = 1;
    let err = server.reload(bad).unwrap_err().to_string();
    assert!(err.contains("limits.max_message_size"), "{err}");
    assert_eq!(
        server.config().limits.max_message_size,
        cfg.limits.max_message_size
    );
    let big = WsMessage::binary(vec![1u8; 100_000]);
    ws.send(big.clone()).unwrap();
    assert_eq!(ws.read().unwrap(), big, "old limit still in force");
}
