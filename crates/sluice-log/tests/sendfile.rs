#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

use common::{open, payload, small_config};
use sluice_core::ManualClock;
use sluice_log::send_file_slice;

#[test]
fn sendfile_hands_stored_payloads_to_a_socket_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), small_config(), &clock);
    let mut expected = Vec::new();
    for i in 0..20 {
        let p = payload(i, 150);
        expected.extend_from_slice(&p);
        log.append(&p, 1, 0).unwrap();
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    let mut offset = 0;
    let mut sent_total = 0;
    while offset < log.next_offset() {
        let slices = log.read_slices(offset, 1000).unwrap();
        assert!(!slices.is_empty());
        for slice in &slices {
            let mut sent = 0;
            while sent < slice.len {
                sent += send_file_slice(server.as_raw_fd(), slice, sent).unwrap();
            }
            sent_total += sent;
            offset = slice.base_offset + u64::from(slice.record_count);
        }
    }
    drop(server);
    let mut received = Vec::new();
    client.read_to_end(&mut received).unwrap();
    assert_eq!(sent_total as usize, expected.len());
    assert_eq!(received, expected);
}
