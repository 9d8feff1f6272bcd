//! HTTP request handling (routing, header and token parsing, body limits, pipelining) on
//! arbitrary bytes as one connection's input. The first byte chooses whether a token is
//! configured. Whatever comes in, every answer written must be a well-formed HTTP/1.1 status
//! line with a 1xx-5xx code, and the handler must neither panic nor hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let out = edge_mnv2::serve::http::fuzz_connection(data);
    let mut rest = &out[..];
    while !rest.is_empty() {
        assert!(rest.starts_with(b"HTTP/1.1 "), "{:?}", String::from_utf8_lossy(&out));
        let status = std::str::from_utf8(&rest[9..12]).unwrap();
        let code: u16 = status.parse().unwrap();
        assert!((100..600).contains(&code), "{code}");
        let end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a complete head")
            + 4;
        let head = std::str::from_utf8(&rest[..end]).unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .map_or(0, |v| v.trim().parse().unwrap());
        rest = &rest[end + len..];
    }
});
