//! A small blocking WebSocket client for the black-box tests: handshake, masked frames out,
//! frames in (RFC 6455, no extensions).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One frame from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
    Close(Option<u16>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
}

pub struct WsClient {
    pub stream: TcpStream,
    /// Bytes read and not yet parsed.
    buffer: Vec<u8>,
}

impl WsClient {
    /// Connects and upgrades `path`; panics unless the server answers 101.
    pub fn connect(addr: SocketAddr, path: &str) -> WsClient {
        let (status, client) = WsClient::try_connect(addr, path);
        assert_eq!(status, 101, "upgrade of {path} refused");
        client
    }

    /// Connects and asks to upgrade `path`; the status and the client.
    pub fn try_connect(addr: SocketAddr, path: &str) -> (u16, WsClient) {
        let (status, head, client) = WsClient::handshake(addr, path, "test");
        if status == 101 {
            assert!(
                head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
                "{head}"
            );
            assert!(head.contains("\r\nConnection: Upgrade\r\n"), "{head}");
            assert!(head.contains("\r\nUpgrade: websocket\r\n"), "{head}");
        }
        (status, client)
    }

    /// Connects to any RFC 6455 server with `Host: host` and asks to upgrade `path`: the
    /// status, the response head and the client.
    pub fn handshake(addr: SocketAddr, path: &str, host: &str) -> (u16, String, WsClient) {
        WsClient::handshake_with(addr, path, host, &[])
    }

    /// `handshake` with more header lines.
    pub fn handshake_with(
        addr: SocketAddr,
        path: &str,
        host: &str,
        headers: &[(&str, &str)],
    ) -> (u16, String, WsClient) {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let extra: String = headers
            .iter()
            .map(|(name, value)| format!("{name}: {value}\r\n"))
            .collect();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
        );
        stream.write_all(request.as_bytes()).expect("write");
        let mut client = WsClient {
            stream,
            buffer: Vec::new(),
        };
        let head_end = loop {
            if let Some(end) = client
                .buffer
                .windows(4)
                .position(|window| window == b"\r\n\r\n")
            {
                break end + 4;
            }
            if !client.fill() {
                panic!("connection closed during the handshake");
            }
        };
        let head = String::from_utf8_lossy(&client.buffer[..head_end]).to_string();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .expect("status");
        client.buffer.drain(..head_end);
        (status, head, client)
    }

    /// Reads more bytes; false at EOF or error.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(read) => {
                self.buffer.extend_from_slice(&chunk[..read]);
                true
            }
        }
    }

    pub fn send_frame(&mut self, opcode: u8, payload: &[u8], fin: bool) {
        let mut frame = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let mask = [0x12, 0x34, 0x56, 0x78];
        match payload.len() {
            length if length < 126 => frame.push(0x80 | length as u8),
            length if length <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(length as u16).to_be_bytes());
            }
            length => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(length as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(
            payload
                .iter()
                .enumerate()
                .map(|(index, byte)| byte ^ mask[index % 4]),
        );
        self.stream.write_all(&frame).expect("write frame");
    }

    pub fn send_text(&mut self, text: &str) {
        self.send_frame(0x1, text.as_bytes(), true);
    }

    pub fn close(&mut self, code: u16) {
        self.send_frame(0x8, &code.to_be_bytes(), true);
    }

    /// The next frame; `None` once the connection is closed.
    /// Reads frames until a close frame or the end of the stream; the last frame read.
    pub fn last_frame_until_close(&mut self) -> Option<Frame> {
        let mut last = None;
        while let Some(frame) = self.next_frame() {
            let closing = matches!(frame, Frame::Close(_));
            last = Some(frame);
            if closing {
                break;
            }
        }
        last
    }

    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some((frame, used)) = parse(&self.buffer) {
                self.buffer.drain(..used);
                return Some(frame);
            }
            if !self.fill() {
                return None;
            }
        }
    }

    /// The next text message as JSON, skipping pings and pongs; panics on anything else.
    pub fn next_json(&mut self) -> serde_json::Value {
        loop {
            match self.next_frame() {
                Some(Frame::Text(text)) => return serde_json::from_str(&text).expect("JSON"),
                Some(Frame::Ping(_)) | Some(Frame::Pong(_)) => continue,
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    }
}

/// Parses one unmasked server frame from the front of `bytes`.
fn parse(bytes: &[u8]) -> Option<(Frame, usize)> {
    if bytes.len() < 2 {
        return None;
    }
    let opcode = bytes[0] & 0x0f;
    assert_eq!(bytes[1] & 0x80, 0, "server frames are not masked");
    let (length, header) = match bytes[1] & 0x7f {
        126 if bytes.len() >= 4 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
        127 if bytes.len() >= 10 => {
            let mut length = [0u8; 8];
            length.copy_from_slice(&bytes[2..10]);
            (u64::from_be_bytes(length) as usize, 10)
        }
        126 | 127 => return None,
        length => (length as usize, 2),
    };
    if bytes.len() < header + length {
        return None;
    }
    let payload = bytes[header..header + length].to_vec();
    let frame = match opcode {
        0x1 => Frame::Text(String::from_utf8(payload).expect("UTF-8 text")),
        0x2 => Frame::Binary(payload),
        0x8 => {
            Frame::Close((payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])))
        }
        0x9 => Frame::Ping(payload),
        0xa => Frame::Pong(payload),
        other => panic!("unexpected opcode {other}"),
    };
    Some((frame, header + length))
}
