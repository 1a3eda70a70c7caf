//! Allocations per message over TLS in steady state, counted: our side allocates nothing (the
//! plaintext and record buffers are reused), and rustls 0.23 allocates one `Vec` per record it
//! decrypts (its received-plaintext queue) and one per record it encrypts (the record is built
//! in a `Vec` before it is copied into our buffer), in its buffered and unbuffered APIs alike.
//! This test pins that: at most one allocation per record each way, so a regression of ours
//! shows. Allocations are counted per thread by this test binary's global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};

use hioload_wsproto::tls::layer::RecordBuf;
use hioload_wsproto::tls::test_pki::TestPki;
use hioload_wsproto::tls::{TlsAcceptor, TlsFiles, TlsLayer};
use rustls::pki_types::ServerName;
use rustls::ClientConnection;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is a
// const-initialised thread-local Cell (no allocation).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// The server's side of one connection, with the buffers a worker reuses.
struct Server {
    tls: TlsLayer,
    input: Vec<u8>,
    plain: Vec<u8>,
    out: RecordBuf,
}

impl Server {
    /// Takes the client's records (behind what the layer holds), returns what it sends back;
    /// the plaintext stays in `self.plain`.
    fn receive(&mut self, records: &[u8]) -> Vec<u8> {
        self.input.clear();
        self.input.resize(self.tls.held_len(), 0);
        self.tls.held_mut().move_to(&mut self.input);
        self.input.extend_from_slice(records);
        self.plain.clear();
        self.out.clear();
        self.tls
            .receive(&mut self.input, &mut self.plain, &mut self.out)
            .unwrap();
        self.out.as_slice().to_vec()
    }
}

fn client_to_server(client: &mut ClientConnection) -> Vec<u8> {
    let mut records = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut records).unwrap();
    }
    records
}

fn server_to_client(client: &mut ClientConnection, records: &[u8]) -> Vec<u8> {
    let mut rd = records;
    let mut plain = Vec::new();
    while !rd.is_empty() {
        client.read_tls(&mut rd).unwrap();
        client.process_new_packets().unwrap();
        let mut buf = [0u8; 32 << 10];
        while let Ok(n @ 1..) = client.reader().read(&mut buf) {
            plain.extend_from_slice(&buf[..n]);
        }
    }
    plain
}

#[test]
fn steady_state_allocations_are_rustls_own_one_per_record_each_way() {
    let pki = TestPki::new("alloc");
    let (cert, key) = pki.leaf("server", "localhost");
    let acceptor = TlsAcceptor::load(&TlsFiles::new(cert, key)).unwrap();
    let mut client = ClientConnection::new(
        pki.client_config(),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    client.set_buffer_limit(None);
    let mut server = Server {
        tls: TlsLayer::new(&acceptor).unwrap(),
        input: Vec::with_capacity(64 << 10),
        plain: Vec::with_capacity(64 << 10),
        out: RecordBuf::new(),
    };
    for _ in 0..8 {
        let records = client_to_server(&mut client);
        let answer = server.receive(&records);
        server_to_client(&mut client, &answer);
        if !client.is_handshaking() && server.tls.is_handshaken() {
            break;
        }
    }
    assert!(server.tls.is_handshaken());

    for (size, rounds) in [(20usize, 2000u64), (1000, 1000), (16 << 10, 200)] {
        let message = vec![0x5au8; size];
        let mut ours = 0;
        for round in 0..rounds + 10 {
            client.writer().write_all(&message).unwrap();
            let records = client_to_server(&mut client);
            let before = allocations();
            let _ = server.receive(&records);
            assert_eq!(server.plain, message);
            let mut plain = std::mem::take(&mut server.plain);
            server.out.clear();
            server.tls.seal(&plain, &mut server.out).unwrap();
            let spent = allocations() - before;
            plain.clear();
            server.plain = plain;
            if round >= 10 {
                ours += spent; // after warm-up: every buffer at its size
            }
            let echo = server_to_client(&mut client, &server.out.as_slice().to_vec());
            assert_eq!(echo.len(), size);
        }
        let per_message = ours as f64 / rounds as f64;
        eprintln!("{size} B: {per_message:.2} allocations per echoed message (server side)");
        // One record each way: rustls's two allocations, nothing of ours.
        assert!(
            per_message <= 2.0,
            "{size} B: {per_message} allocations per message"
        );
    }
}
